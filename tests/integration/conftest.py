"""Kernel integration tests: real bridges, routes, rules, iptables and packets, all inside
namespaces the tests create (a fake multi-homed host, its two routers and a client)."""

from __future__ import annotations

import os
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from plugin.settings import Settings
from tests.lab import Topology
from tests.lab.engine29 import normalise_nft
from tests.lab.plugin import stop_group
from tests.lab.probes import published_ports_of, start_echo_server
from tests.nsutil import connect, in_netns, scratch_netns, sh  # noqa: F401 - sh for the helpers below

INTEGRATION_DIR = os.path.dirname(os.path.abspath(__file__))
# Lab names: <prefix>i<pid>, the prefix MULTINIC_LAB_PREFIX's (as e2e's) so that engineers sharing a machine
# never meet (a lab of the same name is removed first).
LAB_PREFIX = os.environ.get("MULTINIC_LAB_PREFIX", "mn")[:2]  # + "i" + 3 digits: <= 6 chars
# What dockerd's iptables leaves in FORWARD (its chains, DOCKER-USER entered first, policy DROP).
DOCKERS_IPTABLES = ("iptables -N DOCKER && iptables -N DOCKER-USER && iptables -A DOCKER-USER -j RETURN && "
                    "iptables -A FORWARD -j DOCKER-USER && iptables -P FORWARD DROP")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything here is marked ``integration`` and needs root: skipped without it, except in
    CI, where a missing root is a failure rather than a quiet skip."""
    for item in items:
        if str(item.path).startswith(INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True, scope="session")
def _private_xtables_lock(tmp_path_factory) -> None:
    """Legacy iptables here (the tools and python-iptables) takes a lock of the tests' own, never the
    machine's /run/xtables.lock."""
    os.environ["XTABLES_LOCKFILE"] = str(tmp_path_factory.mktemp("xtables") / "xtables.lock")


# The firewall backend the verbs of a test run with ("": chosen from the host, as `multinic serve` does). The
# ``backend`` fixture sets it; forked children (``in_netns``) inherit it.
BACKEND = [""]
BACKENDS = ("nftables", "iptables-nft")


def xtables_lock() -> str:
    """The tests' own xtables lock (:func:`_private_xtables_lock`): the plugin reads XTABLES_LOCKFILE only
    through its settings, so a backend built here is handed it."""
    lock = os.environ.get("XTABLES_LOCKFILE")
    assert lock, "XTABLES_LOCKFILE unset: a test outside tests/integration that uses settings() sets its own"
    return lock


def settings(**kw) -> Settings:
    return Settings(firewall=BACKEND[0], xtables_lock=xtables_lock(), **kw)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test once per firewall backend a host with Docker's iptables-nft can have."""
    BACKEND[0] = request.param
    try:
        yield request.param
    finally:
        BACKEND[0] = ""


@pytest.fixture
def iptables_nft() -> Iterator[str]:
    """The test is about iptables-nft's chains (what doctor reads of them, ...)."""
    BACKEND[0] = "iptables-nft"
    try:
        yield "iptables-nft"
    finally:
        BACKEND[0] = ""


def flush_ours(ns: str, table: str, chain: str) -> None:
    """What another tool does: one of our chains emptied, whichever backend wrote it."""
    sh(ns, f"iptables-nft -t {table} -F {chain} 2>/dev/null; nft flush chain ip multinic {chain} 2>/dev/null; true")


def chain_text(ns: str, table: str, chain: str) -> str:
    """One of our chains as text, whichever backend wrote it."""
    return sh(ns, f"iptables-nft -t {table} -S {chain} 2>/dev/null; "
                  f"nft list chain ip multinic {chain} 2>/dev/null; true")


def published(ns: str) -> set[tuple[str, str, int]]:
    """(protocol, host address or "", port) multinic publishes in the host, both families, either backend."""
    def run(*cmd: str) -> str:
        return sh(ns, " ".join(cmd) + " 2>/dev/null", check=False)

    return published_ports_of(run, "iptables-save") | published_ports_of(run, "ip6tables-save")


@pytest.fixture(autouse=True, scope="session")
def _needs_root() -> None:
    if os.geteuid() != 0:  # pragma: no cover
        if os.environ.get("CI") == "true":
            pytest.fail("integration tests need root in CI", pytrace=False)
        pytest.skip("integration tests need root")



@dataclass
class Topo:
    """The lab's topology (tests/lab/topology.py: host with eth0 → r0 (main default) and eth1 → r1, clients
    c0 and c1 behind them) without dockerd, plus a bare namespace ``k`` standing for a container."""

    net: Topology
    k: str
    state_dir: str
    servers: list[subprocess.Popen] = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.net.host_ns

    @property
    def r0(self) -> str:
        return self.net.r0

    @property
    def r1(self) -> str:
        return self.net.r1

    @property
    def c1(self) -> str:
        return self.net.c1

    def serve_peer(self, ns: str, port: int, bind: str = "0.0.0.0") -> None:
        self.servers.append(start_echo_server(["nsenter", f"--net=/var/run/netns/{ns}"], port, bind))

    def connect(self, ns: str, addr: str, port: int, timeout: float = 3.0) -> str:
        return connect(ns, addr, port, timeout)

    def dump(self) -> str:
        """The host's routing, firewall and the settings multinic changes, both families (the lifetimes of
        routes learned from router advertisements cut out)."""
        return sh(self.host, "ip -4 rule; ip -4 route show table all; ip -br link; iptables-save | grep -v '^#'; "
                  "cat /proc/sys/net/ipv4/conf/eth1/rp_filter; ip -6 rule; "
                  "ip -6 route show table all | sed -E 's/ expires [0-9]+sec//'; ip6tables-save | grep -v '^#'; "
                  "grep . /proc/sys/net/ipv6/conf/*/forwarding /proc/sys/net/ipv6/conf/*/accept_ra") + "\n".join(
            normalise_nft(sh(self.host, "nft -s list ruleset")))

    def in_host(self, func, *args):
        return in_netns(self.host, func, *args)


@contextmanager
def running_healer(t: Topo, log: Path, **settings: float) -> Iterator[None]:
    """The healer loop (``multinic serve``'s) in a child process in the host namespace, with ``settings``
    (long periods: only kernel events wake it), logging to ``log``; returns once it listens."""
    import logging
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()

    def child() -> None:
        from plugin.loops.healer import Healer
        from plugin.plan.driver import Driver
        from plugin.plan.state import Store
        from tests.nsutil import enter_netns

        enter_netns(t.host)
        logging.basicConfig(filename=log, level=logging.INFO, force=True,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        Healer(Driver(Store(t.state_dir), Settings(firewall=BACKEND[0], xtables_lock=xtables_lock(),
                                                   **settings))).run(stop)

    proc = ctx.Process(target=child)
    proc.start()
    deadline = time.monotonic() + 30
    while "watching the kernel" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline and proc.is_alive(), log.read_text() if log.exists() else "no log"
        time.sleep(0.05)
    time.sleep(0.3)  # and the parents read
    try:
        yield
    finally:
        stop.set()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()


@pytest.fixture
def topo(tmp_path):
    tag = f"{LAB_PREFIX}i{os.getpid() % 10 ** (5 - len(LAB_PREFIX))}"  # a lab name has at most 6 characters
    with Topology(tag, mount=False) as net, scratch_netns(f"{tag}-k") as k:
        sh(net.host_ns, DOCKERS_IPTABLES)
        t = Topo(net, k, state_dir=str(tmp_path / "state"))
        try:
            yield t
        finally:
            for proc in t.servers:
                stop_group(proc, 2)
