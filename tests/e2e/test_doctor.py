"""Issue 15 end to end: `multinic doctor` against a real dockerd and plugin in the lab, and the Prometheus
metrics of a real `multinic serve --metrics-address` moved by real docker commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from tests.e2e.helpers import containers, multinic, network, run, wait_for, web_cmd
from tests.nsutil import in_netns

METRICS_PORT = 19329


def doctor(lab, *args: str, env: dict | None = None) -> tuple[int, dict[str, list[dict]]]:
    if env:
        proc = lab.multinic("doctor", "--json", "--socket", lab.plugin_socket, *args, env=env, timeout=120)
    else:
        proc = multinic(lab, "doctor", "--json", "--socket", lab.plugin_socket, *args)
    assert proc.stdout, proc.stderr
    data = json.loads(proc.stdout)
    assert data["exit_code"] == proc.returncode
    out: dict[str, list[dict]] = {}
    for c in data["checks"]:
        out.setdefault(c["check"], []).append(c)
    return proc.returncode, out


def status_of(checks: dict, name: str) -> str:
    return max((c["status"] for c in checks[name]), key=["skip", "ok", "warn", "error"].index)


def test_healthy_lab_passes_every_check(mn):
    lab = mn
    with network(lab, "docnet", "--opt", "parent=eth1", "--subnet", "10.50.0.0/24"), containers(lab) as names:
        run(lab, names, "doc-web", "--network", "docnet", "-p", "4050:80", cmd=web_cmd("doc"))
        assert wait_for(lambda: lab.http_get(lab.c1_ns, "http://192.168.101.2:4050/")) == "doc\n"
        code, checks = doctor(lab)
        bad = {k: v for k, v in checks.items() if status_of(checks, k) not in ("ok", "skip")}
        assert code == 0 and not bad, bad
        assert lab.server_version in checks["docker"][0]["message"]
        assert "eth1: up, 192.168.101.2/24, gateway 192.168.101.1" in checks["parent"][0]["message"]
        assert "1 network(s), 1 endpoint(s)" in checks["ghosts"][0]["message"]
        text = multinic(lab, "doctor", "--socket", lab.plugin_socket)
        assert text.returncode == 0 and "[ok  ] forward" in text.stdout and "exit 0" in text.stdout


def test_docker_unreachable_is_an_error_with_its_fix(mn):
    code, checks = doctor(mn, env={"DOCKER_HOST": f"unix://{mn.dir}/nothing.sock"})
    assert code == 2
    assert checks["docker"][0]["status"] == "error" and "nothing.sock" in checks["docker"][0]["message"]
    assert "DOCKER_HOST" in checks["docker"][0]["fix"]
    assert checks["ghosts"][0]["status"] == "skip"


def test_ghosts_both_ways_are_named_and_their_fixes_work(mn):
    lab = mn
    state = lab.state_dir / "state.json"
    # 1. a network in multinic's state that dockerd no longer has (a state restored from before its removal)
    lab.docker("network", "create", "-d", lab.driver, "--opt", "parent=eth1", "--subnet", "10.51.0.0/24", "gone")
    net_id = lab.docker("network", "inspect", "-f", "{{.Id}}", "gone").stdout.strip()
    saved = state.read_text()
    lab.docker("network", "rm", "gone")
    lab.stop_plugin()
    state.write_text(saved)
    code, checks = doctor(lab)
    ghost = next(c for c in checks["ghosts"] if "no longer has" in c["message"])
    assert ghost["status"] == "warn" and net_id[:12] in ghost["message"] and "restart the plugin" in ghost["fix"]
    assert checks["socket"][0]["status"] == "error"  # and the plugin is not serving
    lab.start_plugin()  # the fix
    code, checks = doctor(lab)
    assert status_of(checks, "ghosts") == "ok", checks["ghosts"]
    # 2. a Docker network of multinic that a state file does not know (the plugin pointed at another state
    # directory, or an old copy restored by hand). A *missing* state is rebuilt instead (test_safe_host.py).
    older = state.read_text()
    lab.docker("network", "create", "-d", lab.driver, "--opt", "parent=eth1", "--subnet", "10.52.0.0/24", "lost")
    lab.stop_plugin()
    state.write_text(older)
    lab.start_plugin()
    try:
        code, checks = doctor(lab)
        ghost = next(c for c in checks["ghosts"] if c["status"] == "error")
        assert code == 2 and f"lost ({lab.driver})" in ghost["message"]
        assert ghost["fix"].startswith("docker network rm lost")
    finally:
        lab.docker("network", "rm", "lost", check=False)  # the fix
    code, checks = doctor(lab)
    assert status_of(checks, "ghosts") == "ok", checks["ghosts"]


def test_a_second_multinic_in_the_same_host_is_an_error(mn):
    lab = mn
    sock = lab.host_path(f"/run/docker/plugins/{lab.driver}x.sock")
    env = lab.plugin_env({"MULTINIC_STATE_DIR": f"{lab.dir}/state2"})
    second = subprocess.Popen([*lab.nsenter(lab.host_ns), sys.executable, "-m", "plugin",
                               "serve", "--socket", f"/run/docker/plugins/{lab.driver}x.sock"], env=env,
                              cwd=str(lab.plugin_root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        assert wait_for(lambda: os.path.exists(sock), timeout=30)
        code, checks = doctor(lab)
        inst = checks["instances"][0]
        assert code == 2 and inst["status"] == "error" and f"pid {second.pid}" in inst["message"]
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(timeout=30)
        if os.path.exists(sock):
            os.unlink(sock)
    code, checks = doctor(lab)
    assert checks["instances"][0]["status"] == "ok"


# -- metrics --------------------------------------------------------------------------------------
def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


def scrape(lab) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    text = in_netns(lab.host_ns, _scrape, METRICS_PORT)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def count(m: dict, verb: str) -> float:
    return m.get(("multinic_verb_duration_seconds_count", (("verb", verb),)), 0)


def test_metrics_move_with_real_docker_commands(clean_lab):
    lab = clean_lab
    lab.stop_plugin()  # the session's plugin (if any) runs without metrics
    lab.start_plugin(env={"MULTINIC_METRICS_ADDRESS": f"127.0.0.1:{METRICS_PORT}"})
    assert wait_for(lambda: _try_scrape(lab), timeout=20)
    before = scrape(lab)
    with network(lab, "metnet", "--opt", "parent=eth1", "--subnet", "10.53.0.0/24"), containers(lab) as names:
        run(lab, names, "met-web", "--network", "metnet", "-p", "4053:80", cmd=web_cmd("met"))
        assert wait_for(lambda: lab.http_get(lab.c1_ns, "http://192.168.101.2:4053/")) == "met\n"
        bad = lab.docker("network", "create", "-d", lab.driver, "--opt", "parent=nosuch0", "--subnet",
                         "10.54.0.0/24", "metbad", check=False)
        assert bad.returncode != 0 and "parent=nosuch0" in bad.stderr
        m = scrape(lab)
        for verb in ("CreateNetwork", "CreateEndpoint", "Join", "ProgramExternalConnectivity"):
            assert count(m, verb) > count(before, verb), verb
        assert m[("multinic_verb_errors_total", (("kind", "refused"), ("verb", "CreateNetwork")))] >= 1
        assert m[("multinic_networks", (("mode", "masquerade"),))] == 1
        assert m[("multinic_endpoints", ())] == 1
        assert m[("multinic_published_ports", (("proto", "tcp"),))] == 1
        backend = "legacy" if lab.iptables == "legacy" else "nftables"  # native wherever Docker is on nf_tables
        assert m[("multinic_firewall_backend_info", (("backend", backend),))] == 1
        # the watcher's decision for the container shows up by the source that chose its gateway
        assert wait_for(lambda: sum(v for (n, _), v in scrape(lab).items() if n == "multinic_gateway_decisions") >= 1,
                        timeout=20)
        # what networkd does to our rules: the healer repairs it and counts it
        lab.host("sh", "-c", "ip rule del pref 10002 from 10.53.0.0/24")
        assert wait_for(lambda: scrape(lab).get(("multinic_healer_repairs_total", (("kind", "rule"),)), 0) >= 1,
                        timeout=30)
    m = scrape(lab)
    assert count(m, "DeleteNetwork") >= 1 and m[("multinic_networks", (("mode", "masquerade"),))] == 0
    assert m[("multinic_published_ports", (("proto", "tcp"),))] == 0


def _try_scrape(lab):
    try:
        return scrape(lab)
    except Exception:  # noqa: BLE001 - not listening yet
        time.sleep(0.2)
        return None


def test_firewall_flavour_other_than_dockers_on_a_legacy_host():
    """A host whose Docker writes the legacy tables: doctor agrees with the detected backend, and names a
    multinic forced onto nf_tables (rules Docker's FORWARD never sees) with the setting that fixes it."""
    from tests.e2e.conftest import own_lab

    with own_lab("lg", "20.10", iptables="legacy") as lab:
        lab.start_plugin()
        try:
            with network(lab, "legnet", "--opt", "parent=eth1", "--subnet", "10.55.0.0/24"):
                code, checks = doctor(lab)
                assert checks["iptables_flavour"][0]["status"] == "ok", checks["iptables_flavour"]
                assert "Docker uses iptables-legacy" in checks["iptables_flavour"][0]["message"]
                assert code == 0, {k: v for k, v in checks.items() if status_of(checks, k) != "ok"}
            lab.stop_plugin()
            lab.start_plugin(env={"MULTINIC_FIREWALL": "nft"})
            with network(lab, "nftnet", "--opt", "parent=eth1", "--subnet", "10.56.0.0/24"):
                code, checks = doctor(lab, env={"MULTINIC_FIREWALL": "nft"})
                flavour = checks["iptables_flavour"][0]
                assert code == 2 and flavour["status"] == "error"
                assert "Docker uses iptables-legacy, multinic's chains are in iptables-nft" in flavour["message"]
                assert "MULTINIC_FIREWALL=legacy" in flavour["fix"]
        finally:
            lab.stop_plugin()
