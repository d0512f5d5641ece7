"""Issue 3 end to end: published ports on the parent NIC, replies leave the way they came."""

from __future__ import annotations

import socket

from tests.e2e.helpers import (
    HOST_PYTHON,
    across_two_networks,
    containers,
    network,
    run,
    status,
    udp_echo_cmd,
    udp_roundtrip,
    wait_for,
    web_cmd,
)


def test_seed_case_client_behind_eth1_gets_the_page(mn):
    """docker-over-multiple-interfaces.txt: -p 4000:80 reached through eth1 while main default is eth0."""
    lab = mn
    assert "default via 192.168.100.1 dev eth0" in lab.host("ip", "route").stdout
    with network(lab, "front", "--opt", "parent=eth1", "--subnet", "10.20.0.0/24"), containers(lab) as names:
        run(lab, names, "seed-web", "--network", "front", "-p", "4000:80", cmd=web_cmd("seed-hello"))
        assert wait_for(lambda: lab.http_get(lab.c1_ns, "http://192.168.101.2:4000/")) == "seed-hello\n"
        # Published on eth1 only, not on eth0's address.
        assert lab.http_get(lab.c0_ns, "http://192.168.100.2:4000/", timeout=2) is None


def test_seed_case_fails_with_dockers_bridge_driver(mn):
    """The "before": Docker's own bridge answers via the main default route, and r0 drops it."""
    lab = mn
    with network(lab, "plainbr", "--subnet", "10.21.0.0/24", driver="bridge"), containers(lab) as names:
        run(lab, names, "bridge-web", "--network", "plainbr", "-p", "4001:80", cmd=web_cmd("bridge-hello"))
        assert wait_for(lambda: lab.http_get(lab.c0_ns, "http://192.168.100.2:4001/")) == "bridge-hello\n"
        assert lab.http_get(lab.c1_ns, "http://192.168.101.2:4001/", timeout=3) is None


def test_udp_range_and_publish_all(mn):
    lab = mn
    with network(lab, "udpnet", "--opt", "parent=eth1", "--subnet", "10.22.0.0/24"), containers(lab) as names:
        # a udp echo on 90 (host python3 mounted), an httpd exposed with -P.
        run(lab, names, "udp-echo", "--network", "udpnet", "-p", "9000-9001:90/udp", *HOST_PYTHON,
            cmd=udp_echo_cmd(90))
        run(lab, names, "publish-all", "--network", "udpnet", "-P", "--expose", "80", cmd=web_cmd("all-hello"))
        ports = status(lab)["ports"]
        udp = [p for p in ports if p["container"] == "udp-echo"]
        assert len(udp) == 1 and udp[0]["proto"] == "udp"
        host_port = int(udp[0]["host"].rsplit(":", 1)[1])
        assert host_port in (9000, 9001)
        assert udp_roundtrip(lab.c1_ns, "192.168.101.2", host_port)
        web = [p for p in ports if p["container"] == "publish-all"]
        assert len(web) == 1 and web[0]["container_port"].endswith(":80/tcp")
        eph = int(web[0]["host"].rsplit(":", 1)[1])
        assert eph >= 1024
        assert lab.http_get(lab.c1_ns, f"http://192.168.101.2:{eph}/") == "all-hello\n"


def test_hairpin_from_host_and_from_another_container(mn):
    lab = mn
    with network(lab, "hairnet", "--opt", "parent=eth1", "--subnet", "10.23.0.0/24"), \
            network(lab, "otherbr", "--subnet", "10.24.0.0/24", driver="bridge"), containers(lab) as names:
        run(lab, names, "hair-web", "--network", "hairnet", "-p", "4002:80", cmd=web_cmd("hair-hello"))
        run(lab, names, "hair-same", "--network", "hairnet")
        run(lab, names, "hair-other", "--network", "otherbr")
        assert wait_for(lambda: lab.http_get(lab.host_ns, "http://192.168.101.2:4002/")) == "hair-hello\n"
        for client in ("hair-same", "hair-other", "hair-web"):
            out = lab.docker("exec", client, "sh", "-c", "timeout 5 wget -qO- http://192.168.101.2:4002/",
                             check=False)
            assert out.stdout == "hair-hello\n", (client, out.stderr)


def test_conflicting_host_port_refused_naming_the_port(mn):
    lab = mn
    with network(lab, "confnet", "--opt", "parent=eth1", "--subnet", "10.25.0.0/24"), containers(lab) as names:
        run(lab, names, "conf-a", "--network", "confnet", "-p", "4003:80", cmd=web_cmd("a"))
        before = lab.dump_host_state()
        names.append("conf-b")
        proc = lab.docker("run", "-d", "--name", "conf-b", "--network", "confnet", "-p", "4003:80",
                          "mn-busybox:latest", "sleep", "60", check=False)
        assert proc.returncode != 0
        assert "4003/tcp" in proc.stderr and "already published" in proc.stderr, proc.stderr
        assert lab.dump_host_state() == before
        # a port held by Docker's own bridge driver (docker-proxy) is refused too
        with network(lab, "confbr", "--subnet", "10.26.0.0/24", driver="bridge"):
            run(lab, names, "conf-c", "--network", "confbr", "-p", "4004:80", cmd=web_cmd("c"))
            names.append("conf-d")
            proc = lab.docker("run", "-d", "--name", "conf-d", "--network", "confnet", "-p", "4004:80",
                              "mn-busybox:latest", "sleep", "60", check=False)
            assert proc.returncode != 0 and "4004/tcp" in proc.stderr, proc.stderr
            lab.docker("rm", "-f", "conf-c", "conf-d", check=False)


def test_ports_gone_after_container_and_network_rm(mn):
    lab = mn
    before = lab.dump_host_state()
    with network(lab, "gonenet", "--opt", "parent=eth1", "--subnet", "10.27.0.0/24"), containers(lab) as names:
        run(lab, names, "gone-web", "--network", "gonenet", "-p", "4005:80", "-p", "9005:90/udp",
            cmd=web_cmd("gone"))
        assert "4005" in lab.dump_host_state()
        lab.docker("rm", "-f", "gone-web")
        assert "4005" not in lab.dump_host_state()
        assert not [p for p in status(lab)["ports"] if p["container"] == "gone-web"]
    assert lab.dump_host_state() == before


def test_status_shows_ports_docker_ps_cannot(mn):
    lab = mn
    with network(lab, "statnet", "--opt", "parent=eth1", "--subnet", "10.28.0.0/24"), containers(lab) as names:
        run(lab, names, "stat-web", "--network", "statnet", "-p", "4006:80", cmd=web_cmd("s"))
        rows = [p for p in status(lab)["ports"] if p["container"] == "stat-web"]
        assert rows and rows[0]["host"] == "192.168.101.2:4006" and rows[0]["network"] == "statnet"
        from tests.e2e.helpers import multinic

        text = multinic(lab, "status", "--socket", lab.plugin_socket).stdout
        assert "stat-web" in text and "192.168.101.2:4006" in text


del socket


def test_reply_leaves_by_parent_when_another_network_is_the_gateway(mn):
    """Issue 3: the container's default route goes through another network (higher gw_priority,
    parent eth0); a client behind eth1 still gets its replies through eth1."""
    lab = mn
    with network(lab, "zz_back", "--opt", "parent=eth0", "--opt", "gw_priority=10", "--subnet", "10.32.0.0/24"), \
            network(lab, "aa_front", "--opt", "parent=eth1", "--subnet", "10.33.0.0/24"), containers(lab) as names:
        run(lab, names, "multi-web", "--network", "zz_back", "-p", "4007:80", cmd=web_cmd("multi"))
        lab.docker("network", "connect", "aa_front", "multi-web")
        route = wait_for(lambda: "10.32.0.1" in lab.docker("exec", "multi-web", "ip", "route", "get",
                                                           "198.18.0.1").stdout)
        assert route, lab.docker("exec", "multi-web", "ip", "route", "get", "198.18.0.1").stdout
        assert wait_for(lambda: lab.http_get(lab.c1_ns, "http://192.168.101.2:4007/")) == "multi\n"
        assert wait_for(lambda: lab.http_get(lab.c0_ns, "http://192.168.100.2:4007/")) == "multi\n"


def test_host_ip_given_publishes_only_there_and_foreign_address_refused(mn):
    lab = mn
    with network(lab, "hipnet", "--opt", "parent=eth1", "--subnet", "10.34.0.0/24"), containers(lab) as names:
        # eth0's address given explicitly on a network bound to eth1: the user's HostIP wins (replies to what
        # enters by eth0 follow main).
        run(lab, names, "hip-web", "--network", "hipnet", "-p", "192.168.100.2:4012:80", cmd=web_cmd("hip"))
        assert wait_for(lambda: lab.http_get(lab.c0_ns, "http://192.168.100.2:4012/")) == "hip\n"
        assert lab.http_get(lab.c1_ns, "http://192.168.101.2:4012/", timeout=2) is None
        before = lab.dump_host_state()
        names.append("hip-bad")
        proc = lab.docker("run", "-d", "--name", "hip-bad", "--network", "hipnet", "-p", "10.9.9.9:4013:80",
                          "mn-busybox:latest", "sleep", "60", check=False)
        assert proc.returncode != 0, proc.stdout
        for words in ("-p 10.9.9.9:4013:80/tcp", "10.9.9.9 is not an address of this host"):
            assert words in proc.stderr, proc.stderr
        assert lab.dump_host_state() == before


def test_sctp_port_is_published(mn):
    lab = mn
    with network(lab, "sctpnet", "--opt", "parent=eth1", "--subnet", "10.35.0.0/24"), containers(lab) as names:
        run(lab, names, "sctp-c", "--network", "sctpnet", "-p", "4014:80/sctp")
        rows = [p for p in status(lab)["ports"] if p["container"] == "sctp-c"]
        assert rows and rows[0]["proto"] == "sctp" and rows[0]["host"] == "192.168.101.2:4014"
        assert ("sctp", "192.168.101.2", 4014) in lab.published_ports()


def test_container_on_two_networks_of_one_parent_keeps_its_ports(mn):
    """dockerd sends the whole port map to every Join: the second endpoint's is not a conflict."""
    lab = mn
    with network(lab, "two_a", "--opt", "parent=eth1", "--subnet", "10.36.0.0/24"), \
            network(lab, "two_b", "--opt", "parent=eth1", "--subnet", "10.37.0.0/24"), containers(lab) as names:
        run(lab, names, "two-web", "--network", "two_a", "-p", "4050:80", cmd=web_cmd("two"))
        lab.docker("network", "connect", "two_b", "two-web")
        assert wait_for(lambda: lab.http_get(lab.c1_ns, "http://192.168.101.2:4050/")) == "two\n"
        lab.docker("network", "disconnect", "two_b", "two-web")
        assert wait_for(lambda: lab.http_get(lab.c1_ns, "http://192.168.101.2:4050/")) == "two\n"


def test_published_ports_across_two_multinic_networks_both_ways(mn):
    lab = mn
    with across_two_networks(lab, "cross", ("10.38.0.0/24", "10.39.0.0/24"), (4051, 4052)):
        pass  # each reached the other's published port, never its address


def test_host_ip_any_and_loopback(mn):
    lab = mn
    with network(lab, "anynet", "--opt", "parent=eth1", "--subnet", "10.42.0.0/24"), containers(lab) as names:
        run(lab, names, "any-web", "--network", "anynet", "-p", "0.0.0.0:4053:80", cmd=web_cmd("any"))
        assert wait_for(lambda: lab.http_get(lab.c1_ns, "http://192.168.101.2:4053/")) == "any\n"
        names.append("lo-web")
        proc = lab.docker("run", "-d", "--name", "lo-web", "--network", "anynet", "-p", "127.0.0.1:4054:80",
                          "mn-busybox:latest", "sleep", "60", check=False)
        assert proc.returncode != 0 and "127.0.0.1 is a loopback address" in proc.stderr, proc.stderr
