"""`docker plugin create` + `enable`: multinic as a managed (v2) plugin, built from config.json and a
rootfs made by scripts/build-managed-plugin.sh (debootstrap + wheels; no registry)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.e2e.helpers import network, wait_for, web_cmd

REPO = Path(__file__).resolve().parents[2]
PLUGIN = "multinic-managed:latest"


@pytest.fixture(scope="session")
def plugin_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("managed") / "plugin"
    proc = subprocess.run(["bash", str(REPO / "scripts/build-managed-plugin.sh"), str(out)], capture_output=True,
                          text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_managed_plugin_serves_the_seed_case(lab, plugin_dir):
    # One multinic per host: the legacy plugin of the other tests would reconcile the managed one's
    # bridge away as "not in its state".
    lab.stop_plugin()
    before = lab.dump_host_state()
    state = lab.dir / "managed-state"
    state.mkdir(exist_ok=True)
    lab.docker("plugin", "create", PLUGIN, str(plugin_dir), timeout=600)
    try:
        lab.docker("plugin", "set", PLUGIN, f"docker-socket.source={lab.docker_sock}", f"state.source={state}")
        lab.docker("plugin", "enable", PLUGIN, timeout=120)
        lab.serve_peer_echo(lab.c1_ns, 7040)
        with network(lab, "managed", "--opt", "parent=eth1", "--subnet", "10.60.0.0/24", driver=PLUGIN):
            try:
                lab.docker("run", "-d", "--name", "managed-web", "--network", "managed", "-p", "4040:80",
                           "mn-busybox:latest", *web_cmd("managed-hello"))
                assert wait_for(lambda: lab.http_get(lab.c1_ns, "http://192.168.101.2:4040/")) == "managed-hello\n"
                out = lab.docker("exec", "managed-web", "sh", "-c", "nc 198.51.100.10 7040 </dev/null").stdout
                assert out.strip() == "192.168.101.2"
            finally:
                lab.docker("rm", "-f", "managed-web", check=False)
        assert (state / "state.json").exists()
    finally:
        lab.docker("plugin", "disable", "-f", PLUGIN, check=False)
        lab.docker("plugin", "rm", "-f", PLUGIN, check=False)
        lab.stop_background()
    assert wait_for(lambda: lab.dump_host_state() == before, timeout=10)
