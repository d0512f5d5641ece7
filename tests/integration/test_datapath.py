"""The driver against the real kernel: a packet really crosses, and removal leaves nothing. The datapath
tests run once per firewall backend (``backend``: native nftables and iptables-nft), beside Docker's
iptables FORWARD DROP (the ``topo`` fixture)."""

from __future__ import annotations

import json
import sys

import pytest

from tests.nsutil import sh

NID = "a1" * 32
EID = "e1" * 32
SUBNET = {"AddressSpace": "LocalDefault", "Pool": "10.10.0.0/24", "Gateway": "10.10.0.1/24"}


def call(state_dir: str, verb: str, body: dict) -> dict:
    """One remote-driver call through the WSGI app, inside the host namespace."""
    from plugin.api.http import create_app
    from plugin.plan.driver import Driver
    from plugin.plan.state import Store
    from tests.integration.conftest import settings

    client = create_app(Driver(Store(state_dir), settings())).test_client()
    resp = client.post(f"/NetworkDriver.{verb}", data=json.dumps(body))
    return {"status": resp.status_code, **json.loads(resp.data)}


def create_network(t, generic, pool=SUBNET, nid=NID):
    return t.in_host(call, t.state_dir, "CreateNetwork",
                     {"NetworkID": nid, "Options": {"com.docker.network.generic": generic}, "IPv4Data": [pool],
                      "IPv6Data": []})


def attach_container(t, ports=(), address="10.10.0.2/24", address6=""):
    """What dockerd does: CreateEndpoint, Join, then move SrcName into the sandbox as eth0, with the
    endpoint's addresses and default routes."""
    iface = {"Address": address, "AddressIPv6": address6}
    ep = t.in_host(call, t.state_dir, "CreateEndpoint", {"NetworkID": NID, "EndpointID": EID, "Interface": iface})
    assert ep["status"] == 200, ep
    join = t.in_host(call, t.state_dir, "Join",
                     {"NetworkID": NID, "EndpointID": EID, "SandboxKey": "",
                      "Options": {"com.docker.network.portmap": list(ports)}})
    assert join["status"] == 200, join
    src = join["InterfaceName"]["SrcName"]
    sh(t.host, f"ip link set {src} netns {t.k}")
    script = f"ip link set {src} name eth0; ip link set eth0 up"
    if address:
        script += f"; ip addr add {address} dev eth0; ip route add default via {join['Gateway']}"
    if address6:
        script += f"; ip -6 addr add {address6} dev eth0 nodad; ip -6 route add default via {join['GatewayIPv6']}"
    sh(t.k, script)
    return join


def detach_and_remove(t):
    # dockerd moves the interface back under its SrcName, down, before Leave.
    src = "mnc" + EID[:12]
    sh(t.k, f"ip link set eth0 down; ip link set eth0 name {src}; ip link set {src} netns {t.host}")
    for verb in ("Leave", "DeleteEndpoint"):
        assert t.in_host(call, t.state_dir, verb, {"NetworkID": NID, "EndpointID": EID})["status"] == 200
    got = t.in_host(call, t.state_dir, "DeleteNetwork", {"NetworkID": NID})
    assert got["status"] == 200, got


def test_egress_leaves_by_parent_with_its_address(topo, backend):
    before = topo.dump()
    assert "default via 192.168.100.1 dev eth0" in sh(topo.host, "ip route")
    assert create_network(topo, {"parent": "eth1"})["status"] == 200
    attach_container(topo)
    topo.serve_peer(topo.c1, 7000)
    # The client is reachable only through eth1's router, and sees eth1's address.
    assert topo.connect(topo.k, "198.51.100.10", 7000) == "192.168.101.2"
    detach_and_remove(topo)
    assert topo.dump() == before


def test_published_port_reply_leaves_the_way_it_came(topo, backend):
    """The seed's case: a client behind eth1 reaches a published port; main default is eth0."""
    before = topo.dump()
    create_network(topo, {"parent": "eth1"})
    attach_container(topo, [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 4000,
                             "HostPortEnd": 4000}])
    topo.serve_peer(topo.k, 80)
    # The container sees the client itself (DNAT only), and the reply goes back out eth1.
    assert topo.connect(topo.c1, "192.168.101.2", 4000) == "198.51.100.10"
    # Hairpin from the host itself.
    assert topo.connect(topo.host, "192.168.101.2", 4000) == "192.168.101.2"
    # Only eth1's address publishes the port.
    assert topo.connect(topo.host, "192.168.100.2", 4000, timeout=1).startswith("FAIL")
    detach_and_remove(topo)
    assert topo.dump() == before


def test_routed_mode_client_reaches_container_directly(topo, backend):
    before = topo.dump()
    create_network(topo, {"parent": "eth1", "masquerade": "false"})
    attach_container(topo)
    sh(topo.r1, "ip route add 10.10.0.0/24 via 192.168.101.2")
    topo.serve_peer(topo.k, 8080)
    assert topo.connect(topo.c1, "10.10.0.2", 8080) == "198.51.100.10"
    detach_and_remove(topo)
    assert topo.dump() == before


@pytest.mark.parametrize(
    "generic, pool, words",
    [
        ({"parent": "eth9"}, SUBNET, ["parent=eth9", "no such network interface"]),
        ({"parent": "192.168.101.2"}, SUBNET, ["parent", "not an interface name"]),
        ({"parent": "eth1"}, {**SUBNET, "Pool": "192.168.101.0/25", "Gateway": "192.168.101.1/25"},
         ["overlaps eth1's own network"]),
        ({"parent": "eth1", "table": "777"}, SUBNET, ["table=777", "already in use"]),
        ({"parent": "eth1", "table": "99999999999"}, SUBNET, ["table", "out of range"]),
        ({"parent": "eth1", "mtu": "big"}, SUBNET, ["mtu", "not an integer"]),
        ({"parent": "eth1", "parent_gateway": "10.99.0.1"}, SUBNET, ["parent_gateway=10.99.0.1", "not on eth1"]),
        ({"parent": "eth1", "colour": "blue"}, SUBNET, ["unknown option colour"]),
        ({"bridge_name": "eth0"}, SUBNET, ["bridge_name=eth0", "already exists"]),
    ],
)
def test_bad_input_is_refused_and_leaves_nothing(topo, generic, pool, words):
    sh(topo.host, "ip route add 10.200.0.0/24 via 192.168.101.1 table 777")
    before = topo.dump()
    out = create_network(topo, generic, pool)
    assert out["status"] == 400
    for word in words:
        assert word in out["Err"], out["Err"]
    assert topo.dump() == before


def test_overlapping_multinic_networks_refused(topo):
    assert create_network(topo, {"parent": "eth1"})["status"] == 200
    out = create_network(topo, {}, {**SUBNET, "Pool": "10.10.0.128/25", "Gateway": "10.10.0.129/25"}, nid="b2" * 32)
    assert out["status"] == 400 and "overlaps multinic network" in out["Err"]
    assert topo.in_host(call, topo.state_dir, "DeleteNetwork", {"NetworkID": NID})["status"] == 200


def test_shared_parent_shares_table_and_mark_until_last_network(topo):
    before = topo.dump()
    create_network(topo, {"parent": "eth1"})
    create_network(topo, {"parent": "eth1"}, {**SUBNET, "Pool": "10.11.0.0/24", "Gateway": "10.11.0.1/24"},
                   nid="b2" * 32)
    rules = sh(topo.host, "ip rule")
    assert rules.count("fwmark 0x10000/0xff0000 lookup 20000") == 1
    assert "from 10.11.0.0/24 lookup 20000" in rules
    assert topo.in_host(call, topo.state_dir, "DeleteNetwork", {"NetworkID": NID})["status"] == 200
    assert "fwmark 0x10000/0xff0000 lookup 20000" in sh(topo.host, "ip rule")  # still used by the second
    assert sh(topo.host, "cat /proc/sys/net/ipv4/conf/eth1/rp_filter").strip() == "2"
    assert topo.in_host(call, topo.state_dir, "DeleteNetwork", {"NetworkID": "b2" * 32})["status"] == 200
    assert topo.dump() == before


def test_internal_network_with_parent_does_not_poison_later_networks(topo):
    before = topo.dump()
    internal = {"NetworkID": "c3" * 32, "Options": {"com.docker.network.generic": {"parent": "eth1"},
                                                     "com.docker.network.internal": True},
                "IPv4Data": [{**SUBNET, "Pool": "10.12.0.0/24", "Gateway": "10.12.0.1/24"}], "IPv6Data": []}
    assert topo.in_host(call, topo.state_dir, "CreateNetwork", internal)["status"] == 200
    assert create_network(topo, {"parent": "eth1"})["status"] == 200
    rules = sh(topo.host, "ip rule")
    assert "from 10.10.0.0/24 lookup 20000" in rules and "fwmark 0x10000/0xff0000 lookup 20000" in rules
    assert "10.12.0.0" not in rules
    for nid in (NID, "c3" * 32):
        assert topo.in_host(call, topo.state_dir, "DeleteNetwork", {"NetworkID": nid})["status"] == 200
    assert topo.dump() == before


def test_parent_down_fails_closed_and_other_networks_keep_working(topo):
    from plugin.plan.driver import Driver
    from plugin.plan.state import Store
    from tests.integration.conftest import settings

    assert create_network(topo, {"parent": "eth1"})["status"] == 200
    attach_container(topo)
    topo.serve_peer(topo.c1, 7000)
    sh(topo.host, "ip link set eth1 down")
    # the kernel has no way out of eth0 for the network while eth1 is down (its route lookup fails closed)
    got = sh(topo.host, f"ip route get 203.0.113.9 from 10.10.0.2 iif mn-{NID[:12]} 2>&1", check=False)
    assert "No route to host" in got or "unreachable" in got, got
    assert "dev eth0" not in got
    # other verbs still work, on other networks and on this one
    other = create_network(topo, {}, {**SUBNET, "Pool": "10.13.0.0/24", "Gateway": "10.13.0.1/24"}, nid="d4" * 32)
    assert other["status"] == 200, other
    assert topo.in_host(call, topo.state_dir, "DeleteNetwork", {"NetworkID": "d4" * 32})["status"] == 200
    # eth1 back: the next reconcile (the healer's) restores the parent's routes
    sh(topo.host, "ip link set eth1 up")
    topo.in_host(lambda: Driver(Store(topo.state_dir), settings()).reconcile() and None)
    assert topo.connect(topo.k, "198.51.100.10", 7000) == "192.168.101.2"
    detach_and_remove(topo)


def test_leave_forgets_conntrack_flows_of_its_ports(topo, backend):
    create_network(topo, {"parent": "eth1"})
    attach_container(topo, [{"Proto": 17, "IP": "", "Port": 90, "HostIP": "", "HostPort": 4090,
                             "HostPortEnd": 4090}])
    for port in (4090, 4089):  # the published port, and one that is not: its flow stays
        send = ("import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
                f"s.sendto(b'x',('192.168.101.2',{port}))")
        sh(topo.c1, f"{sys.executable} -c \"{send}\"")
    flows = "conntrack -L -p udp --orig-port-dst {} 2>/dev/null | wc -l"
    assert (sh(topo.host, flows.format(4090)).strip(), sh(topo.host, flows.format(4089)).strip()) == ("1", "1")
    detach_and_remove(topo)
    assert (sh(topo.host, flows.format(4090)).strip(), sh(topo.host, flows.format(4089)).strip()) == ("0", "1")


def _forget_without_cap_net_admin() -> str:
    import os

    from plugin.errors import Failure
    from plugin.kernel import conntrack
    from plugin.plan.state import PublishedPort

    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)  # every capability goes with root
    try:
        return f"forgot {conntrack.forget([PublishedPort('udp', '', 4090, 90)])} flows"
    except Failure as exc:
        return str(exc)


def test_forgetting_flows_without_cap_net_admin_is_a_failure_naming_it(topo):
    """A process without CAP_NET_ADMIN cannot read the conntrack table: that is the host failing us (the
    verb's 500 says which capability), not a host without conntrack (a UDP client would stay on the old
    DNAT, unsaid)."""
    said = topo.in_host(_forget_without_cap_net_admin)
    assert "conntrack" in said and "needs CAP_NET_ADMIN" in said, said
