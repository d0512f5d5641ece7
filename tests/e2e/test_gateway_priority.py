"""Issue 4 end to end: the seed's blue-green sequence on a real dockerd, with lexically hostile names.

Docker (20.10–27, and 28 without --gw-priority) gives a multi-homed container the default route of
the network whose name sorts first: attaching ``app_stage`` to a container on ``app_stage_internal``
silently moves its default route. multinic's ``gw_priority`` keeps it where the user said, through
policy routing inside the container (plugin/plan/gateway.py, driven by the watcher in plugin/loops/gateways.py
that ``multinic serve`` starts). dockerd's own main-table routes are left alone and still move as
Docker decides (checked below), so Docker's bookkeeping keeps working.

``app_stage_internal`` is bound to eth1 (``parent=eth1``): c1 is reachable only through eth1's router,
so a packet that really reaches c1 proves the container routes through that network. ``app_stage``
has no parent (egress by the host's main table, eth0); ``aaa_bridge`` is Docker's own bridge driver
and sorts before both.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from typing import Iterator

import pytest

from plugin.loops import decisions
from plugin.loops import gateways as watcher
from plugin.ops.status import gateway_rows
from plugin.settings import Settings
from tests.e2e.helpers import containers, inspect_ip, multinic, network, run, wait_for
from tests.lab import C1_ADDR, HOST_ETH1, start_echo_server
from tests.lab.plugin import stop_group

pytestmark = pytest.mark.e2e

CONVERGE = 15.0  # a wait, not a speed test: how long each step took is printed at the end of the run
PROBE = "198.18.0.1"  # benchmark range: nothing answers, only the route lookup matters

PRIO = "app_stage_internal"  # multinic, parent=eth1, gw_priority=10
FRONT = "app_stage"  # multinic, no parent, gw_priority 0 (sorts first)
BRIDGE = "aaa_bridge"  # Docker's bridge driver (sorts before both)
LATE_BRIDGE = "zzz_bridge"  # Docker's bridge driver, sorts last
GW = {PRIO: "10.61.0.1", FRONT: "10.62.0.1", BRIDGE: "10.63.0.1", LATE_BRIDGE: "10.64.0.1"}

TIMINGS: list[tuple[str, str, float]] = []  # (engine, step, seconds): printed by conftest's terminal summary


# -- helpers ----------------------------------------------------------------------------------------
def netns_cmd(lab, ctr: str, *cmd: str, check: bool = True) -> str:
    """A read-only command in the container's netns (the host's iproute2, whatever the image has)."""
    pid = lab.container_pid(ctr)
    proc = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", *cmd], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise AssertionError(f"{ctr}: {' '.join(cmd)}: {proc.stderr}")
    return proc.stdout


def route_via(lab, ctr: str, dst: str = PROBE) -> str | None:
    """The gateway ``ip route get`` picks inside the container."""
    m = re.search(r"\bvia (\S+)", netns_cmd(lab, ctr, "ip", "-4", "route", "get", dst, check=False))
    return m.group(1) if m else None


def dockers_default(lab, ctr: str) -> str | None:
    """The default route dockerd keeps in the container's main table."""
    m = re.search(r"default via (\S+)", netns_cmd(lab, ctr, "ip", "-4", "route", "show", "table", "main"))
    return m.group(1) if m else None


def diagnostics(lab, ctr: str) -> str:
    parts = [netns_cmd(lab, ctr, "sh", "-c", "ip -4 rule; ip -4 route show table all; ip -4 -br addr", check=False)]
    parts.append(json.dumps(decisions.load(lab.state_dir), indent=1))
    parts.append(lab.plugin_log_tail(30))
    return "\n".join(parts)


def expect_route(lab, ctr: str, net: str, step: str, timeout: float = CONVERGE) -> float:
    """Wait until the container routes by ``net``'s gateway; record and return how long it took."""
    t0 = time.monotonic()
    while True:
        got = route_via(lab, ctr)
        elapsed = time.monotonic() - t0
        if got == GW[net]:
            TIMINGS.append((lab.engine, step, elapsed))
            return elapsed
        if elapsed > timeout:
            raise AssertionError(
                f"{step}: {ctr} routes via {got}, want {net} ({GW[net]}) within {timeout}s\n{diagnostics(lab, ctr)}"
            )
        time.sleep(0.02)


def in_container_route(lab, ctr: str) -> str:
    """``ip route get`` as the container itself sees it (busybox ip inside)."""
    return lab.container_exec(ctr, "ip", "route", "get", PROBE).stdout


def decision(lab, ctr: str, networks: int = 1) -> dict:
    """The watcher's recorded decision, once it covers the container's ``networks`` networks."""
    cid = lab.docker("inspect", "-f", "{{.Id}}", ctr).stdout.strip()

    def current() -> dict:
        dec = decisions.load(lab.state_dir).get(cid) or {}
        return dec if len(dec.get("networks", ())) == networks else {}

    return wait_for(current, timeout=3) or decisions.load(lab.state_dir).get(cid) or {}


@pytest.fixture
def gw_lab(mn) -> Iterator:
    """The lab with the plugin, whose ``multinic serve`` runs the gateway watcher."""
    lab = mn
    if not wait_for(lambda: _live_watcher(lab), timeout=5):
        pytest.fail("multinic serve did not start the gateway watcher (no live watcher in "
                    f"{decisions.path(lab.state_dir)})\n{lab.plugin_log_tail(20)}", pytrace=False)
    yield lab


def _live_watcher(lab) -> dict:
    info = decisions.load_watcher_info(lab.state_dir)
    pid = info.get("pid")
    if not pid or not os.path.exists(f"/proc/{pid}") or info.get("driver") != lab.driver:
        return {}
    return info


@contextlib.contextmanager
def stage_networks(lab, front_opts: tuple[str, ...] = ()) -> Iterator[None]:
    with network(lab, PRIO, "--opt", "parent=eth1", "--opt", "gw_priority=10", "--subnet", "10.61.0.0/24"), \
            network(lab, FRONT, "--subnet", "10.62.0.0/24", *front_opts), \
            network(lab, BRIDGE, "--subnet", "10.63.0.0/24", driver="bridge"):
        yield


@contextlib.contextmanager
def long_echo_server(lab, port: int) -> Iterator[subprocess.Popen]:
    """The lab's echo server in c1, keeping each connection (it prints ``conn <peer>`` for each)."""
    proc = start_echo_server(lab.nsenter(lab.c1), port, stream=True)
    try:
        yield proc
    finally:
        stop_group(proc, 5)


def echo_lines(lab, ctr: str) -> int:
    return len(lab.container_exec(ctr, "cat", "/tmp/echo", check=False).stdout.split())


def tx_packets(lab, ctr: str) -> dict[str, int]:
    links = json.loads(netns_cmd(lab, ctr, "ip", "-s", "-j", "link"))
    return {link["ifname"]: link["stats64"]["tx"]["packets"] for link in links}


def ifname_of(lab, ctr: str, ip: str) -> str:
    for line in netns_cmd(lab, ctr, "ip", "-4", "-br", "addr").splitlines():
        parts = line.split()
        if any(tok.split("/")[0] == ip for tok in parts[2:]):
            return parts[0].split("@")[0]
    raise AssertionError(f"{ip} not in {ctr}")


# -- the tests ------------------------------------------------------------------------------------
def test_priority_network_first_then_front_then_bridge(gw_lab):
    """The seed's order: healthy on app_stage_internal, then app_stage attached (sorts first), then a
    Docker bridge that sorts before both. The default route never leaves app_stage_internal, and a
    long-lived connection through it survives both attachments."""
    lab = gw_lab
    with stage_networks(lab), containers(lab) as names, long_echo_server(lab, 7300) as server:
        run(lab, names, "gw-a", "--network", PRIO)
        expect_route(lab, "gw-a", PRIO, "run on priority network")
        assert f"via {GW[PRIO]}" in in_container_route(lab, "gw-a")
        # A long-lived connection to c1, only reachable through eth1, i.e. through app_stage_internal.
        lab.docker("exec", "-d", "gw-a", "sh", "-c",
                   f"i=0; while true; do i=$((i+1)); echo $i; sleep 0.1; done | nc {C1_ADDR} 7300 > /tmp/echo")
        assert wait_for(lambda: echo_lines(lab, "gw-a") >= 3, timeout=5), "echo through app_stage_internal"
        assert server.stdout.readline().split() == [b"conn", HOST_ETH1.encode()]  # left by eth1 (masqueraded)

        lab.docker("network", "connect", FRONT, "gw-a")
        assert dockers_default(lab, "gw-a") == GW[FRONT]  # Docker moved its own route: name order
        expect_route(lab, "gw-a", PRIO, "connect app_stage (sorts first)")
        assert f"via {GW[PRIO]}" in in_container_route(lab, "gw-a")

        lab.docker("network", "connect", BRIDGE, "gw-a")
        assert dockers_default(lab, "gw-a") == GW[BRIDGE]
        expect_route(lab, "gw-a", PRIO, "connect aaa_bridge (sorts first of all)")

        # The connection is still the same one and still flows, and it never used the other interfaces.
        front_if = ifname_of(lab, "gw-a", inspect_ip(lab, "gw-a", FRONT))
        bridge_if = ifname_of(lab, "gw-a", inspect_ip(lab, "gw-a", BRIDGE))
        before, tx_before = echo_lines(lab, "gw-a"), tx_packets(lab, "gw-a")
        assert wait_for(lambda: echo_lines(lab, "gw-a") >= before + 8, timeout=30), \
            (before, echo_lines(lab, "gw-a"))  # nc would have exited had the connection broken
        tx_after = tx_packets(lab, "gw-a")
        assert tx_after[front_if] - tx_before[front_if] < 3 and tx_after[bridge_if] - tx_before[bridge_if] < 3
        # ...and new connections take app_stage_internal too.
        out = lab.docker("exec", "gw-a", "sh", "-c", f"echo hi | timeout 2 nc {C1_ADDR} 7300", check=False)
        assert out.stdout.strip() == "hi", out.stderr

        dec = decision(lab, "gw-a", networks=3)
        assert dec["chosen"] == PRIO and dec["override"] and dec["gateway"] == GW[PRIO]
        assert "app_stage_internal (priority 10, network opt) beats aaa_bridge (priority 0" in dec["reason"]
        assert any(row.startswith("gw-a") and PRIO in row for row in gateway_rows(lab.state_dir))


def test_front_first_then_priority_network_then_bridge(gw_lab):
    """The other order: Docker keeps app_stage (sorts first) when app_stage_internal arrives; the
    priority takes the route over."""
    lab = gw_lab
    with stage_networks(lab), containers(lab) as names:
        run(lab, names, "gw-b", "--network", FRONT)
        expect_route(lab, "gw-b", FRONT, "run on app_stage")
        assert not decision(lab, "gw-b")["override"]

        lab.docker("network", "connect", PRIO, "gw-b")
        assert dockers_default(lab, "gw-b") == GW[FRONT]  # Docker did not move it: app_stage sorts first
        expect_route(lab, "gw-b", PRIO, "connect app_stage_internal (priority 10)")
        assert f"via {GW[PRIO]}" in in_container_route(lab, "gw-b")
        out = lab.docker("exec", "gw-b", "sh", "-c", f"timeout 5 nc {C1_ADDR} 7301 </dev/null", check=False)
        assert out.returncode != 0  # nothing listens, but the point is the route: see the next check
        lab.serve_peer_echo(lab.c1, 7301)
        assert lab.docker("exec", "gw-b", "sh", "-c", f"timeout 5 nc {C1_ADDR} 7301 </dev/null"
                          ).stdout.strip() == HOST_ETH1

        lab.docker("network", "connect", BRIDGE, "gw-b")
        expect_route(lab, "gw-b", PRIO, "connect aaa_bridge")
        # A connection arriving on app_stage's interface is answered from it (source-based rule).
        front_ip = inspect_ip(lab, "gw-b", FRONT)
        assert GW[FRONT] in netns_cmd(lab, "gw-b", "ip", "-4", "route", "get", PROBE, "from", front_ip)


def test_disconnecting_the_priority_network_moves_the_route_to_the_next(gw_lab):
    lab = gw_lab
    with stage_networks(lab), containers(lab) as names:
        run(lab, names, "gw-c", "--network", PRIO)
        lab.docker("network", "connect", "--driver-opt", "gw_priority=5", FRONT, "gw-c")
        lab.docker("network", "connect", BRIDGE, "gw-c")
        expect_route(lab, "gw-c", PRIO, "three networks")
        assert {n["name"]: (n["priority"], n["source"]) for n in decision(lab, "gw-c", networks=3)["networks"]} == {
            PRIO: (10, "network opt"), FRONT: (5, "endpoint driver-opt"), BRIDGE: (0, "default")}

        lab.docker("network", "disconnect", PRIO, "gw-c")
        expect_route(lab, "gw-c", FRONT, "disconnect app_stage_internal: app_stage (5) next")
        assert dockers_default(lab, "gw-c") == GW[BRIDGE]

        lab.docker("network", "disconnect", FRONT, "gw-c")
        expect_route(lab, "gw-c", BRIDGE, "disconnect app_stage: Docker's bridge alone")
        # No multinic network left: every rule and route of ours is gone from the container.
        assert wait_for(lambda: "proto 211" not in netns_cmd(lab, "gw-c", "ip", "-4", "rule"), timeout=CONVERGE)
        assert "211" not in netns_cmd(lab, "gw-c", "ip", "-4", "route", "show", "table", "all")
        cid = lab.docker("inspect", "-f", "{{.Id}}", "gw-c").stdout.strip()
        assert wait_for(lambda: cid not in decisions.load(lab.state_dir), timeout=3)

        # Reattach: the rules come back, and connect/disconnect keep working with them in place.
        lab.docker("network", "connect", PRIO, "gw-c")
        expect_route(lab, "gw-c", PRIO, "reconnect app_stage_internal")


def test_driver_opt_on_connect_overrides_the_networks_priority(gw_lab):
    lab = gw_lab
    with stage_networks(lab), containers(lab) as names:
        run(lab, names, "gw-d", "--network", PRIO)
        lab.docker("network", "connect", "--driver-opt", "gw_priority=20", FRONT, "gw-d")
        expect_route(lab, "gw-d", FRONT, "connect app_stage with --driver-opt gw_priority=20")
        dec = decision(lab, "gw-d", networks=2)
        assert dec["chosen"] == FRONT and not dec["override"]  # it also sorts first: Docker agrees
        # A negative endpoint priority pushes a network below the default 0: app_stage (Docker's choice by
        # name) loses to a bridge that sorts last.
        with network(lab, LATE_BRIDGE, "--subnet", "10.64.0.0/24", driver="bridge"):
            lab.docker("network", "disconnect", FRONT, "gw-d")
            lab.docker("network", "connect", "--driver-opt", "gw_priority=-1", FRONT, "gw-d")
            lab.docker("network", "disconnect", PRIO, "gw-d")
            lab.docker("network", "connect", LATE_BRIDGE, "gw-d")
            assert dockers_default(lab, "gw-d") == GW[FRONT]
            expect_route(lab, "gw-d", LATE_BRIDGE, "app_stage at -1 loses to zzz_bridge at 0")
            lab.docker("rm", "-f", "gw-d")


def test_restart_and_plugin_restart_keep_the_choice(gw_lab):
    lab = gw_lab
    with stage_networks(lab), containers(lab) as names:
        run(lab, names, "gw-e", "--network", PRIO)
        lab.docker("network", "connect", FRONT, "gw-e")
        expect_route(lab, "gw-e", PRIO, "before restart")
        lab.docker("restart", "-t", "0", "gw-e")  # new netns: rules re-applied from the start event
        expect_route(lab, "gw-e", PRIO, "docker restart")
        if os.environ.get("MULTINIC_GW_STANDALONE") != "1":
            old = _live_watcher(lab).get("pid")
            lab.stop_plugin()
            assert route_via(lab, "gw-e") == GW[PRIO]  # the rules live in the container, not in the plugin
            lab.start_plugin()
            assert wait_for(lambda: _live_watcher(lab).get("pid") not in (None, old), timeout=5)
            lab.docker("network", "disconnect", PRIO, "gw-e")  # the new watcher follows events
            expect_route(lab, "gw-e", FRONT, "disconnect after plugin restart")
        text = multinic(lab, "status", "--socket", lab.plugin_socket).stdout
        assert "GATEWAYS" in text and "gw-e" in text.split("GATEWAYS", 1)[1]


def test_docker28_gw_priority_is_respected(gw_lab):
    lab = gw_lab
    if not lab.engine.startswith("28"):
        pytest.skip("Engine 28 only")
    with stage_networks(lab), containers(lab) as names:
        run(lab, names, "gw-f", "--network", PRIO)
        lab.docker("network", "connect", "--gw-priority", "20", BRIDGE, "gw-f")
        expect_route(lab, "gw-f", BRIDGE, "docker --gw-priority 20 on the bridge")
        dec = decision(lab, "gw-f", networks=2)
        assert dec["chosen"] == BRIDGE and not dec["override"]  # Docker chose it itself
        lab.docker("network", "connect", "--gw-priority", "30", FRONT, "gw-f")
        expect_route(lab, "gw-f", FRONT, "docker --gw-priority 30 on a multinic network")
        sources = {n["name"]: n["source"] for n in decision(lab, "gw-f", networks=3)["networks"]}
        assert sources[FRONT] == "docker gw-priority"


def test_resync_repairs_rules_someone_else_removed(gw_lab):
    lab = gw_lab
    with stage_networks(lab), containers(lab) as names:
        run(lab, names, "gw-g", "--network", FRONT)
        lab.docker("network", "connect", PRIO, "gw-g")
        expect_route(lab, "gw-g", PRIO, "before tampering")
        time.sleep(max(watcher.FOLLOW_UPS) + 0.3)  # past the event's follow-ups: only the resync can repair
        pid = lab.container_pid("gw-g")
        subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "sh", "-c",
                        "ip rule del pref 30090; ip route flush table 30099"], check=True)
        assert route_via(lab, "gw-g") == GW[FRONT]
        expect_route(lab, "gw-g", PRIO, "periodic resync", timeout=Settings().resync_interval + 3)


def test_watcher_reconnects_after_dockerd_restart(gw_lab):
    lab = gw_lab
    lab.stop_dockerd()
    since = decisions.load_watcher_info(lab.state_dir).get("since")
    lab.start_dockerd()
    assert wait_for(lambda: decisions.load_watcher_info(lab.state_dir).get("since") != since,
                    timeout=watcher.BACKOFF_MAX + 5), f"watcher did not reconnect\n{lab.plugin_log_tail(20)}"
    with stage_networks(lab), containers(lab) as names:
        run(lab, names, "gw-h", "--network", PRIO)
        lab.docker("network", "connect", FRONT, "gw-h")
        expect_route(lab, "gw-h", PRIO, "after dockerd restart")

