"""Swarm's node-local networks, the pure parts: swarmkit's network ids, the refusal of a swarm network whose
options were lost (no ``--config-from``), which of dockerd's networks are on this node, garbage collection
of a dynamic network, doctor's swarm and ghost checks, and the ``ingress_replies`` option (the routing
mesh's replies by the parent). The swarm itself is tests/e2e/test_swarm.py."""

from __future__ import annotations

import pytest

from plugin.api.messages import parse_create_network, parse_endpoint_ref, parse_network_ref, swarm_scoped
from plugin.api.options import parse_network_options
from plugin.errors import Refusal
from plugin.kernel.firewall.model import MANGLE_PREROUTING
from plugin.kernel.firewall.rules import ruleset_for
from plugin.ops import doctor
from plugin.ops.doctor import ERROR, OK, SKIP, WARN, Facts
from plugin.ops.engine import on_this_node
from plugin.plan.driver import Driver
from plugin.plan.state import EndpointRecord, NetworkRecord, State, Store
from plugin.settings import Settings
from tests.unit.test_api import client, create, post  # noqa: F401 - the fixture and the helpers

SWARM_NID = "mbkxejskfn578xy5itbpbkxpe"  # measured: what a swarm node's dockerd sends
EID = "e" * 64
MANAGED = {"name": "multinic:latest", "id": "f" * 64, "enabled": True}


def test_swarm_network_ids_are_accepted_for_networks_only():
    assert swarm_scoped(SWARM_NID) and not swarm_scoped("a" * 64) and not swarm_scoped(SWARM_NID.upper())
    assert parse_network_ref({"NetworkID": SWARM_NID}).network_id == SWARM_NID
    assert parse_endpoint_ref({"NetworkID": SWARM_NID, "EndpointID": EID}).endpoint_id == EID
    assert parse_create_network({"NetworkID": SWARM_NID}).network_id == SWARM_NID
    with pytest.raises(Refusal, match="EndpointID=.*64 lowercase hex characters, as dockerd sends"):
        parse_endpoint_ref({"NetworkID": SWARM_NID, "EndpointID": SWARM_NID})
    for bad in (SWARM_NID[:-1], SWARM_NID.upper(), SWARM_NID + "0"):
        with pytest.raises(Refusal, match="25 lowercase base-36 ones for a swarm-scoped network"):
            parse_network_ref({"NetworkID": bad})


def test_swarm_network_without_options_is_refused_naming_the_flags(client):  # noqa: F811
    code, body = create(client, NetworkID=SWARM_NID)
    assert code == 400
    assert "--config-from" in body["Err"] and "--config-only" in body["Err"] and SWARM_NID[:12] in body["Err"]
    assert client.application.applied == []  # nothing made: no bridge without a parent
    code, body = create(client, {"masquerade": "true"}, NetworkID=SWARM_NID)  # from a config-only network
    assert code == 200, body
    assert client.application.applied[-1].networks[SWARM_NID].bridge == f"mn-{SWARM_NID[:12]}"
    assert post(client, "/NetworkDriver.DeleteNetwork", {"NetworkID": SWARM_NID}) == (200, {})
    assert create(client) == (200, {})  # a local network without options is a plain bridge, as ever


# What dockerd 20.10 and 28.5 answered (network inspect), trimmed.
CLUSTER_VIEW = {"Id": SWARM_NID, "Scope": "swarm", "Driver": "multinic:latest", "Containers": None,
                "IPAM": {"Driver": "", "Options": None, "Config": []}, "ConfigFrom": {"Network": "mncfg"}}
LOCAL_VIEW = {"Id": SWARM_NID, "Scope": "swarm", "Driver": "multinic:latest", "Containers": {},
              "IPAM": {"Driver": "default", "Config": [{"Subnet": "10.10.0.0/24"}]}, "ConfigFrom": {"Network": "mncfg"}}


def test_a_manager_lists_swarm_networks_that_are_not_on_this_node():
    assert not on_this_node(CLUSTER_VIEW)
    assert on_this_node(LOCAL_VIEW)
    assert on_this_node({"Id": "a" * 64, "Scope": "local", "IPAM": {"Driver": "", "Config": []}})


def test_garbage_collection_treats_a_swarm_network_as_any_other(tmp_path):
    store = Store(tmp_path)
    state = State()
    state.networks[SWARM_NID] = NetworkRecord(id=SWARM_NID, bridge=f"mn-{SWARM_NID[:12]}", subnet="10.10.0.0/24",
                                              gateway="10.10.0.1/24", created=0.0)
    state.endpoints[EID] = EndpointRecord(id=EID, network_id=SWARM_NID, address="10.10.0.2/24", mac="",
                                          host_veth="h", peer_veth="p", created=0.0)
    store.save(state)
    driver = Driver(store, Settings(), kernel=lambda after, before: None)
    assert driver.collect_garbage({SWARM_NID: {EID}}, now=1000.0) == []  # its task runs here
    assert driver.collect_garbage({}, now=1000.0) == [f"network {SWARM_NID[:12]}", f"endpoint {EID[:12]}"]
    assert not store.load().networks and not store.load().endpoints


def ours(view: dict, here: bool, endpoints=()) -> dict:
    return {"name": "front", "driver": "multinic:latest", "scope": "swarm", "here": here,
            "config_from": view["ConfigFrom"]["Network"], "endpoints": list(endpoints)}


def facts(**kw) -> Facts:
    return Facts(socket_path=f"/run/docker/plugins/{'f' * 64}/multinic.sock", plugins=[dict(MANAGED)], **kw)


def test_doctor_swarm_check():
    r = doctor.check_swarm(Facts())
    assert [x.status for x in r] == [SKIP]
    legacy = doctor.check_swarm(Facts(swarm_node="manager"))[0]
    assert legacy.status == WARN and "legacy" in legacy.message and "docker plugin install" in legacy.fix
    lost = {**ours(CLUSTER_VIEW, False), "name": "lost", "config_from": ""}
    r = doctor.check_swarm(facts(swarm_node="manager", docker_networks={SWARM_NID: lost}))[0]
    assert r.status == ERROR and "lost" in r.message and "--config-only" in r.fix and "--config-from" in r.fix
    r = doctor.check_swarm(facts(swarm_node="worker", docker_networks={SWARM_NID: ours(LOCAL_VIEW, True)}))[0]
    assert r.status == OK and "swarm worker" in r.message and "1 made on this node" in r.message


def test_a_swarm_network_not_on_this_node_is_no_ghost():
    record = NetworkRecord(id=SWARM_NID, bridge=f"mn-{SWARM_NID[:12]}", subnet="10.10.0.0/24", gateway="10.10.0.1/24")
    # The manager lists it, no task here: neither dockerd's ghost nor a stale record.
    r = doctor.check_ghosts(facts(swarm_node="manager", docker_networks={SWARM_NID: ours(CLUSTER_VIEW, False)}))
    assert [x.status for x in r] == [OK]
    # Made here, known to the state.
    here = facts(state=State(networks={SWARM_NID: record}), docker_networks={SWARM_NID: ours(LOCAL_VIEW, True)})
    assert [x.status for x in doctor.check_ghosts(here)] == [OK]
    # Its last task left but the state kept it (DeleteNetwork missed): stale, whatever the manager lists.
    stale = facts(state=State(networks={SWARM_NID: record}), docker_networks={SWARM_NID: ours(CLUSTER_VIEW, False)})
    r = doctor.check_ghosts(stale)
    assert [x.status for x in r] == [WARN] and SWARM_NID[:12] in r[0].message


def test_ingress_replies_is_an_option_of_a_parent_bound_network():
    assert parse_network_options({"parent": "eth1", "ingress_replies": "true"}).ingress_replies
    assert not parse_network_options({"parent": "eth1"}).ingress_replies
    with pytest.raises(Refusal, match="ingress_replies needs parent"):
        parse_network_options({"ingress_replies": "yes"})
    with pytest.raises(Refusal, match="ingress_replies='maybe' is not a boolean"):
        parse_network_options({"parent": "eth1", "ingress_replies": "maybe"})


def test_the_mesh_restore_rule_exists_while_a_network_asks_for_it():
    def mangle(**kw) -> tuple:
        record = NetworkRecord(id=SWARM_NID, bridge="mn-x", subnet="10.10.0.0/24", gateway="10.10.0.1/24",
                               parent="eth1", table=20000, mark_slot=1, **kw)
        return ruleset_for(State(networks={SWARM_NID: record}), {}, 4).chains["mangle"][MANGLE_PREROUTING]

    restore = ("-i", "docker_gwbridge", "-j", "CONNMARK", "--restore-mark", "--nfmask", "0xff0000", "--ctmask",
               "0xff0000")
    assert restore in mangle(ingress_replies=True)
    assert restore not in mangle()
    assert restore not in mangle(ingress_replies=True, internal=True)
