"""A host whose Docker uses the legacy iptables tables: multinic detects it and writes its rules
with python-iptables (libiptc), where Docker's FORWARD chain is. Engine 20.10 only (the flavour is
the host's, not the engine's)."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import missing_prerequisite, skip_or_fail
from tests.e2e.helpers import containers, network, run, wait_for, web_cmd
from tests.lab import Lab


@pytest.fixture(scope="module")
def legacy_lab():
    reason = missing_prerequisite("20.10")
    if reason:
        skip_or_fail(reason)
    with Lab("mnleg", engine="20.10", driver="mnlegacy", iptables="legacy") as lab:
        lab.start_plugin()
        yield lab


def test_docker_and_multinic_both_on_legacy_tables(legacy_lab):
    lab = legacy_lab
    assert ":DOCKER" in lab.host("iptables-legacy-save", "-t", "filter").stdout
    assert "firewall backend: python-iptables (legacy)" in lab.plugin_log_tail(200)


def test_seed_case_on_a_legacy_host(legacy_lab):
    lab = legacy_lab
    before = lab.dump_host_state()
    lab.serve_peer_echo(lab.c1_ns, 7020)
    with network(lab, "front", "--opt", "parent=eth1", "--subnet", "10.40.0.0/24"), containers(lab) as names:
        run(lab, names, "legacy-web", "--network", "front", "-p", "4020:80", cmd=web_cmd("legacy-hello"))
        assert wait_for(lambda: lab.http_get(lab.c1_ns, "http://192.168.101.2:4020/")) == "legacy-hello\n"
        out = lab.docker("run", "--rm", "--network", "front", "mn-busybox:latest", "sh", "-c",
                         "nc 198.51.100.10 7020 </dev/null").stdout.strip()
        assert out == "192.168.101.2"
        legacy = lab.host("iptables-legacy-save").stdout
        assert "MULTINIC-FORWARD" in legacy and "--dport 4020" in legacy
        assert "MULTINIC" not in lab.host("iptables-nft-save").stdout
    assert lab.dump_host_state() == before


def test_plugin_started_before_dockerd_at_boot_opens_its_forward_drop(legacy_lab):
    """At boot the plugin starts before dockerd writes its chains (the service is ordered before
    docker.service): it still finds the legacy tables (``iptables -V``), so the FORWARD DROP policy dockerd
    sets next does not drop multinic's traffic."""
    lab = legacy_lab
    lab.serve_peer_echo(lab.c1_ns, 7021)
    with network(lab, "boot", "--opt", "parent=eth1", "--subnet", "10.41.0.0/24"), containers(lab) as names:
        lab.stop_dockerd()
        lab.stop_plugin()
        lab.reboot_wipe()
        lab.sh(lab.host_ns, """
            for t in filter nat mangle; do iptables-legacy -w -t $t -F; iptables-legacy -w -t $t -X; done
            iptables-legacy -w -P FORWARD ACCEPT
            sysctl -qw net.ipv4.ip_forward=0
        """)  # what a reboot leaves: no rule of Docker's, forwarding off
        lab.start_plugin()
        lab.start_dockerd()
        assert ":FORWARD DROP" in lab.host("iptables-legacy-save", "-t", "filter").stdout  # dockerd set it
        run(lab, names, "boot-web", "--network", "boot", "-p", "4021:80", cmd=web_cmd("boot-hello"))
        assert wait_for(lambda: lab.http_get(lab.c1_ns, "http://192.168.101.2:4021/")) == "boot-hello\n"
        out = lab.docker("run", "--rm", "--network", "boot", "mn-busybox:latest", "sh", "-c",
                         "nc 198.51.100.10 7021 </dev/null").stdout.strip()
        assert out == "192.168.101.2"
