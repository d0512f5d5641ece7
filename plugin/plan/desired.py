"""Pure: the host kernel objects (links, routes, rules, sysctls, firewall, published flows)
the persisted state asks for, and the change between two of them.

Nothing here touches the kernel; :mod:`plugin.kernel.writer` (the one writer) makes the kernel match.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ..kernel.firewall.model import Edit, Ruleset, diff
from ..kernel.firewall.rules import carries_ingress_restore, ruleset_for
from ..kernel.tags import MAIN_MARK_SLOT, MARK_MASK, RULE_PREF_FWMARK, RULE_PREF_LOCAL, RULE_PREF_SOURCE, mark_for_slot
from .facts import ParentFacts
from .state import NetworkRecord, PublishedPort, State

MAIN_TABLE = 254


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
DEFAULT = {4: ipaddress.IPv4Network("0.0.0.0/0"), 6: ipaddress.IPv6Network("::/0")}
FORWARDING6 = "net/ipv6/conf/all/forwarding"


@dataclass(frozen=True)
class BridgeSpec:
    name: str
    network_id: str
    address: ipaddress.IPv4Interface | None
    mtu: int
    address6: ipaddress.IPv6Interface | None = None


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
    dst: IPNetwork
    dev: str
    gateway: IPAddress | None = None
    prefsrc: IPAddress | None = None
    unreachable: bool = False  # a fail-closed "unreachable" route (no dev), below the real default

    @property
    def family(self) -> int:
        return self.dst.version


@dataclass(frozen=True)
class RuleSpec:
    priority: int
    table: int
    src: IPNetwork | None = None
    fwmark: int | None = None
    fwmask: int | None = None
    suppress_prefixlen: int | None = None
    family: int = 4


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
    firewall6: Ruleset = Ruleset()


@dataclass(frozen=True)
class Change:
    """What a verb must do to the kernel: the difference between two desired states.

    Links are compared by spec (a changed spec is re-ensured); removed links are deleted (veths before
    bridges). ``firewall`` (IPv4) or ``firewall6`` is None when one side has no rules at all: creating or
    removing our chains and jumps is then a whole-table apply or removal.
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
    firewall6: tuple[Edit, ...] | None = ()

    def is_empty(self) -> bool:
        return not any(
            (self.bridges, self.veths, self.veths_gone, self.bridges_gone, self.routes_add, self.routes_del,
             self.rules_add, self.rules_del, self.sysctls, self.flows_gone)
        ) and self.firewall == () and self.firewall6 == ()


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
        firewall=_firewall_edits(before.firewall, after.firewall),
        flows_gone=_ordered(before.flows - after.flows),
        firewall6=_firewall_edits(before.firewall6, after.firewall6),
    )


def _firewall_edits(before: Ruleset, after: Ruleset) -> tuple[Edit, ...] | None:
    """The rule edits between two rulesets; None when one side is empty (a whole apply or removal)."""
    if before.is_empty() and after.is_empty():
        return ()
    if before.is_empty() or after.is_empty():
        return None
    return diff(before, after)


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
    if before.has_ipv6() != after.has_ipv6() or before.restore6 != after.restore6:
        return before, after  # IPv6 turned on or off host-wide (forwarding, accept_ra, ip6tables): all of it
    touched = _with_siblings(_differing(before.endpoints, after.endpoints), before, after)
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
        keep |= _first(n for n in unchanged if n.subnet6)  # ... one for the IPv6 tables and their "main" rule
        keep |= _first(n for n in unchanged if _routed(n) and n.subnet6)
        keep |= _first(n for n in unchanged if carries_ingress_restore(n))  # ... one for the mesh's restore rule

        def part(state: State) -> State:
            return State(
                networks={nid: n for nid, n in state.networks.items() if nid in keep},
                endpoints={
                    eid: ep for eid, ep in state.endpoints.items()
                    if eid in touched or ep.network_id in changed_nets
                },
                parents={p: r for p, r in state.parents.items() if p in parents},
                restore6=state.restore6,
            )

        return part(before), part(after)
    nets = _networks_of(touched, before, after)

    def endpoints_only(state: State) -> State:
        return State(
            networks={nid: state.networks[nid] for nid in nets if nid in state.networks},
            endpoints={eid: state.endpoints[eid] for eid in touched if eid in state.endpoints},
            restore6=state.restore6,
        )

    return endpoints_only(before), endpoints_only(after)


def _with_siblings(endpoints: set[str], *states: State) -> set[str]:
    """``endpoints`` and the other endpoints of their containers (a container's endpoints publish its
    ports once between them: see :func:`plugin.kernel.firewall.rules.dnat_rules`)."""
    sandboxes = {ep.sandbox_key for state in states for eid in endpoints
                 if (ep := state.endpoints.get(eid)) is not None and ep.sandbox_key}
    if not sandboxes:
        return endpoints
    return endpoints | {eid for state in states for eid, ep in state.endpoints.items() if ep.sandbox_key in sandboxes}


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
    bridges, veths = [], []
    routes: set[RouteSpec] = set()
    rules: set[RuleSpec] = set()
    sysctls: dict[str, str] = {}
    for net in sorted(state.networks.values(), key=lambda n: n.bridge):
        bridges.append(BridgeSpec(name=net.bridge, network_id=net.id, mtu=net.mtu,
                                  address=ipaddress.IPv4Interface(net.gateway) if net.gateway else None,
                                  address6=ipaddress.IPv6Interface(net.gateway6) if net.gateway6 else None))
        veths += [VethSpec(host=ep.host_veth, peer=ep.peer_veth, bridge=net.bridge, endpoint_id=ep.id, mac=ep.mac,
                           mtu=net.mtu, joined=ep.joined)
                  for ep in sorted(state.endpoints_of(net.id), key=lambda e: e.id)]
        if net.internal or not net.parent or net.table is None:
            continue
        for family in net.families:
            _parent_routing(net, facts.get(net.parent), family, routes, rules)
        if net.mark_slot and net.subnet:
            sysctls[f"net/ipv4/conf/{net.parent}/rp_filter"] = "2"
    for parent, record in state.parents.items():
        # The last network on a parent is gone: put back the rp_filter we found there
        # (the record is forgotten only once this is applied).
        if not state.networks_on(parent) and record.rp_filter_before is not None:
            sysctls[f"net/ipv4/conf/{parent}/rp_filter"] = str(record.rp_filter_before)
    sysctls.update(ipv6_sysctls(state))
    flows = frozenset(  # UDP only, as Docker's bridge: a TCP flow to a container that is gone ends by itself
        p for ep in state.endpoints.values() if ep.joined and ep.network_id in state.networks for p in ep.ports
        if p.proto == "udp"
    )
    return HostState(bridges=tuple(bridges), veths=tuple(veths), routes=frozenset(routes), rules=frozenset(rules),
                     sysctls=sysctls, firewall=ruleset_for(state, facts, 4), flows=flows,
                     firewall6=ruleset_for(state, facts, 6))


def _parent_routing(net: NetworkRecord, parent: ParentFacts | None, family: int, routes: set[RouteSpec],
                    rules: set[RuleSpec]) -> None:
    """The parent's table for one family of a network: the bridge's subnet, the parent's own subnets and
    its next hop (while it is up), a fail-closed unreachable default; the rules that send the subnet's
    traffic, and the replies marked for the parent, to that table."""
    assert net.table is not None
    if family == 4:
        gw = ipaddress.IPv4Interface(net.gateway)
        subnet: IPNetwork = gw.network
        routes.add(RouteSpec(table=net.table, dst=subnet, dev=net.bridge, prefsrc=gw.ip))
    else:
        subnet = ipaddress.IPv6Network(net.subnet6)
        routes.add(RouteSpec(table=net.table, dst=subnet, dev=net.bridge))
    # Fail closed: if the parent is down or gone (its routes vanish with it), the subnet's traffic must
    # not fall through to main and leak out of another NIC.
    routes.add(RouteSpec(table=net.table, dst=DEFAULT[family], dev="", unreachable=True))
    if parent is not None and parent.exists and parent.up:
        if family == 4:
            subnets: dict[IPNetwork, IPAddress | None] = {}
            for addr in parent.addresses:  # one route per subnet: the kernel keeps only one
                subnets.setdefault(addr.network, addr.ip)
            hop = net.parent_gateway
        else:
            subnets = dict.fromkeys(parent.prefixes6)
            hop = net.parent_gateway6
        for dst, src in subnets.items():
            routes.add(RouteSpec(table=net.table, dst=dst, dev=net.parent, prefsrc=src))
        if hop:
            routes.add(RouteSpec(table=net.table, dst=DEFAULT[family], dev=net.parent,
                                 gateway=ipaddress.ip_address(hop.split("%")[0])))
    # Local destinations (other bridges, the host's subnets) stay on main; everything else from this
    # subnet leaves by the parent's table.
    rules.add(RuleSpec(priority=RULE_PREF_LOCAL, table=MAIN_TABLE, src=subnet, suppress_prefixlen=0, family=family))
    rules.add(RuleSpec(priority=RULE_PREF_SOURCE, table=net.table, src=subnet, family=family))
    if net.mark_slot:
        rules.add(RuleSpec(priority=RULE_PREF_FWMARK, table=net.table, fwmark=mark_for_slot(net.mark_slot),
                           fwmask=MARK_MASK, family=family))
        rules.add(RuleSpec(priority=RULE_PREF_FWMARK, table=MAIN_TABLE, fwmark=mark_for_slot(MAIN_MARK_SLOT),
                           fwmask=MARK_MASK, family=family))


def ipv6_sysctls(state: State) -> dict[str, str]:
    """IPv6 forwarding on while an IPv6 network exists, with ``accept_ra=2`` first on the NICs that need
    it to keep their router-advertised default route (the kernel drops it from every NIC with
    ``accept_ra=1`` the moment forwarding goes on); put back, forwarding first, with the last one."""
    if state.has_ipv6():
        out = {path: "2" for path in sorted(state.restore6) if path.endswith("/accept_ra")}
        out[FORWARDING6] = "1"
        return out
    out = {FORWARDING6: state.restore6[FORWARDING6]} if FORWARDING6 in state.restore6 else {}
    out.update({path: value for path, value in sorted(state.restore6.items()) if path != FORWARDING6})
    return out


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
