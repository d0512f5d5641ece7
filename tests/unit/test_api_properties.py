"""Property tests of the socket boundary: whatever arrives on any endpoint, the answer is JSON,
never a 5xx, a refusal is an ``{"Err": ...}`` naming a field, and a refusal changes nothing.

The driver is real but its kernel writer is a recorder (``kernel=``, recording each state it is given): a refusal
must leave that list and the state file untouched. Port probing and conntrack flushing, the
two other host side effects of Join/Leave, are replaced so nothing touches this machine.
The kernel-level version of this test (real writer, scratch namespace) is
tests/integration/test_hostile_input.py.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugin.api.http import create_app
from plugin.plan import ports
from plugin.plan.driver import Driver
from plugin.plan.state import Store
from plugin.settings import Settings
from tests.unit.mutations import ALL_PATHS, NID, VALID, json_values, mutated

EXAMPLES = int(os.environ.get("MULTINIC_HYPOTHESIS_EXAMPLES", "120"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def app(monkeypatch):
    monkeypatch.setattr(ports, "allocate", functools.partial(ports.allocate, bindable=lambda *a: True))
    with tempfile.TemporaryDirectory() as tmp:
        applied: list[Any] = []
        flask_app = create_app(Driver(Store(tmp), Settings(), kernel=lambda after, before: applied.append(after)))
        flask_app.applied = applied
        flask_app.state_file = Path(tmp) / "state.json"
        client = flask_app.test_client()
        # A network and an endpoint exist, so mutated Join/Leave/... reach the driver's own checks.
        for verb in ("CreateNetwork", "CreateEndpoint"):
            resp = client.post(f"/NetworkDriver.{verb}", data=json.dumps(VALID[verb]))
            assert resp.status_code == 200, resp.data
        yield flask_app


def snapshot(app) -> tuple[int, bytes]:
    path = app.state_file
    return len(app.applied), path.read_bytes() if path.exists() else b""


def check(app, path: str, data: bytes) -> dict[str, Any]:
    before = snapshot(app)
    resp = app.test_client().post(path, data=data)
    assert resp.status_code < 500, (path, data[:200], resp.data)
    body = json.loads(resp.data)
    assert isinstance(body, dict)
    if resp.status_code == 200:
        assert not body.get("Err"), body
    else:
        assert isinstance(body.get("Err"), str) and body["Err"], body
        assert "internal error" not in body["Err"], body  # the safety net never fired
        assert snapshot(app) == before, f"refused {path} changed state or kernel: {body['Err']}"
    return body


def encoded(value: Any) -> bytes:
    return json.dumps(value).encode()


arbitrary_bodies = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    json_values.map(encoded),
    st.dictionaries(st.sampled_from(["NetworkID", "EndpointID", "Options", "Interface", "IPv4Data",
                                     "IPv6Data", "SandboxKey", "junk"]), json_values, max_size=6).map(encoded),
)


@pytest.mark.parametrize("path", ALL_PATHS)
@SETTINGS
@given(data=arbitrary_bodies)
def test_arbitrary_bodies_never_5xx(app, path, data):
    check(app, path, data)


@pytest.mark.parametrize("verb", sorted(VALID))
@SETTINGS
@given(data=st.data())
def test_mutated_valid_bodies_refused_cleanly(app, verb, data):
    body = data.draw(mutated(VALID[verb]))
    check(app, f"/NetworkDriver.{verb}", encoded(body))


def test_refusals_name_the_field(app):
    join = dict(VALID["Join"])
    cases = {
        "NetworkID": {**join, "NetworkID": "../../etc"},
        "EndpointID": {**join, "EndpointID": 7},
        "SandboxKey": {**join, "SandboxKey": "/var/run/../../x"},
        "com.docker.network.portmap[0].HostPort": {
            **join, "Options": {"com.docker.network.portmap": [{"Proto": 6, "Port": 80, "HostPort": "80"}]}},
        "com.docker.network.portmap[0].Port": {
            **join, "Options": {"com.docker.network.portmap": [{"Proto": 6, "Port": 70000}]}},
        "com.docker.network.portmap must be a list": {**join, "Options": {"com.docker.network.portmap": {}}},
    }
    for field, body in cases.items():
        assert field in check(app, "/NetworkDriver.Join", encoded(body))["Err"]
    create = {**VALID["CreateNetwork"], "IPv4Data": {"Pool": "10.0.0.0/8"}}
    assert "IPv4Data must be a list" in check(app, "/NetworkDriver.CreateNetwork", encoded(create))["Err"]
    create = {**VALID["CreateNetwork"], "NetworkID": NID[:-1] + "g"}
    assert "NetworkID" in check(app, "/NetworkDriver.CreateNetwork", encoded(create))["Err"]


def test_huge_deep_and_odd_bodies(app):
    assert "larger than" in check(app, "/NetworkDriver.Join", b"{" + b" " * (2 << 20) + b"}")["Err"]
    assert "nested too deeply" in check(app, "/NetworkDriver.Join", b"[" * 100000)["Err"]
    assert "not valid JSON" in check(app, "/NetworkDriver.Join", b"\xff\xfe\x00")["Err"]
    assert "JSON object" in check(app, "/NetworkDriver.Join", b"[1, 2]")["Err"]
    assert "JSON object" in check(app, "/NetworkDriver.Join", b"NaN")["Err"]


def test_other_methods_and_paths_are_json(app):
    client = app.test_client()
    for resp in (client.get("/NetworkDriver.Join"), client.put("/Plugin.Activate"),
                 client.post("/NetworkDriver.Nope", data=b"{}"), client.post("/../../etc/passwd")):
        assert 400 <= resp.status_code < 500 and json.loads(resp.data)["Err"]
