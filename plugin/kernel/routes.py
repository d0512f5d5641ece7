"""Routes and ip rules: ours (protocol :data:`.tags.RT_PROTO`) read, added and deleted, in the host's
namespace or a container's; the routes and rules of others only ever read."""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..plan.desired import RouteSpec, RuleSpec
from .links import attr, link_index
from .tags import RT_PROTO

SCOPE_UNIVERSE, SCOPE_LINK = 0, 253
RTN_UNREACHABLE = 7
RTPROT_RA = 9
LAST_RESORT_METRIC = 0xFFFFFFFF  # below any real route with the same destination


FAMILIES = (socket.AF_INET, socket.AF_INET6)


def all_routes(ipr: IPRoute, family: int = socket.AF_INET) -> list[Any]:
    """Routes of every table of a family (``get_routes(table=0)`` returns nothing in pyroute2 0.9)."""
    return list(ipr.route("dump", family=family))


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


def owned_routes(ipr: IPRoute) -> set[RouteSpec]:
    owned = [msg for family in FAMILIES for msg in all_routes(ipr, family) if msg["proto"] == RT_PROTO]
    names: dict[int, str] = {}  # the few links our routes use (a lookup each), not a dump of every link
    for index in {attr(m, "RTA_OIF") for m in owned} - {None}:
        try:
            names[index] = attr(ipr.get_links(index)[0], "IFLA_IFNAME")
        except (NetlinkError, IndexError):
            pass
    return {spec for msg in owned if (spec := _route_spec(msg, names)) is not None}


def _route_args(ipr: IPRoute, spec: RouteSpec) -> dict[str, Any]:
    base = {"dst": str(spec.dst.network_address), "dst_len": spec.dst.prefixlen, "table": spec.table, "proto": RT_PROTO,
            "family": socket.AF_INET6 if spec.family == 6 else socket.AF_INET}
    if spec.unreachable:
        return {**base, "type": "unreachable", "priority": LAST_RESORT_METRIC}
    args = {**base, "oif": link_index(ipr, spec.dev), "scope": SCOPE_UNIVERSE if spec.gateway else SCOPE_LINK}
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


def default_gateways(ipr: IPRoute, family: int = socket.AF_INET) -> dict[str, Any]:
    """ifname → next hop of a default route through it that is not ours (any table; first found). For
    IPv6 that is usually a router's link-local address, learned from its advertisements."""
    out: dict[str, Any] = {}
    names: dict[int, str] | None = None
    for msg in all_routes(ipr, family):
        if msg["dst_len"] == 0 and msg["proto"] != RT_PROTO and attr(msg, "RTA_GATEWAY"):
            if names is None:
                names = {link["index"]: attr(link, "IFLA_IFNAME") for link in ipr.get_links()}
            dev = names.get(attr(msg, "RTA_OIF"))
            if dev and dev not in out:
                out[dev] = ipaddress.ip_address(attr(msg, "RTA_GATEWAY"))
    return out


def ra_defaults(ipr: IPRoute) -> set[str]:
    """The NICs whose IPv6 default route came from a router advertisement (protocol ``ra``)."""
    names = {link["index"]: attr(link, "IFLA_IFNAME") for link in ipr.get_links()}
    return {names.get(attr(m, "RTA_OIF"), "") for m in all_routes(ipr, socket.AF_INET6)
            if m["dst_len"] == 0 and m["proto"] == RTPROT_RA} - {""}


def tables_in_use(ipr: IPRoute) -> set[int]:
    """Route tables holding any route, or named by an ip rule that is not ours (both families)."""
    tables = {table_of(msg) for family in FAMILIES for msg in all_routes(ipr, family)}
    tables |= {attr(m, "FRA_TABLE", m["table"]) for family in FAMILIES for m in ipr.get_rules(family=family)
               if attr(m, "FRA_PROTOCOL") != RT_PROTO}
    return tables


def _rule_spec(msg: Any) -> RuleSpec:
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


def owned_rules(ipr: IPRoute) -> set[RuleSpec]:
    return {_rule_spec(m) for family in FAMILIES for m in ipr.get_rules(family=family)
            if attr(m, "FRA_PROTOCOL") == RT_PROTO}


def _rule_args(spec: RuleSpec) -> dict[str, Any]:
    args: dict[str, Any] = {"priority": spec.priority, "table": spec.table, "protocol": RT_PROTO,
                            "family": socket.AF_INET6 if spec.family == 6 else socket.AF_INET}
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
