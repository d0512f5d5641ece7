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

    def _save(self, table: str) -> dict[str, list[str]]:
        """One ``<flavour>-save -t table``: every chain of the table → its ``-A`` lines, in
        order, as ``iptables -S`` prints them (both use the same printer).

        One spawn per table, whatever the number of our chains (``iptables -S CHAIN`` costs one
        per chain and per jump, and the healer reads them all every 15 s)."""
        proc = subprocess.run([f"{self.name}-save", "-t", table], capture_output=True, text=True)
        if proc.returncode != 0:
            raise DriverError(
                f"firewall read failed ({self.name}-save -t {table}): "
                f"{proc.stderr.strip() or proc.stdout.strip()}"
            )
        chains: dict[str, list[str]] = {}
        for line in proc.stdout.splitlines():
            if line.startswith(":"):
                chains.setdefault(line[1:].split(" ", 1)[0], [])
            elif line.startswith("-A "):
                chains.setdefault(line.split(" ", 2)[1], []).append(line)
        return chains

    def _save_or_nothing(self, table: str) -> dict[str, list[str]]:
        """:meth:`_save`, or no chain at all when the table cannot be read (nothing of ours to
        list or remove there)."""
        try:
            return self._save(table)
        except DriverError:
            return {}

    def _restore(self, payload: str) -> None:
        self._run("iptables-restore", ["-w", "--noflush"], stdin=payload)

    @staticmethod
    def _line(action: str, chain: str, rule: Rule) -> str:
        return " ".join([action, chain, *(f'"{tok}"' if " " in tok else tok for tok in rule)])

    @staticmethod
    def _existing_jumps(chains: dict[str, list[str]], jump: Jump) -> list[str] | None:
        """Lines of ``jump.chain`` (in a :meth:`_save` result) that jump to ``jump.target``
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
        for table in TABLES:
            chains = self._save(table)
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
        for table in TABLES:
            chains = self._save_or_nothing(table)
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
        :data:`CHAINS` order. One ``-save`` per table."""
        out: dict[str, list[str]] = {}
        for table in TABLES:
            chains = self._save_or_nothing(table)
            lines: list[str] = []
            for jump in (j for j in JUMPS if j.table == table):
                lines += self._existing_jumps(chains, jump) or []
            for chain in CHAINS[table]:
                if chain in chains:
                    lines += [f"-N {chain}", *chains[chain]]
            out[table] = lines
        return out
