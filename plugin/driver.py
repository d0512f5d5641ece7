"""The remote-driver verbs: typed request in, pure plan over (state, facts), persisted state,
the one kernel writer, response.

Planning (:meth:`Driver._plan_network`, :meth:`Driver._table_and_mark`, :meth:`Driver._publish_ips`)
works over a :class:`~plugin.facts.HostFacts` snapshot read once per verb and never opens netlink
itself. The kernel is written by :mod:`plugin.reconcile` only: a verb hands it the state before
and after its change, and only the difference is applied.

Each verb holds the state lock for its whole run, so parallel dockerd calls and several
gunicorn workers are serialised on the host's one state file. Verbs that remove things
tolerate unknown ids (dockerd sends Revoke without Program, Leave after a crash, ...).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import time
from typing import Any, Callable

from pyroute2 import IPRoute

from . import netlink, ports, reconcile
from .errors import DriverError
from .facts import HostFacts, ParentFacts
from .firewall.rules import publish_addresses
from .messages import (
    CreateEndpointRequest,
    CreateNetworkRequest,
    EndpointRef,
    JoinRequest,
    NetworkRef,
    PortBinding,
    ProgramRequest,
)
from .options import NetworkOptions, parse_network_options
from .state import EndpointRecord, NetworkRecord, ParentRecord, PublishedPort, State, Store
from .tags import MAX_MARK_SLOT, TABLE_ALLOC_FIRST, TABLE_ALLOC_LAST

log = logging.getLogger(__name__)

# GwAllocChecker: Engine >= 28 then asks GwAllocCheck before IPAM; older engines ignore it.
CAPABILITIES = {"Scope": "local", "ConnectivityScope": "local", "GwAllocChecker": True}


def bridge_name_for(network_id: str) -> str:
    return f"mn-{network_id[:12]}"


def veth_names_for(endpoint_id: str) -> tuple[str, str]:
    return f"mnh{endpoint_id[:12]}", f"mnc{endpoint_id[:12]}"


def mac_for(address: ipaddress.IPv4Interface) -> str:
    """A stable locally administered MAC from the IP, as Docker's bridge does (02:42:a:b:c:d)."""
    return "02:42:" + ":".join(f"{b:02x}" for b in address.ip.packed)


def snapshot(state: State) -> State:
    """A copy of ``state`` a verb can keep as "before" while it changes ``state`` (records are frozen)."""
    return State(networks=dict(state.networks), endpoints=dict(state.endpoints), parents=dict(state.parents))


class Driver:
    def __init__(
        self, store: Store, reconciler: Callable[[State], Any] | None = None, *, defer_deletes: bool = False
    ) -> None:
        """``reconciler``: a test hook replacing the kernel writer, called with every state
        the verbs commit (both the per-verb and the whole-host path). ``defer_deletes``: veths
        of removed endpoints are deleted after the response (``multinic serve``, whose workers
        live on; a process that exits right after a verb must not defer)."""
        self.store = store
        self.reconciler = reconciler
        self.defer_deletes = defer_deletes

    # -- helpers ------------------------------------------------------------------------
    def _commit(self, state: State, before: State, facts: HostFacts | None = None) -> None:
        """Persist first (intent), then make the kernel go from ``before`` to ``state``.
        ``facts``: the parents as the verb just read them (the writer need not read them again)."""
        self.store.save(state)
        if self.reconciler is not None:
            self.reconciler(state)
        else:
            reconcile.apply_change(
                before, state, defer_deletes=self.defer_deletes, facts=facts.parents if facts else None
            )

    def _sync(self, state: State) -> None:
        """Persist, then make the whole host match (start, healer, rollback)."""
        self.store.save(state)
        if self.reconciler is not None:
            self.reconciler(state)
        else:
            reconcile.reconcile(state)

    def _settle_parents(self, state: State) -> None:
        """After the writer put rp_filter back on parents no network uses (desired state),
        forget those parents. If the plugin dies before, the record is still there and the
        next writer run restores rp_filter again."""
        if self._forget_idle_parents(state):
            self.store.save(state)

    def _rollback(self, state: State) -> None:
        """Best effort after a failed commit: the caller already undid its change in ``state``."""
        try:
            self._sync(state)
            self._settle_parents(state)
        except Exception:  # noqa: BLE001 - the original error is the one to report
            log.exception("rollback incomplete; the next reconcile will finish it")

    @staticmethod
    def gw_alloc_check(options: dict[str, Any]) -> dict[str, Any]:
        """Engine >= 28: keep the gateway address reserved in both families: the bridge holds it."""
        return {"SkipIPv4": False, "SkipIPv6": False}

    # -- networks -------------------------------------------------------------------------
    def create_network(self, req: CreateNetworkRequest) -> dict[str, Any]:
        opts = parse_network_options(req.generic)
        if req.ipv6:
            raise DriverError("multinic does not support IPv6 yet; create the network without --ipv6")
        if len(req.ipv4) != 1:
            raise DriverError(
                f"multinic networks take exactly one IPv4 subnet, got {len(req.ipv4)}; give one --subnet"
            )
        pool = req.ipv4[0]
        if pool.gateway is None or pool.pool.prefixlen == 0:
            raise DriverError(
                "multinic needs an IPv4 subnet with a gateway address; use the default IPAM driver "
                "(--subnet CIDR, optionally --gateway IP)"
            )
        with self.store.locked() as state:
            if req.network_id in state.networks:
                return {}
            bridge = opts.bridge_name or bridge_name_for(req.network_id)
            # Tables in use and the parent's own next hop matter only for the first network on
            # a parent (a route dump); later ones share its table, mark and gateway.
            first_on_parent = bool(opts.parent) and not req.internal and not state.networks_on(opts.parent)
            with IPRoute() as ipr:
                facts = netlink.host_facts(
                    ipr, [opts.parent] if opts.parent else [], names=[bridge], routing=first_on_parent
                )
            rp = None
            if opts.parent and not req.internal and not state.networks_on(opts.parent):
                rp = netlink.read_sysctl(f"net/ipv4/conf/{opts.parent}/rp_filter")
            record, parent_record = self._plan_network(state, req, opts, facts, rp)
            before = snapshot(state)
            state.networks[record.id] = record
            if parent_record is not None and record.parent:
                state.parents[record.parent] = parent_record
            try:
                self._commit(state, before)
            except Exception:
                log.exception("create of network %s failed; rolling back", req.network_id[:12])
                state.networks.pop(record.id, None)
                self._rollback(state)
                raise
        log.info(
            "created network %s bridge=%s parent=%s table=%s",
            record.id[:12],
            record.bridge,
            record.parent,
            record.table,
        )
        return {}

    @classmethod
    def _plan_network(
        cls,
        state: State,
        req: CreateNetworkRequest,
        opts: NetworkOptions,
        facts: HostFacts,
        rp_filter: str | None = None,
    ) -> tuple[NetworkRecord, ParentRecord | None]:
        """Pure: every check against the host (``facts``) and the other networks; the record to
        persist. ``rp_filter``: the parent's current value, remembered to put back later."""
        pool = req.ipv4[0]
        subnet = pool.pool
        for other in state.networks.values():
            if ipaddress.IPv4Network(other.subnet).overlaps(subnet):
                raise DriverError(
                    f"subnet {subnet} overlaps multinic network {other.id[:12]} ({other.subnet}); "
                    "choose a --subnet that does not overlap"
                )
        bridge = opts.bridge_name or bridge_name_for(req.network_id)
        if any(n.bridge == bridge for n in state.networks.values()) or bridge in facts.links:
            raise DriverError(
                f"option bridge_name={bridge}: an interface with that name already exists; "
                "choose another bridge_name or omit it"
            )
        mtu = opts.mtu
        parent_gateway = table = slot = None
        parent_record = None
        if opts.parent and not req.internal:
            parent = facts.parent(opts.parent)
            if not parent.exists:
                raise DriverError(
                    f"option parent={opts.parent}: no such network interface on this host; "
                    "give the name of an existing NIC (see `ip link`)"
                )
            if not parent.addresses:
                raise DriverError(
                    f"option parent={opts.parent}: the interface has no IPv4 address; "
                    "configure one first or pick another NIC"
                )
            for addr in parent.addresses:
                if addr.network.overlaps(subnet):
                    raise DriverError(
                        f"subnet {subnet} overlaps {opts.parent}'s own network {addr.network}; "
                        "choose a --subnet outside the parent NIC's network"
                    )
            siblings = state.networks_on(opts.parent)
            parent_gateway = cls._parent_gateway(opts, parent, facts, siblings)
            table, slot = cls._table_and_mark(state, opts, siblings, facts)
            mtu = mtu or parent.mtu
            if not siblings:
                rp = int(rp_filter) if rp_filter is not None and rp_filter.strip().isdigit() else None
                parent_record = ParentRecord(rp_filter_before=rp)
        record = NetworkRecord(
            id=req.network_id,
            bridge=bridge,
            subnet=str(subnet),
            gateway=str(pool.gateway),
            internal=req.internal,
            # An internal network never egresses: it keeps no parent, so it can never lend
            # empty table/mark values to a later network on that NIC.
            parent=None if req.internal else opts.parent,
            parent_gateway=str(parent_gateway) if parent_gateway else None,
            table=table,
            mark_slot=slot,
            mtu=mtu or 1500,
            masquerade=opts.masquerade,
            gw_priority=opts.gw_priority,
            options={k: str(v) for k, v in req.generic.items()},
            created=time.time(),
        )
        return record, parent_record

    @staticmethod
    def _parent_gateway(
        opts: NetworkOptions, facts: ParentFacts, host: HostFacts, siblings: list[NetworkRecord]
    ) -> ipaddress.IPv4Address | None:
        if siblings:
            current = siblings[0].parent_gateway
            if opts.parent_gateway and str(opts.parent_gateway) != current:
                raise DriverError(
                    f"option parent_gateway={opts.parent_gateway}: {opts.parent} already routes via "
                    f"{current} for network {siblings[0].id[:12]}; use the same gateway or omit it"
                )
            return ipaddress.IPv4Address(current) if current else None
        if opts.parent_gateway:
            if not any(opts.parent_gateway in a.network for a in facts.addresses):
                nets = ", ".join(str(a.network) for a in facts.addresses)
                raise DriverError(
                    f"option parent_gateway={opts.parent_gateway} is not on {opts.parent}'s network(s) "
                    f"{nets}; give a next hop reachable on that NIC"
                )
            return opts.parent_gateway
        found = host.default_gateways.get(opts.parent)
        if found:
            return found
        primary = facts.primary
        if primary.network.prefixlen >= 31:
            raise DriverError(
                f"option parent_gateway: {opts.parent} has a {primary} address with no other host on its "
                f"subnet and no default route through it; give the next hop with --opt parent_gateway=IP"
            )
        return next(iter(primary.network.hosts()))

    @staticmethod
    def _table_and_mark(
        state: State, opts: NetworkOptions, siblings: list[NetworkRecord], facts: HostFacts
    ) -> tuple[int | None, int | None]:
        if siblings:
            table = siblings[0].table
            if opts.table is not None and opts.table != table:
                raise DriverError(
                    f"option table={opts.table}: {opts.parent} already uses table {table} "
                    f"(network {siblings[0].id[:12]}); use table={table} or omit it"
                )
            return table, siblings[0].mark_slot
        used_tables = {n.table for n in state.networks.values() if n.table is not None}

        def in_use(candidate: int) -> bool:
            return candidate in used_tables or candidate in facts.tables_in_use

        if opts.table is not None:
            if in_use(opts.table):
                raise DriverError(
                    f"option table={opts.table}: that route table is already in use on this host; "
                    "pick a free table id or omit table to have one allocated"
                )
            table = opts.table
        else:
            table = next((t for t in range(TABLE_ALLOC_FIRST, TABLE_ALLOC_LAST + 1) if not in_use(t)), None)
            if table is None:
                raise DriverError("no free route table left; give one with --opt table=ID")
        used_slots = {n.mark_slot for n in state.networks.values() if n.mark_slot}
        slot = next((s for s in range(1, MAX_MARK_SLOT + 1) if s not in used_slots), None)
        if slot is None:
            raise DriverError("no free connection mark left: at most 255 parent NICs per host")
        return table, slot

    def _forget_idle_parents(self, state: State) -> dict[str, ParentRecord]:
        """Drop parent records no network uses any more; return them (to restore sysctls)."""
        idle = {p: rec for p, rec in state.parents.items() if not state.networks_on(p)}
        for parent in idle:
            del state.parents[parent]
        return idle

    def delete_network(self, req: NetworkRef) -> dict[str, Any]:
        with self.store.locked() as state:
            if req.network_id not in state.networks:
                return {}
            before = snapshot(state)
            del state.networks[req.network_id]
            for ep in list(state.endpoints.values()):
                if ep.network_id == req.network_id:
                    del state.endpoints[ep.id]
            self._commit(state, before)
            self._settle_parents(state)
        log.info("deleted network %s", req.network_id[:12])
        return {}

    # -- endpoints -------------------------------------------------------------------------
    def _network(self, state: State, network_id: str) -> NetworkRecord:
        net = state.networks.get(network_id)
        if net is None:
            raise DriverError(
                f"network {network_id[:12]} is not known to multinic (its state may have been lost); "
                "remove and re-create the network"
            )
        return net

    def create_endpoint(self, req: CreateEndpointRequest) -> dict[str, Any]:
        with self.store.locked() as state:
            net = self._network(state, req.network_id)
            if req.address is None:
                raise DriverError(
                    "multinic needs an IPv4 address from IPAM for each endpoint; "
                    "use the default IPAM driver for this network"
                )
            if req.address_v6:
                raise DriverError("multinic does not support IPv6 endpoints yet")
            existing = state.endpoints.get(req.endpoint_id)
            mac = req.mac or (existing.mac if existing else mac_for(req.address))
            if existing is None:
                before = snapshot(state)
                host, peer = veth_names_for(req.endpoint_id)
                state.endpoints[req.endpoint_id] = EndpointRecord(
                    id=req.endpoint_id,
                    network_id=net.id,
                    address=str(req.address),
                    mac=mac,
                    host_veth=host,
                    peer_veth=peer,
                    gw_priority=req.options.gw_priority,
                    created=time.time(),
                )
                try:
                    self._commit(state, before)
                except Exception:
                    del state.endpoints[req.endpoint_id]
                    self._rollback(state)
                    raise
        return {"Interface": {"MacAddress": mac}} if not req.mac else {}

    def delete_endpoint(self, req: EndpointRef) -> dict[str, Any]:
        with self.store.locked() as state:
            before = snapshot(state)
            if state.endpoints.pop(req.endpoint_id, None) is not None:
                self._commit(state, before)
        return {}

    def endpoint_info(self, req: EndpointRef) -> dict[str, Any]:
        ep = self.store.load().endpoints.get(req.endpoint_id)
        if ep is None:
            return {"Value": {}}
        return {"Value": {"ports": [dataclasses.asdict(p) for p in ep.ports]}}

    @staticmethod
    def _publish_ips(net: NetworkRecord, facts: HostFacts) -> Callable[[str], tuple[str, ...]]:
        """Pure: host_ip → the addresses a binding lands on, refusing addresses the host does not have."""
        local = facts.local_addresses

        def resolve(host_ip: str) -> tuple[str, ...]:
            if host_ip == "0.0.0.0":
                host_ip = ""  # -p 0.0.0.0:P:C (common in compose files) means "not specified"
            if host_ip:
                try:
                    ip = ipaddress.ip_address(host_ip)
                except ValueError:
                    raise DriverError(f"published host address {host_ip!r} is not an IP address") from None
                if ip.version != 4:
                    raise DriverError(
                        f"published host address {host_ip} is IPv6; multinic publishes IPv4 only"
                    )
                if ip.is_loopback:
                    raise DriverError(
                        f"published host address {host_ip} is a loopback address, which multinic cannot "
                        "DNAT into a bridge; publish on the parent's address instead (-p HOSTPORT:PORT)"
                    )
                if host_ip not in local:
                    raise DriverError(
                        f"published host address {host_ip} is not an address of this host; "
                        f"use one of {', '.join(sorted(a for a in local if not a.startswith('127.')))} "
                        "or leave it out (-p HOSTPORT:PORT)"
                    )
            addrs = publish_addresses(net, host_ip, facts.parents)
            if not addrs:
                raise DriverError(
                    f"parent {net.parent} has no IPv4 address to publish ports on; configure one first"
                )
            return addrs

        return resolve

    def _publish(
        self, state: State, ep: EndpointRecord, bindings: tuple[PortBinding, ...], sandbox: str
    ) -> tuple[tuple[PublishedPort, ...], HostFacts | None]:
        """dockerd sends the container's whole port map to every Join: the ports the same
        container (sandbox) already publishes through its other multinic endpoints are its own,
        not a conflict."""
        net = state.networks[ep.network_id]
        if net.internal or not bindings:
            return (), None
        # Ports kept without an address (no HostIP) are on their parent's addresses of now.
        others = [
            other
            for other in state.endpoints.values()
            if other.id != ep.id and not (sandbox and other.sandbox_key == sandbox)
            and other.network_id in state.networks and other.ports
        ]
        parents = sorted({p for p in (net.parent, *(state.networks[o.network_id].parent for o in others)) if p})
        with IPRoute() as ipr:
            facts = netlink.host_facts(ipr, parents, addresses=True)
        taken = [
            dataclasses.replace(p, host_ip=ip)
            for other in others
            for p in other.ports
            for ip in publish_addresses(state.networks[other.network_id], p.host_ip, facts.parents)
        ]
        return ports.allocate(bindings, self._publish_ips(net, facts), taken), facts

    def join(self, req: JoinRequest) -> dict[str, Any]:
        with self.store.locked() as state:
            net = self._network(state, req.network_id)
            ep = state.endpoints.get(req.endpoint_id)
            if ep is None:
                raise DriverError(f"endpoint {req.endpoint_id[:12]} was never created; retry the command")
            published, facts = self._publish(state, ep, req.ports, req.sandbox_key)
            before = snapshot(state)
            state.endpoints[ep.id] = dataclasses.replace(
                ep, joined=True, sandbox_key=req.sandbox_key, ports=published
            )
            try:
                self._commit(state, before, facts)
            except Exception:
                state.endpoints[ep.id] = ep
                self._rollback(state)
                raise
        response: dict[str, Any] = {"InterfaceName": {"SrcName": ep.peer_veth, "DstPrefix": "eth"}}
        if not net.internal:
            response["Gateway"] = str(ipaddress.IPv4Interface(net.gateway).ip)
        response["DisableGatewayService"] = net.internal
        return response

    def leave(self, req: EndpointRef) -> dict[str, Any]:
        with self.store.locked() as state:
            ep = state.endpoints.get(req.endpoint_id)
            if ep is not None and (ep.joined or ep.ports):
                before = snapshot(state)
                # The writer forgets the conntrack flows of the ports this unpublishes (desired state).
                state.endpoints[ep.id] = dataclasses.replace(ep, joined=False, ports=(), sandbox_key="")
                self._commit(state, before)
        return {}

    def program_external_connectivity(self, req: ProgramRequest) -> dict[str, Any]:
        """Ports are published at Join on every multinic endpoint, because dockerd only sends
        Program to the endpoint that won the gateway election, and a network bound to a NIC
        publishes on that NIC whichever network carries the default route. Program only fills
        in ports if a Join carried none (never observed; harmless)."""
        with self.store.locked() as state:
            ep = state.endpoints.get(req.endpoint_id)
            if ep is None or not ep.joined or ep.ports or not req.ports:
                return {}
            before = snapshot(state)
            published, facts = self._publish(state, ep, req.ports, ep.sandbox_key)
            state.endpoints[ep.id] = dataclasses.replace(ep, ports=published)
            self._commit(state, before, facts)
        return {}

    def revoke_external_connectivity(self, req: EndpointRef) -> dict[str, Any]:
        """Nothing to undo: published ports follow the endpoint (removed at Leave), not the gateway."""
        return {}

    def collect_garbage(self, docker_view: dict[str, set[str]], now: float, grace: float = 120.0) -> list[str]:
        """Forget what dockerd no longer has: it never says so when the plugin was down or killed
        during ``docker stop``/``network rm`` (a ghost endpoint keeps its DNAT rules pointing at an
        address IPAM hands to the next container). ``docker_view``: network id → endpoint ids of
        running containers, for every network dockerd has. Records younger than ``grace`` are left
        alone: dockerd lists a network or endpoint only after the driver call that creates it."""
        forgotten: list[str] = []
        with self.store.locked() as state:
            before = snapshot(state)
            for nid, net in list(state.networks.items()):
                if nid not in docker_view and now - net.created > grace:
                    del state.networks[nid]
                    forgotten.append(f"network {nid[:12]}")
            for eid, ep in list(state.endpoints.items()):
                gone = ep.network_id not in state.networks
                stale = ep.network_id in docker_view and eid not in docker_view[ep.network_id]
                if gone or (stale and now - ep.created > grace):
                    del state.endpoints[eid]
                    forgotten.append(f"endpoint {eid[:12]}")
            if forgotten:
                log.warning("forgetting what dockerd no longer has: %s", ", ".join(forgotten))
                self._commit(state, before)
                self._settle_parents(state)
        return forgotten

    # -- recovery -------------------------------------------------------------------------
    def recover(self, known_networks: set[str] | None) -> State:
        """At start and from the healer: forget networks dockerd no longer has (if it answered),
        then make the whole host match (the same writer, over every object)."""
        with self.store.locked() as state:
            if known_networks is not None:
                for nid in [n for n in state.networks if n not in known_networks]:
                    log.warning("forgetting network %s: dockerd no longer knows it", nid[:12])
                    del state.networks[nid]
                for eid in [e for e, ep in state.endpoints.items() if ep.network_id not in state.networks]:
                    del state.endpoints[eid]
            self._sync(state)
            self._settle_parents(state)
            return state
