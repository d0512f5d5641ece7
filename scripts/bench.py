"""Benchmark multinic against Docker's own bridge driver, in the same lab and the same run.

Reports ratios (multinic / bridge; 1.0 = as fast as Docker's bridge), never absolute pass/fail:
- network create + rm,
- container start with a published port (`docker run -d -p`, until the port answers),
- published-port request rate from a client on eth0's side (both networks publish on eth0).

Usage (root): .venv/bin/python scripts/bench.py [--engine 20.10|28.5] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.helpers import web_cmd  # noqa: E402
from tests.lab import Lab  # noqa: E402

IMAGE = "mn-busybox:latest"
REQUESTS = (
    "import sys,time,urllib.request\n"
    "o=urllib.request.build_opener(urllib.request.ProxyHandler({}))\n"
    "n=int(sys.argv[2]); t=time.monotonic()\n"
    "for _ in range(n): o.open(sys.argv[1], timeout=5).read()\n"
    "print(n/(time.monotonic()-t))\n"
)


def bench_driver(lab: Lab, driver: str, opts: list[str], port: int, rounds: int) -> dict[str, float]:
    creates, starts = [], []
    for i in range(rounds):
        name = f"b{driver[:2]}{i}"
        start = time.monotonic()
        lab.docker("network", "create", "-d", driver, *opts, "--subnet", f"10.{70 + i}.0.0/24", name)
        lab.docker("network", "rm", name)
        creates.append(time.monotonic() - start)
    lab.docker("network", "create", "-d", driver, *opts, "--subnet", "10.99.0.0/24", "benchnet")
    try:
        for i in range(rounds):
            start = time.monotonic()
            lab.docker("run", "-d", "--name", f"bench{i}", "--network", "benchnet", "-p", f"{port}:80", IMAGE,
                       *web_cmd("b"))
            while lab.http_get(lab.c0_ns, f"http://192.168.100.2:{port}/", timeout=1) is None:
                time.sleep(0.05)
            starts.append(time.monotonic() - start)
            if i < rounds - 1:
                lab.docker("rm", "-f", f"bench{i}")
        rate = float(lab.run(lab.c0_ns, sys.executable, "-c", REQUESTS, f"http://192.168.100.2:{port}/",
                             "300").stdout)
        lab.docker("rm", "-f", f"bench{rounds - 1}")
    finally:
        lab.docker("network", "rm", "benchnet", check=False)
    return {"network_create_rm_s": statistics.median(creates), "container_start_s": statistics.median(starts),
            "requests_per_s": rate}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", default="20.10")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with Lab("mnbnch", engine=args.engine, driver="mnbench") as lab:
        lab.start_plugin()
        bridge = bench_driver(lab, "bridge", [], 5000, args.rounds)
        multinic = bench_driver(lab, lab.driver, ["--opt", "parent=eth0"], 5001, args.rounds)
    ratios = {
        "network create+rm time (multinic/bridge)": multinic["network_create_rm_s"] / bridge["network_create_rm_s"],
        "container start time (multinic/bridge)": multinic["container_start_s"] / bridge["container_start_s"],
        "published-port request rate (multinic/bridge)": multinic["requests_per_s"] / bridge["requests_per_s"],
    }
    result = {"engine": args.engine, "rounds": args.rounds, "bridge": bridge, "multinic": multinic,
              "ratios": ratios}
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / f"bench-{args.engine}.json").write_text(json.dumps(result, indent=2))
    print(f"engine {args.engine}, median of {args.rounds} rounds")
    for key in bridge:
        print(f"  {key:22} bridge {bridge[key]:10.3f}   multinic {multinic[key]:10.3f}")
    for key, value in ratios.items():
        print(f"  {key:48} {value:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
