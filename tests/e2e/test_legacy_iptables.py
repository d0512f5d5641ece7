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
