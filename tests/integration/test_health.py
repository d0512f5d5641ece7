"""The real ``multinic serve`` in a scratch namespace: its loops (threads of one process) die, are
killed with their process, and hang; /Plugin.Health reports it, the supervisor restarts them; a corrupt
state file is recovered from its backup, or (no usable backup) the plugin still serves, refusing verbs
clearly and reporting unhealthy.

No dockerd here (DOCKER_HOST points nowhere): the gateway watcher reports "docker not usable" as
what it is waiting for, which is not a health problem (``multinic doctor`` checks dockerd itself).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.nsutil import scratch_netns

NID = "b8" * 32
VENV_BIN = Path(sys.executable).parent


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self.path)


def post(sock: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    conn = UnixHTTP(sock)
    try:
        conn.request("POST", path, body=json.dumps(body or {}))
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def wait_for(predicate, timeout: float = 30.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@contextmanager
def serving(tmp_path: Path, stale: float = 3.0, path_prefix: str = "", before: str = "",
            extra_env: dict[str, str] | None = None):
    ns = f"mnh{os.getpid() % 100000}"
    sock = str(tmp_path / "mnh.sock")
    state = tmp_path / "state"
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock", "MULTINIC_HEALTH_STALE": str(stale),
           "MULTINIC_FAULT": "loops"}  # <state>/fault-loop kills or hangs a loop (plugin/ops/faults.py)
    if path_prefix:
        env["PATH"] = f"{path_prefix}:{env['PATH']}"
    env.update(extra_env or {})
    with scratch_netns(ns):
        if before:
            subprocess.run(["nsenter", f"--net=/var/run/netns/{ns}", "sh", "-c", before], check=True)
        log = open(tmp_path / "serve.log", "w")
        proc = subprocess.Popen(
            ["nsenter", f"--net=/var/run/netns/{ns}", str(VENV_BIN / "multinic"), "--state-dir", str(state),
             "serve", "--socket", sock, "--workers", "2"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            wait_for(lambda: os.path.exists(sock) and _answers(sock), what="the plugin socket")
            yield sock, state
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()
            print((tmp_path / "serve.log").read_text()[-3000:])


def _answers(sock: str) -> bool:
    try:
        return post(sock, "/Plugin.Activate")[0] == 200
    except OSError:
        return False


def alive_loop(sock: str, loop: str) -> dict | None:
    info = health(sock)["loops"].get(loop) or {}
    return info if info.get("alive") else None


def health(sock: str) -> dict:
    code, body = post(sock, "/Plugin.Health")
    assert code == 200, body
    return body


@pytest.mark.parametrize("loop,how", [("healer", "thread dies"), ("watcher", "thread dies"),
                                      ("watcher", "process killed")])
def test_killed_loop_is_reported_and_restarted(tmp_path, loop, how):
    """A loop's thread that ends (an uncaught error), or the worker hosting it SIGKILLed (the OOM killer,
    an operator): reported, the loops restarted in another worker, alive again with ``restarts`` 1."""
    with serving(tmp_path) as (sock, state):
        first = wait_for(lambda: alive_loop(sock, loop), what=f"{loop} alive")
        assert wait_for(lambda: health(sock)["healthy"], what="healthy")
        if how == "process killed":
            os.kill(first["pid"], signal.SIGKILL)
        else:
            (state / "fault-loop").write_text(f"kill {loop}")
        seen_dead = []

        def restarted():
            report = health(sock)
            info = report["loops"][loop]
            if not info["alive"]:
                seen_dead.append(report["problems"])
            return info["alive"] and info["restarts"] == 1 and info["pid"] != first["pid"] and info

        again = wait_for(restarted, what=f"{loop} restarted")
        print(f"\n{loop} ({how}): pid {first['pid']} -> pid {again['pid']}, last_exit={again['last_exit']!r}, "
              f"problems seen while dead: {seen_dead[:1]}")
        assert again["last_exit"] and again["last_restart"]
        if how == "thread dies":
            assert again["last_exit"] == f"thread died: LoopKilled: {loop} killed by the fault test"
        else:
            # the loops' worker is gunicorn's child: gunicorn reaps it, logs how it ended and starts another
            assert again["last_exit"] == "its worker ended (gunicorn starts another)"
        # the dead window lasts until the supervisor's next look (<= 0.5 s); when a poll fell in it,
        # the problem named the loop and its pid (the record above keeps the failure either way)
        assert not seen_dead or any(f"{loop}: process {first['pid']} is dead" in p for p in seen_dead[0])
        assert wait_for(lambda: health(sock)["healthy"], what="healthy again")


def test_hung_loop_is_unhealthy_then_killed_and_restarted(tmp_path):
    with serving(tmp_path, stale=2.0) as (sock, state):
        first = wait_for(lambda: alive_loop(sock, "healer"), what="healer alive")
        (state / "fault-loop").write_text("hang healer")  # alive, but no sign of life
        problems = wait_for(lambda: [p for p in health(sock)["problems"] if p.startswith("healer")],
                            what="the hung healer reported")
        assert not health(sock)["healthy"]
        assert "no sign of life" in problems[0]
        again = wait_for(lambda: (h := health(sock)["loops"]["healer"])["alive"] and h["pid"] != first["pid"] and h,
                         what="healer replaced")
        assert again["restarts"] == 1 and "hung" in again["last_exit"]
        log = (tmp_path / "serve.log").read_text()
        # stopped like any worker (what is in flight is answered), not killed: its hung thread was a daemon
        assert "stopping that worker" in log and "did not stop" not in log and "SIGKILL" not in log, log[-2000:]
        watcher = health(sock)["loops"]["watcher"]  # restarted with it: one worker hosts both
        assert watcher["restarts"] == 1 and watcher["last_exit"].startswith("restarted with healer")


def test_status_shows_health(tmp_path):
    with serving(tmp_path) as (_sock, state):
        wait_for(lambda: health(_sock)["loops"].get("healer", {}).get("alive"), what="healer alive")
        ns = f"mnh{os.getpid() % 100000}"  # serving()'s namespace: status reads its links, not the machine's
        out = subprocess.run(["nsenter", f"--net=/var/run/netns/{ns}", str(VENV_BIN / "multinic"), "--state-dir",
                              str(state), "status", "--json"],
                             capture_output=True, text=True, env={**os.environ, "DOCKER_HOST": "unix:///nonexistent"})
        report = json.loads(out.stdout)["health"]
        assert report["serving"] and report["loops"]["healer"]["alive"]


GOOD = {"version": 1, "networks": {}, "endpoints": {}, "parents": {}}


@pytest.mark.parametrize("backup", [json.dumps(GOOD).encode(), None], ids=["with-backup", "no-backup"])
def test_corrupt_state_is_set_aside_and_nothing_is_lost(tmp_path, backup):
    """The file is kept aside and the state rebuilt from dockerd when it answers (here it never does and the
    kernel holds nothing of ours: the plugin serves, healthy, waiting). A backup is never put in its place
    (it is one save older: it may lack what the last verb made); it stays, for the values to put back."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.json").write_bytes(b"\x00\x00\x00")
    if backup:
        (state / "state.json.bak").write_bytes(backup)
    with serving(tmp_path) as (sock, _):
        assert [p.read_bytes() for p in state.glob("state.json.corrupt-*")] == [b"\x00\x00\x00"]
        report = health(sock)
        assert report["healthy"] and report["state"]["ok"] and "waiting for dockerd" in report["state"]["rebuilt"]
        code, body = post(sock, "/NetworkDriver.DeleteNetwork", {"NetworkID": NID})
        assert code == 200, body
        if backup:
            assert (state / "state.json.bak").read_bytes() == backup


def test_lost_state_with_our_objects_in_the_kernel_changes_nothing_and_is_unhealthy(tmp_path):
    """No state file, dockerd unreachable, but the kernel holds a bridge of ours: nothing is removed or
    added, /Plugin.Health says why and what to do, a verb fails (500) naming the state file."""
    ns = f"mnh{os.getpid() % 100000}"
    bridge = "mn-lost0"
    with serving(tmp_path, before=f"ip link add {bridge} type bridge && ip link set {bridge} alias multinic:net:{NID}"
                 ) as (sock, state):
        problems = wait_for(lambda: [p for p in health(sock)["problems"] if "state" in p], what="the lost state")
        assert "missing while the kernel holds its networks" in problems[0] and bridge in problems[0]
        code, body = post(sock, "/NetworkDriver.CreateNetwork", {
            "NetworkID": "c9" * 32, "Options": {"com.docker.network.generic": {}}, "IPv6Data": [],
            "IPv4Data": [{"AddressSpace": "x", "Pool": "10.48.0.0/24", "Gateway": "10.48.0.1/24"}]})
        assert code == 500 and "state file" in body["Err"] and "nothing was changed" in body["Err"]
        assert not (state / "state.json").exists()
        assert bridge in subprocess.run(["ip", "-n", ns, "link", "show", bridge], capture_output=True,
                                        text=True).stdout


def test_firewall_that_cannot_be_applied_is_unhealthy(tmp_path):
    """The reconcile fails when iptables-restore does (a broken backend, a kernel without the module):
    /Plugin.Health says so with the error from the start (until a healer pass succeeds; a failing
    healer pass is reported as its own problem, see tests/unit/test_health_and_parents.py)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for flavour in ("nft", "legacy"):
        tool = bin_dir / f"iptables-{flavour}-restore"
        tool.write_text("#!/bin/sh\necho 'iptables-restore: simulated failure' >&2\nexit 1\n")
        tool.chmod(0o755)
    state = tmp_path / "state"
    state.mkdir()
    record = {"id": NID, "bridge": "mnhfw0", "subnet": "10.47.0.0/24", "gateway": "10.47.0.1/24", "internal": True}
    (state / "state.json").write_text(json.dumps({**GOOD, "networks": {NID: record}}))
    with serving(tmp_path, path_prefix=str(bin_dir), extra_env={"MULTINIC_FIREWALL": "iptables-nft"}) as (sock, _):
        problems = wait_for(lambda: [p for p in health(sock)["problems"] if "simulated failure" in p],
                            what="the firewall failure reported")
        report = health(sock)
        print(f"\nreported: {problems[0][:160]}")
        assert not report["healthy"] and any(p.startswith("reconcile at start failed") for p in report["problems"])
        assert report["startup"]["ok"] is False
        waiting = wait_for(lambda: (health(sock)["loops"].get("watcher") or {}).get("waiting"),
                           what="the watcher's first look at dockerd")  # the loops start beside the socket
        assert waiting.startswith("docker not usable")


def test_state_file_that_cannot_be_read_still_serves(tmp_path):
    """The state file cannot even be opened (here a directory stands in its place: as a disk error or a
    wrong mount would): ``serve`` listens all the same (dockerd waits for its plugins at boot), says what
    failed in /Plugin.Health, and a verb fails with a 500 naming the file rather than acting blind."""
    state = tmp_path / "state"
    (state / "state.json").mkdir(parents=True)
    with serving(tmp_path) as (sock, _):
        report = health(sock)
        assert not report["healthy"] and report["startup"]["ok"] is False
        assert any("state.json" in p for p in report["problems"]), report["problems"]
        code, body = post(sock, "/NetworkDriver.DeleteNetwork", {"NetworkID": NID})
        assert code == 500 and "state.json" in body["Err"], body


def test_a_refused_setting_is_unhealthy_until_fixed(tmp_path):
    """A setting that names nothing (a typo in `docker plugin set` or /etc/default/multinic) is replaced by
    its default, and /Plugin.Health says which one, for as long as this ``multinic serve`` runs. So is an
    address that cannot work (here the metrics'), rather than only a line in the log."""
    bad = {"MULTINIC_FIREWALL": "iptables-legacy", "MULTINIC_METRICS_ADDRESS": "nonsense"}
    with serving(tmp_path, extra_env=bad) as (sock, _):
        report = health(sock)
        assert not report["healthy"] and len(report["settings_refused"]) == 2, report
        for refused in ("setting refused: firewall backend 'iptables-legacy' unknown",
                        "setting refused: MULTINIC_METRICS_ADDRESS='nonsense': give HOST:PORT"):
            assert any(p.startswith(refused) for p in report["problems"]), report["problems"]
    with serving(tmp_path) as (sock, _):
        assert health(sock)["settings_refused"] == []
    with serving(tmp_path, extra_env={"MULTINIC_FIREWALL": "iptables-nft"}) as (sock, _):
        assert health(sock)["firewall"] == "nft"  # what serve chose: what status, metrics and doctor show
