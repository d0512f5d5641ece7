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

    def _list(self, table: str, chain: str) -> list[str] | None:
        """``iptables -S chain`` lines, or None if the chain does not exist."""
        proc = subprocess.run([self.name, "-w", "-t", table, "-S", chain], capture_output=True, text=True)
        if proc.returncode != 0:
            return None
        return proc.stdout.splitlines()

    def _restore(self, payload: str) -> None:
        self._run("iptables-restore", ["-w", "--noflush"], stdin=payload)

    @staticmethod
    def _line(action: str, chain: str, rule: Rule) -> str:
        return " ".join([action, chain, *(f'"{tok}"' if " " in tok else tok for tok in rule)])

    def _existing_jumps(self, jump: Jump) -> list[str] | None:
        """Lines of ``jump.chain`` that jump to ``jump.target`` (None: chain missing)."""
        lines = self._list(jump.table, jump.chain)
        if lines is None:
            return None
        return [
            ln for ln in lines if ln.startswith(f"-A {jump.chain} ") and ln.endswith(f" -j {jump.target}")
        ]

    # -- backend interface -----------------------------------------------------------
    def apply(self, ruleset: Ruleset) -> None:
        """One restore for all tables: every check runs before anything is written, and
        iptables-nft-restore commits the whole input as one nf_tables transaction."""
        lines: list[str] = []
        for table in TABLES:
            lines.append(f"*{table}")
            lines += [f":{chain} - [0:0]" for chain in CHAINS[table]]
            for chain in CHAINS[table]:
                lines += [self._line("-A", chain, rule) for rule in ruleset.rules(table, chain)]
            for jump in (j for j in JUMPS if j.table == table):
                existing = self._existing_jumps(jump)
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
            present = [c for c in CHAINS[table] if self._list(table, c) is not None]
            lines = [f"*{table}"] + [f":{chain} - [0:0]" for chain in present]
            for jump in (j for j in JUMPS if j.table == table):
                for line in self._existing_jumps(jump) or []:
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
        out: dict[str, list[str]] = {}
        for table in TABLES:
            lines: list[str] = []
            for jump in (j for j in JUMPS if j.table == table):
                lines += self._existing_jumps(jump) or []
            for chain in CHAINS[table]:
                lines += self._list(table, chain) or []
            out[table] = lines
        return out
