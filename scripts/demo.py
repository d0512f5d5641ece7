"""The main job: build the namespace lab, run dockerd and the plugin, show both seed problems
before (Docker's bridge driver) and after (multinic). Everything lives in namespaces it creates."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.helpers import multinic, web_cmd  # noqa: E402
from tests.lab import Lab  # noqa: E402

IMAGE = "mn-busybox:latest"


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def show(label: str, value: object) -> None:
    print(f"   {label:48} {value}", flush=True)


def default_route(lab: Lab, container: str) -> str:
    out = lab.docker("exec", container, "ip", "route", "get", "198.18.0.1", check=False).stdout.strip()
    return out.splitlines()[0] if out else "?"


def wait_route(lab: Lab, container: str, want: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    route = default_route(lab, container)
    while want not in route and time.monotonic() < deadline:
        time.sleep(0.2)
        route = default_route(lab, container)
    return route


def problem_one(lab: Lab) -> bool:
    say("Problem 1: asymmetric replies")
    print("   host: eth0 192.168.100.2 (main default route, router r0), eth1 192.168.101.2 (router r1);")
    print("   client c1 198.51.100.10 reaches the host only through r1; r0 drops what is not its own.")
    lab.docker("network", "create", "--subnet", "10.90.0.0/24", "plain")
    lab.docker("run", "-d", "--name", "before", "--network", "plain", "-p", "4000:80", IMAGE, *web_cmd("hello"))
    time.sleep(1)
    before = lab.http_get(lab.c1_ns, "http://192.168.101.2:4000/", timeout=3)
    show("Docker bridge, c1 -> eth1:4000", "reply" if before else "NO REPLY (reply left by eth0)")
    lab.docker("network", "create", "-d", lab.driver, "--opt", "parent=eth1", "--subnet", "10.91.0.0/24", "front")
    lab.docker("run", "-d", "--name", "after", "--network", "front", "-p", "4001:80", IMAGE, *web_cmd("hello"))
    after = None
    for _ in range(10):
        after = lab.http_get(lab.c1_ns, "http://192.168.101.2:4001/", timeout=3)
        if after:
            break
        time.sleep(0.5)
    show("multinic parent=eth1, c1 -> eth1:4001", f"reply: {after.strip()!r}" if after else "NO REPLY")
    print(multinic(lab, "status", "--socket", lab.plugin_socket).stdout)
    lab.docker("rm", "-f", "before", "after")
    lab.docker("network", "rm", "plain", "front")
    return before is None and after is not None


def problem_two(lab: Lab) -> bool:
    say("Problem 2: gateway by alphabet")
    lab.docker("network", "create", "--subnet", "10.92.0.0/24", "app_stage_internal")
    lab.docker("network", "create", "--subnet", "10.93.0.0/24", "app_stage")
    lab.docker("run", "-d", "--name", "br-app", "--network", "app_stage_internal", IMAGE, "sleep", "3600")
    show("Docker bridges, on app_stage_internal", default_route(lab, "br-app"))
    lab.docker("network", "connect", "app_stage", "br-app")
    moved = default_route(lab, "br-app")
    show("  + connect app_stage (sorts first)", moved)
    lab.docker("network", "create", "-d", lab.driver, "--opt", "gw_priority=10", "--subnet", "10.94.0.0/24",
               "mn_stage_internal")
    lab.docker("network", "create", "-d", lab.driver, "--subnet", "10.95.0.0/24", "mn_stage")
    lab.docker("run", "-d", "--name", "mn-app", "--network", "mn_stage_internal", IMAGE, "sleep", "3600")
    first = wait_route(lab, "mn-app", "10.94.0.1")
    show("multinic, on mn_stage_internal (gw_priority=10)", first)
    lab.docker("network", "connect", "mn_stage", "mn-app")
    time.sleep(1.5)
    kept = wait_route(lab, "mn-app", "10.94.0.1")
    show("  + connect mn_stage (sorts first, priority 0)", kept)
    lab.docker("rm", "-f", "br-app", "mn-app")
    lab.docker("network", "rm", "app_stage_internal", "app_stage", "mn_stage_internal", "mn_stage")
    return "10.93.0.1" in moved and "10.94.0.1" in kept


def main() -> int:
    engine = os.environ.get("MULTINIC_DEMO_ENGINE", "20.10")
    with Lab("mndemo", engine=engine) as lab:
        lab.start_plugin()
        say(f"lab up: dockerd {lab.server_version or engine} in namespace {lab.host_ns}, plugin on "
            f"{lab.plugin_socket}")
        ok1 = problem_one(lab)
        ok2 = problem_two(lab)
    say("result")
    show("asymmetric replies fixed", "yes" if ok1 else "NO")
    show("gateway follows gw_priority, not names", "yes" if ok2 else "NO")
    return 0 if ok1 and ok2 else 1


if __name__ == "__main__":
    sys.exit(main())
