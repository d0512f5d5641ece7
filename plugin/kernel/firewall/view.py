"""The firewall as ``iptables-save`` prints it, parsed once here (for the backends, the healer's drift
check and the doctor), and our rules rendered the same way, so both compare as text."""

from __future__ import annotations

import subprocess
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ...errors import Failure
from .model import CHAINS, JUMPS, NAT_DNAT_BUCKETS, TABLES, Rule, Ruleset


def render(rule: Rule) -> str:
    """A rule as ``iptables -S`` prints it, without ``-A CHAIN`` (tokens with spaces quoted)."""
    return " ".join(f'"{tok}"' if " " in tok else tok for tok in rule)


def line(action: str, chain: str, rule: Rule) -> str:
    """``-A CHAIN rule`` (or ``-D``, ``-I CHAIN N``: ``rule`` may start with the position)."""
    return " ".join(filter(None, [action, chain, render(rule)]))


@dataclass
class View:
    """One flavour's tables: table → chain → policy ("-" for user chains), table → chain → rules."""

    available: bool = False
    policies: dict[str, dict[str, str]] = field(default_factory=dict)
    rules: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def chains(self, table: str) -> dict[str, list[str]]:
        """chain → its rules (every chain, empty ones too)."""
        out = {chain: [] for chain in self.policies.get(table, {})}
        out.update(self.rules.get(table, {}))
        return out

    def chain_rules(self, table: str, chain: str) -> list[str]:
        return self.rules.get(table, {}).get(chain, [])

    @property
    def has_docker(self) -> bool:
        return any(c == "DOCKER" or c.startswith("DOCKER-") for t in ("filter", "nat") for c in self.chains(t))

    @property
    def has_ours(self) -> bool:
        return any(c in CHAINS[t] for t in TABLES for c in self.chains(t))


def parse(text: str) -> View:
    view = View(available=True)
    table = ""
    for raw in text.splitlines():
        raw = raw.strip()
        if raw.startswith("*"):
            table = raw[1:]
            view.policies.setdefault(table, {})
            view.rules.setdefault(table, {})
        elif raw.startswith(":") and table:
            chain, policy = (raw[1:].split() + ["-"])[:2]
            view.policies[table][chain] = policy
        elif raw.startswith("-A ") and table:
            _, chain, *rest = raw.split(" ", 2) + [""]
            view.rules[table].setdefault(chain, []).append(rest[0].strip())
    return view


def save(flavour: str, table: str | None = None, family: int = 4) -> View:
    """``iptables-<flavour>-save`` (``ip6tables-…`` for family 6; of one table, or of all in use). A
    :class:`Failure` if it fails; OSError if it is not installed."""
    args = [f"{'ip6tables' if family == 6 else 'iptables'}-{flavour}-save", *(("-t", table) if table else ())]
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise Failure(f"firewall read failed ({' '.join(args)}): {proc.stderr.strip() or proc.stdout.strip()}")
    return parse(proc.stdout)


def read(flavour: str, table: str | None = None, family: int = 4) -> View:
    """:func:`save`, or an empty, unavailable view if the tool is missing or fails."""
    try:
        return save(flavour, table, family)
    except (Failure, OSError):
        return View()


def drift(view: View, ruleset: Ruleset, tables: tuple[str, ...] = TABLES) -> list[str]:
    """Pure: how our chains and jumps in ``view`` (of ``tables``) differ from ``ruleset`` (empty: in sync).
    Chains compare as multisets (the order between networks does not matter); a jump must be where
    :meth:`Jump.placement` puts it."""
    reasons = []
    for table in tables:
        chains = view.chains(table)
        for chain in CHAINS[table]:
            want = Counter(render(rule) for rule in ruleset.rules(table, chain))
            if chain not in chains and not ruleset.is_empty():
                reasons.append(f"{table}: chain {chain} missing")
            elif Counter(chains.get(chain, [])) != want:
                reasons.append(f"{table}: {chain} differs from the state")
        for jump in (j for j in JUMPS if j.table == table):
            edits = jump.placement(chains)
            if edits:
                reasons.append(f"{table}: the jump {jump.chain} -> {jump.target} is missing or misplaced")
            elif edits is None and not jump.optional and not ruleset.is_empty():
                reasons.append(f"{table}: chain {jump.chain} does not exist")
    return reasons


def published(view: View) -> list[Any]:
    """Our DNAT rules as :class:`plugin.plan.rebuild.Published` (the ports the kernel really publishes)."""
    from ...plan.rebuild import Published

    out = []
    for chain in NAT_DNAT_BUCKETS:
        for rule in view.chain_rules("nat", chain):
            tokens = rule.split()
            opts = {tokens[i]: tokens[i + 1] for i in range(len(tokens) - 1) if tokens[i].startswith("-")}
            target = opts.get("--to-destination", "")
            if "-p" not in opts or "--dport" not in opts or ":" not in target:
                continue
            ip, _, port = target.rpartition(":")
            out.append(Published(opts["-p"], opts.get("-d", "").split("/")[0], int(opts["--dport"]), ip.strip("[]"),
                                 int(port)))
    return out
