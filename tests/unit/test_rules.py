"""The firewall rules and routing objects computed from state (pure)."""

import ipaddress

from plugin.desired import host_state
from plugin.facts import ParentFacts
from plugin.firewall.model import FILTER_FORWARD, MANGLE_PREROUTING, NAT_DNAT, NAT_POSTROUTING
from plugin.state import EndpointRecord, NetworkRecord, PublishedPort, State

FACTS = {"eth1": ParentFacts("eth1", True, (ipaddress.IPv4Interface("192.168.101.2/24"),), 1500)}


def net(nid="a" * 64, **kw):
    base = dict(id=nid, bridge=f"mn-{nid[:12]}", subnet="10.10.0.0/24", gateway="10.10.0.1/24", parent="eth1",
                parent_gateway="192.168.101.1", table=20000, mark_slot=1)
    base.update(kw)
    return NetworkRecord(**base)


def test_parent_network_routing():
    hs = host_state(State(networks={"a" * 64: net()}), FACTS)
    routes = {(r.table, str(r.dst), r.dev, str(r.gateway)) for r in hs.routes}
    assert (20000, "0.0.0.0/0", "eth1", "192.168.101.1") in routes
    assert (20000, "192.168.101.0/24", "eth1", "None") in routes
    assert (20000, "10.10.0.0/24", "mn-aaaaaaaaaaaa", "None") in routes
    rules = {(r.priority, r.table, str(r.src), r.fwmark, r.suppress_prefixlen) for r in hs.rules}
    assert rules == {
        (10000, 20000, "None", 0x10000, None),
        (10000, 254, "None", 0xFF0000, None),
        (10001, 254, "10.10.0.0/24", None, 0),
        (10002, 20000, "10.10.0.0/24", None, None),
    }
    assert hs.sysctls == {"net/ipv4/conf/eth1/rp_filter": "2"}


def test_connmark_rules():
    rules = host_state(State(networks={"a" * 64: net()}), FACTS).firewall.rules("mangle", MANGLE_PREROUTING)
    assert ("-i", "eth1", "-m", "conntrack", "--ctstate", "NEW", "-j", "CONNMARK", "--set-xmark",
            "0x10000/0xff0000") in rules
    assert ("-i", "mn-aaaaaaaaaaaa", "-j", "CONNMARK", "--restore-mark", "--nfmask", "0xff0000", "--ctmask",
            "0xff0000") in rules


def test_shared_parent_marks_once():
    state = State(networks={"a" * 64: net(), "b" * 64: net("b" * 64, subnet="10.11.0.0/24",
                                                            gateway="10.11.0.1/24")})
    hs = host_state(state, FACTS)
    marks = [r for r in hs.firewall.rules("mangle", MANGLE_PREROUTING) if "--set-xmark" in r]
    assert len(marks) == 1
    assert len([r for r in hs.rules if r.fwmark == 0x10000]) == 1


def test_connections_from_elsewhere_are_marked_main():
    rules = host_state(State(networks={"a" * 64: net()}), FACTS).firewall.rules("mangle", "MULTINIC-CONNMARK")
    assert rules == (("-o", "mn-aaaaaaaaaaaa", "-m", "conntrack", "--ctstate", "NEW", "-m", "connmark", "--mark",
                      "0x0/0xff0000", "-j", "CONNMARK", "--set-xmark", "0xff0000/0xff0000"),)


def test_published_port_on_parent_addresses():
    ep = EndpointRecord(id="e" * 64, network_id="a" * 64, address="10.10.0.2/24", mac="", host_veth="h",
                        peer_veth="p", joined=True, ports=(PublishedPort("tcp", "", 4000, 80),))
    hs = host_state(State(networks={"a" * 64: net()}, endpoints={ep.id: ep}), FACTS)
    assert hs.firewall.rules("nat", NAT_DNAT) == (
        ("-d", "192.168.101.2/32", "-p", "tcp", "-m", "tcp", "--dport", "4000", "-j", "DNAT", "--to-destination",
         "10.10.0.2:80"),
    )


def test_routed_mode_has_no_masquerade_and_accepts_inbound():
    hs = host_state(State(networks={"a" * 64: net(masquerade=False)}), FACTS)
    post = hs.firewall.rules("nat", NAT_POSTROUTING)
    assert not any("!" in r for r in post)
    assert ("-o", "mn-aaaaaaaaaaaa", "-j", "ACCEPT") in hs.firewall.rules("filter", FILTER_FORWARD)


def test_internal_network_is_closed():
    hs = host_state(State(networks={"a" * 64: net(internal=True, parent=None, table=None, mark_slot=None)}), {})
    fwd = hs.firewall.rules("filter", FILTER_FORWARD)
    assert ("-i", "mn-aaaaaaaaaaaa", "-j", "DROP") in fwd
    assert not hs.firewall.rules("nat", NAT_POSTROUTING)
    assert not hs.rules and not hs.routes


def test_isolation_between_multinic_bridges():
    state = State(networks={"a" * 64: net(), "b" * 64: net("b" * 64, subnet="10.11.0.0/24", gateway="10.11.0.1/24")})
    fw = host_state(state, FACTS).firewall
    fwd = fw.rules("filter", FILTER_FORWARD)
    assert fwd[0] == ("-j", "MULTINIC-ACCEPT")
    assert ("-i", "mn-aaaaaaaaaaaa", "-j", "MULTINIC-ISOLATE-DST") in fwd
    assert ("-i", "mn-bbbbbbbbbbbb", "-j", "MULTINIC-ISOLATE-DST") in fwd
    isolate = fw.rules("filter", "MULTINIC-ISOLATE-DST")
    for bridge in ("mn-aaaaaaaaaaaa", "mn-bbbbbbbbbbbb", "docker0", "br-+"):
        assert ("-o", bridge, "-j", "DROP") in isolate


def test_no_networks_no_firewall():
    assert host_state(State(), {}).firewall.is_empty()
