"""Kernel integration tests: real bridges, routes, rules, iptables and packets, all inside
namespaces the tests create (a fake multi-homed host, its two routers and a client)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field

import pytest

from tests.lab import Topology
from tests.lab.plugin import stop_group
from tests.lab.probes import start_echo_server
from tests.nsutil import connect, in_netns, scratch_netns, sh

INTEGRATION_DIR = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything here is marked ``integration`` and needs root: skipped without it, except in
    CI, where a missing root is a failure rather than a quiet skip."""
    for item in items:
        if str(item.path).startswith(INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)


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

    def serve_peer(self, ns: str, port: int) -> None:
        self.servers.append(start_echo_server(["nsenter", f"--net=/var/run/netns/{ns}"], port))

    def connect(self, ns: str, addr: str, port: int, timeout: float = 3.0) -> str:
        return connect(ns, addr, port, timeout)

    def dump(self) -> str:
        return sh(self.host, "ip -4 rule; ip -4 route show table all; ip -br link; iptables-save | grep -v '^#'; "
                  "cat /proc/sys/net/ipv4/conf/eth1/rp_filter")

    def in_host(self, func, *args):
        return in_netns(self.host, func, *args)


@pytest.fixture
def topo(tmp_path):
    tag = f"mni{os.getpid() % 1000}"
    with Topology(tag, mount=False) as net, scratch_netns(f"{tag}-k") as k:
        sh(net.host_ns, "iptables -P FORWARD DROP")  # as dockerd leaves it
        t = Topo(net, k, state_dir=str(tmp_path / "state"))
        try:
            yield t
        finally:
            for proc in t.servers:
                stop_group(proc, 2)
