"""Pure: the state rebuilt from what dockerd still has and what the kernel still holds, for when the
state file is lost (a wiped /var/lib, a managed plugin re-installed with another state mount).

dockerd gives each network's options and IPAM and each running container's endpoint, address, MAC,
sandbox and port bindings; the kernel's tagged objects give what was chosen (the parent's table and
mark, its next hop, the host port a range or ``-P`` picked). What neither has (the rp_filter a parent
had before multinic, the IPv6 settings to put back) comes from the state's last good copy when there is
one, else is left unknown and said so."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..api.options import NETWORK_OPTIONS, parse_endpoint_options, parse_network_options
from ..errors import Refusal
from ..kernel.tags import MARK_SHIFT, RULE_PREF_FWMARK, RULE_PREF_SOURCE
from .desired import RouteSpec, RuleSpec
from .facts import HostFacts
from .network import (
    bridge_name_for,
    free_mark_slot,
    free_table,
    mac_for,
    parent_next_hop,
    parent_next_hop6,
    veth_names_for,
)
from .state import ANY_ADDRESS, EndpointRecord, NetworkRecord, ParentRecord, PublishedPort, State

GATEWAY_KEPT = "kept from the kernel's table when the state was rebuilt"


@dataclass(frozen=True)
class Published:
    """A DNAT rule of ours: ``proto host_ip:host_port → container_ip:container_port``."""

    proto: str
    host_ip: str
    host_port: int
    container_ip: str
    container_port: int


@dataclass(frozen=True)
class KernelRemains:
    """Our tagged objects as the kernel holds them."""

    bridges: Mapping[str, str] = field(default_factory=dict)  # network id → bridge name
    rules: frozenset[RuleSpec] = frozenset()
    routes: frozenset[RouteSpec] = frozenset()
    published: tuple[Published, ...] = ()


def rebuild(networks: Iterable[Mapping[str, Any]], containers: Iterable[Mapping[str, Any]], kernel: KernelRemains,
            facts: HostFacts, now: float, backup: State | None = None) -> tuple[State, list[str]]:
    """``networks``: dockerd's ``network inspect`` of each multinic network; ``containers``: its
    ``inspect`` of each running container on them; ``backup``: the state's last good copy, for the values
    to put back only. Returns the state and what could not be recovered."""
    state, notes = State(), []
    backup = backup or State()
    for raw in sorted(networks, key=lambda n: n.get("Created") or n["Id"]):
        net = _network(raw, state, kernel, facts, now, notes)
        if net is None:
            continue
        state.networks[net.id] = net
        if net.parent and net.parent not in state.parents:
            state.parents[net.parent] = backup.parents.get(net.parent) or ParentRecord(rp_filter_before=None)
            if state.parents[net.parent].rp_filter_before is None:
                notes.append(f"the rp_filter {net.parent} had before multinic is unknown: it stays at 2 when the "
                             "last network on it goes")
    if state.has_ipv6() and backup.has_ipv6():
        state.restore6 = dict(backup.restore6)
    elif state.has_ipv6():
        notes.append("the IPv6 forwarding and accept_ra values the host had before multinic are unknown: they stay "
                     "as they are when the last IPv6 network goes")
    by_id = {c["Id"]: c for c in containers}
    for raw in networks:
        net = state.networks.get(raw["Id"])
        for cid, entry in sorted((raw.get("Containers") or {}).items()):
            container = by_id.get(cid)
            if net is None or container is None or not (container.get("State") or {}).get("Running"):
                continue
            ep = _endpoint(net, entry, container, kernel, now)
            if ep is not None:
                state.endpoints[ep.id] = ep
    return state, notes


def _network(raw: Mapping[str, Any], state: State, kernel: KernelRemains, facts: HostFacts, now: float,
             notes: list[str]) -> NetworkRecord | None:
    nid = raw["Id"]
    given = {k: str(v) for k, v in (raw.get("Options") or {}).items() if k in NETWORK_OPTIONS}
    configs = (raw.get("IPAM") or {}).get("Config") or []
    try:
        opts = parse_network_options(given)
        subnets = {ipaddress.ip_network(c["Subnet"]).version: (ipaddress.ip_network(c["Subnet"]), c.get("Gateway"))
                   for c in reversed(configs)}
        if not subnets:
            raise ValueError("dockerd shows no subnet")
    except (Refusal, KeyError, ValueError) as exc:
        notes.append(f"network {raw.get('Name', nid[:12])}: not rebuilt ({exc})")
        return None
    cidr = {v: f"{gateway or next(iter(subnet.hosts()))}/{subnet.prefixlen}"
            for v, (subnet, gateway) in subnets.items()}
    internal = bool(raw.get("Internal"))
    parent = None if internal else opts.parent
    hop = hop6 = None
    source = source6 = ""
    table, slot = None, None
    if parent:
        siblings = state.networks_on(parent)
        if siblings:
            table, slot = siblings[0].table, siblings[0].mark_slot
        else:
            table = next((r.table for r in kernel.rules if r.priority == RULE_PREF_SOURCE
                          and r.src in {s for s, _g in subnets.values()}), opts.table)
            slot = next((r.fwmark >> MARK_SHIFT for r in kernel.rules if r.priority == RULE_PREF_FWMARK
                         and r.table == table and r.fwmark), None) or free_mark_slot(state)
            if table is None:
                table = free_table(state, facts)
        kept = {r.family: str(r.gateway) for r in kernel.routes if r.table == table and r.gateway
                and r.dst.prefixlen == 0}
        if 4 in subnets:
            sibling = next((n for n in siblings if n.parent_gateway), None)
            if sibling is not None:
                hop, source = sibling.parent_gateway, sibling.gateway_source
            else:
                address, source = parent_next_hop(facts.parent(parent), opts.parent_gateway,
                                                  facts.default_gateways.get(parent), kept.get(4), GATEWAY_KEPT)
                hop = str(address) if address else None
        if 6 in subnets:
            sibling = next((n for n in siblings if n.parent_gateway6), None)
            if sibling is not None:
                hop6, source6 = sibling.parent_gateway6, sibling.gateway6_source
            else:
                address6, source6 = parent_next_hop6(opts.parent_gateway6, facts.default_gateways6.get(parent),
                                                     kept.get(6), GATEWAY_KEPT)
                hop6 = str(address6) if address6 else None
    return NetworkRecord(
        id=nid, bridge=kernel.bridges.get(nid) or opts.bridge_name or bridge_name_for(nid),
        subnet=str(subnets[4][0]) if 4 in subnets else "", gateway=cidr.get(4, ""),
        subnet6=str(subnets[6][0]) if 6 in subnets else "", gateway6=cidr.get(6, ""),
        internal=internal, parent=parent, parent_gateway=hop, gateway_source=source,
        parent_gateway6=hop6, gateway6_source=source6, table=table, mark_slot=slot,
        mtu=opts.mtu or (facts.parent(parent).mtu if parent else 1500), masquerade=opts.masquerade,
        gw_priority=opts.gw_priority, options=given, created=now, ingress_replies=opts.ingress_replies and not internal,
    )


def _endpoint(net: NetworkRecord, entry: Mapping[str, Any], container: Mapping[str, Any], kernel: KernelRemains,
              now: float) -> EndpointRecord | None:
    eid = entry.get("EndpointID") or ""
    try:
        address = ipaddress.IPv4Interface(entry["IPv4Address"]) if net.subnet else None
        address6 = ipaddress.IPv6Interface(entry["IPv6Address"]) if net.subnet6 else None
    except (KeyError, ValueError):
        return None
    settings = container.get("NetworkSettings") or {}
    mine = next((n for n in (settings.get("Networks") or {}).values() if (n or {}).get("EndpointID") == eid), {})
    try:
        priority = parse_endpoint_options(mine.get("DriverOpts") or {}).gw_priority
    except Refusal:
        priority = None
    host, peer = veth_names_for(eid)
    ips = {str(a.ip) for a in (address, address6) if a is not None}
    return EndpointRecord(
        id=eid, network_id=net.id, address=str(address) if address else "", address6=str(address6) if address6 else "",
        mac=entry.get("MacAddress") or mac_for(address or address6), host_veth=host, peer_veth=peer,
        gw_priority=priority, joined=True, sandbox_key=settings.get("SandboxKey") or "", created=now,
        ports=() if net.internal else _ports(ips, container, kernel),
    )


def _ports(ips: set[str], container: Mapping[str, Any], kernel: KernelRemains) -> tuple[PublishedPort, ...]:
    """From our DNAT rules towards the endpoint's addresses (what was really picked); else the explicit
    host ports of the container's bindings (a range or ``-P`` whose rules are gone too is not
    republished). A binding without a HostIP, or with a family's "any" address, is kept as given."""
    bindings = ((container.get("HostConfig") or {}).get("PortBindings") or {})
    given_ip = {(int(k.split("/")[0]), (k.split("/") + ["tcp"])[1]): (v or [{}])[0].get("HostIp") or ""
                for k, v in bindings.items()}
    out: list[PublishedPort] = []
    for p in kernel.published:
        if p.container_ip in ips:
            host_ip = given_ip.get((p.container_port, p.proto), "")
            port = PublishedPort(p.proto, host_ip if host_ip in ("", *ANY_ADDRESS) else p.host_ip, p.host_port,
                                 p.container_port)
            if port not in out:
                out.append(port)
    if out:
        return tuple(out)
    for key, entries in sorted(bindings.items()):
        port, _, proto = key.partition("/")
        for b in entries or ():
            host_port = str(b.get("HostPort") or "")
            if host_port.isdigit():
                out.append(PublishedPort(proto or "tcp", b.get("HostIp") or "", int(host_port), int(port)))
    return tuple(out)
