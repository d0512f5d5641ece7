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
    record = nl.Record(nl.RTM_NEWRULE, routes._rule(spec))
    assert routes._rule_spec(record) == spec
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
