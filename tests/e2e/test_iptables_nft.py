"""The iptables-nft backend, chosen with MULTINIC_FIREWALL=iptables-nft beside Docker's iptables-nft (on each
engine of the session): the seed case through its chains (DNAT in the endpoint's bucket, FORWARD entered from
DOCKER-USER), nothing in nftables of multinic's, and a switch back to the native backend that leaves no
chain of the other behind."""

from __future__ import annotations

from tests.e2e.helpers import containers, network, run, wait_for, web_cmd


def test_seed_case_through_iptables_nft_and_back_to_native(clean_lab):
    lab = clean_lab
    lab.stop_plugin()  # the session's plugin (if any) runs the default backend
    lab.start_plugin(env={"MULTINIC_FIREWALL": "iptables-nft"})
    before = lab.dump_host_state()
    with network(lab, "ipt", "--opt", "parent=eth1", "--subnet", "10.57.0.0/24"), containers(lab) as names:
        run(lab, names, "ipt-web", "--network", "ipt", "-p", "4057:80", cmd=web_cmd("via-iptables"))
        assert wait_for(lambda: lab.http_get(lab.c1_ns, "http://192.168.101.2:4057/")) == "via-iptables\n"
        nat = lab.host("iptables-nft-save", "-t", "nat").stdout
        assert "-A MULTINIC-DNAT-" in nat and "--dport 4057 -j DNAT" in nat
        assert "-j MULTINIC-FORWARD" in lab.host("iptables-nft", "-S", "DOCKER-USER").stdout
        assert "multinic" not in lab.host("nft", "list", "tables").stdout
        # the same host, the plugin switched to its native backend: the iptables chains go at its start
        lab.stop_plugin()
        lab.start_plugin()
        assert "firewall backend: nftables" in lab.plugin_log_tail(60)
        assert wait_for(lambda: lab.http_get(lab.c1_ns, "http://192.168.101.2:4057/")) == "via-iptables\n"
        assert "MULTINIC-DNAT" not in lab.host("iptables-nft-save", "-t", "nat").stdout
        assert "table ip multinic" in lab.host("nft", "list", "tables").stdout
    assert wait_for(lambda: lab.dump_host_state() == before, timeout=10), lab.dump_host_state()
