"""Parse and validate ``--opt`` (network) and ``--driver-opt`` (endpoint) into frozen dataclasses.

Only syntax and ranges are checked here (pure, no kernel access); checks that need the
kernel or other networks (does the NIC exist, is the table free) live in :mod:`plugin.plan.network`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import Refusal

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
RESERVED_TABLES = {0, 253, 254, 255}
TABLE_MAX = 2**32 - 1
IFNAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,14}$")

NETWORK_OPTIONS = {
    "parent": "host NIC the network egresses and publishes on, e.g. parent=eth1",
    "parent_gateway": "next hop on the parent NIC, e.g. parent_gateway=192.168.1.1",
    "parent_gateway6": "IPv6 next hop on the parent NIC, e.g. parent_gateway6=fe80::1",
    "table": "route table id for the parent NIC (1-4294967295, not 253-255)",
    "bridge_name": "name of the Linux bridge, at most 15 characters",
    "mtu": "MTU of the bridge and veths (68-65535)",
    "masquerade": "true: SNAT to the parent's address; false: routed",
    "gw_priority": "gateway priority of the network's endpoints (int32, highest wins)",
    "ingress_replies": "true: replies to connections that came in on the parent and went into docker_gwbridge "
                       "(swarm's routing mesh) leave by the parent",
}
ENDPOINT_OPTIONS = {
    "gw_priority": "gateway priority of this endpoint (int32, highest wins)",
}
TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class NetworkOptions:
    """What the user asked for with ``--opt``; None means "choose the default"."""

    parent: str | None = None
    parent_gateway: ipaddress.IPv4Address | None = None
    parent_gateway6: ipaddress.IPv6Address | None = None
    table: int | None = None
    bridge_name: str | None = None
    mtu: int | None = None
    masquerade: bool = True
    gw_priority: int = 0
    ingress_replies: bool = False


@dataclass(frozen=True)
class EndpointOptions:
    """What the user asked for with ``--driver-opt`` on one endpoint."""

    gw_priority: int | None = None


def _known_list(known: Mapping[str, str]) -> str:
    return ", ".join(sorted(known))


def parse_int(option: str, value: Any, low: int, high: int, hint: str = "") -> int:
    """An integer option in [low, high], refused with a message naming the option."""
    text = str(value).strip()
    try:
        number = int(text, 10)
    except ValueError:
        raise Refusal(
            f"option {option}={value!r} is not an integer; give a whole number between {low} and {high}{hint}"
        ) from None
    if not low <= number <= high:
        raise Refusal(f"option {option}={number} is out of range; use {low}..{high}{hint}")
    return number


def parse_bool(option: str, value: Any) -> bool:
    """A boolean option written as true/false/yes/no/1/0/on/off."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise Refusal(f"option {option}={value!r} is not a boolean; use {option}=true or {option}=false")


def parse_ifname(option: str, value: Any) -> str:
    """An interface name; addresses and CIDRs are refused (a common mistake)."""
    text = str(value).strip()
    for parser in (ipaddress.ip_address, ipaddress.ip_network):
        try:
            parser(text)
        except ValueError:
            continue
        raise Refusal(
            f"option {option}={text!r} is an address, not an interface name; "
            f"give the NIC's name, e.g. {option}=eth1"
        )
    if not IFNAME_RE.match(text) or text in (".", ".."):
        raise Refusal(
            f"option {option}={text!r} is not a valid interface name "
            "(1-15 characters: letters, digits, '_', '-', '.', '@')"
        )
    return text


def parse_table(value: Any) -> int:
    """A route table id usable for policy routing (not local/main/default, not 0)."""
    table = parse_int("table", value, 1, TABLE_MAX)
    if table in RESERVED_TABLES:
        raise Refusal(
            f"option table={table} is reserved by the kernel (253 default, 254 main, 255 local); "
            "pick another id or omit table to have one allocated"
        )
    return table


def _next_hop(name: str, raw: Mapping[str, Any], version: int, example: str) -> Any:
    """``parent_gateway`` (IPv4) or ``parent_gateway6`` (IPv6): an address, and only with a parent."""
    try:
        hop = (ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address)(str(raw[name]).strip())
    except ValueError:
        raise Refusal(f"option {name}={raw[name]!r} is not an IPv{version} address; give the next hop's address, "
                      f"e.g. {name}={example}") from None
    if "parent" not in raw:
        raise Refusal(f"option {name} needs parent: add --opt parent=<NIC>")
    return hop


def parse_network_options(raw: Mapping[str, Any] | None) -> NetworkOptions:
    """``com.docker.network.generic`` → :class:`NetworkOptions`, refusing unknown keys."""
    raw = dict(raw or {})
    unknown = sorted(set(raw) - set(NETWORK_OPTIONS))
    if unknown:
        raise Refusal(
            f"unknown option {', '.join(unknown)}; multinic network options are: "
            f"{_known_list(NETWORK_OPTIONS)}"
        )
    kwargs: dict[str, Any] = {}
    if "parent" in raw:
        kwargs["parent"] = parse_ifname("parent", raw["parent"])
    for name, version, example in (("parent_gateway", 4, "192.168.1.1"),
                                   ("parent_gateway6", 6, "fe80::1 (the router's link-local address)")):
        if name in raw:
            kwargs[name] = _next_hop(name, raw, version, example)
    if "table" in raw:
        kwargs["table"] = parse_table(raw["table"])
        if "parent" not in raw:
            raise Refusal("option table needs parent: add --opt parent=<NIC> or drop table")
    if "bridge_name" in raw:
        kwargs["bridge_name"] = parse_ifname("bridge_name", raw["bridge_name"])
    if "mtu" in raw:
        kwargs["mtu"] = parse_int("mtu", raw["mtu"], 68, 65535)
    if "masquerade" in raw:
        kwargs["masquerade"] = parse_bool("masquerade", raw["masquerade"])
    if "gw_priority" in raw:
        kwargs["gw_priority"] = parse_gw_priority("gw_priority", raw["gw_priority"])
    if "ingress_replies" in raw:
        kwargs["ingress_replies"] = parse_bool("ingress_replies", raw["ingress_replies"])
        if "parent" not in raw:
            raise Refusal("option ingress_replies needs parent: add --opt parent=<NIC> (the NIC whose routing-mesh "
                          "replies should leave by it)")
    return NetworkOptions(**kwargs)


def parse_gw_priority(option: str, value: Any) -> int:
    """A Docker 28 style gateway priority: int32, default 0, negative allowed."""
    return parse_int(option, value, INT32_MIN, INT32_MAX, " (highest priority wins, default 0)")


def gw_priority_or_none(value: Any) -> int | None:
    """A gateway priority read, not asked for (dockerd's ``GwPriority``, an option in dockerd's view):
    as :func:`parse_gw_priority` reads it, None where that refuses it."""
    try:
        return parse_gw_priority("gw_priority", value)
    except Refusal:
        return None


def parse_endpoint_options(raw: Mapping[str, Any] | None) -> EndpointOptions:
    """Endpoint ``--driver-opt`` keys: Docker's own ``com.docker.*`` keys are not ours and ignored."""
    ours = {k: v for k, v in dict(raw or {}).items() if not k.startswith("com.docker.")}
    unknown = sorted(set(ours) - set(ENDPOINT_OPTIONS))
    if unknown:
        raise Refusal(
            f"unknown endpoint option {', '.join(unknown)}; multinic endpoint options "
            f"(--driver-opt) are: {_known_list(ENDPOINT_OPTIONS)}"
        )
    if "gw_priority" in ours:
        return EndpointOptions(gw_priority=parse_gw_priority("gw_priority", ours["gw_priority"]))
    return EndpointOptions()
