"""Pure: the host kernel objects (links, routes, rules, sysctls) the persisted state asks for.

Nothing here touches the kernel; :mod:`plugin.reconcile` makes the kernel match.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Mapping

from .facts import ParentFacts
from .firewall.model import Ruleset
from .firewall.rules import ruleset_for
from .state import State
from .tags import MAIN_MARK_SLOT, MARK_MASK, RULE_PREF_FWMARK, RULE_PREF_LOCAL, RULE_PREF_SOURCE, mark_for_slot

MAIN_TABLE = 254


@dataclass(frozen=True)
class BridgeSpec:
    name: str
    network_id: str
    address: ipaddress.IPv4Interface
    mtu: int


@dataclass(frozen=True)
class VethSpec:
    host: str
    peer: str
    bridge: str
    endpoint_id: str
    mac: str
    mtu: int
    joined: bool


@dataclass(frozen=True)
class RouteSpec:
    table: int
    dst: ipaddress.IPv4Network
    dev: str
    gateway: ipaddress.IPv4Address | None = None
    prefsrc: ipaddress.IPv4Address | None = None
    unreachable: bool = False  # a fail-closed "unreachable" route (no dev), below the real default


@dataclass(frozen=True)
class RuleSpec:
    priority: int
    table: int
    src: ipaddress.IPv4Network | None = None
    fwmark: int | None = None
    fwmask: int | None = None
    suppress_prefixlen: int | None = None


@dataclass(frozen=True)
class HostState:
    bridges: tuple[BridgeSpec, ...]
    veths: tuple[VethSpec, ...]
    routes: frozenset[RouteSpec]
    rules: frozenset[RuleSpec]
    sysctls: Mapping[str, str]
    firewall: Ruleset


def host_state(state: State, facts: Mapping[str, ParentFacts]) -> HostState:
    bridges = []
    veths = []
    routes: set[RouteSpec] = set()
    rules: set[RuleSpec] = set()
    sysctls: dict[str, str] = {}
    for net in sorted(state.networks.values(), key=lambda n: n.bridge):
        gw = ipaddress.IPv4Interface(net.gateway)
        bridges.append(BridgeSpec(name=net.bridge, network_id=net.id, address=gw, mtu=net.mtu))
        for ep in sorted(state.endpoints_of(net.id), key=lambda e: e.id):
            veths.append(
                VethSpec(
                    host=ep.host_veth,
                    peer=ep.peer_veth,
                    bridge=net.bridge,
                    endpoint_id=ep.id,
                    mac=ep.mac,
                    mtu=net.mtu,
                    joined=ep.joined,
                )
            )
        if net.internal or not net.parent or net.table is None:
            continue
        parent = facts.get(net.parent)
        subnet = ipaddress.IPv4Network(net.subnet)
        routes.add(RouteSpec(table=net.table, dst=subnet, dev=net.bridge, prefsrc=gw.ip))
        # Fail closed: if the parent is down or gone (its routes vanish with it), the subnet's
        # traffic must not fall through to main and leak out of another NIC.
        routes.add(RouteSpec(table=net.table, dst=ipaddress.IPv4Network("0.0.0.0/0"), dev="", unreachable=True))
        if parent is not None and parent.exists and parent.up:
            subnets: dict[ipaddress.IPv4Network, ipaddress.IPv4Address] = {}
            for addr in parent.addresses:  # one route per subnet: the kernel keeps only one
                subnets.setdefault(addr.network, addr.ip)
            for dst, src in subnets.items():
                routes.add(RouteSpec(table=net.table, dst=dst, dev=net.parent, prefsrc=src))
            if net.parent_gateway:
                routes.add(
                    RouteSpec(
                        table=net.table,
                        dst=ipaddress.IPv4Network("0.0.0.0/0"),
                        dev=net.parent,
                        gateway=ipaddress.IPv4Address(net.parent_gateway),
                    )
                )
        # Local destinations (other bridges, the host's subnets) stay on main; everything
        # else from this subnet leaves by the parent's table.
        rules.add(RuleSpec(priority=RULE_PREF_LOCAL, table=MAIN_TABLE, src=subnet, suppress_prefixlen=0))
        rules.add(RuleSpec(priority=RULE_PREF_SOURCE, table=net.table, src=subnet))
        if net.mark_slot:
            rules.add(
                RuleSpec(
                    priority=RULE_PREF_FWMARK,
                    table=net.table,
                    fwmark=mark_for_slot(net.mark_slot),
                    fwmask=MARK_MASK,
                )
            )
            sysctls[f"net/ipv4/conf/{net.parent}/rp_filter"] = "2"
            rules.add(
                RuleSpec(
                    priority=RULE_PREF_FWMARK, table=MAIN_TABLE, fwmark=mark_for_slot(MAIN_MARK_SLOT),
                    fwmask=MARK_MASK,
                )
            )
    return HostState(
        bridges=tuple(bridges),
        veths=tuple(veths),
        routes=frozenset(routes),
        rules=frozenset(rules),
        sysctls=sysctls,
        firewall=ruleset_for(state, facts),
    )
