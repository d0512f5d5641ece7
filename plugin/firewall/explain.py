"""Render the rules multinic writes as Markdown, for docs/firewall/ (golden files a unit test
regenerates and compares, as moby's iptablesdoc does for Docker's bridge driver)."""

from __future__ import annotations

from .model import CHAINS, JUMPS, TABLES, Edit, Ruleset
from .restore import RestoreBackend


def render_ruleset(ruleset: Ruleset) -> str:
    """``iptables -S``-like text per table: the jumps into our chains, then our chains."""
    out: list[str] = []
    for table in TABLES:
        out.append(f"### {table}\n")
        out.append("```")
        for jump in (j for j in JUMPS if j.table == table):
            note = "   # only if DOCKER-USER exists" if jump.optional else ""
            out.append(f"-I {jump.chain} 1 {RestoreBackend._line('', '', jump.rule).strip()}{note}")
        for chain in CHAINS[table]:
            out.append(f"-N {chain}")
            out += [RestoreBackend._line("-A", chain, rule) for rule in ruleset.rules(table, chain)]
        out.append("```\n")
    return "\n".join(out)


def render_edit(edits: tuple[Edit, ...]) -> str:
    """The whole input of the one ``iptables-restore --noflush`` a verb runs."""
    if not edits:
        return "(no firewall change: no process is started)\n"
    return "```\n" + RestoreBackend.edit_payload(edits) + "```\n"
