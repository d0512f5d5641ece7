"""Render the rules multinic writes as Markdown, for docs/firewall/ (golden files a unit test
regenerates and compares, as moby's iptablesdoc does for Docker's bridge driver)."""

from __future__ import annotations

from .model import BUCKET_JUMPS, CHAINS, DNAT_BUCKETS, JUMPS, NAT_DNAT, NAT_DNAT_BUCKETS, TABLES, Edit, Ruleset
from .restore import RestoreBackend
from .view import line


def _chain(ruleset: Ruleset, table: str, chain: str) -> list[str]:
    """``-N`` and the rules of one chain. The DNAT buckets are summarised: of the fixed jumps
    into them only the first two and the last are shown, and empty buckets are left out (two
    comment lines say so)."""
    rules = ruleset.rules(table, chain)
    if chain in NAT_DNAT_BUCKETS:
        head = []
        if chain == NAT_DNAT_BUCKETS[0]:
            head = [
                f"# {NAT_DNAT_BUCKETS[0]} … {NAT_DNAT_BUCKETS[-1]}: {DNAT_BUCKETS} bucket chains, always created "
                "(empty ones not shown here);",
                f"# an endpoint's DNAT rules all go to bucket int(endpoint_id[:8], 16) % {DNAT_BUCKETS}",
            ]
        if not rules:
            return head
        return [*head, f"-N {chain}", *(line("-A", chain, rule) for rule in rules)]
    lines = [f"-N {chain}", *(line("-A", chain, rule) for rule in rules)]
    if chain == NAT_DNAT and rules == BUCKET_JUMPS and len(rules) > 3:
        lines[3:-1] = [f"# … one jump per bucket, in order, up to {NAT_DNAT_BUCKETS[-1]}:"]
    return lines


def render_ruleset(ruleset: Ruleset) -> str:
    """``iptables -S``-like text per table: the jumps into our chains, then our chains."""
    out: list[str] = []
    for table in TABLES:
        out.append(f"### {table}\n")
        out.append("```")
        for jump in (j for j in JUMPS if j.table == table):
            if jump.last:
                out.append(f"-A {jump.chain} {line('', '', jump.rule)}   # last, before a closing -j RETURN; "
                           f"only if {jump.chain} exists")
            else:
                note = f"   # only if {jump.only_without} does not exist" if jump.only_without else ""
                out.append(f"-I {jump.chain} 1 {line('', '', jump.rule)}{note}")
        for chain in CHAINS[table]:
            out += _chain(ruleset, table, chain)
        out.append("```\n")
    return "\n".join(out)


def render_edit(edits: tuple[Edit, ...]) -> str:
    """The whole input of the one ``iptables-restore --noflush`` a verb runs."""
    if not edits:
        return "(no firewall change: no process is started)\n"
    return "```\n" + RestoreBackend.edit_payload(edits) + "```\n"
