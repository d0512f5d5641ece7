"""Render the rules multinic writes as Markdown, for docs/firewall/ (golden files a unit test
regenerates and compares, as moby's iptablesdoc does for Docker's bridge driver): as iptables-nft's
restore input, and as the native backend's nftables table and transactions."""

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


def render_native(ruleset: Ruleset, family: int = 4) -> str:
    """The native backend's whole table for ``ruleset`` (what one transaction defines)."""
    from .native import document

    return "```\n" + document(ruleset, family).replace("\t", "    ") + "```\n"


def render_native_edit(edits: tuple[Edit, ...], family: int = 4) -> str:
    """The one libnftables transaction a verb runs with the native backend (a rule deleted by the handle
    its comment names in the kernel: shown as ``handle <the rule commented ...>``)."""
    from .native import edit_commands

    if not edits:
        return "(no firewall change)\n"
    names: dict[int, str] = {}

    def handles(chain: str) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for e in edits:
            if e.chain == chain and e.action == "-D":
                from .native import comment

                names[len(names) + 1] = comment(e.rule)
                out.setdefault(comment(e.rule), []).append(len(names))
        return out

    lines = []
    for command in edit_commands(edits, family, handles):
        head, _, n = command.rpartition(" handle ")
        lines.append(f'{head} handle <of the rule commented "{names[int(n)]}">' if head else command)
    return "```\n" + "\n".join(lines) + "\n```\n"


def render_edit(edits: tuple[Edit, ...]) -> str:
    """The whole input of the one ``iptables-restore --noflush`` a verb runs."""
    if not edits:
        return "(no firewall change: no process is started)\n"
    return "```\n" + RestoreBackend.edit_payload(edits) + "```\n"
