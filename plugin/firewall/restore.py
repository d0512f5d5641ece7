"""Backend driving ``iptables-restore`` of one flavour (``iptables-nft`` or ``iptables-legacy``).

This is the backend for hosts where dockerd writes nf_tables through iptables-nft (Debian 12
and most current distributions): rules written any other way are invisible to Docker's
FORWARD chain. One ``iptables-restore --noflush`` per table replaces our chains' contents and
adds missing jumps in a single commit.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Callable

from ..errors import DriverError
from .model import CHAINS, JUMPS, TABLES, Edit, Jump, Rule, Ruleset


class RestoreBackend:
    def __init__(self, flavour: str) -> None:
        if flavour not in ("nft", "legacy"):
            raise ValueError(flavour)
        self.flavour = flavour
        self.name = f"iptables-{flavour}"

    # -- plumbing -----------------------------------------------------------------
    def _run(self, tool: str, args: list[str], stdin: str | None = None) -> str:
        proc = subprocess.run(
            [tool.replace("iptables", self.name, 1), *args],
            input=stdin,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise DriverError(
                f"firewall update failed ({self.name}): {proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc.stdout

    def _read(self, table: str | None = None) -> dict[str, dict[str, list[str]]]:
        """``<flavour>-save`` (of one table, or of every table in use): table → chain → its
        ``-A`` lines in order, as ``iptables -S`` prints them (both use the same printer)."""
        proc = subprocess.run(
            [f"{self.name}-save", *(("-t", table) if table else ())], capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise DriverError(
                f"firewall read failed ({self.name}-save{f' -t {table}' if table else ''}): "
                f"{proc.stderr.strip() or proc.stdout.strip()}"
            )
        tables: dict[str, dict[str, list[str]]] = {}
        chains: dict[str, list[str]] | None = None
        for line in proc.stdout.splitlines():
            if line.startswith("*"):
                chains = tables.setdefault(line[1:].strip(), {})
            elif chains is None:
                continue
            elif line.startswith(":"):
                chains.setdefault(line[1:].split(" ", 1)[0], [])
            elif line.startswith("-A "):
                chains.setdefault(line.split(" ", 2)[1], []).append(line)
        return tables

    def _tables(self, strict: bool = True) -> dict[str, dict[str, list[str]]]:
        """Every chain of our tables with its rules, from ONE ``<flavour>-save``.

        Not one save per table: iptables-nft-save fetches the whole ruleset whatever ``-t``
        says, so each of them costs as much as all of them (measured ~15 ms for ``-t mangle``
        with 2400 rules in nat). A table missing from the output (nf_tables: not created yet;
        legacy: module not loaded yet) is read on its own, which lists its built-in chains.
        Not ``strict``: a table that cannot be read counts as holding no chain."""
        try:
            tables = self._read()
        except DriverError:
            if strict:
                raise
            tables = {}
        for table in TABLES:
            if table not in tables:
                try:
                    tables[table] = self._read(table).get(table, {})
                except DriverError:
                    if strict:
                        raise
                    tables[table] = {}
        return tables

    def _restore(self, payload: str) -> None:
        self._run("iptables-restore", ["-w", "--noflush"], stdin=payload)

    @staticmethod
    def _line(action: str, chain: str, rule: Rule) -> str:
        return " ".join([action, chain, *(f'"{tok}"' if " " in tok else tok for tok in rule)])

    @staticmethod
    def _existing_jumps(chains: dict[str, list[str]], jump: Jump) -> list[str] | None:
        """Lines of ``jump.chain`` (one table of :meth:`_tables`) that jump to ``jump.target``
        (None: that chain does not exist)."""
        lines = chains.get(jump.chain)
        if lines is None:
            return None
        return [ln for ln in lines if ln.endswith(f" -j {jump.target}")]

    # -- backend interface -----------------------------------------------------------
    def apply(self, ruleset: Ruleset) -> None:
        """One restore for all tables: every check runs before anything is written, and
        iptables-nft-restore commits the whole input as one nf_tables transaction."""
        lines: list[str] = []
        saved = self._tables()
        for table in TABLES:
            chains = saved[table]
            lines.append(f"*{table}")
            lines += [f":{chain} - [0:0]" for chain in CHAINS[table]]
            for chain in CHAINS[table]:
                lines += [self._line("-A", chain, rule) for rule in ruleset.rules(table, chain)]
            for jump in (j for j in JUMPS if j.table == table):
                existing = self._existing_jumps(chains, jump)
                if existing is None:
                    if jump.optional:
                        continue
                    raise DriverError(f"firewall chain {table}/{jump.chain} does not exist")
                if not existing:
                    lines.append(self._line("-I", jump.chain, ("1", *jump.rule)))
            lines.append("COMMIT")
        self._restore("\n".join(lines) + "\n")

    def edit(self, edits: tuple[Edit, ...], full: Callable[[], Ruleset]) -> None:
        """One ``iptables-restore --noflush`` holding only ``edits``: its size is the verb's own
        rules, whatever else is on the host. nf_tables commits it as one transaction, and a
        ``-D`` of a rule that is not there fails the whole of it (the writer then re-applies)."""
        if not edits:
            return
        self._restore(self.edit_payload(edits))

    @classmethod
    def edit_payload(cls, edits: tuple[Edit, ...]) -> str:
        lines: list[str] = []
        for table in TABLES:
            mine = [e for e in edits if e.table == table]
            if mine:
                lines.append(f"*{table}")
                lines += [cls._line(e.action, e.chain, e.rule) for e in mine]
                lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    def remove(self) -> None:
        saved = self._tables(strict=False)
        for table in TABLES:
            chains = saved[table]
            present = [c for c in CHAINS[table] if c in chains]
            lines = [f"*{table}"] + [f":{chain} - [0:0]" for chain in present]
            for jump in (j for j in JUMPS if j.table == table):
                for line in self._existing_jumps(chains, jump) or []:
                    lines.append("-D" + line[2:])
            lines += [f"-X {chain}" for chain in present]
            lines.append("COMMIT")
            if len(lines) > 2:
                self._restore("\n".join(lines) + "\n")
            self._drop_if_pristine(table)

    def _drop_if_pristine(self, table: str) -> None:
        """On nf_tables, touching a table creates it; drop it again if nothing but empty
        ACCEPT built-ins is left, so a host without a mangle table gets none from us."""
        if self.flavour != "nft" or not shutil.which("nft"):
            return
        proc = subprocess.run([f"{self.name}-save", "-t", table], capture_output=True, text=True)
        body = [ln for ln in proc.stdout.splitlines() if ln and not ln.startswith(("#", "*", "COMMIT"))]
        if proc.returncode == 0 and body and all(ln.startswith(":") and " ACCEPT " in ln for ln in body):
            subprocess.run(["nft", "delete", "table", "ip", table], capture_output=True)

    def dump(self) -> dict[str, list[str]]:
        """Per table, as ``iptables -S`` would print them: the jumps into our chains (in
        :data:`JUMPS` order), then each of our chains (``-N`` and its rules) in
        :data:`CHAINS` order. One ``-save`` (see :meth:`_tables`)."""
        out: dict[str, list[str]] = {}
        saved = self._tables(strict=False)
        for table in TABLES:
            chains = saved[table]
            lines: list[str] = []
            for jump in (j for j in JUMPS if j.table == table):
                lines += self._existing_jumps(chains, jump) or []
            for chain in CHAINS[table]:
                if chain in chains:
                    lines += [f"-N {chain}", *chains[chain]]
            out[table] = lines
        return out
