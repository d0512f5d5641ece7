"""doctor's IPv6 checks over hand-built facts: forwarding, accept_ra where router advertisements matter,
disable_ipv6 on a parent, the ip6tables flavour."""

from __future__ import annotations

import dataclasses

from plugin.kernel.firewall.view import parse
from plugin.ops.doctor import ERROR, OK, SKIP, WARN, Facts, ParentInfo
from plugin.ops.doctor.ipv6 import check_accept_ra, check_ip6tables_flavour, check_ipv6_forwarding, check_parents_ipv6
from plugin.plan.state import NetworkRecord, State

NID = "a" * 64


def dual_stack() -> State:
    net = NetworkRecord(id=NID, bridge="mn-a", subnet="10.10.0.0/24", gateway="10.10.0.1/24", parent="eth1",
                        parent_gateway="192.168.101.1", table=20000, mark_slot=1, subnet6="fd00:10::/64",
                        gateway6="fd00:10::1/64", parent_gateway6="fe80::1")
    return State(networks={NID: net})


def statuses(results):
    return [(r.status, r.message.split(":")[0]) for r in results]


def test_forwarding_must_be_on_while_ipv6_networks_exist():
    assert check_ipv6_forwarding(Facts(forwarding6="0"))[0].status == OK
    bad = check_ipv6_forwarding(Facts(state=dual_stack(), forwarding6="0"))[0]
    assert bad.status == ERROR and bad.fix == "multinic reconcile"


def test_accept_ra_one_with_forwarding_on_names_the_nic_and_the_fix():
    f = Facts(state=dual_stack(), forwarding6="1", accept_ra={"eth0": 1, "eth1": 2}, ra_default=["eth0", "eth1"],
              default_routes6=["eth1"])
    results = check_accept_ra(f)
    assert statuses(results) == [(ERROR, "eth0"), (OK, "eth1")]
    assert results[0].fix == "sysctl -w net.ipv6.conf.eth0.accept_ra=2"


def test_accept_ra_before_any_ipv6_network_says_what_multinic_will_do():
    f = Facts(forwarding6="0", accept_ra={"eth0": 1}, ra_default=["eth0"], default_routes6=["eth0"])
    assert "multinic sets 2 before it turns IPv6 forwarding on" in check_accept_ra(f)[0].message


def test_a_lost_default_route_is_pointed_at():
    f = Facts(forwarding6="1", accept_ra={"lo": 1, "eth0": 1}, ra_default=[], default_routes6=[])
    result = check_accept_ra(f)[0]
    assert result.status == WARN and "eth0" in result.message and "accept_ra=2" in result.fix


def test_parent_with_ipv6_disabled_is_an_error():
    f = Facts(state=dual_stack(), parents={"eth1": ParentInfo("eth1", True, True, disable_ipv6="1")})
    result = check_parents_ipv6(f)[0]
    assert result.status == ERROR and result.fix == "sysctl -w net.ipv6.conf.eth1.disable_ipv6=0"
    assert check_parents_ipv6(Facts())[0].status == SKIP


def test_ip6tables_flavour_follows_dockers():
    docker = parse("*filter\n:FORWARD DROP [0:0]\n:DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\nCOMMIT\n")
    ours = parse("*filter\n:MULTINIC-FORWARD - [0:0]\nCOMMIT\n")
    f = Facts(state=dual_stack(), ip6tables={"nft": docker, "legacy": ours})
    result = check_ip6tables_flavour(f)[0]
    assert result.status == ERROR and "MULTINIC_FIREWALL=nft" in result.fix
    assert check_ip6tables_flavour(Facts(state=dual_stack(), ip6tables={"nft": ours}))[0].status == OK


def test_ip6tables_flavour_with_the_native_backend_is_its_ip6_table():
    """With the native backend multinic's IPv6 rules are the table ``ip6 multinic``, not ip6tables chains."""
    f = Facts(state=dual_stack(), firewall_selected="nftables", nft_tables=["ip multinic", "ip6 multinic"])
    result = check_ip6tables_flavour(f)[0]
    assert result.status == OK and "ip6 multinic" in result.message
    missing = check_ip6tables_flavour(Facts(state=dual_stack(), firewall_selected="nftables",
                                            nft_tables=["ip multinic"]))[0]
    assert missing.status == ERROR and "ip6 multinic" in missing.message and missing.fix == "multinic reconcile"


def test_an_ip6tables_forward_drop_is_opened_or_named_per_family():
    """Docker's ip6tables FORWARD DROP (Engine 27+) drops the IPv6 of multinic's networks unless multinic's
    opening is in ip6tables too; an IPv4-only host's networks do not care about it."""
    from plugin.ops.doctor.host import check_forward_drop

    drop6 = {"family": "ip6", "table": "filter", "chain": "FORWARD", "prio": 0, "rules": []}
    docker = parse("*filter\n:FORWARD DROP [0:0]\n:DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\nCOMMIT\n")
    opened = parse("*filter\n:FORWARD DROP [0:0]\n:DOCKER-USER - [0:0]\n:MULTINIC-FORWARD - [0:0]\n"
                   "-A DOCKER-USER -m comment --comment multinic -j MULTINIC-FORWARD\nCOMMIT\n")
    f = Facts(state=dual_stack(), forward_drops=[drop6], iptables={"nft": opened}, ip6tables={"nft": docker})
    result = check_forward_drop(f)[0]
    assert result.status == ERROR and result.message.startswith("ip6 filter chain FORWARD")
    assert "ip6tables -I FORWARD -i mn-+ -j ACCEPT" in result.fix
    f = Facts(state=dual_stack(), forward_drops=[drop6], iptables={"nft": opened}, ip6tables={"nft": opened})
    assert check_forward_drop(f)[0].status == OK
    v4_only = State(networks={NID: dataclasses.replace(dual_stack().networks[NID], subnet6="", gateway6="")})
    f = Facts(state=v4_only, forward_drops=[drop6], iptables={"nft": opened}, ip6tables={"nft": docker})
    assert check_forward_drop(f)[0].status == OK


def test_a_parent_of_ipv6_only_networks_needs_no_ipv4_address():
    """An IPv6-only network's parent may have no IPv4 address: doctor's IPv4 checks do not fail it (they
    still do for a parent that also carries an IPv4 network)."""
    from plugin.ops.doctor import check_parents

    only6 = dataclasses.replace(dual_stack().networks[NID], subnet="", gateway="", parent_gateway=None)
    parent = {"eth1": ParentInfo("eth1", True, True)}
    assert check_parents(Facts(state=State(networks={NID: only6}), parents=parent))[0].status == OK
    assert check_parents(Facts(state=dual_stack(), parents=parent))[0].status == ERROR


def test_the_ip6tables_docker_user_order_is_checked_while_an_ipv6_network_exists():
    """Engine 27+ keeps an IPv6 DOCKER-USER: multinic's jump there must come after the user's rules, as in
    iptables; an IPv4-only host gets no IPv6 verdict."""
    from plugin.ops.doctor.host import check_forward

    head = ("*filter\n:FORWARD DROP [0:0]\n:DOCKER-USER - [0:0]\n:MULTINIC-FORWARD - [0:0]\n"
            "-A FORWARD -j DOCKER-USER\n")
    user = "-A DOCKER-USER -s 2001:db8:bad::/48 -j DROP\n"
    ours = "-A DOCKER-USER -m comment --comment multinic -j MULTINIC-FORWARD\n"
    good, bad = parse(head + user + ours + "COMMIT\n"), parse(head + ours + user + "COMMIT\n")
    f = Facts(state=dual_stack(), iptables={"nft": good}, ip6tables={"nft": bad})
    assert statuses(check_forward(f)) == [(OK, "iptables FORWARD policy DROP; FORWARD enters multinic through "
                                                "DOCKER-USER, after your 1 rule(s) there"),
                                          (ERROR, "multinic's jump in ip6tables DOCKER-USER is rule 1 of 2")]
    assert [r.check for r in check_forward(f)] == ["forward", "forward6"]
    f = Facts(state=dual_stack(), iptables={"nft": good}, ip6tables={"nft": good})
    assert [r.status for r in check_forward(f)] == [OK, OK]
    v4_only = State(networks={NID: dataclasses.replace(dual_stack().networks[NID], subnet6="", gateway6="")})
    assert [r.check for r in check_forward(Facts(state=v4_only, iptables={"nft": good}, ip6tables={"nft": bad}))] \
        == ["forward"]
