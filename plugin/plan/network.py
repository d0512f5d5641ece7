"""Pure planning of a network: every check of a CreateNetwork against the other networks and the host's
facts, the record to persist, the parent's next hop and where published ports land. No kernel access."""

from __future__ import annotations

import ipaddress
import time
from typing import Callable

from ..api.messages import CreateNetworkRequest
from ..api.options import NetworkOptions
from ..errors import Refusal
from ..kernel.firewall.rules import publish_addresses
from ..kernel.tags import MAX_MARK_SLOT, TABLE_ALLOC_FIRST, TABLE_ALLOC_LAST
from .facts import HostFacts, ParentFacts
from .state import NetworkRecord, ParentRecord, State

GATEWAY_GIVEN = "given (parent_gateway)"
GATEWAY_ROUTE = "the parent's default route"
GATEWAY_GUESSED = "guessed: the first host of the parent's subnet"


def bridge_name_for(network_id: str) -> str:
    return f"mn-{network_id[:12]}"


def veth_names_for(endpoint_id: str) -> tuple[str, str]:
    return f"mnh{endpoint_id[:12]}", f"mnc{endpoint_id[:12]}"


def mac_for(address: ipaddress.IPv4Interface) -> str:
    """A stable locally administered MAC from the IP, as Docker's bridge does (02:42:a:b:c:d)."""
    return "02:42:" + ":".join(f"{b:02x}" for b in address.ip.packed)


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


def plan_network(
    state: State, req: CreateNetworkRequest, opts: NetworkOptions, facts: HostFacts, rp_filter: str | None = None
) -> tuple[NetworkRecord, ParentRecord | None]:
    """Every check of a new network; the records to persist. ``rp_filter``: the parent's current value,
    remembered to put back when its last network goes."""
    pool = req.ipv4[0]
    subnet = pool.pool
    for other in state.networks.values():
        if ipaddress.IPv4Network(other.subnet).overlaps(subnet):
            raise Refusal(f"subnet {subnet} overlaps multinic network {other.id[:12]} ({other.subnet}); "
                          "choose a --subnet that does not overlap")
    bridge = opts.bridge_name or bridge_name_for(req.network_id)
    if any(n.bridge == bridge for n in state.networks.values()) or bridge in facts.links:
        raise Refusal(f"option bridge_name={bridge}: an interface with that name already exists; "
                      "choose another bridge_name or omit it")
    mtu = opts.mtu
    next_hop, source, table, slot, parent_record = None, "", None, None, None
    if opts.parent and not req.internal:
        parent = facts.parent(opts.parent)
        if not parent.exists:
            raise Refusal(f"option parent={opts.parent}: no such network interface on this host; "
                          "give the name of an existing NIC (see `ip link`)")
        if not parent.addresses:
            raise Refusal(f"option parent={opts.parent}: the interface has no IPv4 address; "
                          "configure one first or pick another NIC")
        for addr in parent.addresses:
            if addr.network.overlaps(subnet):
                raise Refusal(f"subnet {subnet} overlaps {opts.parent}'s own network {addr.network}; "
                              "choose a --subnet outside the parent NIC's network")
        siblings = state.networks_on(opts.parent)
        next_hop, source = _next_hop(opts, parent, facts, siblings)
        table, slot = _table_and_mark(state, opts, siblings, facts)
        mtu = mtu or parent.mtu
        if not siblings:
            rp = int(rp_filter) if rp_filter is not None and rp_filter.strip().isdigit() else None
            parent_record = ParentRecord(rp_filter_before=rp)
    record = NetworkRecord(
        id=req.network_id, bridge=bridge, subnet=str(subnet), gateway=str(pool.gateway), internal=req.internal,
        # An internal network never egresses: it keeps no parent, so it never lends empty table/mark
        # values to a later network on that NIC.
        parent=None if req.internal else opts.parent,
        parent_gateway=str(next_hop) if next_hop else None, gateway_source=source,
        table=table, mark_slot=slot, mtu=mtu or 1500, masquerade=opts.masquerade, gw_priority=opts.gw_priority,
        options={k: str(v) for k, v in req.generic.items()}, created=time.time(),
    )
    return record, parent_record


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
        table = next((t for t in range(TABLE_ALLOC_FIRST, TABLE_ALLOC_LAST + 1) if not in_use(t)), None)
        if table is None:
            raise Refusal("no free route table left; give one with --opt table=ID")
    return table, free_mark_slot(state)


def free_mark_slot(state: State) -> int:
    used = {n.mark_slot for n in state.networks.values() if n.mark_slot}
    slot = next((s for s in range(1, MAX_MARK_SLOT + 1) if s not in used), None)
    if slot is None:
        raise Refusal("no free connection mark left: at most 254 parent NICs per host")
    return slot


def publish_resolver(net: NetworkRecord, facts: HostFacts) -> Callable[[str], tuple[str, ...]]:
    """host_ip → the addresses a binding lands on, refusing addresses the host does not have."""
    local = facts.local_addresses

    def resolve(host_ip: str) -> tuple[str, ...]:
        if host_ip == "0.0.0.0":
            host_ip = ""  # -p 0.0.0.0:P:C (common in compose files) means "not specified"
        if host_ip:
            try:
                ip = ipaddress.ip_address(host_ip)
            except ValueError:
                raise Refusal(f"published host address {host_ip!r} is not an IP address") from None
            if ip.version != 4:
                raise Refusal(f"published host address {host_ip} is IPv6; multinic publishes IPv4 only")
            if ip.is_loopback:
                raise Refusal(f"published host address {host_ip} is a loopback address, which multinic cannot "
                              "DNAT into a bridge; publish on the parent's address instead (-p HOSTPORT:PORT)")
            if host_ip not in local:
                raise Refusal(f"published host address {host_ip} is not an address of this host; use one of "
                              f"{', '.join(sorted(a for a in local if not a.startswith('127.')))} "
                              "or leave it out (-p HOSTPORT:PORT)")
        addrs = publish_addresses(net, host_ip, facts.parents)
        if not addrs:
            raise Refusal(f"parent {net.parent} has no IPv4 address to publish ports on; configure one first")
        return addrs

    return resolve
