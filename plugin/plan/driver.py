"""The remote-driver verbs, and the only writer of the state: typed request in, pure plan over (state,
facts), persisted state, then the one kernel writer (:func:`plugin.kernel.writer.reconcile`), response.

Each verb holds the state lock for its whole run, so parallel dockerd calls and several gunicorn workers
serialise on the host's one state file. Verbs that remove things tolerate unknown ids."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import time
from typing import Any, Callable, Iterable, Mapping

from ..api.messages import (
    CreateEndpointRequest,
    CreateNetworkRequest,
    EndpointRef,
    JoinRequest,
    NetworkRef,
    PortBinding,
    ProgramRequest,
)
from ..api.options import parse_network_options
from ..errors import Refusal
from ..kernel import devconf, facts, writer
from ..kernel.firewall import Firewall, select
from ..kernel.firewall.rules import publish_addresses
from ..kernel.netlink import Rtnl
from ..settings import Settings
from . import ports
from .desired import FORWARDING6
from .facts import HostFacts
from .network import (
    GATEWAY_GUESSED,
    bridge_name_for,
    kept_at_last6,
    mac_for,
    parent_next_hop,
    parent_next_hop6,
    plan_network,
    publish_resolver,
    restore6_for,
    veth_names_for,
)
from .rebuild import rebuild
from .state import EndpointRecord, NetworkRecord, PublishedPort, State, StateLost, Store

log = logging.getLogger(__name__)

# GwAllocChecker: Engine >= 28 then asks GwAllocCheck before IPAM; older engines ignore it.
CAPABILITIES = {"Scope": "local", "ConnectivityScope": "local", "GwAllocChecker": True}
KernelHook = Callable[[State, "State | None"], None]


class Driver:
    def __init__(self, store: Store, settings: Settings, *, defer_deletes: bool = False,
                 kernel: KernelHook | None = None, on_saved: Callable[[], None] | None = None,
                 firewall: Firewall | None = None) -> None:
        """``defer_deletes``: veths of removed endpoints are deleted after the response (``multinic
        serve``, whose workers live on). ``kernel``: replaces the kernel writer (unit tests of the
        verbs' logic), called with (after, before). ``on_saved``: called between "state saved" and
        "kernel changed" (the fault tests pause there). ``firewall``: the backend another driver of this
        process chose (backends keep no state)."""
        self.store = store
        self.settings = settings
        self.defer_deletes = defer_deletes
        self.kernel = kernel
        self.on_saved = on_saved
        self._firewall: Firewall | None = firewall

    @property
    def firewall(self) -> Firewall:
        """The backend for this host, chosen at first use (once per process)."""
        if self._firewall is None:
            self._firewall = select(self.settings)
            log.info("firewall backend: %s", self._firewall.name)
        return self._firewall

    # -- making the kernel match ------------------------------------------------------------------------
    def _save_and_reconcile(self, state: State, before: State | None, parents: Mapping[str, Any] | None = None) -> None:
        """Persist first (intent), then make the kernel match: only the change from ``before``, or, with
        None, the whole host."""
        self._keep_what_others_need(state)
        self.store.save(state)
        if self.on_saved is not None:
            self.on_saved()
        if self.kernel is not None:
            self.kernel(state, before)
        else:
            writer.reconcile(state, before, self.firewall, defer_deletes=self.defer_deletes, parents=parents)

    def _keep_what_others_need(self, state: State) -> None:
        """The last IPv6 network gone (deleted, forgotten or collected): nothing is put back while another
        bridge routes IPv6 through the host (:func:`plugin.plan.network.kept_at_last6`)."""
        if state.has_ipv6() or state.restore6.get(FORWARDING6, "1") == "1":
            return
        with Rtnl() as rt:
            kept = kept_at_last6(state, facts.read(rt, [], ipv6=True))
        if kept:
            log.warning("the last IPv6 network is gone, but another bridge routes IPv6 through this host: left %s "
                        "as they are", ", ".join(path.replace("/", ".") for path in kept))
            state.restore6.clear()

    def _forget_put_back(self, state: State) -> None:
        """Forget what the writer has put back (desired state): the parents no network uses any more (their
        rp_filter) and, with the last IPv6 network, the IPv6 settings found before. If the plugin dies
        before, the records are still there and the next run puts them back."""
        idle = [p for p in state.parents if not state.networks_on(p)]
        for parent in idle:
            del state.parents[parent]
        restored = bool(state.restore6) and not state.has_ipv6()
        if restored:
            state.restore6.clear()
        if idle or restored:
            self.store.save(state)

    def _rollback(self, state: State) -> None:
        """Best effort after a failed commit: the caller already undid its change in ``state``."""
        try:
            self._save_and_reconcile(state, None)
            self._forget_put_back(state)
        except Exception:  # noqa: BLE001 - the original error is the one to report
            log.exception("rollback incomplete; the healer finishes it")

    def _check_not_lost(self) -> None:
        """Refuse to act while the state file is missing but the kernel holds objects of ours."""
        if self.kernel is None and not self.store.exists():
            remains = writer.remains()
            if remains.bridges:
                raise StateLost(
                    f"multinic's state file {self.store.path} is missing while the kernel holds its networks "
                    f"({', '.join(sorted(remains.bridges.values()))}); nothing was changed. The plugin rebuilds "
                    "the state from dockerd as soon as dockerd answers (multinic status says when); if dockerd is "
                    "up, look at the plugin's log")

    def reconcile(self, known_networks: set[str] | None = None, created_before: float | None = None) -> State:
        """Make the whole host match the state (at start, from the healer, ``multinic reconcile``),
        first forgetting networks dockerd no longer has (when it answered: ``known_networks``) among those
        created before ``created_before``: one created since (a verb racing the listing; dockerd lists a
        network only after its driver created it) is not one dockerd lost."""
        with self.store.locked() as state:
            self._check_not_lost()
            if known_networks is not None:
                for nid in [n for n, net in state.networks.items() if n not in known_networks
                            and (created_before is None or net.created < created_before)]:
                    log.warning("forgetting network %s: dockerd no longer has it", nid[:12])
                    del state.networks[nid]
                for eid in [e for e, ep in state.endpoints.items() if ep.network_id not in state.networks]:
                    del state.endpoints[eid]
            self._save_and_reconcile(state, None)
            self._forget_put_back(state)
            return state

    def resolve_missing_state(self, docker: tuple[list[Any], list[Any]] | None) -> str:
        """No state file yet (a new host), or not any more (lost): rebuilt from ``docker`` (dockerd's view,
        :func:`plugin.ops.engine.rebuild_view`; None: dockerd did not answer) when dockerd or the kernel
        has networks of ours, else started empty. Raises :class:`StateLost` while dockerd does not answer
        and the kernel holds objects of ours: those are never removed on a guess."""
        if self.store.exists():
            return "present"
        remains = writer.remains()
        if docker is None:
            if remains.bridges:
                self._check_not_lost()
            return "waiting for dockerd to say whether it has multinic networks"
        if docker[0] or remains.bridges:
            state = self.rebuild_state(*docker)
            return f"rebuilt from dockerd: {len(state.networks)} network(s), {len(state.endpoints)} endpoint(s)"
        with self.store.locked() as state:
            if not self.store.exists():
                self.store.save(state)
        return "new: dockerd has no multinic network"

    def rebuild_state(self, networks: Iterable[Mapping[str, Any]], containers: Iterable[Mapping[str, Any]]) -> State:
        """The lost state rebuilt from dockerd's ``networks`` (inspect of each of ours) and ``containers``
        (inspect of each running one on them) and from the kernel, persisted, then the host reconciled."""
        networks, containers = list(networks), list(containers)
        remains = writer.remains(self.firewall)
        with self.store.locked() as current, Rtnl() as rt:
            parents = {p for n in networks if (p := str((n.get("Options") or {}).get("parent") or ""))}
            host = facts.read(rt, parents, routing=True)
            state, notes = rebuild(networks, containers, remains, host, time.time(), self.store.backup())
            for nid, net in current.networks.items():  # made since (a verb that ran meanwhile)
                state.networks.setdefault(nid, net)
            state.endpoints = {**current.endpoints, **state.endpoints}
            for note in notes:
                log.warning("state rebuilt: %s", note)
            log.warning("state rebuilt from dockerd and the kernel: %d network(s), %d endpoint(s)",
                        len(state.networks), len(state.endpoints))
            self._save_and_reconcile(state, None)
            return state

    # -- networks -----------------------------------------------------------------------------------------
    @staticmethod
    def gw_alloc_check() -> dict[str, Any]:
        """Engine >= 28: keep the gateway address reserved in both families: the bridge holds it (whatever
        the network's options)."""
        return {"SkipIPv4": False, "SkipIPv6": False}

    def create_network(self, req: CreateNetworkRequest) -> dict[str, Any]:
        opts = parse_network_options(req.generic)
        with self.store.locked() as state:
            if req.network_id in state.networks:
                return {}
            self._check_not_lost()
            bridge = opts.bridge_name or bridge_name_for(req.network_id)
            # Tables in use and the parent's next hops matter only for the first network on a parent (and
            # the IPv6 next hop for the first IPv6 one).
            siblings = state.networks_on(opts.parent) if opts.parent and not req.internal else []
            first = bool(opts.parent) and not req.internal and (not siblings or (
                req.ipv6 and not any(n.subnet6 for n in siblings)))
            with Rtnl() as rt:
                host = facts.read(rt, [opts.parent] if opts.parent else [], names=[bridge], routing=first,
                                  ipv6=req.ipv6)
            rp = devconf.read_sysctl(f"net/ipv4/conf/{opts.parent}/rp_filter") if first and not siblings else None
            record, parent_record = plan_network(state, req, opts, host, rp)
            before = state.copy()
            state.networks[record.id] = record
            if parent_record is not None and record.parent:
                state.parents[record.parent] = parent_record
            state.restore6.update(restore6_for(before, record, host))
            try:
                self._save_and_reconcile(state, before)
            except Exception:
                log.exception("create of network %s failed; rolling back", req.network_id[:12])
                state.networks.pop(record.id, None)
                self._rollback(state)
                raise
        log.info("created network %s bridge=%s parent=%s table=%s next hop %s (%s)%s", record.id[:12], record.bridge,
                 record.parent, record.table, record.parent_gateway, record.gateway_source or "-",
                 f", IPv6 next hop {record.parent_gateway6} ({record.gateway6_source})" if record.parent_gateway6
                 else "")
        if first and record.gateway_source == GATEWAY_GUESSED:
            log.warning("network %s: %s has no default route in any table, so its next hop %s is a guess (the first "
                        "host of its subnet); if the router is elsewhere, re-create the network with "
                        "-o parent_gateway=IP (`multinic doctor` checks that it answers)", record.id[:12],
                        record.parent, record.parent_gateway)
        return {}

    def delete_network(self, req: NetworkRef) -> dict[str, Any]:
        with self.store.locked() as state:
            if req.network_id not in state.networks:
                return {}
            before = state.copy()
            del state.networks[req.network_id]
            for ep in list(state.endpoints.values()):
                if ep.network_id == req.network_id:
                    del state.endpoints[ep.id]
            self._save_and_reconcile(state, before)
            self._forget_put_back(state)
        log.info("deleted network %s", req.network_id[:12])
        return {}

    # -- endpoints ----------------------------------------------------------------------------------------
    def _network(self, state: State, network_id: str) -> NetworkRecord:
        net = state.networks.get(network_id)
        if net is None:
            self._check_not_lost()
            raise Refusal(f"network {network_id[:12]} is not known to multinic (its state may have been lost and "
                          "not rebuilt: see `multinic status`); remove and re-create the network")
        return net

    def create_endpoint(self, req: CreateEndpointRequest) -> dict[str, Any]:
        with self.store.locked() as state:
            net = self._network(state, req.network_id)
            if net.subnet and req.address is None:
                raise Refusal("multinic needs an IPv4 address from IPAM for each endpoint; "
                              "use the default IPAM driver for this network")
            if net.subnet6 and req.address_v6 is None:
                raise Refusal("multinic needs an IPv6 address from IPAM for each endpoint of an IPv6 network; "
                              "use the default IPAM driver for this network")
            existing = state.endpoints.get(req.endpoint_id)
            address6 = str(req.address_v6) if net.subnet6 and req.address_v6 else ""
            mac = req.mac or (existing.mac if existing else mac_for(req.address or req.address_v6))
            if existing is None:
                before = state.copy()
                host, peer = veth_names_for(req.endpoint_id)
                state.endpoints[req.endpoint_id] = EndpointRecord(
                    id=req.endpoint_id, network_id=net.id, address=str(req.address) if net.subnet else "",
                    address6=address6, mac=mac, host_veth=host,
                    peer_veth=peer, gw_priority=req.options.gw_priority, created=time.time())
                try:
                    self._save_and_reconcile(state, before)
                except Exception:
                    del state.endpoints[req.endpoint_id]
                    self._rollback(state)
                    raise
        return {"Interface": {"MacAddress": mac}} if not req.mac else {}

    def delete_endpoint(self, req: EndpointRef) -> dict[str, Any]:
        with self.store.locked() as state:
            before = state.copy()
            if state.endpoints.pop(req.endpoint_id, None) is not None:
                self._save_and_reconcile(state, before)
        return {}

    def endpoint_info(self, req: EndpointRef) -> dict[str, Any]:
        ep = self.store.load().endpoints.get(req.endpoint_id)
        return {"Value": {"ports": [dataclasses.asdict(p) for p in ep.ports]} if ep else {}}

    def _publish(self, state: State, ep: EndpointRecord, bindings: tuple[PortBinding, ...],
                 sandbox: str) -> tuple[tuple[PublishedPort, ...], HostFacts | None]:
        """dockerd sends the container's whole port map to every Join: the ports the same container
        (sandbox) already publishes through its other multinic endpoints are its own, not a conflict."""
        net = state.networks[ep.network_id]
        if net.internal or not bindings:
            return (), None
        # Only the ports that share a number with the bindings can clash; those kept without an address (no
        # HostIP) are on their parent's addresses of now.
        clash = ports.may_clash(bindings)
        others = [(o, near) for o in state.endpoints.values() if o.id != ep.id
                  and not (sandbox and o.sandbox_key == sandbox) and o.network_id in state.networks
                  and (near := [p for p in o.ports if clash(p)])]
        parents = {p for p in (net.parent, *(state.networks[o.network_id].parent for o, _near in others)) if p}
        with Rtnl() as rt:
            host = facts.read(rt, parents, addresses=True)
        taken = [dataclasses.replace(p, host_ip=ip) for o, near in others for p in near
                 for ip in publish_addresses(state.networks[o.network_id], p.host_ip, host.parents)]
        return ports.allocate(bindings, publish_resolver(net, host), taken), host

    def join(self, req: JoinRequest) -> dict[str, Any]:
        with self.store.locked() as state:
            net = self._network(state, req.network_id)
            ep = state.endpoints.get(req.endpoint_id)
            if ep is None:
                raise Refusal(f"endpoint {req.endpoint_id[:12]} was never created; retry the command")
            published, host = self._publish(state, ep, req.ports, req.sandbox_key)
            before = state.copy()
            state.endpoints[ep.id] = dataclasses.replace(ep, joined=True, sandbox_key=req.sandbox_key, ports=published)
            try:
                self._save_and_reconcile(state, before, host.parents if host else None)
            except Exception:
                state.endpoints[ep.id] = ep
                self._rollback(state)
                raise
        response: dict[str, Any] = {"InterfaceName": {"SrcName": ep.peer_veth, "DstPrefix": "eth"}}
        if not net.internal and net.gateway:
            response["Gateway"] = str(ipaddress.IPv4Interface(net.gateway).ip)
        if not net.internal and net.gateway6:
            response["GatewayIPv6"] = str(ipaddress.IPv6Interface(net.gateway6).ip)
        response["DisableGatewayService"] = net.internal
        return response

    def leave(self, req: EndpointRef) -> dict[str, Any]:
        with self.store.locked() as state:
            ep = state.endpoints.get(req.endpoint_id)
            if ep is not None and (ep.joined or ep.ports):
                before = state.copy()
                # The writer forgets the conntrack flows of the ports this unpublishes (desired state).
                state.endpoints[ep.id] = dataclasses.replace(ep, joined=False, ports=(), sandbox_key="")
                self._save_and_reconcile(state, before)
        return {}

    def program_external_connectivity(self, req: ProgramRequest) -> dict[str, Any]:
        """Ports are published at Join on every multinic endpoint (dockerd sends Program only to the
        endpoint that won the gateway election, but a network bound to a NIC publishes on that NIC
        whichever network carries the default route): Program only fills in ports a Join lacked."""
        with self.store.locked() as state:
            ep = state.endpoints.get(req.endpoint_id)
            if ep is None or not ep.joined or ep.ports or not req.ports:
                return {}
            before = state.copy()
            published, host = self._publish(state, ep, req.ports, ep.sandbox_key)
            state.endpoints[ep.id] = dataclasses.replace(ep, ports=published)
            self._save_and_reconcile(state, before, host.parents if host else None)
        return {}

    def revoke_external_connectivity(self, req: EndpointRef) -> dict[str, Any]:
        """Nothing to undo: published ports follow the endpoint (removed at Leave), not the gateway."""
        return {}

    # -- what changed outside ------------------------------------------------------------------------------
    def follow_parents(self) -> list[str]:
        """A parent NIC changed: unpinned next hops and MTUs follow it (pure: :func:`parent_next_hop`),
        then the whole host is reconciled (routes, published ports). Returns what changed."""
        changes = []
        with self.store.locked() as state:
            self._check_not_lost()
            with Rtnl() as rt:
                host = facts.read(rt, state.parent_names(), routing=True)
            for nid, net in sorted(state.networks.items()):
                parent = host.parents.get(net.parent or "")
                if net.internal or parent is None or not parent.exists or not (parent.addresses or parent.addresses6):
                    continue
                updated = net
                if net.subnet and "parent_gateway" not in net.options:
                    hop, source = parent_next_hop(parent, None, host.default_gateways.get(parent.ifname),
                                                  net.parent_gateway, net.gateway_source)
                    if hop is not None and (str(hop), source) != (net.parent_gateway, net.gateway_source):
                        updated = dataclasses.replace(updated, parent_gateway=str(hop), gateway_source=source)
                if net.subnet6 and "parent_gateway6" not in net.options:
                    hop6, source6 = parent_next_hop6(None, host.default_gateways6.get(parent.ifname),
                                                     net.parent_gateway6, net.gateway6_source)
                    if hop6 is not None and (str(hop6), source6) != (net.parent_gateway6, net.gateway6_source):
                        updated = dataclasses.replace(updated, parent_gateway6=str(hop6), gateway6_source=source6)
                if "mtu" not in net.options and parent.mtu and parent.mtu != net.mtu:
                    updated = dataclasses.replace(updated, mtu=parent.mtu)
                if updated != net:
                    state.networks[nid] = updated
                    changes.append(f"network {nid[:12]}: parent {net.parent} now next hop {updated.parent_gateway} "
                                   f"{updated.parent_gateway6 or ''} mtu {updated.mtu} (was {net.parent_gateway} "
                                   f"{net.parent_gateway6 or ''} mtu {net.mtu})".replace("  ", " "))
            self._save_and_reconcile(state, None)
        for change in changes:
            log.info("%s", change)
        return changes

    def collect_garbage(self, docker_view: dict[str, set[str]], now: float,
                        grace: float = Settings.gc_grace) -> list[str]:
        """Forget what dockerd no longer has: it never says so when the plugin was down or killed during
        ``docker stop``/``network rm``. ``docker_view``: network id → endpoint ids of running containers,
        for every network dockerd has. Records younger than ``grace`` are left alone: dockerd lists a
        network or endpoint only after the driver call that creates it."""
        forgotten: list[str] = []
        with self.store.locked() as state:
            before = state.copy()
            for nid, net in list(state.networks.items()):
                if nid not in docker_view and now - net.created > grace:
                    del state.networks[nid]
                    forgotten.append(f"network {nid[:12]}")
            for eid, ep in list(state.endpoints.items()):
                stale = ep.network_id in docker_view and eid not in docker_view[ep.network_id]
                if ep.network_id not in state.networks or (stale and now - ep.created > grace):
                    del state.endpoints[eid]
                    forgotten.append(f"endpoint {eid[:12]}")
            if forgotten:
                log.warning("forgetting what dockerd no longer has: %s", ", ".join(forgotten))
                self._save_and_reconcile(state, before)
                self._forget_put_back(state)
        return forgotten

    def cleanup(self) -> None:
        """Uninstall: everything of ours out of the kernel (parents' rp_filter put back), the state
        emptied. The policy routing inside containers is :func:`plugin.loops.gateways.cleanup`'s."""
        with self.store.locked() as state:
            # Parents stay until the writer put their rp_filter back (desired state), then go.
            emptied = State(parents=dict(state.parents))
            self._save_and_reconcile(emptied, None)
            self._forget_put_back(emptied)
