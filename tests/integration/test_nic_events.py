"""Parent NIC events with the healer running (plugin/loops/healer.py, periods off): each change
converges, and the time from the change to the converged kernel is measured and printed
(reported, not asserted; the only bound is a generous 10 s so a broken watcher fails the test).
"""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.conftest import published, running_healer
from tests.integration.test_datapath import EID, NID, attach_container, call, create_network
from tests.nsutil import sh

PORT = 4080
BOUND = 10.0
ROOT = Path(__file__).resolve().parents[2]
FIGURES: dict[str, float] = {}


@pytest.fixture
def watched(topo, tmp_path):
    """A network on eth1 with a container publishing PORT, and the healer running (its periods an hour:
    only the parent's events drive it)."""
    assert create_network(topo, {"parent": "eth1"})["status"] == 200
    attach_container(topo, [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": PORT,
                             "HostPortEnd": PORT}])
    topo.serve_peer(topo.k, 80)
    assert topo.connect(topo.c1, "192.168.101.2", PORT) == "198.51.100.10"
    with healer_on_events_only(topo, tmp_path):
        yield topo


@contextlib.contextmanager
def healer_on_events_only(topo, tmp_path: Path) -> Iterator[None]:
    """The healer running with its periods an hour, so that only the parent's events drive it; its log
    printed afterwards."""
    log = tmp_path / "healer.log"
    try:
        with running_healer(topo, log, check_interval=3600, firewall_check_interval=3600, full_interval=3600,
                            gc_interval=3600):
            yield
    finally:
        print(log.read_text()[-2000:] if log.exists() else "")


def converge(what: str, change: str, ns: str, check) -> float:
    sh(ns, change)
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < BOUND, f"{what}: not converged after {BOUND} s"
        time.sleep(0.02)
    elapsed = time.monotonic() - t0
    FIGURES[what] = elapsed
    print(f"\n{what}: converged in {elapsed * 1000:.0f} ms")
    return elapsed


def dnat(t) -> set[tuple[str, str, int]]:
    """What the kernel publishes (whichever backend wrote it)."""
    return published(t.host)


def table_routes(t) -> str:
    table = re.search(r"from 10\.10\.0\.0/24 lookup (\d+)", sh(t.host, "ip rule")).group(1)
    return sh(t.host, f"ip route show table {table}")


def test_parent_readdressed_moves_published_ports(watched):
    t = watched
    converge("readdress", "ip addr del 192.168.101.2/24 dev eth1; ip addr add 192.168.101.3/24 dev eth1", t.host,
             lambda: dnat(t) == {("tcp", "192.168.101.3", PORT)})
    assert t.connect(t.c1, "192.168.101.3", PORT) == "198.51.100.10"
    assert "src 192.168.101.3" in table_routes(t)
    # egress follows too: the client sees the new address
    t.serve_peer(t.c1, 7000)
    assert t.connect(t.k, "198.51.100.10", 7000) == "192.168.101.3"


def test_parent_gateway_change_is_followed_when_not_pinned(watched):
    t = watched
    sh(t.r1, "ip addr add 192.168.101.254/24 dev h1")
    converge("gateway change", "ip route add default via 192.168.101.254 dev eth1 metric 500", t.host,
             lambda: "default via 192.168.101.254 dev eth1" in table_routes(t))
    t.serve_peer(t.c1, 7000)
    assert t.connect(t.k, "198.51.100.10", 7000) == "192.168.101.2"
    sh(t.host, "ip route del default via 192.168.101.254 dev eth1 metric 500")


def test_parent_mtu_change_is_followed(watched):
    t = watched
    bridge = "mn-" + NID[:12]
    converge("mtu change", "ip link set eth1 mtu 1400", t.host,
             lambda: " mtu 1400 " in sh(t.host, f"ip link show {bridge}"))


def test_parent_deleted_fails_closed_and_recreated_is_followed(watched):
    t = watched
    converge("parent deleted", "ip link del eth1", t.host,
             lambda: not dnat(t) and "dev eth1" not in table_routes(t))
    assert "unreachable default" in table_routes(t)
    recreate = (f"ip link add eth1 type veth peer name h1; ip link set h1 netns {t.r1}; "
                "ip addr add 192.168.101.2/24 dev eth1; ip link set eth1 up")
    sh(t.r1, "true")
    converge("parent re-created", recreate + f"; nsenter --net=/var/run/netns/{t.r1} sh -c "
             "'ip addr add 192.168.101.1/24 dev h1; ip link set h1 up'", t.host,
             lambda: dnat(t) == {("tcp", "192.168.101.2", PORT)} and "dev eth1" in table_routes(t))
    assert t.connect(t.c1, "192.168.101.2", PORT, timeout=5) == "198.51.100.10"


def test_parent_renamed_is_not_followed_until_the_name_returns(watched):
    t = watched
    converge("parent renamed away", "ip link set eth1 down; ip link set eth1 name eth9; ip link set eth9 up",
             t.host, lambda: not dnat(t) and "dev eth9" not in table_routes(t))
    assert "unreachable default" in table_routes(t)
    assert t.connect(t.c1, "192.168.101.2", PORT, timeout=1).startswith("FAIL")
    converge("parent renamed back", "ip link set eth9 down; ip link set eth9 name eth1; ip link set eth1 up", t.host,
             lambda: dnat(t) == {("tcp", "192.168.101.2", PORT)} and "dev eth1" in table_routes(t))
    assert t.connect(t.c1, "192.168.101.2", PORT, timeout=5) == "198.51.100.10"


def teardown_module(module):
    if FIGURES:
        print("\nNIC event convergence: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in FIGURES.items()))


_ = (EID, call)  # same ids and helper as test_datapath (attach/detach there)
