"""Issue 21 end to end: IPv6 dual stack on multinic networks, on a host whose IPv6 default routes come from
router advertisements (radvd on the lab's routers, next hops link-local as on real hosts).

c1 (2001:db8:198::10) is reachable only through eth1's router: an answer that leaves by eth0 is lost,
exactly as in the IPv4 seed case.
"""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from tests.e2e.conftest import skip_or_fail
from tests.e2e.helpers import (
    COMPOSE,
    HOST_PYTHON,
    IMAGE,
    compose,
    containers,
    network,
    run,
    status,
    udp_echo_cmd,
    udp_roundtrip,
    wait_for,
    web_cmd,
)
from tests.lab import C0_ADDR6, C1_ADDR6, HOST6_ETH0, HOST6_ETH1, ROUTER_LL
from tests.lab.plugin import stop_group

DUAL = ("--ipv6", "--opt", "parent=eth1")


def url(address: str, port: int) -> str:
    return f"http://[{address}]:{port}/"


def egress6(lab, ctr: str, port: int = 7070) -> str:
    """The address c1 (behind eth1's router only) sees a container's IPv6 connection come from."""
    out = lab.docker("exec", ctr, "sh", "-c", f"nc -w 3 {C1_ADDR6} {port} </dev/null", check=False)
    return out.stdout.strip()


def ra_defaults(lab) -> str:
    return lab.host("ip", "-6", "route", "show", "default").stdout


@pytest.fixture(scope="module")
def echo6(lab):
    """IPv6 echo servers on c1 (:7070) and c0 (:7071), for the module."""
    servers = [lab.serve_peer_echo(lab.c1_ns, 7070, "::"), lab.serve_peer_echo(lab.c0_ns, 7071, "::")]
    yield
    for proc in servers:
        stop_group(proc, 5)


@pytest.fixture
def c1_echo6(mn, echo6):
    return mn


def test_dual_stack_seed_case_egress_and_hairpin(c1_echo6):
    lab = c1_echo6
    with network(lab, "front6", *DUAL, "--subnet", "10.70.0.0/24", "--subnet", "fd00:70::/64"), \
            containers(lab) as names:
        run(lab, names, "web6", "--network", "front6", "-p", "4070:80", "-p", f"[{HOST6_ETH1}]:4071:80",
            cmd=web_cmd("hello6"))
        run(lab, names, "peer6", "--network", "front6")
        # docker inspect shows the container's own IPv6 address
        settings = lab.inspect("web6")["NetworkSettings"]["Networks"]["front6"]
        assert settings["GlobalIPv6Address"] == "fd00:70::2" and settings["IPv6Gateway"] == "fd00:70::1"
        # The seed case in IPv6: c1 reaches the port on eth1's IPv6 address, the reply leaves by eth1.
        assert wait_for(lambda: lab.http_get(lab.c1_ns, url(HOST6_ETH1, 4070))) == "hello6\n"
        assert lab.http_get(lab.c1_ns, url(HOST6_ETH1, 4071)) == "hello6\n"
        assert lab.http_get(lab.c1_ns, "http://192.168.101.2:4070/") == "hello6\n"  # and IPv4 beside it
        assert lab.http_get(lab.c0_ns, url(HOST6_ETH0, 4070), timeout=2) is None  # published on eth1 only
        # Egress by eth1 with eth1's IPv6 address (masqueraded to the parent's stable address)
        assert egress6(lab, "web6") == HOST6_ETH1
        # Hairpin from the host and from a sibling container
        assert lab.http_get(lab.host_ns, url(HOST6_ETH1, 4070)) == "hello6\n"
        got = lab.docker("exec", "peer6", "sh", "-c", f"timeout 5 wget -qO- {url(HOST6_ETH1, 4070)}", check=False)
        assert got.stdout == "hello6\n", got.stderr
        # multinic status shows both families; the default backend beside Docker's iptables-nft is the native
        # one: IPv6 in its table ip6 multinic
        shown = status(lab)
        assert shown["firewall"] == "nftables" and "table ip6 multinic" in lab.host("nft", "list", "tables").stdout
        rows = {p["host"] for p in shown["ports"] if p["container"] == "web6"}
        assert {f"[{HOST6_ETH1}]:4070", "192.168.101.2:4070", f"[{HOST6_ETH1}]:4071"} <= rows


def test_a_users_ipv6_drop_holds_for_multinic_ports(c1_echo6):
    """docs/RESTRICTING.md in IPv6: in ip6tables' DOCKER-USER where Docker keeps one (Engine 27+), else in
    ip6tables' FORWARD (20.10); removing the rule gives the port back. doctor checks the IPv6 order."""
    lab = c1_echo6
    docker_user = lab.host("ip6tables", "-S", "DOCKER-USER", check=False).returncode == 0
    assert docker_user == (lab.engine != "20.10")  # Engine 27+ keeps an IPv6 DOCKER-USER
    drop = ("DOCKER-USER" if docker_user else "FORWARD", "-s", f"{C1_ADDR6}/128", "-j", "DROP")
    with network(lab, "drop6", *DUAL, "--subnet", "10.74.0.0/24", "--subnet", "fd00:74::/64"), \
            containers(lab) as names:
        run(lab, names, "web-drop6", "--network", "drop6", "-p", "4074:80", cmd=web_cmd("drop6"))
        assert wait_for(lambda: lab.http_get(lab.c1_ns, url(HOST6_ETH1, 4074))) == "drop6\n"
        lab.host("ip6tables", "-I", *drop)
        try:
            assert lab.http_get(lab.c1_ns, url(HOST6_ETH1, 4074), timeout=2) is None
            checks = {c["check"]: c for c in json.loads(lab.multinic(
                "doctor", "--json", "--socket", lab.plugin_socket, timeout=120).stdout)["checks"]}
            assert checks["forward6"]["status"] == "ok", checks["forward6"]
            if docker_user:
                assert "after your 1 rule(s)" in checks["forward6"]["message"], checks["forward6"]
        finally:
            lab.host("ip6tables", "-D", *drop, check=False)
        assert wait_for(lambda: lab.http_get(lab.c1_ns, url(HOST6_ETH1, 4074), timeout=2)) == "drop6\n"


def test_bridge_driver_before_fails_and_isolation_from_it(c1_echo6):
    """The "before": Docker's own IPv6 bridge answers c1 by the main default route (eth0's router,
    which has no route to c1). Its containers and multinic's cannot reach each other over IPv6."""
    lab = c1_echo6
    try:
        with network(lab, "plain6", "--ipv6", "--subnet", "10.71.0.0/24", "--subnet", "fd00:71::/64",
                     driver="bridge"), \
                network(lab, "iso6a", *DUAL, "--subnet", "10.72.0.0/24", "--subnet", "fd00:72::/64"), \
                network(lab, "iso6b", *DUAL, "--subnet", "10.73.0.0/24", "--subnet", "fd00:73::/64"), \
                containers(lab) as names:
            run(lab, names, "bridge6", "--network", "plain6", "-p", "4072:80", cmd=web_cmd("bridge6"))
            run(lab, names, "iso-a", "--network", "iso6a", cmd=web_cmd("a"))
            run(lab, names, "iso-b", "--network", "iso6b", cmd=web_cmd("b"))
            assert wait_for(lambda: lab.http_get(lab.c0_ns, url(HOST6_ETH0, 4072))) == "bridge6\n"
            assert lab.http_get(lab.c1_ns, url(HOST6_ETH1, 4072), timeout=3) is None
            for client, target in (("iso-a", "fd00:73::2"), ("iso-a", "fd00:71::2"), ("bridge6", "fd00:72::2")):
                got = lab.docker("exec", client, "sh", "-c", f"timeout 3 wget -qO- {url(target, 80)}", check=False)
                assert got.returncode != 0 and not got.stdout, (client, target, got.stdout)
    finally:
        # Docker turned IPv6 forwarding on for its bridge, which made the host drop its router-advertised
        # default routes (accept_ra=1): put the lab's host back, and let the routers advertise again.
        lab.host("sysctl", "-qw", "net.ipv6.conf.all.forwarding=0")
        lab.advertise("r0")
        lab.advertise("r1")


def test_docker_ipv6_bridge_made_meanwhile_keeps_forwarding(c1_echo6):
    """Docker's own IPv6 bridge, created while multinic had turned IPv6 forwarding on, finds it on and leaves
    it so: multinic's last IPv6 network going does not turn it off under that bridge's containers, nor put
    accept_ra back to 1 (with forwarding on, the host would drop eth0's router-advertised route)."""
    lab = c1_echo6

    def forwarding() -> str:
        return lab.host("sysctl", "-n", "net.ipv6.conf.all.forwarding").stdout.strip()

    assert forwarding() == "0"
    try:
        lab.docker("network", "create", "-d", lab.driver, *DUAL, "--subnet", "10.77.0.0/24",
                   "--subnet", "fd00:77::/64", "first6")
        with network(lab, "plain6b", "--ipv6", "--subnet", "10.78.0.0/24", "--subnet", "fd00:78::/64",
                     driver="bridge"), containers(lab) as names:
            run(lab, names, "bridge6b", "--network", "plain6b", "-p", "4073:80", cmd=web_cmd("still6"))
            lab.docker("network", "rm", "first6")
            assert forwarding() == "1"
            assert "another bridge routes IPv6 through this host" in lab.plugin_log_tail(50)
            lab.advertise("r0")
            assert f"via {ROUTER_LL} dev eth0 proto ra" in ra_defaults(lab)
            assert wait_for(lambda: lab.http_get(lab.c0_ns, url(HOST6_ETH0, 4073))) == "still6\n"
    finally:
        lab.docker("network", "rm", "first6", check=False)
        lab.host("sysctl", "-qw", "net.ipv6.conf.all.forwarding=0", "net.ipv6.conf.eth0.accept_ra=1",
                 "net.ipv6.conf.eth1.accept_ra=1")
        lab.advertise("r0")
        lab.advertise("r1")


def test_host_keeps_its_router_advertised_default_routes(c1_echo6):
    """Turning IPv6 forwarding on drops the default route of every NIC with accept_ra=1: multinic sets 2
    first, and puts everything back with its last IPv6 network."""
    lab = c1_echo6
    before = lab.dump_host_state()
    assert f"via {ROUTER_LL} dev eth0 proto ra" in ra_defaults(lab)
    with network(lab, "keep6", *DUAL, "--subnet", "10.74.0.0/24", "--subnet", "fd00:74::/64"):
        assert lab.host("sysctl", "-n", "net.ipv6.conf.all.forwarding").stdout.strip() == "1"
        for nic in ("eth0", "eth1"):
            assert lab.host("sysctl", "-n", f"net.ipv6.conf.{nic}.accept_ra").stdout.strip() == "2"
        lab.advertise("r0")  # a fresh advertisement is still heeded
        assert f"via {ROUTER_LL} dev eth0 proto ra" in ra_defaults(lab)
        assert lab.tcp_read(lab.host_ns, C0_ADDR6, 7071) == f"{HOST6_ETH0}\n"  # the host's own IPv6 works
        doctor = lab.multinic("doctor", "--json")
        checks = {(r["check"], r["status"]) for r in json.loads(doctor.stdout)["checks"]}
        assert ("ipv6_forwarding", "ok") in checks and ("accept_ra", "error") not in checks, doctor.stdout
    assert wait_for(lambda: lab.dump_host_state() == before, timeout=10)
    assert lab.tcp_read(lab.host_ns, C0_ADDR6, 7071) == f"{HOST6_ETH0}\n"


def test_gw_priority_moves_the_ipv6_default_route(c1_echo6):
    """aaa6 (parent eth0) sorts first, so Docker routes by it; zzz6 (parent eth1) has gw_priority 10 and
    must carry IPv6 too: only through it does the container reach c1."""
    lab = c1_echo6
    with network(lab, "aaa6", "--ipv6", "--opt", "parent=eth0", "--subnet", "10.75.0.0/24",
                 "--subnet", "fd00:75::/64"), \
            network(lab, "zzz6", *DUAL, "--opt", "gw_priority=10", "--subnet", "10.76.0.0/24",
                    "--subnet", "fd00:76::/64"), containers(lab) as names:
        run(lab, names, "prio6", "--network", "aaa6")
        assert egress6(lab, "prio6") == ""  # by eth0: c1 is unreachable
        lab.docker("network", "connect", "zzz6", "prio6")
        assert wait_for(lambda: egress6(lab, "prio6") == HOST6_ETH1, timeout=10)
        decision = next(d for d in status(lab)["gateway_decisions"].values() if d["container"] == "prio6")
        assert decision["ipv6"]["chosen"] == "zzz6", decision
        lab.docker("network", "disconnect", "zzz6", "prio6")
        assert wait_for(lambda: egress6(lab, "prio6") == "", timeout=10)


def test_ipv6_only_network(c1_echo6):
    lab = c1_echo6
    if lab.engine.startswith("20."):
        pytest.skip("Engine 20.10 has no IPv6-only networks (--ipv4=false needs API 1.48, Engine 28)")
    with network(lab, "only6", "--ipv4=false", *DUAL, "--subnet", "fd00:77::/64"), containers(lab) as names:
        run(lab, names, "web-only6", "--network", "only6", "-p", "4077:80", cmd=web_cmd("only6"))
        settings = lab.inspect("web-only6")["NetworkSettings"]["Networks"]["only6"]
        assert settings["IPAddress"] == "" and settings["GlobalIPv6Address"] == "fd00:77::2"
        assert wait_for(lambda: lab.http_get(lab.c1_ns, url(HOST6_ETH1, 4077))) == "only6\n"
        assert egress6(lab, "web-only6") == HOST6_ETH1
        assert "10.77" not in lab.host("iptables-save").stdout


def host_port6(lab, ctr: str) -> int:
    """The host port a container publishes on eth1's IPv6 address, as ``multinic status`` shows it."""
    ports = status(lab)["ports"]
    rows = [p["host"] for p in ports if p["container"] == ctr and p["host"].startswith(f"[{HOST6_ETH1}]")]
    assert len(rows) == 1, ports
    return int(rows[0].rsplit(":", 1)[1])


def test_udp_range_publish_all_and_a_taken_port_over_ipv6(mn):
    """udp, a port range and ``-P`` land on eth1's IPv6 address too, and c1 (behind eth1's router only) is
    answered; a second container asking a host port the first holds there is refused naming the port."""
    lab = mn
    with network(lab, "ports6", *DUAL, "--subnet", "10.80.0.0/24", "--subnet", "fd00:80::/64"), \
            containers(lab) as names:
        run(lab, names, "udp6", "--network", "ports6", "-p", "9080-9081:90/udp", *HOST_PYTHON,
            cmd=udp_echo_cmd(90, "::"))
        run(lab, names, "all6", "--network", "ports6", "-P", "--expose", "80", cmd=web_cmd("all6"))
        udp = host_port6(lab, "udp6")
        assert udp in (9080, 9081)
        assert wait_for(lambda: udp_roundtrip(lab.c1_ns, HOST6_ETH1, udp))
        eph = host_port6(lab, "all6")
        assert wait_for(lambda: lab.http_get(lab.c1_ns, url(HOST6_ETH1, eph))) == "all6\n"
        before = lab.dump_host_state()
        names.append("taken6")
        proc = lab.docker("run", "-d", "--name", "taken6", "--network", "ports6", "-p", f"[{HOST6_ETH1}]:{eph}:80",
                          IMAGE, "sleep", "60", check=False)
        assert proc.returncode != 0, proc.stdout
        assert f"host port {eph}/tcp on {HOST6_ETH1} is already published" in proc.stderr, proc.stderr
        assert lab.dump_host_state() == before


COMPOSE6 = """
services:
  web:
    image: mn-busybox:latest
    command: ["sh", "-c", "mkdir -p /www && echo compose6 > /www/index.html && exec httpd -f -p 80 -h /www"]
    ports: ["4078:80"]
    networks: [front]
networks:
  front:
    driver: {driver}
    enable_ipv6: true
    driver_opts:
      parent: eth1
    ipam:
      config: [{{subnet: 10.78.0.0/24}}, {{subnet: "fd00:78::/64"}}]
"""


def test_compose_enable_ipv6(mn, tmp_path):
    lab = mn
    if not os.access(COMPOSE, os.X_OK):
        skip_or_fail(f"{COMPOSE} missing (scripts/install-lab-tools.sh installs it)")
    (tmp_path / "compose.yaml").write_text(textwrap.dedent(COMPOSE6.format(driver=lab.driver)))
    try:
        compose(lab, str(tmp_path), "up", "-d")
        assert wait_for(lambda: lab.http_get(lab.c1_ns, url(HOST6_ETH1, 4078))) == "compose6\n"
        assert lab.http_get(lab.c1_ns, "http://192.168.101.2:4078/") == "compose6\n"
    finally:
        compose(lab, str(tmp_path), "down", "--remove-orphans", check=False)


def test_bad_ipv6_input_is_refused_and_leaves_nothing(mn):
    lab = mn
    before = lab.dump_host_state()
    for subnet6, words in (("fe80::/64", "link-local"), ("2001:db8:101::/64", "overlaps eth1's own network")):
        proc = lab.docker("network", "create", "-d", lab.driver, *DUAL, "--subnet", "10.79.0.0/24",
                          "--subnet", subnet6, "bad6", check=False)
        assert proc.returncode != 0 and words in proc.stderr, proc.stderr
    with network(lab, "pub6", *DUAL, "--subnet", "10.79.0.0/24", "--subnet", "fd00:79::/64"), \
            containers(lab) as names:
        # an address no NIC has, and eth0's (the network is bound to eth1): refused, naming the port and eth1's
        for n, host_ip in enumerate(("2001:db8:777::1", HOST6_ETH0)):
            names.append(f"badport6-{n}")
            proc = lab.docker("run", "-d", "--name", f"badport6-{n}", "--network", "pub6", "-p",
                              f"[{host_ip}]:4079:80", IMAGE, "sleep", "60", check=False)
            assert proc.returncode != 0, proc.stdout
            for words in (f"-p [{host_ip}]:4079:80/tcp", f"{host_ip} is not a stable IPv6 address",
                          "of eth1, the parent of network", f"publish on one of {HOST6_ETH1}"):
                assert words in proc.stderr, proc.stderr
    assert wait_for(lambda: lab.dump_host_state() == before, timeout=10)
