"""Soak: many cycles of network + container + published port, in parallel; afterwards the host is
byte-identical and the plugin's memory and open file descriptors have not grown.

``MULTINIC_SOAK_CYCLES`` (default 200) cycles spread over ``MULTINIC_SOAK_PARALLEL`` (default 4)
workers; each worker has its own subnet and host port. Figures (duration, RSS and fds of the
plugin's whole process group after warm-up and at the end) are printed for docs/RELIABILITY.md.
"""

from __future__ import annotations

import concurrent.futures
import os
import time

from tests.e2e.helpers import IMAGE, wait_for, web_cmd
from tests.lab import HOST6_ETH1

CYCLES = int(os.environ.get("MULTINIC_SOAK_CYCLES", "200"))
PARALLEL = int(os.environ.get("MULTINIC_SOAK_PARALLEL", "4"))
FD_SLACK = 16  # a pyroute2 socket or a log handle opened lazily once is not a leak
RSS_SLACK_KIB = 32 * 1024


def group_usage(pgid: int, detail: dict | None = None) -> tuple[int, int, int]:
    """(processes, RSS KiB, open fds) summed over the plugin's process group; ``detail`` gets
    pid -> (role, RSS KiB, fds)."""
    procs = rss = fds = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            with open(f"/proc/{entry}/status") as fh:
                one = next((int(ln.split()[1]) for ln in fh if ln.startswith("VmRSS:")), 0)
            nfds = len(os.listdir(f"/proc/{entry}/fd"))
            rss, fds, procs = rss + one, fds + nfds, procs + 1
            if detail is not None:
                with open(f"/proc/{entry}/comm") as fh:
                    detail[int(entry)] = (fh.read().strip(), one, nfds)
        except (OSError, IndexError, ValueError):
            continue
    return procs, rss, fds


def cycle(lab, worker: int, i: int) -> None:
    """One network with one container publishing a port, reached from c1, then removed. Odd workers'
    networks are dual-stack: IPv6 comes and goes with them (forwarding, accept_ra, ip6tables)."""
    net, name, port = f"soak{worker}", f"soak{worker}c", 4100 + worker
    ipv6 = ("--ipv6", "--subnet", f"fd00:60:{worker}::/64") if worker % 2 else ()
    lab.docker("network", "create", "-d", lab.driver, "--opt", "parent=eth1", "--subnet", f"10.60.{worker}.0/24",
               *ipv6, net)
    try:
        lab.docker("run", "-d", "--name", name, "--network", net, "-p", f"{port}:80", IMAGE, *web_cmd(f"w{worker}i{i}"))
        got = wait_for(lambda: lab.http_get(lab.c1_ns, f"http://192.168.101.2:{port}/", timeout=3), timeout=20)
        assert got == f"w{worker}i{i}\n", (worker, i, got)
        if ipv6:
            got = lab.http_get(lab.c1_ns, f"http://[{HOST6_ETH1}]:{port}/", timeout=3)
            assert got == f"w{worker}i{i}\n", (worker, i, "IPv6", got)
    finally:
        lab.docker("rm", "-f", name, check=False)
        lab.docker("network", "rm", net, check=False)


def worker_loop(lab, worker: int, count: int) -> int:
    for i in range(count):
        cycle(lab, worker, i)
    return count


def without_dockers_duplicate_user_jump(dump: str) -> str:
    """Docker's own ``-A FORWARD -j DOCKER-USER``, once. dockerd (20.10) re-asserts it at every
    ``docker network create`` by check, delete, insert (libnetwork ``EnsureJumpRule``), which is
    not atomic: parallel creates can leave it twice (seen in about one soak run in four). It is
    Docker's rule, which multinic never writes; everything multinic owns is compared as is."""
    out, seen = [], False
    for line in dump.splitlines():
        if line == "-A FORWARD -j DOCKER-USER":
            if seen:
                continue
            seen = True
        out.append(line)
    return "\n".join(out) + "\n"


def test_soak_cycles_leave_host_identical_and_plugin_flat(mn):
    lab = mn
    before = without_dockers_duplicate_user_jump(lab.dump_host_state())
    pgid = lab.plugin_pid
    per_worker = [CYCLES // PARALLEL + (1 if w < CYCLES % PARALLEL else 0) for w in range(PARALLEL)]
    warm = [max(1, n // 10) for n in per_worker]
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
        list(pool.map(lambda w: worker_loop(lab, w, warm[w]), range(PARALLEL)))
    warm_detail: dict = {}
    warm_usage = group_usage(pgid, warm_detail)
    rest = [per_worker[w] - warm[w] for w in range(PARALLEL)]
    with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
        done = sum(pool.map(lambda w: worker_loop(lab, w, rest[w] // 2), range(PARALLEL)))
    mid_usage = group_usage(pgid)
    with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
        done += sum(pool.map(lambda w: worker_loop(lab, w, rest[w] - rest[w] // 2), range(PARALLEL)))
    elapsed = time.monotonic() - t0
    end_detail: dict = {}
    end_usage = group_usage(pgid, end_detail)
    for pid in sorted(set(warm_detail) | set(end_detail)):
        print(f"  pid {pid} {(warm_detail.get(pid) or end_detail.get(pid))[0]}: RSS KiB/fds "
              f"{warm_detail.get(pid, ('', '-', '-'))[1:]} -> {end_detail.get(pid, ('', '-', '-'))[1:]}")
    print(f"soak checkpoints (processes, RSS KiB, fds): warm-up {warm_usage}, half-way {mid_usage}, end {end_usage}")
    print(f"\nsoak: {sum(warm) + done} cycles, {PARALLEL} in parallel, {elapsed:.0f} s "
          f"({elapsed / (sum(warm) + done):.2f} s/cycle); plugin group after warm-up: {warm_usage[0]} processes, "
          f"RSS {warm_usage[1] // 1024} MiB, {warm_usage[2]} fds; at the end: {end_usage[0]} processes, "
          f"RSS {end_usage[1] // 1024} MiB, {end_usage[2]} fds")
    def now() -> str:
        return without_dockers_duplicate_user_jump(lab.dump_host_state())

    if not wait_for(lambda: now() == before, timeout=20):
        import difflib

        diff = "\n".join(difflib.unified_diff(before.splitlines(), now().splitlines(), lineterm=""))
        raise AssertionError(f"host not back to its state before:\n{diff}\n{lab.host('ip', '-d', '-o', 'link').stdout}")
    assert end_usage[0] == warm_usage[0]
    assert end_usage[2] <= warm_usage[2] + FD_SLACK
    assert end_usage[1] <= warm_usage[1] + RSS_SLACK_KIB
