"""The gateway watcher: keeps every multi-homed container's default route on its top-priority network.

It follows Docker's events (container start, restart, die; network connect, disconnect) and resyncs every
``resync_interval``; for each running container with a network of ours it reads the container's
networks, lets :mod:`plugin.plan.gateway` decide, and has :mod:`plugin.kernel.netns` write the policy
routing inside it. Its decisions go to ``gateways.json`` (:mod:`.decisions`), shown by ``multinic status``.
It never holds the state lock: it only reads the state file, whose writes are atomic.
"""

from __future__ import annotations

import heapq
import ipaddress
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..api.options import gw_priority_or_none
from ..kernel import links, netns
from ..kernel.netlink import Rtnl
from ..ops import engine, health
from ..plan import gateway
from ..plan.gateway import Attachment
from ..plan.state import State, Store
from ..settings import Settings
from . import decisions
from .supervisor import STOP_POLL

log = logging.getLogger(__name__)

FOLLOW_UPS = (0.3, 1.0)  # seconds after an event: re-read once dockerd has saved the container
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0
API_TIMEOUT = 10
EVENT_FILTERS = {
    "type": ["container", "network"],
    "event": ["start", "restart", "die", "connect", "disconnect"],
}
_STREAM_END = object()


class Reconnect(Exception):
    """The event stream ended: dockerd restarted or went away."""


@dataclass(frozen=True)
class NetInfo:
    id: str
    name: str
    driver: str
    internal: bool
    options: dict[str, str]


def _ip(text: Any, version: int = 4) -> Any:
    try:
        address = ipaddress.ip_address(text) if text else None
    except ValueError:
        return None
    return address if address is not None and address.version == version else None


def _iface(ip: Any, prefixlen: Any, version: int = 4) -> Any:
    try:
        address = ipaddress.ip_interface(f"{ip}/{int(prefixlen)}") if ip else None
    except (TypeError, ValueError):
        return None
    return address if address is not None and address.version == version else None


def build_attachments(
    networks: dict[str, Any], netinfo: Callable[[str], NetInfo | None], state: State, driver_name: str
) -> list[Attachment]:
    """Attachments from a container's ``NetworkSettings.Networks`` (pure apart from ``netinfo``)."""
    out = []
    for name, ep in sorted((networks or {}).items()):
        ep = ep or {}
        net_id = ep.get("NetworkID") or ""
        info = netinfo(net_id) if net_id else None
        if info is None:
            continue  # the network vanished meanwhile
        record = state.networks.get(net_id)
        # Ours by driver name, or by id: a managed plugin's networks carry the plugin reference
        # ("org/multinic:latest") as their driver, not the socket's name.
        ours = info.driver == driver_name or record is not None
        endpoint_priority = None
        network_priority = None
        given = None
        if ours:
            ep_record = state.endpoints.get(ep.get("EndpointID") or "")
            if ep_record is not None:
                endpoint_priority = ep_record.gw_priority
            elif "gw_priority" in (ep.get("DriverOpts") or {}):
                endpoint_priority = gw_priority_or_none(ep["DriverOpts"]["gw_priority"])
            if record is not None:
                network_priority = record.gw_priority
                given = "gw_priority" in record.options or record.gw_priority != 0
            elif "gw_priority" in info.options:
                network_priority = gw_priority_or_none(info.options["gw_priority"])
                given = network_priority is not None
        priority, source = gateway.effective_priority(
            ours, ep.get("GwPriority") or 0, endpoint_priority, network_priority, given
        )
        out.append(
            Attachment(
                network_id=net_id,
                network_name=name,
                driver=info.driver,
                endpoint_id=ep.get("EndpointID") or "",
                priority=priority,
                priority_source=source,
                gateway=_ip(ep.get("Gateway")),
                address=_iface(ep.get("IPAddress"), ep.get("IPPrefixLen")),
                internal=info.internal or bool(record and record.internal),
                gateway6=_ip(ep.get("IPv6Gateway"), 6),
                address6=_iface(ep.get("GlobalIPv6Address"), ep.get("GlobalIPv6PrefixLen"), 6),
            )
        )
    return out


# -- the controller -----------------------------------------------------------------------------
class Watcher:
    def __init__(self, store: Store, settings: Settings, client_factory: Callable[[], Any] | None = None) -> None:
        self.store = store
        self.settings = settings
        self.driver_name = settings.driver_name
        self.client_factory = client_factory or (lambda: _client(settings))
        self.networks: dict[str, NetInfo] = {}
        self.decisions: dict[str, dict[str, Any]] = decisions.load(store.directory)
        self._written: dict[str, dict[str, Any]] | None = None  # first flush always writes
        self.last_event: dict[str, tuple[int, str]] = {}  # container id → (timeNano, "network connect")
        self.running: set[str] = set()  # containers seen running (resync) or started (events) since
        self.ours: set[str] = set()  # containers with a network of ours (resync, network events)
        self.announce = False  # the engine does not announce containers' addresses: we do, once each
        self.announced: dict[str, tuple[int, frozenset[Any]]] = {}  # container id → (pid, addresses)
        self.failing: dict[str, str] = {}  # container id → why its routing could not be written (a failed round)
        self.info: dict[str, Any] = {"pid": os.getpid(), "driver": self.driver_name, "since": None, "docker": None}

    # docker ------------------------------------------------------------------------------
    def _netinfo(self, api: Any, net_id: str) -> NetInfo | None:
        info = self.networks.get(net_id)
        if info is None:
            try:
                raw = api.inspect_network(net_id)
            except engine.NotFound:
                return None
            info = self._remember_network(raw)
        return info

    def _remember_network(self, raw: dict[str, Any]) -> NetInfo:
        info = NetInfo(
            id=raw["Id"],
            name=raw.get("Name", ""),
            driver=raw.get("Driver", ""),
            internal=bool(raw.get("Internal")),
            options={str(k): str(v) for k, v in (raw.get("Options") or {}).items()},
        )
        self.networks[info.id] = info
        return info

    def refresh_networks(self, api: Any) -> None:
        self.networks = {}
        for raw in api.networks():
            self._remember_network(raw)

    def has_ours(self, api: Any, networks: dict[str, Any], state: State) -> bool:
        for ep in (networks or {}).values():
            net_id = (ep or {}).get("NetworkID") or ""
            if net_id in state.networks:
                return True
            info = self._netinfo(api, net_id) if net_id else None
            if info is not None and info.driver == self.driver_name:
                return True
        return False

    # one container -----------------------------------------------------------------------
    def reconcile_container(self, api: Any, cid: str) -> bool:
        """Look at one container and make its routing match; False when it is gone (removed: its
        follow-ups are moot)."""
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            info = api.inspect_container(cid)
        except engine.NotFound:
            self._forget(cid)
            return False
        except engine.DockerError as exc:  # this container only; connection errors end the session
            if not exc.status:
                raise
            log.warning("cannot inspect container %s: %s", cid[:12], exc)
            return True
        cid = info["Id"]
        st = info.get("State") or {}
        pid = st.get("Pid") or 0
        if not st.get("Running") or not pid:
            self._forget(cid)  # its netns is gone with it
            return True
        settings = info.get("NetworkSettings") or {}
        networks = settings.get("Networks") or {}
        if log.isEnabledFor(logging.DEBUG):
            event = self.last_event.get(cid)
            log.debug("reconcile %s: %s; networks %s", cid[:12],
                      f"{(time.time_ns() - event[0]) / 1e6:.0f} ms after {event[1]}" if event else "no event",
                      sorted(networks))
        path = f"/proc/{pid}/ns/net"
        name = (info.get("Name") or "").lstrip("/") or cid[:12]
        try:
            state = self.store.load()
            if not self.has_ours(api, networks, state):
                self.failing.pop(cid, None)
                just_left = (self.last_event.get(cid) or (0, ""))[1] == "network disconnect"
                if cid in self.decisions or just_left:
                    if self.unroute(path, expect=settings.get("SandboxKey") or None):
                        log.info("%s has no %s network any more: policy routing removed", name, self.driver_name)
                    self._forget(cid)
                return True
            attachments = build_attachments(networks, lambda nid: self._netinfo(api, nid), state, self.driver_name)
            decision, facts = self.route(path, attachments, expect=settings.get("SandboxKey") or None)
            if self.announce:
                self._announce(cid, pid, path, settings.get("SandboxKey") or None, attachments, state, facts)
        except (FileNotFoundError, ProcessLookupError, netns.NotThatNetns) as exc:
            log.debug("%s vanished or changed while reconciling: %s", name, exc)
            self.failing.pop(cid, None)
            return True
        except NetlinkError as exc:  # the kernel refused our rules or routes in it: a failed round
            why = f"{name}: writing its policy routing failed: {exc}"
            if self.failing.get(cid) != why:
                log.exception("%s", why)
            else:
                log.warning("%s (again)", why)
            self.failing[cid] = why
            return True
        self.failing.pop(cid, None)
        if facts["changed"]:
            event = self.last_event.get(cid)
            if event is not None:
                late = (time.time_ns() - event[0]) / 1e6
                log.info("%s: %s (applied; %.0f ms since the last event seen for it, %s)", name, decision.reason,
                         late, event[1])
            else:
                log.info("%s: %s", name, decision.reason)
        self._record(cid, name, pid, settings.get("SandboxKey") or "", attachments, decision, facts)
        return True

    @staticmethod
    def route(path: str, attachments: list[Attachment], expect: str | None) -> tuple[Any, dict[str, Any]]:
        """Inside the container's netns: read dockerd's gateway and the interfaces, decide, write; what was
        decided and seen."""
        with netns.open_netns(path, expect) as ipr:
            docker_gw, ifname_by_ip = netns.read(ipr)
            decision = gateway.choose(attachments, docker_gw[4])
            decision6 = gateway.choose(attachments, docker_gw[6], 6) if any(a.gateway6 for a in attachments) \
                else None
            changed = netns.apply(ipr, gateway.container_routing(attachments, decision, ifname_by_ip, decision6))
        return decision, {"docker_gateway": str(docker_gw[4]) if docker_gw[4] else None, "changed": changed,
                          "ifnames": {str(ip): ifname for ip, ifname in ifname_by_ip.items()},
                          "ipv6": decision6, "docker_gateway6": str(docker_gw[6]) if docker_gw[6] else None}

    def _announce(self, cid: str, pid: int, path: str, expect: str | None, attachments: list[Attachment],
                  state: State, facts: dict[str, Any]) -> None:
        """Once per address of ours (IPv4 and IPv6) and container process: if the host is still resolving
        it (a client reached a published port before the interface was up, and its packets wait for the
        host's next ARP or neighbour solicitation, a second later), an announcement from inside the
        container resolves it now."""
        ifnames = facts["ifnames"]
        ours = {iface.ip: state.networks[a.network_id].bridge for a in attachments if a.network_id in state.networks
                for iface in (a.address, a.address6) if iface and str(iface.ip) in ifnames}
        done_pid, done = self.announced.get(cid, (0, frozenset()))
        fresh = {ip: bridge for ip, bridge in ours.items() if done_pid != pid or ip not in done}
        self.announced[cid] = (pid, frozenset(ours))
        if not fresh:
            return
        try:
            with Rtnl() as rt:
                waiting = {ip for bridge in set(fresh.values())
                           for ip in links.resolving(rt, bridge, [i for i, b in fresh.items() if b == bridge])}
            if waiting:
                netns.announce(path, expect, {ip: ifnames[str(ip)] for ip in waiting})
        except (FileNotFoundError, ProcessLookupError, netns.NotThatNetns):
            pass  # gone meanwhile
        except OSError as exc:  # the host's own ARP retry still finds it
            log.warning("container %s: cannot announce %s: %s", cid[:12], sorted(map(str, fresh)), exc)

    @staticmethod
    def unroute(path: str, expect: str | None) -> bool:
        """Our rules and routes out of the container's netns; True if there were any."""
        return netns.remove(path, expect)

    def _record(self, cid: str, name: str, pid: int, sandbox: str, attachments: list[Attachment], decision: Any,
                facts: dict[str, Any]) -> None:
        chosen = decision.chosen
        ifnames = facts["ifnames"]
        self.decisions[cid] = {
            "container": name,
            "pid": pid,
            "sandbox": sandbox,
            "chosen": chosen.network_name if chosen else None,
            "gateway": str(chosen.gateway) if chosen and chosen.gateway else None,
            "interface": ifnames.get(str(chosen.address.ip)) if chosen and chosen.address else None,
            "override": decision.override,
            "reason": decision.reason,
            "docker_gateway": facts["docker_gateway"],
            "networks": [
                {
                    "name": a.network_name,
                    "driver": a.driver,
                    "priority": a.priority,
                    "source": a.priority_source,
                    "gateway": str(a.gateway) if a.gateway else None,
                    "address": str(a.address) if a.address else None,
                    "interface": ifnames.get(str(a.address.ip)) if a.address else None,
                    "internal": a.internal,
                    **({"gateway6": str(a.gateway6) if a.gateway6 else None,
                        "address6": str(a.address6) if a.address6 else None} if facts.get("ipv6") else {}),
                }
                for a in attachments
            ],
        }
        decision6 = facts.get("ipv6")
        if decision6 is not None:
            chosen6 = decision6.chosen
            self.decisions[cid]["ipv6"] = {
                "chosen": chosen6.network_name if chosen6 else None,
                "gateway": str(chosen6.gateway6) if chosen6 and chosen6.gateway6 else None,
                "interface": ifnames.get(str(chosen6.address6.ip)) if chosen6 and chosen6.address6 else None,
                "override": decision6.override,
                "reason": decision6.reason,
                "docker_gateway": facts.get("docker_gateway6"),
            }

    def _forget(self, cid: str) -> None:
        self.failing.pop(cid, None)
        self.decisions.pop(cid, None)
        self.announced.pop(cid, None)
        self.last_event.pop(cid, None)

    def note_event(self, item: tuple[str, int, str, str, str]) -> bool:
        """Remember the event; False if it needs no reconcile. Only containers with a network of ours
        are followed (:attr:`ours`): another container's start costs a set lookup.

        dockerd sends ``network connect`` for each network of ``docker run`` *before* the container
        starts, and inspecting a container mid-start waits for dockerd's container lock: such events are
        skipped, the ``container start`` that follows brings it in.
        """
        cid, when, what, network, driver = item
        if what.startswith("network ") and (driver == self.driver_name or network in self.store.load().networks):
            self.ours.add(cid)
        if cid not in self.ours:
            return False
        if what in ("container start", "container restart"):
            self.running.add(cid)
        elif what == "container die":
            self.running.discard(cid)
            self.ours.discard(cid)  # its next start connects its networks again
        elif cid not in self.running:
            return False
        self.last_event[cid] = (when, what)
        return True

    def flush(self) -> None:
        if self.decisions != self._written:
            decisions.write(self.store.directory, self.decisions, self.info)
            self._written = {k: dict(v) for k, v in self.decisions.items()}

    # all containers ----------------------------------------------------------------------
    def resync(self, api: Any) -> None:
        self.refresh_networks(api)
        targets = set()
        running = set()
        state = self.store.load()
        for summary in api.containers(filters={"status": "running"}):
            running.add(summary["Id"])
            self.running.add(summary["Id"])
            networks = (summary.get("NetworkSettings") or {}).get("Networks") or {}
            if self.has_ours(api, networks, state):
                targets.add(summary["Id"])
        self.running &= running
        self.ours = (self.ours & running) | targets
        for cid in list(self.decisions):
            if cid not in running:
                self._forget(cid)
        for cid in list(self.failing):  # failed before any decision: gone, or off our networks, meanwhile
            if cid not in targets:
                self.failing.pop(cid)
        for cid in sorted(targets | set(self.decisions)):
            self.reconcile_container(api, cid)
        self.flush()

    def note_round(self) -> None:
        """One round to health: failed while any container's routing could not be written."""
        if self.failing:
            health.note(False, "; ".join(self.failing[cid] for cid in sorted(self.failing)))
        else:
            health.note(True)

    # the loop ----------------------------------------------------------------------------
    def session(self, stop_event: Any) -> None:
        """One connection to dockerd: subscribe, resync, follow events until the stream ends."""
        api = self.client_factory()
        engine_info = engine.EngineInfo.of(api.version())
        if engine_info.version != self.info.get("engine"):
            log.info("docker engine %s, API %s", engine_info.version, engine_info.api_version)
            if engine_info.crashes_on_revoke:
                log.error("docker engine %s crashes when it revokes a remote plugin's connectivity (moby #51554, "
                          "fixed in 29.0.3): upgrade Docker", engine_info.version)
        self.info["engine"] = engine_info.version
        self.announce = not engine_info.announces_addresses
        if not engine_info.supported:
            raise engine.TooOld(f"docker engine {engine_info.version} is too old: multinic needs Engine 20.10 or newer")
        stream_client = self.client_factory()
        stream = stream_client.events(decode=True, filters=EVENT_FILTERS)
        events: queue.Queue[Any] = queue.Queue()
        pump = threading.Thread(target=_pump, args=(stream, events), name="docker-events", daemon=True)
        pump.start()
        try:
            log.info("watching docker events for %s networks", self.driver_name)
            self.info.update(since=time.strftime("%Y-%m-%dT%H:%M:%S%z"), docker=self.settings.docker_host or "default")
            self._written = None  # say we are (back) online
            self.resync(api)
            self.note_round()
            next_resync = time.monotonic() + self.settings.resync_interval
            due: list[tuple[float, str]] = []
            while not stop_event.is_set():
                now = time.monotonic()
                wait = min(next_resync - now, STOP_POLL, due[0][0] - now if due else STOP_POLL)
                try:
                    item = events.get(timeout=max(0.0, wait))
                except queue.Empty:
                    item = None
                if item is _STREAM_END:
                    raise Reconnect("docker event stream ended")
                now = time.monotonic()
                if item is not None:
                    if self.note_event(item):
                        _schedule(due, item[0], now)
                    while True:  # take every event already queued, then reconcile once per container
                        try:
                            more = events.get_nowait()
                        except queue.Empty:
                            break
                        if more is _STREAM_END:
                            raise Reconnect("docker event stream ended")
                        if self.note_event(more):
                            _schedule(due, more[0], now)
                batch = set()
                while due and due[0][0] <= now:
                    batch.add(heapq.heappop(due)[1])
                failing = dict(self.failing)
                for cid in sorted(batch):
                    if not self.reconcile_container(api, cid) and any(c == cid for _t, c in due):
                        due[:] = [d for d in due if d[1] != cid]  # removed: its follow-ups would find it so
                        heapq.heapify(due)
                if now >= next_resync:
                    self.resync(api)
                    self.note_round()
                    next_resync = time.monotonic() + self.settings.resync_interval
                elif batch:
                    self.flush()
                    if self.failing != failing:  # a container's routing failed, or works again: said now
                        self.note_round()
        finally:
            try:
                stream.close()
            except Exception:  # noqa: BLE001
                pass
            for c in (api, stream_client):
                try:
                    c.close()
                except Exception:  # noqa: BLE001
                    pass


def _schedule(due: list[tuple[float, str]], cid: str, now: float) -> None:
    heapq.heappush(due, (now, cid))
    for delay in FOLLOW_UPS:
        heapq.heappush(due, (now + delay, cid))


def _pump(stream: Any, events: queue.Queue[Any]) -> None:
    """Event stream → (container id, time, what, network id, network driver) on ``events``;
    :data:`_STREAM_END` when the stream stops."""
    try:
        for event in stream:
            actor = event.get("Actor") or {}
            attributes = actor.get("Attributes") or {}
            network = driver = ""
            if event.get("Type") == "network":
                cid, network, driver = attributes.get("container"), actor.get("ID") or "", attributes.get("type") or ""
            else:
                cid = actor.get("ID") or event.get("id")
            if cid:
                when = event.get("timeNano") or int(event.get("time") or 0) * 1_000_000_000
                events.put((cid, int(when), f"{event.get('Type')} {event.get('Action') or event.get('status')}",
                            network, driver))
    except Exception as exc:  # noqa: BLE001 - closed by us, or dockerd went away
        log.debug("docker event stream: %s", exc)
    finally:
        events.put(_STREAM_END)


def _client(settings: Settings) -> Any:
    return engine.client(settings, API_TIMEOUT)


def run(store: Store, stop_event: Any, settings: Settings, client_factory: Callable[[], Any] | None = None) -> None:
    """Run the watcher until ``stop_event`` is set; dockerd going away is waited out, with backoff."""
    watcher = Watcher(store, settings, client_factory)
    backoff = BACKOFF_FIRST
    while not stop_event.is_set():
        started = time.monotonic()
        try:
            watcher.session(stop_event)
        except Reconnect as exc:
            log.info("%s; reconnecting", exc)
        except engine.TooOld as exc:
            log.error("%s", exc)
            health.note(False, exc)
        except engine.DockerError as exc:  # dockerd away, API errors: waited out
            log.info("gateway watcher: docker not usable (%s); retrying in %.1fs", exc, backoff)
            health.waiting(f"docker not usable: {exc}")
        except Exception as exc:  # noqa: BLE001 - ours or the host's (the state file, the kernel): retried
            log.exception("gateway watcher failed; retrying in %.1fs", backoff)
            health.note(False, exc)
        if time.monotonic() - started > 2 * BACKOFF_MAX:
            backoff = BACKOFF_FIRST  # the session worked for a while: retry quickly
        stop_event.wait(backoff)
        backoff = min(backoff * 2, BACKOFF_MAX)
    log.info("gateway watcher stopped")


def loop(store: Store, settings: Settings) -> Callable[[Any], None]:
    """The gateway watcher, as a thread of the worker hosting the loops."""
    return lambda stop: run(store, stop, settings)


def cleanup(state_dir: str) -> int:
    """Uninstall inside containers: our rules and routes out of every container the watcher recorded
    (stop the watcher first). Needs no dockerd; a container that is gone is skipped. How many changed."""
    changed = 0
    for cid, dec in decisions.load(state_dir).items():
        sandbox = dec.get("sandbox") or ""
        if not sandbox or not os.path.exists(sandbox):
            continue  # container gone (or its netns not visible): the pid may belong to anything now
        try:
            if netns.remove(f"/proc/{int(dec.get('pid') or 0)}/ns/net", expect=sandbox):
                changed += 1
        except (OSError, ValueError, netns.NotThatNetns) as exc:
            log.debug("container %s: %s", cid[:12], exc)
    decisions.write(state_dir, {}, decisions.load_watcher_info(state_dir))
    return changed
