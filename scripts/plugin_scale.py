"""The plugin's own cost as the host fills up, without dockerd: the remote-driver verbs called
in-process (Flask test client, the same Driver ``multinic serve`` runs) inside a namespace lab
(a fake host with eth0/eth1, its routers and a client, as the integration tests build it).

It creates one network on eth1, then K endpoints each publishing one port (Join with a port,
timed: the first 10 and the last 10 are reported), then times N rounds of CreateEndpoint, Join,
Leave and DeleteEndpoint without ports (p50 / p99). Run it with K=0 and K=200 to see whether a
verb's cost grows with what is already on the host::

    .venv/bin/python scripts/plugin_scale.py 0 100
    .venv/bin/python scripts/plugin_scale.py 200 100

Namespaces are named ``mnscale-*`` and removed at the end. A measurement, not a test.
"""

from __future__ import annotations

import hashlib
import json
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


def _eid(tag: str, i: int) -> str:
    return hashlib.sha256(f"{tag}{i}".encode()).hexdigest()  # random-looking, as dockerd's


def measure(state_dir: str, fill: int, rounds: int) -> dict[str, Any]:
    from plugin.api.http import create_app
    from plugin.kernel import reaper
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
    joins = []
    for i in range(fill):
        ref = {"NetworkID": NID, "EndpointID": _eid("fill", i)}
        call("CreateEndpoint", {**ref, "Interface": {"Address": f"10.10.{1 + i // 250}.{1 + i % 250}/16"}})
        port = {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 20000 + i, "HostPortEnd": 20000 + i}
        joins.append(call("Join", {**ref, "SandboxKey": "", "Options": {"com.docker.network.portmap": [port]}}))
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


def main() -> int:
    fill = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    with Topology("mnscal", mount=False) as net, tempfile.TemporaryDirectory(prefix="mnscale-") as tmp:
        net.sh(net.host_ns, "iptables -P FORWARD DROP")
        result = in_netns(net.host_ns, measure, str(Path(tmp) / "state"), fill, rounds)
    print(json.dumps({"endpoints_with_ports": fill, "rounds": rounds, **result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
