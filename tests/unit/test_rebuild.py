"""The lost state rebuilt from dockerd's view and the kernel's remains (pure): what was chosen (table,
mark, next hops, the host ports really published) comes back from the kernel, both families."""

import ipaddress

import pytest

from plugin.errors import Refusal
from plugin.kernel.tags import RULE_PREF_FWMARK, RULE_PREF_SOURCE, TABLE_ALLOC_FIRST, TABLE_ALLOC_LAST
from plugin.plan.desired import RouteSpec, RuleSpec
from plugin.plan.facts import HostFacts, ParentFacts
from plugin.plan.rebuild import GATEWAY_KEPT, KernelRemains, Published, rebuild
from plugin.plan.state import ParentRecord, PublishedPort, State

NID, EID, CID = "a" * 64, "e" * 64, "c" * 64
ETH1 = ParentFacts("eth1", True, (ipaddress.IPv4Interface("192.168.101.2/24"),),
                   addresses6=(ipaddress.IPv6Interface("2001:db8:101::2/64"),),
                   prefixes6=(ipaddress.IPv6Network("2001:db8:101::/64"),))
NETWORK = {
    "Id": NID, "Name": "front", "Created": "2026-12-05T10:00:00Z", "Internal": False, "EnableIPv6": True,
    "Options": {"parent": "eth1", "gw_priority": "5"},
    "IPAM": {"Config": [{"Subnet": "10.70.0.0/24", "Gateway": "10.70.0.1"},
                        {"Subnet": "fd00:70::/64", "Gateway": "fd00:70::1"}]},
    "Containers": {CID: {"EndpointID": EID, "MacAddress": "02:42:0a:46:00:02", "IPv4Address": "10.70.0.2/24",
                         "IPv6Address": "fd00:70::2/64"}},
}
CONTAINER = {"Id": CID, "State": {"Running": True},
             "HostConfig": {"PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}},
             "NetworkSettings": {"SandboxKey": "/var/run/docker/netns/x",
                                 "Networks": {"front": {"EndpointID": EID, "DriverOpts": None}}}}
KERNEL = KernelRemains(
    bridges={NID: "mn-front"},
    rules=frozenset({RuleSpec(RULE_PREF_SOURCE, 20007, src=ipaddress.ip_network("10.70.0.0/24")),
                     RuleSpec(RULE_PREF_FWMARK, 20007, fwmark=3 << 16, fwmask=0xFF0000)}),
    routes=frozenset({RouteSpec(20007, ipaddress.ip_network("0.0.0.0/0"), "eth1",
                                gateway=ipaddress.ip_address("192.168.101.254")),
                      RouteSpec(20007, ipaddress.ip_network("::/0"), "eth1", gateway=ipaddress.ip_address("fe80::9"))}),
    published=(Published("tcp", "192.168.101.2", 8080, "10.70.0.2", 80),
               Published("tcp", "2001:db8:101::2", 8080, "fd00:70::2", 80)),
)


def test_a_dual_stack_network_and_its_endpoint_come_back_from_the_kernel():
    state, notes = rebuild([NETWORK], [CONTAINER], KERNEL, HostFacts(parents={"eth1": ETH1}), now=1.0)
    net = state.networks[NID]
    assert (net.bridge, net.table, net.mark_slot) == ("mn-front", 20007, 3)
    assert (net.subnet, net.gateway, net.subnet6, net.gateway6) == ("10.70.0.0/24", "10.70.0.1/24", "fd00:70::/64",
                                                                    "fd00:70::1/64")
    # next hops the kernel's table held (no default route of anyone else's through eth1 now)
    assert (net.parent_gateway, net.gateway_source) == ("192.168.101.254", GATEWAY_KEPT)
    assert (net.parent_gateway6, net.gateway6_source) == ("fe80::9", GATEWAY_KEPT)
    ep = state.endpoints[EID]
    assert (ep.address, ep.address6, ep.joined) == ("10.70.0.2/24", "fd00:70::2/64", True)
    assert ep.ports == (PublishedPort("tcp", "", 8080, 80),)  # no HostIP given: follows the parent, both families
    assert any("IPv6 forwarding and accept_ra" in note for note in notes)


def test_the_advertised_router_wins_over_the_kept_one():
    facts = HostFacts(parents={"eth1": ETH1}, default_gateways6={"eth1": ipaddress.IPv6Address("fe80::1")})
    state, _ = rebuild([NETWORK], [CONTAINER], KERNEL, facts, now=1.0)
    assert state.networks[NID].parent_gateway6 == "fe80::1"


def test_an_ipv6_only_network_comes_back_without_ipv4():
    only6 = {**NETWORK, "IPAM": {"Config": [{"Subnet": "fd00:70::/64", "Gateway": "fd00:70::1"}]},
             "Containers": {CID: {**NETWORK["Containers"][CID], "IPv4Address": ""}}}
    state, _ = rebuild([only6], [CONTAINER], KERNEL, HostFacts(parents={"eth1": ETH1}), now=1.0)
    net, ep = state.networks[NID], state.endpoints[EID]
    assert (net.subnet, net.families, net.parent_gateway) == ("", (6,), None)
    assert (ep.address, ep.address6) == ("", "fd00:70::2/64")


def test_values_to_put_back_come_from_the_last_good_copy():
    """What neither dockerd nor the kernel knows (the rp_filter a parent had, the IPv6 settings found) is
    taken from the state's backup when there is one; its networks and endpoints are not."""
    backup = State(networks={"b" * 64: rebuild([NETWORK], [], KERNEL, HostFacts(parents={"eth1": ETH1}),
                                                now=1.0)[0].networks[NID]},
                   parents={"eth1": ParentRecord(rp_filter_before=1)},
                   restore6={"net/ipv6/conf/all/forwarding": "0"})
    state, notes = rebuild([NETWORK], [CONTAINER], KERNEL, HostFacts(parents={"eth1": ETH1}), now=1.0,
                           backup=backup)
    assert state.parents["eth1"].rp_filter_before == 1
    assert state.restore6 == {"net/ipv6/conf/all/forwarding": "0"}
    assert set(state.networks) == {NID} and not any("unknown" in note for note in notes)


def test_a_network_whose_table_is_gone_gets_a_free_one_or_a_refusal():
    """The kernel lost the parent's rules: the rebuilt network takes a free table, as a new network would;
    with none free, the same refusal as at create, not a crash."""
    bare = KernelRemains(bridges=KERNEL.bridges)
    facts = HostFacts(parents={"eth1": ETH1}, tables_in_use=frozenset({TABLE_ALLOC_FIRST}))
    state, _ = rebuild([NETWORK], [CONTAINER], bare, facts, now=1.0)
    assert state.networks[NID].table == TABLE_ALLOC_FIRST + 1
    full = HostFacts(parents={"eth1": ETH1}, tables_in_use=frozenset(range(TABLE_ALLOC_FIRST, TABLE_ALLOC_LAST + 1)))
    with pytest.raises(Refusal, match="no free route table"):
        rebuild([NETWORK], [CONTAINER], bare, full, now=1.0)
