"""Prometheus metrics of a real ``multinic serve --metrics-address`` (gunicorn workers, forked healer):
real remote-driver calls over its unix socket move the verb counters, the state gauges follow, and a rule
deleted behind the plugin's back shows up as a healer repair once the healer put it back."""

from __future__ import annotations

import glob
import json
import socket
import time
import urllib.request

from plugin.ops.doctor import gather as hostfacts
from tests.integration.test_doctor import _serve, _stop
from tests.nsutil import in_netns, serve_peer, sh

NID = "b2" * 32
EID = "f2" * 32
PORT = 19327


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


def scrape(t) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) → value, read over HTTP from inside the host namespace."""
    from prometheus_client.parser import text_string_to_metric_families

    text = in_netns(t.host, _scrape, PORT)
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def call(t, sock: str, verb: str, body: dict) -> tuple[int, dict]:
    status, raw = in_netns(t.host, hostfacts.http_over_unix, sock, f"/NetworkDriver.{verb}", json.dumps(body).encode())
    return status, json.loads(raw)


def wait_for(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.3)


def test_scrape_shows_verbs_errors_state_and_healer_repairs(topo, tmp_path):
    sock, state = str(tmp_path / "run" / "mn.sock"), str(tmp_path / "state")
    before = set(glob.glob("/tmp/multinic-metrics-*"))
    proc = _serve(topo, sock, state, "--metrics-address", f"127.0.0.1:{PORT}")
    try:
        m = wait_for(lambda: _try(scrape, topo))
        assert m[("multinic_networks", (("mode", "masquerade"),))] == 0
        assert m[("multinic_firewall_backend_info", (("backend", "nftables"),))] == 1

        pool = {"AddressSpace": "LocalDefault", "Pool": "10.12.0.0/24", "Gateway": "10.12.0.1/24"}
        assert call(topo, sock, "CreateNetwork", {"NetworkID": NID, "IPv4Data": [pool], "IPv6Data": [],
                    "Options": {"com.docker.network.generic": {"parent": "eth1"}}})[0] == 200
        other = {**pool, "Pool": "10.13.0.0/24", "Gateway": "10.13.0.1/24"}
        code, body = call(topo, sock, "CreateNetwork", {"NetworkID": "c3" * 32, "IPv4Data": [other], "IPv6Data": [],
                          "Options": {"com.docker.network.generic": {"parent": "nosuch0"}}})
        assert code == 400 and "parent=nosuch0" in body["Err"]
        assert call(topo, sock, "CreateEndpoint", {"NetworkID": NID, "EndpointID": EID,
                                                    "Interface": {"Address": "10.12.0.2/24"}})[0] == 200
        assert call(topo, sock, "Join", {"NetworkID": NID, "EndpointID": EID, "SandboxKey": "", "Options": {
            "com.docker.network.portmap": [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 4080,
                                            "HostPortEnd": 4080}]}})[0] == 200

        m = scrape(topo)
        assert m[("multinic_verb_duration_seconds_count", (("verb", "CreateNetwork"),))] == 2
        assert m[("multinic_verb_duration_seconds_count", (("verb", "Join"),))] == 1
        assert m[("multinic_verb_errors_total", (("kind", "refused"), ("verb", "CreateNetwork")))] == 1
        assert ("multinic_verb_errors_total", (("kind", "refused"), ("verb", "Join"))) not in m
        assert m[("multinic_networks", (("mode", "masquerade"),))] == 1
        assert m[("multinic_networks_by_family", (("family", "ipv4"),))] == 1
        assert m[("multinic_networks_by_family", (("family", "dual-stack"),))] == 0
        assert m[("multinic_endpoints", ())] == 1
        assert m[("multinic_published_ports", (("proto", "tcp"),))] == 1

        # something deletes our source rule and table route: the healer re-applies and counts them
        sh(topo.host, "ip rule del pref 10002 from 10.12.0.0/24; ip route flush table 20000 proto 211")

        def repaired():
            now = scrape(topo)
            return (now.get(("multinic_healer_repairs_total", (("kind", "rule"),)), 0) >= 1
                    and now.get(("multinic_healer_repairs_total", (("kind", "route"),)), 0) >= 1) and now

        m = wait_for(repaired)
        assert m, "the healer's repairs did not show up in the metrics:\n" + open(f"{state}.log").read()[-9000:]
        assert "from 10.12.0.0/24" in sh(topo.host, "ip rule show pref 10002")
    finally:
        _stop(proc)
    # the private multiprocess directory went with the plugin
    assert set(glob.glob("/tmp/multinic-metrics-*")) <= before


def _try(func, *args):
    """None while the exporter is not listening yet (it starts in its own thread, beside the first verbs)."""
    try:
        return func(*args)
    except OSError:
        return None


def _listens(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_metrics_are_off_by_default_and_a_bad_address_is_refused(topo, tmp_path):
    """A bad address is logged and metrics stay off, but the plugin serves: a plugin that does not come
    up stalls dockerd (and a managed one can make Engine 20.10 panic at its next start)."""
    bad_sock = str(tmp_path / "bad" / "mn.sock")
    bad_state = str(tmp_path / "bad-state")
    bad = _serve(topo, bad_sock, bad_state, "--metrics-address", "nonsense")
    try:
        assert call(topo, bad_sock, "GetCapabilities", {})[0] == 200
    finally:
        _stop(bad)
    log = open(f"{bad_state}.log").read()
    assert "metrics off" in log and "give HOST:PORT" in log, log
    sock, state = str(tmp_path / "run" / "mn.sock"), str(tmp_path / "state")
    before = set(glob.glob("/tmp/multinic-metrics-*"))
    serving = _serve(topo, sock, state)
    try:
        assert call(topo, sock, "GetCapabilities", {})[0] == 200
        assert not in_netns(topo.host, _listens, PORT)
        assert set(glob.glob("/tmp/multinic-metrics-*")) == before
    finally:
        _stop(serving)


def health(t, sock: str) -> dict:
    status, raw = in_netns(t.host, hostfacts.http_over_unix, sock, "/Plugin.Health", b"{}")
    assert status == 200, raw
    return json.loads(raw)


def test_an_exporter_whose_port_is_taken_retries_and_says_so(topo, tmp_path):
    """The metrics address held by another process when ``multinic serve`` starts (or taken later, while
    the loops move to another worker; an address whose interface comes up after the plugin): the plugin
    serves, the exporter's health says it cannot listen and the other loops run; the port free, the
    exporter takes it and is healthy."""
    holder = serve_peer(topo.host, PORT)  # listens on 0.0.0.0:PORT
    sock, state = str(tmp_path / "run" / "mn.sock"), str(tmp_path / "state")
    proc = _serve(topo, sock, state, "--metrics-address", f"127.0.0.1:{PORT}")
    try:
        assert call(topo, sock, "GetCapabilities", {})[0] == 200
        taken = wait_for(lambda: (h := health(topo, sock))["loops"].get("metrics", {}).get("failures") and h)
        assert taken, health(topo, sock)
        assert not taken["healthy"] and taken["loops"]["healer"]["alive"], taken
        assert any(p.startswith(f"metrics: last round failed: cannot listen on 127.0.0.1:{PORT} (Address already "
                                "in use); retrying in") for p in taken["problems"]), taken["problems"]
        holder.kill()
        holder.wait()
        assert wait_for(lambda: _try(scrape, topo)), "the exporter never took its port"
        assert wait_for(lambda: health(topo, sock)["healthy"]), health(topo, sock)
        assert health(topo, sock)["loops"]["healer"]["restarts"] == 0  # the exporter waited, nothing restarted
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        _stop(proc)
