"""The firewall rules and routing objects computed from state (pure)."""

import ipaddress

from plugin.kernel.firewall.model import (
    BUCKET_JUMPS,
    CHAINS,
    DNAT_BUCKETS,
    FILTER_FORWARD,
    MANGLE_PREROUTING,
    NAT_DNAT,
    NAT_DNAT_BUCKETS,
    NAT_POSTROUTING,
    dnat_bucket,
)
from plugin.kernel.tags import CHAIN_PREFIX
from plugin.plan.desired import host_state
from plugin.plan.facts import ParentFacts
from plugin.plan.state import EndpointRecord, NetworkRecord, PublishedPort, State

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
    assert hs.firewall.rules("nat", NAT_DNAT) == BUCKET_JUMPS
    assert hs.firewall.rules("nat", "MULTINIC-DNAT-0e") == (  # int("eeeeeeee", 16) % 32 == 0x0e
        ("-d", "192.168.101.2/32", "-p", "tcp", "-m", "tcp", "--dport", "4000", "-j", "DNAT", "--to-destination",
         "10.10.0.2:80"),
    )
    assert not any(hs.firewall.rules("nat", b) for b in NAT_DNAT_BUCKETS if b != "MULTINIC-DNAT-0e")


def test_dnat_buckets_are_owned_chains_entered_in_order_from_multinic_dnat():
    assert len(NAT_DNAT_BUCKETS) == DNAT_BUCKETS == 32
    assert NAT_DNAT_BUCKETS[0] == "MULTINIC-DNAT-00" and NAT_DNAT_BUCKETS[-1] == "MULTINIC-DNAT-1f"
    assert CHAINS["nat"] == (NAT_DNAT, *NAT_DNAT_BUCKETS, NAT_POSTROUTING, "MULTINIC-SNAT")
    # every chain of ours carries the prefix doctor and the stale-chain cleanup find them by
    assert all(c.startswith(CHAIN_PREFIX) for chains in CHAINS.values() for c in chains)
    assert BUCKET_JUMPS == tuple(("-j", b) for b in NAT_DNAT_BUCKETS)


def test_dnat_bucket_of_an_endpoint():
    assert dnat_bucket("0000001f" + "0" * 56) == "MULTINIC-DNAT-1f"
    assert dnat_bucket("00000020" + "f" * 56) == "MULTINIC-DNAT-00"
    assert dnat_bucket("4a3b2c1d" + "9" * 56) == f"MULTINIC-DNAT-{0x4a3b2c1d % 32:02x}"
    # not hex (never from dockerd): hashed, still stable
    assert dnat_bucket("ep-1") == dnat_bucket("ep-1") in NAT_DNAT_BUCKETS
    assert {dnat_bucket(f"{i:08x}" + "0" * 56) for i in range(64)} == set(NAT_DNAT_BUCKETS)


def test_each_endpoints_rules_are_in_its_bucket_only():
    net_ = net()
    eps = {}
    for i in range(100):
        eid = f"{(i * 2654435761) & 0xFFFFFFFF:08x}{i:056x}"
        ports = (PublishedPort("tcp", "", 10000 + i, 80), PublishedPort("udp", "", 10000 + i, 53))
        eps[eid] = EndpointRecord(id=eid, network_id=net_.id, address=f"10.10.0.{i + 2}/24", mac="",
                                  host_veth=f"h{i}", peer_veth=f"p{i}", joined=True, ports=ports)
    fw = host_state(State(networks={net_.id: net_}, endpoints=eps), FACTS).firewall
    assert fw.rules("nat", NAT_DNAT) == BUCKET_JUMPS
    for eid, ep in eps.items():
        to = f"{ep.address.split('/')[0]}:"
        where = {b for b in NAT_DNAT_BUCKETS for r in fw.rules("nat", b) if r[-1].startswith(to)}
        assert where == {dnat_bucket(eid)}
        assert sum(r[-1].startswith(to) for r in fw.rules("nat", dnat_bucket(eid))) == 2
    assert sum(len(fw.rules("nat", b)) for b in NAT_DNAT_BUCKETS) == 200
    assert len({b for b in NAT_DNAT_BUCKETS if fw.rules("nat", b)}) > 16  # spread out


def test_networks_without_endpoints_have_empty_buckets_and_the_jumps():
    fw = host_state(State(networks={"a" * 64: net()}), FACTS).firewall
    assert fw.rules("nat", NAT_DNAT) == BUCKET_JUMPS and not fw.is_empty()
    assert not any(fw.rules("nat", b) for b in NAT_DNAT_BUCKETS)


def test_routed_mode_has_no_masquerade_and_accepts_inbound():
    hs = host_state(State(networks={"a" * 64: net(masquerade=False)}), FACTS)
    post = hs.firewall.rules("nat", NAT_POSTROUTING)
    assert not any("!" in r for r in post)
    assert ("-o", "mn-aaaaaaaaaaaa", "-j", "ACCEPT") in hs.firewall.rules("filter", FILTER_FORWARD)


def test_internal_network_is_closed():
    hs = host_state(State(networks={"a" * 64: net(internal=True, parent=None, table=None, mark_slot=None)}), {})
    fwd = hs.firewall.rules("filter", FILTER_FORWARD)
    assert ("-i", "mn-aaaaaaaaaaaa", "-j", "DROP") in fwd
    assert hs.firewall.rules("nat", NAT_POSTROUTING) == (("-j", "MULTINIC-SNAT"),)  # only the fixed first jump
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
