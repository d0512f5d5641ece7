"""Pure parts of health reporting, of following a parent NIC (its next hop) and of telling which kernel
events touch a parent."""

import ipaddress
import json
import os
import time

import pytest

from plugin.kernel import netlink as nl
from plugin.kernel.events import Event, touches_parent
from plugin.kernel.tags import RT_PROTO
from plugin.ops import health
from plugin.plan.facts import ParentFacts
from plugin.plan.network import GATEWAY_GIVEN, GATEWAY_GUESSED, GATEWAY_ROUTE, parent_next_hop

IP = ipaddress.IPv4Address


def parent(*addrs, exists=True):
    return ParentFacts("eth1", exists, tuple(ipaddress.IPv4Interface(a) for a in addrs))


def test_next_hop_given_then_default_route_then_kept_then_guessed():
    eth1 = parent("192.168.101.2/24")
    assert parent_next_hop(eth1, IP("192.168.101.9"), IP("192.168.101.254")) == (IP("192.168.101.9"), GATEWAY_GIVEN)
    assert parent_next_hop(eth1, None, IP("192.168.101.254")) == (IP("192.168.101.254"), GATEWAY_ROUTE)
    # no route any more: the one in use is kept while it is still on the parent's subnet
    assert parent_next_hop(eth1, None, None, "192.168.101.254", GATEWAY_ROUTE) == (IP("192.168.101.254"),
                                                                                  GATEWAY_ROUTE)
    assert parent_next_hop(eth1, None, None) == (IP("192.168.101.1"), GATEWAY_GUESSED)


def test_readdressed_to_another_subnet_takes_its_first_host():
    moved = parent("172.16.5.7/24")
    assert parent_next_hop(moved, None, None, "192.168.101.1", GATEWAY_GUESSED) == (IP("172.16.5.1"), GATEWAY_GUESSED)


def test_nothing_to_guess_from_on_a_point_to_point_address():
    assert parent_next_hop(parent("192.168.101.2/32"), None, None) == (None, "")
    assert parent_next_hop(parent(exists=False), None, None) == (None, "")


def test_events_that_touch_a_parent():
    parents = {"eth1": 3}
    assert touches_parent(Event(nl.RTM_NEWADDR, index=3, name="eth1"), parents)
    assert touches_parent(Event(nl.RTM_NEWADDR, index=0, name="eth1"), parents)  # re-created: new index, same name
    assert not touches_parent(Event(nl.RTM_NEWADDR, index=7, name="eth0"), parents)
    assert touches_parent(Event(nl.RTM_NEWROUTE, index=3, dst_len=0, proto=4), parents)
    assert not touches_parent(Event(nl.RTM_NEWROUTE, index=3, dst_len=0, proto=RT_PROTO), parents)  # our own
    assert not touches_parent(Event(nl.RTM_NEWROUTE, index=3, dst_len=24, proto=2), parents)
    links: dict = {}
    link = Event(nl.RTM_NEWLINK, index=3, name="eth1", mtu=1500, flags=0x10041)
    assert touches_parent(link, parents, links) and not touches_parent(link, parents, links)  # only a change counts


def test_health_report_dead_hung_failed_and_state(tmp_path):
    hdir = health.health_dir(tmp_path)
    hdir.mkdir()
    now = time.monotonic()
    me = os.getpid()
    (hdir / "supervisor.json").write_text(json.dumps({"pid": me, "loops": {
        "healer": {"pid": me, "restarts": 2, "last_exit": "killed by signal 9"},
        "watcher": {"pid": 999999999, "restarts": 0},
        "metrics": {"pid": me, "restarts": 0}}}))
    (hdir / "healer.json").write_text(json.dumps({"pid": me, "beat": now, "ok": False, "last_error": "boom",
                                                  "rounds": 3, "failures": 1}))
    (hdir / "metrics.json").write_text(json.dumps({"pid": me, "beat": now - 3600, "ok": True}))
    report = health.report(tmp_path, now=now)
    assert not report["healthy"] and report["serving"]
    text = " | ".join(report["problems"])
    assert "healer: last round failed: boom" in text
    assert "watcher: process 999999999 is dead" in text
    assert "metrics: no sign of life" in text
    assert report["loops"]["healer"]["restarts"] == 2 and report["loops"]["healer"]["failures"] == 1
    health.note_state(tmp_path, False, "state file unreadable")
    assert any(p.startswith("state:") for p in health.report(tmp_path, now=now)["problems"])


def test_health_without_serve_is_healthy(tmp_path):
    report = health.report(tmp_path)
    assert report["healthy"] and report["loops"] == {} and not report["serving"]


def test_startup_failure_is_a_problem_until_the_healer_succeeds(tmp_path):
    health.note_startup(tmp_path, False, "firewall update failed")
    me = os.getpid()
    hdir = health.health_dir(tmp_path)
    (hdir / "supervisor.json").write_text(json.dumps({"pid": me, "loops": {"healer": {"pid": me}}}))
    (hdir / "healer.json").write_text(json.dumps({"pid": me, "beat": time.monotonic(), "last_ok": None}))
    assert "reconcile at start failed: firewall update failed" in health.report(tmp_path)["problems"]
    (hdir / "healer.json").write_text(json.dumps({"pid": me, "beat": time.monotonic(), "last_ok": time.time() + 1}))
    assert health.report(tmp_path)["healthy"]


def test_a_failed_verb_is_a_problem_until_the_same_verb_succeeds(tmp_path):
    """dockerd answers a failed Join with its own DeleteEndpoint (and asks no-op verbs in between): their
    success does not hide the failure; the next successful Join does."""
    health.note_verb_error(tmp_path, "NetworkDriver.Join", OSError(1, "Operation not permitted"))
    health.note_verb_error(tmp_path, "NetworkDriver.CreateNetwork", OSError(30, "Read-only file system"))
    for verb in ("NetworkDriver.DeleteEndpoint", "NetworkDriver.GetCapabilities", "NetworkDriver.DiscoverNew"):
        health.note_verb_ok(tmp_path, verb)
    report = health.report(tmp_path)
    assert not report["healthy"] and len(report["problems"]) == 2, report["problems"]
    assert report["problems"][1] == ("NetworkDriver.Join failed: [Errno 1] Operation not permitted "
                                     "(until it succeeds again)")
    assert report["last_verb_error"]["verb"] == "NetworkDriver.CreateNetwork"
    health.note_verb_ok(tmp_path, "NetworkDriver.Join")
    report = health.report(tmp_path)
    assert [p.split(" failed")[0] for p in report["problems"]] == ["NetworkDriver.CreateNetwork"]
    health.note_verb_ok(tmp_path, "NetworkDriver.CreateNetwork")
    report = health.report(tmp_path)
    assert report["healthy"] and report["last_verb_error"]["verb"] == "NetworkDriver.CreateNetwork"  # kept


def test_a_beat_ages_by_the_monotonic_clock_not_the_wall_clock(tmp_path):
    """NTP stepping the wall clock (years, on a box without an RTC) neither hangs nor revives a loop; a beat
    of an earlier boot (CLOCK_MONOTONIC restarted below it) is no sign of life."""
    hdir = health.health_dir(tmp_path)
    hdir.mkdir()
    me, now = os.getpid(), time.monotonic()
    (hdir / "supervisor.json").write_text(json.dumps({"pid": me, "loops": {"healer": {"pid": me},
                                                                           "watcher": {"pid": me}}}))
    (hdir / "healer.json").write_text(json.dumps({"pid": me, "beat": now - 1, "last_run": time.time() - 3e8}))
    (hdir / "watcher.json").write_text(json.dumps({"pid": me, "beat": now + 3600, "last_run": time.time()}))
    report = health.report(tmp_path, now=now)
    assert report["loops"]["healer"]["alive"] and report["loops"]["healer"]["age"] == 1.0
    assert not report["loops"]["watcher"]["alive"] and report["problems"] == [
        "watcher: no sign of life for ? s (hung or stopped)"]


def test_a_stop_flag_wakes_its_waiter_at_once_and_is_its_own_in_each_process():
    """A waiter sleeps (no polling) until ``set``, which wakes it at once; a flag made before a fork is
    a flag of each process: the child's ``set`` wakes nothing in the parent, a parent's earlier ``set``
    is seen by the child."""
    import threading

    from plugin.loops.supervisor import StopFlag

    flag, woke = StopFlag(), []
    waiter = threading.Thread(target=lambda: woke.append((flag.wait(30), time.monotonic())))
    waiter.start()
    time.sleep(0.2)
    flag.set()
    waiter.join(5)
    assert woke and woke[0][0] and time.monotonic() - woke[0][1] < 1
    fresh = StopFlag()
    child = os.fork()
    if child == 0:
        fresh.set()
        os._exit(0 if flag.is_set() and flag.wait(0) else 1)
    assert os.waitpid(child, 0)[1] == 0
    started = time.monotonic()
    assert not fresh.wait(0.3) and time.monotonic() - started >= 0.25  # not woken by the child's set


def test_freed_heap_is_given_back_after_churn_only():
    """glibc keeps a worker's freed heap; the loops' host offers it back once a megabyte lies free and the
    memory in use has moved, not again while nothing changed."""
    from plugin.ops import memory

    if not memory.measures_churn():
        pytest.skip("not glibc 2.33+")
    kept = [bytes(2000) + bytes([i % 256]) for i in range(4000)]  # 8 MB of heap chunks
    del kept[::2]  # half of them freed between live ones: free chunks glibc cannot trim from the top
    assert memory.give_back(when_churned=True)
    assert not memory.give_back(when_churned=True)  # nothing moved since
    assert kept


def test_a_loops_failed_round_stands_until_a_round_goes_through(tmp_path):
    """The healer reports a round that finds nothing to do as nothing (its heartbeat says it lives); after a
    failed round, the first round that goes through says the failure is over."""
    import threading

    health.start_beat(tmp_path, "healer", threading.Event())
    try:
        record = health.health_dir(tmp_path) / "healer.json"
        health.passed()
        assert health.read(record)["rounds"] == 0  # quiet: nothing counted
        health.note(False, "nftables listing failed")
        assert health.read(record)["ok"] is False
        health.passed()
        after = health.read(record)
        assert after["ok"] is True and after["rounds"] == 2 and after["last_error"] == "nftables listing failed"
        health.passed()
        assert health.read(record)["rounds"] == 2
    finally:
        health.stop_beats()
