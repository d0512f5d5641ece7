"""``multinic serve | status | reconcile | cleanup``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from . import __version__, engine, netlink
from .driver import Driver
from .state import Store

log = logging.getLogger("multinic")
DEFAULT_SOCKET = "/run/docker/plugins/multinic.sock"
DEFAULT_STATE = "/var/lib/multinic"


def _socket(args: argparse.Namespace) -> str:
    return args.socket or os.environ.get("MULTINIC_SOCKET") or DEFAULT_SOCKET


def _store(args: argparse.Namespace) -> Store:
    return Store(args.state_dir or os.environ.get("MULTINIC_STATE_DIR") or DEFAULT_STATE)


def driver_name(socket_path: str) -> str:
    """dockerd names a legacy plugin after its socket file: multinic.sock → ``multinic``."""
    return Path(socket_path).stem


def cmd_serve(args: argparse.Namespace) -> int:
    from gunicorn.app.base import BaseApplication

    from .api import create_app

    sock = _socket(args)
    store = _store(args)
    os.environ["MULTINIC_STATE_DIR"] = str(store.directory)
    info = engine.engine_info(timeout=3)
    if info is None:
        log.warning(
            "docker engine not reachable yet (DOCKER_HOST=%s); serving anyway",
            os.environ.get("DOCKER_HOST", "default"),
        )
    else:
        log.info("docker engine %s, API %s", info.version, info.api_version)
        if not info.supported:
            log.error("docker engine %s is too old: multinic needs Engine 20.10 or newer", info.version)
            return 2
    driver = Driver(store)
    known = engine.network_ids(timeout=3) if info else None
    driver.recover(known)

    Path(sock).parent.mkdir(parents=True, exist_ok=True)
    if Path(sock).exists():
        Path(sock).unlink()
    options = {
        "bind": f"unix:{sock}",
        "workers": args.workers,
        "umask": 0o077,  # the socket rewrites the host's firewall: root only
        "timeout": 120,
        "graceful_timeout": 10,
        "accesslog": "-" if args.verbose else None,
        "loglevel": "debug" if args.verbose else "info",
        "proc_name": "multinic",
        # gunicorn >= 23 opens a control socket in $HOME; two plugins (or two labs) would share it.
        "control_socket_disable": True,
    }
    app = create_app(driver)

    class Server(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                if value is not None and key in self.cfg.settings:
                    self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    from . import healer, watcher

    log.info("multinic %s serving on %s (driver name %r)", __version__, sock, driver_name(sock))
    gateways = watcher.spawn(store, driver_name(sock))
    healing = healer.spawn(store)
    try:
        Server().run()
    finally:
        gateways.stop()
        healing.stop()
    return 0


def collect_status(args: argparse.Namespace) -> dict[str, Any]:
    from pyroute2 import IPRoute

    from .reconcile import firewall

    state = _store(args).load()
    owners = engine.endpoint_owners(timeout=3)
    info = engine.engine_info(timeout=3)
    with IPRoute() as ipr:
        links = netlink.tagged_links(ipr)
        routes = sorted(netlink.owned_routes(ipr), key=repr)
        rules = sorted(netlink.owned_rules(ipr), key=repr)
    networks = []
    for net in sorted(state.networks.values(), key=lambda n: n.bridge):
        networks.append({**dataclasses.asdict(net), "bridge_present": net.bridge in links})
    ports = []
    for ep in sorted(state.endpoints.values(), key=lambda e: e.id):
        owner = owners.get(ep.id, {})
        for port in ep.ports:
            ports.append(
                {
                    "container": owner.get("container", ""),
                    "network": owner.get("network", ep.network_id[:12]),
                    "endpoint": ep.id[:12],
                    "host": f"{port.host_ip or '*'}:{port.host_port}",
                    "container_port": f"{ep.address.split('/')[0]}:{port.container_port}/{port.proto}",
                    "proto": port.proto,
                }
            )
    backend = firewall()
    from .watcher import gateway_rows, load_decisions, load_watcher_info

    return {
        "gateway_watcher": load_watcher_info(str(_store(args).directory)),
        "gateways": gateway_rows(str(_store(args).directory)),
        "gateway_decisions": load_decisions(str(_store(args).directory)),
        "version": __version__,
        "engine": dataclasses.asdict(info) if info else None,
        "firewall": backend.name,
        "networks": networks,
        "endpoints": [dataclasses.asdict(ep) for ep in state.endpoints.values()],
        "ports": ports,
        "kernel": {
            "links": sorted(links),
            "routes": [str(r) for r in routes],
            "rules": [str(r) for r in rules],
            "firewall": backend.dump(),
        },
    }


def cmd_status(args: argparse.Namespace) -> int:
    status = collect_status(args)
    if args.json:
        print(json.dumps(status, indent=2, default=str))
        return 0
    eng = status["engine"]
    print(
        f"multinic {status['version']}  engine: "
        f"{eng['version'] + ' (API ' + eng['api_version'] + ')' if eng else 'not reachable'}  "
        f"firewall: {status['firewall']}"
    )
    print("\nNETWORK       BRIDGE           SUBNET             PARENT   TABLE  MARK  GW_PRIO  MODE")
    for net in status["networks"]:
        mode = "internal" if net["internal"] else ("masquerade" if net["masquerade"] else "routed")
        print(
            f"{net['id'][:12]:13} {net['bridge']:16} {net['subnet']:18} {net['parent'] or '-':8} "
            f"{net['table'] or '-'!s:6} {net['mark_slot'] or '-'!s:5} {net['gw_priority']:<8} {mode}"
        )
    print("\nPUBLISHED PORTS (docker ps cannot show them for remote drivers)")
    print("CONTAINER            NETWORK          HOST                   -> CONTAINER")
    for port in status["ports"]:
        print(f"{port['container']:20} {port['network']:16} {port['host']:22} -> {port['container_port']}")
    print("\nGATEWAYS (per container: the network carrying its default route, and why)")
    for row in status["gateways"]:
        print("  " + row)
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    Driver(_store(args)).recover(None)
    print("reconciled")
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    """Remove everything the plugin owns from the kernel and forget all state (uninstall)."""
    from .state import State
    from .watcher import remove_all

    store = _store(args)
    driver = Driver(store)
    remove_all(store.directory)  # our policy rules inside running containers
    with store.locked() as state:
        # Parents stay until the writer has put their rp_filter back (desired state), then go.
        store.save(State(parents=dict(state.parents)))
    driver.recover(set())
    print("removed all multinic bridges, veths, routes, rules and firewall chains")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="multinic", description="Docker network driver bound to a host NIC")
    parser.add_argument("--state-dir", help=f"state directory (MULTINIC_STATE_DIR, default {DEFAULT_STATE})")
    parser.add_argument("--version", action="version", version=f"multinic {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the plugin (gunicorn on a unix socket)")
    serve.add_argument("--socket", help=f"unix socket (MULTINIC_SOCKET, default {DEFAULT_SOCKET})")
    serve.add_argument("--workers", type=int, default=int(os.environ.get("MULTINIC_WORKERS", "2")))
    serve.add_argument("-v", "--verbose", action="store_true")
    status = sub.add_parser("status", help="networks, published ports, gateways, kernel objects")
    status.add_argument("--json", action="store_true")
    status.add_argument("--socket", help="socket of the plugin (names the driver)")
    sub.add_parser("reconcile", help="make the kernel match the saved state now")
    sub.add_parser("cleanup", help="remove everything multinic added to the kernel and forget state")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handlers = {"serve": cmd_serve, "status": cmd_status, "reconcile": cmd_reconcile, "cleanup": cmd_cleanup}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
