"""kill -9 of the plugin inside each verb, and of dockerd during a start: the user's command fails
at worst with a message saying to run it again, running it again works, and once everything is
removed the host is byte-identical to before.

The plugin is stopped inside the verb deterministically with ``MULTINIC_FAULT=<Verb>[@point]``
(plugin/ops/faults.py): ``saved`` = the new state is on disk, the kernel not yet changed; ``applied``
= state and kernel changed, the answer not sent.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import time

import pytest

from tests.e2e.helpers import IMAGE, wait_for, web_cmd

SUBNET = "10.44.0.0/24"
PORT = 4070


def _restart_with(lab, env: dict | None = None) -> None:
    lab.stop_plugin()
    lab.start_plugin(env=env)


def killed_inside(lab, fault: str, *docker_args: str):
    """Run ``docker *docker_args`` with the plugin set to stop at ``fault``; kill -9 it there,
    start a normal plugin, and return the command's result (whatever it is) and the kill delay."""
    marker = lab.state_dir / "fault-reached"
    marker.unlink(missing_ok=True)
    _restart_with(lab, {"MULTINIC_FAULT": fault})
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(lab.docker, *docker_args, check=False, timeout=240)
        assert wait_for(marker.exists, timeout=90), f"{fault} never reached:\n{lab.plugin_log_tail()}"
        lab.kill_plugin()
        marker.unlink(missing_ok=True)
        t0 = time.monotonic()
        lab.start_plugin()
        result = fut.result()
    return result, time.monotonic() - t0


def _run_web(lab, name: str) -> None:
    lab.docker("run", "-d", "--name", name, "--network", "fnet", "-p", f"{PORT}:80", IMAGE, *web_cmd(name))


def _serves(lab, name: str) -> bool:
    return wait_for(lambda: lab.http_get(lab.c1_ns, f"http://192.168.101.2:{PORT}/", timeout=2), timeout=20) \
        == f"{name}\n"


def _state(lab) -> dict:
    return json.loads((lab.state_dir / "state.json").read_text())


CREATE_SIDE = ["CreateNetwork", "CreateEndpoint", "Join", "ProgramExternalConnectivity@applied", "Join@applied"]
REMOVE_SIDE = ["Leave", "DeleteEndpoint", "DeleteNetwork", "Leave@applied"]


@pytest.mark.parametrize("fault", CREATE_SIDE + REMOVE_SIDE)
def test_kill9_inside_verb_then_restart_heals(mn, fault):
    lab = mn
    verb = fault.split("@")[0]
    before = lab.dump_host_state()
    outcome = ""
    try:
        if verb == "CreateNetwork":
            result, _ = killed_inside(lab, fault, "network", "create", "-d", lab.driver, "--opt", "parent=eth1",
                                      "--subnet", SUBNET, "fnet")
            outcome = "ok" if result.returncode == 0 else result.stderr.strip()[-200:]
            if result.returncode != 0:
                lab.docker("network", "create", "-d", lab.driver, "--opt", "parent=eth1", "--subnet", SUBNET, "fnet")
        else:
            lab.docker("network", "create", "-d", lab.driver, "--opt", "parent=eth1", "--subnet", SUBNET, "fnet")
        if verb in ("CreateEndpoint", "Join", "ProgramExternalConnectivity"):
            result, _ = killed_inside(lab, fault, "run", "-d", "--name", "f1", "--network", "fnet",
                                      "-p", f"{PORT}:80", IMAGE, *web_cmd("f1"))
            outcome = "ok" if result.returncode == 0 else result.stderr.strip()[-200:]
            if result.returncode != 0:  # what the message tells the user to do: run it again
                lab.docker("rm", "-f", "f1", check=False)
                _run_web(lab, "f1")
        else:
            _run_web(lab, "f1")
        assert _serves(lab, "f1"), lab.plugin_log_tail()
        if verb in ("Leave", "DeleteEndpoint"):
            result, _ = killed_inside(lab, fault, "rm", "-f", "f1")
            outcome = "ok" if result.returncode == 0 else result.stderr.strip()[-200:]
            lab.docker("rm", "-f", "f1", check=False)
            # the port is free again for the next container: the restarted plugin healed the kernel
            _run_web(lab, "f2")
            assert _serves(lab, "f2"), lab.plugin_log_tail()
            lab.docker("rm", "-f", "f2")
        else:
            lab.docker("rm", "-f", "f1")
        if verb == "DeleteNetwork":
            result, _ = killed_inside(lab, fault, "network", "rm", "fnet")
            outcome = "ok" if result.returncode == 0 else result.stderr.strip()[-200:]
        lab.docker("network", "rm", "fnet", check=False)
        print(f"\n{fault}: docker command -> {outcome}")
        assert wait_for(lambda: lab.dump_host_state() == before, timeout=40), "host not back to its state before"
        assert not _state(lab)["networks"] and not _state(lab)["endpoints"]
    finally:
        lab.docker("rm", "-f", "f1", "f2", check=False)
        lab.docker("network", "rm", "fnet", check=False)
        lab.stop_plugin()  # the next test's `mn` starts a plugin without the fault


def _kill_orphaned_containerd(lab) -> None:
    """The lab's dockerd runs containerd as its child, logging through dockerd: orphaned, it dies or
    hangs on its log pipe, and the next dockerd, which reuses a containerd whose pid file names a
    live (or zombie) process, times out. On a host containerd is its own service (Debian's
    docker.io, Docker's packages); like systemd after a crash, remove the dead daemon's leftover
    (not the container shims) and its pid file."""
    pidfile = lab.exec_root / "containerd" / "containerd.pid"
    try:
        pid = int(pidfile.read_text().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            if fh.read().split(b"\0")[0].endswith(b"containerd"):
                os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError):
        pass
    pidfile.unlink(missing_ok=True)


def test_kill9_of_dockerd_during_a_start(mn):
    lab = mn
    before = lab.dump_host_state()
    _restart_with(lab, {"MULTINIC_GC_INTERVAL": "2", "MULTINIC_GC_GRACE": "1"})
    try:
        lab.docker("network", "create", "-d", lab.driver, "--opt", "parent=eth1", "--subnet", SUBNET, "fnet")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            fut = pool.submit(lab.docker, "run", "-d", "--name", "d1", "--network", "fnet", "-p", f"{PORT}:80",
                              IMAGE, *web_cmd("d1"), check=False, timeout=120)
            # kill dockerd as soon as the plugin has the endpoint joined (mid `docker run`)
            assert wait_for(lambda: any(e.get("joined") for e in _state(lab)["endpoints"].values()),
                            timeout=60, interval=0.02)
            lab.kill_dockerd()
            result = fut.result()
        _kill_orphaned_containerd(lab)
        lab.start_dockerd()
        print(f"\ndocker run during dockerd kill -> rc={result.returncode} {result.stderr.strip()[-160:]}")
        lab.docker("rm", "-f", "d1", check=False)
        # The restarted dockerd never calls Leave/DeleteEndpoint for the endpoint of the start it
        # lost: the healer's garbage collection forgets it (here every 2 s; 60 s by default).
        t0 = time.monotonic()
        assert wait_for(lambda: not _state(lab)["endpoints"], timeout=60), _state(lab)
        print(f"ghost endpoint collected {time.monotonic() - t0:.1f} s after `docker rm -f`")
        _run_web(lab, "d2")
        assert _serves(lab, "d2"), lab.plugin_log_tail()
        lab.docker("rm", "-f", "d2")
        lab.docker("network", "rm", "fnet")
        # the endpoint dockerd forgot when it died is collected by the healer (GC)
        assert wait_for(lambda: lab.dump_host_state() == before, timeout=60), "host not back to its state before"
    finally:
        lab.docker("rm", "-f", "d1", "d2", check=False)
        lab.docker("network", "rm", "fnet", check=False)
        lab.stop_plugin()
