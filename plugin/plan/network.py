"""Pure planning of a network: every check of a CreateNetwork against the other networks and the host's
facts, the record to persist, the parent's next hop and where published ports land. No kernel access."""

from __future__ import annotations

import ipaddress
import time
from typing import Callable

from ..api.messages import CreateNetworkRequest, Pool, swarm_scoped
from ..api.options import NetworkOptions
from ..errors import Refusal
from ..kernel.firewall.rules import publish_addresses
from ..kernel.tags import MAX_MARK_SLOT, TABLE_ALLOC_FIRST, TABLE_ALLOC_LAST
from .desired import FORWARDING6
from .facts import HostFacts, ParentFacts
from .state import ANY_ADDRESS, NetworkRecord, ParentRecord, State

GATEWAY_GIVEN = "given (parent_gateway)"
GATEWAY_ROUTE = "the parent's default route"
GATEWAY_GUESSED = "guessed: the first host of the parent's subnet"
SWARM_CONFIG_HINT = ("on every node, managers included: docker network create --config-only -o parent=<NIC> --subnet "
                     "<CIDR> <config>; then on a manager: docker network create -d multinic:latest --scope swarm "
                     "--config-from <config> <name>")


def bridge_name_for(network_id: str) -> str:
    return f"mn-{network_id[:12]}"


def veth_names_for(endpoint_id: str) -> tuple[str, str]:
    return f"mnh{endpoint_id[:12]}", f"mnc{endpoint_id[:12]}"


def mac_for(address: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> str:
    """A stable locally administered MAC from the IP, as Docker's bridge does (02:42:a:b:c:d); from the
    IPv6 address's last 4 bytes on an IPv6-only network."""
    return "02:42:" + ":".join(f"{b:02x}" for b in address.ip.packed[-4:])


def parent_next_hop(
    parent: ParentFacts, given: ipaddress.IPv4Address | None, default_gateway: ipaddress.IPv4Address | None,
    current: str | None = None, current_source: str = "",
) -> tuple[ipaddress.IPv4Address | None, str]:
    """The next hop of a parent's table, and how it was chosen: the one given, else a default route of
    someone else's through the parent (any table), else the one in use while it is still on the
    parent's subnets, else the first host of the parent's primary subnet (a guess: ``doctor`` checks
    that it answers). None when there is nothing to guess from (a /31 or /32 and no route)."""
    if given is not None:
        return given, GATEWAY_GIVEN
    if default_gateway is not None:
        return default_gateway, GATEWAY_ROUTE
    if current and any(ipaddress.IPv4Address(current) in a.network for a in parent.addresses):
        return ipaddress.IPv4Address(current), current_source or GATEWAY_GUESSED
    primary = parent.primary
    if primary is None or primary.network.prefixlen >= 31:
        return None, ""
    return next(iter(primary.network.hosts())), GATEWAY_GUESSED


def _pools(req: CreateNetworkRequest) -> tuple[Pool | None, Pool | None]:
    """The network's IPv4 and IPv6 subnets, refused unless one of each family it has, with a gateway."""
    if req.ipv4_enabled and len(req.ipv4) != 1:
        raise Refusal(f"multinic networks take exactly one IPv4 subnet, got {len(req.ipv4)}; give one --subnet")
    if req.ipv6 and len(req.ipv6_pools) != 1:
        raise Refusal(f"an IPv6 multinic network takes exactly one IPv6 subnet, got {len(req.ipv6_pools)}; give one "
                      "--subnet fd00:10::/64 beside the IPv4 one (--ipv6 --subnet 10.10.0.0/24 --subnet fd00:10::/64)")
    pool4 = req.ipv4[0] if req.ipv4_enabled else None
    pool6 = req.ipv6_pools[0] if req.ipv6 else None
    for pool in filter(None, (pool4, pool6)):
        if pool.gateway is None or pool.pool.prefixlen == 0:
            raise Refusal(f"multinic needs a subnet with a gateway address, got {pool.pool}; use the default IPAM "
                          "driver (--subnet CIDR, optionally --gateway IP)")
    if pool6 is not None and (pool6.pool.is_link_local or pool6.pool.is_multicast or pool6.pool.prefixlen > 126):
        raise Refusal(f"IPv6 subnet {pool6.pool} is link-local, multicast or too small; give a global or unique "
                      "local prefix, e.g. --subnet fd00:10::/64")
    if pool4 is None and pool6 is None:
        raise Refusal("a multinic network needs an IPv4 or an IPv6 subnet")
    return pool4, pool6


def plan_network(
    state: State, req: CreateNetworkRequest, opts: NetworkOptions, facts: HostFacts, rp_filter: str | None = None
) -> tuple[NetworkRecord, ParentRecord | None]:
    """Every check of a new network; the records to persist. ``rp_filter``: the parent's current value,
    remembered to put back when its last network goes."""
    _check_swarm_options(req)
    pool4, pool6 = _pools(req)
    for other in state.networks.values():
        for pool, theirs in ((pool4, other.subnet), (pool6, other.subnet6)):
            if pool is not None and theirs and ipaddress.ip_network(theirs).overlaps(pool.pool):
                raise Refusal(f"subnet {pool.pool} overlaps multinic network {other.id[:12]} ({theirs}); "
                              "choose a --subnet that does not overlap")
    bridge = opts.bridge_name or bridge_name_for(req.network_id)
    if any(n.bridge == bridge for n in state.networks.values()) or bridge in facts.links:
        raise Refusal(f"option bridge_name={bridge}: an interface with that name already exists; "
                      "choose another bridge_name or omit it")
    mtu = opts.mtu
    hop4 = hop6 = None
    source4 = source6 = ""
    table, slot, parent_record = None, None, None
    if opts.parent and not req.internal:
        parent = _checked_parent(opts.parent, facts, pool4, pool6)
        siblings = state.networks_on(opts.parent)
        if pool4 is not None:
            hop4, source4 = _next_hop(opts, parent, facts, siblings)
        if pool6 is not None:
            hop6, source6 = _next_hop6(opts, parent, facts, siblings)
        table, slot = _table_and_mark(state, opts, siblings, facts)
        mtu = mtu or parent.mtu
        if not siblings:
            rp = int(rp_filter) if rp_filter is not None and rp_filter.strip().isdigit() else None
            parent_record = ParentRecord(rp_filter_before=rp)
    record = NetworkRecord(
        id=req.network_id, bridge=bridge, internal=req.internal,
        subnet=str(pool4.pool) if pool4 else "", gateway=str(pool4.gateway) if pool4 else "",
        subnet6=str(pool6.pool) if pool6 else "", gateway6=str(pool6.gateway) if pool6 else "",
        # An internal network never egresses: it keeps no parent, so it never lends empty table/mark
        # values to a later network on that NIC.
        parent=None if req.internal else opts.parent,
        parent_gateway=str(hop4) if hop4 else None, gateway_source=source4,
        parent_gateway6=str(hop6) if hop6 else None, gateway6_source=source6,
        table=table, mark_slot=slot, mtu=mtu or 1500, masquerade=opts.masquerade, gw_priority=opts.gw_priority,
        options={k: str(v) for k, v in req.generic.items()}, created=time.time(),
        ingress_replies=opts.ingress_replies and not req.internal,
    )
    return record, parent_record


def _check_swarm_options(req: CreateNetworkRequest) -> None:
    """A swarm-scoped network reaches a node with the options of the node's config-only network. Without
    ``--config-from`` swarm drops ``-o`` and ``--subnet`` (moby #34203): no options means a bridge with no
    parent on a pool Docker picked, which nobody asked for. (A config-only network meant to have no parent
    says so with any option, e.g. ``-o masquerade=true``.)"""
    if swarm_scoped(req.network_id) and not req.generic:
        raise Refusal(f"swarm-scoped network {req.network_id[:12]} reached this node without options: it was created "
                      "without --config-from, and swarm then drops -o and --subnet, so it would be a bridge with no "
                      f"parent; remove it and create it from a config-only network ({SWARM_CONFIG_HINT})")


def _checked_parent(name: str, facts: HostFacts, pool4: Pool | None, pool6: Pool | None) -> ParentFacts:
    parent = facts.parent(name)
    if not parent.exists:
        raise Refusal(f"option parent={name}: no such network interface on this host; "
                      "give the name of an existing NIC (see `ip link`)")
    if pool4 is not None and not parent.addresses:
        raise Refusal(f"option parent={name}: the interface has no IPv4 address; configure one first or pick "
                      "another NIC")
    if pool6 is not None and not parent.prefixes6:
        raise Refusal(f"option parent={name}: the interface has no global IPv6 address (is IPv6 disabled on it, or "
                      "not yet configured?); configure one, or create the network without --ipv6")
    for pool, nets in ((pool4, [a.network for a in parent.addresses]), (pool6, list(parent.prefixes6))):
        for net in nets if pool is not None else ():
            if net.overlaps(pool.pool):
                raise Refusal(f"subnet {pool.pool} overlaps {name}'s own network {net}; "
                              "choose a --subnet outside the parent NIC's network")
    return parent


def parent_next_hop6(
    given: ipaddress.IPv6Address | None, default_gateway: ipaddress.IPv6Address | None,
    current: str | None = None, current_source: str = "",
) -> tuple[ipaddress.IPv6Address | None, str]:
    """The IPv6 next hop of a parent's table: the one given, else the parent's default route (usually
    learned from router advertisements: a router's link-local address, followed as it changes), else the
    one in use (a router that stopped advertising may come back). No guess: IPv6 has no "first host"."""
    if given is not None:
        return given, GATEWAY_GIVEN
    if default_gateway is not None:
        return ipaddress.IPv6Address(default_gateway), GATEWAY_ROUTE
    if current:
        return ipaddress.IPv6Address(current), current_source
    return None, ""


def _next_hop6(opts: NetworkOptions, parent: ParentFacts, facts: HostFacts,
               siblings: list[NetworkRecord]) -> tuple[ipaddress.IPv6Address | None, str]:
    sibling = next((n for n in siblings if n.parent_gateway6), None)
    given = opts.parent_gateway6
    if given is not None:
        if not given.is_link_local and not any(given in prefix for prefix in parent.prefixes6):
            raise Refusal(f"option parent_gateway6={given} is neither link-local nor on {opts.parent}'s prefixes "
                          f"{', '.join(map(str, parent.prefixes6))}; give the router's address on that NIC")
        if sibling is not None and sibling.parent_gateway6 != str(given):
            raise Refusal(f"option parent_gateway6={given}: {opts.parent} already routes IPv6 via "
                          f"{sibling.parent_gateway6} for network {sibling.id[:12]}; use the same or omit it")
    elif sibling is not None:
        return ipaddress.IPv6Address(sibling.parent_gateway6), sibling.gateway6_source
    hop, source = parent_next_hop6(given, facts.default_gateways6.get(opts.parent or ""))
    if hop is None:
        deaf = facts.forwarding6 == "1" and facts.accept_ra.get(opts.parent or "") == 1
        why = (f"IPv6 forwarding is on and {opts.parent} has accept_ra=1, so the kernel ignores its router "
               f"advertisements: sysctl -w net.ipv6.conf.{opts.parent}.accept_ra=2 and wait for the next one, or "
               if deaf else "no router advertisement seen, none configured: ")
        raise Refusal(f"option parent={opts.parent}: no IPv6 default route goes through it ({why}give the next hop "
                      "with --opt parent_gateway6=<router address, e.g. fe80::1>)")
    return hop, source


def restore6_for(state: State, record: NetworkRecord, facts: HostFacts) -> dict[str, str]:
    """What an IPv6 network changes on the host, to put back with the last one: IPv6 forwarding, and
    ``accept_ra`` of its parent and of every NIC whose default route comes from router advertisements,
    which go to 2 first (at 1, forwarding makes the kernel drop that route)."""
    if not record.subnet6:
        return {}
    out: dict[str, str] = {}
    if not state.has_ipv6() and FORWARDING6 not in state.restore6 and facts.forwarding6 not in (None, "1"):
        out[FORWARDING6] = str(facts.forwarding6)
    for name in sorted({*facts.ra_default, *([record.parent] if record.parent else [])}):
        path = f"net/ipv6/conf/{name}/accept_ra"
        if facts.accept_ra.get(name) == 1 and path not in state.restore6:
            out[path] = "1"
    return out


def kept_at_last6(state: State, facts: HostFacts) -> tuple[str, ...]:
    """With the last IPv6 network gone: the IPv6 settings not to put back, because a bridge that is not
    ours now routes IPv6 (Docker's own ``--ipv6`` network, made while multinic had forwarding on, found it
    on and left it so). Forwarding stays on, and so ``accept_ra=2`` too (at 1 it would drop the NICs'
    router-advertised default routes)."""
    if state.has_ipv6() or state.restore6.get(FORWARDING6, "1") == "1" or not facts.foreign_ipv6_bridges:
        return ()
    return tuple(sorted(state.restore6))


def _next_hop(opts: NetworkOptions, parent: ParentFacts, facts: HostFacts,
              siblings: list[NetworkRecord]) -> tuple[ipaddress.IPv4Address | None, str]:
    if siblings:
        current = siblings[0].parent_gateway
        if opts.parent_gateway and str(opts.parent_gateway) != current:
            raise Refusal(f"option parent_gateway={opts.parent_gateway}: {opts.parent} already routes via {current} "
                          f"for network {siblings[0].id[:12]}; use the same gateway or omit it")
        return (ipaddress.IPv4Address(current) if current else None), siblings[0].gateway_source
    if opts.parent_gateway and not any(opts.parent_gateway in a.network for a in parent.addresses):
        nets = ", ".join(str(a.network) for a in parent.addresses)
        raise Refusal(f"option parent_gateway={opts.parent_gateway} is not on {opts.parent}'s network(s) {nets}; "
                      "give a next hop reachable on that NIC")
    hop, source = parent_next_hop(parent, opts.parent_gateway, facts.default_gateways.get(opts.parent))
    if hop is None:
        raise Refusal(f"option parent_gateway: {opts.parent} has a {parent.primary} address with no other host on "
                      "its subnet and no default route through it; give the next hop with --opt parent_gateway=IP")
    return hop, source


def _table_and_mark(state: State, opts: NetworkOptions, siblings: list[NetworkRecord],
                    facts: HostFacts) -> tuple[int | None, int | None]:
    if siblings:
        table = siblings[0].table
        if opts.table is not None and opts.table != table:
            raise Refusal(f"option table={opts.table}: {opts.parent} already uses table {table} "
                          f"(network {siblings[0].id[:12]}); use table={table} or omit it")
        return table, siblings[0].mark_slot
    used_tables = {n.table for n in state.networks.values() if n.table is not None}

    def in_use(candidate: int) -> bool:
        return candidate in used_tables or candidate in facts.tables_in_use

    if opts.table is not None:
        if in_use(opts.table):
            raise Refusal(f"option table={opts.table}: that route table is already in use on this host; "
                          "pick a free table id or omit table to have one allocated")
        table = opts.table
    else:
        table = free_table(state, facts)
    return table, free_mark_slot(state)


def free_table(state: State, facts: HostFacts) -> int:
    """The first table of the allocation range that no network of ours and nothing else on the host uses."""
    used = {n.table for n in state.networks.values() if n.table is not None} | set(facts.tables_in_use)
    table = next((t for t in range(TABLE_ALLOC_FIRST, TABLE_ALLOC_LAST + 1) if t not in used), None)
    if table is None:
        raise Refusal("no free route table left; give one with --opt table=ID")
    return table


def free_mark_slot(state: State) -> int:
    used = {n.mark_slot for n in state.networks.values() if n.mark_slot}
    slot = next((s for s in range(1, MAX_MARK_SLOT + 1) if s not in used), None)
    if slot is None:
        raise Refusal("no free connection mark left: at most 254 parent NICs per host")
    return slot


def publish_resolver(net: NetworkRecord, facts: HostFacts) -> Callable[[str], tuple[str, ...]]:
    """host_ip → the addresses a binding lands on, refusing addresses of a family the network lacks,
    loopback addresses, addresses the host does not have, and, for an IPv6 network bound to a parent, any
    IPv6 address but the parent's stable ones (never a temporary, deprecated or tentative one, nor another
    upstream's). An IPv4 HostIP may be any of the host's: its replies follow main (connmark slot 0xff)."""
    local = facts.local_addresses

    def resolve(host_ip: str) -> tuple[str, ...]:
        if host_ip:
            try:
                ip = ipaddress.ip_address(host_ip)
            except ValueError:
                raise Refusal(f"published host address {host_ip!r} is not an IP address") from None
            if ip.version not in net.families:
                have = "IPv4" if net.subnet else "IPv6"
                raise Refusal(f"published host address {host_ip} is IPv{ip.version} but network {net.id[:12]} is "
                              f"{have} only; publish on an {have} address, or create the network with "
                              f"{'--ipv6 and an IPv6 --subnet' if ip.version == 6 else 'an IPv4 --subnet'}")
            if ip.is_loopback:
                raise Refusal(f"published host address {host_ip} is a loopback address, which multinic cannot "
                              "DNAT into a bridge; publish on the parent's address instead (-p HOSTPORT:PORT)")
            if net.parent and ip.version == 6 and host_ip not in ANY_ADDRESS:
                _refuse_unless_parents(net, ip, facts)
            elif host_ip not in (*local, *ANY_ADDRESS):
                mine = sorted(a for a in local if ipaddress.ip_address(a).version == ip.version
                              and not ipaddress.ip_address(a).is_loopback and not ipaddress.ip_address(a).is_link_local)
                raise Refusal(f"published host address {host_ip} is not an address of this host; use one of "
                              f"{', '.join(mine) or '(none)'} or leave it out (-p HOSTPORT:PORT)")
        addrs = publish_addresses(net, host_ip, facts.parents)
        if not addrs:
            families = " or ".join(f"IPv{f}" for f in net.families)
            raise Refusal(f"parent {net.parent} has no {families} address to publish ports on; configure one first")
        return addrs

    return resolve


def _refuse_unless_parents(net: NetworkRecord, ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
                           facts: HostFacts) -> None:
    """An IPv6 HostIP on a network bound to a parent is one of the parent's stable addresses: a temporary or
    deprecated one is going away, and another NIC's belongs to another upstream's delegated prefix."""
    any_ip = ANY_ADDRESS[ip.version == 6]
    mine = publish_addresses(net, any_ip, facts.parents)
    if ip in (ipaddress.ip_address(a) for a in mine):
        return
    kind = "an IPv4 address" if ip.version == 4 else "a stable IPv6 address (global, not temporary or deprecated)"
    choices = f"one of {', '.join(mine)}" if mine else f"an address you configure on {net.parent} first"
    raise Refusal(f"published host address {ip} is not {kind} of {net.parent}, the parent of network "
                  f"{net.id[:12]}; publish on {choices}, or leave the address out to publish on all of "
                  f"{net.parent}'s addresses (-p HOSTPORT:PORT)")
