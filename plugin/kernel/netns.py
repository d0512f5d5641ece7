"""The writer inside containers: our (protocol 211) policy rules and routes in a container's network
namespace, made to match what :mod:`plugin.plan.gateway` decided, and the ARP announcement of its
addresses where the engine makes none. dockerd's own routes are never touched."""

from __future__ import annotations

import ctypes
import fcntl
import ipaddress
import os
import socket
import struct
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from ..plan.desired import MAIN_TABLE, difference
from ..plan.gateway import Routing
from . import netlink
from .links import all_addresses, announcement, attr
from .routes import add_rule, delete_route, delete_rule, owned_routes, owned_rules, replace_route, table_of
from .tags import RT_PROTO


class NotThatNetns(Exception):
    """The path does not lead to the container's netns (our own netns, or a recycled pid)."""


CLONE_NEWNET = 0x40000000


def _ns_id(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _in_netns(fd: int, work: Callable[[], Any]) -> Any:
    """``work()`` in a short-lived thread that enters the netns ``fd`` (``setns`` moves the calling thread
    only) and ends there: this process's other threads never leave their netns, and no process is forked
    (pyroute2's ``NetNS`` forks one per call: CPU and a process for every container the watcher looks
    into). A socket made there stays in that netns."""
    made: dict[str, Any] = {}

    def enter() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(fd, CLONE_NEWNET) != 0:
                code = ctypes.get_errno()
                raise OSError(code, f"setns: {os.strerror(code)}")
            made["result"] = work()
        except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
            made["error"] = exc

    thread = threading.Thread(target=enter, name="multinic-setns", daemon=True)
    thread.start()
    thread.join()
    if "error" in made:
        raise made["error"]
    return made["result"]


def _open(netns_path: str, expect: str | None) -> int:
    """An fd of the netns at ``netns_path``, refused if it is this process's own netns (the host's, for
    a plugin running there) or not ``expect`` (dockerd's SandboxKey, when readable: a pid recycled since
    ``inspect``). Never creates a namespace."""
    fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = _ns_id(os.fstat(fd))
        if target == _ns_id(os.stat("/proc/self/ns/net")):
            raise NotThatNetns(f"{netns_path} is this process's own network namespace")
        if expect:
            try:
                expected = _ns_id(os.stat(expect))
            except OSError:
                expected = None  # not visible from here (managed plugin without the mount)
            if expected is not None and expected != target:
                raise NotThatNetns(f"{netns_path} is not the namespace {expect}")
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def open_netns(netns_path: str, expect: str | None = None) -> Iterator[netlink.Rtnl]:
    """rtnetlink (:class:`.netlink.Rtnl`) in the netns at ``netns_path`` (``/proc/<pid>/ns/net``), checked
    as :func:`_open` does: whatever goes wrong, the host's rules and routes are never touched here."""
    fd = _open(netns_path, expect)
    try:
        with netlink.Rtnl(_in_netns(fd, netlink.open_socket)) as rt:
            yield rt
    finally:
        os.close(fd)


SIOCGIFHWADDR = 0x8927


def announce(netns_path: str, expect: str | None,
             addresses: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, str]) -> int:
    """From inside the container's netns, for each address on its interface (address → interface name),
    a gratuitous ARP (IPv4) or an unsolicited neighbour advertisement (IPv6), so that a neighbour still
    resolving it (a connection that came before the interface was up) gets its MAC now rather than at its
    next retry, a second later. Engine 28 does this itself; Engine 20.10 does not. The frames sent."""
    def send() -> int:
        sent = 0
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as sock:  # sends only
            for address, ifname in sorted(addresses.items(), key=lambda item: (item[0].version, item[0])):
                raw = fcntl.ioctl(sock.fileno(), SIOCGIFHWADDR, struct.pack("256s", ifname.encode()[:15]))
                frame, ethertype = announcement(raw[18:24], address)
                sock.sendto(frame, (ifname, ethertype))
                sent += 1
        return sent

    fd = _open(netns_path, expect)
    try:
        return _in_netns(fd, send)
    finally:
        os.close(fd)


def read(rt: netlink.Rtnl) -> tuple[dict[int, Any], dict[Any, str]]:
    """({4: dockerd's IPv4 default gateway in the main table, 6: its IPv6 one}, {address: ifname}) of
    the netns ``rt`` is in."""
    gateways: dict[int, Any] = {4: None, 6: None}
    for version, family in ((4, socket.AF_INET), (6, socket.AF_INET6)):
        for msg in rt.get_routes(family):
            ours = msg["proto"] == RT_PROTO
            if table_of(msg) == MAIN_TABLE and msg["dst_len"] == 0 and not ours and attr(msg, "RTA_GATEWAY"):
                gateways[version] = ipaddress.ip_address(attr(msg, "RTA_GATEWAY"))
                break
    return gateways, {iface.ip: name for name, iface in all_addresses(rt)}


def apply(rt: netlink.Rtnl, routing: Routing) -> bool:
    """Make our rules and routes in ``rt``'s netns equal ``routing``; True if anything changed. Routes go
    in before the rules that use them and out after them: a rule whose table is empty would send the
    container's traffic on to Docker's default route (the host's writer orders otherwise)."""
    missing_routes, extra_routes = difference(routing.routes, owned_routes(rt))
    missing_rules, extra_rules = difference(routing.rules, owned_rules(rt))
    for route in missing_routes:
        replace_route(rt, route)
    for rule in missing_rules:
        add_rule(rt, rule)
    for rule in extra_rules:
        delete_rule(rt, rule)
    for route in extra_routes:
        delete_route(rt, route)
    return bool(missing_routes or extra_routes or missing_rules or extra_rules)


def remove(netns_path: str, expect: str | None = None) -> bool:
    """Every rule and route of ours out of the netns at ``netns_path``; True if there were any."""
    with open_netns(netns_path, expect) as rt:
        return apply(rt, Routing())
