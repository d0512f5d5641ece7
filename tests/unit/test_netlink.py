"""The plugin's rtnetlink codec (pure): what it asks the kernel for a rule decodes back to the same rule,
and the kernel's answers decode to pyroute2's attribute names."""

import ipaddress
import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from plugin.kernel import netlink as nl
from plugin.kernel import routes
from plugin.kernel.tags import RT_PROTO
from plugin.plan.desired import RuleSpec


@st.composite
def rules(draw):
    family = draw(st.sampled_from([4, 6]))
    bits = 32 if family == 4 else 128
    src = None
    if draw(st.booleans()):
        prefix = draw(st.integers(0, bits))
        raw = draw(st.integers(0, 2**bits - 1))
        network = ipaddress.IPv4Network if family == 4 else ipaddress.IPv6Network
        src = network((raw, prefix), strict=False)
    mark = draw(st.none() | st.integers(1, 2**32 - 1))
    return RuleSpec(priority=draw(st.integers(0, 2**32 - 1)), table=draw(st.integers(1, 2**32 - 1)), src=src,
                    fwmark=mark, fwmask=draw(st.integers(1, 2**32 - 1)) if mark is not None else None,
                    suppress_prefixlen=draw(st.none() | st.integers(0, bits)), family=family)


@given(rules())
def test_a_rule_decodes_to_what_was_asked(spec):
    record = nl.Record(nl.RTM_NEWRULE, routes.encode_rule(spec))
    assert routes.decode_rule(record) == spec
    assert record.get_attr("FRA_PROTOCOL") == RT_PROTO


def test_a_route_and_a_link_decode_with_pyroute2_names():
    def attr(kind: int, value: bytes) -> bytes:
        raw = struct.pack("=HH", 4 + len(value), kind) + value
        return raw + b"\0" * (-len(raw) % 4)

    body = (nl.RTMSG.pack(socket.AF_INET6, 0, 0, 0, 252, 9, 0, 1, 0) + attr(15, struct.pack("=I", 1000))
            + attr(4, struct.pack("=I", 7)) + attr(5, ipaddress.ip_address("fe80::1").packed))
    route = nl.Record(nl.RTM_NEWROUTE, body)
    assert (route["family"], route["dst_len"], route["proto"], route["type"]) == (socket.AF_INET6, 0, 9, 1)
    assert routes.table_of(route) == 1000 and route.get_attr("RTA_OIF") == 7
    assert route.get_attr("RTA_GATEWAY") == "fe80::1" and route.get_attr("RTA_DST") is None
    link = nl.Record(nl.RTM_NEWLINK, nl.ifinfo(5, 0x1) + attr(3, b"eth1\0") + attr(4, struct.pack("=I", 9000))
                     + attr(1, bytes.fromhex("020000000001")) + attr(20, b"multinic:net:abc"))
    assert (link["index"], link["flags"]) == (5, 0x1)
    assert (link.get_attr("IFLA_IFNAME"), link.get_attr("IFLA_MTU"), link.get_attr("IFLA_ADDRESS"),
            link.get_attr("IFLA_IFALIAS")) == ("eth1", 9000, "02:00:00:00:00:01", "multinic:net:abc")


def test_the_arp_announcement_is_a_gratuitous_request_from_the_container():
    from ipaddress import IPv4Address

    from plugin.kernel.links import arp_request

    mac, address = bytes.fromhex("02420a970002"), IPv4Address("10.151.0.2")
    frame = arp_request(mac, address, address)
    assert frame.hex() == ("ffffffffffff" "02420a970002" "0806"  # broadcast, from the container, ARP
                           "0001" "0800" "06" "04" "0001"  # Ethernet/IPv4, a request
                           "02420a970002" "0a970002" "000000000000" "0a970002")  # sender = target address


def test_the_ipv6_announcement_is_an_unsolicited_neighbour_advertisement():
    """RFC 4861 7.2.6: to all nodes, hop limit 255, override set and solicited not, with the target's
    link-layer address; its ICMPv6 checksum sums, with the pseudo-header, to 0xffff."""
    from ipaddress import IPv4Address, IPv6Address

    from plugin.kernel.links import announcement

    mac, address = bytes.fromhex("02420a970002"), IPv6Address("fd00:151::2")
    frame, ethertype = announcement(mac, address)
    assert ethertype == 0x86DD
    assert frame[:14].hex() == "333300000001" "02420a970002" "86dd"  # all nodes' MAC, from the container
    ip6, icmp = frame[14:54], frame[54:]
    assert ip6.hex() == ("60000000" "0020" "3a" "ff"  # 32 bytes of ICMPv6, hop limit 255
                         + address.packed.hex() + "ff020000000000000000000000000001")
    assert icmp[0] == 136 and icmp[1] == 0 and icmp[4:8].hex() == "20000000"  # override, not solicited
    assert icmp[8:24] == address.packed and icmp[24:].hex() == "0201" "02420a970002"  # target lladdr
    pseudo = ip6[8:40] + len(icmp).to_bytes(4, "big") + bytes([0, 0, 0, 58])
    data = pseudo + icmp
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert total == 0xFFFF
    assert announcement(mac, IPv4Address("10.151.0.2"))[1] == 0x0806
