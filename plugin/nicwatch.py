"""Follow the parent NICs: netlink link, address and route events wake a reconcile within ~0.2 s;
the healer's periodic pass stays the safety net for anything missed.

What a parent NIC event does (compare systemd-networkd, which reconfigures a link it manages on
RTM_NEWLINK/RTM_NEWADDR and matches links by name, and dockerd, whose macvlan/ipvlan parents are
bound by name at create and not followed afterwards):

- **readdressed** (DHCP renewal, a secondary IP moved): published ports without a HostIP are
  rendered on the parent's addresses of the moment (:func:`plugin.firewall.rules.publish_addresses`),
  so the reconcile moves their DNAT to the new address and drops the old one; routes of the
  NIC table follow the new subnet; masquerade follows by itself.
- **gateway changed** and ``parent_gateway`` not pinned at create: the network's next hop
  becomes the parent's current default gateway (a foreign default route through it, else, if
  the old next hop is no longer on the parent's subnets, the first host of its primary subnet,
  as at create). A pinned ``parent_gateway`` is never changed.
- **MTU changed** and ``mtu`` not pinned at create: the network's MTU follows (the bridge at
  once, veths of new containers; running containers keep theirs, as with dockerd).
- **deleted**: the NIC table keeps only its fail-closed unreachable default (nothing leaks out
  of another NIC); **re-created** under the same name (a VLAN, a USB NIC): followed like a new
  link - routes, rules, rp_filter and DNAT come back.
- **renamed**: *not followed*. The name is the contract the user gave (``parent=eth1``), as for
  systemd-networkd's ``[Match] Name=``; the network behaves as if its parent were deleted (fail
  closed) until a NIC with that name exists again (renamed back, or another NIC given the name).

Events are read from a raw NETLINK_ROUTE socket (pyroute2's buffered reader delivers them one
burst late); only the few header fields needed are parsed. Our own changes never wake us: our
routes carry protocol 211 and our links are not parents.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import select
import socket
import struct
import time
from dataclasses import dataclass, replace
from typing import Any, Iterable

from pyroute2 import IPRoute

from . import background, health, netlink
from .background import BackgroundProcess
from .driver import Driver
from .facts import ParentFacts
from .state import State, Store
from .tags import RT_PROTO

log = logging.getLogger(__name__)

RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR, RTM_NEWROUTE, RTM_DELROUTE = 16, 17, 20, 21, 24, 25
IFLA_IFNAME = 3
IFA_LABEL = 3
RTA_OIF = 4
DEBOUNCE = 0.15  # events come in bursts (address + routes + link): reconcile once after the burst
POLL = 0.5  # how often the loop looks at its stop flag
BURST_MAX = 1.0
REFRESH = 5.0  # re-read which NICs are parents (networks come and go) at least this often


IFLA_MTU = 4
IFF_UP, IFF_RUNNING, IFF_LOWER_UP = 0x1, 0x40, 0x10000
LINK_FLAGS = IFF_UP | IFF_RUNNING | IFF_LOWER_UP


@dataclass(frozen=True)
class Event:
    kind: int
    index: int = 0
    name: str = ""
    dst_len: int = -1
    proto: int = 0
    mtu: int = 0
    flags: int = 0

    @property
    def link_key(self) -> tuple[str, int, int]:
        """What of a link matters to us: a RTM_NEWLINK that changes none of it (our own rp_filter
        write over netlink, statistics) is not an event."""
        return self.name, self.mtu, self.flags & LINK_FLAGS


def _attrs(data: bytes, offset: int) -> dict[int, bytes]:
    found = {}
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("HH", data, offset)
        if length < 4:
            break
        found.setdefault(kind & 0x7FFF, data[offset + 4 : offset + length])
        offset += (length + 3) & ~3
    return found


def _name(raw: bytes | None) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace") if raw else ""


def parse(data: bytes) -> list[Event]:
    """Netlink messages → the fields :func:`relevant` needs (link/address/route, IPv4)."""
    events = []
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("IH", data, offset)
        if length < 16:
            break
        body = offset + 16
        if kind in (RTM_NEWLINK, RTM_DELLINK) and length >= 32:
            index, flags = struct.unpack_from("iI", data, body + 4)
            attrs = _attrs(data[: offset + length], body + 16)
            mtu = attrs.get(IFLA_MTU)
            events.append(Event(kind, index=index, name=_name(attrs.get(IFLA_IFNAME)), flags=flags,
                                mtu=struct.unpack("I", mtu)[0] if mtu and len(mtu) == 4 else 0))
        elif kind in (RTM_NEWADDR, RTM_DELADDR) and length >= 24:
            index = struct.unpack_from("I", data, body + 4)[0]
            name = _name(_attrs(data[: offset + length], body + 8).get(IFA_LABEL))
            events.append(Event(kind, index=index, name=name))
        elif kind in (RTM_NEWROUTE, RTM_DELROUTE) and length >= 28:
            dst_len, proto = data[body + 1], data[body + 5]
            oif = _attrs(data[: offset + length], body + 12).get(RTA_OIF)
            index = struct.unpack("I", oif)[0] if oif and len(oif) == 4 else 0
            events.append(Event(kind, index=index, dst_len=dst_len, proto=proto))
        offset += (length + 3) & ~3
    return events


KIND_NAMES = {RTM_NEWLINK: "link", RTM_DELLINK: "link deleted", RTM_NEWADDR: "address added",
              RTM_DELADDR: "address removed", RTM_NEWROUTE: "default route added",
              RTM_DELROUTE: "default route removed"}


def describe(event: Event) -> str:
    return f"{KIND_NAMES.get(event.kind, event.kind)} {event.name or event.index}"


def relevant(event: Event, parents: dict[str, int | None], links: dict[int, tuple] | None = None) -> bool:
    """Does the event change something about a parent NIC (by name, or by the index it had)?
    ``links``: index → :attr:`Event.link_key` last seen (updated here)."""
    indexes = {i for i in parents.values() if i}
    if event.kind in (RTM_NEWROUTE, RTM_DELROUTE):
        # a foreign default route through a parent (its gateway); our own routes are proto 211
        return event.dst_len == 0 and event.proto != RT_PROTO and event.index in indexes
    if not (event.name in parents or event.index in indexes):
        return False
    if event.kind == RTM_NEWLINK and links is not None:
        before = links.get(event.index)
        links[event.index] = event.link_key
        return before != event.link_key
    return True


class Monitor:
    """A raw NETLINK_ROUTE socket subscribed to link, IPv4 address and IPv4 route groups."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE))
        self.sock.setblocking(False)

    def read(self, timeout: float) -> list[Event] | None:
        """Events that arrived within ``timeout`` ([] if none); None if the kernel dropped some
        (ENOBUFS: a burst overflowed the buffer - the caller must assume anything changed)."""
        ready, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not ready:
            return []
        events: list[Event] = []
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return events
            except OSError as exc:
                if exc.errno == 105:  # ENOBUFS
                    return None
                raise
            events += parse(data)

    def close(self) -> None:
        self.sock.close()


def parents_of(state: State, ipr: IPRoute) -> dict[str, int | None]:
    return {net.parent: netlink.link_index(ipr, net.parent)
            for net in state.networks.values() if net.parent and not net.internal}


def link_keys(ipr: IPRoute, parents: dict[str, int | None]) -> dict[int, tuple]:
    """index → :attr:`Event.link_key` of the parents as they are now."""
    keys = {}
    for index in filter(None, parents.values()):
        for msg in ipr.get_links(index):
            keys[index] = (msg.get_attr("IFLA_IFNAME"), msg.get_attr("IFLA_MTU") or 0, msg["flags"] & LINK_FLAGS)
    return keys


def follow(
    state: State,
    facts: dict[str, ParentFacts],
    gateways: dict[str, ipaddress.IPv4Address | None],
) -> list[str]:
    """Pure: update unpinned gateway and MTU of networks whose parent changed; what changed."""
    changes = []
    for nid, net in sorted(state.networks.items()):
        parent = facts.get(net.parent or "")
        if net.internal or parent is None or not parent.exists or not parent.addresses:
            continue
        updated = net
        if "parent_gateway" not in net.options:
            current = ipaddress.IPv4Address(net.parent_gateway) if net.parent_gateway else None
            wanted = gateways.get(parent.ifname)
            if wanted is None and not any(current and current in a.network for a in parent.addresses):
                primary = parent.addresses[0]
                wanted = next(iter(primary.network.hosts()), None) if primary.network.prefixlen < 31 else None
            if wanted is not None and wanted != current:
                updated = replace(updated, parent_gateway=str(wanted))
        if "mtu" not in net.options and parent.mtu and parent.mtu != net.mtu:
            updated = replace(updated, mtu=parent.mtu)
        if updated != net:
            state.networks[nid] = updated
            changes.append(
                f"network {nid[:12]}: parent {net.parent} now gateway {updated.parent_gateway} mtu {updated.mtu}"
                f" (was {net.parent_gateway} mtu {net.mtu})"
            )
    return changes


def converge(store: Store, driver: Driver) -> list[str]:
    """Follow the parents' gateway/MTU in the state, then make the kernel match (full reconcile)."""
    with store.locked() as state:
        with IPRoute() as ipr:
            names = sorted({n.parent for n in state.networks.values() if n.parent and not n.internal})
            facts = {name: netlink.parent_facts(ipr, name) for name in names}
            gateways = {name: netlink.foreign_default_gateway(ipr, name) if facts[name].exists else None
                        for name in names}
        changes = follow(state, facts, gateways)
        if changes:
            store.save(state)
    for change in changes:
        log.info("%s", change)
    driver.recover(None)
    return changes


def run(store: Store, stop: Any) -> None:
    """Bind first, then read the parents as they are, then follow events. Link events are judged
    against the last state seen (:func:`relevant`); each re-read of the parents from the kernel
    (when the state file changed, and every :data:`REFRESH` s) compares with that too, so a change
    whose event was read before the re-read is not lost."""
    driver = Driver(store)
    monitor = Monitor()
    log.info("watching parent NICs (netlink link, address and route events)")
    parents: dict[str, int | None] = {}
    links: dict[int, tuple] = {}
    refreshed, seen = 0.0, None

    def stamp() -> int | None:
        try:
            return os.stat(store.path).st_mtime_ns
        except OSError:
            return None

    try:
        first_pass = True
        while not stop.is_set():
            # the first look at the parents comes before the first read: a change between the two
            # would otherwise look already known (the window left, between bind and this look, is
            # the healer's to cover)
            events = [] if first_pass else monitor.read(POLL)
            first_pass, drifted = False, False
            # which NICs are parents: re-read when the state changed (a network was just created
            # on a NIC) before judging the events, and every REFRESH s (a parent's index changes)
            if stamp() != seen or time.monotonic() - refreshed > REFRESH:
                seen = stamp()
                try:
                    with IPRoute() as ipr:
                        parents = parents_of(store.load(), ipr)
                        now = link_keys(ipr, parents)
                    # a known parent that changed since we last looked (its event may be the one
                    # just read, or lost); a parent new to us was just configured by a verb
                    drifted = any(i in links and now[i] != links[i] for i in now)
                    links = now
                except Exception as exc:  # noqa: BLE001 - state unreadable: health says so
                    health.note(False, exc)
                refreshed = time.monotonic()
            woken = [e for e in events or () if relevant(e, parents, links)]
            if not drifted and events is not None and not woken:
                continue
            first = time.monotonic()
            while time.monotonic() - first < BURST_MAX and monitor.read(DEBOUNCE) != []:
                pass  # until the burst is over (or a flapping link has had its second)
            try:
                changes = converge(store, driver)
                elapsed = (time.monotonic() - first) * 1000
                why = "kernel dropped events" if events is None else ", ".join(
                    sorted({describe(e) for e in woken})) or "a parent changed since last seen"
                log.info("parent NIC event (%s): reconciled in %.0f ms%s", why, elapsed,
                         f" ({len(changes)} change(s))" if changes else "")
                health.note(True, repaired=True)
            except Exception as exc:  # noqa: BLE001 - the healer retries; health reports it
                log.exception("reconcile after a parent NIC event failed")
                health.note(False, exc)
            refreshed = 0.0  # re-read the parents: a re-created parent has a new index
    finally:
        monitor.close()


def spawn(store: Store) -> BackgroundProcess:
    return background.spawn("nicwatch", lambda stop: run(store, stop))


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m plugin.nicwatch --state-dir DIR``: the NIC watcher alone, in the foreground."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="python -m plugin.nicwatch")
    parser.add_argument("--state-dir", default=os.environ.get("MULTINIC_STATE_DIR", "/var/lib/multinic"))
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = background.StopFlag()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run(Store(args.state_dir), stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
