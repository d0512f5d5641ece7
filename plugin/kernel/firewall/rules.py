"""Pure: the firewall rules for the persisted networks and endpoints, per bridge: the connmark that
remembers the parent a connection came in on and restores it on replies (mangle), the published ports'
DNAT in each endpoint's bucket, hairpin and masquerade (nat), and the bridge's way through Docker's
FORWARD DROP, isolated from Docker's bridges and other multinic bridges (filter). docs/ARCHITECTURE.md
says why each rule exists; docs/firewall/ shows them."""

from __future__ import annotations

import ipaddress
from typing import Mapping

from ...plan.facts import ParentFacts
from ...plan.state import ANY_ADDRESS, NetworkRecord, State
from ..tags import MAIN_MARK_SLOT, MARK_MASK, mark_for_slot
from .model import (
    BUCKET_JUMPS,
    FILTER_ACCEPT,
    FILTER_FORWARD,
    FILTER_ISOLATE_DST,
    FILTER_ISOLATE_SRC,
    MANGLE_POSTROUTING,
    MANGLE_PREROUTING,
    NAT_DNAT,
    NAT_DNAT_BUCKETS,
    NAT_POSTROUTING,
    NAT_SNAT,
    Rule,
    Ruleset,
    dnat_bucket,
)

DOCKER_BRIDGES = ("docker0", "br-+")
DOCKER_GWBRIDGE = "docker_gwbridge"  # swarm's routing mesh (ingress_sbox) and overlay tasks' host ports
CTSTATE = ("-m", "conntrack", "--ctstate")


def _mask() -> str:
    return hex(MARK_MASK)


def _nets(state: State, family: int, *, parent_bound: bool = False) -> list[NetworkRecord]:
    """The networks with an address family (sorted by bridge); ``parent_bound``: bound to a parent with a
    mark (those that get the connmark)."""
    return [n for n in sorted(state.networks.values(), key=lambda n: n.bridge) if family in n.families
            and (not parent_bound or (n.parent and n.mark_slot and not n.internal))]


def carries_ingress_restore(net: NetworkRecord) -> bool:
    """A network asking (``ingress_replies``) that replies coming back from docker_gwbridge take the
    mark of the parent their connection came in on: swarm's routing mesh DNATs a published port to
    ingress_sbox behind docker_gwbridge, and its replies would follow main's default route. One rule for
    the host, IPv4 only (the mesh's)."""
    return bool(net.ingress_replies and net.subnet and net.parent and net.mark_slot and not net.internal)


def mangle_rules(state: State, family: int) -> tuple[Rule, ...]:
    marked = _nets(state, family, parent_bound=True)
    parents = {net.parent: net.mark_slot for net in marked}
    rules: list[Rule] = [("-i", parent, *CTSTATE, "NEW", "-j", "CONNMARK", "--set-xmark",
                          f"{hex(mark_for_slot(slot))}/{_mask()}") for parent, slot in sorted(parents.items())]
    rules += [("-i", net.bridge, "-j", "CONNMARK", "--restore-mark", "--nfmask", _mask(), "--ctmask", _mask())
              for net in marked]
    if family == 4 and any(carries_ingress_restore(net) for net in marked):
        rules.append(("-i", DOCKER_GWBRIDGE, "-j", "CONNMARK", "--restore-mark", "--nfmask", _mask(), "--ctmask",
                      _mask()))
    return tuple(rules)


def connmark_rules(state: State, family: int) -> tuple[Rule, ...]:
    """A new connection entering a parent-bound bridge that did not come in on a parent NIC
    (eth0, a given HostIP, another bridge, the host) is marked "main": its replies must not
    take the parent's table."""
    main = f"{hex(mark_for_slot(MAIN_MARK_SLOT))}/{_mask()}"
    return tuple(("-o", net.bridge, *CTSTATE, "NEW", "-m", "connmark", "--mark", f"0x0/{_mask()}", "-j", "CONNMARK",
                  "--set-xmark", main) for net in _nets(state, family, parent_bound=True))


def dnat_rules(state: State, facts: Mapping[str, ParentFacts], family: int) -> dict[str, tuple[Rule, ...]]:
    """Every bucket chain (empty ones too) → the DNAT rules of the endpoints it holds.

    dockerd sends a container's whole port map to each of its endpoints: where two endpoints of one
    container would publish the same host address and port, the one with the lowest id does (a host port
    is one DNAT, one map element for the native backend); the other takes over when it leaves
    (:func:`plugin.plan.desired.scope` keeps a container's endpoints together)."""
    buckets: dict[str, list[Rule]] = {bucket: [] for bucket in NAT_DNAT_BUCKETS}
    host_bits = 32 if family == 4 else 128
    taken: set[tuple[str, str, str, int]] = set()
    for ep in sorted(state.endpoints.values(), key=lambda e: e.id):
        net = state.networks.get(ep.network_id)
        address = ep.address if family == 4 else ep.address6
        if net is None or not ep.joined or not address:
            continue
        ip = address.split("/")[0]
        rules = buckets[dnat_bucket(ep.id)]
        for port in ep.ports:
            match = ("-p", port.proto, "-m", port.proto, "--dport", str(port.host_port))
            to = f"{ip}:{port.container_port}" if family == 4 else f"[{ip}]:{port.container_port}"
            for dst in publish_addresses(net, port.host_ip, facts):
                if ipaddress.ip_address(dst).version != family:
                    continue
                key = (ep.sandbox_key, dst, port.proto, port.host_port)
                if ep.sandbox_key and key in taken:
                    continue
                taken.add(key)
                where = () if dst in ANY_ADDRESS else ("-d", f"{dst}/{host_bits}")
                rules.append((*where, *match, "-j", "DNAT", "--to-destination", to))
    return {bucket: tuple(rules) for bucket, rules in buckets.items()}


def publish_addresses(net: NetworkRecord, host_ip: str, facts: Mapping[str, ParentFacts]) -> tuple[str, ...]:
    """The addresses a port lands on: of the network's families (only IPv4 for ``0.0.0.0``, only IPv6 for
    ``::``, as Docker does), the parent's addresses as they are now (for IPv6 its stable ones), or each
    family's "any" address for a network without a parent. A given IPv4 HostIP lands as given; a given
    IPv6 one only while it is one of the parent's stable addresses (never on one that went, or turned
    deprecated), as given without a parent."""
    families = net.families
    given = host_ip and host_ip not in ANY_ADDRESS
    if host_ip in ANY_ADDRESS:
        families = tuple(f for f in families if ANY_ADDRESS[f == 6] == host_ip)
    if given and (not net.parent or ipaddress.ip_address(host_ip).version == 4):
        return (host_ip,)
    if not net.parent:
        return tuple(ANY_ADDRESS[f == 6] for f in families)
    parent = facts.get(net.parent)
    if parent is None:
        return ()
    mine = (*(str(a.ip) for a in parent.addresses if 4 in families),
            *(str(a.ip) for a in parent.addresses6 if 6 in families))
    return tuple(a for a in mine if ipaddress.ip_address(a) == ipaddress.ip_address(host_ip)) if given else mine


def snat_rules(state: State, facts: Mapping[str, ParentFacts], family: int) -> tuple[Rule, ...]:
    """IPv6 egress through the parent leaves from the parent's first global, non-temporary, non-deprecated
    address (MASQUERADE would let the kernel pick a temporary one). A chain of its own, entered first."""
    if family != 6:
        return ()
    rules: list[Rule] = []
    for net in _nets(state, 6):
        parent = facts.get(net.parent or "")
        if net.masquerade and not net.internal and parent is not None and parent.addresses6:
            rules.append(("-s", net.subnet6, "-o", parent.ifname, "-j", "SNAT", "--to-source",
                          str(parent.addresses6[0].ip)))
    return tuple(rules)


def nat_postrouting_rules(state: State, family: int) -> tuple[Rule, ...]:
    rules: list[Rule] = [("-j", NAT_SNAT)]
    for net in _nets(state, family):
        if net.internal:
            continue
        subnet = net.subnet if family == 4 else net.subnet6
        # Hairpin: a container (or another container on B) reaching a port published by B.
        rules.append(("-s", subnet, "-o", net.bridge, *CTSTATE, "DNAT", "-j", "MASQUERADE"))
        if net.masquerade:
            rules.append(("-s", subnet, "!", "-o", net.bridge, "-j", "MASQUERADE"))
    return tuple(rules)


def accept_rules(state: State) -> tuple[Rule, ...]:
    """Accepts that must hold whatever the isolation says, for every bridge: replies,
    intra-bridge traffic and published ports (DNAT), also when reached from another bridge.
    A chain of their own, entered before any bridge's isolation."""
    rules: list[Rule] = []
    for net in sorted(state.networks.values(), key=lambda n: n.bridge):
        b = net.bridge
        rules.append(("-o", b, *CTSTATE, "RELATED,ESTABLISHED", "-j", "ACCEPT"))
        rules.append(("-i", b, *CTSTATE, "RELATED,ESTABLISHED", "-j", "ACCEPT"))
        rules.append(("-i", b, "-o", b, "-j", "ACCEPT"))
        if not net.internal:
            rules.append(("-o", b, *CTSTATE, "DNAT", "-j", "ACCEPT"))
    return tuple(rules)


def forward_rules(state: State) -> tuple[Rule, ...]:
    """After the accepts, per bridge: isolation drops and the bridge's own egress/ingress policy.

    Isolation is two-staged, as Docker's bridge driver does it: a bridge's new traffic enters
    MULTINIC-ISOLATE-DST, which drops it towards any container bridge (Docker's and ours), so
    adding a network adds its own rules only, never one per other network. Every rule names its
    own bridge, so the order between bridges does not matter (rules are appended and deleted
    per network)."""
    rules: list[Rule] = [("-j", FILTER_ACCEPT)]
    for net in sorted(state.networks.values(), key=lambda n: n.bridge):
        b = net.bridge
        if net.internal:
            rules.append(("-i", b, "-j", "DROP"))
            rules.append(("-o", b, "-j", "DROP"))
            continue
        rules.append(("-i", b, "-j", FILTER_ISOLATE_DST))
        rules.append(("-i", b, "-j", "ACCEPT"))
        if not net.masquerade:
            # Routed mode: new connections from outside reach the containers directly,
            # but never from another container network.
            rules.append(("-o", b, "-j", FILTER_ISOLATE_SRC))
            rules.append(("-o", b, "-j", "ACCEPT"))
        rules.append(("-o", b, "-j", "DROP"))
    return tuple(rules)


def isolate_dst_rules(state: State) -> tuple[Rule, ...]:
    """Traffic a bridge's container starts towards another container bridge is dropped
    (traffic within a bridge was accepted before)."""
    nets = sorted(state.networks.values(), key=lambda n: n.bridge)
    return (*(("-o", b, "-j", "DROP") for b in DOCKER_BRIDGES), *(("-o", n.bridge, "-j", "DROP") for n in nets))


def isolate_src_rules(state: State) -> tuple[Rule, ...]:
    nets = sorted(state.networks.values(), key=lambda n: n.bridge)
    return (*(("-i", b, "-j", "DROP") for b in DOCKER_BRIDGES), *(("-i", n.bridge, "-j", "DROP") for n in nets))


def ruleset_for(state: State, facts: Mapping[str, ParentFacts], family: int = 4) -> Ruleset:
    """Every rule the plugin wants in one family's tables (iptables, ip6tables), from the persisted state
    and the parents' addresses. The IPv6 tables hold nothing while no network has IPv6; then they isolate
    every bridge, as the IPv4 ones do."""
    if not state.networks or (family == 6 and not state.has_ipv6()):
        return Ruleset()
    return Ruleset(
        chains={
            "mangle": {MANGLE_PREROUTING: mangle_rules(state, family),
                       MANGLE_POSTROUTING: connmark_rules(state, family)},
            "nat": {
                NAT_DNAT: BUCKET_JUMPS,  # the same whatever the endpoints
                **dnat_rules(state, facts, family),
                NAT_POSTROUTING: nat_postrouting_rules(state, family),
                NAT_SNAT: snat_rules(state, facts, family),
            },
            "filter": {
                FILTER_FORWARD: forward_rules(state),
                FILTER_ACCEPT: accept_rules(state),
                FILTER_ISOLATE_DST: isolate_dst_rules(state),
                FILTER_ISOLATE_SRC: isolate_src_rules(state),
            },
        }
    )
