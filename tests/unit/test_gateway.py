"""Issue 4, pure: which network gives the default route, and the policy routing that makes it so."""

from __future__ import annotations

import threading
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from plugin.kernel import tags
from plugin.loops import decisions
from plugin.loops import gateways as watcher
from plugin.ops import engine
from plugin.ops.status import gateway_rows
from plugin.plan import gateway
from plugin.plan.desired import MAIN_TABLE, RouteSpec, RuleSpec
from plugin.plan.gateway import (
    RULE_PREF_OVERRIDE,
    RULE_PREF_SOURCE_FIRST,
    RULE_PREF_SUPPRESS,
    TABLE_OVERRIDE,
    TABLE_SOURCE_FIRST,
    Attachment,
    Decision,
    choose,
    container_routing,
    effective_priority,
)
from plugin.plan.state import EndpointRecord, NetworkRecord, State, Store
from plugin.settings import Settings


def att(name: str, octet: int, priority: int = 0, source: str = "default", internal: bool = False,
        gateway: bool = True, driver: str = "multinic") -> Attachment:
    return Attachment(
        network_id=f"id-{name}",
        network_name=name,
        driver=driver,
        endpoint_id=f"ep-{name}",
        priority=priority,
        priority_source=source,
        gateway=IPv4Address(f"10.{octet}.0.1") if gateway else None,
        address=IPv4Interface(f"10.{octet}.0.2/24"),
        internal=internal,
    )


def gw(octet: int) -> IPv4Address:
    return IPv4Address(f"10.{octet}.0.1")


# -- effective_priority -----------------------------------------------------------------------
def test_source_precedence_for_our_networks():
    assert effective_priority(True, 0, None, None) == (0, "default")
    assert effective_priority(True, 0, None, 0, False) == (0, "default")
    assert effective_priority(True, 0, None, 0, True) == (0, "network opt")
    assert effective_priority(True, 0, None, 10) == (10, "network opt")
    assert effective_priority(True, 0, 3, 10) == (3, "endpoint driver-opt")
    assert effective_priority(True, 0, -5, 10) == (-5, "endpoint driver-opt")
    assert effective_priority(True, 0, 0, 10) == (0, "endpoint driver-opt")  # explicit 0 on the endpoint wins
    assert effective_priority(True, 7, 3, 10) == (7, "docker gw-priority")
    assert effective_priority(True, -7, 3, 10) == (-7, "docker gw-priority")
    assert effective_priority(True, None, None, 10) == (10, "network opt")  # 20.10: no GwPriority at all


MN = Settings(socket="/run/docker/plugins/mn.sock")  # driver name "mn"


def test_other_drivers_only_have_dockers_priority():
    assert effective_priority(False, 0, 3, 10) == (0, "default")
    assert effective_priority(False, 5) == (5, "docker gw-priority")
    assert effective_priority(False, "junk") == (0, "default")


# -- choose -----------------------------------------------------------------------------------
def test_single_network_keeps_dockers_route():
    only = att("front", 1, 10, "network opt")
    decision = choose([only], gw(1))
    assert decision == Decision(only, False, decision.reason)
    assert "only network" in decision.reason


def test_higher_priority_overrides_dockers_name_order():
    internal = att("app_stage_internal", 1, 10, "network opt")
    front = att("app_stage", 2, 0)
    # Docker elects app_stage (sorts first); ours has priority 10.
    decision = choose([front, internal], gw(2))
    assert decision.chosen == internal and decision.override
    assert decision.reason == (
        "app_stage_internal (priority 10, network opt) beats app_stage (priority 0, default), Docker's choice"
    )


def test_top_priority_already_dockers_choice_needs_no_override():
    a, b = att("a", 1, 10, "network opt"), att("b", 2, 0)
    decision = choose([a, b], gw(1))
    assert decision.chosen == a and not decision.override
    assert "beats b (priority 0, default)" in decision.reason


@pytest.mark.parametrize("docker_gw", [1, 2, 3])
def test_ties_keep_dockers_choice(docker_gw):
    atts = [att("zeta", 1, 5), att("alpha", 2, 5), att("mid", 3, 5)]
    decision = choose(atts, gw(docker_gw))
    assert not decision.override
    assert decision.chosen.gateway == gw(docker_gw)
    assert "Docker's choice kept" in decision.reason


def test_tie_at_top_not_including_docker_picks_bytewise_smallest_name():
    # Go compares bytes: "Z" (0x5a) < "_" (0x5f) < "a" (0x61); Python's str order agrees for ASCII but a
    # locale/casefold sort would not.
    atts = [att("app", 1, 10), att("Zoo", 2, 10), att("_x", 3, 10), att("low", 4, 0)]
    decision = choose(atts, gw(4))
    assert decision.override and decision.chosen.network_name == "Zoo"
    assert "ties with _x, app; first by name" in decision.reason


def test_bytewise_order_beyond_ascii():
    # U+00E9 encodes as 0xC3 0xA9; U+FF21 as 0xEF 0xBC 0xA1: byte order agrees with code point order,
    # and both sort after every ASCII name.
    atts = [att("\uff21", 1, 3), att("\u00e9", 2, 3), att("z", 3, 3), att("low", 4, 0)]
    assert choose(atts, gw(4)).chosen.network_name == "z"
    assert choose(atts[:2] + atts[3:], gw(4)).chosen.network_name == "\u00e9"


def test_negative_priorities_push_a_network_down():
    a = att("a", 1, -10, "endpoint driver-opt")  # Docker's choice by name
    b = att("b", 2, 0)
    decision = choose([a, b], gw(1))
    assert decision.chosen == b and decision.override
    assert choose([att("a", 1, -10), att("b", 2, -3)], gw(1)).chosen.network_name == "b"
    # all negative and equal: Docker's choice stands
    assert not choose([att("a", 1, -3), att("b", 2, -3)], gw(2)).override


def test_internal_and_gatewayless_networks_are_ignored():
    internal = att("aaa", 1, 100, internal=True)
    nogw = att("bbb", 2, 50, gateway=False)
    normal = att("ccc", 3, 0)
    decision = choose([internal, nogw, normal], gw(3))
    assert decision.chosen == normal and not decision.override
    assert choose([internal, nogw], None) == Decision(None, False, "no non-internal network with an IPv4 gateway")


def test_no_docker_default_route_means_override():
    a, b = att("a", 1), att("b", 2, 1)
    decision = choose([a, b], None)
    assert decision.chosen == b and decision.override and "no default route" in decision.reason
    # a default gateway that is none of ours (docker_gwbridge, say)
    decision = choose([a, b], IPv4Address("172.18.0.1"))
    assert decision.chosen == b and "Docker's default gateway 172.18.0.1" in decision.reason


def test_docker_bridge_network_competes_by_docker_priority():
    bridge = att("aaa-bridge", 9, 0, driver="bridge")
    ours = att("zzz", 1, 1, "network opt")
    assert choose([bridge, ours], gw(9)).chosen == ours
    bridge28 = att("aaa-bridge", 9, 5, "docker gw-priority", driver="bridge")
    assert choose([bridge28, ours], gw(9)) == Decision(bridge28, False, choose([bridge28, ours], gw(9)).reason)


# -- container_routing ------------------------------------------------------------------------
IFNAMES = {IPv4Address("10.1.0.2"): "eth0", IPv4Address("10.2.0.2"): "eth1", IPv4Address("10.3.0.2"): "eth10"}


def test_routing_with_override():
    a, b = att("a", 1, 0), att("b", 2, 10)
    decision = choose([a, b], gw(1))
    routing = container_routing([a, b], decision, IFNAMES)
    default = IPv4Network("0.0.0.0/0")
    assert routing.rules == {
        RuleSpec(priority=RULE_PREF_SUPPRESS, table=MAIN_TABLE, suppress_prefixlen=0),
        RuleSpec(priority=RULE_PREF_SOURCE_FIRST, table=TABLE_SOURCE_FIRST, src=IPv4Network("10.1.0.2/32")),
        RuleSpec(priority=RULE_PREF_SOURCE_FIRST + 1, table=TABLE_SOURCE_FIRST + 1, src=IPv4Network("10.2.0.2/32")),
        RuleSpec(priority=RULE_PREF_OVERRIDE, table=TABLE_OVERRIDE),
    }
    assert routing.routes == {
        RouteSpec(table=TABLE_SOURCE_FIRST, dst=default, dev="eth0", gateway=gw(1)),
        RouteSpec(table=TABLE_SOURCE_FIRST + 1, dst=default, dev="eth1", gateway=gw(2)),
        RouteSpec(table=TABLE_OVERRIDE, dst=default, dev="eth1", gateway=gw(2)),
    }


def test_routing_without_override_has_only_source_routing_and_never_main():
    a, b, c = att("a", 1), att("b", 2), att("c", 3)
    routing = container_routing([c, b, a], choose([a, b, c], gw(1)), IFNAMES)
    assert RuleSpec(priority=RULE_PREF_OVERRIDE, table=TABLE_OVERRIDE) not in routing.rules
    assert {r.table for r in routing.routes} == {TABLE_SOURCE_FIRST, TABLE_SOURCE_FIRST + 1, TABLE_SOURCE_FIRST + 2}
    assert all(r.table != MAIN_TABLE for r in routing.routes)
    # interfaces numbered naturally: eth10 after eth1
    assert RouteSpec(table=TABLE_SOURCE_FIRST + 2, dst=IPv4Network("0.0.0.0/0"), dev="eth10",
                     gateway=gw(3)) in routing.routes


def test_numbers_cannot_clash():
    assert RULE_PREF_SUPPRESS < RULE_PREF_SOURCE_FIRST < RULE_PREF_OVERRIDE < 32766  # before main
    assert RULE_PREF_SOURCE_FIRST + gateway.MAX_SOURCE_ROUTED <= RULE_PREF_OVERRIDE
    assert TABLE_OVERRIDE < TABLE_SOURCE_FIRST
    assert TABLE_SOURCE_FIRST + gateway.MAX_SOURCE_ROUTED < 2**31
    assert not (tags.TABLE_ALLOC_FIRST <= TABLE_OVERRIDE <= tags.TABLE_ALLOC_LAST)
    assert RULE_PREF_SUPPRESS > tags.RULE_PREF_SOURCE


def test_single_gateway_network_gets_source_routing_only():
    """Same routes as Docker's, but an established connection is pinned before a second network arrives."""
    a, internal = att("a", 1), att("b", 2, 10, internal=True)
    routing = container_routing([a, internal], choose([a, internal], gw(1)), IFNAMES)
    assert routing.rules == {
        RuleSpec(priority=RULE_PREF_SUPPRESS, table=MAIN_TABLE, suppress_prefixlen=0),
        RuleSpec(priority=RULE_PREF_SOURCE_FIRST, table=TABLE_SOURCE_FIRST, src=IPv4Network("10.1.0.2/32")),
    }
    assert routing.routes == {RouteSpec(table=TABLE_SOURCE_FIRST, dst=IPv4Network("0.0.0.0/0"), dev="eth0",
                                        gateway=gw(1))}


def test_nothing_without_interfaces_and_no_override_to_a_missing_interface():
    a, b = att("a", 1), att("b", 2, 10)
    assert container_routing([a, b], choose([a, b], gw(1)), {}) == gateway.Routing()
    # b's interface not in the netns (yet): no override towards it
    only_a = {IPv4Address("10.1.0.2"): "eth0"}
    routing = container_routing([a, b], choose([a, b], gw(1)), only_a)
    assert {r.priority for r in routing.rules} == {RULE_PREF_SUPPRESS, RULE_PREF_SOURCE_FIRST}


# -- watcher: attachments from docker inspect ----------------------------------------------------
def _inspect_net(nid, ip, gwip, gw_priority=None, driver_opts=None, endpoint="ep"):
    out = {"NetworkID": nid, "EndpointID": endpoint, "Gateway": gwip, "IPAddress": ip, "IPPrefixLen": 24}
    if gw_priority is not None:
        out["GwPriority"] = gw_priority
    if driver_opts is not None:
        out["DriverOpts"] = driver_opts
    return out


def test_build_attachments_from_inspect_and_state():
    nets = {
        "front": watcher.NetInfo("n1", "front", "mn", False, {"gw_priority": "10"}),
        "back": watcher.NetInfo("n2", "back", "mn", False, {}),
        "bridge": watcher.NetInfo("n3", "bridge", "bridge", False, {}),
        "int": watcher.NetInfo("n4", "int", "bridge", True, {}),
        "fresh": watcher.NetInfo("n5", "fresh", "mn", False, {"gw_priority": "-4"}),
    }
    by_id = {n.id: n for n in nets.values()}
    record = NetworkRecord(id="n1", bridge="b1", subnet="10.1.0.0/24", gateway="10.1.0.1/24", gw_priority=10,
                           options={"gw_priority": "10"})
    record2 = NetworkRecord(id="n2", bridge="b2", subnet="10.2.0.0/24", gateway="10.2.0.1/24")
    ep2 = EndpointRecord(id="e2", network_id="n2", address="10.2.0.2/24", mac="", host_veth="", peer_veth="",
                         gw_priority=20)
    state = State(networks={"n1": record, "n2": record2}, endpoints={"e2": ep2})
    networks = {
        "front": _inspect_net("n1", "10.1.0.2", "10.1.0.1"),
        "back": _inspect_net("n2", "10.2.0.2", "10.2.0.1", endpoint="e2"),
        "bridge": _inspect_net("n3", "172.17.0.2", "172.17.0.1", gw_priority=3),
        "int": _inspect_net("n4", "172.30.0.2", ""),
        "fresh": _inspect_net("n5", "10.5.0.2", "10.5.0.1", driver_opts={"gw_priority": "7"}, endpoint="e5"),
        "gone": _inspect_net("n6", "10.6.0.2", "10.6.0.1"),
    }
    atts = {a.network_name: a for a in watcher.build_attachments(networks, by_id.get, state, "mn")}
    assert set(atts) == {"front", "back", "bridge", "int", "fresh"}
    assert (atts["front"].priority, atts["front"].priority_source) == (10, "network opt")
    assert (atts["back"].priority, atts["back"].priority_source) == (20, "endpoint driver-opt")
    assert (atts["bridge"].priority, atts["bridge"].priority_source) == (3, "docker gw-priority")
    assert atts["int"].internal and atts["int"].gateway is None
    # not in our state yet: endpoint DriverOpts, then the network's Options from inspect
    assert (atts["fresh"].priority, atts["fresh"].priority_source) == (7, "endpoint driver-opt")
    assert atts["front"].address == IPv4Interface("10.1.0.2/24") and atts["front"].gateway == gw(1)
    assert atts["front"].endpoint_id == "ep" and atts["front"].driver == "mn"


# -- watcher: decisions file and a fake dockerd -------------------------------------------------
def test_decisions_file_roundtrip(tmp_path):
    assert decisions.load(tmp_path) == {}
    decisions.write(tmp_path, {"c1": {"container": "web", "chosen": "front", "gateway": "10.1.0.1",
                                              "interface": "eth1", "override": True, "reason": "front beats x"}})
    assert decisions.load(tmp_path)["c1"]["chosen"] == "front"
    rows = gateway_rows(tmp_path)
    assert len(rows) == 1 and "web" in rows[0] and "via 10.1.0.1 dev eth1" in rows[0] and "[override]" in rows[0]
    (tmp_path / "gateways.json").write_text("{not json")
    assert decisions.load(tmp_path) == {}


class FakeAPI:
    def __init__(self, containers, networks):
        self._containers = containers
        self._networks = networks
        self.inspected = []

    def networks(self):
        return list(self._networks.values())

    def inspect_network(self, nid):
        if nid not in self._networks:
            raise engine.NotFound("no such network", 404)
        return self._networks[nid]

    def containers(self, filters=None):
        return [c for c in self._containers.values() if c["State"]["Running"]]

    def inspect_container(self, cid):
        self.inspected.append(cid)
        if cid not in self._containers:
            raise engine.NotFound("no such container", 404)
        return self._containers[cid]


def test_watcher_skips_foreign_containers_and_forgets_dead_ones(tmp_path, monkeypatch):
    nets = {"n1": {"Id": "n1", "Name": "front", "Driver": "mn"}, "n9": {"Id": "n9", "Name": "bridge",
                                                                          "Driver": "bridge"}}
    containers = {
        "c-ours": {"Id": "c-ours", "Name": "/ours", "State": {"Running": True, "Pid": 4242},
                   "NetworkSettings": {"Networks": {"front": _inspect_net("n1", "10.1.0.2", "10.1.0.1")}}},
        "c-other": {"Id": "c-other", "Name": "/other", "State": {"Running": True, "Pid": 4343},
                    "NetworkSettings": {"Networks": {"bridge": _inspect_net("n9", "172.17.0.2", "172.17.0.1")}}},
    }
    api = FakeAPI(containers, nets)
    seen = []

    def fake_route(netns, attachments, expect=None):
        seen.append((netns, [a.network_name for a in attachments]))
        decision = gateway.choose(attachments, gw(1))
        return decision, {"docker_gateway": "10.1.0.1", "ifnames": {"10.1.0.2": "eth0"}, "changed": False}

    monkeypatch.setattr(watcher.Watcher, "route", staticmethod(fake_route))
    w = watcher.Watcher(Store(tmp_path), MN)
    w.resync(api)
    assert seen == [("/proc/4242/ns/net", ["front"])]
    assert "c-other" not in api.inspected  # a container without our networks is never inspected in a resync
    recorded = decisions.load(tmp_path)
    assert recorded["c-ours"]["chosen"] == "front" and recorded["c-ours"]["interface"] == "eth0"
    containers["c-ours"]["State"] = {"Running": False, "Pid": 0}
    w.reconcile_container(api, "c-ours")
    w.flush()
    assert decisions.load(tmp_path) == {}


def test_run_survives_an_unreachable_docker_and_stops(tmp_path, monkeypatch):
    monkeypatch.setattr(watcher, "BACKOFF_FIRST", 0.01)
    calls = []

    def factory():
        calls.append(1)
        raise ConnectionError("dockerd is away")

    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(Store(tmp_path), stop, MN, factory))
    thread.start()
    import time

    time.sleep(0.2)
    stop.set()
    thread.join(5)
    assert not thread.is_alive() and len(calls) >= 2


def test_managed_plugin_networks_are_ours_by_id(tmp_path, monkeypatch):
    """A managed plugin's networks carry "org/multinic:latest" as driver: known by id from the state."""
    store = Store(tmp_path)
    store.save(State(networks={"n1": NetworkRecord(id="n1", bridge="b", subnet="10.1.0.0/24",
                                                   gateway="10.1.0.1/24", gw_priority=3)}))
    nets = {"n1": {"Id": "n1", "Name": "front", "Driver": "org/multinic:latest"}}
    containers = {"c1": {"Id": "c1", "Name": "/web", "State": {"Running": True, "Pid": 77},
                         "NetworkSettings": {"Networks": {"front": _inspect_net("n1", "10.1.0.2", "10.1.0.1")}}}}
    seen = []

    def fake_route(netns, attachments, expect=None):
        seen.append([(a.network_name, a.priority, a.priority_source) for a in attachments])
        return gateway.choose(attachments, gw(1)), {"docker_gateway": None, "ifnames": {}, "changed": True}

    monkeypatch.setattr(watcher.Watcher, "route", staticmethod(fake_route))
    watcher.Watcher(store, Settings()).resync(FakeAPI(containers, nets))
    assert seen == [[("front", 3, "network opt")]]


def test_last_network_disconnected_removes_rules_even_if_never_recorded(tmp_path, monkeypatch):
    nets = {"n9": {"Id": "n9", "Name": "bridge", "Driver": "bridge"}}
    containers = {"c1": {"Id": "c1", "Name": "/web", "State": {"Running": True, "Pid": 77},
                         "NetworkSettings": {"Networks": {"bridge": _inspect_net("n9", "172.17.0.2", "172.17.0.1")},
                                             "SandboxKey": "/nonexistent"}}}
    removed = []
    monkeypatch.setattr(watcher.Watcher, "unroute",
                        staticmethod(lambda netns, expect=None: removed.append((netns, expect)) or True))
    w = watcher.Watcher(Store(tmp_path), MN)
    api = FakeAPI(containers, nets)
    ours = ("n1", MN.driver_name)  # the network event's Actor.ID and Attributes.type
    assert not w.note_event(("c1", 1, "network connect", *ours))  # not known running: no inspect mid-start
    assert w.note_event(("c1", 1, "container start", "", ""))
    w.reconcile_container(api, "c1")
    assert removed == []  # a foreign container is left alone
    assert w.note_event(("c1", 2, "network disconnect", *ours))
    w.reconcile_container(api, "c1")
    assert removed == [("/proc/77/ns/net", "/nonexistent")]


def test_only_containers_with_a_network_of_ours_are_followed(tmp_path):
    """Another container's events cost a set lookup: no inspect, no netns (the watcher's CPU per
    unrelated container start); one with a network of ours is followed, by its driver or by its id."""
    store = Store(tmp_path)
    store.save(State(networks={"n1": NetworkRecord(id="n1", bridge="b", subnet="10.1.0.0/24",
                                                   gateway="10.1.0.1/24")}))
    w = watcher.Watcher(store, MN)
    for what in ("network connect", "container start", "container die"):
        assert not w.note_event(("other", 1, what, "n9" if what.startswith("network") else "", "bridge"))
    assert not w.note_event(("managed", 1, "network connect", "n1", "org/multinic:latest"))  # by id
    assert w.note_event(("managed", 2, "container start", "", ""))
    assert w.note_event(("managed", 3, "network connect", "n9", "bridge"))  # another network: gateway may move
    assert w.note_event(("managed", 4, "container die", "", ""))
    assert not w.note_event(("managed", 5, "container start", "", ""))  # its next start connects again


def test_watcher_thread_stops_when_told(tmp_path):
    """The watcher runs as a thread of the worker hosting the loops: its stop flag ends it promptly, even
    while it waits for a dockerd that is not there."""
    import threading
    import time

    from plugin.loops.supervisor import StopFlag

    stop = StopFlag()
    thread = threading.Thread(target=watcher.loop(Store(tmp_path), MN.replace(
        docker_host=f"unix://{tmp_path}/no-docker.sock")), args=(stop,), daemon=True)
    thread.start()
    time.sleep(0.3)
    assert thread.is_alive()
    t0 = time.monotonic()
    stop.set()
    thread.join(3)
    assert not thread.is_alive() and time.monotonic() - t0 < 3
