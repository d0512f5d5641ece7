"""The firewall as data: chains the plugin owns, their rules, and the jumps into them.

A rule is an iptables argument vector without ``-A CHAIN`` (``("-i", "eth1", "-j", "ACCEPT")``),
so every backend renders the same object: the restore backends as text, the libiptc
backend through python-iptables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..tags import CHAIN_PREFIX, COMMENT

Rule = tuple[str, ...]

MANGLE_PREROUTING = "MULTINIC-PREROUTING"
MANGLE_POSTROUTING = "MULTINIC-CONNMARK"
NAT_DNAT = "MULTINIC-DNAT"
NAT_POSTROUTING = "MULTINIC-POSTROUTING"
FILTER_FORWARD = "MULTINIC-FORWARD"

TABLES = ("mangle", "nat", "filter")


@dataclass(frozen=True)
class Jump:
    """A rule in a chain we do not own (built-in or Docker's) that enters one of ours.

    ``optional``: only placed if ``chain`` already exists (DOCKER-USER exists only where
    dockerd manages the firewall).
    """

    table: str
    chain: str
    target: str
    match: Rule = ()
    optional: bool = False

    @property
    def rule(self) -> Rule:
        return (*self.match, "-m", "comment", "--comment", COMMENT, "-j", self.target)


# Jumps are always the same; only our chains' contents change.
JUMPS: tuple[Jump, ...] = (
    Jump("mangle", "PREROUTING", MANGLE_PREROUTING),
    Jump("mangle", "POSTROUTING", MANGLE_POSTROUTING),
    Jump("nat", "PREROUTING", NAT_DNAT, ("-m", "addrtype", "--dst-type", "LOCAL")),
    Jump("nat", "OUTPUT", NAT_DNAT, ("-m", "addrtype", "--dst-type", "LOCAL")),
    Jump("nat", "POSTROUTING", NAT_POSTROUTING),
    Jump("filter", "FORWARD", FILTER_FORWARD),
    # Docker keeps DOCKER-USER first in FORWARD and re-inserts its own per-bridge ACCEPTs
    # above anything else, so isolation only holds when entered from here too.
    Jump("filter", "DOCKER-USER", FILTER_FORWARD, optional=True),
)

CHAINS: dict[str, tuple[str, ...]] = {
    "mangle": (MANGLE_PREROUTING, MANGLE_POSTROUTING),
    "nat": (NAT_DNAT, NAT_POSTROUTING),
    "filter": (FILTER_FORWARD,),
}


@dataclass(frozen=True)
class Ruleset:
    """Desired contents of every chain we own, table → chain → rules (order matters)."""

    chains: dict[str, dict[str, tuple[Rule, ...]]] = field(default_factory=dict)

    def rules(self, table: str, chain: str) -> tuple[Rule, ...]:
        return self.chains.get(table, {}).get(chain, ())

    def is_empty(self) -> bool:
        return not any(rules for chains in self.chains.values() for rules in chains.values())


class FirewallBackend(Protocol):
    """One implementation per iptables flavour (nf_tables CLI, legacy libiptc, ...)."""

    name: str

    def apply(self, ruleset: Ruleset) -> None:
        """Make our chains hold exactly ``ruleset`` and the jumps exist; atomic per table."""

    def remove(self) -> None:
        """Remove every jump and chain we own; no error if already gone."""

    def dump(self) -> dict[str, list[str]]:
        """Our chains and jumps as ``iptables -S`` lines, per table (for status and tests)."""


def is_owned_chain(name: str) -> bool:
    return name.startswith(CHAIN_PREFIX)
