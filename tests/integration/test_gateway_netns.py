"""Issue 4 against the kernel: policy routing in a scratch namespace playing a two-network container.

    c0 (198.51.100.10) ── g0 ── eth0 10.1.0.2 ┐
                                              k  (the "container"; dockerd's default: via 10.1.0.1)
    c1 (198.51.101.10) ── g1 ── eth1 10.2.0.2 ┘

c0 is reachable only through g0 and c1 only through g1, so a reply that leaves by the wrong
interface is lost: the connection checks below send real packets; where the kernel's choice for a
connection not yet made is the point, ``ip route get`` shows it.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, ip_address

import pytest

from plugin.kernel import netns
from plugin.loops import decisions
from plugin.loops.gateways import Watcher, cleanup
from plugin.plan import gateway
from tests.nsutil import connect, in_netns, scratch_netns, serve_peer, sh


def reconcile_container(path, atts, expect=None):
    """What the gateway watcher does for one container (decide, write), with the routing it wrote."""
    decision, facts = Watcher.route(path, atts, expect)
    with netns.open_netns(path, expect) as ipr:
        _, ifnames = netns.read(ipr)
    return decision, gateway.container_routing(atts, decision, ifnames), facts


def apply_container(path, routing, expect=None):
    with netns.open_netns(path, expect) as ipr:
        return netns.apply(ipr, routing)


@dataclass
class Box:
    k: str
    g0: str
    g1: str
    c0: str
    c1: str
    servers: list[subprocess.Popen] = field(default_factory=list)

    @property
    def path(self) -> str:
        return f"/var/run/netns/{self.k}"

    def serve(self, ns: str, port: int) -> None:
        self.servers.append(serve_peer(ns, port))

    def connect(self, ns: str, addr: str, port: int, timeout: float = 2.0) -> str:
        return connect(ns, addr, port, timeout)

    def route_get(self, dst: str = "198.18.0.1", src: str | None = None) -> str:
        return sh(self.k, f"ip -4 route get {dst}" + (f" from {src}" if src else "")).strip()

    def dump(self) -> str:
        return sh(self.k, "ip -4 rule; ip -4 route show table all")

    def main_table(self) -> str:
        return sh(self.k, "ip -4 route show table main")


def build(b: Box) -> None:
    sh(b.k, f"ip link add eth0 type veth peer name k0 netns {b.g0}; "
            f"ip link add eth1 type veth peer name k1 netns {b.g1}; "
            "ip addr add 10.1.0.2/24 dev eth0; ip addr add 10.2.0.2/24 dev eth1; "
            "ip link set eth0 up; ip link set eth1 up; ip route add default via 10.1.0.1 dev eth0")
    for g, c, n in ((b.g0, b.c0, 0), (b.g1, b.c1, 1)):
        sh(g, f"ip addr add 10.{n + 1}.0.1/24 dev k{n}; ip link set k{n} up; "
              f"ip link add dn type veth peer name eth0 netns {c}; "
              f"ip addr add 198.51.{100 + n}.1/24 dev dn; ip link set dn up; sysctl -qw net.ipv4.ip_forward=1")
        sh(c, f"ip addr add 198.51.{100 + n}.10/24 dev eth0; ip link set eth0 up; "
              f"ip route add default via 198.51.{100 + n}.1")


@pytest.fixture
def box():
    tag = f"mngw{os.getpid() % 1000}"
    names = [f"{tag}-{n}" for n in ("k", "g0", "g1", "c0", "c1")]
    with scratch_netns(*names) as ns:
        b = Box(*ns)
        build(b)
        try:
            yield b
        finally:
            for proc in b.servers:
                proc.kill()
                proc.wait()


def att(name: str, n: int, priority: int, source: str = "network opt") -> gateway.Attachment:
    return gateway.Attachment(
        network_id=f"id-{name}", network_name=name, driver="multinic", endpoint_id=f"ep-{name}",
        priority=priority, priority_source=source, gateway=IPv4Address(f"10.{n}.0.1"),
        address=IPv4Interface(f"10.{n}.0.2/24"), internal=False,
    )


def test_override_steers_default_route_and_answers_from_each_interface(box):
    before, main_before = box.dump(), box.main_table()
    # a sorts first, so "dockerd" routes by eth0; b has the higher priority.
    atts = [att("a", 1, 0, "default"), att("b", 2, 10)]
    box.serve(box.c1, 7000)
    box.serve(box.k, 7001)
    assert box.connect(box.k, "198.51.101.10", 7000).startswith("FAIL")  # c1 only behind eth1

    decision, _, facts = reconcile_container(box.path, atts)
    assert decision.override and decision.chosen.network_name == "b"
    assert facts["docker_gateway"] == "10.1.0.1" and facts["changed"]
    assert "via 10.2.0.1 dev eth1" in box.route_get()
    assert box.main_table() == main_before  # dockerd's routes untouched
    rules = sh(box.k, "ip -4 rule")
    assert "30000:\tfrom all lookup main suppress_prefixlength 0 proto 211" in rules
    assert "30090:\tfrom all lookup 30099 proto 211" in rules

    # Out through the chosen gateway, with that interface's address.
    assert box.connect(box.k, "198.51.101.10", 7000) == "10.2.0.2"
    # A connection arriving on eth0 (not the default route any more) is answered through eth0.
    assert box.connect(box.c0, "10.1.0.2", 7001) == "198.51.100.10"
    assert "via 10.1.0.1 dev eth0" in box.route_get(src="10.1.0.2")
    # Local subnets stay local, whatever the source.
    local = box.route_get("10.2.0.1", src="10.1.0.2")
    assert "dev eth1" in local and "via" not in local and "table" not in local

    applied = box.dump()
    decision2, _, facts2 = reconcile_container(box.path, atts)
    assert decision2 == decision and not facts2["changed"] and box.dump() == applied

    # dockerd moves its default route to b itself (say b was renamed to sort first): no override needed.
    sh(box.k, "ip route replace default via 10.2.0.1 dev eth1")
    decision3, _, _ = reconcile_container(box.path, atts)
    assert not decision3.override and decision3.chosen.network_name == "b"
    assert "30090" not in sh(box.k, "ip -4 rule") and "table 30099" not in sh(box.k, "ip route show table all")
    assert "via 10.2.0.1 dev eth1" in box.route_get()
    sh(box.k, "ip route replace default via 10.1.0.1 dev eth0")

    assert netns.remove(box.path)
    assert box.dump() == before
    assert not netns.remove(box.path)


def test_without_override_a_connection_on_the_second_interface_is_answered_from_it(box):
    before = box.dump()
    atts = [att("a", 1, 10), att("b", 2, 0, "default")]  # dockerd's choice (eth0) is the top priority
    box.serve(box.k, 7001)
    # Control: without source routing the reply to c1 leaves by eth0 and is lost.
    assert box.connect(box.c1, "10.2.0.2", 7001, timeout=1).startswith("FAIL")

    decision, routing, _ = reconcile_container(box.path, atts)
    assert not decision.override and decision.chosen.network_name == "a"
    assert "via 10.1.0.1 dev eth0" in box.route_get()
    assert box.connect(box.c1, "10.2.0.2", 7001) == "198.51.101.10"
    assert box.connect(box.c0, "10.1.0.2", 7001) == "198.51.100.10"

    assert not apply_container(box.path, routing)  # twice = same
    netns.remove(box.path)
    assert box.dump() == before


def test_never_touches_rules_and_routes_that_are_not_ours(box):
    sh(box.k, "ip rule add pref 30010 from 10.9.9.9 lookup 30100; ip route add 203.0.113.0/24 via 10.2.0.1 "
              "table 30100; ip rule add pref 31000 lookup 77; ip route add default via 10.1.0.1 table 77")
    before = box.dump()
    reconcile_container(box.path, [att("a", 1, 0, "default"), att("b", 2, 10)])
    after = box.dump()
    for line in before.splitlines():
        assert line in after
    netns.remove(box.path)
    assert box.dump() == before


def test_interface_gone_then_reconciled(box):
    """dockerd disconnects b: the kernel drops our routes through eth1, the reconcile drops the rules."""
    before = box.dump()
    reconcile_container(box.path, [att("a", 1, 0, "default"), att("b", 2, 10)])
    sh(box.k, "ip link del eth1")
    decision, routing, _ = reconcile_container(box.path, [att("a", 1, 0, "default")])
    assert not decision.override and {r.priority for r in routing.rules} == {30000, 30010}
    dump = box.dump()
    assert "30090" not in dump and "eth1" not in dump and "30101" not in dump
    assert "via 10.1.0.1 dev eth0" in box.route_get()
    netns.remove(box.path)
    assert box.dump() == "\n".join(line for line in before.splitlines() if "eth1" not in line) + "\n"


def test_single_network_pins_established_connections_before_dockerd_moves_the_route(box):
    """Seed scenario: container on a only, a long-lived connection out; dockerd attaches b and moves its
    default route to b (b sorts first). The connection keeps leaving by eth0 with no watcher round-trip."""
    sh(box.k, "ip link set eth1 down")  # "b not attached yet"
    reconcile_container(box.path, [att("a", 1, 0, "default")])
    assert "via 10.1.0.1 dev eth0" in box.route_get()
    sh(box.k, "ip link set eth1 up; ip route replace default via 10.2.0.1 dev eth1")  # dockerd's doing
    assert "via 10.2.0.1 dev eth1" in box.route_get()  # new connections: Docker's choice until reconciled
    assert "via 10.1.0.1 dev eth0" in box.route_get(src="10.1.0.2")  # established ones stay


def test_refuses_its_own_namespace_and_a_recycled_pid(box):
    own = f"/var/run/netns/{box.k}"

    def inside() -> str:
        try:
            apply_container(own, gateway.Routing())
        except netns.NotThatNetns as exc:
            return str(exc)
        return "applied"

    assert "own network namespace" in in_netns(box.k, inside)
    with pytest.raises(netns.NotThatNetns):
        apply_container(own, gateway.Routing(), expect=f"/var/run/netns/{box.g0}")
    with pytest.raises(FileNotFoundError):
        apply_container("/proc/999999999/ns/net", gateway.Routing())


def test_remove_all_for_uninstall(box, tmp_path):
    """`multinic cleanup` path: remove from every recorded container, by pid, checked against its sandbox."""

    before = box.dump()
    reconcile_container(box.path, [att("a", 1, 0, "default"), att("b", 2, 10)])
    holder = subprocess.Popen(["nsenter", f"--net={box.path}", "sleep", "30"])  # the "container's" process
    def uninstall() -> int:  # as the plugin would, from a namespace of the lab's (never the machine's own)
        decisions.write(tmp_path, {
            "c1": {"container": "k", "pid": holder.pid, "sandbox": box.path},
            "c2": {"container": "gone", "pid": os.getpid(), "sandbox": "/nonexistent"},  # never our own netns
        })
        return cleanup(tmp_path)

    try:
        time.sleep(0.2)
        assert in_netns(box.g0, uninstall) == 1
        assert box.dump() == before and decisions.load(tmp_path) == {}
    finally:
        holder.kill()
        holder.wait()


def test_an_announcement_resolves_a_neighbour_still_waiting_for_the_container(box):
    """Engine 20.10 leaves a neighbour that reached for the container before its interface was up to that
    neighbour's own ARP retry (a second later; here 30 s). The watcher's announcement from inside the
    container resolves it at once, and the connection the neighbour held goes through."""
    from concurrent.futures import ThreadPoolExecutor

    sh(box.g0, "sysctl -qw net.ipv4.neigh.k0.retrans_time_ms=30000")
    sh(box.k, "ip link set eth0 arp off")  # not answering yet, as an interface dockerd has not configured
    box.serve(box.k, 8080)
    with ThreadPoolExecutor(1) as pool:
        reply = pool.submit(box.connect, box.g0, "10.1.0.2", 8080, 20.0)
        _until_incomplete(box.g0, "10.1.0.2")
        sh(box.k, "ip link set eth0 arp on")
        # what the watcher asks of the host before it announces: is anyone waiting for the address?
        assert in_netns(box.g0, _resolving, "k0", ["10.1.0.2", "10.1.0.3"]) == {"10.1.0.2"}
        assert netns.announce(box.path, None, {IPv4Address("10.1.0.2"): "eth0"}) == 1
        assert reply.result() == "10.1.0.1"
    mac = sh(box.k, "ip -br link show eth0").split()[2]
    assert f"lladdr {mac}" in sh(box.g0, "ip neigh show 10.1.0.2 dev k0")


def test_an_ipv6_announcement_resolves_a_neighbour_still_soliciting_the_container(box):
    """The same for IPv6: the host's neighbour solicitations go unanswered until the container's interface
    is ready (here: dropped by an nftables rule inside it); the watcher's unsolicited neighbour
    advertisement resolves the host's INCOMPLETE entry, and the connection it held goes through."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.lab.probes import start_echo_server

    sh(box.k, "ip -6 addr add fd00:1::2/64 dev eth0 nodad")
    sh(box.g0, "ip -6 addr add fd00:1::1/64 dev k0 nodad; sysctl -qw net.ipv6.neigh.k0.retrans_time_ms=30000")
    sh(box.k, "nft 'add table ip6 notyet; add chain ip6 notyet in { type filter hook input priority 0; }; "
              "add rule ip6 notyet in icmpv6 type nd-neighbor-solicit drop'")
    box.servers.append(start_echo_server(["nsenter", f"--net={box.path}"], 8081, "::"))
    with ThreadPoolExecutor(1) as pool:
        reply = pool.submit(box.connect, box.g0, "fd00:1::2", 8081, 20.0)
        _until_incomplete(box.g0, "fd00:1::2")
        sh(box.k, "nft delete table ip6 notyet")
        assert in_netns(box.g0, _resolving, "k0", ["fd00:1::2", "fd00:1::3", "10.1.0.2"]) == {"fd00:1::2"}
        assert netns.announce(box.path, None, {IPv6Address("fd00:1::2"): "eth0"}) == 1
        assert reply.result() == "fd00:1::1"
    mac = sh(box.k, "ip -br link show eth0").split()[2]
    assert f"lladdr {mac}" in sh(box.g0, "ip -6 neigh show fd00:1::2 dev k0")


def _until_incomplete(ns: str, address: str) -> None:
    """Until ``ns`` holds packets for ``address`` on k0 while it resolves it."""
    deadline = time.monotonic() + 10
    while "INCOMPLETE" not in sh(ns, f"ip neigh show {address} dev k0"):
        assert time.monotonic() < deadline, sh(ns, "ip neigh show dev k0; ip -6 neigh show dev k0")
        time.sleep(0.05)


def _resolving(ifname, addresses):
    from plugin.kernel.links import resolving
    from plugin.kernel.netlink import Rtnl

    with Rtnl() as rt:
        return {str(a) for a in resolving(rt, ifname, [ip_address(a) for a in addresses])}


def test_the_announcement_is_refused_in_the_plugins_own_namespace(box):
    """Run from a namespace of the lab's: were the refusal broken, the ARP would leave there."""
    with pytest.raises(netns.NotThatNetns):
        in_netns(box.k, netns.announce, "/proc/self/ns/net", None, {IPv4Address("10.1.0.2"): "eth0"})


def _inspect(n: int, gateway_ip: str) -> dict:
    return {"NetworkID": f"n{n}", "EndpointID": f"ep{n}", "Gateway": gateway_ip, "IPAddress": f"10.{n}.0.2",
            "IPPrefixLen": 24}


def _watch_rounds(state_dir: str, api, fix) -> list:
    """As the gateway watcher's thread does: two resyncs, then ``fix()`` and a third; after each, its
    health record (``last_error``, ``ok``) and the log records of the round (with a traceback or not)."""
    import logging
    import threading

    from plugin.ops import health
    from plugin.plan.state import Store
    from plugin.settings import Settings

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("plugin.loops.gateways").addHandler(handler)
    health.start_beat(state_dir, "gateway watcher", threading.Event())
    try:
        w = Watcher(Store(state_dir), Settings(state_dir=state_dir))
        rounds = []
        for n in range(3):
            if n == 2:
                fix()
            records.clear()
            w.resync(api)
            w.note_round()
            beat = health.read(health.health_dir(state_dir) / "watcher.json")
            rounds.append((beat["ok"], beat["failures"], beat["last_error"],
                           [(r.levelname, r.exc_info is not None) for r in records if r.levelno >= logging.WARNING]))
        return rounds
    finally:
        health.stop_beats()
        logging.getLogger("plugin.loops.gateways").removeHandler(handler)


def test_a_container_routing_the_kernel_refuses_is_a_failed_round_until_it_works(box, tmp_path):
    """The kernel refusing a container's policy routing (here dockerd's gateway for its second network is
    not on that interface: no route can go through it) fails the gateway watcher's round, said in its
    health record, the traceback logged once; the round after it works is healthy again."""
    from tests.unit.test_gateway import FakeAPI

    holder = subprocess.Popen(["nsenter", f"--net={box.path}", "sleep", "60"])  # the "container's" process
    try:
        target = os.stat(box.path).st_ino
        for _ in range(100):  # nsenter has entered the netns once its /proc entry shows it
            if os.stat(f"/proc/{holder.pid}/ns/net").st_ino == target:
                break
            time.sleep(0.05)
        nets = {f"n{n}": {"Id": f"n{n}", "Name": name, "Driver": "multinic"} for n, name in ((1, "a"), (2, "b"))}
        container = {"Id": "c1", "Name": "/k", "State": {"Running": True, "Pid": holder.pid},
                     "NetworkSettings": {"SandboxKey": box.path,
                                         "Networks": {"a": _inspect(1, "10.1.0.1"), "b": _inspect(2, "10.9.0.1")}}}
        api = FakeAPI({"c1": container}, nets)

        def fix() -> None:
            container["NetworkSettings"]["Networks"]["b"] = _inspect(2, "10.2.0.1")

        state = str(tmp_path / "state")
        first, second, third = in_netns(box.g0, _watch_rounds, state, api, fix)  # never the machine's netns
        assert first[:2] == (False, 1) and "k: writing its policy routing failed" in first[2], first
        assert first[3] == [("ERROR", True)]  # the traceback, once
        assert second[:2] == (False, 2) and second[3] == [("WARNING", False)], second
        assert third[:2] == (True, 2) and third[3] == [], third
        assert "via 10.2.0.1 dev eth1" in box.dump()
    finally:
        holder.kill()
        holder.wait()
