"""Routes and ip rules: ours (protocol :data:`.tags.RT_PROTO`) read, added and deleted, in the host's
namespace or a container's; the routes and rules of others only ever read."""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from ..plan.desired import RouteSpec, RuleSpec
from . import netlink as nl
from .links import attr, link_index, link_names
from .netlink import Rtnl
from .tags import RT_PROTO

SCOPE_UNIVERSE, SCOPE_LINK, SCOPE_NOWHERE = 0, 253, 255  # NOWHERE in a deletion: whatever its scope
RTN_UNICAST, RTN_UNREACHABLE = 1, 7
RT_TABLE_COMPAT = 252  # the header's table for one above 255 (RTA_TABLE says which)
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC, RTA_TABLE = 1, 4, 5, 6, 7, 15
FRA_SRC, FRA_PRIORITY, FRA_FWMARK, FRA_SUPPRESS_PREFIXLEN = 2, 6, 10, 14
FRA_TABLE, FRA_FWMASK, FRA_PROTOCOL = 15, 16, 21
FR_ACT_TO_TBL = 1
RTPROT_RA = 9
LAST_RESORT_METRIC = 0xFFFFFFFF  # below any real route with the same destination


FAMILIES = (socket.AF_INET, socket.AF_INET6)


def table_of(msg: Any) -> int:
    return attr(msg, "RTA_TABLE", msg["table"])


def _route_spec(msg: Any, names: dict[int, str]) -> RouteSpec | None:
    any_address = "::" if msg["family"] == socket.AF_INET6 else "0.0.0.0"
    dst = ipaddress.ip_network(f"{attr(msg, 'RTA_DST', any_address)}/{msg['dst_len']}")
    if msg["type"] == RTN_UNREACHABLE:
        return RouteSpec(table=table_of(msg), dst=dst, dev="", unreachable=True)
    dev = names.get(attr(msg, "RTA_OIF"))
    if dev is None:
        return None
    gateway, prefsrc = attr(msg, "RTA_GATEWAY"), attr(msg, "RTA_PREFSRC")
    return RouteSpec(table=table_of(msg), dst=dst, dev=dev, gateway=ipaddress.ip_address(gateway) if gateway else None,
                     prefsrc=ipaddress.ip_address(prefsrc) if prefsrc else None)


def owned_routes(rt: Rtnl) -> set[RouteSpec]:
    owned = [msg for family in FAMILIES for msg in rt.get_routes(family) if msg["proto"] == RT_PROTO]
    names: dict[int, str] = {}  # the few links our routes use (a lookup each), not a dump of every link
    for index in {attr(m, "RTA_OIF") for m in owned} - {None}:
        try:
            names[index] = attr(rt.get_links(index)[0], "IFLA_IFNAME")
        except (NetlinkError, IndexError):
            pass
    return {spec for msg in owned if (spec := _route_spec(msg, names)) is not None}


def _route(rt: Rtnl, spec: RouteSpec, deleting: bool = False) -> bytes | None:
    """The request for one route of ours; None to delete a route through a link that is gone (with it)."""
    family = socket.AF_INET6 if spec.family == 6 else socket.AF_INET
    scope = SCOPE_NOWHERE if deleting else SCOPE_UNIVERSE if spec.gateway or spec.unreachable else SCOPE_LINK
    body = nl.RTMSG.pack(family, spec.dst.prefixlen, 0, 0, spec.table if spec.table < 256 else RT_TABLE_COMPAT,
                         RT_PROTO, scope, RTN_UNREACHABLE if spec.unreachable else RTN_UNICAST, 0)
    body += nl.nla_u32(RTA_TABLE, spec.table)
    if spec.dst.prefixlen:
        body += nl.nla(RTA_DST, spec.dst.network_address.packed)
    if spec.unreachable:
        return body + nl.nla_u32(RTA_PRIORITY, LAST_RESORT_METRIC)
    oif = link_index(rt, spec.dev)
    if oif is None:
        if deleting:
            return None
        raise NetlinkError(errno.ENODEV, f"no link {spec.dev} for the route {spec.dst} in table {spec.table}")
    body += nl.nla_u32(RTA_OIF, oif)
    if spec.gateway:
        body += nl.nla(RTA_GATEWAY, spec.gateway.packed)
    if spec.prefsrc:
        body += nl.nla(RTA_PREFSRC, spec.prefsrc.packed)
    return body


def replace_route(rt: Rtnl, spec: RouteSpec) -> None:
    body = _route(rt, spec)
    assert body is not None
    rt.ack(nl.RTM_NEWROUTE, nl.NLM_F_CREATE | nl.NLM_F_REPLACE, body)


def delete_route(rt: Rtnl, spec: RouteSpec) -> None:
    body = _route(rt, spec, deleting=True)
    if body is None:
        return
    try:
        rt.ack(nl.RTM_DELROUTE, 0, body)
    except NetlinkError as exc:
        if exc.code not in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
            raise


def default_gateways(rt: Rtnl, family: int = socket.AF_INET) -> dict[str, Any]:
    """ifname → next hop of a default route through it that is not ours (any table; first found). For
    IPv6 that is usually a router's link-local address, learned from its advertisements."""
    out: dict[str, Any] = {}
    names: dict[int, str] | None = None
    for msg in rt.get_routes(family):
        if msg["dst_len"] == 0 and msg["proto"] != RT_PROTO and attr(msg, "RTA_GATEWAY"):
            if names is None:
                names = link_names(rt)
            dev = names.get(attr(msg, "RTA_OIF"))
            if dev and dev not in out:
                out[dev] = ipaddress.ip_address(attr(msg, "RTA_GATEWAY"))
    return out


def ra_defaults(rt: Rtnl) -> set[str]:
    """The NICs whose IPv6 default route came from a router advertisement (protocol ``ra``)."""
    names = link_names(rt)
    return {names.get(attr(m, "RTA_OIF"), "") for m in rt.get_routes(socket.AF_INET6)
            if m["dst_len"] == 0 and m["proto"] == RTPROT_RA} - {""}


def tables_in_use(rt: Rtnl) -> set[int]:
    """Route tables holding any route, or named by an ip rule that is not ours (both families)."""
    tables = {table_of(msg) for family in FAMILIES for msg in rt.get_routes(family)}
    tables |= {attr(m, "FRA_TABLE", m["table"]) for family in FAMILIES for m in rt.get_rules(family)
               if attr(m, "FRA_PROTOCOL") != RT_PROTO}
    return tables


def decode_rule(msg: Any) -> RuleSpec:
    """A rule as the kernel lists it (:func:`encode_rule`'s inverse)."""
    src = attr(msg, "FRA_SRC")
    family = 6 if msg["family"] == socket.AF_INET6 else 4
    suppress = attr(msg, "FRA_SUPPRESS_PREFIXLEN")
    mark = attr(msg, "FRA_FWMARK")
    return RuleSpec(
        priority=attr(msg, "FRA_PRIORITY", 0), table=attr(msg, "FRA_TABLE", msg["table"]),
        src=ipaddress.ip_network(f"{src}/{msg['src_len']}") if src else None, fwmark=mark,
        fwmask=attr(msg, "FRA_FWMASK") if mark is not None else None,
        suppress_prefixlen=None if suppress in (None, 0xFFFFFFFF, -1) else suppress, family=family,
    )


def owned_rules(rt: Rtnl) -> set[RuleSpec]:
    return {decode_rule(m) for family in FAMILIES for m in rt.get_rules(family)
            if attr(m, "FRA_PROTOCOL") == RT_PROTO}


def encode_rule(spec: RuleSpec) -> bytes:
    """The request body adding or deleting one rule of ours (tagged :data:`.tags.RT_PROTO`)."""
    family = socket.AF_INET6 if spec.family == 6 else socket.AF_INET
    body = nl.FIBRULEMSG.pack(family, 0, spec.src.prefixlen if spec.src is not None else 0, 0,
                              spec.table if spec.table < 256 else RT_TABLE_COMPAT, 0, 0, FR_ACT_TO_TBL, 0)
    body += nl.nla_u32(FRA_PRIORITY, spec.priority) + nl.nla_u32(FRA_TABLE, spec.table)
    body += nl.nla(FRA_PROTOCOL, bytes([RT_PROTO]))
    if spec.src is not None:
        body += nl.nla(FRA_SRC, spec.src.network_address.packed)
    if spec.fwmark is not None:
        body += nl.nla_u32(FRA_FWMARK, spec.fwmark)
        body += nl.nla_u32(FRA_FWMASK, spec.fwmask if spec.fwmask is not None else 0xFFFFFFFF)
    if spec.suppress_prefixlen is not None:
        body += nl.nla_u32(FRA_SUPPRESS_PREFIXLEN, spec.suppress_prefixlen)
    return body


def add_rule(rt: Rtnl, spec: RuleSpec) -> None:
    try:
        rt.ack(nl.RTM_NEWRULE, nl.NLM_F_CREATE | nl.NLM_F_EXCL, encode_rule(spec))
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


def delete_rule(rt: Rtnl, spec: RuleSpec) -> None:
    try:
        rt.ack(nl.RTM_DELRULE, 0, encode_rule(spec))
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.ESRCH):
            raise
