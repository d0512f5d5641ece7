"""State survives the plugin stopping; restart reconciles the kernel from state and dockerd."""

from __future__ import annotations

from tests.e2e.helpers import containers, network, run, wait_for, web_cmd
from tests.lab import HOST6_ETH1


def test_plugin_restart_reapplies_what_others_deleted(mn):
    lab = mn
    with network(lab, "keep", "--opt", "parent=eth1", "--subnet", "10.30.0.0/24"), containers(lab) as names:
        run(lab, names, "keep-web", "--network", "keep", "-p", "4010:80", cmd=web_cmd("kept"))
        assert wait_for(lambda: lab.http_get(lab.c1_ns, "http://192.168.101.2:4010/")) == "kept\n"
        lab.stop_plugin()
        # What systemd-networkd or a cloud NIC agent does to rules and routes it does not own:
        lab.host("sh", "-c", "ip rule flush table 20000 2>/dev/null || ip rule del pref 10000; "
                             "ip route flush table 20000; ip rule del pref 10002 || true")
        lab.host("sh", "-c", "iptables -t mangle -F MULTINIC-PREROUTING")
        assert lab.http_get(lab.c1_ns, "http://192.168.101.2:4010/", timeout=2) is None
        lab.start_plugin()
        assert wait_for(lambda: lab.http_get(lab.c1_ns, "http://192.168.101.2:4010/")) == "kept\n"
        assert "lookup 20000" in lab.host("ip", "rule").stdout


def test_plugin_restart_reapplies_ipv6_what_others_deleted(mn):
    """The same for IPv6: rules, the parent's table and ip6tables chains deleted behind the plugin's back,
    and the IPv6 forwarding a tool turned off, are back after a restart."""
    lab = mn
    url = f"http://[{HOST6_ETH1}]:4011/"
    with network(lab, "keep6", "--ipv6", "--opt", "parent=eth1", "--subnet", "10.32.0.0/24", "--subnet",
                 "fd00:32::/64"), containers(lab) as names:
        run(lab, names, "keep6-web", "--network", "keep6", "-p", "4011:80", cmd=web_cmd("kept6"))
        assert wait_for(lambda: lab.http_get(lab.c1_ns, url)) == "kept6\n"
        lab.stop_plugin()
        lab.host("sh", "-c", "while ip -6 rule del proto 211 2>/dev/null; do :; done; "
                             "ip -6 route flush table all proto 211; ip6tables -t mangle -F MULTINIC-PREROUTING; "
                             "ip6tables -t nat -F MULTINIC-SNAT")
        assert lab.http_get(lab.c1_ns, url, timeout=2) is None
        lab.start_plugin()
        assert wait_for(lambda: lab.http_get(lab.c1_ns, url)) == "kept6\n"
        assert "lookup 20000" in lab.host("ip", "-6", "rule").stdout


def test_plugin_restart_keeps_running_containers_working(mn):
    lab = mn
    lab.serve_peer_echo(lab.c1_ns, 7010)
    with network(lab, "live", "--opt", "parent=eth1", "--subnet", "10.31.0.0/24"), containers(lab) as names:
        run(lab, names, "live1", "--network", "live")
        lab.stop_plugin()
        lab.start_plugin()
        out = lab.docker("exec", "live1", "sh", "-c", "nc 198.51.100.10 7010 </dev/null").stdout.strip()
        assert out == "192.168.101.2"
        # and the plugin still serves new containers on the network it knew before the restart
        run(lab, names, "live2", "--network", "live")
        out = lab.docker("exec", "live2", "sh", "-c", "nc 198.51.100.10 7010 </dev/null").stdout.strip()
        assert out == "192.168.101.2"


def test_ghost_endpoint_of_a_container_removed_while_the_plugin_was_down_is_collected(mn):
    """dockerd only logs a failed Leave/DeleteEndpoint: the plugin must notice by itself that the
    endpoint is gone, or its DNAT keeps pointing at an address IPAM hands to the next container."""
    lab = mn
    lab.stop_plugin()
    lab.start_plugin(env={"MULTINIC_GC_INTERVAL": "2", "MULTINIC_GC_GRACE": "1"})
    try:
        with network(lab, "ghostnet", "--opt", "parent=eth1", "--subnet", "10.43.0.0/24"), \
                containers(lab) as names:
            run(lab, names, "ghost", "--network", "ghostnet", "-p", "4060:80", cmd=web_cmd("ghost"))
            # the whole nat table: the rule is in the endpoint's MULTINIC-DNAT-xx bucket
            assert "--dport 4060" in lab.host("iptables", "-t", "nat", "-S").stdout
            lab.stop_plugin()
            lab.docker("rm", "-f", "ghost", timeout=180)  # dockerd retries the plugin ~30 s, then gives up
            lab.start_plugin(env={"MULTINIC_GC_INTERVAL": "2", "MULTINIC_GC_GRACE": "1"})
            assert wait_for(lambda: "--dport 4060" not in lab.host("iptables", "-t", "nat", "-S").stdout,
                            timeout=20)
            # and the port is free again
            run(lab, names, "ghost2", "--network", "ghostnet", "-p", "4060:80", cmd=web_cmd("again"))
            assert wait_for(lambda: lab.http_get(lab.c1_ns, "http://192.168.101.2:4060/")) == "again\n"
    finally:
        lab.stop_plugin()  # the next test's `mn` starts it again with the defaults
