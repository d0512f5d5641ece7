"""The backend driving ``iptables-restore`` (or ``ip6tables-restore``) of one flavour (``nft`` or ``legacy``):
the one for hosts whose dockerd writes nf_tables through iptables-nft (Debian 12 and most current
distributions). Each change is one ``iptables-restore --noflush``: one nf_tables transaction."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any, Callable

from ...errors import Failure
from .model import CHAINS, JUMPS, TABLES, Edit, Ruleset
from .view import View, drift, line, published, save
from .view import read as read_or_empty


class RestoreBackend:
    def __init__(self, flavour: str, family: int = 4, tables: tuple[str, ...] = TABLES) -> None:
        """``tables``: the tables whose chains and jumps this backend owns (the native backend's opening of
        Docker's FORWARD DROP owns only ``filter``)."""
        if flavour not in ("nft", "legacy") or family not in (4, 6) or not set(tables) <= set(TABLES):
            raise ValueError((flavour, family, tables))
        self.flavour = flavour
        self.family = family
        self.tables = tables
        self.name = f"{'ip6tables' if family == 6 else 'iptables'}-{flavour}"

    # -- plumbing -----------------------------------------------------------------------------------
    def read(self) -> View:
        """Every table we use, from ONE ``<flavour>-save`` (iptables-nft-save fetches the whole ruleset
        whatever ``-t`` says, so one save per table costs as much as all of them). A table missing from
        it (nf_tables: not created yet; legacy: module not loaded) is read on its own, which lists its
        built-in chains."""
        view = save(self.flavour, None, self.family)
        for table in self.tables:
            if table not in view.policies:
                one = save(self.flavour, table, self.family)
                view.policies[table] = one.policies.get(table, {})
                view.rules[table] = one.rules.get(table, {})
        return view

    def _restore(self, payload: str) -> None:
        proc = subprocess.run([f"{self.name}-restore", "-w", "--noflush"], input=payload, capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise Failure(f"firewall update failed ({self.name}-restore): "
                          f"{proc.stderr.strip() or proc.stdout.strip()}")

    # -- the backend interface ---------------------------------------------------------------------------
    def apply(self, ruleset: Ruleset) -> None:
        """Our chains hold exactly ``ruleset``, every jump where it belongs: one restore for all tables,
        which iptables-nft-restore commits as one transaction (every check runs before anything is
        written)."""
        view = self.read()
        lines: list[str] = []
        for table in self.tables:
            chains = view.chains(table)
            lines.append(f"*{table}")
            lines += [f":{chain} - [0:0]" for chain in CHAINS[table]]
            for chain in CHAINS[table]:
                lines += [line("-A", chain, rule) for rule in ruleset.rules(table, chain)]
            for jump in (j for j in JUMPS if j.table == table):
                edits = jump.placement(chains)
                if edits is None:
                    if jump.optional:
                        continue
                    raise Failure(f"firewall chain {table}/{jump.chain} does not exist")
                lines += [f"-D {jump.chain} {n}" if op == "-D" else line("-I", jump.chain, (str(n), *jump.rule))
                          for op, n in edits]
            lines.append("COMMIT")
        self._restore("\n".join(lines) + "\n")

    def edit(self, edits: tuple[Edit, ...], full: Callable[[], Ruleset]) -> None:
        """One ``iptables-restore --noflush`` holding only ``edits``: its size is the verb's own rules,
        whatever else is on the host. A ``-D`` of a rule that is not there fails the whole transaction
        (the writer then re-applies the whole host)."""
        if edits:
            self._restore(self.edit_payload(edits))

    @classmethod
    def edit_payload(cls, edits: tuple[Edit, ...]) -> str:
        lines: list[str] = []
        for table in TABLES:
            mine = [e for e in edits if e.table == table]
            if mine:
                lines += [f"*{table}", *(line(e.action, e.chain, e.rule) for e in mine), "COMMIT"]
        return "\n".join(lines) + "\n"

    def remove(self) -> None:
        """Our jumps and chains out, from ONE ``<flavour>-save`` of the tables that exist (a table missing
        from it holds nothing of ours, and reading it on its own would load its module, legacy). A save
        that fails is a :class:`Failure`: an empty view would answer "removed" with our chains still
        there."""
        view = save(self.flavour, None, self.family)
        for table in self.tables:
            chains = view.chains(table)
            present = [c for c in CHAINS[table] if c in chains]
            lines = [f"*{table}", *(f":{chain} - [0:0]" for chain in present)]
            for jump in (j for j in JUMPS if j.table == table):
                ours = [n for n, rule in enumerate(chains.get(jump.chain, []), 1) if jump.enters(rule)]
                lines += [f"-D {jump.chain} {n}" for n in reversed(ours)]
            lines += [f"-X {chain}" for chain in present]
            if len(lines) > 1:
                self._restore("\n".join([*lines, "COMMIT"]) + "\n")
            self._drop_if_pristine(table)

    def _readable(self) -> View:
        """For display only (:meth:`dump`): what cannot be read shows as nothing."""
        try:
            return self.read()
        except Failure:
            return View()

    def _drop_if_pristine(self, table: str) -> None:
        """On nf_tables, touching a table creates it; drop it again if nothing but empty ACCEPT built-ins
        is left, so a host without a mangle table gets none from us."""
        if self.flavour != "nft" or not shutil.which("nft"):
            return
        view = read_or_empty(self.flavour, table, self.family)
        policies = view.policies.get(table, {})
        if policies and set(policies.values()) == {"ACCEPT"} and not any(view.chains(table).values()):
            subprocess.run(["nft", "delete", "table", "ip6" if self.family == 6 else "ip", table],
                           capture_output=True)

    def dump(self) -> dict[str, list[str]]:
        """Per table, as ``iptables -S`` prints them: the jumps into our chains (in :data:`JUMPS` order),
        then each of our chains (``-N`` and its rules) in :data:`CHAINS` order."""
        return dump(self._readable())

    def drift(self, ruleset: Ruleset) -> list[str]:
        """How our chains and jumps differ from ``ruleset`` (one save)."""
        return drift(self.read(), ruleset, self.tables)

    def published(self) -> list[Any]:
        return published(self.read())


def dump(view: View) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for table in TABLES:
        chains = view.chains(table)
        lines: list[str] = []
        for jump in (j for j in JUMPS if j.table == table):
            lines += [f"-A {jump.chain} {rule}" for rule in chains.get(jump.chain, []) if jump.enters(rule)]
        for chain in CHAINS[table]:
            if chain in chains:
                lines += [f"-N {chain}", *(f"-A {chain} {rule}" for rule in chains[chain])]
        out[table] = lines
    return out
