"""The backend for hosts whose Docker writes the LEGACY tables, through libiptc (python-iptables):
the same semantics as ``RestoreBackend("legacy")``, one handle and one commit per table, under the xtables
lock, redone when a commit meets a concurrent writer. The python-iptables quirks it works around are
listed in docs/ARCHITECTURE.md (*Firewall backends*)."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from ...errors import Failure
from ...settings import DEFAULT_XTABLES_LOCK
from .model import CHAINS, JUMPS, TABLES, Edit, Jump, Rule, Ruleset
from .restore import RestoreBackend
from .view import View, render

FALLBACK_HINT = "set MULTINIC_FIREWALL=legacy-restore to use iptables-legacy-restore instead"

_ADDRESS_OPTS = {
    "-s": "src",
    "--source": "src",
    "-d": "dst",
    "--destination": "dst",
    "-i": "in_interface",
    "--in-interface": "in_interface",
    "-o": "out_interface",
    "--out-interface": "out_interface",
    "-p": "protocol",
    "--protocol": "protocol",
}
# Options that make iptables load the protocol's match implicitly (``-p tcp --dport 80``).
_IMPLICIT_PROTOCOL_MATCHES = ("tcp", "udp", "sctp", "icmp")
_IPT_F_GOTO = 0x02

_iptc: Any = None
_rule_class: Any = None


def load_iptc() -> Any:
    """The ``iptc`` module, or a Failure saying why python-iptables cannot be used."""
    global _iptc, _rule_class
    if _iptc is None:
        try:
            import iptc  # lazy: needs libxtables and libip4tc at import time
        except Exception as exc:  # ImportError, OSError, iptc.XTablesError, AttributeError on no lib
            raise Failure(
                f"python-iptables (legacy) cannot be loaded: {type(exc).__name__}: {exc}; "
                f"is libxtables/libip4tc (package iptables) installed? Or {FALLBACK_HINT}"
            ) from exc

        class TableRule(iptc.Rule):
            """A rule whose ``-j NAME`` is a chain jump only if NAME is a chain of its own table."""

            def __init__(self, table: Any) -> None:
                self._own_table = table
                super().__init__()

            @property
            def tables(self) -> list[Any]:
                return [self._own_table]

        _iptc, _rule_class = iptc, TableRule
    return _iptc


class RuleSyntaxError(ValueError):
    pass


def _values(argv: Rule, i: int) -> tuple[list[str], int]:
    """The values of the option before ``argv[i]``: tokens up to the next option or ``!``."""
    values: list[str] = []
    while i < len(argv) and argv[i] != "!" and not argv[i].startswith("-"):
        values.append(argv[i])
        i += 1
    return values, i


def _clean(exc: BaseException | str) -> str:
    """python-iptables messages embed C strings as bytes reprs (``b'Invalid argument'``)."""
    return re.sub(r"""b(['"])(.*?)\1""", r"\2", str(exc))


def _show(argv: Rule) -> str:
    return " ".join(f'"{tok}"' if " " in tok else tok for tok in argv)


def _check(module: Any) -> None:
    """The extension's own final check on the options given, as the iptables CLI runs it.

    python-iptables' ``Rule.final_check()`` first round-trips every module through its save()
    output, which fills a missing mandatory option from the zeroed defaults (``-j CONNMARK``
    alone becomes ``--set-xmark 0x0/0xffffffff``); checking before that catches the mistake.
    Done per module as soon as its options are parsed: modules of one extension share flags.
    """
    if module is None:
        return
    try:
        module._final_check()
    except Exception as exc:  # XTablesError: the extension's message went to its exit hook
        raise RuleSyntaxError(f"{module.name}: missing or conflicting options ({_clean(exc)})") from exc


def build_rule(table: Any, argv: Rule) -> Any:
    """An ``iptc.Rule`` for one argv rule (``-A CHAIN`` left out), parsed generically.

    ``-s/-d/-i/-o/-p`` set the entry (``!`` before them negates); ``-m NAME`` starts a match
    and ``-j/-g NAME`` the target, whose ``--option value...`` tokens (``!`` before an option
    negates it) are handed to the extension's own parser.
    """
    load_iptc()
    rule = _rule_class(table)
    module: Any = None  # the match or target receiving --options
    negate = False
    i = 0
    while i < len(argv):
        tok = argv[i]
        i += 1
        if tok == "!":
            if negate:
                raise RuleSyntaxError("double '!'")
            negate = True
            continue
        if tok in _ADDRESS_OPTS:
            if i >= len(argv):
                raise RuleSyntaxError(f"{tok} needs a value")
            setattr(rule, _ADDRESS_OPTS[tok], ("!" if negate else "") + argv[i])
            i += 1
        elif tok in ("-m", "--match"):
            if negate or i >= len(argv):
                raise RuleSyntaxError(f"bad {tok}")
            _check(module)
            module = rule.create_match(argv[i])
            i += 1
        elif tok in ("-j", "--jump", "-g", "--goto"):
            if negate or i >= len(argv) or rule.target is not None:
                raise RuleSyntaxError(f"bad {tok}")
            _check(module)
            module = rule.create_target(argv[i], goto=tok in ("-g", "--goto"))
            i += 1
        elif tok.startswith("--"):
            if module is None:
                proto = rule.protocol.lstrip("!")
                if rule.protocol.startswith("!") or proto not in _IMPLICIT_PROTOCOL_MATCHES:
                    raise RuleSyntaxError(f"option {tok} outside of a match or target")
                module = rule.create_match(proto)
            values, i = _values(argv, i)
            module.set_parameter(tok[2:], ["!", *values] if negate else values)
        else:
            raise RuleSyntaxError(f"unexpected token {tok!r}")
        negate = False
    if negate:
        raise RuleSyntaxError("dangling '!'")
    _check(module)
    if rule.target is None:
        # iptables accepts a rule without -j (it only counts); so do we.
        rule.create_target("")
    return rule


class _Retry(Exception):
    """A commit refused with EAGAIN: the table changed under our snapshot; start over."""

    def __init__(self, error: Failure) -> None:
        super().__init__(error.message)
        self.error = error


class LibiptcBackend:
    """Legacy iptables through libiptc: one handle and one commit per table."""

    name = "python-iptables (legacy)"
    lock_timeout = 30.0  # seconds to wait for the xtables lock, like ``iptables -w 30``
    attempts = 3  # whole transactions, when a commit meets a concurrent writer (EAGAIN)

    def __init__(self, xtables_lock: str = DEFAULT_XTABLES_LOCK, tables: tuple[str, ...] = TABLES) -> None:
        self.xtables_lock = xtables_lock  # the lock every ``iptables -w`` takes (XTABLES_LOCKFILE)
        self.tables = tables  # the tables whose chains and jumps it owns (see RestoreBackend)
        load_iptc()  # fail at selection time, not at the first reconcile

    # -- locking ------------------------------------------------------------------------------
    @contextmanager
    def _xtables_lock(self) -> Iterator[None]:
        """The lock every ``iptables -w`` takes; libiptc itself takes none.

        Without it a snapshot can go stale between ``refresh()`` and ``commit()`` (dockerd
        adding its rules), which the kernel answers with EAGAIN at best.
        """
        path = self.xtables_lock
        try:
            fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise Failure(f"firewall update failed ({self.name}): cannot open {path}: {exc}") from exc
        try:
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise Failure(
                            f"firewall update failed ({self.name}): the xtables lock {path} is held by "
                            f"another process for more than {self.lock_timeout:g}s"
                        ) from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # releases the lock

    # -- libiptc plumbing ---------------------------------------------------------------------
    @staticmethod
    def _open(table_name: str) -> Any:
        iptc = load_iptc()
        # autocommit must be off *before* refresh(): freeing an autocommit handle commits it.
        table = iptc.Table(table_name, autocommit=False)
        table.refresh()  # a fresh snapshot, in the calling process's current netns
        return table

    @staticmethod
    def _close(table: Any) -> None:
        """Drop the handle; uncommitted changes are discarded (autocommit is off).

        Also needed after a successful commit: the handle still describes the table as it
        was, and committing from it again fails with EAGAIN."""
        try:
            table.autocommit = False
            table.close()
        except Exception:  # noqa: BLE001 - nothing useful to do with a failed free
            pass

    @staticmethod
    def _jump_positions(table: Any, jump: Jump) -> list[int] | None:
        """0-based positions of rules in ``jump.chain`` doing ``-j jump.target`` (None: no chain)."""
        if not table.is_chain(jump.chain):
            return None
        positions = []
        entry = table.first_rule(jump.chain)
        pos = 0
        while entry:
            target = table.get_target(entry)
            if target is not None and target.decode() == jump.target and not entry.ip.flags & _IPT_F_GOTO:
                positions.append(pos)
            entry = table.next_rule(entry)
            pos += 1
        return positions

    @classmethod
    def _outline(cls, table: Any, chain: str, jump: Jump) -> list[str] | None:
        """``chain``'s rules as :meth:`Jump.placement` reads them: ours rendered, a bare ``-j RETURN`` as
        such, any other rule as ``"?"`` (None: no such chain)."""
        if not table.is_chain(chain):
            return None
        ours = set(cls._jump_positions(table, jump) or ())
        out = []
        entry, pos = table.first_rule(chain), 0
        while entry:
            target = table.get_target(entry)
            bare = target == b"RETURN" and entry.target_offset == ctypes.sizeof(entry) and not any(
                bytes(entry.ip.iniface).strip(b"\0") + bytes(entry.ip.outiface).strip(b"\0"))
            out.append(render(jump.rule) if pos in ours else "-j RETURN" if bare else "?")
            entry, pos = table.next_rule(entry), pos + 1
        return out

    @staticmethod
    def _delete_at(table: Any, chain: str, position: int) -> None:
        # python-iptables has no Chain method for it; delete_rule() goes through mask matching.
        if table._iptc.iptc_delete_num_entry(chain.encode(), position, table._handle) != 1:
            raise load_iptc().IPTCError(f"can't delete rule {position + 1} of {chain}: {table.strerror()}")

    def _commit_all(self, action: str, handles: dict[str, Any]) -> None:
        """One commit per table, in TABLES order. A table whose commit fails is left as it was
        (the kernel swaps a table's whole blob or nothing); earlier tables stay committed."""
        for table_name in handles:
            try:
                handles[table_name].commit()
            except Exception as exc:
                prefix = f"firewall {action} failed ({self.name}): table {table_name}"
                if os.strerror(errno.EAGAIN) in str(exc):
                    raise _Retry(
                        Failure(
                            f"{prefix} kept changing under us (another writer without the xtables "
                            f"lock?) for {self.attempts} attempts; it is unchanged"
                        )
                    ) from exc
                raise Failure(
                    f"{prefix} refused by the kernel ({_clean(exc)}; the kernel log names the rule); "
                    "that table is unchanged"
                ) from exc

    def _transaction(self, action: str, prepare: Callable[[Callable[[str], Any], list[str]], None]) -> None:
        """Run ``prepare(open_table, where)`` on fresh handles, then commit them all, under the
        xtables lock; start over (a few times) when a commit meets a concurrent change."""
        with self._xtables_lock():
            for attempt in range(1, self.attempts + 1):
                try:
                    self._attempt(action, prepare)
                    return
                except _Retry as retry:
                    if attempt == self.attempts:
                        raise retry.error from retry

    def _attempt(self, action: str, prepare: Callable[[Callable[[str], Any], list[str]], None]) -> None:
        """``prepare`` edits the handles only; anything it raises discards every change.
        ``where`` is a one-item list naming the step in progress, for the error message."""
        handles: dict[str, Any] = {}
        where = ["start"]

        def open_table(table_name: str) -> Any:
            where[0] = f"table {table_name}"
            handles[table_name] = self._open(table_name)
            return handles[table_name]

        try:
            try:
                prepare(open_table, where)
            except Failure:
                raise
            except Exception as exc:
                raise Failure(
                    f"firewall {action} failed ({self.name}) at {where[0]}: {_clean(exc)}"
                ) from exc
            self._commit_all(action, handles)
        finally:
            for table in handles.values():
                self._close(table)

    # -- backend interface --------------------------------------------------------------------
    def apply(self, ruleset: Ruleset) -> None:
        iptc = load_iptc()

        def prepare(open_table: Callable[[str], Any], where: list[str]) -> None:
            for table_name in self.tables:
                table = open_table(table_name)
                for chain in CHAINS[table_name]:
                    where[0] = f"{table_name}/{chain}"
                    if table.is_chain(chain):
                        table.flush_entries(chain)
                    else:
                        table.create_chain(chain)
                for chain in CHAINS[table_name]:
                    for argv in ruleset.rules(table_name, chain):
                        where[0] = f"{table_name}: -A {chain} {_show(argv)}"
                        iptc.Chain(table, chain).append_rule(build_rule(table, argv))
                outlines = {j.chain: self._outline(table, j.chain, j) for j in JUMPS if j.table == table_name}
                for jump in (j for j in JUMPS if j.table == table_name):
                    where[0] = f"{table_name}: {jump.chain} -> {jump.target}"
                    edits = jump.placement({c: o for c, o in outlines.items() if o is not None})
                    if edits is None:
                        if jump.optional:
                            continue
                        raise Failure(f"firewall chain {table_name}/{jump.chain} does not exist")
                    for op, n in edits:
                        if op == "-D":
                            self._delete_at(table, jump.chain, n - 1)
                        else:
                            iptc.Chain(table, jump.chain).insert_rule(build_rule(table, jump.rule), n - 1)

        self._transaction("update", prepare)

    def edit(self, edits: tuple[Edit, ...], full: Callable[[], Ruleset]) -> None:
        """Legacy iptables replaces a whole table per commit whatever the change, so an edit is
        an :meth:`apply` of the full ruleset: in-process (no spawn), one commit per table."""
        if edits:
            self.apply(full())

    def remove(self) -> None:
        def prepare(open_table: Callable[[str], Any], where: list[str]) -> None:
            for table_name in self.tables:
                table = open_table(table_name)
                for jump in (j for j in JUMPS if j.table == table_name):
                    where[0] = f"{table_name}/{jump.chain}"
                    for pos in reversed(self._jump_positions(table, jump) or []):
                        self._delete_at(table, jump.chain, pos)
                present = [c for c in CHAINS[table_name] if table.is_chain(c)]
                for chain in present:  # flush all first: our chains may jump to each other
                    where[0] = f"{table_name}/{chain}"
                    table.flush_entries(chain)
                for chain in present:
                    where[0] = f"{table_name}/{chain}"
                    table.delete_chain(chain)

        self._transaction("removal", prepare)

    def _reader(self) -> RestoreBackend:
        """``iptables-legacy-save`` reads the same tables; its lines are the reference format."""
        return RestoreBackend("legacy", tables=self.tables)

    def read(self) -> View:
        return self._reader().read()

    def dump(self) -> dict[str, list[str]]:
        return self._reader().dump()

    def drift(self, ruleset: Ruleset) -> list[str]:
        return self._reader().drift(ruleset)

    def published(self) -> list[Any]:
        return self._reader().published()
