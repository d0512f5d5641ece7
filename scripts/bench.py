"""Benchmark multinic against Docker's own bridge driver, in the same lab and the same run.

Every timed operation runs for both drivers, interleaved round by round (bridge, multinic,
bridge, ...) so machine noise hits both alike; the report is the median of the rounds and the
ratio multinic / bridge (1.0 = as fast as Docker's bridge). Nothing here asserts: this is a
measurement, not a test.

Operations:
- ``run_rm``: ``docker run --rm --network N busybox true``;
- ``run_p``: ``docker run -d -p PORT:80`` until the port answers from the client namespace (c0);
- ``net_create_rm``: ``docker network create`` + ``rm``;
- ``connect_disconnect``: ``docker network connect`` + ``disconnect`` of a running container;
- ``parallel20``: 20 ``run --rm`` at once, until the last one exits;
- ``throughput_MBps``: one TCP stream through a published port: iperf3 if the host has it
  (server in the container's namespace, client in c0), else busybox ``nc`` in the container and
  a Python sender in c0;
- ``requests_per_s``: HTTP requests through a published port, one connection each;
- scale: the k-th container with a published port (kept running) and the k-th network (kept),
  for k = 1..N, written per k to the CSV and plotted;
- ``api_ms``: the plugin's CreateEndpoint / Join / Leave / DeleteEndpoint without ports, called
  on its socket directly (p50 / p99 over many calls), with GetCapabilities as the HTTP floor;
  again after the scale test with its containers still running (``api_*_at_scale``);
- ``spawns``: processes the plugin starts during one ``run --rm`` and one ``run -d -p`` (strace);
- ``footprint``: the plugin's weight beside dockerd's, read from ``/proc/PID/smaps_rollup``: total PSS
  of every process of the plugin (``footprint_pss_MiB``, with the process count) and dockerd's own PSS
  and RSS, at rest and again with the scale test's containers running (``_at_scale``);
- ``cpu``: the plugin's CPU per ``run --rm`` (``/proc/PID/task/*/schedstat``), beyond the verbs: the
  arbiter and the loops' threads in the worker hosting them (named ``mn-*``, with the processes they
  ran) over the 1.5 s after a start on a multinic network (``cpu_background_ms``: the gateway
  watcher's follow-ups are in that window), and every process of the plugin after a start on Docker's
  bridge (``cpu_unrelated_ms``: none of its business); each minus the same window idle;
- ``startup``: from ``multinic serve`` to the socket answering ``GetCapabilities`` (``startup_s``),
  with dockerd running and the plugin's networks in place;
- ``swarm_scale``: on a swarm of three nodes (tests/lab/swarm.py, the managed plugin installed from its
  registry), a dnsrr service scaled from 0 to 12 tasks, on a multinic swarm network and on an overlay
  network, interleaved: the time until every task answers HTTP from its node (a global probe service on
  the same network, one task per node), ratio multinic / overlay.
- ``ipv6``: the same through dual-stack networks (``--ipv6``; both drivers): ``run_rm6``, ``run_p6``
  (``run -d -p`` until the port answers on the host's IPv6 address), ``requests6_per_s`` and
  ``throughput6_MBps`` on the host's IPv6 address (from c0), and
  ``dual_stack_run_rm`` in the JSON: each driver's dual-stack ``run --rm`` over its IPv4-only one, timed
  interleaved (``run_rm4_beside6``). Engine
  20.10's bridge publishes IPv6 through docker-proxy (no ip6tables), 28.5's through DNAT.

Usage (root)::

    .venv/bin/python scripts/bench.py --engine 20.10 [--rounds 7] [--quick] [--lab b13 --driver mn13b]

The lab name and driver default to ``$MULTINIC_BENCH_LAB`` / ``$MULTINIC_BENCH_DRIVER`` (else
``mnbnch`` / ``mnbench``), the swarm's prefix to ``$MULTINIC_BENCH_SWARM`` (else ``bsw``, nodes
``bsw201``...), so parallel labs never collide. Results go to ``--out``
(``bench-results/``): ``bench-<engine>.csv`` (every sample), ``bench-<engine>.json`` (medians and
ratios) and ``bench-<engine>.png`` (cost against the number of containers and of networks,
both drivers; needs the ``bench`` extra: ``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.helpers import web_cmd  # noqa: E402
from tests.lab import HOST6_ETH0, HOST_ETH0, IMAGE, REPO_ROOT, Lab, LabError, lab_tool, tool_env  # noqa: E402
from tests.lab.swarm import Swarm  # noqa: E402
from tests.lab.topology import clean_env as _clean_env  # noqa: E402

REQUESTS = (
    "import sys,time,urllib.request\n"
    "o=urllib.request.build_opener(urllib.request.ProxyHandler({}))\n"
    "n=int(sys.argv[2]); t=time.monotonic()\n"
    "for _ in range(n): o.open(sys.argv[1], timeout=5).read()\n"
    "print(n/(time.monotonic()-t))\n"
)
SENDER = (
    "import socket,sys,time\n"
    "n=int(sys.argv[3])*1024*1024; buf=b'x'*65536; s=socket.create_connection((sys.argv[1],int(sys.argv[2])),5)\n"
    "t=time.monotonic(); left=n\n"
    "while left>0: left-=s.send(buf[:min(left,len(buf))])\n"
    "s.shutdown(socket.SHUT_WR); s.settimeout(10)\n"
    "try:\n  s.recv(1)\nexcept OSError:\n  pass\n"
    "print(n/(time.monotonic()-t)/1e6)\n"
)
# "until it answers": one watcher, started before the command, tries the port every 5 ms from the
# command's start (as a load balancer's health check would) and prints the monotonic time of the first HTTP
# answer; a probe process per try would cost 50 ms of CPU each, beside the very start it measures, and
# miss the moment by up to a probe's length. A SYN the kernel holds while the container's address
# resolves is tried again after 0.1 s.
ANSWER_WATCH = (
    "import socket,sys,time\n"
    "host,port=sys.argv[1],int(sys.argv[2]); deadline=time.monotonic()+float(sys.argv[3])\n"
    "family=socket.AF_INET6 if ':' in host else socket.AF_INET\n"
    "print('ready',flush=True)\n"
    "while time.monotonic()<deadline:\n"
    "  try:\n"
    "    with socket.socket(family,socket.SOCK_STREAM) as s:\n"
    "      s.settimeout(0.1); s.connect((host,port)); s.settimeout(2); s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n"
    "      if s.recv(16).startswith(b'HTTP/'):\n"
    "        print(time.monotonic(),flush=True); sys.exit(0)\n"
    "  except OSError:\n"
    "    pass\n"
    "  time.sleep(0.005)\n"
    "sys.exit(1)\n"
)
DRIVERS = ("bridge", "multinic")
SWARM_DRIVERS = ("overlay", "multinic")  # the swarm's own multi-host network is the reference there
LAB_OPS = ("run_rm", "run_p", "net_create_rm", "connect_disconnect", "parallel", "requests", "throughput", "ipv6",
           "api", "spawns", "footprint", "cpu", "startup", "scale_networks", "scale_containers")
SWARM_TASKS = 12


class Bench:
    def __init__(self, lab: Lab, args: argparse.Namespace) -> None:
        self.lab = lab
        self.args = args
        self.samples: list[dict[str, Any]] = []
        self.opts = {"bridge": ("-d", "bridge"), "multinic": ("-d", lab.driver, "--opt", "parent=eth0")}
        self.t0 = time.monotonic()

    # -- plumbing -------------------------------------------------------------------------
    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {text}", file=sys.stderr, flush=True)

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.lab.docker(*args, check=check, timeout=180)

    def record(self, driver: str, op: str, x: int, value: float, unit: str = "s") -> None:
        self.samples.append({"engine": self.lab.engine, "driver": driver, "operation": op, "x": x,
                             "value": value, "unit": unit})

    def timed(self, func: Callable[[], Any]) -> float:
        start = time.monotonic()
        func()
        return time.monotonic() - start

    def wait_port(self, port: int, limit: float = 60, address: str = HOST_ETH0) -> None:
        deadline = time.monotonic() + limit
        where = f"[{address}]" if ":" in address else address
        while self.lab.http_get(self.lab.c0_ns, f"http://{where}:{port}/", timeout=1) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"port {port} did not answer in {limit}s")
            time.sleep(0.02)

    def until_answers(self, port: int, action: Callable[[], Any], limit: float = 60,
                      address: str = HOST_ETH0) -> float:
        """Seconds from the start of ``action`` until ``port`` answers HTTP from the client namespace."""
        watch = subprocess.Popen([*self.lab.nsenter(self.lab.c0_ns), sys.executable, "-c", ANSWER_WATCH, address,
                                  str(port), str(limit)], stdout=subprocess.PIPE, text=True, env=_clean_env(None))
        try:
            assert watch.stdout is not None
            if watch.stdout.readline().strip() != "ready":
                raise RuntimeError("the answer watcher did not start")
            start = time.monotonic()
            action()
            answered = watch.stdout.readline().strip()
            if watch.wait(timeout=limit + 10) != 0 or not answered:
                raise RuntimeError(f"port {port} did not answer in {limit}s")
            return float(answered) - start
        finally:
            if watch.poll() is None:
                watch.kill()
                watch.wait()

    def network(self, driver: str, name: str, subnet: str) -> None:
        self.docker("network", "create", *self.opts[driver], "--subnet", subnet, name)

    def rounds(self, op: str, body: Callable[[str, int], float | None], rounds: int | None = None,
               drivers: tuple[str, ...] = DRIVERS) -> None:
        n = rounds or self.args.rounds
        for i in range(n):
            for driver in drivers:
                value = body(driver, i)
                if value is not None:
                    self.record(driver, op, i, value)
            last = {d: [s["value"] for s in self.samples if s["operation"] == op and s["driver"] == d][-1:]
                    for d in drivers}
            self.say(f"{op} round {i + 1}/{n}: " + "  ".join(f"{d} {v[0]:.3f}" for d, v in last.items() if v))

    # -- operations -----------------------------------------------------------------------
    def run_all(self) -> None:
        for driver in DRIVERS:
            self.network(driver, f"bn-{driver}", {"bridge": "10.150.0.0/24", "multinic": "10.151.0.0/24"}[driver])
        self.network("bridge", "bn-home", "10.152.0.0/24")
        ops = (self.op_run_rm, self.op_run_p, self.op_net_create_rm, self.op_connect_disconnect, self.op_parallel,
               self.op_requests, self.op_throughput, self.op_ipv6, self.op_api, self.op_spawns, self.op_footprint,
               self.op_cpu, self.op_startup, self.op_scale_networks, self.op_scale_containers)
        try:
            for op in ops:
                if not self.args.only or op.__name__[3:] in self.args.only:
                    op()
        finally:
            self.docker("rm", "-f", "bhome", check=False)
            for name in ("bn-bridge", "bn-multinic", "bn-home"):
                self.docker("network", "rm", name, check=False)

    def op_run_rm(self) -> None:
        self.rounds("run_rm", lambda d, i: self.timed(
            lambda: self.docker("run", "--rm", "--network", f"bn-{d}", IMAGE, "true")))

    def op_run_p(self, op: str = "run_p", net: str = "bn", address: str = HOST_ETH0, first_port: int = 5100) -> None:
        """``docker run -d -p`` until the port answers a client over ``address``."""
        def body(driver: str, i: int) -> float:
            port = first_port + 2 * i + DRIVERS.index(driver)
            name = f"brp-{driver}"

            took = self.until_answers(port, lambda: self.docker(
                "run", "-d", "--name", name, "--network", f"{net}-{driver}", "-p", f"{port}:80", IMAGE,
                *web_cmd("x")), address=address)
            self.docker("rm", "-f", name)
            return took
        self.rounds(op, body)

    def op_net_create_rm(self) -> None:
        def body(driver: str, i: int) -> float:
            subnet = f"10.{153 + DRIVERS.index(driver)}.{i}.0/24"
            return self.timed(lambda: (self.network(driver, f"bc-{driver}", subnet),
                                       self.docker("network", "rm", f"bc-{driver}")))
        self.rounds("net_create_rm", body)

    def op_connect_disconnect(self) -> None:
        self.docker("run", "-d", "--name", "bhome", "--network", "bn-home", IMAGE, "sleep", "100000")

        def body(driver: str, i: int) -> float:
            return self.timed(lambda: (self.docker("network", "connect", f"bn-{driver}", "bhome"),
                                       self.docker("network", "disconnect", f"bn-{driver}", "bhome")))
        self.rounds("connect_disconnect", body)

    def op_parallel(self) -> None:
        def body(driver: str, i: int) -> float:
            env = _clean_env({"DOCKER_HOST": self.lab.docker_host, "DOCKER_CONFIG": str(self.lab.dir / "cli")})
            start = time.monotonic()
            procs = [subprocess.Popen([self.lab.docker_bin, "run", "--rm", "--network", f"bn-{driver}", IMAGE,
                                       "true"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                     for _ in range(20)]
            failed = [p for p in procs if p.wait() != 0]
            took = time.monotonic() - start
            if failed:
                self.say(f"parallel20 {driver}: {len(failed)} failed: {failed[0].stderr.read().decode()[:200]}")
            return took
        self.rounds("parallel20", body, rounds=max(3, self.args.rounds // 2) if self.args.quick else None)

    def _published(self, driver: str, port: int, cmd: list[str], name: str, net: str = "bn") -> None:
        self.docker("run", "-d", "--name", name, "--network", f"{net}-{driver}", "-p", f"{port}:{port}", IMAGE, *cmd)

    def op_requests(self, op: str = "requests_per_s", net: str = "bn", address: str = HOST_ETH0) -> None:
        count = 100 if self.args.quick else 300
        base = 5300 if net == "bn" else 5350
        for driver in DRIVERS:
            self._published(driver, base + DRIVERS.index(driver), web_cmd("r", base + DRIVERS.index(driver)),
                            f"brq-{driver}", net)
        where = f"[{address}]" if ":" in address else address
        try:
            def body(driver: str, i: int) -> float:
                port = base + DRIVERS.index(driver)
                self.wait_port(port, address=address)
                out = self.lab.run(self.lab.c0_ns, sys.executable, "-c", REQUESTS, f"http://{where}:{port}/",
                                   str(count), timeout=120).stdout
                return float(out)
            self.rounds(op, body)
        finally:
            for driver in DRIVERS:
                self.docker("rm", "-f", f"brq-{driver}", check=False)

    def op_ipv6(self) -> None:
        """Dual-stack networks of both drivers. multinic's is made first: it sets accept_ra=2 before it
        turns IPv6 forwarding on; Docker's bridge turns it on without (the lab's host would lose the
        router-advertised default route that multinic's IPv6 next hop comes from)."""
        for driver, n in (("multinic", 157), ("bridge", 156)):
            self.docker("network", "create", *self.opts[driver], "--ipv6", "--subnet", f"10.{n}.0.0/24",
                        "--subnet", f"fd00:{n}::/64", f"bn6-{driver}")
        try:
            def run_rm_both(d: str, i: int) -> float:
                # IPv4-only interleaved with dual stack, so that their ratio is taken under the same load
                self.record(d, "run_rm4_beside6", i, self.timed(
                    lambda: self.docker("run", "--rm", "--network", f"bn-{d}", IMAGE, "true")))
                return self.timed(lambda: self.docker("run", "--rm", "--network", f"bn6-{d}", IMAGE, "true"))

            self.rounds("run_rm6", run_rm_both)
            self.op_run_p("run_p6", "bn6", HOST6_ETH0, 5300)
            self.op_requests("requests6_per_s", "bn6", HOST6_ETH0)
            iperf3 = self._iperf3()
            if iperf3:
                self._throughput_iperf3(iperf3, "throughput6_MBps", "bn6", HOST6_ETH0)
        finally:
            for driver in DRIVERS:
                self.docker("network", "rm", f"bn6-{driver}", check=False)

    @staticmethod
    def _iperf3() -> str | None:
        try:
            return lab_tool("iperf3")
        except LabError:
            return None

    def op_throughput(self) -> None:
        iperf3 = self._iperf3()
        if iperf3:
            return self._throughput_iperf3(iperf3)
        megabytes = 100 if self.args.quick else 400
        for driver in DRIVERS:
            port = 5400 + DRIVERS.index(driver)
            self._published(driver, port, ["sh", "-c", f"while true; do nc -l -p {port} > /dev/null; done"],
                            f"bth-{driver}")
        time.sleep(1)
        try:
            def body(driver: str, i: int) -> float:
                port = 5400 + DRIVERS.index(driver)
                out = self.lab.run(self.lab.c0_ns, sys.executable, "-c", SENDER, HOST_ETH0, str(port),
                                   str(megabytes), timeout=120).stdout
                time.sleep(0.3)  # nc restarts
                return float(out)
            self.rounds("throughput_MBps", body)
        finally:
            for driver in DRIVERS:
                self.docker("rm", "-f", f"bth-{driver}", check=False)

    def _throughput_iperf3(self, iperf3: str, op: str = "throughput_MBps", net: str = "bn",
                           address: str = HOST_ETH0) -> None:
        """iperf3 (Debian's): the server runs in the container's network namespace (the busybox
        image has no iperf3), the client in c0, through the published port: one TCP stream."""
        seconds = "2" if self.args.quick else "5"
        servers: list[subprocess.Popen[bytes]] = []
        for driver in DRIVERS:
            port = 5400 + DRIVERS.index(driver)
            self._published(driver, port, ["sleep", "3600"], f"bth-{driver}", net)
            pid = self.docker("inspect", "-f", "{{.State.Pid}}", f"bth-{driver}").stdout.strip()
            servers.append(subprocess.Popen(["nsenter", "-t", pid, "-n", iperf3, "-s", "-p", str(port)],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=tool_env()))
        time.sleep(1)
        try:
            def body(driver: str, i: int) -> float:
                port = 5400 + DRIVERS.index(driver)
                out = self.lab.run(self.lab.c0_ns, iperf3, "-c", address, "-p", str(port), "-t", seconds, "-J",
                                   timeout=120, env={"LD_LIBRARY_PATH": tool_env()["LD_LIBRARY_PATH"]}).stdout
                return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 8e6
            self.rounds(op, body)
        finally:
            for proc in servers:
                proc.terminate()
                proc.wait(10)
            for driver in DRIVERS:
                self.docker("rm", "-f", f"bth-{driver}", check=False)

    # -- plugin API latency, on its socket ---------------------------------------------------
    def _call(self, verb: str, body: dict[str, Any]) -> float:
        conn = _UnixHTTP(str(self.lab.plugin_socket_host))
        start = time.monotonic()
        conn.request("POST", f"/NetworkDriver.{verb}", json.dumps(body))
        resp = json.loads(conn.getresponse().read() or b"{}")
        took = time.monotonic() - start
        conn.close()
        if resp.get("Err"):
            raise RuntimeError(f"{verb}: {resp['Err']}")
        return took

    def op_api(self, suffix: str = "") -> None:
        """``suffix``: "_at_scale" when run with the scale test's containers still running."""
        nid = self.docker("network", "inspect", "-f", "{{.Id}}", "bn-multinic").stdout.strip()
        calls = 30 if self.args.quick else 100
        times: dict[str, list[float]] = {
            v: [] for v in ("GetCapabilities", "CreateEndpoint", "Join", "Leave", "DeleteEndpoint")
        }
        for i in range(calls):
            times["GetCapabilities"].append(self._call("GetCapabilities", {}))  # the HTTP round trip alone
            eid = hashlib.sha256(f"bench-api-{i}".encode()).hexdigest()  # random-looking, as dockerd's
            ref = {"NetworkID": nid, "EndpointID": eid}
            times["CreateEndpoint"].append(self._call("CreateEndpoint", {
                **ref, "Interface": {"Address": f"10.151.0.{200 + i % 50}/24", "AddressIPv6": "", "MacAddress": ""},
                "Options": {}}))
            times["Join"].append(self._call("Join", {**ref, "SandboxKey": "", "Options": {}}))
            times["Leave"].append(self._call("Leave", ref))
            times["DeleteEndpoint"].append(self._call("DeleteEndpoint", ref))
        for verb, values in times.items():
            for k, v in enumerate(values):
                self.record("multinic", f"api_{verb}{suffix}", k, v * 1000, "ms")
            self.say(f"api{suffix} {verb}: p50 {_pct(values, 50) * 1000:.1f} ms  p99 {_pct(values, 99) * 1000:.1f} ms")

    # -- process spawns -------------------------------------------------------------------------
    def op_spawns(self) -> None:
        """Processes the plugin starts during one ``run --rm`` (with and without ``-p``), split into
        the request path (gunicorn) and the background loops (the healer's firewall check, woken
        by nf_tables events that Docker's own rules also cause). strace follows forks, so each
        exec is attributed to the plugin process it descends from."""
        if not shutil.which("strace") or self.lab.plugin_pid is None:
            self.say("spawns: no strace (or plugin not started by the lab); skipped")
            return
        time.sleep(3)  # the healer's firewall check woken by the set-up's networks (at most every 2 s) is over
        pgid = self.lab.plugin_pid
        pids = [p for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == pgid]
        conn = _UnixHTTP(str(self.lab.plugin_socket_host))
        conn.request("POST", "/Plugin.Health", "{}")
        loops = json.loads(conn.getresponse().read() or b"{}").get("loops", {})
        conn.close()
        background = {tid for info in loops.values() if info.get("pid")  # the loops: threads of a worker
                      for tid in _loop_threads(int(info["pid"]))}
        for op, cmd in (("spawns_run_rm", ["run", "--rm", "--network", "bn-multinic", IMAGE, "true"]),
                        ("spawns_run_p", ["run", "--rm", "--network", "bn-multinic", "-p", "5500:80", IMAGE,
                                          "true"])):
            with tempfile.NamedTemporaryFile(prefix="mn-strace-", suffix=".txt") as out:
                tracer = subprocess.Popen(["strace", "-f", "-qq", "-e", "trace=execve,clone,clone3,fork,vfork",
                                           "-o", out.name, *[a for p in pids for a in ("-p", p)]],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)
                self.docker(*cmd)
                time.sleep(0.5)
                tracer.terminate()
                tracer.wait(10)
                lines = Path(out.name).read_text().splitlines()
            if os.environ.get("MULTINIC_BENCH_DEBUG"):
                print("\n".join(lines[:40]), file=sys.stderr)
            parent: dict[int, int] = {}
            execs: list[tuple[int, str]] = []
            pending: dict[int, str] = {}  # pid → program of an execve strace split ("<unfinished ...>")
            forked: list[int] = []  # processes (not threads) started: a fork without exec is one too
            threading_call: dict[int, bool] = {}  # pid → its unfinished clone makes a thread
            for ln in lines:
                pid_s, _, rest = ln.partition(" ")
                rest = rest.lstrip()
                if not pid_s.isdigit():
                    continue
                pid = int(pid_s)
                result = rest.rsplit("= ", 1)[1].split()[0] if "= " in rest else ""
                if rest.startswith(("clone", "fork", "vfork", "<... clone", "<... fork", "<... vfork")):
                    thread = "CLONE_THREAD" in rest or (rest.startswith("<...") and threading_call.pop(pid, False))
                    if rest.endswith("<unfinished ...>"):
                        threading_call[pid] = "CLONE_THREAD" in rest
                    if result.isdigit():
                        parent[int(result)] = pid
                        if not thread:
                            forked.append(int(result))
                elif rest.startswith("execve("):
                    prog = rest.split('execve("', 1)[1].split('"', 1)[0]
                    if rest.endswith("<unfinished ...>"):
                        pending[pid] = prog
                    elif result == "0":
                        execs.append((pid, prog))
                elif rest.startswith("<... execve resumed>") and result == "0" and pid in pending:
                    execs.append((pid, pending.pop(pid)))

            def from_loop(pid: int, parent: dict[int, int] = parent) -> bool:
                seen = 0
                while pid not in background and pid in parent and seen < 64:
                    pid, seen = parent[pid], seen + 1
                return pid in background

            ran = {pid for pid, _ in execs}
            execs += [(pid, "fork (no exec)") for pid in forked if pid not in ran]
            request = sorted(prog for pid, prog in execs if not from_loop(pid))
            loop = sorted(prog for pid, prog in execs if from_loop(pid))
            self.record("multinic", op, 0, len(request), "spawns")
            self.record("multinic", op + "_background", 0, len(loop), "spawns")
            self.say(f"{op}: request path {len(request)} spawn(s) {', '.join(sorted(set(request)))}; "
                     f"background loops {len(loop)} {', '.join(sorted(set(loop)))}")

    # -- footprint, CPU, start-up -------------------------------------------------------------------
    def plugin_pids(self) -> dict[str, list[int]]:
        """The plugin's processes: ``workers`` (gunicorn's; one of them hosts the loops as threads) and
        ``background`` (the arbiter), from the lab's process group and the supervisor's record."""
        pgid = self.lab.plugin_pid
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and pgid and _pgid(int(p)) == pgid]
        record = _read_json(self.lab.state_dir / "health" / "supervisor.json")
        return {"workers": [p for p in pids if p != record.get("pid") and _comm(p) != "nsenter"],
                "background": [p for p in pids if p == record.get("pid")]}

    def op_footprint(self, suffix: str = "") -> None:
        time.sleep(5)  # at rest: the last verb's and the watcher's follow-ups are over
        pids = [p for group in self.plugin_pids().values() for p in group]
        pss = sum(_smaps(p).get("Pss", 0) for p in pids) / 1024
        self.record("multinic", f"footprint_pss_MiB{suffix}", len(pids), pss, "MiB")
        self.record("multinic", f"footprint_processes{suffix}", 0, len(pids), "processes")
        dockerd = self.lab.dockerd_pid
        rollup = _smaps(dockerd) if dockerd else {}
        self.record("multinic", f"dockerd_pss_MiB{suffix}", 0, rollup.get("Pss", 0) / 1024, "MiB")
        self.record("multinic", f"dockerd_rss_MiB{suffix}", 0, rollup.get("Rss", 0) / 1024, "MiB")
        self.say(f"footprint{suffix}: plugin {len(pids)} processes, PSS {pss:.1f} MiB; dockerd PSS "
                 f"{rollup.get('Pss', 0) / 1024:.1f} MiB, RSS {rollup.get('Rss', 0) / 1024:.1f} MiB")
        for pid in pids:  # where each process's PSS lies: the heap, the interpreter, each library
            by_mapping = _pss_by_mapping(pid)
            top = sorted(by_mapping.items(), key=lambda kv: -kv[1])[:6]
            self.say(f"  pid {pid} ({_cmdline(pid)}): PSS {sum(by_mapping.values()) / 1024:.1f} MiB: "
                     + ", ".join(f"{name} {kb / 1024:.1f}" for name, kb in top))

    def op_cpu(self) -> None:
        window = 1.5

        def ticks(pids: dict[str, list[int]], which: str) -> float:
            """CPU so far of the arbiter and the loops' threads (and what they ran), or of everything."""
            if which == "all":
                return sum(_cpu_seconds(p) for group in pids.values() for p in group) * 1000
            return (sum(_cpu_seconds(p) for p in pids["background"])
                    + sum(_cpu_seconds(p, _loop_threads(p)) for p in pids["workers"] if _loop_threads(p))) * 1000
        starts = 5  # per window: the kernel counts reaped children's CPU in 10 ms ticks

        def measure(driver: str, which: str) -> tuple[float, float]:
            pids = self.plugin_pids()
            before = ticks(pids, which)
            time.sleep(window)
            idle = ticks(pids, which) - before
            before = ticks(pids, which)
            start = time.monotonic()
            for _ in range(starts):
                self.docker("run", "--rm", "--network", f"bn-{driver}", IMAGE, "true")
            time.sleep(window)  # the watcher's follow-ups of the last start (0.3 s, 1 s)
            took = time.monotonic() - start
            return (ticks(pids, which) - before - idle * took / window) / starts, idle
        for i in range(self.args.rounds):
            net, idle = measure("multinic", "background")
            self.record("multinic", "cpu_background_ms", i, net, "ms")
            unrelated, idle2 = measure("bridge", "all")
            self.record("multinic", "cpu_unrelated_ms", i, unrelated, "ms")
            self.say(f"cpu round {i + 1}: beyond the verbs {net:.1f} ms per multinic start, {unrelated:.1f} ms "
                     f"per bridge start (idle {idle:.1f} / {idle2:.1f} ms per {window} s)")

    def op_startup(self) -> None:
        for i in range(min(self.args.rounds, 5)):
            self.lab.stop_plugin()
            start = time.monotonic()
            self.lab.start_plugin()
            while True:
                try:
                    self._call("GetCapabilities", {})
                    break
                except OSError:
                    time.sleep(0.005)
            took = time.monotonic() - start
            self.record("multinic", "startup_s", i, took)
            self.say(f"startup round {i + 1}: socket answered {took:.3f} s after multinic serve")
        time.sleep(3)  # its loops have settled

    # -- scale ------------------------------------------------------------------------------------
    def op_scale_networks(self) -> None:
        n = self.args.networks
        made: list[str] = []
        try:
            for k in range(n):
                for driver in DRIVERS:
                    name = f"bs{driver[0]}{k}"
                    subnet = f"10.{160 + DRIVERS.index(driver)}.{k}.0/24"
                    self.record(driver, "scale_network_create", k + 1, self.timed(
                        lambda: self.network(driver, name, subnet)))  # noqa: B023
                    made.append(name)
                if (k + 1) % 10 == 0 or k + 1 == n:
                    self.say(f"scale networks: {k + 1}/{n}")
        finally:
            for name in made:
                self.docker("network", "rm", name, check=False)

    def op_scale_containers(self) -> None:
        n = self.args.containers
        made: list[str] = []
        try:
            for k in range(n):
                for driver in DRIVERS:
                    name = f"bsc-{driver}-{k}"
                    port = {"bridge": 20000, "multinic": 21000}[driver] + k

                    self.record(driver, "scale_run_p", k + 1, self.until_answers(port, lambda: self.docker(
                        "run", "-d", "--name", name, "--network", f"bn-{driver}",  # noqa: B023
                        "-p", f"{port}:80", IMAGE, *web_cmd("s"))))  # noqa: B023
                    made.append(name)
                if (k + 1) % 10 == 0 or k + 1 == n:
                    self.say(f"scale containers: {k + 1}/{n}")
            self.op_api("_at_scale")  # the plugin's own cost with every one of them still running
            if not self.args.only or "footprint" in self.args.only:
                self.op_footprint("_at_scale")
        finally:
            for i in range(0, len(made), 50):
                self.docker("rm", "-f", *made[i:i + 50], check=False)


class SwarmBench(Bench):
    """``swarm_scale`` on its own swarm: the plugin installed on every node from the swarm's registry, a
    multinic swarm network (each node's config-only network) and an overlay network, a probe on each."""

    PROBE = ("sh", "-c", "for ip in $0 $@; do timeout 2 wget -qO /dev/null http://$ip/ && echo $ip; done")

    def __init__(self, swarm: Swarm, args: argparse.Namespace, t0: float) -> None:
        super().__init__(swarm.manager, args)
        self.swarm = swarm
        self.t0 = t0

    def op_swarm_scale(self, plugin_dir: Path) -> None:
        swarm, m = self.swarm, self.swarm.manager
        swarm.install_plugin(swarm.start_registry(plugin_dir)[0])
        for node in swarm.nodes:
            node.docker("network", "create", "--config-only", "-o", f"parent={node.parent}", "--subnet",
                        "10.10.0.0/24", "mncfg")
        m.docker("network", "create", "-d", "multinic:latest", "--scope", "swarm", "--config-from", "mncfg",
                 "--attachable", "bsw-multinic")
        m.docker("network", "create", "-d", "overlay", "--attachable", "bsw-overlay")
        for driver in SWARM_DRIVERS:
            swarm.create_service(f"probe-{driver}", "--mode", "global", "--network", f"bsw-{driver}")
            swarm.create_service(f"web-{driver}", "--replicas", "0", "--endpoint-mode", "dnsrr", "--network",
                                 f"bsw-{driver}", cmd=tuple(web_cmd("w")))
            swarm.wait_tasks(f"probe-{driver}", len(swarm.nodes))
        self.say(f"swarm {swarm.prefix}: {len(swarm.nodes)} nodes, plugin installed, networks and probes up")

        def body(driver: str, i: int) -> float:
            t0 = time.monotonic()
            m.docker("service", "scale", "-d", f"web-{driver}={SWARM_TASKS}")
            answered: set[str] = set()
            while len(answered) < SWARM_TASKS:
                if time.monotonic() - t0 > 300:
                    raise RuntimeError(f"web-{driver}: {len(answered)}/{SWARM_TASKS} tasks answered in 300 s")
                with ThreadPoolExecutor(len(swarm.nodes)) as pool:
                    for found in pool.map(lambda node: self._answering(node, driver), swarm.nodes):
                        answered |= found
            elapsed = time.monotonic() - t0
            m.docker("service", "scale", "-d", f"web-{driver}=0")
            swarm.wait_tasks(f"web-{driver}", 0, timeout=180)
            return elapsed

        self.rounds("swarm_scale_0_to_12", body, drivers=SWARM_DRIVERS)

    def _answering(self, node: Any, driver: str) -> set[str]:
        """The node's running tasks of ``web-<driver>`` that answered its probe, as ``node/ip``."""
        network = f"bsw-{driver}"
        tasks, probe = Swarm.running(node, f"web-{driver}"), Swarm.running(node, f"probe-{driver}")
        if not tasks or not probe:
            return set()
        fmt = '{{(index .NetworkSettings.Networks "' + network + '").IPAddress}}'
        ips = [ip for ip in node.docker("inspect", "-f", fmt, *tasks, check=False).stdout.split() if ip]
        if not ips:
            return set()
        out = node.docker("exec", probe[0], *self.PROBE, *ips, check=False, timeout=60).stdout.split()
        return {f"{node.name}/{ip}" for ip in out}


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self.path)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:60].strip()
    except OSError:
        return ""


def _pss_by_mapping(pid: int) -> dict[str, int]:
    """PSS in kB of ``pid`` per mapped file (its basename) or anonymous kind (``[heap]``, ``[anon]``)."""
    out: dict[str, int] = {}
    name = "[anon]"
    try:
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            fields = line.split()
            if fields and "-" in fields[0] and not fields[0].endswith(":"):
                name = os.path.basename(fields[5]) if len(fields) > 5 else "[anon]"
            elif fields and fields[0] == "Pss:":
                out[name] = out.get(name, 0) + int(fields[1])
    except (OSError, ValueError, IndexError):
        pass
    return out


def _smaps(pid: int) -> dict[str, int]:
    """``/proc/PID/smaps_rollup`` in kB."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, _, rest = line.partition(":")
            out[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def _tasks(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return [pid]


def _loop_threads(pid: int) -> list[int]:
    """The threads of ``pid`` that run the loops (named ``mn-*``: plugin/loops/supervisor.py)."""
    out = []
    for tid in _tasks(pid):
        try:
            if Path(f"/proc/{pid}/task/{tid}/comm").read_text().startswith("mn-"):
                out.append(tid)
        except OSError:
            pass
    return out


def _cpu_seconds(pid: int, threads: list[int] | None = None) -> float:
    """CPU of every live thread of ``pid`` (or of ``threads``; ``schedstat``, in ns) and of its reaped
    children (``stat``'s cutime + cstime, in ticks: with the native firewall only the loops start any)."""
    total = 0.0
    for tid in _tasks(pid) if threads is None else threads:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    return total


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    by: dict[tuple[str, str], list[float]] = {}
    for s in samples:
        by.setdefault((s["operation"], s["driver"]), []).append(s["value"])
    out: dict[str, Any] = {}
    for op in sorted({op for op, _ in by}):
        row: dict[str, Any] = {}
        for driver in (*DRIVERS, *SWARM_DRIVERS[:1]):
            values = by.get((op, driver))
            if not values:
                continue
            if op.startswith("scale_"):
                head, tail = values[: min(10, len(values))], values[-min(10, len(values)):]
                row[driver] = {"first10": statistics.median(head), "last10": statistics.median(tail),
                               "growth": statistics.median(tail) / statistics.median(head)}
            elif op.startswith("api_"):  # also api_<verb>_at_scale
                row[driver] = {"p50_ms": _pct(values, 50), "p99_ms": _pct(values, 99), "n": len(values)}
            else:
                row[driver] = {"median": statistics.median(values), "n": len(values)}
        reference = next((d for d in ("bridge", "overlay") if d in row), None)
        if reference and "multinic" in row:
            if op.startswith("scale_"):
                row["ratio_last10"] = row["multinic"]["last10"] / row[reference]["last10"]
            else:
                row["ratio"] = row["multinic"]["median"] / row[reference]["median"]
        out[op] = row
    # dual stack over IPv4-only, per driver, from the interleaved rounds (else the earlier run_rm op)
    rm4 = out.get("run_rm4_beside6") or out.get("run_rm", {})
    dual = {d: out.get("run_rm6", {}).get(d, {}).get("median", 0) / rm4[d]["median"]
            for d in DRIVERS if d in rm4 and out.get("run_rm6", {}).get(d)}
    if "multinic" in dual:
        out["dual_stack_run_rm"] = {"ratio": dual["multinic"], "bridge_ratio": dual.get("bridge")}
    return out


def plot(samples: list[dict[str, Any]], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing (pip install -e '.[bench]'): no plot", file=sys.stderr)
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, op, xlabel in ((axes[0], "scale_run_p", "k-th container with a published port (others kept)"),
                           (axes[1], "scale_network_create", "k-th network (others kept)")):
        for driver, style in (("bridge", "o-"), ("multinic", "s-")):
            pts = [(s["x"], s["value"]) for s in samples if s["operation"] == op and s["driver"] == driver]
            if pts:
                xs = [p[0] for p in pts]
                ys = [p[1] for p in pts]
                ax.plot(xs, ys, style, markersize=2.5, linewidth=0.8, label=driver)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("seconds")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_title("docker run -d -p, until the port answers")
    axes[1].set_title("docker network create")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="20.10")
    parser.add_argument("--rounds", type=int, default=7, help="rounds per operation (median reported)")
    parser.add_argument("--quick", action="store_true", help="few rounds and a small scale, for iteration")
    parser.add_argument("--containers", type=int, default=None, help="scale: containers (default 200; quick 20)")
    parser.add_argument("--networks", type=int, default=None, help="scale: networks (default 50; quick 10)")
    parser.add_argument("--lab", default=os.environ.get("MULTINIC_BENCH_LAB", "mnbnch"))
    parser.add_argument("--driver", default=os.environ.get("MULTINIC_BENCH_DRIVER", "mnbench"))
    parser.add_argument("--plugin-root", default=None, help="run the plugin from this checkout (before/after)")
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("--tag", default="", help="suffix of the output files")
    parser.add_argument("--swarm", default=os.environ.get("MULTINIC_BENCH_SWARM", "bsw"),
                        help="prefix of the swarm's nodes (<= 3 characters: + engine tag + node digit)")
    parser.add_argument("--only", nargs="*", default=None,
                        help=f"run only these operations ({' '.join(LAB_OPS)} swarm_scale)")
    args = parser.parse_args()
    if args.quick:
        args.rounds = min(args.rounds, 3)
    args.containers = args.containers or (20 if args.quick else 200)
    args.networks = args.networks or (10 if args.quick else 50)
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    stem = out / f"bench-{args.engine}{args.tag}"
    samples: list[dict[str, Any]] = []
    t0 = time.monotonic()
    try:
        if not args.only or set(args.only) & set(LAB_OPS):
            with Lab(args.lab, engine=args.engine, driver=args.driver) as lab:
                if args.plugin_root:
                    lab.plugin_root = Path(args.plugin_root).resolve()
                lab.start_plugin()
                bench = Bench(lab, args)
                bench.samples = samples
                bench.say(f"lab {args.lab}, driver {args.driver}, engine {args.engine} ({lab.server_version}), "
                          f"{args.rounds} rounds, scale {args.containers} containers / {args.networks} networks")
                bench.run_all()
        if not args.only or "swarm_scale" in args.only:
            with tempfile.TemporaryDirectory() as tmp, \
                    Swarm(f"{args.swarm[:3]}{args.engine.split('.')[0]}", args.engine) as swarm:
                built = subprocess.run(["bash", str(REPO_ROOT / "scripts/build-managed-plugin.sh"), f"{tmp}/plugin"],
                                       capture_output=True, text=True, timeout=1200, cwd=REPO_ROOT)
                if built.returncode != 0:
                    raise RuntimeError(f"build-managed-plugin.sh failed: {built.stderr[-2000:]}")
                swarm_bench = SwarmBench(swarm, args, t0)
                swarm_bench.samples = samples
                swarm_bench.op_swarm_scale(Path(tmp, "plugin"))
    finally:
        with open(f"{stem}.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["engine", "driver", "operation", "x", "value", "unit"])
            writer.writeheader()
            writer.writerows(samples)
    summary = summarize(samples)
    conditions = {"engine": args.engine, "rounds": args.rounds, "quick": args.quick, "cpus": os.cpu_count(),
                  "load_avg": os.getloadavg(), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "containers": args.containers, "networks": args.networks}
    Path(f"{stem}.json").write_text(json.dumps({"conditions": conditions, "summary": summary}, indent=2))
    plotted = plot(samples, Path(f"{stem}.png"), f"multinic vs bridge, Engine {args.engine}")
    print(f"engine {args.engine}: medians of {args.rounds} rounds (ratio = multinic / bridge, or / overlay on "
          "the swarm)")
    for op, row in summary.items():
        if op == "dual_stack_run_rm":
            print(f"  {op:22} dual-stack / IPv4-only: multinic {row['ratio']:5.2f}  bridge "
                  f"{row['bridge_ratio'] or float('nan'):5.2f}")
        elif "ratio" in row:
            ref = next(d for d in ("bridge", "overlay") if d in row)
            print(f"  {op:22} {ref} {row[ref]['median']:9.3f}  multinic {row['multinic']['median']:9.3f}"
                  f"  ratio {row['ratio']:5.2f}")
        elif "ratio_last10" in row:
            print(f"  {op:22} growth last10/first10: bridge {row['bridge']['growth']:5.2f}  multinic "
                  f"{row['multinic']['growth']:5.2f}  multinic/bridge at the end {row['ratio_last10']:5.2f}")
        else:
            for driver, stats in row.items():
                print(f"  {op:22} {driver}: {stats}")
    print(f"wrote {stem}.csv, {stem}.json" + (f", {stem}.png" if plotted else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
