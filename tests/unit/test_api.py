"""The HTTP contract dockerd relies on (no kernel: the reconciler is a recorder)."""

import json

import pytest

from plugin.api.http import create_app
from plugin.plan.driver import Driver
from plugin.plan.state import Store
from plugin.settings import Settings

NID = "1" * 64
EID = "2" * 64


@pytest.fixture
def client(tmp_path):
    applied = []
    app = create_app(Driver(Store(tmp_path), Settings(), kernel=lambda after, before: applied.append(after)))
    app.applied = applied
    return app.test_client()


def post(client, path, body=None):
    # dockerd sends no Content-Type, and an empty body for Activate/GetCapabilities.
    resp = client.post(path, data=b"" if body is None else json.dumps(body).encode() + b"\n")
    return resp.status_code, json.loads(resp.data)


def create(client, generic=None, **extra):
    body = {"NetworkID": NID, "Options": {"com.docker.network.generic": generic or {}},
            "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.213.0.0/24", "Gateway": "10.213.0.1/24"}],
            "IPv6Data": []}
    body.update(extra)
    return post(client, "/NetworkDriver.CreateNetwork", body)


def test_handshake_with_empty_bodies(client):
    assert post(client, "/Plugin.Activate") == (200, {"Implements": ["NetworkDriver"]})
    code, caps = post(client, "/NetworkDriver.GetCapabilities")
    assert code == 200 and caps["Scope"] == "local" and caps["ConnectivityScope"] == "local"


def test_gw_alloc_check_keeps_gateways(client):
    assert post(client, "/NetworkDriver.GwAllocCheck", {"Options": {}}) == (200, {"SkipIPv4": False,
                                                                             "SkipIPv6": False})


def test_unknown_ids_are_idempotent(client):
    for verb in ("DeleteNetwork", "DeleteEndpoint", "Leave", "RevokeExternalConnectivity", "EndpointOperInfo",
                 "ProgramExternalConnectivity"):
        code, body = post(client, f"/NetworkDriver.{verb}", {"NetworkID": NID, "EndpointID": EID})
        assert code == 200 and not body.get("Err"), verb


def test_swarm_and_discovery_verbs_answered(client):
    assert post(client, "/NetworkDriver.AllocateNetwork", {"NetworkID": NID})[0] == 200
    assert post(client, "/NetworkDriver.FreeNetwork", {"NetworkID": NID})[0] == 200
    assert post(client, "/NetworkDriver.DiscoverNew", {"DiscoveryType": 1, "DiscoveryData": {}})[0] == 200
    assert post(client, "/NetworkDriver.DiscoverDelete", {"DiscoveryType": 1, "DiscoveryData": {}})[0] == 200


def test_errors_are_json_err(client):
    code, body = create(client, {"bogus": "1"})
    assert code == 400 and "unknown option bogus" in body["Err"]
    code, body = post(client, "/NetworkDriver.Join", {"NetworkID": NID})
    assert code == 400 and "EndpointID" in body["Err"]
    resp = client.post("/NetworkDriver.CreateNetwork", data=b"{not json")
    assert resp.status_code == 400 and "not valid JSON" in json.loads(resp.data)["Err"]
    resp = client.post("/NetworkDriver.Nope", data=b"{}")
    assert resp.status_code == 404 and "Err" in json.loads(resp.data)


def test_refused_create_changes_nothing(client):
    code, body = create(client, IPv6Data=[{"Pool": "fe80::/64", "Gateway": "fe80::1/64"}])
    assert code == 400 and "link-local" in body["Err"] and "--subnet fd00:10::/64" in body["Err"]
    code, body = create(client, IPv6Data=[{"Pool": "fd00::/64", "Gateway": "fd00::1/64"},
                                          {"Pool": "fd01::/64", "Gateway": "fd01::1/64"}])
    assert code == 400 and "exactly one IPv6 subnet" in body["Err"]
    code, body = post(client, "/NetworkDriver.CreateNetwork",
                      {"NetworkID": NID, "IPv4Data": [{"AddressSpace": "null", "Pool": "0.0.0.0/0"}]})
    assert code == 400 and "gateway" in body["Err"]
    assert client.application.applied == []


def test_endpoint_lifecycle_contract(client):
    assert create(client) == (200, {})
    code, body = post(client, "/NetworkDriver.CreateEndpoint",
                      {"NetworkID": NID, "EndpointID": EID,
                       "Interface": {"Address": "10.213.0.2/24", "AddressIPv6": "", "MacAddress": ""},
                       "Options": {"gw_priority": "5"}})
    assert code == 200 and body == {"Interface": {"MacAddress": "02:42:0a:d5:00:02"}}
    code, body = post(client, "/NetworkDriver.Join",
                      {"NetworkID": NID, "EndpointID": EID, "SandboxKey": "/var/run/docker/netns/x", "Options": {}})
    assert code == 200
    assert body["InterfaceName"] == {"SrcName": "mnc" + EID[:12], "DstPrefix": "eth"}
    assert body["Gateway"] == "10.213.0.1"
    assert post(client, "/NetworkDriver.Leave", {"NetworkID": NID, "EndpointID": EID}) == (200, {})
    assert post(client, "/NetworkDriver.DeleteEndpoint", {"NetworkID": NID, "EndpointID": EID}) == (200, {})
    assert post(client, "/NetworkDriver.DeleteNetwork", {"NetworkID": NID}) == (200, {})
    assert client.application.applied[-1].networks == {}


JOIN = {"NetworkID": NID, "EndpointID": EID, "SandboxKey": "", "Options": {}}


def test_dual_stack_endpoint_contract(client):
    """IPv6Data in CreateNetwork, AddressIPv6 in CreateEndpoint, GatewayIPv6 in the Join response."""
    assert create(client, IPv6Data=[{"AddressSpace": "LocalDefault", "Pool": "fd00:213::/64",
                                     "Gateway": "fd00:213::1/64"}],
                  Options={"com.docker.network.enable_ipv6": True, "com.docker.network.generic": {}}) == (200, {})
    code, body = post(client, "/NetworkDriver.CreateEndpoint",
                      {"NetworkID": NID, "EndpointID": EID,
                       "Interface": {"Address": "10.213.0.2/24", "AddressIPv6": "fd00:213::2/64", "MacAddress": ""}})
    assert code == 200
    code, body = post(client, "/NetworkDriver.Join", JOIN)
    assert (code, body["Gateway"], body["GatewayIPv6"]) == (200, "10.213.0.1", "fd00:213::1")
    state = client.application.applied[-1]
    assert state.endpoints[EID].address6 == "fd00:213::2/64" and state.networks[NID].subnet6 == "fd00:213::/64"


def test_ipv6_only_network_contract(client):
    """Engine 28's --ipv4=false: no IPv4Data, enable_ipv4 false; no Gateway, only GatewayIPv6."""
    options = {"com.docker.network.enable_ipv6": True, "com.docker.network.enable_ipv4": False,
               "com.docker.network.generic": {}}
    assert create(client, IPv4Data=[], IPv6Data=[{"Pool": "fd00:214::/64", "Gateway": "fd00:214::1/64"}],
                  Options=options) == (200, {})
    code, body = post(client, "/NetworkDriver.CreateEndpoint",
                      {"NetworkID": NID, "EndpointID": EID,
                       "Interface": {"Address": "", "AddressIPv6": "fd00:214::5/64", "MacAddress": ""}})
    assert (code, body) == (200, {"Interface": {"MacAddress": "02:42:00:00:00:05"}})
    code, body = post(client, "/NetworkDriver.Join", JOIN)
    assert code == 200 and "Gateway" not in body and body["GatewayIPv6"] == "fd00:214::1"


def test_mac_given_by_docker_is_not_echoed(client):
    create(client)
    code, body = post(client, "/NetworkDriver.CreateEndpoint",
                      {"NetworkID": NID, "EndpointID": EID,
                       "Interface": {"Address": "10.213.0.9/24", "MacAddress": "02:42:0a:4d:00:99"}})
    assert (code, body) == (200, {})


def test_endpoint_on_unknown_network_is_refused(client):
    code, body = post(client, "/NetworkDriver.CreateEndpoint",
                      {"NetworkID": NID, "EndpointID": EID, "Interface": {"Address": "10.213.0.2/24"}})
    assert code == 400 and "not known to multinic" in body["Err"]


def test_engine_version_gate():
    from plugin.ops.engine import EngineInfo

    assert EngineInfo("20.10.24+dfsg1", "1.41").supported
    assert EngineInfo("28.5.2", "1.51").supported
    assert not EngineInfo("19.03.15", "1.40").supported
    assert not EngineInfo("garbage", "?").supported
    assert not EngineInfo("20.10.24", "1.40").supported  # the API counts too (doctor's docker check)


def test_garbage_collection_forgets_only_old_records_dockerd_lacks(tmp_path):
    from plugin.plan.state import EndpointRecord, NetworkRecord, State

    applied = []
    store = Store(tmp_path)
    state = State()
    for nid, created in (("gone", 0.0), ("young", 990.0), ("kept", 0.0)):
        state.networks[nid] = NetworkRecord(id=nid, bridge=nid, subnet="10.0.0.0/24", gateway="10.0.0.1/24",
                                            created=created)
    for eid, nid, created in (("ghost", "kept", 0.0), ("live", "kept", 0.0), ("new", "kept", 990.0),
                              ("orphan", "gone", 0.0)):
        state.endpoints[eid] = EndpointRecord(id=eid, network_id=nid, address="10.0.0.2/24", mac="",
                                              host_veth="h", peer_veth="p", created=created)
    store.save(state)
    driver = Driver(store, Settings(), kernel=lambda after, before: applied.append(after))
    forgotten = driver.collect_garbage({"kept": {"live"}}, now=1000.0)
    left = store.load()
    assert set(left.networks) == {"young", "kept"}
    assert set(left.endpoints) == {"live", "new"}
    assert "network gone" in forgotten and "endpoint ghost" in forgotten
    assert applied and applied[-1].endpoints.keys() == {"live", "new"}
    # nothing to forget: no kernel work at all
    applied.clear()
    assert driver.collect_garbage({"kept": {"live", "new"}, "young": set()}, now=1000.0) == []
    assert applied == []


def _wsgi(app, method, path, body=b"", length=None):
    """The app as gunicorn calls it: a WSGI environ and start_response."""
    import io

    seen = {}
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "wsgi.input": io.BytesIO(body),
               "CONTENT_LENGTH": str(len(body)) if length is None else length}
    out = b"".join(app(environ, lambda status, headers: seen.update(status=status, headers=dict(headers))))
    assert seen["headers"]["Content-Length"] == str(len(out))
    return seen["status"], seen["headers"]["Content-Type"], json.loads(out)


def test_wsgi_contract_as_gunicorn_calls_it(client):
    app = client.application
    status, ctype, body = _wsgi(app, "POST", "/Plugin.Activate", length="")  # dockerd: no body at all
    assert (status, ctype, body) == ("200 OK", "application/vnd.docker.plugins.v1.2+json",
                                     {"Implements": ["NetworkDriver"]})
    assert _wsgi(app, "POST", "/NetworkDriver.GetCapabilities")[0] == "200 OK"
    status, _, body = _wsgi(app, "GET", "/NetworkDriver.Join")
    assert status == "405 Method Not Allowed" and body["Err"] == "/NetworkDriver.Join takes POST"
    status, _, body = _wsgi(app, "POST", "/NetworkDriver.Nothing", b"{}")
    assert status == "404 Not Found" and "does not implement /NetworkDriver.Nothing" in body["Err"]
    status, _, body = _wsgi(app, "POST", "/NetworkDriver.Join", b"{}", length=str(2 << 20))
    assert status == "413 Payload Too Large" and "larger than" in body["Err"]
    status, _, body = _wsgi(app, "POST", "/NetworkDriver.Join", b"{}", length="ten")
    assert status == "400 Bad Request" and "Content-Length" in body["Err"]
    status, _, body = _wsgi(app, "POST", "/NetworkDriver.Join", b"[1]")
    assert status == "400 Bad Request" and "must be a JSON object" in body["Err"]


def test_a_network_created_while_serving_is_not_forgotten_as_lost(tmp_path):
    """The healer's first listing of dockerd's networks may race a CreateNetwork (dockerd lists a network
    only after its driver created it): only networks older than ``multinic serve`` are forgotten."""
    import time

    applied = []
    driver = Driver(Store(tmp_path), Settings(), kernel=lambda after, before: applied.append(after))
    serving_since = time.time()
    client = create_app(driver).test_client()
    assert create(client) == (200, {})
    driver.reconcile(set(), created_before=serving_since)  # dockerd's listing did not show it yet
    assert NID in applied[-1].networks
    driver.reconcile(set(), created_before=time.time() + 1)  # one from before the restart, dockerd lost it
    assert applied[-1].networks == {}
