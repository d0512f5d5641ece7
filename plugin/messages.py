"""Typed remote-driver requests: dockerd's JSON becomes frozen dataclasses here, once.

Shapes follow what dockerd 20.10-29 really sends (see the project reference): gateways and
aux addresses are CIDR strings, ``Interface`` fields are "" when unknown, port maps use IP
protocol numbers.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import DriverError
from .options import EndpointOptions, parse_endpoint_options

GENERIC = "com.docker.network.generic"
INTERNAL = "com.docker.network.internal"
ENABLE_IPV6 = "com.docker.network.enable_ipv6"
PORTMAP = "com.docker.network.portmap"
PROTO_NAMES = {6: "tcp", 17: "udp", 132: "sctp"}


@dataclass(frozen=True)
class PortBinding:
    """One ``com.docker.network.portmap`` entry; host_port 0 means "pick one"."""

    proto: int
    container_port: int
    host_ip: str = ""
    host_port: int = 0
    host_port_end: int = 0

    @property
    def proto_name(self) -> str:
        return PROTO_NAMES[self.proto]


@dataclass(frozen=True)
class IPv4Pool:
    pool: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Interface | None


@dataclass(frozen=True)
class CreateNetworkRequest:
    network_id: str
    generic: Mapping[str, Any]
    internal: bool
    ipv6: bool
    ipv4: tuple[IPv4Pool, ...]
    raw_options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NetworkRef:
    network_id: str


@dataclass(frozen=True)
class EndpointRef:
    network_id: str
    endpoint_id: str


@dataclass(frozen=True)
class CreateEndpointRequest:
    network_id: str
    endpoint_id: str
    address: ipaddress.IPv4Interface | None
    address_v6: str
    mac: str
    options: EndpointOptions


@dataclass(frozen=True)
class JoinRequest:
    network_id: str
    endpoint_id: str
    sandbox_key: str
    ports: tuple[PortBinding, ...]


@dataclass(frozen=True)
class ProgramRequest:
    network_id: str
    endpoint_id: str
    ports: tuple[PortBinding, ...]


EMPTY_BODY = (
    "dockerd sent this request with an empty body: its retry after the plugin was restarted mid-call "
    "re-sends the request without the body (measured with Engine 20.10); run the docker command again"
)


def _str(body: Mapping[str, Any], key: str, required: bool = True) -> str:
    value = body.get(key)
    if value is None or value == "":
        if required and not body:
            raise DriverError(EMPTY_BODY)
        if required:
            raise DriverError(f"request is missing {key}; this is a dockerd/plugin protocol mismatch")
        return ""
    if not isinstance(value, str):
        raise DriverError(f"request field {key} must be a string, got {type(value).__name__}")
    return value


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise DriverError(f"request field {what} must be an object, got {type(value).__name__}")
    return value


def parse_port_bindings(options: Mapping[str, Any]) -> tuple[PortBinding, ...]:
    """The port map dockerd attaches to Join/Program/CreateEndpoint options."""
    raw = options.get(PORTMAP) or []
    if not isinstance(raw, list):
        raise DriverError(f"{PORTMAP} must be a list")
    bindings = []
    for entry in raw:
        entry = _mapping(entry, PORTMAP)
        proto = int(entry.get("Proto", 6))
        if proto not in PROTO_NAMES:
            raise DriverError(f"published port protocol {proto} is not supported; use tcp, udp or sctp")
        host_port = int(entry.get("HostPort") or 0)
        host_port_end = int(entry.get("HostPortEnd") or host_port)
        if host_port_end < host_port:
            raise DriverError(f"published port range {host_port}-{host_port_end} is reversed")
        bindings.append(
            PortBinding(
                proto=proto,
                container_port=int(entry.get("Port") or 0),
                host_ip=str(entry.get("HostIP") or ""),
                host_port=host_port,
                host_port_end=host_port_end,
            )
        )
    return tuple(bindings)


def parse_create_network(body: Mapping[str, Any]) -> CreateNetworkRequest:
    options = _mapping(body.get("Options"), "Options")
    pools = []
    for entry in body.get("IPv4Data") or []:
        entry = _mapping(entry, "IPv4Data")
        gateway = entry.get("Gateway") or None
        try:
            pool = ipaddress.IPv4Network(entry.get("Pool", ""), strict=False)
            gw = ipaddress.IPv4Interface(gateway) if gateway else None
        except ValueError as exc:
            raise DriverError(f"IPv4Data is not valid: {exc}") from None
        pools.append(IPv4Pool(pool=pool, gateway=gw))
    return CreateNetworkRequest(
        network_id=_str(body, "NetworkID"),
        generic=_mapping(options.get(GENERIC), GENERIC),
        internal=bool(options.get(INTERNAL, False)),
        ipv6=bool(options.get(ENABLE_IPV6, False)) or bool(body.get("IPv6Data")),
        ipv4=tuple(pools),
        raw_options=options,
    )


def parse_network_ref(body: Mapping[str, Any]) -> NetworkRef:
    return NetworkRef(network_id=_str(body, "NetworkID"))


def parse_endpoint_ref(body: Mapping[str, Any]) -> EndpointRef:
    return EndpointRef(network_id=_str(body, "NetworkID"), endpoint_id=_str(body, "EndpointID"))


def parse_create_endpoint(body: Mapping[str, Any]) -> CreateEndpointRequest:
    iface = _mapping(body.get("Interface"), "Interface")
    address = iface.get("Address") or ""
    try:
        ipv4 = ipaddress.IPv4Interface(address) if address else None
    except ValueError:
        raise DriverError(f"Interface.Address {address!r} is not an IPv4 CIDR") from None
    return CreateEndpointRequest(
        network_id=_str(body, "NetworkID"),
        endpoint_id=_str(body, "EndpointID"),
        address=ipv4,
        address_v6=str(iface.get("AddressIPv6") or ""),
        mac=str(iface.get("MacAddress") or ""),
        options=parse_endpoint_options(_mapping(body.get("Options"), "Options")),
    )


def parse_join(body: Mapping[str, Any]) -> JoinRequest:
    return JoinRequest(
        network_id=_str(body, "NetworkID"),
        endpoint_id=_str(body, "EndpointID"),
        sandbox_key=_str(body, "SandboxKey", required=False),
        ports=parse_port_bindings(_mapping(body.get("Options"), "Options")),
    )


def parse_program(body: Mapping[str, Any]) -> ProgramRequest:
    return ProgramRequest(
        network_id=_str(body, "NetworkID"),
        endpoint_id=_str(body, "EndpointID"),
        ports=parse_port_bindings(_mapping(body.get("Options"), "Options")),
    )
