"""The firewall as data: chains the plugin owns, their rules, and the jumps into them.

A rule is an iptables argument vector without ``-A CHAIN`` (``("-i", "eth1", "-j", "ACCEPT")``),
so every backend renders the same object: the restore backends as text, the libiptc
backend through python-iptables.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

from ..tags import COMMENT

Rule = tuple[str, ...]

MANGLE_PREROUTING = "MULTINIC-PREROUTING"
MANGLE_POSTROUTING = "MULTINIC-CONNMARK"
NAT_DNAT = "MULTINIC-DNAT"  # only the fixed jumps to the buckets below, in order
NAT_POSTROUTING = "MULTINIC-POSTROUTING"
NAT_SNAT = "MULTINIC-SNAT"  # IPv6 egress from the parent's stable address, entered first from MULTINIC-POSTROUTING
FILTER_FORWARD = "MULTINIC-FORWARD"
FILTER_ACCEPT = "MULTINIC-ACCEPT"  # accepts of every bridge, entered first from MULTINIC-FORWARD
FILTER_ISOLATE_DST = "MULTINIC-ISOLATE-DST"  # "-o <any container bridge> DROP"
FILTER_ISOLATE_SRC = "MULTINIC-ISOLATE-SRC"  # "-i <any container bridge> DROP" (routed mode)

TABLES = ("mangle", "nat", "filter")

# Published ports' DNAT rules are sharded over a fixed number of chains: deleting a rule with
# iptables-nft costs time in proportion to the rules of its chain (the whole chain is read and
# searched), so a Leave on a host with thousands of published ports pays for 1/DNAT_BUCKETS of
# them. An endpoint's rules all live in one bucket, chosen from its id by :func:`dnat_bucket`.
DNAT_BUCKETS = 32
NAT_DNAT_BUCKETS: tuple[str, ...] = tuple(f"{NAT_DNAT}-{i:02x}" for i in range(DNAT_BUCKETS))
# The whole of MULTINIC-DNAT (its rules, so a plain part of the ruleset, not :data:`JUMPS`).
BUCKET_JUMPS: tuple[Rule, ...] = tuple(("-j", bucket) for bucket in NAT_DNAT_BUCKETS)


def dnat_bucket(endpoint_id: str) -> str:
    """The bucket chain of an endpoint's DNAT rules: ``MULTINIC-DNAT-xx`` with
    ``xx = int(endpoint_id[:8], 16) % DNAT_BUCKETS`` in two hex digits.

    Stable for the endpoint's life (its id never changes), computable by hand from the short id
    ``multinic status`` shows, and uniform since Docker's ids are random hex. An id that is not
    hex (never from dockerd) is hashed first (SHA-256), to stay stable across processes."""
    head = endpoint_id[:8]
    try:
        value = int(head, 16)
    except ValueError:
        value = int(hashlib.sha256(endpoint_id.encode()).hexdigest()[:8], 16)
    return NAT_DNAT_BUCKETS[value % DNAT_BUCKETS]


DOCKER_USER = "DOCKER-USER"


@dataclass(frozen=True)
class Jump:
    """A rule in a chain we do not own (built-in or Docker's) that enters one of ours.

    ``optional``: only where ``chain`` exists. ``last``: after every rule of the chain but a closing
    bare ``-j RETURN`` (the user's rules in DOCKER-USER come first, as for Docker's own ports).
    ``only_without``: only where that chain does not exist (and removed where it does).
    """

    table: str
    chain: str
    target: str
    match: Rule = ()
    optional: bool = False
    last: bool = False
    only_without: str = ""

    @property
    def rule(self) -> Rule:
        return (*self.match, "-m", "comment", "--comment", COMMENT, "-j", self.target)

    def enters(self, rendered: str) -> bool:
        """Is this rule (as ``iptables -S`` renders it, without ``-A CHAIN``) this jump?"""
        return rendered.endswith(f"-j {self.target}") and f"--comment {COMMENT}" in rendered

    def placement(self, chains: Mapping[str, Sequence[str]]) -> list[tuple[str, int]] | None:
        """Pure: the edits that leave this jump exactly where it belongs in one table's ``chains``
        (chain → its rules as rendered): ``("-D", n)`` deletes rule ``n``, ``("-I", n)`` inserts the
        jump as rule ``n`` (one past the end appends), in order. None: its chain does not exist."""
        rules = chains.get(self.chain)
        if rules is None:
            return None
        ours = [n for n, rule in enumerate(rules, 1) if self.enters(rule)]
        if self.only_without and self.only_without in chains:
            return [("-D", n) for n in reversed(ours)]
        if not self.last:
            return [("-I", 1)] if not ours else [("-D", n) for n in reversed(ours[1:])]
        closing = 1 if rules and rules[-1] == "-j RETURN" else 0
        if ours == [len(rules) - closing]:
            return []
        return [*(("-D", n) for n in reversed(ours)), ("-I", len(rules) - len(ours) - closing + 1)]


# Jumps are always the same; only our chains' contents change.
JUMPS: tuple[Jump, ...] = (
    Jump("mangle", "PREROUTING", MANGLE_PREROUTING),
    Jump("mangle", "POSTROUTING", MANGLE_POSTROUTING),
    Jump("nat", "PREROUTING", NAT_DNAT, ("-m", "addrtype", "--dst-type", "LOCAL")),
    Jump("nat", "OUTPUT", NAT_DNAT, ("-m", "addrtype", "--dst-type", "LOCAL")),
    Jump("nat", "POSTROUTING", NAT_POSTROUTING),
    # Where dockerd manages the firewall, FORWARD is entered through DOCKER-USER, which Docker keeps
    # first (above its own accepts): ours goes after the user's rules there, so they hold for
    # multinic's ports as for Docker's. Without DOCKER-USER, FORWARD is entered directly.
    Jump("filter", DOCKER_USER, FILTER_FORWARD, optional=True, last=True),
    Jump("filter", "FORWARD", FILTER_FORWARD, only_without=DOCKER_USER),
)

CHAINS: dict[str, tuple[str, ...]] = {
    "mangle": (MANGLE_PREROUTING, MANGLE_POSTROUTING),
    "nat": (NAT_DNAT, *NAT_DNAT_BUCKETS, NAT_POSTROUTING, NAT_SNAT),
    "filter": (FILTER_FORWARD, FILTER_ACCEPT, FILTER_ISOLATE_DST, FILTER_ISOLATE_SRC),
}


@dataclass(frozen=True)
class Ruleset:
    """Desired contents of every chain we own, table → chain → rules (order matters)."""

    chains: dict[str, dict[str, tuple[Rule, ...]]] = field(default_factory=dict)

    def rules(self, table: str, chain: str) -> tuple[Rule, ...]:
        return self.chains.get(table, {}).get(chain, ())

    def is_empty(self) -> bool:
        return not any(rules for chains in self.chains.values() for rules in chains.values())


@dataclass(frozen=True)
class Edit:
    """One rule to add at the end of (``-A``) or delete from (``-D``) one of our chains."""

    table: str
    chain: str
    action: str  # "-A" or "-D"
    rule: Rule


def diff(before: Ruleset, after: Ruleset) -> tuple[Edit, ...]:
    """The rule edits that turn ``before`` into ``after``, chain by chain, as multisets.

    Only valid when both are non-empty (our chains and jumps exist on both sides) and when the
    order of rules *between* networks or endpoints does not matter, which :mod:`.rules`
    guarantees: every rule of a chain names its own bridge or port, and rules that must come
    first live in a chain of their own. Deletions come first; additions keep ``after``'s order.
    """
    deletes: list[Edit] = []
    adds: list[Edit] = []
    for table in TABLES:
        for chain in CHAINS[table]:
            old, new = before.rules(table, chain), after.rules(table, chain)
            if old == new:
                continue
            gone = Counter(old) - Counter(new)
            extra = Counter(new) - Counter(old)
            for rule in old:
                if gone[rule]:
                    gone[rule] -= 1
                    deletes.append(Edit(table, chain, "-D", rule))
            for rule in new:
                if extra[rule]:
                    extra[rule] -= 1
                    adds.append(Edit(table, chain, "-A", rule))
    return (*deletes, *adds)


class FirewallBackend(Protocol):
    """One implementation per way of writing the firewall (iptables-nft-restore, legacy libiptc, native
    nftables through libnftables, ...)."""

    name: str

    def apply(self, ruleset: Ruleset) -> None:
        """Make our chains hold exactly ``ruleset`` and the jumps exist; atomic per table."""

    def edit(self, edits: tuple[Edit, ...], full: Callable[[], Ruleset]) -> None:
        """Apply ``edits`` (computed against what the writer believes is in place) as ONE
        atomic commit; raise if the kernel does not match that belief (the writer then falls
        back to the whole host). Jumps and chains are assumed present. ``full`` computes every
        rule the host wants, for a backend that can only replace whole tables (legacy); the
        request path never computes it otherwise."""

    def remove(self) -> None:
        """Remove every jump and chain we own; no error if already gone."""

    def dump(self) -> dict[str, list[str]]:
        """Our chains and jumps as ``iptables -S`` lines, per table (for status and tests)."""

    def drift(self, ruleset: Ruleset) -> list[str]:
        """How what the kernel holds of ours differs from ``ruleset`` (empty: in sync), for the healer."""

    def published(self) -> list[Any]:
        """The ports the kernel really publishes for us (:class:`plugin.plan.rebuild.Published`)."""
