"""Pure parts of health reporting and of the NIC watcher."""

import ipaddress
import json
import os
import time

from plugin import health
from plugin.facts import ParentFacts
from plugin.nicwatch import RTM_NEWADDR, RTM_NEWROUTE, Event, follow, relevant
from plugin.state import NetworkRecord, State
from plugin.tags import RT_PROTO


def net(**kw):
    base = dict(id="a" * 64, bridge="mn-a", subnet="10.10.0.0/24", gateway="10.10.0.1/24", parent="eth1",
                parent_gateway="192.168.101.1", table=20000, mark_slot=1, mtu=1500, options={"parent": "eth1"})
    base.update(kw)
    return NetworkRecord(**base)


def facts(*addrs, mtu=1500, exists=True):
    return {"eth1": ParentFacts("eth1", exists, tuple(ipaddress.IPv4Interface(a) for a in addrs), mtu)}


def test_unpinned_gateway_follows_the_parent():
    state = State(networks={"n": net()})
    assert follow(state, facts("192.168.101.2/24"), {"eth1": ipaddress.IPv4Address("192.168.101.254")})
    assert state.networks["n"].parent_gateway == "192.168.101.254"


def test_pinned_gateway_and_mtu_are_never_changed():
    pinned = net(options={"parent": "eth1", "parent_gateway": "192.168.101.1", "mtu": "1500"})
    state = State(networks={"n": pinned})
    assert not follow(state, facts("192.168.101.2/24", mtu=1400), {"eth1": ipaddress.IPv4Address("192.168.101.9")})
    assert state.networks["n"] == pinned


def test_readdressed_to_another_subnet_takes_its_first_host_and_mtu_follows():
    state = State(networks={"n": net()})
    follow(state, facts("172.16.5.7/24", mtu=9000), {"eth1": None})
    assert (state.networks["n"].parent_gateway, state.networks["n"].mtu) == ("172.16.5.1", 9000)


def test_missing_parent_changes_nothing():
    state = State(networks={"n": net()})
    assert not follow(state, facts(exists=False), {})


def test_relevant_events():
    parents = {"eth1": 3}
    assert relevant(Event(RTM_NEWADDR, index=3, name="eth1"), parents)
    assert relevant(Event(RTM_NEWADDR, index=0, name="eth1"), parents)  # re-created: new index, same name
    assert not relevant(Event(RTM_NEWADDR, index=7, name="eth0"), parents)
    assert relevant(Event(RTM_NEWROUTE, index=3, dst_len=0, proto=4), parents)
    assert not relevant(Event(RTM_NEWROUTE, index=3, dst_len=0, proto=RT_PROTO), parents)  # our own
    assert not relevant(Event(RTM_NEWROUTE, index=3, dst_len=24, proto=2), parents)


def test_health_report_dead_hung_failed_and_state(tmp_path):
    hdir = health.health_dir(tmp_path)
    hdir.mkdir()
    now = time.time()
    me = os.getpid()
    (hdir / "supervisor.json").write_text(json.dumps({"pid": me, "loops": {
        "healer": {"pid": me, "restarts": 2, "last_exit": "killed by signal 9"},
        "watcher": {"pid": 999999999, "restarts": 0},
        "nicwatch": {"pid": me, "restarts": 0}}}))
    (hdir / "healer.json").write_text(json.dumps({"pid": me, "last_run": now, "ok": False, "last_error": "boom",
                                                  "rounds": 3, "failures": 1}))
    (hdir / "nicwatch.json").write_text(json.dumps({"pid": me, "last_run": now - 3600, "ok": True}))
    report = health.report(tmp_path, now=now)
    assert not report["healthy"] and report["serving"]
    text = " | ".join(report["problems"])
    assert "healer: last round failed: boom" in text
    assert "watcher: process 999999999 is dead" in text
    assert "nicwatch: no sign of life" in text
    assert report["loops"]["healer"]["restarts"] == 2 and report["loops"]["healer"]["failures"] == 1
    health.note_state(tmp_path, False, "state file unreadable", None)
    assert any(p.startswith("state:") for p in health.report(tmp_path, now=now)["problems"])


def test_health_without_serve_is_healthy(tmp_path):
    report = health.report(tmp_path)
    assert report["healthy"] and report["loops"] == {} and not report["serving"]


def test_startup_failure_is_a_problem_until_the_healer_succeeds(tmp_path):
    health.note_startup(tmp_path, False, "firewall update failed")
    me = os.getpid()
    hdir = health.health_dir(tmp_path)
    (hdir / "supervisor.json").write_text(json.dumps({"pid": me, "loops": {"healer": {"pid": me}}}))
    (hdir / "healer.json").write_text(json.dumps({"pid": me, "last_run": time.time(), "last_ok": None}))
    assert "reconcile at start failed: firewall update failed" in health.report(tmp_path)["problems"]
    (hdir / "healer.json").write_text(json.dumps({"pid": me, "last_run": time.time(), "last_ok": time.time() + 1}))
    assert health.report(tmp_path)["healthy"]
