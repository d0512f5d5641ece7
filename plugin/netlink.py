"""Links, addresses, routes, rules and sysctls through netlink (pyroute2).

Works in whatever network namespace the process is in. Never reads /sys/class/net: under
``nsenter --net`` it still shows the root namespace's links.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
import struct
from pathlib import Path
from typing import Any, Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from . import devconf
from .desired import BridgeSpec, RouteSpec, RuleSpec, VethSpec
from .facts import HostFacts, ParentFacts
from .tags import LINK_BRIDGE, LINK_GONE, LINK_VETH, RT_PROTO, link_alias, parse_link_alias

SOL_NETLINK, NETLINK_GET_STRICT_CHK = 270, 12
RTM_NEWADDR, RTM_GETADDR = 20, 22
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IFA_ADDRESS = 1

SCOPE_LINK = 253
RTN_UNREACHABLE = 7
LAST_RESORT_METRIC = 0xFFFFFFFF  # below any real route with the same destination
IFF_UP = 0x1
SCOPE_UNIVERSE = 0
AF_INET = 2
LOCAL_TABLES = {253, 254, 255}


def _attr(msg: Any, name: str, default: Any = None) -> Any:
    value = msg.get_attr(name)
    return default if value is None else value


# -- links ----------------------------------------------------------------------------
def link_index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def link_names(ipr: IPRoute) -> dict[int, str]:
    return {link["index"]: _attr(link, "IFLA_IFNAME") for link in ipr.get_links()}


def tagged_links(ipr: IPRoute) -> dict[str, tuple[str, str, int]]:
    """ifname → (kind, object id, index) for every link carrying our alias."""
    out = {}
    for link in ipr.get_links():
        parsed = parse_link_alias(_attr(link, "IFLA_IFALIAS"))
        if parsed:
            out[_attr(link, "IFLA_IFNAME")] = (*parsed, link["index"])
    return out


def ipv4_addresses(ipr: IPRoute, index: int) -> tuple[ipaddress.IPv4Interface, ...]:
    """The IPv4 addresses of one link (``ipr``'s namespace must be this process's own).

    Asked of the kernel with the link's index in a strict dump (NETLINK_GET_STRICT_CHK), so the
    kernel answers with that link's addresses only: pyroute2 dumps every address of the host and
    filters in Python, a cost that grows with every bridge (network) on the host."""
    out = []
    body = struct.pack("=BBBBI", socket.AF_INET, 0, 0, 0, index)
    for kind, payload in _exchange(RTM_GETADDR, NLM_F_DUMP, body, strict=True):
        if kind != RTM_NEWADDR or len(payload) < 8:
            continue
        family, prefixlen, _f, _scope, ifindex = struct.unpack_from("=BBBBI", payload)
        address = devconf._attrs(payload[8:]).get(IFA_ADDRESS)
        if family == socket.AF_INET and ifindex == index and address and len(address) == 4:
            out.append(ipaddress.IPv4Interface(f"{socket.inet_ntoa(address)}/{prefixlen}"))
    return tuple(out)


def _exchange(kind: int, flags: int, body: bytes, strict: bool = False) -> list[tuple[int, bytes]]:
    """One request on a raw rtnetlink socket in this process's namespace: the kernel's answers
    as (type, body), up to its DONE (a dump) or its acknowledgement. Raises NetlinkError with
    the kernel's errno. ``strict``: NETLINK_GET_STRICT_CHK, so a dump honours the request's
    filters (kernels before 4.20 ignore it: callers filter again)."""
    seq = int.from_bytes(os.urandom(4), "little")
    replies: list[tuple[int, bytes]] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        if strict:
            try:
                sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
            except OSError:
                pass
        sock.bind((0, 0))
        sock.send(struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | flags, seq, 0) + body)
        while True:
            data = sock.recv(1 << 16)
            offset = 0
            while offset + 16 <= len(data):
                length, rkind, _flags, rseq, _pid = struct.unpack_from("=IHHII", data, offset)
                if length < 16:
                    raise NetlinkError(errno.EIO, "short netlink message")
                payload = data[offset + 16 : offset + length]
                offset += (length + 3) & ~3
                if rseq != seq:
                    continue
                if rkind == NLMSG_DONE:
                    return replies
                if rkind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise NetlinkError(code, os.strerror(code))
                    return replies
                replies.append((rkind, payload))


def parent_facts(ipr: IPRoute, ifname: str) -> ParentFacts:
    index = link_index(ipr, ifname)
    if index is None:
        return ParentFacts(ifname=ifname, exists=False)
    link = ipr.get_links(index)[0]
    return ParentFacts(
        ifname=ifname, exists=True, addresses=ipv4_addresses(ipr, index), mtu=_attr(link, "IFLA_MTU", 1500),
        up=bool(link["flags"] & IFF_UP),
    )


def host_facts(
    ipr: IPRoute,
    parents: Iterable[str],
    *,
    names: Iterable[str] = (),
    routing: bool = False,
    addresses: bool = False,
) -> HostFacts:
    """One snapshot for planning, reading only what is asked for: the given parents (a kernel
    lookup each), which of ``names`` exist as links (a lookup each), with ``routing`` the tables
    in use and the foreign default gateways (a route and a rule dump: only for the first network
    on a parent), with ``addresses`` every local IPv4 address (one address dump)."""
    parent_facts_ = {name: parent_facts(ipr, name) for name in sorted(set(parents))}
    links = frozenset(name for name in set(names) if link_index(ipr, name) is not None)
    tables: set[int] = set()
    gateways: dict[str, ipaddress.IPv4Address] = {}
    if routing:
        index_names = link_names(ipr)
        for msg in all_routes(ipr):
            tables.add(_attr(msg, "RTA_TABLE", msg["table"]))
            if msg["dst_len"] == 0 and msg["proto"] != RT_PROTO and _attr(msg, "RTA_GATEWAY"):
                dev = index_names.get(_attr(msg, "RTA_OIF"))
                if dev and dev not in gateways:
                    gateways[dev] = ipaddress.IPv4Address(_attr(msg, "RTA_GATEWAY"))
        for msg in ipr.get_rules(family=AF_INET):
            if _attr(msg, "FRA_PROTOCOL") != RT_PROTO:
                tables.add(_attr(msg, "FRA_TABLE", msg["table"]))
    local: frozenset[str] = frozenset()
    if addresses:
        local = frozenset(str(_attr(msg, "IFA_ADDRESS")) for msg in ipr.get_addr(family=AF_INET))
    return HostFacts(
        parents=parent_facts_, links=links, tables_in_use=frozenset(tables), default_gateways=gateways,
        local_addresses=local,
    )


def all_ipv4_addresses(ipr: IPRoute) -> list[tuple[str, ipaddress.IPv4Interface]]:
    names = link_names(ipr)
    return [
        (
            names.get(msg["index"], "?"),
            ipaddress.IPv4Interface(f"{_attr(msg, 'IFA_ADDRESS')}/{msg['prefixlen']}"),
        )
        for msg in ipr.get_addr(family=AF_INET)
    ]


def ensure_bridge(ipr: IPRoute, spec: BridgeSpec) -> None:
    index = link_index(ipr, spec.name)
    if index is None:
        ipr.link("add", ifname=spec.name, kind="bridge")
        index = link_index(ipr, spec.name)
    ipr.link("set", index=index, ifalias=link_alias(LINK_BRIDGE, spec.network_id), mtu=spec.mtu)
    if spec.address not in ipv4_addresses(ipr, index):
        ipr.addr("add", index=index, address=str(spec.address.ip), prefixlen=spec.address.network.prefixlen)
    ipr.link("set", index=index, state="up")


def ensure_veth(ipr: IPRoute, spec: VethSpec) -> None:
    """Host side on the bridge, up, hairpin on; the peer waits for dockerd to take it at Join.

    A new endpoint's veth is three raw netlink requests (:func:`_create_veth`); an existing one
    (a retry, the whole-host writer) goes through pyroute2."""
    if not spec.joined and _create_veth(spec):
        return
    bridge = link_index(ipr, spec.bridge)
    index = None
    if not spec.joined:
        peer = {"ifname": spec.peer, "mtu": spec.mtu}
        if spec.mac:
            peer["address"] = spec.mac
        try:
            ipr.link("add", ifname=spec.host, kind="veth", mtu=spec.mtu, master=bridge, state="up", peer=peer)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
            index = _reuse_veth(ipr, spec)
        else:
            index = link_index(ipr, spec.host)
    else:
        index = link_index(ipr, spec.host)
    if index is None:
        return  # joined and gone: the container owns the peer; nothing sensible to re-create
    ipr.link("set", index=index, ifalias=link_alias(LINK_VETH, spec.endpoint_id), master=bridge, state="up")
    # Hairpin: a container reaching its own published port loops back through its own port.
    ipr.brport("set", index=index, mode=1)


# -- raw rtnetlink for the hot path (CreateEndpoint) ------------------------------------------
RTM_NEWLINK, RTM_GETLINK = 16, 18
NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x4, 0x200, 0x400
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO, IFLA_IFALIAS = 1, 3, 4, 10, 18, 20
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
VETH_INFO_PEER = 1
IFLA_BRPORT_MODE = 4  # hairpin
NLA_F_NESTED = 0x8000
IFF_UP = 0x1


def _nla(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, flags, change)


def _rtnl(kind: int, flags: int, body: bytes) -> bytes:
    """One acknowledged request; the reply's body for a GET (empty otherwise)."""
    replies = _exchange(kind, NLM_F_ACK | flags, body)
    return replies[-1][1] if replies else b""


def _create_veth(spec: VethSpec) -> bool:
    """A new veth pair in three requests: the bridge's index; one create that also sets the
    MTUs and the peer's MAC and enslaves and raises the host side; one change that tags it
    and turns hairpin on (bridge port data, as ``ip link set X type bridge_slave hairpin on``).
    False when the host side exists already: the caller's slower path handles that."""
    found = _rtnl(RTM_GETLINK, 0, _ifinfo() + _nla(IFLA_IFNAME, spec.bridge.encode() + b"\0"))
    bridge = struct.unpack_from("=BxHiII", found)[2]
    peer = _ifinfo() + _nla(IFLA_IFNAME, spec.peer.encode() + b"\0") + _nla(IFLA_MTU, struct.pack("=I", spec.mtu))
    if spec.mac:
        peer += _nla(IFLA_ADDRESS, bytes(int(b, 16) for b in spec.mac.split(":")))
    info = _nla(IFLA_INFO_KIND, b"veth\0") + _nla(IFLA_INFO_DATA | NLA_F_NESTED, _nla(VETH_INFO_PEER, peer))
    create = (
        _ifinfo(flags=IFF_UP, change=IFF_UP)
        + _nla(IFLA_IFNAME, spec.host.encode() + b"\0")
        + _nla(IFLA_MTU, struct.pack("=I", spec.mtu))
        + _nla(IFLA_MASTER, struct.pack("=I", bridge))
        + _nla(IFLA_LINKINFO | NLA_F_NESTED, info)
    )
    try:
        _rtnl(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, create)
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            return False
        raise
    port = _nla(IFLA_INFO_SLAVE_KIND, b"bridge\0") + _nla(
        IFLA_INFO_SLAVE_DATA | NLA_F_NESTED, _nla(IFLA_BRPORT_MODE, b"\1")
    )
    _rtnl(
        RTM_NEWLINK,
        0,
        _ifinfo()
        + _nla(IFLA_IFNAME, spec.host.encode() + b"\0")
        + _nla(IFLA_IFALIAS, link_alias(LINK_VETH, spec.endpoint_id).encode())
        + _nla(IFLA_LINKINFO | NLA_F_NESTED, port),
    )
    return True


def _reuse_veth(ipr: IPRoute, spec: VethSpec) -> int | None:
    """The host side exists already (a retry, a whole-host run). A retired one (its endpoint
    went and came back before its deferred deletion) is deleted now and made anew."""
    try:
        found = ipr.link("get", ifname=spec.host)[0]
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise
        found = None  # the peer's name was taken: a retired pair whose deletion just finished
    if found is not None:
        if parse_link_alias(_attr(found, "IFLA_IFALIAS")) != (LINK_GONE, spec.endpoint_id):
            return found["index"]
        delete_link_index(ipr, found["index"])
    peer = {"ifname": spec.peer, "mtu": spec.mtu, **({"address": spec.mac} if spec.mac else {})}
    ipr.link("add", ifname=spec.host, kind="veth", mtu=spec.mtu, peer=peer)
    return link_index(ipr, spec.host)


def delete_link(ipr: IPRoute, name: str) -> None:
    index = link_index(ipr, name)
    if index is not None:
        delete_link_index(ipr, index)


def delete_link_index(ipr: IPRoute, index: int) -> None:
    try:
        ipr.link("del", index=index)
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise


def retire_link(ipr: IPRoute, name: str) -> int | None:
    """Re-tag a veth whose endpoint is gone (``multinic:gone:<id>``) and return its index, for a
    deletion after the response; None if it is not there. It stays enslaved until then: its
    peer is down (dockerd took it out of the container), so no frame crosses it."""
    try:
        found = ipr.link("get", ifname=name)[0]
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise
    alias = parse_link_alias(_attr(found, "IFLA_IFALIAS"))
    ipr.link("set", index=found["index"], ifalias=link_alias(LINK_GONE, alias[1] if alias else name))
    return found["index"]


# -- routes ---------------------------------------------------------------------------
def all_routes(ipr: IPRoute) -> list[Any]:
    """IPv4 routes of every table (``get_routes(table=0)`` returns nothing in pyroute2 0.9)."""
    return list(ipr.route("dump", family=AF_INET))


def _route_spec(msg: Any, names: dict[int, str]) -> RouteSpec | None:
    if msg["type"] == RTN_UNREACHABLE:
        return RouteSpec(
            table=_attr(msg, "RTA_TABLE", msg["table"]),
            dst=ipaddress.IPv4Network(f"{_attr(msg, 'RTA_DST', '0.0.0.0')}/{msg['dst_len']}"),
            dev="",
            unreachable=True,
        )
    dev = names.get(_attr(msg, "RTA_OIF"))
    if dev is None:
        return None
    gateway = _attr(msg, "RTA_GATEWAY")
    prefsrc = _attr(msg, "RTA_PREFSRC")
    return RouteSpec(
        table=_attr(msg, "RTA_TABLE", msg["table"]),
        dst=ipaddress.IPv4Network(f"{_attr(msg, 'RTA_DST', '0.0.0.0')}/{msg['dst_len']}"),
        dev=dev,
        gateway=ipaddress.IPv4Address(gateway) if gateway else None,
        prefsrc=ipaddress.IPv4Address(prefsrc) if prefsrc else None,
    )


def owned_routes(ipr: IPRoute) -> set[RouteSpec]:
    owned = [msg for msg in all_routes(ipr) if msg["proto"] == RT_PROTO]
    # Names of the few links our routes use (a lookup each), not a dump of every link.
    names: dict[int, str] = {}
    for index in {_attr(m, "RTA_OIF") for m in owned} - {None}:
        try:
            names[index] = _attr(ipr.get_links(index)[0], "IFLA_IFNAME")
        except (NetlinkError, IndexError):
            pass
    out = set()
    for msg in owned:
        spec = _route_spec(msg, names)
        if spec:
            out.add(spec)
    return out


def _route_args(ipr: IPRoute, spec: RouteSpec) -> dict[str, Any]:
    if spec.unreachable:
        return {
            "dst": str(spec.dst.network_address), "dst_len": spec.dst.prefixlen, "table": spec.table,
            "type": "unreachable", "priority": LAST_RESORT_METRIC, "proto": RT_PROTO,
        }
    args: dict[str, Any] = {
        "dst": str(spec.dst.network_address),
        "dst_len": spec.dst.prefixlen,
        "table": spec.table,
        "oif": link_index(ipr, spec.dev),
        "proto": RT_PROTO,
        "scope": SCOPE_UNIVERSE if spec.gateway else SCOPE_LINK,
    }
    if spec.gateway:
        args["gateway"] = str(spec.gateway)
    if spec.prefsrc:
        args["prefsrc"] = str(spec.prefsrc)
    return args


def replace_route(ipr: IPRoute, spec: RouteSpec) -> None:
    ipr.route("replace", **_route_args(ipr, spec))


def delete_route(ipr: IPRoute, spec: RouteSpec) -> None:
    try:
        ipr.route("del", **_route_args(ipr, spec))
    except NetlinkError as exc:
        if exc.code not in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
            raise


def routes_in_table(ipr: IPRoute, table: int) -> list[Any]:
    return [
        m for m in ipr.get_routes(family=AF_INET, table=table) if _attr(m, "RTA_TABLE", m["table"]) == table
    ]


def foreign_default_gateway(ipr: IPRoute, ifname: str) -> ipaddress.IPv4Address | None:
    """A default route through ``ifname`` in any table that is not ours (the NIC's own next hop)."""
    index = link_index(ipr, ifname)
    for msg in all_routes(ipr):
        if msg["dst_len"] == 0 and msg["proto"] != RT_PROTO and _attr(msg, "RTA_OIF") == index:
            gateway = _attr(msg, "RTA_GATEWAY")
            if gateway:
                return ipaddress.IPv4Address(gateway)
    return None


# -- rules ----------------------------------------------------------------------------
def _rule_spec(msg: Any) -> RuleSpec:
    src = _attr(msg, "FRA_SRC")
    suppress = _attr(msg, "FRA_SUPPRESS_PREFIXLEN")
    return RuleSpec(
        priority=_attr(msg, "FRA_PRIORITY", 0),
        table=_attr(msg, "FRA_TABLE", msg["table"]),
        src=ipaddress.IPv4Network(f"{src}/{msg['src_len']}") if src else None,
        fwmark=_attr(msg, "FRA_FWMARK"),
        fwmask=_attr(msg, "FRA_FWMASK") if _attr(msg, "FRA_FWMARK") is not None else None,
        suppress_prefixlen=None if suppress in (None, 0xFFFFFFFF, -1) else suppress,
    )


def owned_rules(ipr: IPRoute) -> set[RuleSpec]:
    return {_rule_spec(m) for m in ipr.get_rules(family=AF_INET) if _attr(m, "FRA_PROTOCOL") == RT_PROTO}


def rules_using_table(ipr: IPRoute, table: int) -> list[RuleSpec]:
    return [
        _rule_spec(m)
        for m in ipr.get_rules(family=AF_INET)
        if _attr(m, "FRA_TABLE", m["table"]) == table and _attr(m, "FRA_PROTOCOL") != RT_PROTO
    ]


def _rule_args(spec: RuleSpec) -> dict[str, Any]:
    args: dict[str, Any] = {"priority": spec.priority, "table": spec.table, "protocol": RT_PROTO}
    if spec.src is not None:
        args.update(src=str(spec.src.network_address), src_len=spec.src.prefixlen)
    if spec.fwmark is not None:
        args.update(fwmark=spec.fwmark, fwmask=spec.fwmask if spec.fwmask is not None else 0xFFFFFFFF)
    if spec.suppress_prefixlen is not None:
        args["suppress_prefixlen"] = spec.suppress_prefixlen
    return args


def add_rule(ipr: IPRoute, spec: RuleSpec) -> None:
    try:
        ipr.rule("add", **_rule_args(spec))
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


def delete_rule(ipr: IPRoute, spec: RuleSpec) -> None:
    try:
        ipr.rule("del", **_rule_args(spec))
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.ESRCH):
            raise


# -- sysctls --------------------------------------------------------------------------
_DEVCONF_PATH = re.compile(r"net/ipv4/conf/([^/]+)/([a-z_]+)")


def _devconf_key(path: str) -> tuple[str, str] | None:
    """``net/ipv4/conf/<if>/<name>`` for a real interface → (if, name); None otherwise."""
    match = _DEVCONF_PATH.fullmatch(path)
    if match and match.group(1) not in ("all", "default") and match.group(2) in devconf.DEVCONF:
        return match.group(1), match.group(2)
    return None


def read_sysctl(path: str) -> str | None:
    """``path`` like ``net/ipv4/conf/eth1/rp_filter``, in the caller's netns. Per-interface IPv4
    settings are read over netlink (see :mod:`plugin.devconf`), the rest from /proc/sys."""
    key = _devconf_key(path)
    if key is not None:
        value = devconf.read(*key)
        return None if value is None else str(value)
    try:
        return Path("/proc/sys", path).read_text().strip()
    except FileNotFoundError:
        return None


def write_sysctl(path: str, value: str) -> None:
    """Per-interface IPv4 settings go over netlink: a managed plugin sees /proc/sys read-only."""
    key = _devconf_key(path)
    if key is not None:
        current = devconf.read(*key)
        if current is not None and current != int(value):
            devconf.write(*key, int(value))
        return
    target = Path("/proc/sys", path)
    if target.exists() and target.read_text().strip() != value:
        target.write_text(value)


def sync(items: Iterable[Any], present: set[Any], add: Any, remove: Any) -> None:
    """Make ``present`` equal to ``items``: add what is missing, remove what is extra."""
    wanted = set(items)
    for item in sorted(wanted - present, key=repr):
        add(item)
    for item in sorted(present - wanted, key=repr):
        remove(item)
