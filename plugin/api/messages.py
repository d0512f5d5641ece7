"""Typed remote-driver requests: dockerd's JSON becomes frozen dataclasses here, once. Every field a verb
uses is checked for presence, JSON type, range and size before any state is read or kernel object touched,
and a refusal names the field (``com.docker.network.portmap[2].HostPort``). Shapes follow what dockerd
20.10-29 sends (docs/ARCHITECTURE.md; the protocol reference): ids are 64 lowercase hex characters, but for
a network that swarm creates on the node with its first task, whose id is swarmkit's (25 base-36 characters).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import Refusal
from .options import EndpointOptions, parse_bool, parse_endpoint_options

GENERIC = "com.docker.network.generic"
INTERNAL = "com.docker.network.internal"
ENABLE_IPV6 = "com.docker.network.enable_ipv6"
ENABLE_IPV4 = "com.docker.network.enable_ipv4"  # Engine >= 28
PORTMAP = "com.docker.network.portmap"
PROTO_NAMES = {6: "tcp", 17: "udp", 132: "sctp"}

ID_RE = re.compile(r"[0-9a-f]{64}")
SWARM_ID_RE = re.compile(r"[0-9a-z]{25}")  # swarmkit's identity.NewID(): a swarm-scoped network
MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
MAX_PATH = 4096
MAX_LIST = 1024  # port map entries, IPv4Data/IPv6Data entries: far beyond any real request
MAX_TEXT = 256  # an address, a pool, a MAC


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
class Pool:
    """One ``IPv4Data`` or ``IPv6Data`` entry: the subnet and the gateway IPAM reserved in it."""

    pool: ipaddress.IPv4Network | ipaddress.IPv6Network
    gateway: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None


@dataclass(frozen=True)
class CreateNetworkRequest:
    network_id: str
    generic: Mapping[str, Any]
    internal: bool
    ipv6: bool
    ipv4: tuple[Pool, ...]
    ipv6_pools: tuple[Pool, ...] = ()
    ipv4_enabled: bool = True  # Engine 28's --ipv4=false: an IPv6-only network


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
    address_v6: ipaddress.IPv6Interface | None
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
MISMATCH = "this is a dockerd/plugin protocol mismatch"


def shown(value: Any, limit: int = 40) -> str:
    """A refused value, quoted and cut short: error texts stay readable whatever was sent."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", int: "integer",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def _str(body: Mapping[str, Any], key: str, required: bool = True, what: str | None = None) -> str:
    what = what or key
    value = body.get(key)
    if value is None or value == "":
        if required and not body:
            raise Refusal(EMPTY_BODY)
        if required:
            raise Refusal(f"request is missing {what}; {MISMATCH}")
        return ""
    if not isinstance(value, str):
        raise Refusal(f"request field {what} must be a string, got {_type(value)}; {MISMATCH}")
    return value


def _id(body: Mapping[str, Any], key: str, swarm: bool = False) -> str:
    """An id as dockerd sends it; ``swarm``: a network id may also be swarmkit's (:func:`swarm_scoped`)."""
    value = _str(body, key)
    if not (ID_RE.fullmatch(value) or (swarm and swarm_scoped(value))):
        forms = "64 lowercase hex characters" + (", or 25 lowercase base-36 ones for a swarm-scoped network"
                                                 if swarm else "")
        raise Refusal(f"request field {key}={shown(value)} is not a docker id ({forms}, as dockerd sends); {MISMATCH}")
    return value


def swarm_scoped(network_id: str) -> bool:
    """A network swarm created on this node for its tasks (``--scope swarm``): dockerd neither persists it nor
    knows it in advance; it comes with the node's first task on it and goes with its last."""
    return bool(SWARM_ID_RE.fullmatch(network_id))


def _int(value: Any, what: str, low: int, high: int, default: int = 0) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise Refusal(f"request field {what} must be an integer, got {_type(value)} {shown(value)}")
    if not low <= value <= high:
        raise Refusal(f"request field {what}={value} is out of range; use {low}..{high}")
    return value


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise Refusal(f"request field {what} must be an object, got {_type(value)}")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise Refusal(f"request field {what} must be a list, got {_type(value)}")
    if len(value) > MAX_LIST:
        raise Refusal(f"request field {what} has {len(value)} entries; at most {MAX_LIST} are accepted")
    return value


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Refusal(f"request field {what} must be a string, got {_type(value)}")
    if len(value) > MAX_TEXT:
        raise Refusal(f"request field {what} is {len(value)} characters long; at most {MAX_TEXT}")
    return value


def _bool(options: Mapping[str, Any], key: str) -> bool:
    value = options.get(key)
    if value is None:
        return False
    if not isinstance(value, (bool, str)):
        raise Refusal(f"request field Options.{key} must be a boolean, got {_type(value)}")
    return parse_bool(f"Options.{key}", value)


def _sandbox_key(body: Mapping[str, Any]) -> str:
    key = _str(body, "SandboxKey", required=False)
    if not key:
        return ""
    bad = (
        not key.startswith("/")
        or len(key) > MAX_PATH
        or any(ord(c) < 32 or ord(c) == 127 for c in key)
        or ".." in key.split("/")
    )
    if bad:
        raise Refusal(
            f"request field SandboxKey={shown(key)} is not an absolute path to a network namespace "
            f"(e.g. /var/run/docker/netns/0123456789ab); {MISMATCH}"
        )
    return key


def parse_port_bindings(options: Mapping[str, Any]) -> tuple[PortBinding, ...]:
    """The port map dockerd attaches to Join/Program/CreateEndpoint options."""
    bindings = []
    for i, entry in enumerate(_list(options.get(PORTMAP), PORTMAP)):
        where = f"{PORTMAP}[{i}]"
        entry = _mapping(entry, where)
        proto = _int(entry.get("Proto"), f"{where}.Proto", 0, 255, default=6)
        if proto not in PROTO_NAMES:
            raise Refusal(f"published port protocol {proto} is not supported; use tcp, udp or sctp")
        port = _int(entry.get("Port"), f"{where}.Port", 1, 65535, default=-1)
        if port == -1:
            raise Refusal(f"request field {where}.Port is missing; {MISMATCH}")
        host_port = _int(entry.get("HostPort"), f"{where}.HostPort", 0, 65535)
        host_port_end = _int(entry.get("HostPortEnd"), f"{where}.HostPortEnd", 0, 65535) or host_port
        if host_port_end < host_port:
            raise Refusal(
                f"published port range {host_port}-{host_port_end} ({where}) is reversed; "
                "give LOW-HIGH (-p 9000-9010:80)"
            )
        host_ip = _text(entry.get("HostIP"), f"{where}.HostIP")
        if host_ip:
            try:
                ipaddress.ip_address(host_ip)
            except ValueError:
                raise Refusal(
                    f"published host address {shown(host_ip)} ({where}.HostIP) is not an IP address; "
                    "use -p IP:HOSTPORT:PORT with an address of this host"
                ) from None
        bindings.append(
            PortBinding(
                proto=proto,
                container_port=port,
                host_ip=host_ip,
                host_port=host_port,
                host_port_end=host_port_end,
            )
        )
    return tuple(bindings)


def _pool(entry: Any, where: str, version: int) -> Pool:
    entry = _mapping(entry, where)
    pool_text = _text(entry.get("Pool"), f"{where}.Pool")
    gateway = _text(entry.get("Gateway"), f"{where}.Gateway")
    _text(entry.get("AddressSpace"), f"{where}.AddressSpace")
    for name, aux in _mapping(entry.get("AuxAddresses"), f"{where}.AuxAddresses").items():
        _text(aux, f"{where}.AuxAddresses.{name}")
    network, interface = (ipaddress.IPv4Network, ipaddress.IPv4Interface) if version == 4 else (
        ipaddress.IPv6Network, ipaddress.IPv6Interface)
    example = "A.B.C.D/N" if version == 4 else "fd00:10::/64"
    try:
        pool = network(pool_text, strict=False)
    except ValueError as exc:
        raise Refusal(f"request field {where}.Pool is not an IPv{version} CIDR: {exc}; "
                      f"give --subnet {example}") from None
    try:
        gw = interface(gateway) if gateway else None
    except ValueError as exc:
        raise Refusal(f"request field {where}.Gateway is not an IPv{version} CIDR: {exc}") from None
    if gw is not None and gw.ip not in pool:
        raise Refusal(f"gateway {gw.ip} ({where}.Gateway) is outside subnet {pool}; give --gateway inside it")
    return Pool(pool=pool, gateway=gw)


def parse_create_network(body: Mapping[str, Any]) -> CreateNetworkRequest:
    network_id = _id(body, "NetworkID", swarm=True)
    options = _mapping(body.get("Options"), "Options")
    generic = _mapping(options.get(GENERIC), f"Options.{GENERIC}")
    pools = tuple(_pool(e, f"IPv4Data[{i}]", 4) for i, e in enumerate(_list(body.get("IPv4Data"), "IPv4Data")))
    pools6 = tuple(_pool(e, f"IPv6Data[{i}]", 6) for i, e in enumerate(_list(body.get("IPv6Data"), "IPv6Data")))
    return CreateNetworkRequest(
        network_id=network_id,
        generic=generic,
        internal=_bool(options, INTERNAL),
        ipv6=_bool(options, ENABLE_IPV6) or bool(pools6),
        ipv4=pools,
        ipv6_pools=pools6,
        ipv4_enabled=options.get(ENABLE_IPV4) is None or _bool(options, ENABLE_IPV4),
    )


def parse_network_ref(body: Mapping[str, Any]) -> NetworkRef:
    return NetworkRef(network_id=_id(body, "NetworkID", swarm=True))


def parse_endpoint_ref(body: Mapping[str, Any]) -> EndpointRef:
    return EndpointRef(network_id=_id(body, "NetworkID", swarm=True), endpoint_id=_id(body, "EndpointID"))


def parse_create_endpoint(body: Mapping[str, Any]) -> CreateEndpointRequest:
    ref = parse_endpoint_ref(body)
    iface = _mapping(body.get("Interface"), "Interface")
    address = _text(iface.get("Address"), "Interface.Address")
    try:
        ipv4 = ipaddress.IPv4Interface(address) if address else None
    except ValueError:
        raise Refusal(f"Interface.Address {shown(address)} is not an IPv4 CIDR; {MISMATCH}") from None
    address6 = _text(iface.get("AddressIPv6"), "Interface.AddressIPv6")
    try:
        ipv6 = ipaddress.IPv6Interface(address6) if address6 else None
    except ValueError:
        raise Refusal(f"Interface.AddressIPv6 {shown(address6)} is not an IPv6 CIDR; {MISMATCH}") from None
    mac = _text(iface.get("MacAddress"), "Interface.MacAddress")
    if mac and (not MAC_RE.fullmatch(mac) or int(mac[:2], 16) & 1 or not int(mac.replace(":", ""), 16)):
        raise Refusal(
            f"Interface.MacAddress {shown(mac)} is not a unicast MAC address; "
            "give --mac-address 02:xx:xx:xx:xx:xx (even first byte, not all zero)"
        )
    return CreateEndpointRequest(
        network_id=ref.network_id,
        endpoint_id=ref.endpoint_id,
        address=ipv4,
        address_v6=ipv6,
        mac=mac,
        options=parse_endpoint_options(_mapping(body.get("Options"), "Options")),
    )


def parse_program(body: Mapping[str, Any]) -> ProgramRequest:
    ref = parse_endpoint_ref(body)
    ports = parse_port_bindings(_mapping(body.get("Options"), "Options"))
    return ProgramRequest(network_id=ref.network_id, endpoint_id=ref.endpoint_id, ports=ports)


def parse_join(body: Mapping[str, Any]) -> JoinRequest:
    """A Join carries what a Program does (the container's port map), and the sandbox."""
    program = parse_program(body)
    return JoinRequest(network_id=program.network_id, endpoint_id=program.endpoint_id,
                       sandbox_key=_sandbox_key(body), ports=program.ports)
