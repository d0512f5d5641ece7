"""Kernel integration tests: real bridges, routes, rules, iptables and packets, all inside
namespaces the tests create (a fake multi-homed host, its two routers and a client)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field

import pytest

from tests.nsutil import connect, in_netns, scratch_netns, serve_peer, sh

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
    """host (eth0→r0 main default, eth1→r1), client c1 behind r1 only, container ns k."""

    host: str
    r0: str
    r1: str
    c1: str
    k: str
    state_dir: str
    servers: list[subprocess.Popen] = field(default_factory=list)

    def serve_peer(self, ns: str, port: int) -> None:
        self.servers.append(serve_peer(ns, port))

    def connect(self, ns: str, addr: str, port: int, timeout: float = 3.0) -> str:
        return connect(ns, addr, port, timeout)

    def dump(self) -> str:
        return sh(self.host, "ip -4 rule; ip -4 route show table all; ip -br link; iptables-save | grep -v '^#'; "
                  "cat /proc/sys/net/ipv4/conf/eth1/rp_filter")

    def in_host(self, func, *args):
        return in_netns(self.host, func, *args)


def build(t: Topo) -> None:
    sh(t.host, "ip link add name eth0 type veth peer name up0; ip link add name eth1 type veth peer name up1; "
               f"ip link set up0 netns {t.r0}; ip link set up1 netns {t.r1}; "
               "ip addr add 192.168.100.2/24 dev eth0; ip addr add 192.168.101.2/24 dev eth1; "
               "ip link set eth0 up; ip link set eth1 up; ip route add default via 192.168.100.1; "
               "sysctl -qw net.ipv4.ip_forward=1; iptables -P FORWARD DROP")
    sh(t.r0, "ip addr add 192.168.100.1/24 dev up0; ip link set up0 up; sysctl -qw net.ipv4.ip_forward=1")
    sh(t.r1, f"ip link add name down1 type veth peer name c1eth; ip link set c1eth netns {t.c1}; "
             "ip addr add 192.168.101.1/24 dev up1; ip link set up1 up; "
             "ip addr add 198.51.100.1/24 dev down1; ip link set down1 up; sysctl -qw net.ipv4.ip_forward=1")
    sh(t.c1, "ip addr add 198.51.100.10/24 dev c1eth; ip link set c1eth up; ip route add default via 198.51.100.1")


@pytest.fixture
def topo(tmp_path, request):
    tag = f"mni{os.getpid() % 1000}"
    names = [f"{tag}-{n}" for n in ("host", "r0", "r1", "c1", "k")]
    with scratch_netns(*names) as ns:
        t = Topo(*ns, state_dir=str(tmp_path / "state"))
        build(t)
        try:
            yield t
        finally:
            for proc in t.servers:
                proc.kill()
                proc.wait()
