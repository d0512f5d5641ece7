"""Published ports: host ports chosen and conflicts found (pure, but for one bind probe)."""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import Callable, Iterable

from ..api.messages import PortBinding
from ..errors import Refusal
from .state import ANY_ADDRESS, PublishedPort

SOCK_TYPES = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}


def ephemeral_range() -> tuple[int, int]:
    """The kernel's local port range, the same pool Docker picks ``-p 80`` host ports from."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def overlaps(a: PublishedPort, b: PublishedPort) -> bool:
    """Same protocol and port, and the addresses meet."""
    return a.proto == b.proto and a.host_port == b.host_port and a.lands_on(b.host_ip)


def may_clash(bindings: Iterable[PortBinding], ephemeral: tuple[int, int] | None = None
              ) -> Callable[[PublishedPort], bool]:
    """Pure but for the kernel's local port range: could a port already published clash with one of
    ``bindings`` (same protocol, a host port the binding may take)? What :func:`allocate` needs of the
    host's ports is only these: a Join looks at the few that share its numbers, whatever the host holds."""
    low, high = ephemeral or ephemeral_range()
    exact: set[tuple[str, int]] = set()  # (protocol, port) of the bindings' short ranges: one look each
    spans: dict[str, list[tuple[int, int]]] = {}  # and the wide ones (port 0: the ephemeral range)
    for b in bindings:
        first, last = (low, high) if b.host_port == 0 else (b.host_port, b.host_port_end)
        if last - first < 64:
            exact.update((b.proto_name, port) for port in range(first, last + 1))
        else:
            spans.setdefault(b.proto_name, []).append((first, last))
    if not spans:
        return lambda p: (p.proto, p.host_port) in exact
    return lambda p: (p.proto, p.host_port) in exact or any(first <= p.host_port <= last
                                                            for first, last in spans.get(p.proto, ()))


def port_is_bindable(proto: str, host_ip: str, port: int) -> bool:
    """False if a socket on this host already holds the port (e.g. Docker's docker-proxy)."""
    kind = SOCK_TYPES.get(proto)
    if kind is None:
        return True  # sctp: no userspace holder to probe
    family = socket.AF_INET6 if ":" in host_ip else socket.AF_INET
    with socket.socket(family, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((host_ip or "0.0.0.0", port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            if exc.errno == errno.EADDRNOTAVAIL:
                return True
            raise
    return True


def spelled(binding: PortBinding) -> str:
    """A binding as ``docker run -p`` spells it: ``[2001:db8::2]:8080-8081:80/udp``, ``80/tcp``."""
    host = f"[{binding.host_ip}]" if ":" in binding.host_ip else binding.host_ip
    if binding.host_port == 0:
        ports = ""
    elif binding.host_port_end > binding.host_port:
        ports = f"{binding.host_port}-{binding.host_port_end}"
    else:
        ports = str(binding.host_port)
    where = f"{host}:{ports}:" if host else f"{ports}:" if ports else ""
    return f"{where}{binding.container_port}/{binding.proto_name}"


def allocate(
    bindings: Iterable[PortBinding],
    publish_ips: Callable[[str], tuple[str, ...]],
    taken: list[PublishedPort],
    bindable: Callable[[str, str, int], bool] = port_is_bindable,
    ephemeral: tuple[int, int] | None = None,
) -> tuple[PublishedPort, ...]:
    """Turn dockerd's port map into concrete ports, refusing conflicts.

    ``publish_ips(host_ip)`` gives the addresses a binding lands on ("" = everywhere);
    ``taken`` are ports other endpoints already publish, with their addresses resolved. A
    range ``9000-9001:90`` takes one free port of the range, as Docker does; port 0 takes
    one from ``ephemeral``. A binding without a HostIP is kept without one (``host_ip ""``):
    the firewall rules resolve it to the parent's addresses *when rendered*, so a published
    port follows a readdressed parent NIC (DHCP renewal, a moved secondary IP).
    """
    chosen: list[PublishedPort] = []
    kept: list[PublishedPort] = []
    low, high = ephemeral or ephemeral_range()
    for binding in bindings:
        proto = binding.proto_name
        try:
            ips = publish_ips(binding.host_ip)
        except Refusal as exc:
            raise Refusal(f"-p {spelled(binding)}: {exc}") from None
        if binding.host_port == 0:
            candidates: Iterable[int] = range(low, high + 1)
            explicit = False
        else:
            candidates = range(binding.host_port, binding.host_port_end + 1)
            explicit = True
        picked = None
        for port in candidates:
            trial = [PublishedPort(proto, ip, port, binding.container_port) for ip in ips]
            clash = next((t for t in taken + chosen for x in trial if overlaps(t, x)), None)
            if clash is None and all(bindable(proto, ip, port) for ip in ips):
                picked = trial
                break
        if picked is None:
            if explicit:
                wanted = (
                    str(binding.host_port)
                    if binding.host_port == binding.host_port_end
                    else f"{binding.host_port}-{binding.host_port_end}"
                )
                where = ", ".join(ip or "*" for ip in ips)
                raise Refusal(
                    f"host port {wanted}/{proto} on {where} is already published by another container "
                    f"or in use on the host; choose another host port (-p HOSTPORT:{binding.container_port})"
                )
            raise Refusal(f"no free ephemeral host port left for {binding.container_port}/{proto}")
        chosen.extend(picked)
        if binding.host_ip in ("", *ANY_ADDRESS):
            # Kept as given: resolved to the parent's addresses when rendered
            kept.append(PublishedPort(proto, binding.host_ip, picked[0].host_port, binding.container_port))
        else:
            kept.extend(picked)
    return tuple(kept)
