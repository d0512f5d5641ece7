"""The plugin's own cost as the host fills up, without dockerd: the remote-driver verbs called
in-process (the WSGI app's test client, the same Driver ``multinic serve`` runs) inside a namespace lab
(a fake host with eth0/eth1, its routers and a client, as the integration tests build it).

It creates one network on eth1, then K endpoints each publishing one port (Join with a port,
timed: the first 10 and the last 10 are reported), then times N rounds of CreateEndpoint, Join,
Leave and DeleteEndpoint without ports (p50 / p99). Run it with K=0 and K=200 to see whether a
verb's cost grows with what is already on the host::

    .venv/bin/python scripts/plugin_scale.py 0 100
    .venv/bin/python scripts/plugin_scale.py 200 100

``leave`` mode: what a Leave that removes a published port costs as the host's published ports grow
from 0 to N (default 2,000): at each step (0, N/8, N/4, N/2, N) it times ``rounds`` Join + Leave pairs of
an endpoint publishing one port (Leave p50 / p99, Join p50; the ports already there belong to endpoints
publishing 10 each), whatever firewall backend is active (its
name is printed: iptables-nft's Leave searches the endpoint's DNAT bucket, 1/32 of the host's ports; a
backend holding ports in a set or map pays one element)::

    .venv/bin/python scripts/plugin_scale.py leave 2000 30

Namespaces are named ``$MULTINIC_SCALE_LAB-*`` (``mnscal``) and removed at the end. A measurement, not a test.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.lab import Topology  # noqa: E402
from tests.nsutil import in_netns  # noqa: E402

NID = "5c" * 32
LAB = os.environ.get("MULTINIC_SCALE_LAB", "mnscal")  # the namespaces' prefix
PORTS_EACH = 10  # leave mode: ports published by each filling endpoint


def _eid(tag: str, i: int) -> str:
    return hashlib.sha256(f"{tag}{i}".encode()).hexdigest()  # random-looking, as dockerd's


def _verbs(state_dir: str) -> tuple[Any, Any]:
    """The Driver ``multinic serve`` runs, its firewall detected once, and ``call(verb, body)`` → ms; the
    network on eth1 made."""
    from plugin.api.http import create_app
    from plugin.plan.driver import Driver
    from plugin.plan.state import Store
    from plugin.settings import Settings

    driver = Driver(Store(state_dir), Settings(), defer_deletes=True)
    assert driver.firewall  # detected once, before measuring
    client = create_app(driver).test_client()

    def call(verb: str, body: dict[str, Any]) -> float:
        start = time.perf_counter()
        resp = client.post(f"/NetworkDriver.{verb}", data=json.dumps(body))
        took = time.perf_counter() - start
        if resp.status_code != 200 or json.loads(resp.data).get("Err"):
            raise RuntimeError(f"{verb}: {resp.data!r}")
        return took * 1000

    call("CreateNetwork", {"NetworkID": NID, "Options": {"com.docker.network.generic": {"parent": "eth1"}},
                           "IPv4Data": [{"AddressSpace": "", "Pool": "10.10.0.0/16", "Gateway": "10.10.0.1/16"}],
                           "IPv6Data": []})
    return driver, call


def _address(i: int) -> dict[str, Any]:
    return {"Address": f"10.10.{1 + i // 250}.{1 + i % 250}/16"}


def _port(host_port: int, count: int = 1) -> dict[str, Any]:
    return {"com.docker.network.portmap": [{"Proto": 6, "IP": "", "Port": 80 + k, "HostIP": "",
                                            "HostPort": host_port + k, "HostPortEnd": host_port + k}
                                           for k in range(count)]}


def measure(state_dir: str, fill: int, rounds: int) -> dict[str, Any]:
    from plugin.kernel import reaper

    _driver, call = _verbs(state_dir)
    joins = []
    for i in range(fill):
        ref = {"NetworkID": NID, "EndpointID": _eid("fill", i)}
        call("CreateEndpoint", {**ref, "Interface": _address(i)})
        joins.append(call("Join", {**ref, "SandboxKey": "", "Options": _port(20000 + i)}))
        if (i + 1) % 50 == 0:
            print(f"  {i + 1}/{fill} endpoints with a published port", file=sys.stderr)
    times: dict[str, list[float]] = {v: [] for v in ("CreateEndpoint", "Join", "Leave", "DeleteEndpoint")}
    for i in range(rounds):
        ref = {"NetworkID": NID, "EndpointID": _eid("round", i)}
        times["CreateEndpoint"].append(call("CreateEndpoint", {**ref, "Interface": {"Address": "10.10.200.1/16"}}))
        times["Join"].append(call("Join", {**ref, "SandboxKey": "", "Options": {}}))
        times["Leave"].append(call("Leave", ref))
        times["DeleteEndpoint"].append(call("DeleteEndpoint", ref))
    reaper.wait()
    out: dict[str, Any] = {}
    for verb, values in times.items():
        ordered = sorted(values)
        out[verb] = {"p50_ms": statistics.median(values), "p99_ms": ordered[int(0.99 * (len(ordered) - 1))]}
    if joins:
        out["join_with_port_first10_ms"] = statistics.median(joins[:10])
        out["join_with_port_last10_ms"] = statistics.median(joins[-10:])
    return out


def leave_cost(state_dir: str, most: int, rounds: int) -> dict[str, Any]:
    """Leave (and Join) of one endpoint with one published port, with 0 … ``most`` ports already published."""
    from plugin.kernel import reaper

    driver, call = _verbs(state_dir)
    steps = sorted({round(n / PORTS_EACH) * PORTS_EACH for n in (0, most / 8, most / 4, most / 2, most)})
    published, rows = 0, []
    for step in steps:
        while published < step:  # 10 ports an endpoint: a Linux bridge takes 1,023 ports at most
            ref = {"NetworkID": NID, "EndpointID": _eid("fill", published)}
            call("CreateEndpoint", {**ref, "Interface": _address(published // PORTS_EACH)})
            call("Join", {**ref, "SandboxKey": "", "Options": _port(20000 + published, PORTS_EACH)})
            published += PORTS_EACH
        joins, leaves = [], []
        for i in range(rounds):
            ref = {"NetworkID": NID, "EndpointID": _eid(f"leave{step}-", i)}
            call("CreateEndpoint", {**ref, "Interface": {"Address": "10.10.250.1/16"}})
            joins.append(call("Join", {**ref, "SandboxKey": "", "Options": _port(30000 + i)}))
            leaves.append(call("Leave", ref))
            call("DeleteEndpoint", ref)
        ordered = sorted(leaves)
        rows.append({"published_ports": step, "leave_p50_ms": statistics.median(leaves),
                     "leave_p99_ms": ordered[int(0.99 * (len(ordered) - 1))], "join_p50_ms": statistics.median(joins)})
        print(f"  {step:5d} ports published: Leave p50 {rows[-1]['leave_p50_ms']:.1f} ms, "
              f"Join p50 {rows[-1]['join_p50_ms']:.1f} ms", file=sys.stderr)
    reaper.wait()
    first, last = rows[0]["leave_p50_ms"], rows[-1]["leave_p50_ms"]
    return {"firewall": driver.firewall.name, "steps": rows, "leave_growth": last / first}


def main() -> int:
    if sys.argv[1:2] == ["leave"]:
        most = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
        rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 30
        with Topology(LAB, mount=False) as net, tempfile.TemporaryDirectory(prefix="mnscale-") as tmp:
            net.sh(net.host_ns, "iptables -P FORWARD DROP")
            result = in_netns(net.host_ns, leave_cost, str(Path(tmp) / "state"), most, rounds)
        print(json.dumps({"rounds": rounds, **result}, indent=1))
        return 0
    fill = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    with Topology(LAB, mount=False) as net, tempfile.TemporaryDirectory(prefix="mnscale-") as tmp:
        net.sh(net.host_ns, "iptables -P FORWARD DROP")
        result = in_netns(net.host_ns, measure, str(Path(tmp) / "state"), fill, rounds)
    print(json.dumps({"endpoints_with_ports": fill, "rounds": rounds, **result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
