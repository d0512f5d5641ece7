"""Links: bridges and veths made, tagged, retired and deleted; a link's addresses and state read.

Never reads /sys/class/net (under ``nsenter --net`` it shows the root namespace's links).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any, Iterable

from pyroute2.netlink.exceptions import NetlinkError

from ..plan.desired import BridgeSpec, VethSpec
from ..plan.facts import ParentFacts
from . import netlink as nl
from .netlink import Rtnl
from .tags import LINK_BRIDGE, LINK_GONE, LINK_VETH, link_alias, parse_link_alias

IFF_UP = 0x1
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO, IFLA_IFALIAS = 1, 3, 4, 10, 18, 20
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
VETH_INFO_PEER = 1
IFLA_BRPORT_MODE = 4  # hairpin
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_TEMPORARY, IFA_F_NODAD, IFA_F_DADFAILED, IFA_F_DEPRECATED, IFA_F_TENTATIVE, IFA_F_PERMANENT = (
    0x01, 0x02, 0x08, 0x20, 0x40, 0x80)
SCOPE_UNIVERSE = 0


def attr(msg: Any, name: str, default: Any = None) -> Any:
    """An attribute of a message (:class:`.netlink.Record`), ``default`` when absent."""
    value = msg.get_attr(name)
    return default if value is None else value


def link_index(rt: Rtnl, name: str) -> int | None:
    try:
        return rt.get_link_named(name)["index"]
    except NetlinkError as exc:
        if exc.code not in (errno.ENODEV, errno.EINVAL):  # EINVAL: not a name a link can have
            raise
        return None


def link_names(rt: Rtnl) -> dict[int, str]:
    return {link["index"]: attr(link, "IFLA_IFNAME") for link in rt.get_links()}


def tagged_links(rt: Rtnl) -> dict[str, tuple[str, str, int]]:
    """ifname → (kind, object id, index) for every link carrying our alias."""
    out = {}
    for link in rt.get_links():
        parsed = parse_link_alias(attr(link, "IFLA_IFALIAS"))
        if parsed:
            out[attr(link, "IFLA_IFNAME")] = (*parsed, link["index"])
    return out


def foreign_ipv6_bridges(rt: Rtnl) -> frozenset[str]:
    """Bridges that are not ours and hold a global IPv6 address (Docker's own ``--ipv6`` networks, a VM
    host's): they route IPv6 through this host, so they need its IPv6 forwarding."""
    bridges = {link["index"]: attr(link, "IFLA_IFNAME") for link in rt.get_links()
               if attr(link, "IFLA_INFO_KIND") == "bridge" and not parse_link_alias(attr(link, "IFLA_IFALIAS"))}
    return frozenset(bridges[m["index"]] for m in rt.get_addr(socket.AF_INET6)
                     if m["index"] in bridges and m["scope"] == SCOPE_UNIVERSE
                     and not ipaddress.IPv6Address(attr(m, "IFA_ADDRESS")).is_link_local)


def _address_dump(index: int, family: int) -> list[tuple[Any, int, int]]:
    """(address, flags, scope) of one link's addresses of a family, asked of the kernel with the link's
    index in a strict dump, so the kernel answers with that link's only (pyroute2 dumps every address
    of the host and filters in Python)."""
    out = []
    size = 4 if family == socket.AF_INET else 16
    interface = ipaddress.IPv4Interface if family == socket.AF_INET else ipaddress.IPv6Interface
    for kind, body in nl.request(nl.RTM_GETADDR, nl.NLM_F_DUMP, nl.IFADDRMSG.pack(family, 0, 0, 0, index),
                                 strict=True):
        if kind != nl.RTM_NEWADDR or len(body) < nl.IFADDRMSG.size:
            continue
        fam, prefixlen, flags, scope, ifindex = nl.IFADDRMSG.unpack_from(body)
        found = nl.attrs(body, nl.IFADDRMSG.size)
        address = found.get(IFA_ADDRESS)
        if fam == family and ifindex == index and address and len(address) == size:
            text = socket.inet_ntop(family, address)
            out.append((interface(f"{text}/{prefixlen}"), nl.u32(found.get(IFA_FLAGS), flags), scope))
    return out


def addresses(index: int) -> tuple[ipaddress.IPv4Interface, ...]:
    """The IPv4 addresses of one link."""
    return tuple(a for a, _flags, _scope in _address_dump(index, socket.AF_INET))


def addresses6(index: int) -> tuple[tuple[ipaddress.IPv6Interface, ...], tuple[ipaddress.IPv6Network, ...]]:
    """One link's IPv6 addresses ports may be published on and egress may leave from (global, not
    temporary, deprecated, tentative or failed), and the on-link prefixes of all its global ones."""
    stable, prefixes = [], []
    for address, flags, scope in _address_dump(index, socket.AF_INET6):
        if scope != SCOPE_UNIVERSE or address.ip.is_link_local:
            continue
        if address.network not in prefixes and address.network.prefixlen < 128:
            prefixes.append(address.network)
        if not flags & (IFA_F_TEMPORARY | IFA_F_DEPRECATED | IFA_F_TENTATIVE | IFA_F_DADFAILED):
            stable.append((not flags & IFA_F_PERMANENT, address.ip, address))
    # Configured (permanent) addresses first, then autoconfigured ones; by address within each: the first is
    # the one egress leaves from, whatever order the kernel lists them in.
    return tuple(a for _auto, _ip, a in sorted(stable)), tuple(sorted(prefixes))


def all_addresses(rt: Rtnl) -> list[tuple[str, ipaddress.IPv4Interface | ipaddress.IPv6Interface]]:
    """(ifname, address) of every address, both families, in ``rt``'s namespace."""
    names = link_names(rt)
    return [(names.get(msg["index"], "?"), ipaddress.ip_interface(f"{attr(msg, 'IFA_ADDRESS')}/{msg['prefixlen']}"))
            for msg in rt.get_addr()]


def parent_facts(rt: Rtnl, ifname: str) -> ParentFacts:
    index = link_index(rt, ifname)
    if index is None:
        return ParentFacts(ifname=ifname, exists=False)
    link = rt.get_links(index)[0]
    stable6, prefixes6 = addresses6(index)
    return ParentFacts(ifname=ifname, exists=True, addresses=addresses(index), mtu=attr(link, "IFLA_MTU", 1500),
                       up=bool(link["flags"] & IFF_UP), addresses6=stable6, prefixes6=prefixes6)


NUD_CONFIRMED = 0x02 | 0x80  # REACHABLE, PERMANENT
NUD_INCOMPLETE = 0x01  # resolving: the packets sent to it wait in the kernel
ETH_P_ARP, ETH_P_IPV6 = 0x0806, 0x86DD
ALL_NODES = ipaddress.IPv6Address("ff02::1")


def arp_request(mac: bytes, sender: ipaddress.IPv4Address, target: ipaddress.IPv4Address) -> bytes:
    """The Ethernet frame of a broadcast ARP request (who has ``target``? tell ``sender`` at ``mac``); with
    ``target`` = ``sender``, a gratuitous ARP (an announcement, as ``arping -U`` sends)."""
    return (b"\xff" * 6 + mac + ETH_P_ARP.to_bytes(2, "big") + bytes.fromhex("0001080006040001") + mac
            + sender.packed + bytes(6) + target.packed)


def neighbour_advertisement(mac: bytes, address: ipaddress.IPv6Address) -> bytes:
    """The Ethernet frame of an unsolicited neighbour advertisement (RFC 4861 7.2.6): ``address`` is at
    ``mac``, override set, to all nodes, from ``address`` itself, hop limit 255; IPv6's gratuitous ARP."""
    icmp = bytes([136, 0, 0, 0, 0x20, 0, 0, 0]) + address.packed + bytes([2, 1]) + mac  # O flag; target lladdr
    pseudo = address.packed + ALL_NODES.packed + len(icmp).to_bytes(4, "big") + bytes([0, 0, 0, 58])
    total = sum(int.from_bytes(pair, "big") for pair in _pairs(pseudo + icmp))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    icmp = icmp[:2] + (~total & 0xFFFF).to_bytes(2, "big") + icmp[4:]
    ip6 = (bytes([0x60, 0, 0, 0]) + len(icmp).to_bytes(2, "big") + bytes([58, 255]) + address.packed
           + ALL_NODES.packed)
    return bytes.fromhex("333300000001") + mac + ETH_P_IPV6.to_bytes(2, "big") + ip6 + icmp


def _pairs(data: bytes) -> Iterable[bytes]:
    data += b"\0" * (len(data) % 2)
    return (data[i:i + 2] for i in range(0, len(data), 2))


def announcement(mac: bytes, address: Any) -> tuple[bytes, int]:
    """(the frame that tells the link ``address`` is at ``mac``, its ethertype): a gratuitous ARP for
    IPv4, an unsolicited neighbour advertisement for IPv6."""
    if address.version == 4:
        return arp_request(mac, address, address), ETH_P_ARP
    return neighbour_advertisement(mac, address), ETH_P_IPV6


def resolving(rt: Rtnl, ifname: str, addresses: Iterable[Any]) -> set[Any]:
    """Those of ``addresses`` (either family) the kernel is still resolving on ``ifname`` (INCOMPLETE:
    packets to them wait for an answer, or for its next ARP or neighbour solicitation)."""
    index = link_index(rt, ifname)
    wanted = {str(a): a for a in addresses}
    if index is None or not wanted:
        return set()
    families = {socket.AF_INET6 if a.version == 6 else socket.AF_INET for a in wanted.values()}
    return {wanted[dst] for family in sorted(families) for entry in rt.get_neighbours(family, index)
            if entry["state"] & NUD_INCOMPLETE and (dst := attr(entry, "NDA_DST")) in wanted}


def neighbour_answers(rt: Rtnl, ifname: str, address: str, tries: int = 3, wait: float = 0.5) -> bool:
    """Does ``address`` answer on ``ifname``? Yes if the kernel confirmed it lately (REACHABLE, PERMANENT);
    else ask it, as ``arping`` does: an ARP request from the NIC's address, up to ``tries`` times. Reads
    and sends only: the kernel's neighbour table is left as it is."""
    import select
    import time

    index = link_index(rt, ifname)
    if index is None:
        return False
    for entry in rt.get_neighbours(socket.AF_INET, index):
        if attr(entry, "NDA_DST") == address and entry["state"] & NUD_CONFIRMED:
            return True
    link = rt.get_links(index)[0]
    mac = bytes.fromhex(attr(link, "IFLA_ADDRESS", "00:00:00:00:00:00").replace(":", ""))
    own = addresses(index)
    target = ipaddress.IPv4Address(address)
    source = next((a.ip for a in own if target in a.network), own[0].ip if own else ipaddress.IPv4Address(0))
    request = arp_request(mac, source, target)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as sock:
        sock.bind((ifname, ETH_P_ARP))
        for _ in range(tries):
            sock.send(request)
            deadline = time.monotonic() + wait
            while (left := deadline - time.monotonic()) > 0:
                if not select.select([sock], [], [], left)[0]:
                    break
                frame = sock.recv(128)
                if frame[20:22] == b"\0\x02" and frame[28:32] == target.packed:  # an ARP reply from it
                    return True
    return False


def _change_link(rt: Rtnl, index: int, attributes: bytes = b"", up: bool = False) -> None:
    rt.ack(nl.RTM_NEWLINK, 0, nl.ifinfo(index, IFF_UP if up else 0, IFF_UP if up else 0) + attributes)


def _alias(kind: str, object_id: str) -> bytes:
    return nl.nla(IFLA_IFALIAS, link_alias(kind, object_id).encode())


def _add_address(rt: Rtnl, index: int, address: Any, flags: int = 0) -> None:
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    body = nl.IFADDRMSG.pack(family, address.network.prefixlen, flags & 0xFF, SCOPE_UNIVERSE, index)
    if family == socket.AF_INET:
        body += nl.nla(IFA_LOCAL, address.ip.packed)
    body += nl.nla(IFA_ADDRESS, address.ip.packed) + (nl.nla_u32(IFA_FLAGS, flags) if flags else b"")
    rt.ack(nl.RTM_NEWADDR, nl.NLM_F_CREATE | nl.NLM_F_EXCL, body)


def ensure_bridge(rt: Rtnl, spec: BridgeSpec) -> None:
    index = link_index(rt, spec.name)
    if index is None:
        rt.ack(nl.RTM_NEWLINK, nl.NLM_F_CREATE | nl.NLM_F_EXCL, nl.ifinfo() + nl.nla_str(IFLA_IFNAME, spec.name)
               + nl.nla(IFLA_LINKINFO, nl.nla(IFLA_INFO_KIND, b"bridge\0"), nested=True))
        index = link_index(rt, spec.name)
        assert index is not None
    _change_link(rt, index, _alias(LINK_BRIDGE, spec.network_id) + nl.nla_u32(IFLA_MTU, spec.mtu))
    if spec.address is not None and spec.address not in addresses(index):
        _add_address(rt, index, spec.address)
    if spec.address6 is not None and spec.address6 not in (a for a, _f, _s in _address_dump(index, socket.AF_INET6)):
        _add_address(rt, index, spec.address6, IFA_F_NODAD)  # the gateway is ours alone on this bridge: usable at once
    _change_link(rt, index, up=True)


def ensure_veth(rt: Rtnl, spec: VethSpec) -> None:
    """Host side on the bridge, up, tagged, hairpin on; the peer waits for dockerd to take it at Join.
    A new endpoint's veth is two requests after the bridge's lookup (:func:`_create_veth`); an existing
    one (a retry, the whole-host writer) is set as it should be."""
    bridge = link_index(rt, spec.bridge)
    if bridge is None:
        raise NetlinkError(errno.ENODEV, f"bridge {spec.bridge} not found")
    if not spec.joined:
        try:
            _create_veth(rt, spec, bridge)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
            index = _reuse_veth(rt, spec)
        else:
            rt.ack(nl.RTM_NEWLINK, 0, nl.ifinfo() + nl.nla_str(IFLA_IFNAME, spec.host)
                   + _alias(LINK_VETH, spec.endpoint_id) + _HAIRPIN)
            return
    else:
        index = link_index(rt, spec.host)
    if index is None:
        return  # joined and gone: the container owns the peer; nothing sensible to re-create
    _change_link(rt, index, _alias(LINK_VETH, spec.endpoint_id) + nl.nla_u32(IFLA_MASTER, bridge), up=True)
    _change_link(rt, index, _HAIRPIN)


# hairpin (a container reaching its own published port): bridge port data, as ``ip link set X type
# bridge_slave hairpin on``, on a link already enslaved
_HAIRPIN = nl.nla(IFLA_LINKINFO, nl.nla(IFLA_INFO_SLAVE_KIND, b"bridge\0") + nl.nla(
    IFLA_INFO_SLAVE_DATA, nl.nla(IFLA_BRPORT_MODE, b"\1"), nested=True), nested=True)


def _create_veth(rt: Rtnl, spec: VethSpec, bridge: int | None) -> None:
    """A new veth pair in one request that also sets the MTUs and the peer's MAC and, given ``bridge``,
    enslaves the host side and raises it. NetlinkError EEXIST when the host side exists already."""
    peer = nl.ifinfo() + nl.nla_str(IFLA_IFNAME, spec.peer) + nl.nla_u32(IFLA_MTU, spec.mtu)
    if spec.mac:
        peer += nl.nla(IFLA_ADDRESS, bytes(int(b, 16) for b in spec.mac.split(":")))
    info = nl.nla(IFLA_INFO_KIND, b"veth\0") + nl.nla(IFLA_INFO_DATA, nl.nla(VETH_INFO_PEER, peer), nested=True)
    up = IFF_UP if bridge is not None else 0
    master = nl.nla_u32(IFLA_MASTER, bridge) if bridge is not None else b""
    create = (nl.ifinfo(flags=up, change=up) + nl.nla_str(IFLA_IFNAME, spec.host) + nl.nla_u32(IFLA_MTU, spec.mtu)
              + master + nl.nla(IFLA_LINKINFO, info, nested=True))
    rt.ack(nl.RTM_NEWLINK, nl.NLM_F_CREATE | nl.NLM_F_EXCL, create)


def _reuse_veth(rt: Rtnl, spec: VethSpec) -> int | None:
    """The host side exists already (a retry, a whole-host run). A retired one (its endpoint went and
    came back before its deferred deletion) is deleted now and made anew."""
    try:
        found = rt.get_link_named(spec.host)
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise
        found = None  # the peer's name was taken: a retired pair whose deletion just finished
    if found is not None:
        if parse_link_alias(attr(found, "IFLA_IFALIAS")) != (LINK_GONE, spec.endpoint_id):
            return found["index"]
        delete_link_index(rt, found["index"])
    _create_veth(rt, spec, None)
    return link_index(rt, spec.host)


def delete_link(rt: Rtnl, name: str) -> None:
    index = link_index(rt, name)
    if index is not None:
        delete_link_index(rt, index)


def delete_link_index(rt: Rtnl, index: int) -> None:
    try:
        rt.ack(nl.RTM_DELLINK, 0, nl.ifinfo(index))
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise


def retire_link(rt: Rtnl, name: str) -> int | None:
    """Re-tag a veth whose endpoint is gone (``multinic:gone:<id>``) and return its index, for a
    deletion after the response; None if it is not there. Its peer is down (dockerd took it out of
    the container), so no frame crosses it meanwhile."""
    try:
        found = rt.get_link_named(name)
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise
    alias = parse_link_alias(attr(found, "IFLA_IFALIAS"))
    _change_link(rt, found["index"], _alias(LINK_GONE, alias[1] if alias else name))
    return found["index"]

