"""Pure: which of a container's networks should give it its default route (:func:`choose`, by
priority: Docker 28's ``GwPriority``, else the endpoint's and the network's ``gw_priority``), and the
policy routing inside the container that makes it so (:func:`container_routing`), all tagged with
:data:`plugin.kernel.tags.RT_PROTO` and never touching dockerd's own routes (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ..api.options import gw_priority_or_none
from .desired import DEFAULT, MAIN_TABLE, RouteSpec, RuleSpec

log = logging.getLogger(__name__)

# ip rule priorities inside a container's netns. The kernel's defaults are 0 (local),
# 32766 (main) and 32767 (default); Docker adds no rules in containers. Ours sit in 30000–30099.
RULE_PREF_SUPPRESS = 30000
RULE_PREF_SOURCE_FIRST = 30010
RULE_PREF_OVERRIDE = 30090
# Route tables inside the container's netns (nothing else uses tables there).
TABLE_OVERRIDE = 30099
TABLE_SOURCE_FIRST = 30100
MAX_SOURCE_ROUTED = RULE_PREF_OVERRIDE - RULE_PREF_SOURCE_FIRST  # 80 interfaces

SOURCE_DOCKER = "docker gw-priority"
SOURCE_ENDPOINT = "endpoint driver-opt"
SOURCE_NETWORK = "network opt"
SOURCE_DEFAULT = "default"


@dataclass(frozen=True)
class Attachment:
    """One network a container is attached to, as far as gateway election is concerned."""

    network_id: str
    network_name: str
    driver: str
    endpoint_id: str
    priority: int
    priority_source: str
    gateway: ipaddress.IPv4Address | None
    address: ipaddress.IPv4Interface | None
    internal: bool = False
    gateway6: ipaddress.IPv6Address | None = None
    address6: ipaddress.IPv6Interface | None = None

    def candidate_for(self, family: int) -> bool:
        return not self.internal and self.gateway_of(family) is not None

    def gateway_of(self, family: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        return self.gateway if family == 4 else self.gateway6

    def address_of(self, family: int) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface | None:
        return self.address if family == 4 else self.address6

    def describe(self) -> str:
        return f"{self.network_name} (priority {self.priority}, {self.priority_source})"


@dataclass(frozen=True)
class Decision:
    chosen: Attachment | None
    override: bool
    reason: str


@dataclass(frozen=True)
class Routing:
    """Everything of ours that should exist in one container's netns."""

    rules: frozenset[RuleSpec] = frozenset()
    routes: frozenset[RouteSpec] = frozenset()


def effective_priority(
    ours: bool,
    docker_gw_priority: Any = 0,
    endpoint_priority: int | None = None,
    network_priority: int | None = None,
    network_priority_given: bool | None = None,
) -> tuple[int, str]:
    """(priority, which source won) for one attachment.

    - another driver's network: Docker's per-endpoint ``GwPriority`` (Engine ≥28; 0 before);
    - a multinic network: Docker's ``GwPriority`` if non-zero (the user set it on a ≥28 engine),
      else the endpoint's ``--driver-opt gw_priority``, else the network's ``gw_priority``, else 0.

    ``network_priority_given`` says whether the network option was written explicitly (so an
    explicit ``gw_priority=0`` reports as "network opt"); by default a non-zero value counts as given.
    """
    docker = gw_priority_or_none(docker_gw_priority) or 0
    if not ours:
        return docker, SOURCE_DOCKER if docker else SOURCE_DEFAULT
    if docker:
        return docker, SOURCE_DOCKER
    if endpoint_priority is not None:
        return endpoint_priority, SOURCE_ENDPOINT
    if network_priority is not None:
        given = bool(network_priority) if network_priority_given is None else network_priority_given
        if given:
            return network_priority, SOURCE_NETWORK
    return 0, SOURCE_DEFAULT


def _name_key(att: Attachment) -> bytes:
    """Go's byte-wise string order, as libnetwork's ``Endpoint.Less`` compares network names."""
    return att.network_name.encode("utf-8", "surrogateescape")


def docker_order(attachments: Iterable[Attachment], family: int = 4) -> list[Attachment]:
    """Candidates for one family's default route in the order Docker would elect them (priority, then
    name)."""
    return sorted((a for a in attachments if a.candidate_for(family)), key=lambda a: (-a.priority, _name_key(a)))


def choose(attachments: Iterable[Attachment], docker_default_gateway: ipaddress.IPv4Address | ipaddress.IPv6Address
           | None, family: int = 4) -> Decision:
    """Which attachment should give one family's default route, and whether Docker's choice must be
    overridden. Each family is decided on its own, as Engine 28 does (20.10 takes both from the IPv4
    winner; the same priorities then give both to the same network).

    Ties at the top keep Docker's choice (so a single-network container, or one whose networks all
    have the same priority, behaves exactly as without the plugin). If Docker's default gateway is
    not a top-priority attachment, the top one wins; among several tied at the top, the one Docker
    itself would pick (byte-wise smallest network name).
    """
    candidates = docker_order(attachments, family)
    if not candidates:
        return Decision(None, False, f"no non-internal network with an IPv{family} gateway")
    top = candidates[0].priority
    tops = [a for a in candidates if a.priority == top]
    current = next((a for a in candidates if a.gateway_of(family) == docker_default_gateway), None)
    if current is not None and current.priority == top:
        if len(candidates) == 1:
            reason = f"{current.network_name} is the only network with a gateway"
        elif len(tops) == 1:
            others = ", ".join(a.describe() for a in candidates if a is not current)
            reason = f"{current.describe()} beats {others}; Docker already routes by it"
        else:
            tied = ", ".join(a.network_name for a in tops if a is not current)
            reason = f"{current.describe()} ties with {tied}; Docker's choice kept"
        return Decision(current, False, reason)
    chosen = tops[0]
    if current is not None:
        beaten = f"{current.describe()}, Docker's choice"
    elif docker_default_gateway is not None:
        beaten = f"Docker's default gateway {docker_default_gateway}"
    else:
        beaten = "no default route"
    if len(tops) > 1:
        tied = ", ".join(a.network_name for a in tops[1:])
        reason = f"{chosen.describe()} beats {beaten} (ties with {tied}; first by name)"
    else:
        reason = f"{chosen.describe()} beats {beaten}"
    return Decision(chosen, True, reason)


def _ifname_key(name: str) -> tuple[int, str]:
    return (len(name), name)  # eth2 before eth10


def container_routing(
    attachments: Iterable[Attachment],
    decision: Decision,
    ifname_by_ip: Mapping[ipaddress.IPv4Address | ipaddress.IPv6Address, str],
    decision6: Decision | None = None,
) -> Routing:
    """The rules and routes of ours the container's netns should hold (see the module docstring), for
    IPv4 and, with ``decision6``, IPv6: per interface a table with its own default route, chosen by the
    source address; above main's default, the chosen network's when Docker's choice is overridden.

    With a single network the routing is the same as Docker's (its source rule names Docker's own
    gateway), but it is installed anyway: when a second network is attached and dockerd moves the
    main default route, connections already established keep leaving by their own interface from
    that instant on, before the watcher has even seen the event.
    """
    families = (4, 6) if decision6 is not None else (4,)
    routed: dict[str, Attachment] = {}
    for att in attachments:
        for family in families:
            address = att.address_of(family)
            if att.candidate_for(family) and address is not None and address.ip in ifname_by_ip:
                routed[ifname_by_ip[address.ip]] = att
    if not routed:
        return Routing()
    rules, routes = set(), set()
    for family in families:
        default = DEFAULT[family]
        for i, ifname in enumerate(sorted(routed, key=_ifname_key)[:MAX_SOURCE_ROUTED]):
            att = routed[ifname]
            address, gateway = att.address_of(family), att.gateway_of(family)
            if not att.candidate_for(family) or address is None or gateway is None:
                continue
            table = TABLE_SOURCE_FIRST + i
            rules.add(RuleSpec(priority=RULE_PREF_SUPPRESS, table=MAIN_TABLE, suppress_prefixlen=0, family=family))
            rules.add(RuleSpec(priority=RULE_PREF_SOURCE_FIRST + i, table=table,
                               src=ipaddress.ip_network(address.ip), family=family))
            routes.add(RouteSpec(table=table, dst=default, dev=ifname, gateway=gateway))
        chosen_decision = decision if family == 4 else decision6
        chosen = chosen_decision.chosen if chosen_decision is not None else None
        if chosen_decision is not None and chosen_decision.override and chosen is not None:
            address = chosen.address_of(family)
            ifname = ifname_by_ip.get(address.ip) if address is not None else None
            if ifname is None:
                # The chosen network's interface is not (yet) in the netns: leave Docker's route alone.
                log.debug("chosen network %s has no interface in the netns yet", chosen.network_name)
            else:
                rules.add(RuleSpec(priority=RULE_PREF_OVERRIDE, table=TABLE_OVERRIDE, family=family))
                routes.add(RouteSpec(table=TABLE_OVERRIDE, dst=default, dev=ifname, gateway=chosen.gateway_of(family)))
    return Routing(rules=frozenset(rules), routes=frozenset(routes))
