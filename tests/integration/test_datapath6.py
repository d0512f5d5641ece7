"""IPv6 through the driver against the real kernel: egress by the parent with its address, the seed's
published port with the reply by the parent, the next hop a router advertised, a host whose default routes
come from router advertisements keeping them, and removal leaving both families as they were. The datapath
tests run once per firewall backend (``backend``: native nftables, iptables-nft), beside Docker's iptables
and, as Engine 27 and later write it, its ip6tables FORWARD DROP."""

from __future__ import annotations

import pytest

from tests.integration.conftest import DOCKERS_IPTABLES
from tests.integration.test_datapath import EID, NID, SUBNET, attach_container, call, detach_and_remove
from tests.lab import C1_ADDR6, HOST6_ETH0, HOST6_ETH1, ROUTER_LL
from tests.nsutil import sh

# What dockerd 27+ leaves in ip6tables' FORWARD (its chains, DOCKER-USER entered first, policy DROP).
DOCKERS_IP6TABLES = DOCKERS_IPTABLES.replace("iptables ", "ip6tables ")
SUBNET6 = {"AddressSpace": "LocalDefault", "Pool": "fd00:10::/64", "Gateway": "fd00:10::1/64"}
ADDRESS6 = "fd00:10::2"
IPV6 = {"com.docker.network.enable_ipv6": True}


def create_dual_stack(t, generic, pool6=SUBNET6, nid=NID, ipv4=True):
    options = {"com.docker.network.generic": generic, **IPV6}
    if not ipv4:
        options["com.docker.network.enable_ipv4"] = False
    return t.in_host(call, t.state_dir, "CreateNetwork",
                     {"NetworkID": nid, "Options": options, "IPv4Data": [SUBNET] if ipv4 else [],
                      "IPv6Data": [pool6]})


def attach(t, ports=(), ipv4=True):
    join = attach_container(t, ports, "10.10.0.2/24" if ipv4 else "", f"{ADDRESS6}/64")
    assert join["GatewayIPv6"] == "fd00:10::1" and ("Gateway" in join) == ipv4
    return join


def ra_defaults(t) -> str:
    return sh(t.host, "ip -6 route show default")


def test_dual_stack_egress_and_seed_case_by_the_parent(topo, backend):
    sh(topo.host, DOCKERS_IP6TABLES)
    before = topo.dump()
    assert f"via {ROUTER_LL} dev eth0 proto ra" in ra_defaults(topo)
    assert create_dual_stack(topo, {"parent": "eth1"})["status"] == 200
    # The parent's table: the next hop the router advertised (link-local, with its device), its prefix.
    table = sh(topo.host, "ip -6 route show table 20000")
    assert f"default via {ROUTER_LL} dev eth1" in table and "2001:db8:101::/64 dev eth1" in table, table
    assert "fd00:10::/64 dev mn-" in table
    rules = sh(topo.host, "ip -6 rule")
    assert "from fd00:10::/64 lookup 20000" in rules and "fwmark 0x10000/0xff0000 lookup 20000" in rules, rules
    # Forwarding went on, and the host kept both of its router-advertised default routes (accept_ra=2).
    assert sh(topo.host, "cat /proc/sys/net/ipv6/conf/all/forwarding").strip() == "1"
    assert f"via {ROUTER_LL} dev eth0 proto ra" in ra_defaults(topo)
    assert f"via {ROUTER_LL} dev eth1 proto ra" in ra_defaults(topo)
    attach(topo, [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 4000, "HostPortEnd": 4000}])
    # Each backend writes both families its own way: the native one its tables (and the opening of Docker's
    # ip6tables FORWARD DROP), iptables-nft the ip6tables chains.
    tables = sh(topo.host, "nft list tables")
    assert ("table ip6 multinic" in tables) == (backend == "nftables"), tables
    assert "-j MULTINIC-FORWARD" in sh(topo.host, "ip6tables-save -t filter")
    # Egress: c1 is reachable only through eth1's router, and sees eth1's address (masqueraded).
    topo.serve_peer(topo.c1, 7000, '::')
    assert topo.connect(topo.k, C1_ADDR6, 7000) == HOST6_ETH1
    # The seed case: c1 reaches the port on eth1's IPv6 address, the container sees c1, the reply
    # leaves by eth1 (r0 has no route to c1: by eth0 it would be lost).
    topo.serve_peer(topo.k, 80, '::')
    topo.serve_peer(topo.k, 80)
    assert topo.connect(topo.c1, HOST6_ETH1, 4000) == C1_ADDR6
    assert topo.connect(topo.host, HOST6_ETH1, 4000) == HOST6_ETH1  # hairpin from the host
    assert topo.connect(topo.host, HOST6_ETH0, 4000, timeout=1).startswith("FAIL")  # eth1's only
    # And IPv4 still works beside it.
    assert topo.connect(topo.c1, "192.168.101.2", 4000) == "198.51.100.10"
    detach_and_remove(topo)
    # Forwarding and accept_ra put back: the host's IPv6 as it was, default routes included.
    assert topo.dump() == before
    assert f"via {ROUTER_LL} dev eth0 proto ra" in ra_defaults(topo)


def test_users_ip6tables_rules_hold_where_docker_keeps_no_ipv6_chains(topo, backend):
    """Engine 20.10 keeps no IPv6 DOCKER-USER. Native backend: a DROP of the user's anywhere in ip6tables'
    FORWARD holds for multinic's IPv6 ports, there before multinic (as after a reboot) or inserted after
    (multinic's accepts are in its own table). iptables backend: its jump goes first in FORWARD, above
    the user's rules; in a DOCKER-USER the user makes, multinic enters its chain from the end of it."""
    drop = f"-s {C1_ADDR6} -j DROP"
    if backend == "iptables-nft":
        sh(topo.host, f"ip6tables-nft -A FORWARD {drop}")
        assert create_dual_stack(topo, {"parent": "eth1"})["status"] == 200
        forward = sh(topo.host, "ip6tables-nft -S FORWARD").splitlines()
        assert forward[1:] == ["-A FORWARD -m comment --comment multinic -j MULTINIC-FORWARD",
                               f"-A FORWARD -s {C1_ADDR6}/128 -j DROP"], forward
        sh(topo.host, f"ip6tables-nft -D FORWARD {drop} && ip6tables-nft -N DOCKER-USER && "
                      f"ip6tables-nft -A DOCKER-USER {drop} && ip6tables-nft -I FORWARD -j DOCKER-USER")
        assert topo.in_host(call, topo.state_dir, "DeleteNetwork", {"NetworkID": NID})["status"] == 200
        assert create_dual_stack(topo, {"parent": "eth1"})["status"] == 200
        assert sh(topo.host, "ip6tables-nft -S FORWARD").splitlines()[1:] == ["-A FORWARD -j DOCKER-USER"]
        user = sh(topo.host, "ip6tables-nft -S DOCKER-USER").splitlines()
        assert user[1:] == [f"-A DOCKER-USER -s {C1_ADDR6}/128 -j DROP",
                            "-A DOCKER-USER -m comment --comment multinic -j MULTINIC-FORWARD"], user
        rule = f"DOCKER-USER {drop}"
    else:
        sh(topo.host, f"ip6tables-nft -A FORWARD {drop}")
        assert create_dual_stack(topo, {"parent": "eth1"})["status"] == 200
        assert "multinic" not in sh(topo.host, "ip6tables-nft-save")  # nothing of multinic's in ip6tables
        rule = f"FORWARD {drop}"
    attach(topo, [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 4000, "HostPortEnd": 4000}])
    topo.serve_peer(topo.k, 80, '::')
    assert topo.connect(topo.c1, HOST6_ETH1, 4000, timeout=1).startswith("FAIL")
    sh(topo.host, f"ip6tables-nft -D {rule}")
    assert topo.connect(topo.c1, HOST6_ETH1, 4000) == C1_ADDR6
    sh(topo.host, f"ip6tables-nft -I {rule}")  # inserted after multinic: holds too
    assert topo.connect(topo.c1, HOST6_ETH1, 4000, timeout=1).startswith("FAIL")
    detach_and_remove(topo)


def test_ipv6_only_network(topo, backend):
    before = topo.dump()
    assert create_dual_stack(topo, {"parent": "eth1"}, ipv4=False)["status"] == 200
    attach(topo, [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 4000, "HostPortEnd": 4000}],
           ipv4=False)
    topo.serve_peer(topo.c1, 7000, '::')
    assert topo.connect(topo.k, C1_ADDR6, 7000) == HOST6_ETH1
    topo.serve_peer(topo.k, 80, '::')
    assert topo.connect(topo.c1, HOST6_ETH1, 4000) == C1_ADDR6
    assert "10.10.0" not in sh(topo.host, "ip -4 rule; iptables-save")
    detach_and_remove(topo)
    assert topo.dump() == before


def test_routed_ipv6_client_reaches_container_directly(topo, backend):
    sh(topo.host, DOCKERS_IP6TABLES)
    before = topo.dump()
    create_dual_stack(topo, {"parent": "eth1", "masquerade": "false"})
    attach(topo)
    sh(topo.r1, f"ip -6 route add fd00:10::/64 via {HOST6_ETH1}")
    topo.serve_peer(topo.k, 8080, '::')
    assert topo.connect(topo.c1, ADDRESS6, 8080) == C1_ADDR6
    topo.serve_peer(topo.c1, 7000, '::')
    assert topo.connect(topo.k, C1_ADDR6, 7000) == ADDRESS6  # the container's own address is seen
    detach_and_remove(topo)
    sh(topo.r1, "ip -6 route del fd00:10::/64")
    assert topo.dump() == before


@pytest.mark.parametrize(
    "generic, pool6, words",
    [
        ({"parent": "eth1"}, {**SUBNET6, "Pool": "2001:db8:101::/64", "Gateway": "2001:db8:101::1/64"},
         ["overlaps eth1's own network 2001:db8:101::/64"]),
        ({"parent": "eth1"}, {**SUBNET6, "Pool": "fe80::/64", "Gateway": "fe80::1/64"}, ["link-local"]),
        ({"parent": "eth1", "parent_gateway6": "2001:db8:999::1"}, SUBNET6,
         ["parent_gateway6=2001:db8:999::1", "neither link-local nor on eth1's prefixes"]),
        ({"parent": "eth1", "parent_gateway6": "10.0.0.1"}, SUBNET6, ["parent_gateway6", "not an IPv6 address"]),
        ({"parent": "nov6"}, SUBNET6, ["parent=nov6", "no global IPv6 address"]),
    ],
)
def test_bad_ipv6_input_is_refused_and_leaves_nothing(topo, generic, pool6, words):
    # A NIC with IPv4 only (IPv6 disabled on it)
    sh(topo.host, "ip link add nov6 type veth peer name nov6p; sysctl -qw net.ipv6.conf.nov6.disable_ipv6=1; "
                  "ip addr add 10.99.0.2/24 dev nov6; ip link set nov6 up")
    before = topo.dump()
    out = create_dual_stack(topo, generic, pool6)
    assert out["status"] == 400, out
    for word in words:
        assert word in out["Err"], out["Err"]
    assert topo.dump() == before


def test_ipv6_overlap_and_published_address_refusals(topo):
    before = topo.dump()
    assert create_dual_stack(topo, {"parent": "eth1"})["status"] == 200
    other = create_dual_stack(topo, {}, {**SUBNET6, "Pool": "fd00:10::/56", "Gateway": "fd00:10::1/56"},
                              nid="b2" * 32)
    assert other["status"] == 400 and "overlaps multinic network" in other["Err"]
    iface = {"Address": "10.10.0.2/24", "AddressIPv6": f"{ADDRESS6}/64"}
    assert topo.in_host(call, topo.state_dir, "CreateEndpoint",
                        {"NetworkID": NID, "EndpointID": EID, "Interface": iface})["status"] == 200
    # a deprecated address of eth1's (still valid, but going away): never published on
    sh(topo.host, "ip -6 addr add 2001:db8:101::99/64 dev eth1 nodad preferred_lft 0")
    stable = "is not a stable IPv6 address (global, not temporary or deprecated) of eth1"
    for host_ip, words in (("2001:db8:777::1", ["-p [2001:db8:777::1]:4000:80/tcp", stable, HOST6_ETH1]),
                           (HOST6_ETH0, [f"{HOST6_ETH0} {stable}", f"publish on one of {HOST6_ETH1}"]),
                           ("2001:db8:101::99", [f"2001:db8:101::99 {stable}"]),
                           ("::1", ["loopback"])):
        join = topo.in_host(call, topo.state_dir, "Join", {
            "NetworkID": NID, "EndpointID": EID, "SandboxKey": "", "Options": {"com.docker.network.portmap": [
                {"Proto": 6, "IP": "", "Port": 80, "HostIP": host_ip, "HostPort": 4000, "HostPortEnd": 4000}]}})
        assert join["status"] == 400 and all(w in join["Err"] for w in words), join
    for verb in ("DeleteEndpoint", "DeleteNetwork"):
        assert topo.in_host(call, topo.state_dir, verb, {"NetworkID": NID, "EndpointID": EID})["status"] == 200
    sh(topo.host, "ip -6 addr del 2001:db8:101::99/64 dev eth1")
    assert topo.dump() == before


def test_leave_forgets_the_udp_flows_of_its_ports_in_both_families(topo):
    """One ctnetlink walk for both families: a UDP client's flows to the port, over IPv4 and IPv6, are
    gone once the container leaves."""
    import sys

    assert create_dual_stack(topo, {"parent": "eth1"})["status"] == 200
    attach(topo, [{"Proto": 17, "IP": "", "Port": 90, "HostIP": "", "HostPort": 4091, "HostPortEnd": 4091}])
    for family, address in (("AF_INET", "192.168.101.2"), ("AF_INET6", HOST6_ETH1)):
        send = (f"import socket;s=socket.socket(socket.{family},socket.SOCK_DGRAM);"
                f"s.sendto(b'x',('{address}',4091))")
        sh(topo.c1, f"{sys.executable} -c \"{send}\"")
    flows = "conntrack -L -f {} -p udp --orig-port-dst 4091 2>/dev/null | wc -l"
    assert (sh(topo.host, flows.format("ipv4")).strip(), sh(topo.host, flows.format("ipv6")).strip()) == ("1", "1")
    detach_and_remove(topo)
    assert (sh(topo.host, flows.format("ipv4")).strip(), sh(topo.host, flows.format("ipv6")).strip()) == ("0", "0")
