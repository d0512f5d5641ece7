"""The lab itself, and the "before" of multinic's problem, with Docker's own bridge driver only (no plugin).

A container's port published with ``-p 4000:80`` on a two-NIC host answers clients behind eth0 (the NIC
of the main default route) but not clients behind eth1: the request comes in on eth1, is DNATed to the
container, and the reply follows the main default route out of eth0, where eth0's router (r0) has no
route to the client and drops it. That is the documented failure multinic fixes.
"""

from __future__ import annotations

import time
from typing import Iterator

import pytest

from tests.lab import (
    C0_ADDR,
    C1_ADDR,
    HOST_ETH0,
    HOST_ETH1,
    IMAGE,
    R0_HOST_SIDE,
    R1_HOST_SIDE,
    Lab,
)

pytestmark = pytest.mark.e2e

PAGE = "multinic-baseline-page"
WEB = "mn-base-web"
NET = "mn-base-net"
PORT = 4000


@pytest.fixture
def web(clean_lab: Lab) -> Iterator[Lab]:
    """busybox httpd on a user bridge network, container port 80 published as host port 4000."""
    lab = clean_lab
    lab.docker("network", "create", "--driver", "bridge", NET)
    lab.docker(
        "run",
        "-d",
        "--name",
        WEB,
        "--network",
        NET,
        "-p",
        f"{PORT}:80",
        IMAGE,
        "sh",
        "-c",
        f"mkdir -p /www && echo {PAGE} > /www/index.html && exec httpd -f -p 80 -h /www",
    )
    deadline = time.monotonic() + 20
    while True:  # ready when it answers inside the container
        probe = lab.container_exec(WEB, "timeout", "2", "wget", "-qO-", "http://127.0.0.1:80/", check=False)
        if probe.returncode == 0 and PAGE in probe.stdout:
            break
        assert time.monotonic() < deadline, f"httpd did not come up: {probe.stderr}"
        time.sleep(0.2)
    yield lab


def test_lab_topology(clean_lab: Lab) -> None:
    lab = clean_lab
    routes = lab.host("ip", "-4", "route", "show").stdout
    assert f"default via {R0_HOST_SIDE} dev eth0" in routes
    for ns in (lab.host_ns, lab.r0, lab.r1):
        assert lab.run(ns, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    # r0 routes only its own nets: the client net behind r1 is unreachable from it
    assert lab.run(lab.r0, "ip", "route", "get", C1_ADDR, check=False).returncode != 0
    assert lab.run(lab.r0, "ip", "route", "show", "default").stdout.strip() == ""
    assert lab.run(lab.r1, "ip", "route", "show", "default").stdout.strip() == ""
    # each client reaches its own router; c0 reaches the host through r0
    lab.run(lab.c1, "busybox", "ping", "-c1", "-W2", R1_HOST_SIDE)
    lab.run(lab.c0, "busybox", "ping", "-c1", "-W2", HOST_ETH0)
    # helpers: a peer-echo server in the host ns tells the client address it saw
    lab.serve_peer_echo(lab.host_ns, 5000)
    assert lab.tcp_read(lab.c0, HOST_ETH0, 5000) == f"{C0_ADDR}\n"
    # even the host's own replies to c1 follow the main default route out of eth0
    assert lab.tcp_read(lab.c1, HOST_ETH1, 5000, timeout=2) is None


def test_dump_host_state_is_a_stable_fingerprint(clean_lab: Lab) -> None:
    lab = clean_lab
    lab.docker("network", "create", "--driver", "bridge", "mn-base-warmup")  # Docker's lazily created chains
    lab.docker("network", "rm", "mn-base-warmup")
    before = lab.dump_host_state()
    assert "## iptables-save -t filter" in before and "eth1" in before
    assert lab.dump_host_state() == before
    lab.docker("network", "create", "--driver", "bridge", "mn-base-tmp")
    during = lab.dump_host_state()
    assert during != before
    lab.docker("network", "rm", "mn-base-tmp")
    assert lab.dump_host_state() == before


def test_published_port_answers_client_behind_eth0(web: Lab) -> None:
    """c0 -> r0 -> host eth0 192.168.100.2:4000 -> container: request and reply both use eth0."""
    lab = web
    assert lab.http_get(lab.c0, f"http://{HOST_ETH0}:{PORT}/") == f"{PAGE}\n"


def test_before_multinic_published_port_gets_no_reply_via_eth1(web: Lab) -> None:
    """The documented "before": c1 -> r1 -> host eth1 192.168.101.2:4000 gets NO reply.

    The request reaches the container through eth1, but the reply follows the main default route out of
    eth0 (source 192.168.101.2:4000 after un-DNAT), and r0, which has no route to the client, drops it.
    """
    lab = web
    requests_at_r1 = lab.add_counter(lab.r1, "-s", C1_ADDR, "-d", HOST_ETH1, "-p", "tcp", "--dport", str(PORT))
    replies_at_r1 = lab.add_counter(lab.r1, "-s", HOST_ETH1, "-p", "tcp", "--sport", str(PORT))
    replies_at_r0 = lab.add_counter(lab.r0, "-s", HOST_ETH1, "-d", C1_ADDR, "-p", "tcp", "--sport", str(PORT))

    assert lab.http_get(lab.c1, f"http://{HOST_ETH1}:{PORT}/", timeout=3) is None

    assert requests_at_r1() > 0, "the request never went towards eth1"
    assert replies_at_r0() > 0, "the container's reply did not leave through eth0"
    assert replies_at_r1() == 0, "a reply came back through eth1's router"
    # and the same service still answers through eth0 at the same time
    assert lab.http_get(lab.c0, f"http://{HOST_ETH0}:{PORT}/") == f"{PAGE}\n"
