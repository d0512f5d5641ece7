"""Firewall backends against real kernel tables, in scratch network namespaces only.

Every backend call runs through ``in_netns`` (a forked child that entered the namespace), the
backend object itself is built there, and every iptables command goes through ``sh(ns, ...)``:
the machine's own firewall is never read or written.

Why there are several backends (see ``test_legacy_rules_do_not_reach_nf_tables``): iptables
on this host has two flavours sharing the same commands but not the same kernel tables. On an
nf_tables host (Debian 12, where dockerd runs ``iptables-nft``) a rule written to the legacy
tables, e.g. by libiptc / python-iptables, is invisible to ``iptables -S`` and cannot open
Docker's FORWARD DROP policy: the nf_tables FORWARD hook still drops the packet. So the plugin
writes with the flavour Docker uses: ``RestoreBackend("nft")`` there, ``LibiptcBackend`` (or
``RestoreBackend("legacy")``) where Docker uses the legacy tables.
"""

from __future__ import annotations

import fcntl
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from typing import Any, Callable

import pytest

from plugin.errors import Failure
from plugin.kernel.firewall.model import (
    BUCKET_JUMPS,
    CHAINS,
    FILTER_FORWARD,
    JUMPS,
    MANGLE_PREROUTING,
    NAT_DNAT,
    NAT_POSTROUTING,
    TABLES,
    Edit,
    Jump,
    Rule,
    Ruleset,
)
from plugin.kernel.firewall.restore import RestoreBackend
from tests.nsutil import in_netns, scratch_netns, sh

TOOLS = ("ip", "nsenter", "iptables-legacy", "iptables-legacy-save", "iptables-nft", "iptables-nft-save")


def _iptc_loads() -> bool:
    # A separate interpreter: importing python-iptables opens no table, but keep pytest clean.
    return subprocess.run([sys.executable, "-c", "import iptc"], capture_output=True).returncode == 0


pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, iptables)"),
    pytest.mark.skipif(not all(shutil.which(t) for t in TOOLS), reason=f"needs {', '.join(TOOLS)}"),
]
needs_iptc = pytest.mark.skipif(
    os.geteuid() != 0 or not _iptc_loads(), reason="python-iptables cannot load here"
)

# Unique per test run: other people may run the suite at the same time.
PREFIX = f"mnfw{os.getpid()}"
MASK = "0xff0000"


def r(text: str) -> Rule:
    """A rule from its ``iptables -S`` text (without ``-A CHAIN``)."""
    return tuple(shlex.split(text))


# Every rule shape the plugin renders (plugin/kernel/firewall/rules.py), written as ``iptables -S``
# prints it, so the expected dump is the rules themselves.
FULL = Ruleset(
    chains={
        "mangle": {
            MANGLE_PREROUTING: (
                r(f"-i eth1 -m conntrack --ctstate NEW -j CONNMARK --set-xmark 0x10000/{MASK}"),
                r(f"-i eth2 -m conntrack --ctstate NEW -j CONNMARK --set-xmark 0x20000/{MASK}"),
                r(f"-i br1 -j CONNMARK --restore-mark --nfmask {MASK} --ctmask {MASK}"),
            )
        },
        "nat": {
            NAT_DNAT: BUCKET_JUMPS,
            "MULTINIC-DNAT-03": (
                r("-d 192.168.101.2/32 -p tcp -m tcp --dport 4000 -j DNAT --to-destination 10.10.0.2:80"),
                r("-d 192.168.101.2/32 -p udp -m udp --dport 5353 -j DNAT --to-destination 10.10.0.2:53"),
            ),
            "MULTINIC-DNAT-1f": (r("-p sctp -m sctp --dport 3868 -j DNAT --to-destination 10.10.0.3:3868"),),
            NAT_POSTROUTING: (
                r("-s 10.10.0.0/24 -o br1 -m conntrack --ctstate DNAT -j MASQUERADE"),
                r("-s 10.10.0.0/24 ! -o br1 -j MASQUERADE"),
            ),
        },
        "filter": {
            FILTER_FORWARD: (
                r("-o br1 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
                r("-i br1 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
                r("-i br1 -o br1 -j ACCEPT"),
                r("-o br1 -m conntrack --ctstate DNAT -j ACCEPT"),
                r("-i br1 -o docker0 -j DROP"),
                r("-i br1 -o br-+ -j DROP"),
                r("-i br1 -j ACCEPT"),
                r("-o br1 -j DROP"),
                r("! -s 10.20.0.0/24 -o br2 -j DROP"),
                r('-i br2 -p tcp -m tcp ! --dport 22 -m comment --comment "multinic net 2" -j DROP'),
            )
        },
    }
)

# Different contents in every table (so a partial commit would show), nat emptied.
SMALL = Ruleset(
    chains={
        "mangle": {
            MANGLE_PREROUTING: (r(f"-i br9 -j CONNMARK --restore-mark --nfmask {MASK} --ctmask {MASK}"),)
        },
        "filter": {FILTER_FORWARD: (r("-i br9 -o br9 -j ACCEPT"), r("-o br9 -j DROP"))},
    }
)


def with_rule(base: Ruleset, table: str, chain: str, rule: Rule) -> Ruleset:
    chains = {t: dict(c) for t, c in base.chains.items()}
    chains.setdefault(table, {})
    chains[table][chain] = (*base.rules(table, chain), rule)
    return Ruleset(chains=chains)


# -- helpers ---------------------------------------------------------------------------------
def libiptc() -> Any:
    from plugin.kernel.firewall.libiptc import LibiptcBackend

    return LibiptcBackend(os.environ["XTABLES_LOCKFILE"])  # the tests' own (tests/integration/conftest.py)


def restore_legacy() -> RestoreBackend:
    return RestoreBackend("legacy")


def restore_nft() -> RestoreBackend:
    return RestoreBackend("nft")


def _call(factory: Callable[[], Any], method: str, *args: Any) -> Any:
    return getattr(factory(), method)(*args)


def call(ns: str, factory: Callable[[], Any], method: str, *args: Any) -> Any:
    """``factory().method(*args)`` inside ``ns`` (the backend is built in the child too)."""
    return in_netns(ns, _call, factory, method, *args)


def _driver_error(factory: Callable[[], Any], method: str, *args: Any) -> str | None:
    try:
        getattr(factory(), method)(*args)
    except Failure as exc:
        return exc.message
    return None


def driver_error(ns: str, factory: Callable[[], Any], method: str, *args: Any) -> str | None:
    """The Failure message ``factory().method(*args)`` raises in ``ns`` (None: no error)."""
    return in_netns(ns, _driver_error, factory, method, *args)


def save(ns: str, flavour: str) -> str:
    """``iptables-<flavour>-save`` without comments and counters."""
    out = sh(ns, f"iptables-{flavour}-save")
    lines = [re.sub(r" \[\d+:\d+\]$", "", ln) for ln in out.splitlines() if ln and not ln.startswith("#")]
    return "\n".join(lines)


def by_table(text: str) -> dict[str, list[str]]:
    tables: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("*"):
            current = tables.setdefault(line[1:], [])
        elif line != "COMMIT":
            current.append(line)
    return tables


def render(rule: Rule) -> str:
    return " ".join(f'"{tok}"' if " " in tok else tok for tok in rule)


def expected_dump(ruleset: Ruleset, docker_user: bool = True) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for table in TABLES:
        lines = [f"-A {j.chain} {render(j.rule)}" for j in JUMPS if j.table == table and placed(j, docker_user)]
        for chain in CHAINS[table]:
            lines.append(f"-N {chain}")
            lines += [f"-A {chain} {render(rule)}" for rule in ruleset.rules(table, chain)]
        out[table] = lines
    return out


def docker_like(ns: str, flavour: str, docker_user: bool = True) -> None:
    """What dockerd leaves in filter: DOCKER-USER (ending in RETURN) and FORWARD policy DROP."""
    tool = f"iptables-{flavour}"
    if docker_user:
        sh(
            ns,
            f"{tool} -N DOCKER-USER && {tool} -A DOCKER-USER -j RETURN && {tool} -A FORWARD -j DOCKER-USER",
        )
    sh(ns, f"{tool} -P FORWARD DROP")


def prime_legacy(ns: str) -> None:
    """Instantiate the three legacy tables (they appear on first use, empty) for before/after diffs."""
    for table in TABLES:
        sh(ns, f"iptables-legacy -t {table} -S > /dev/null")


def placed(jump: Jump, docker_user: bool = True) -> bool:
    """Is the jump there on a host with (or without) Docker's DOCKER-USER chain?"""
    return (docker_user or not jump.optional) and not (docker_user and jump.only_without)


ONE_EACH = [int(placed(j)) for j in JUMPS]  # every jump once where it belongs (DOCKER-USER exists)


def jump_counts(ns: str, flavour: str) -> list[int]:
    dump = save(ns, flavour)
    return [
        sum(
            1 for ln in dump.splitlines() if ln.startswith(f"-A {j.chain} ") and ln.endswith(f"-j {j.target}")
        )
        for j in JUMPS
    ]


def names(*suffixes: str) -> tuple[str, ...]:
    return tuple(f"{PREFIX}-{s}" for s in suffixes)


@pytest.fixture(scope="module", autouse=True)
def no_namespace_left_behind():
    yield
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert PREFIX not in left, left


# -- (a) LibiptcBackend writes exactly what iptables-legacy-restore writes ----------------
@needs_iptc
@pytest.mark.parametrize("docker_user", [True, False], ids=["docker-user", "no-docker-user"])
def test_libiptc_matches_restore_legacy(docker_user: bool) -> None:
    with scratch_netns(*names("a1", "a2")) as (ns_lib, ns_ref):
        for ns in (ns_lib, ns_ref):
            docker_like(ns, "legacy", docker_user)
        call(ns_lib, libiptc, "apply", FULL)
        call(ns_ref, restore_legacy, "apply", FULL)

        assert save(ns_lib, "legacy") == save(ns_ref, "legacy")
        # No raw/security table instantiated behind our back (python-iptables' Rule.tables).
        assert (
            sh(ns_lib, "cat /proc/net/ip_tables_names").split()
            == sh(ns_ref, "cat /proc/net/ip_tables_names").split()
        )
        expected = expected_dump(FULL, docker_user)
        assert call(ns_lib, libiptc, "dump") == expected
        assert call(ns_ref, restore_legacy, "dump") == expected


# -- (b) idempotent: no duplicate jumps, same tables ------------------------------------------
@needs_iptc
def test_libiptc_apply_twice_is_idempotent() -> None:
    with scratch_netns(*names("b1", "b2")) as (ns, ns_mixed):
        docker_like(ns, "legacy")
        call(ns, libiptc, "apply", FULL)
        once = save(ns, "legacy")
        call(ns, libiptc, "apply", FULL)
        assert save(ns, "legacy") == once
        assert jump_counts(ns, "legacy") == ONE_EACH

        # Jumps left by the other legacy backend are recognised too (switching backends).
        docker_like(ns_mixed, "legacy")
        call(ns_mixed, restore_legacy, "apply", FULL)
        call(ns_mixed, libiptc, "apply", FULL)
        assert save(ns_mixed, "legacy") == once
        assert jump_counts(ns_mixed, "legacy") == ONE_EACH


# -- (c) a smaller ruleset replaces the contents ------------------------------------------------
@needs_iptc
def test_libiptc_smaller_ruleset_replaces_contents() -> None:
    with scratch_netns(*names("c1", "c2")) as (ns, ns_ref):
        for n in (ns, ns_ref):
            docker_like(n, "legacy")
        call(ns, libiptc, "apply", FULL)
        call(ns, libiptc, "apply", SMALL)
        call(ns_ref, restore_legacy, "apply", SMALL)
        assert call(ns, libiptc, "dump") == expected_dump(SMALL)
        assert by_table(save(ns, "legacy")) == by_table(save(ns_ref, "legacy"))

        # An empty ruleset keeps our (empty) chains and the jumps, as the reference does.
        call(ns, libiptc, "apply", Ruleset())
        assert call(ns, libiptc, "dump") == expected_dump(Ruleset())


# -- (d) remove() restores the tables as they were; twice is fine ---------------------------
@needs_iptc
@pytest.mark.parametrize(
    "writer", [libiptc, restore_legacy], ids=["written-by-libiptc", "written-by-restore"]
)
def test_libiptc_remove_restores_previous_tables(writer: Callable[[], Any]) -> None:
    with scratch_netns(*names("d1")) as ns:
        docker_like(ns, "legacy")
        prime_legacy(ns)
        before = save(ns, "legacy")
        call(ns, writer, "apply", FULL)
        assert save(ns, "legacy") != before
        call(ns, libiptc, "remove")
        assert save(ns, "legacy") == before
        call(ns, libiptc, "remove")
        assert save(ns, "legacy") == before
        assert call(ns, libiptc, "dump") == {t: [] for t in TABLES}


@needs_iptc
def test_libiptc_remove_on_untouched_namespace() -> None:
    with scratch_netns(*names("d2")) as ns:
        call(ns, libiptc, "remove")
        assert "MULTINIC" not in save(ns, "legacy")


# -- (e) a bad rule raises Failure and changes nothing -----------------------------------
BAD = {
    # rejected while the rule is built, before any commit
    "unknown-target": ("filter", FILTER_FORWARD, r("-i br9 -j NO-SUCH-TARGET"), "NO-SUCH-TARGET"),
    "unknown-option": ("filter", FILTER_FORWARD, r("-p tcp -m tcp --no-such 1 -j ACCEPT"), "no-such"),
    "bad-value": ("filter", FILTER_FORWARD, r("-m conntrack --ctstate BOGUS -j ACCEPT"), "BOGUS"),
    "missing-operation": ("mangle", MANGLE_PREROUTING, r("-i br9 -j CONNMARK"), "CONNMARK"),
    "bad-syntax": ("nat", NAT_POSTROUTING, r("-s 10.0.0.0/8 MASQUERADE"), "unexpected token"),
    # only the kernel refuses it (tcp match on udp): the first commit (mangle) fails
    "kernel-refuses": (
        "mangle",
        MANGLE_PREROUTING,
        r("-p udp -m tcp --dport 1 -j ACCEPT"),
        "table mangle refused by the kernel",
    ),
}


@needs_iptc
@pytest.mark.parametrize("case", sorted(BAD))
def test_libiptc_bad_rule_raises_and_changes_nothing(case: str) -> None:
    table, chain, rule, words = BAD[case]
    with scratch_netns(*names("e1", "e2")) as (ns, ns_fresh):
        docker_like(ns, "legacy")
        call(ns, libiptc, "apply", FULL)
        before = save(ns, "legacy")
        message = driver_error(ns, libiptc, "apply", with_rule(SMALL, table, chain, rule))
        assert message is not None and words in message, message
        assert "python-iptables (legacy)" in message
        assert save(ns, "legacy") == before  # SMALL differs from FULL in every table

        # Into a namespace without our chains: none gets created.
        docker_like(ns_fresh, "legacy")
        prime_legacy(ns_fresh)
        fresh = save(ns_fresh, "legacy")
        assert driver_error(ns_fresh, libiptc, "apply", with_rule(SMALL, table, chain, rule)) is not None
        assert save(ns_fresh, "legacy") == fresh


@needs_iptc
def test_libiptc_missing_builtin_jump_chain_is_an_error() -> None:
    # FORWARD always exists; fake the case by asking for a jump into a chain that does not.
    from plugin.kernel.firewall import libiptc as mod
    from plugin.kernel.firewall.model import Jump

    def apply_with_bogus_jump() -> str | None:
        mod.JUMPS = (*mod.JUMPS, Jump("filter", "NOT-THERE", FILTER_FORWARD))
        return _driver_error(libiptc, "apply", FULL)

    with scratch_netns(*names("e3")) as ns:
        prime_legacy(ns)
        before = save(ns, "legacy")
        message = in_netns(ns, apply_with_bogus_jump)  # the patch lives in the child only
        assert message is not None and "filter/NOT-THERE does not exist" in message
        assert save(ns, "legacy") == before


def _apply_racing(ruleset: Ruleset, lockfile: str) -> int:
    """Apply with another writer changing mangle between our snapshot and our commit."""
    from plugin.kernel.firewall.libiptc import LibiptcBackend

    class Racing(LibiptcBackend):
        raced = 0

        def _commit_all(self, action: str, handles: dict[str, Any]) -> None:
            if not self.raced:  # a writer that does not take our lock
                self.raced += 1
                env = {**os.environ, "XTABLES_LOCKFILE": lockfile + ".other"}
                subprocess.run(
                    ["iptables-legacy", "-w", "-t", "mangle", "-N", "OTHER-WRITER"], check=True, env=env
                )
            super()._commit_all(action, handles)

    backend = Racing(lockfile)
    backend.apply(ruleset)
    return backend.raced


@needs_iptc
def test_libiptc_concurrent_writer_is_not_clobbered(tmp_path) -> None:
    with scratch_netns(*names("r1")) as ns:
        docker_like(ns, "legacy")
        assert in_netns(ns, _apply_racing, FULL, str(tmp_path / "xtables.lock")) == 1
        assert ":OTHER-WRITER -" in save(ns, "legacy").splitlines()  # its change survived
        assert call(ns, libiptc, "dump") == expected_dump(FULL)  # and ours went in


def _apply_with_lock_timeout(ruleset: Ruleset, lockfile: str) -> str | None:
    from plugin.kernel.firewall.libiptc import LibiptcBackend

    class Impatient(LibiptcBackend):
        lock_timeout = 0.3

    return _driver_error(lambda: Impatient(lockfile), "apply", ruleset)


@needs_iptc
def test_libiptc_waits_for_the_xtables_lock(tmp_path) -> None:
    lockfile = str(tmp_path / "xtables.lock")  # a private lock: the host's is never held here
    with scratch_netns(*names("l1")) as ns, open(lockfile, "w") as held:
        prime_legacy(ns)
        before = save(ns, "legacy")
        fcntl.flock(held, fcntl.LOCK_EX)
        message = in_netns(ns, _apply_with_lock_timeout, FULL, lockfile)
        assert message is not None and "xtables lock" in message and lockfile in message
        assert save(ns, "legacy") == before
        fcntl.flock(held, fcntl.LOCK_UN)
        assert in_netns(ns, _apply_with_lock_timeout, FULL, lockfile) is None
        assert call(ns, libiptc, "dump") == expected_dump(Ruleset(FULL.chains), docker_user=False)


def test_libiptc_reports_missing_python_iptables(monkeypatch: pytest.MonkeyPatch) -> None:
    from plugin.kernel.firewall import libiptc as mod

    monkeypatch.setattr(mod, "_iptc", None)
    monkeypatch.setitem(sys.modules, "iptc", None)  # "import iptc" now raises ImportError
    with pytest.raises(Failure) as info:
        mod.LibiptcBackend()
    assert "python-iptables" in str(info.value) and "MULTINIC_FIREWALL=legacy-restore" in str(info.value)


# -- (f) the nf_tables backend, against iptables-nft-save ------------------------------------
def test_restore_nft_apply_idempotent_replace_remove() -> None:
    with scratch_netns(*names("f1", "f2")) as (ns, ns_legacy):
        docker_like(ns, "nft")
        before = save(ns, "nft")

        # (a) same tables as the legacy reference writes, rule for rule
        call(ns, restore_nft, "apply", FULL)
        docker_like(ns_legacy, "legacy")
        call(ns_legacy, restore_legacy, "apply", FULL)
        assert by_table(save(ns, "nft")) == by_table(save(ns_legacy, "legacy"))
        assert call(ns, restore_nft, "dump") == expected_dump(FULL)
        assert "MULTINIC" not in save(ns, "legacy")

        # (b) idempotent
        once = save(ns, "nft")
        call(ns, restore_nft, "apply", FULL)
        assert save(ns, "nft") == once
        assert jump_counts(ns, "nft") == ONE_EACH

        # (c) replaced by a smaller ruleset
        call(ns, restore_nft, "apply", SMALL)
        assert call(ns, restore_nft, "dump") == expected_dump(SMALL)

        # (d) removed: back to what dockerd had (the mangle/nat tables it created are dropped)
        call(ns, restore_nft, "remove")
        assert save(ns, "nft") == before
        call(ns, restore_nft, "remove")
        assert save(ns, "nft") == before


def test_restore_nft_bad_rule_raises_and_changes_nothing() -> None:
    with scratch_netns(*names("f3")) as ns:
        docker_like(ns, "nft")
        call(ns, restore_nft, "apply", FULL)
        before = save(ns, "nft")
        message = driver_error(
            ns, restore_nft, "apply", with_rule(FULL, "filter", FILTER_FORWARD, ("-j", "NO-SUCH-TARGET"))
        )
        assert message is not None and "iptables-nft" in message
        assert save(ns, "nft") == before


# -- (g) why the backends exist -------------------------------------------------------------
def _tcp_probe(addr: str, port: int) -> str:
    """ "refused": the SYN crossed the router and the RST came back; "timeout": dropped."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(1.5)
    try:
        sock.connect((addr, port))
        return "open"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return f"error: {exc}"
    finally:
        sock.close()


@needs_iptc
def test_legacy_rules_do_not_reach_nf_tables() -> None:
    """With Docker's FORWARD policy DROP in the nf_tables flavour, an ACCEPT written to the legacy
    tables (LibiptcBackend) is not listed by ``iptables-nft -S`` and does not let a forwarded
    packet through; the same rules written by RestoreBackend("nft") do."""
    cli_ns, rtr, srv = names("g-cli", "g-rtr", "g-srv")
    with scratch_netns(cli_ns, rtr, srv):
        sh(rtr, f"ip link add r0 type veth peer name c0 netns {cli_ns}")
        sh(rtr, f"ip link add r1 type veth peer name s0 netns {srv}")
        sh(rtr, "ip addr add 10.231.1.1/24 dev r0 && ip addr add 10.231.2.1/24 dev r1")
        sh(rtr, "ip link set r0 up && ip link set r1 up && sysctl -qw net.ipv4.ip_forward=1")
        sh(
            cli_ns,
            "ip addr add 10.231.1.2/24 dev c0 && ip link set c0 up && ip route add default via 10.231.1.1",
        )
        sh(
            srv,
            "ip addr add 10.231.2.2/24 dev s0 && ip link set s0 up && ip route add default via 10.231.2.1",
        )
        assert in_netns(cli_ns, _tcp_probe, "10.231.2.2", 9) == "refused"  # the path works

        sh(rtr, "iptables-nft -P FORWARD DROP")  # what dockerd does
        assert in_netns(cli_ns, _tcp_probe, "10.231.2.2", 9) == "timeout"

        allow = Ruleset(
            chains={
                "filter": {
                    FILTER_FORWARD: (
                        ("-i", "r0", "-o", "r1", "-j", "ACCEPT"),
                        ("-i", "r1", "-o", "r0", "-j", "ACCEPT"),
                    )
                }
            }
        )
        call(rtr, libiptc, "apply", allow)
        legacy_view = sh(rtr, "iptables-legacy -S")
        nft_view = sh(rtr, "iptables-nft -S")
        assert "-A MULTINIC-FORWARD -i r0 -o r1 -j ACCEPT" in legacy_view
        assert "MULTINIC" not in nft_view and "-P FORWARD DROP" in nft_view
        assert in_netns(cli_ns, _tcp_probe, "10.231.2.2", 9) == "timeout"  # still dropped

        call(rtr, restore_nft, "apply", allow)
        assert "-A MULTINIC-FORWARD -i r0 -o r1 -j ACCEPT" in sh(rtr, "iptables-nft -S")
        assert in_netns(cli_ns, _tcp_probe, "10.231.2.2", 9) == "refused"  # now forwarded


# -- (h) the request path: one atomic edit of our own rules only ------------------------------
EDITS_ADD = (
    Edit("nat", "MULTINIC-DNAT-03", "-A",
         r("-d 192.168.101.2/32 -p tcp -m tcp --dport 4100 -j DNAT --to-destination 10.10.0.9:80")),
    Edit("filter", FILTER_FORWARD, "-A", r("-i br7 -j ACCEPT")),
)
EDITS_DEL = tuple(Edit(e.table, e.chain, "-D", e.rule) for e in EDITS_ADD)


def _apply_edits(base: Ruleset, edits: tuple[Edit, ...]) -> Ruleset:
    chains = {t: {c: list(base.rules(t, c)) for c in CHAINS[t]} for t in TABLES}
    for e in edits:
        (chains[e.table][e.chain].append if e.action == "-A" else chains[e.table][e.chain].remove)(e.rule)
    return Ruleset(chains={t: {c: tuple(v) for c, v in cs.items()} for t, cs in chains.items()})


@pytest.mark.parametrize(
    "flavour,factory",
    [("nft", restore_nft), ("legacy", restore_legacy), pytest.param("legacy", libiptc, marks=needs_iptc)],
    ids=["restore-nft", "restore-legacy", "libiptc"],
)
def test_edit_adds_and_deletes_own_rules_and_refuses_a_missing_one(flavour: str, factory: Callable[[], Any]) -> None:
    with scratch_netns(*names(f"h-{factory.__name__}")) as ns:
        docker_like(ns, flavour)
        call(ns, factory, "apply", FULL)
        added = _apply_edits(FULL, EDITS_ADD)
        call(ns, factory, "edit", EDITS_ADD, lambda: added)
        assert call(ns, factory, "dump") == expected_dump(added)
        call(ns, factory, "edit", EDITS_DEL, lambda: FULL)
        assert call(ns, factory, "dump") == expected_dump(FULL)
        if factory is not libiptc:  # libiptc rewrites from the full ruleset, so it cannot be wrong
            before = save(ns, flavour)
            # A rule the writer believes present but someone deleted: the whole edit is refused.
            both = (EDITS_ADD[1], *EDITS_DEL[:1])
            assert driver_error(ns, factory, "edit", both, lambda: FULL) is not None
            if flavour == "nft":  # one nf_tables transaction: nothing of it was applied
                assert save(ns, flavour) == before
        call(ns, factory, "remove")
