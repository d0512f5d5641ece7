"""IPv6 events of a parent NIC with the healer running (periods off): addresses added and removed, the
prefix renumbered by its router, the default router changed, the parent down and up. Each converges;
the time from the change to the converged kernel is printed (reported, not asserted: the only bound is
a generous 10 s so a broken watcher fails the test)."""

from __future__ import annotations

import re
import time

import pytest

from tests.integration.conftest import published
from tests.integration.test_datapath6 import attach, create_dual_stack
from tests.integration.test_nic_events import BOUND, converge, healer_on_events_only
from tests.lab import C1_ADDR6, HOST6_ETH1, ROUTER_LL
from tests.nsutil import sh

PORT = 4080


@pytest.fixture
def watched6(topo, tmp_path):
    """A dual-stack network on eth1 with a container publishing PORT, the healer running on events only."""
    assert create_dual_stack(topo, {"parent": "eth1"})["status"] == 200
    attach(topo, [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": PORT, "HostPortEnd": PORT}])
    topo.serve_peer(topo.k, 80, "::")
    topo.serve_peer(topo.c1, 7000, "::")
    assert topo.connect(topo.c1, HOST6_ETH1, PORT) == C1_ADDR6
    with healer_on_events_only(topo, tmp_path):
        yield topo


def published_on(t) -> set[str]:
    """The IPv6 addresses the test's port is published on (whichever backend wrote it)."""
    return {host for _proto, host, port in published(t.host) if port == PORT and ":" in host}


def table6(t) -> str:
    return sh(t.host, "ip -6 route show table 20000")


def test_address_added_and_removed(watched6):
    t = watched6
    converge("IPv6 address added", "ip -6 addr add 2001:db8:101::3/64 dev eth1 nodad", t.host,
             lambda: published_on(t) == {HOST6_ETH1, "2001:db8:101::3"})
    assert t.connect(t.c1, "2001:db8:101::3", PORT) == C1_ADDR6
    # Deprecated (preferred lifetime 0, as when a prefix is being retired): never published on
    converge("IPv6 address deprecated", "ip -6 addr change 2001:db8:101::3/64 dev eth1 preferred_lft 0", t.host,
             lambda: published_on(t) == {HOST6_ETH1})
    converge("IPv6 address removed", "ip -6 addr del 2001:db8:101::3/64 dev eth1", t.host,
             lambda: published_on(t) == {HOST6_ETH1})


def test_prefix_renumbered_by_the_router(watched6):
    """The router advertises a new prefix with autoconfiguration (the host makes an address from it, and
    temporary addresses beside it), the old static address goes: ports, the table's on-link prefix and
    egress follow; the temporary address is never published on or left from."""
    t = watched6
    sh(t.host, "sysctl -qw net.ipv6.conf.eth1.use_tempaddr=2")
    sh(t.r1, "ip -6 addr add 2001:db8:201::1/64 dev h1")
    t.net.advertise("r1", ["2001:db8:201::/64"], autonomous=True, wait=False)

    def slaac() -> str | None:
        found = re.search(r"inet6 (2001:db8:201:[0-9a-f:]+)/64 scope global (?!temporary)(?:dynamic )?mngtmpaddr",
                          sh(t.host, "ip -6 addr show dev eth1"))
        return found.group(1) if found else None

    converge("IPv6 prefix renumbered", "ip -6 addr del 2001:db8:101::2/64 dev eth1", t.host,
             lambda: slaac() is not None and published_on(t) == {slaac()}
             and "2001:db8:201::/64 dev eth1" in table6(t) and "2001:db8:101::/64" not in table6(t))
    new = slaac()
    assert "temporary" in sh(t.host, "ip -6 addr show dev eth1")  # there is one, and it was not taken
    assert t.connect(t.c1, new, PORT) == C1_ADDR6
    assert t.connect(t.k, C1_ADDR6, 7000) == new  # egress leaves with the stable address, not the temporary one


def test_default_router_changed(watched6):
    """The router goes (its last advertisement has router lifetime 0) and comes back from another
    link-local address: the parent's table follows the new router."""
    t = watched6
    assert f"default via {ROUTER_LL} dev eth1" in table6(t)
    t.net.stop_router_advertisements("r1")
    sh(t.r1, "ip -6 addr del fe80::1/64 dev h1; ip -6 addr add fe80::2/64 dev h1 nodad")
    t0 = time.monotonic()
    t.net.advertise("r1", wait=False)
    while "default via fe80::2 dev eth1" not in table6(t):
        assert time.monotonic() - t0 < BOUND, table6(t)
        time.sleep(0.02)
    print(f"\nIPv6 default router changed: converged in {(time.monotonic() - t0) * 1000:.0f} ms after the new "
          "router's first advertisement was sent")
    assert t.connect(t.k, C1_ADDR6, 7000) == HOST6_ETH1


def test_parent_down_and_up(watched6):
    t = watched6
    converge("IPv6 parent down", "ip link set eth1 down", t.host,
             lambda: "dev eth1" not in table6(t) and not published_on(t))
    assert "unreachable default" in table6(t)
    # The kernel flushes a NIC's IPv6 addresses when it goes down (keep_addr_on_down=0, the default): the
    # host's network manager puts them back when it comes up, as here.
    converge("IPv6 parent up", f"ip link set eth1 up; ip -6 addr add {HOST6_ETH1}/64 dev eth1", t.host,
             lambda: f"default via {ROUTER_LL} dev eth1" in table6(t) and published_on(t) == {HOST6_ETH1})
    assert t.connect(t.c1, HOST6_ETH1, PORT, timeout=5) == C1_ADDR6
