"""The firewall backends side by side, without dockerd: what publishing and unpublishing one port costs
as the host fills up, and how many processes each verb starts. The verbs are called in-process (Flask test
client, the Driver ``multinic serve`` runs) in a namespace lab's host that looks like Docker's iptables-nft
(DOCKER-USER, FORWARD policy DROP), once per backend::

    .venv/bin/python scripts/firewall_bench.py                     # 0, 500, 2000 ports; 40 rounds
    .venv/bin/python scripts/firewall_bench.py --fill 0,2000 --rounds 20 --backends nftables
    .venv/bin/python scripts/firewall_bench.py --dual-stack   # the network and its endpoints in IPv6 too

For each backend and each fill K (ports already published, ten per endpoint: a bridge takes at most 1024
ports), it times R rounds of CreateEndpoint, Join publishing one port, Leave and DeleteEndpoint (p50 / p90
in ms, and the firewall's own share: the backend's edit) and counts the processes each verb started
(``subprocess`` calls in its process). Namespaces are named ``nfbn*`` and removed at the end. A
measurement, not a test: on a shared machine the figures are indicative.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.plugin_scale import NID, _eid  # noqa: E402
from tests.lab import Topology  # noqa: E402
from tests.nsutil import in_netns  # noqa: E402

VERBS = ("CreateEndpoint", "Join", "Leave", "DeleteEndpoint")
PER_ENDPOINT = 10
DOCKER_LIKE = ("iptables-nft -N DOCKER && iptables-nft -N DOCKER-USER && iptables-nft -A DOCKER-USER -j RETURN && "
               "iptables-nft -A FORWARD -j DOCKER-USER && iptables-nft -P FORWARD DROP")


def measure(state_dir: str, backend: str, fills: list[int], rounds: int, dual_stack: bool = False) -> dict[str, Any]:
    from plugin.api.http import create_app
    from plugin.kernel import reaper
    from plugin.plan.driver import Driver
    from plugin.plan.state import Store
    from plugin.settings import Settings

    spawned: list[str] = []
    original = subprocess.Popen.__init__

    def counting(self: Any, args: Any, *a: Any, **kw: Any) -> None:
        spawned.append(Path(str(args[0] if isinstance(args, (list, tuple)) else args).split()[0]).name)
        original(self, args, *a, **kw)

    subprocess.Popen.__init__ = counting  # type: ignore[method-assign]
    driver = Driver(Store(state_dir), Settings(firewall=backend), defer_deletes=True)
    client = create_app(driver).test_client()
    in_firewall = [0.0]

    def timed(edit: Any) -> Any:
        def timed_edit(*a: Any, **kw: Any) -> None:  # the firewall's own share of a verb (both families)
            start = time.perf_counter()
            try:
                edit(*a, **kw)
            finally:
                in_firewall[0] += time.perf_counter() - start
        return timed_edit

    object.__setattr__(driver.firewall, "edit", timed(driver.firewall.edit))  # a frozen dataclass

    def iface(v4: str, i: int) -> dict[str, str]:
        return {"Address": v4, **({"AddressIPv6": f"fd00:10::{i + 2:x}/64"} if dual_stack else {})}

    def call(verb: str, body: dict[str, Any]) -> tuple[float, int, float]:
        before, fw = len(spawned), in_firewall[0]
        start = time.perf_counter()
        resp = client.post(f"/NetworkDriver.{verb}", data=json.dumps(body))
        took = (time.perf_counter() - start) * 1000
        if resp.status_code != 200 or json.loads(resp.data).get("Err"):
            raise RuntimeError(f"{verb}: {resp.data!r}")
        return took, len(spawned) - before, (in_firewall[0] - fw) * 1000

    ipv6 = [{"AddressSpace": "", "Pool": "fd00:10::/64", "Gateway": "fd00:10::1/64"}] if dual_stack else []
    call("CreateNetwork", {"NetworkID": NID, "Options": {"com.docker.network.generic": {"parent": "eth1"},
                                                        "com.docker.network.enable_ipv6": dual_stack},
                           "IPv4Data": [{"AddressSpace": "", "Pool": "10.10.0.0/16", "Gateway": "10.10.0.1/16"}],
                           "IPv6Data": ipv6})
    out: dict[str, Any] = {"backend": driver.firewall.name, "dual_stack": dual_stack}
    held = 0
    for fill in fills:
        for i in range(held // PER_ENDPOINT, fill // PER_ENDPOINT):
            ref = {"NetworkID": NID, "EndpointID": _eid("fill", i)}
            call("CreateEndpoint", {**ref, "Interface": iface(f"10.10.{1 + i // 250}.{1 + i % 250}/16", i)})
            ports = [{"Proto": 6, "IP": "", "Port": 80 + k, "HostIP": "", "HostPort": 20000 + i * PER_ENDPOINT + k,
                      "HostPortEnd": 20000 + i * PER_ENDPOINT + k} for k in range(PER_ENDPOINT)]
            call("Join", {**ref, "SandboxKey": "", "Options": {"com.docker.network.portmap": ports}})
        held = max(held, fill)
        times: dict[str, list[float]] = {v: [] for v in VERBS}
        firewall: dict[str, list[float]] = {v: [] for v in VERBS}
        procs: dict[str, list[int]] = {v: [] for v in VERBS}
        for r in range(rounds):
            ref = {"NetworkID": NID, "EndpointID": _eid(f"round{fill}-", r)}
            port = {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 40000, "HostPortEnd": 40000}
            for verb, body in (("CreateEndpoint", {**ref, "Interface": iface("10.10.200.1/16", 0xfff0)}),
                               ("Join", {**ref, "SandboxKey": "", "Options": {"com.docker.network.portmap": [port]}}),
                               ("Leave", ref), ("DeleteEndpoint", ref)):
                took, n, fw = call(verb, body)
                times[verb].append(took)
                firewall[verb].append(fw)
                procs[verb].append(n)
        reaper.wait()
        out[str(fill)] = {verb: {"p50_ms": round(statistics.median(v), 2),
                                 "p90_ms": round(sorted(v)[int(0.9 * (len(v) - 1))], 2),
                                 "firewall_p50_ms": round(statistics.median(firewall[verb]), 2),
                                 "processes": round(statistics.mean(procs[verb]), 2)} for verb, v in times.items()}
        print(f"  {backend}: {fill} ports held done", file=sys.stderr)
    subprocess.Popen.__init__ = original  # type: ignore[method-assign]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fill", default="0,500,2000", help="ports already published, comma-separated")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--backends", default="nftables,iptables-nft")
    parser.add_argument("--dual-stack", action="store_true", help="the network and its endpoints in IPv6 too")
    args = parser.parse_args()
    fills = sorted(int(x) for x in args.fill.split(","))
    results = []
    for n, backend in enumerate(args.backends.split(",")):
        with Topology(f"nfbn{n}", mount=False) as net, tempfile.TemporaryDirectory(prefix="nfbench-") as tmp:
            net.sh(net.host_ns, DOCKER_LIKE)
            results.append(in_netns(net.host_ns, measure, str(Path(tmp) / "state"), backend, fills, args.rounds,
                                   args.dual_stack))
    print(json.dumps({"rounds": args.rounds, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
