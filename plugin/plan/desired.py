"""Pure: the host kernel objects (links, routes, rules, sysctls, firewall, published flows)
the persisted state asks for, and the change between two of them.

Nothing here touches the kernel; :mod:`plugin.reconcile` (the one writer) makes the kernel match.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ..kernel.firewall.model import Edit, Ruleset, diff
from ..kernel.firewall.rules import ruleset_for
from ..kernel.tags import MAIN_MARK_SLOT, MARK_MASK, RULE_PREF_FWMARK, RULE_PREF_LOCAL, RULE_PREF_SOURCE, mark_for_slot
from .facts import ParentFacts
from .state import PublishedPort, State

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
    # Ports whose conntrack flows are live: a port leaving this set has its flows forgotten
    # (a UDP client that never pauses would stay on the old DNAT).
    flows: frozenset[PublishedPort] = frozenset()


@dataclass(frozen=True)
class Change:
    """What a verb must do to the kernel: the difference between two desired states.

    Links are compared by spec (a changed spec is re-ensured); removed links are deleted
    (veths before bridges). ``firewall`` is None when one side has no rules at all: creating or removing our chains
    and jumps is the full writer's job (:func:`plugin.reconcile.reconcile`).
    """

    bridges: tuple[BridgeSpec, ...] = ()
    veths: tuple[VethSpec, ...] = ()
    veths_gone: tuple[str, ...] = ()
    bridges_gone: tuple[str, ...] = ()
    routes_add: tuple[RouteSpec, ...] = ()
    routes_del: tuple[RouteSpec, ...] = ()
    rules_add: tuple[RuleSpec, ...] = ()
    rules_del: tuple[RuleSpec, ...] = ()
    sysctls: Mapping[str, str] = dataclasses.field(default_factory=dict)
    firewall: tuple[Edit, ...] | None = ()
    flows_gone: tuple[PublishedPort, ...] = ()

    @property
    def links_gone(self) -> tuple[str, ...]:
        return (*self.veths_gone, *self.bridges_gone)

    def is_empty(self) -> bool:
        return not any(
            (self.bridges, self.veths, self.veths_gone, self.bridges_gone, self.routes_add, self.routes_del,
             self.rules_add, self.rules_del, self.sysctls, self.flows_gone)
        ) and self.firewall == ()


def _ordered(items: frozenset[Any]) -> tuple[Any, ...]:
    return tuple(sorted(items, key=repr))


def difference(wanted: Iterable[Any], present: Iterable[Any]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """Pure: (what ``present`` lacks, what it has beyond ``wanted``), each in a stable order. The one
    comparison behind the host writer, the writer inside containers and the healer's drift report."""
    wanted, present = frozenset(wanted), frozenset(present)
    return _ordered(wanted - present), _ordered(present - wanted)


def change(before: HostState, after: HostState) -> Change:
    """Pure: the kernel operations that take a host matching ``before`` to ``after``."""
    old_bridges = {b.name: b for b in before.bridges}
    new_bridges = {b.name: b for b in after.bridges}
    old_veths = {v.host: v for v in before.veths}
    new_veths = {v.host: v for v in after.veths}
    if before.firewall.is_empty() and after.firewall.is_empty():
        firewall: tuple[Edit, ...] | None = ()
    elif before.firewall.is_empty() or after.firewall.is_empty():
        firewall = None
    else:
        firewall = diff(before.firewall, after.firewall)
    return Change(
        bridges=tuple(b for name, b in new_bridges.items() if old_bridges.get(name) != b),
        # Join and Leave flip ``joined`` only: dockerd moves the peer, the host side stays as it is.
        veths=tuple(
            v for host, v in new_veths.items()
            if host not in old_veths or dataclasses.replace(old_veths[host], joined=v.joined) != v
        ),
        veths_gone=tuple(v for v in old_veths if v not in new_veths),
        bridges_gone=tuple(b for b in old_bridges if b not in new_bridges),
        routes_add=_ordered(after.routes - before.routes),
        routes_del=_ordered(before.routes - after.routes),
        rules_add=_ordered(after.rules - before.rules),
        rules_del=_ordered(before.rules - after.rules),
        sysctls={k: v for k, v in after.sysctls.items() if before.sysctls.get(k) != v},
        firewall=firewall,
        flows_gone=_ordered(before.flows - after.flows),
    )


def scope(before: State, after: State) -> tuple[State, State]:
    """Pure: the parts of ``before`` and ``after`` whose desired kernel objects can differ, so a
    verb computes its change over what it touched, not over the whole host.

    The change of the scoped pair equals the change of the whole pair (a property test holds it):

    - An endpoint's objects (its veth, its DNAT rules, its flows) depend on itself and its
      network only. When only endpoints changed, the scope is those endpoints and their
      networks: the networks' own objects come out the same on both sides, so they cancel.
    - Network-level objects are shared between networks on the same parent (its table's default
      and unreachable routes, its fwmark rule, its CONNMARK rule, its rp_filter and record), and
      between all routed networks (the "main" mark rule, the isolation rules naming Docker's
      bridges, the first jump of MULTINIC-FORWARD). So when a network or a parent record
      changed, the scope holds the changed networks and, of the unchanged ones, one per parent
      involved (per table, mark and next hop, which siblings share anyway) and one of each kind
      that carries host-wide objects: networks alike on a parent produce its shared objects
      identically, so one that stays keeps them on both sides exactly as the whole host has
      them. The endpoints in scope are those of the changed networks and the touched ones (with
      their networks). Creating the 50th network on a NIC then costs what the first did.
    """
    touched = _differing(before.endpoints, after.endpoints)
    changed_nets = _differing(before.networks, after.networks)
    changed_parents = _differing(before.parents, after.parents)
    if changed_nets or changed_parents:
        parents = set(changed_parents)
        for state in (before, after):
            parents |= {n.parent for nid in changed_nets if (n := state.networks.get(nid)) and n.parent}
        keep = set(changed_nets) | _networks_of(touched, before, after)
        unchanged = [before.networks[nid] for nid in sorted(before.networks.keys() - changed_nets)]
        seen: set[tuple[Any, ...]] = set()
        for net in unchanged:  # one network that stays on each parent carries its shared objects
            key = (net.parent, net.internal, net.table, net.mark_slot, net.parent_gateway)
            if net.parent in parents and key not in seen:
                seen.add(key)
                keep.add(net.id)
        keep |= _first(unchanged)  # ... one for the chains' fixed rules (Docker's bridges' isolation)
        keep |= _first(n for n in unchanged if _routed(n))  # ... one for the "main" mark rule

        def part(state: State) -> State:
            return State(
                networks={nid: n for nid, n in state.networks.items() if nid in keep},
                endpoints={
                    eid: ep for eid, ep in state.endpoints.items()
                    if eid in touched or ep.network_id in changed_nets
                },
                parents={p: r for p, r in state.parents.items() if p in parents},
            )

        return part(before), part(after)
    nets = _networks_of(touched, before, after)

    def endpoints_only(state: State) -> State:
        return State(
            networks={nid: state.networks[nid] for nid in nets if nid in state.networks},
            endpoints={eid: state.endpoints[eid] for eid in touched if eid in state.endpoints},
        )

    return endpoints_only(before), endpoints_only(after)


def _networks_of(endpoints: set[str], *states: State) -> set[str]:
    return {ep.network_id for state in states for eid in endpoints if (ep := state.endpoints.get(eid)) is not None}


def _first(nets: Iterable[Any]) -> set[str]:
    return {net.id for net in itertools.islice(nets, 1)}


def _routed(net: Any) -> bool:
    """A network that carries the host-wide "main" mark rule (see :func:`host_state`)."""
    return bool(not net.internal and net.parent and net.table is not None and net.mark_slot)


def _differing(old: Mapping[str, Any], new: Mapping[str, Any]) -> set[str]:
    """Keys whose record differs. A verb's "before" is a shallow copy of its "after", so an
    untouched record is the same object: identity first keeps this cheap on a full host."""
    out = set()
    for key in old.keys() | new.keys():
        a, b = old.get(key), new.get(key)
        if a is not b and a != b:
            out.add(key)
    return out


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
    for parent, record in state.parents.items():
        # The last network on a parent is gone: put back the rp_filter we found there
        # (the record is forgotten only once this is applied).
        if not state.networks_on(parent) and record.rp_filter_before is not None:
            sysctls[f"net/ipv4/conf/{parent}/rp_filter"] = str(record.rp_filter_before)
    flows = frozenset(
        p for ep in state.endpoints.values() if ep.joined and ep.network_id in state.networks for p in ep.ports
    )
    return HostState(
        bridges=tuple(bridges),
        veths=tuple(veths),
        routes=frozenset(routes),
        rules=frozenset(rules),
        sysctls=sysctls,
        firewall=ruleset_for(state, facts),
        flows=flows,
    )


def needs_parent_facts(before: State, after: State) -> bool:
    """Parent facts only shape routes and published ports: a verb that changes neither a network nor an
    endpoint with ports gets the same difference without reading them (both sides over empty facts)."""
    if before.networks != after.networks:
        return True
    for eid in before.endpoints.keys() | after.endpoints.keys():
        old, new = before.endpoints.get(eid), after.endpoints.get(eid)
        if old != new and ((old is not None and old.ports) or (new is not None and new.ports)):
            return True
    return False
