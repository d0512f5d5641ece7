"""multinic as a host service (the legacy plugin): contrib/systemd/multinic.service, installed and removed
by scripts/install-service.sh.

The unit is checked by ``systemd-analyze verify`` and its ExecStart line, with the unit's Environment=,
is started in the lab's host namespace: dockerd finds the socket it sets and serves the seed case. The
lab has no systemd, so the script installs into a scratch prefix and unit directory and starts nothing.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.e2e.helpers import containers, network, run, wait_for, web_cmd
from tests.lab import HOST_ETH1, Lab, connectable

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "contrib/systemd/multinic.service"


def unit_settings(text: str) -> dict[str, list[str]]:
    """key → values of a unit file (every section; repeated keys kept in order)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_orders_before_docker_restarts_and_sets_paths() -> None:
    unit = unit_settings(UNIT.read_text())
    assert "docker.service" in unit["Before"][0].split()
    assert unit["Restart"] == ["on-failure"]
    env = dict(e.split("=", 1) for e in unit["Environment"])
    assert env["MULTINIC_STATE_DIR"] == "/var/lib/multinic"
    assert env["MULTINIC_SOCKET"] == "/run/docker/plugins/multinic.sock"
    assert "${MULTINIC_STATE_DIR}" in unit["ExecStart"][0] and "${MULTINIC_SOCKET}" in unit["ExecStart"][0]
    assert "--log-level ${LOG_LEVEL}" in unit["ExecStart"][0]


def install_service(lab: Lab, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """scripts/install-service.sh into scratch directories. The removal runs in the lab's host (its
    /var/lib and network namespace: ``--purge`` runs ``multinic cleanup`` there, never on the machine's
    own); the install runs here, where pip reaches its index."""
    inside = lab.nsenter(lab.host_ns) if "--remove" in args or "--purge" in args else []
    return subprocess.run([*inside, "bash", str(REPO / "scripts/install-service.sh"), *args],
                          env=env, capture_output=True, text=True, timeout=600)


def test_install_verify_start_upgrade_and_remove(lab: Lab, tmp_path: Path) -> None:
    if lab.driver != "multinic":
        pytest.skip("the unit's socket names the driver 'multinic'; this run's labs use another driver name")
    prefix, unit_dir, bin_dir = tmp_path / "opt-multinic", tmp_path / "units", tmp_path / "bin"
    dropins = tmp_path / "root"
    env = dict(os.environ, MULTINIC_PREFIX=str(prefix), SYSTEMD_UNIT_DIR=str(unit_dir), BIN_DIR=str(bin_dir),
               DROPIN_ROOT=str(dropins))
    proc = install_service(lab, env)
    assert proc.returncode == 0 and "installed" in proc.stdout, proc.stderr
    installed = unit_dir / "multinic.service"
    assert installed.exists() and (prefix / "bin/multinic").exists()
    assert (bin_dir / "multinic").resolve() == (prefix / "bin/multinic").resolve()  # on PATH
    assert subprocess.run([str(bin_dir / "multinic"), "--version"], capture_output=True, text=True).stdout.startswith(
        "multinic ")
    again = install_service(lab, env)  # re-running the install upgrades
    assert again.returncode == 0 and "upgraded" in again.stdout, again.stderr

    verify = subprocess.run(["systemd-analyze", "verify", str(installed)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr

    unit = unit_settings(installed.read_text())
    unit_env = dict(e.split("=", 1) for e in unit["Environment"])
    argv = [re.sub(r"\$\{(\w+)\}", lambda m: unit_env[m.group(1)], arg) for arg in shlex.split(unit["ExecStart"][0])]
    assert argv[0] == str(prefix / "bin/multinic")
    state = lab.host_path(unit_env["MULTINIC_STATE_DIR"])  # the lab host's /var/lib/multinic
    lab.stop_plugin()  # the lab's own plugin serves the same socket
    shutil.rmtree(state, ignore_errors=True)
    log = open(tmp_path / "service.log", "ab")  # noqa: SIM115 - handed to the child
    service = subprocess.Popen([*lab.nsenter(lab.host_ns), *argv], stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True, env={**os.environ, **unit_env})
    log.close()
    try:
        assert wait_for(lambda: connectable(lab.host_path(unit_env["MULTINIC_SOCKET"])), timeout=30), \
            (tmp_path / "service.log").read_text()
        with containers(lab) as names, \
                network(lab, "svc", "--opt", "parent=eth1", "--subnet", "10.77.0.0/24", driver="multinic"):
            run(lab, names, "svc-web", "--network", "svc", "-p", "4090:80", cmd=web_cmd("from-the-service"))
            got = wait_for(lambda: lab.http_get(lab.c1_ns, f"http://{HOST_ETH1}:4090/"), timeout=30)
            assert got == "from-the-service\n"
            lab.docker("rm", "-f", "svc-web")
        assert (state / "state.json").exists()
    finally:
        os.killpg(service.pid, signal.SIGTERM)
        service.wait(timeout=30)
        lab.stop_background()
        lab.host_path(unit_env["MULTINIC_SOCKET"]).unlink(missing_ok=True)

    (dropins / "etc/NetworkManager/conf.d").mkdir(parents=True)
    (dropins / "etc/NetworkManager/conf.d/multinic.conf").write_text("[keyfile]\n")
    proc = install_service(lab, env, "--remove")  # the state and the kernel objects stay
    assert proc.returncode == 0 and "kept" in proc.stdout, proc.stderr
    assert not installed.exists() and not prefix.exists() and not (bin_dir / "multinic").exists()
    assert (state / "state.json").exists()

    # --purge after a plain --remove: the command is installed again for the cleanup, then removed. pip
    # runs in the lab's host here, which reaches no index: it takes this checkout's wheels, built here.
    wheels = tmp_path / "wheels"
    subprocess.run([str(REPO / ".venv/bin/pip"), "wheel", "-q", "--disable-pip-version-check", "-w", str(wheels),
                    str(REPO), "setuptools>=61", "wheel"], check=True, timeout=600)  # and the build's own
    offline = dict(env, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels))
    proc = install_service(lab, offline, "--purge")
    assert proc.returncode == 0 and "state" in proc.stdout and "cleanup only" in proc.stdout, proc.stderr
    assert not installed.exists() and not prefix.exists() and not (bin_dir / "multinic").exists()
    assert not state.exists() and not (dropins / "etc/NetworkManager/conf.d/multinic.conf").exists()
