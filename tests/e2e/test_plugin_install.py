"""Installed the way users install it: ``docker plugin install`` from a registry, on a pristine host.

The lab's host starts as a new machine would: no ``/var/lib/multinic``, no ``/run/xtables.lock``,
rp_filter=1 (strict) on the parent. A registry (Debian's ``docker-registry``, a plain process on
127.0.0.1:5000 inside the lab's host namespace) serves the plugin built by
scripts/build-managed-plugin.sh; then, through the real docker CLI:

push → rm → ``install --alias multinic`` → the seed case (a published port answers via eth1, egress leaves
by eth1) → gw_priority across two multinic networks → dockerd restarted after /run and multinic's kernel
objects were wiped (a reboot), with a ``--restart always`` container → ``docker plugin upgrade`` to a second
tag with that container still running → disable, rm: the host is byte-identical to before.

``/var/lib`` and ``/run`` are the lab host's own (tests/lab/topology.py): nothing here touches the machine's
``/var/lib/multinic``, ``/run/xtables.lock`` or ``/run/docker``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.e2e.helpers import containers, inside_managed_plugin, network, run, wait_for, web_cmd
from tests.lab import C1_ADDR, HOST6_ETH1, HOST_ETH1, Lab
from tests.lab.registry import Registry, publish_plugin, remove_all_plugins

REGISTRY = "localhost:5000"
REF1 = f"{REGISTRY}/multinic:1"
REF2 = f"{REGISTRY}/multinic:2"
ALIAS = "multinic"
NAME = "multinic:latest"  # what Docker registers the driver as (see test_bare_driver_name_...)
STATE = "/var/lib/multinic"  # the lab host's: lab.host_path(STATE) on the machine
XTABLES_LOCK = "/run/xtables.lock"
PROBE = "198.18.0.1"  # nothing answers there: only the route lookup matters


# -- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture
def pristine(lab: Lab, registry: str) -> Iterator[Lab]:
    """The lab host as a new machine: no legacy plugin, no multinic state, no xtables lock, strict
    rp_filter on eth1. Afterwards: plugins removed, state directory removed, rp_filter back."""
    lab.stop_plugin()  # one multinic per host
    remove_all_plugins(lab)
    shutil.rmtree(lab.host_path(STATE), ignore_errors=True)
    lab.host_path(XTABLES_LOCK).unlink(missing_ok=True)
    lab.sysctl(lab.host_ns, "net.ipv4.conf.eth1.rp_filter", "1")
    try:
        yield lab
    finally:
        lab.stop_background()
        if not lab.dockerd_running():
            lab.start_dockerd()
        for ctr in lab.docker("ps", "-aq", check=False).stdout.split():
            lab.docker("rm", "-f", ctr, check=False)
        for net in lab.docker("network", "ls", "-q", "--filter", "type=custom", check=False).stdout.split():
            lab.docker("network", "rm", net, check=False)
        remove_all_plugins(lab)
        shutil.rmtree(lab.host_path(STATE), ignore_errors=True)
        lab.sysctl(lab.host_ns, "net.ipv4.conf.eth1.rp_filter", str(lab.rp_filter))


@pytest.fixture(scope="module")
def registry(lab: Lab, plugin_dir: Path, tmp_path_factory) -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1:5000 in the lab's host namespace, holding REF1 and REF2."""
    server = Registry(lab.nsenter(lab.host_ns), tmp_path_factory.mktemp("registry"))
    server.start(lambda url: lab.http_get(lab.host_ns, url) is not None)
    try:
        lab.stop_plugin()  # one multinic per host: the legacy plugin of other tests would fight this one
        remove_all_plugins(lab)
        publish_plugin(lab, plugin_dir, [REF1, REF2])
        yield REGISTRY
    finally:
        server.stop()


# -- helpers -------------------------------------------------------------------------------------------
def _install(lab: Lab, ref: str = REF1, *settings: str) -> None:
    """As the README says: no setting needed (the lab's dockerd listens on the usual /run/docker.sock)."""
    lab.docker("plugin", "install", "--grant-all-permissions", "--alias", ALIAS, ref, *settings, timeout=300)


def _rp_filter(lab: Lab) -> str:
    return lab.sh(lab.host_ns, "cat /proc/sys/net/ipv4/conf/eth1/rp_filter").strip()


def _route_via(lab: Lab, ctr: str) -> str | None:
    pid = lab.container_pid(ctr)
    out = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "ip", "-4", "route", "get", PROBE],
                         capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"\bvia (\S+)", out)
    return m.group(1) if m else None


def _seed_case(lab: Lab, port: int, text: str, ctr: str) -> None:
    """The published port answers c1 (reachable only through eth1), on eth1's IPv4 and IPv6 addresses, and
    the container's egress leaves by eth1 with eth1's address."""
    got = wait_for(lambda: lab.http_get(lab.c1_ns, f"http://{HOST_ETH1}:{port}/"), timeout=30)
    assert got == f"{text}\n", f"port {port} via eth1 answered {got!r}"
    got = wait_for(lambda: lab.http_get(lab.c1_ns, f"http://[{HOST6_ETH1}]:{port}/"), timeout=10)
    assert got == f"{text}\n", f"port {port} via eth1's IPv6 address answered {got!r}"
    out = lab.docker("exec", ctr, "sh", "-c", f"nc {C1_ADDR} 7080 </dev/null").stdout
    assert out.strip() == HOST_ETH1


def _doctor_finds_the_managed_plugin(lab: Lab) -> None:
    """``multinic doctor`` on the host (not inside the plugin) finds the managed plugin's socket and its
    state directory on its own, and reads the plugin's health through that socket."""
    proc = lab.multinic("doctor", "--json", own_state=False, timeout=120)
    report = json.loads(proc.stdout)
    plugin_id = lab.docker("plugin", "inspect", "-f", "{{.Id}}", NAME).stdout.strip()
    assert report["socket"] == f"/run/docker/plugins/{plugin_id}/multinic.sock", report
    assert report["state_dir"] == STATE, report
    checks = {c["check"]: c for c in report["checks"]}
    assert checks["health"]["status"] == "ok", checks["health"]
    assert checks["instances"]["status"] == "ok", checks["instances"]


# -- tests ---------------------------------------------------------------------------------------------
def test_install_from_registry_on_a_pristine_host(lab: Lab, pristine: Lab) -> None:
    assert not lab.host_path(STATE).exists() and not lab.host_path(XTABLES_LOCK).exists()
    assert _rp_filter(lab) == "1"
    before = lab.dump_host_state()
    _install(lab)
    assert lab.docker("plugin", "inspect", "-f", "{{.Enabled}}", NAME).stdout.strip() == "true"
    lab.serve_peer_echo(lab.c1_ns, 7080)
    with containers(lab) as names:
        with network(lab, "front", "--ipv6", "--opt", "parent=eth1", "--subnet", "10.70.0.0/24", "--subnet",
                     "fd00:70::/64", driver=NAME):
            assert _rp_filter(lab) == "2"  # written over netlink: the plugin's /proc/sys is read-only
            # IPv6 settings have no netlink setter: written through the host's procfs (pidhost)
            assert lab.host("sysctl", "-n", "net.ipv6.conf.all.forwarding").stdout.strip() == "1"
            run(lab, names, "web", "--network", "front", "--restart", "always", "-p", "4070:80",
                cmd=web_cmd("hello-v1"))
            _seed_case(lab, 4070, "hello-v1", "web")

            # gw_priority across two multinic networks: "aaa" sorts first, "zzz" has the priority.
            with network(lab, "aaa", "--subnet", "10.71.0.0/24", driver=NAME), \
                    network(lab, "zzz", "--opt", "parent=eth1", "--opt", "gw_priority=10", "--subnet",
                            "10.72.0.0/24", driver=NAME):
                run(lab, names, "gw", "--network", "aaa")
                lab.docker("network", "connect", "zzz", "gw")
                assert wait_for(lambda: _route_via(lab, "gw") == "10.72.0.1", timeout=15), _route_via(lab, "gw")
                out = lab.docker("exec", "gw", "sh", "-c", f"nc {C1_ADDR} 7080 </dev/null").stdout
                assert out.strip() == HOST_ETH1  # c1 is only reachable through eth1: zzz carries the route
                lab.docker("rm", "-f", "gw")

            # A reboot: dockerd stops, /run and multinic's kernel objects are gone, dockerd starts again.
            lab.stop_dockerd(remove_containers=False)
            lab.reboot_wipe()
            lab.start_dockerd()
            assert lab.docker("plugin", "inspect", "-f", "{{.Enabled}}", NAME).stdout.strip() == "true"
            _seed_case(lab, 4070, "hello-v1", "web")  # --restart always brought it back, on eth1

            # Upgrade to a second tag while the network and the container (with its port) exist.
            lab.docker("plugin", "disable", "-f", NAME)
            # --skip-remote-check: the CLI otherwise asks "Plugin images do not match, are you sure?" for any
            # other tag, and without a terminal takes the answer as no (exit 0, nothing upgraded).
            upgraded = lab.docker("plugin", "upgrade", "--grant-all-permissions", "--skip-remote-check", NAME, REF2,
                                  timeout=300)
            lab.docker("plugin", "enable", NAME, timeout=120)
            described = lab.docker("plugin", "inspect", "-f", "{{.Config.Description}}", NAME).stdout
            assert "[release 2]" in described, (described, upgraded.stdout, upgraded.stderr)
            assert "front" in lab.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
            _seed_case(lab, 4070, "hello-v1", "web")
            assert (lab.host_path(STATE) / "state.json").exists()
            status = inside_managed_plugin(lab, "status")  # the recipe of docs/TROUBLESHOOTING.md
            assert "4070" in status and "10.70.0.0/24" in status, status
            _doctor_finds_the_managed_plugin(lab)
            lab.docker("rm", "-f", "web")  # before its network goes
    lab.docker("plugin", "disable", NAME)
    lab.docker("plugin", "rm", NAME)
    assert _rp_filter(lab) == "1"  # put back when the last network on eth1 went
    assert wait_for(lambda: lab.dump_host_state() == before, timeout=10), lab.dump_host_state()


def test_bare_driver_name_cannot_reach_a_managed_plugin(lab: Lab, pristine: Lab) -> None:
    """Docker registers a managed plugin's driver as NAME:TAG and looks drivers up by exact name, so
    ``-d multinic`` cannot reach a plugin installed as ``multinic`` (moby #33347's trap, network side):
    the name that works, and that the README, compose examples and messages use, is ``multinic:latest``."""
    _install(lab)
    bare = lab.docker("network", "create", "-d", "multinic", "--opt", "parent=eth1", "--subnet", "10.73.0.0/24",
                      "bare", check=False)
    assert bare.returncode != 0
    assert "could not resolve driver multinic" in bare.stderr, bare.stderr
    with network(lab, "tagged", "--opt", "parent=eth1", "--subnet", "10.73.0.0/24", driver=NAME):
        driver = lab.docker("network", "inspect", "-f", "{{.Driver}}", "tagged").stdout.strip()
        assert driver == NAME


def test_a_plugin_that_cannot_work_never_keeps_dockerd_from_starting(lab: Lab, pristine: Lab) -> None:
    """A broken setting (an unknown firewall backend) leaves the plugin serving, not dead (an enabled managed
    plugin that cannot start made dockerd 20.10 panic at its next start): the setting is replaced by its
    default, and the plugin says so as unhealthy until it is fixed (`multinic doctor` names it)."""
    _install(lab)
    with network(lab, "keep", "--opt", "parent=eth1", "--subnet", "10.74.0.0/24", driver=NAME):
        lab.docker("plugin", "disable", "-f", NAME)
        lab.docker("plugin", "set", NAME, "MULTINIC_FIREWALL=bogus")
        lab.docker("plugin", "enable", NAME, timeout=120)
        lab.stop_dockerd(remove_containers=False)
        lab.start_dockerd()  # raises if dockerd does not answer
        assert "keep" in lab.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
        lab.docker("network", "create", "-d", NAME, "--opt", "parent=eth1", "--subnet", "10.75.0.0/24", "works")
        lab.docker("network", "rm", "works")
        report = json.loads(lab.multinic("doctor", "--json", own_state=False, timeout=120).stdout)
        health = [c for c in report["checks"] if c["check"] == "health"]
        assert health[0]["status"] == "error" and "firewall backend 'bogus' unknown" in health[0]["message"], health
        lab.docker("plugin", "disable", "-f", NAME)
        lab.docker("plugin", "set", NAME, "MULTINIC_FIREWALL=")
        lab.docker("plugin", "enable", NAME, timeout=120)


def test_log_level_is_settable(lab: Lab, pristine: Lab) -> None:
    """``docker plugin set multinic:latest LOG_LEVEL=debug``: debug lines reach dockerd's log."""
    _install(lab, REF1, "LOG_LEVEL=debug")
    plugin_id = lab.docker("plugin", "inspect", "-f", "{{.Id}}", NAME).stdout.strip()
    lab.docker("network", "create", "-d", NAME, "--subnet", "10.76.0.0/24", "dbg")
    lab.docker("network", "rm", "dbg")
    assert wait_for(lambda: any(plugin_id in ln and "DEBUG" in ln for ln in lab.dockerd_log.read_text(
        errors="replace").splitlines()), timeout=10)
