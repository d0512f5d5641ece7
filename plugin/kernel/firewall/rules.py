"""Pure: the firewall rules for the persisted networks and endpoints, per bridge: the connmark that
remembers the parent a connection came in on and restores it on replies (mangle), the published ports'
DNAT in each endpoint's bucket, hairpin and masquerade (nat), and the bridge's way through Docker's
FORWARD DROP, isolated from Docker's bridges and other multinic bridges (filter). docs/ARCHITECTURE.md
says why each rule exists; docs/firewall/ shows them."""

from __future__ import annotations

from typing import Mapping

from ...plan.facts import ParentFacts
from ...plan.state import NetworkRecord, State
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
    Rule,
    Ruleset,
    dnat_bucket,
)

DOCKER_BRIDGES = ("docker0", "br-+")
CTSTATE = ("-m", "conntrack", "--ctstate")


def _mask() -> str:
    return hex(MARK_MASK)


def mangle_rules(state: State) -> tuple[Rule, ...]:
    rules: list[Rule] = []
    parents: dict[str, int] = {}
    for net in sorted(state.networks.values(), key=lambda n: n.bridge):
        if net.parent and net.mark_slot and not net.internal:
            parents[net.parent] = net.mark_slot
    for parent, slot in sorted(parents.items()):
        mark = f"{hex(mark_for_slot(slot))}/{_mask()}"
        rules.append(("-i", parent, *CTSTATE, "NEW", "-j", "CONNMARK", "--set-xmark", mark))
    for net in sorted(state.networks.values(), key=lambda n: n.bridge):
        if net.parent and net.mark_slot and not net.internal:
            rules.append(
                (
                    "-i",
                    net.bridge,
                    "-j",
                    "CONNMARK",
                    "--restore-mark",
                    "--nfmask",
                    _mask(),
                    "--ctmask",
                    _mask(),
                )
            )
    return tuple(rules)


def connmark_rules(state: State) -> tuple[Rule, ...]:
    """A new connection entering a parent-bound bridge that did not come in on a parent NIC
    (eth0, a given HostIP, another bridge, the host) is marked "main": its replies must not
    take the parent's table."""
    main = f"{hex(mark_for_slot(MAIN_MARK_SLOT))}/{_mask()}"
    return tuple(
        ("-o", net.bridge, *CTSTATE, "NEW", "-m", "connmark", "--mark", f"0x0/{_mask()}", "-j", "CONNMARK",
         "--set-xmark", main)
        for net in sorted(state.networks.values(), key=lambda n: n.bridge)
        if net.parent and net.mark_slot and not net.internal
    )


def dnat_rules(state: State, facts: Mapping[str, ParentFacts]) -> dict[str, tuple[Rule, ...]]:
    """Every bucket chain (empty ones too) → the DNAT rules of the endpoints it holds."""
    buckets: dict[str, list[Rule]] = {bucket: [] for bucket in NAT_DNAT_BUCKETS}
    for ep in sorted(state.endpoints.values(), key=lambda e: e.id):
        net = state.networks.get(ep.network_id)
        if net is None or not ep.joined:
            continue
        container_ip = ep.address.split("/")[0]
        rules = buckets[dnat_bucket(ep.id)]
        for port in ep.ports:
            match = ("-p", port.proto, "-m", port.proto, "--dport", str(port.host_port))
            target = ("-j", "DNAT", "--to-destination", f"{container_ip}:{port.container_port}")
            for dst in publish_addresses(net, port.host_ip, facts):
                rules.append((*(("-d", f"{dst}/32") if dst else ()), *match, *target))
    return {bucket: tuple(rules) for bucket, rules in buckets.items()}


def publish_addresses(net: NetworkRecord, host_ip: str, facts: Mapping[str, ParentFacts]) -> tuple[str, ...]:
    """Where a port is published: the given HostIP, else the parent's addresses, else everywhere ("")."""
    if host_ip:
        return (host_ip,)
    if net.parent:
        parent = facts.get(net.parent)
        return tuple(str(a.ip) for a in parent.addresses) if parent else ()
    return ("",)


def nat_postrouting_rules(state: State) -> tuple[Rule, ...]:
    rules: list[Rule] = []
    for net in sorted(state.networks.values(), key=lambda n: n.bridge):
        if net.internal:
            continue
        # Hairpin: a container (or another container on B) reaching a port published by B.
        rules.append(("-s", net.subnet, "-o", net.bridge, *CTSTATE, "DNAT", "-j", "MASQUERADE"))
        if net.masquerade:
            rules.append(("-s", net.subnet, "!", "-o", net.bridge, "-j", "MASQUERADE"))
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


def ruleset_for(state: State, facts: Mapping[str, ParentFacts]) -> Ruleset:
    """Every rule the plugin wants, from the persisted state and the parents' addresses."""
    if not state.networks:
        return Ruleset()
    return Ruleset(
        chains={
            "mangle": {MANGLE_PREROUTING: mangle_rules(state), MANGLE_POSTROUTING: connmark_rules(state)},
            "nat": {
                NAT_DNAT: BUCKET_JUMPS,  # the same whatever the endpoints
                **dnat_rules(state, facts),
                NAT_POSTROUTING: nat_postrouting_rules(state),
            },
            "filter": {
                FILTER_FORWARD: forward_rules(state),
                FILTER_ACCEPT: accept_rules(state),
                FILTER_ISOLATE_DST: isolate_dst_rules(state),
                FILTER_ISOLATE_SRC: isolate_src_rules(state),
            },
        }
    )
