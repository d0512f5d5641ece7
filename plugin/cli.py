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
from .decisions import load_decisions, load_watcher_info
from .driver import Driver
from .state import Store

log = logging.getLogger("multinic")
DEFAULT_SOCKET = "/run/docker/plugins/multinic.sock"
DEFAULT_STATE = "/var/lib/multinic"


LOG_LEVELS = ("debug", "info", "warning", "error")


def _env_int(name: str, default: int) -> int:
    """A numeric setting from the environment; a bad value is logged, never fatal (see cmd_serve)."""
    raw = os.environ.get(name, "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        log.warning("%s=%r is not a number; using %s", name, raw, default)
        return default


def _log_level(raw: str) -> str:
    """A log level; an unknown one is logged and taken as info, never fatal (see cmd_serve)."""
    level = (raw or "info").strip().lower()
    if level not in LOG_LEVELS:
        log.warning("log level %r unknown (use %s); using info", raw, ", ".join(LOG_LEVELS))
        return "info"
    return level


def _env_log_level() -> str:
    return _log_level(os.environ.get("LOG_LEVEL") or "info")


def _socket(args: argparse.Namespace) -> str:
    return args.socket or os.environ.get("MULTINIC_SOCKET") or DEFAULT_SOCKET


def _store(args: argparse.Namespace) -> Store:
    return Store(args.state_dir or os.environ.get("MULTINIC_STATE_DIR") or DEFAULT_STATE)


def driver_name(socket_path: str) -> str:
    """dockerd names a legacy plugin after its socket file: multinic.sock → ``multinic``."""
    return Path(socket_path).stem


def _flush_deletes(_server: Any, _worker: Any) -> None:
    from . import reconcile

    try:
        reconcile.wait_for_deletes()
    except Exception:  # noqa: BLE001 - the whole-host writer removes what is left
        log.exception("deleting retired veths at worker exit failed")


def cmd_serve(args: argparse.Namespace) -> int:
    from gunicorn.app.base import BaseApplication

    from .api import create_app

    sock = _socket(args)
    store = _store(args)
    os.environ["MULTINIC_STATE_DIR"] = str(store.directory)
    # Whatever goes wrong before the socket listens must not keep it from listening: dockerd
    # (20.10) panics at its next start while an enabled managed plugin cannot start, and a
    # legacy plugin's absent socket stalls every docker command for ~30 s. Recovery errors are
    # logged and left to the healer; the verbs answer with a clear Err meanwhile.
    info = None
    try:
        info = engine.engine_info(timeout=3)
    except Exception:  # noqa: BLE001 - the engine check is advice, not a precondition
        log.exception("could not ask the docker engine for its version")
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
    from . import metrics

    address = args.metrics_address or os.environ.get(metrics.ENV_ADDRESS, "").strip()
    if address:
        try:
            metrics_at = metrics.setup(address)
        except ValueError as exc:  # serve without metrics: a bad setting must not keep the socket shut
            log.error("metrics off: %s", exc)
            address = ""
    driver = Driver(store, defer_deletes=True)
    from . import health

    usable, problem, restored = store.check()
    health.note_state(store.directory, usable, problem, restored)
    if restored:
        log.error("state file was unreadable; restored the last good copy from %s", restored)
    if usable:
        try:
            known = engine.network_ids(timeout=3) if info else None
            driver.recover(known)
            health.note_startup(store.directory, True)
        except Exception as exc:  # noqa: BLE001 - serve anyway: dockerd needs a listening plugin; the healer retries
            log.exception("recovery at start failed; serving anyway (the healer retries)")
            health.note_startup(store.directory, False, exc)
    else:
        log.error("%s; serving anyway, every verb that needs the state refuses", problem)

    Path(sock).parent.mkdir(parents=True, exist_ok=True)
    if Path(sock).exists():
        Path(sock).unlink()
    options = {
        "bind": f"unix:{sock}",
        "workers": args.workers,
        "umask": 0o077,  # the socket rewrites the host's firewall: root only
        "timeout": 120,
        "graceful_timeout": 10,
        "accesslog": "-" if args.log_level == "debug" else None,
        "loglevel": args.log_level,
        "proc_name": "multinic",
        # gunicorn >= 23 opens a control socket in $HOME; two plugins (or two labs) would share it.
        "control_socket_disable": True,
        # a worker leaving (restart, shutdown) deletes the veths it retired but had not yet deleted
        "worker_exit": _flush_deletes,
    }
    app = create_app(driver)

    class Server(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                if value is not None and key in self.cfg.settings:
                    self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    from . import background, healer, nicwatch, watcher

    log.info("multinic %s serving on %s (driver name %r)", __version__, sock, driver_name(sock))
    background.HEALTH_STATE_DIR = str(store.directory)
    loops = {
        "watcher": lambda: watcher.spawn(store, driver_name(sock)),
        "healer": lambda: healer.spawn(store),
        "nicwatch": lambda: nicwatch.spawn(store),
    }
    if address:
        loops["metrics"] = lambda: metrics.spawn(*metrics_at, str(store.directory))
        log.info("prometheus metrics on http://%s:%s/metrics", *metrics_at)
    supervisor = background.Supervisor(str(store.directory), loops)
    supervisor.start()
    try:
        Server().run()
    finally:
        supervisor.stop()
        if address:
            metrics.teardown()
    return 0


def collect_status(args: argparse.Namespace) -> dict[str, Any]:
    from pyroute2 import IPRoute

    from . import health
    from .firewall.rules import publish_addresses
    from .reconcile import firewall, gather_facts

    state = _store(args).load()
    owners = engine.endpoint_owners(timeout=3)
    info = engine.engine_info(timeout=3)
    with IPRoute() as ipr:
        links = netlink.tagged_links(ipr)
        routes = sorted(netlink.owned_routes(ipr), key=repr)
        rules = sorted(netlink.owned_rules(ipr), key=repr)
        facts = gather_facts(ipr, state)
    networks = []
    for net in sorted(state.networks.values(), key=lambda n: n.bridge):
        networks.append({**dataclasses.asdict(net), "bridge_present": net.bridge in links})
    ports = []
    for ep in sorted(state.endpoints.values(), key=lambda e: e.id):
        owner = owners.get(ep.id, {})
        net = state.networks.get(ep.network_id)
        for port, where in [(p, w) for p in ep.ports
                            for w in (publish_addresses(net, p.host_ip, facts) if net else (p.host_ip,))]:
            ports.append(
                {
                    "container": owner.get("container", ""),
                    "network": owner.get("network", ep.network_id[:12]),
                    "endpoint": ep.id[:12],
                    "host": f"{where or '*'}:{port.host_port}",
                    "container_port": f"{ep.address.split('/')[0]}:{port.container_port}/{port.proto}",
                    "proto": port.proto,
                }
            )
    backend = firewall()

    return {
        "health": health.report(str(_store(args).directory)),
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


def gateway_rows(state_dir: str | os.PathLike[str]) -> list[str]:
    """The GATEWAYS rows of ``multinic status``, one per container: chosen network, gateway, why."""
    rows = []
    for cid, dec in sorted(load_decisions(state_dir).items(), key=lambda kv: kv[1].get("container", kv[0])):
        chosen = dec.get("chosen") or "-"
        how = "override" if dec.get("override") else "docker"
        via = f"via {dec['gateway']} dev {dec.get('interface') or '?'}" if dec.get("gateway") else "no default route"
        rows.append(f"{dec.get('container') or cid[:12]:20} {chosen:16} {via:32} [{how}] {dec.get('reason', '')}")
    return rows


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
    hl = status["health"]
    print(f"health: {'healthy' if hl['healthy'] else 'UNHEALTHY'}")
    for problem in hl["problems"]:
        print(f"  ! {problem}")
    for key, loop in sorted(hl["loops"].items()):
        print(
            f"  {key:8} {'alive' if loop['alive'] else 'DEAD'} pid={loop['pid']} last_run={loop['age']}s ago "
            f"rounds={loop['rounds']} repairs={loop['repairs']} failures={loop['failures']} "
            f"restarts={loop['restarts']} last_error={loop['last_error'] or '-'}"
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
    from .uninstall import remove_all

    store = _store(args)
    driver = Driver(store)
    remove_all(store.directory)  # our policy rules inside running containers
    with store.locked() as state:
        # Parents stay until the writer has put their rp_filter back (desired state), then go.
        store.save(State(parents=dict(state.parents)))
    driver.recover(set())
    print("removed all multinic bridges, veths, routes, rules and firewall chains")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check the host for what breaks multinic; exit 0 all pass, 1 warnings, 2 errors."""
    from . import doctor, hostfacts

    logging.getLogger().setLevel(logging.WARNING)  # the verdicts are the output, not the SDK's chatter
    facts = hostfacts.gather(state_dir=args.state_dir, socket_path=args.socket, parents=args.parent or ())
    results = doctor.run_checks(facts)
    if args.json:
        print(json.dumps(doctor.as_json(results, facts), indent=2))
    else:
        print(f"multinic doctor: state {facts.state_dir}, socket {facts.socket_path} ({facts.socket_from})")
        print(doctor.render(results))
    return doctor.exit_code(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="multinic", description="Docker network driver bound to a host NIC")
    parser.add_argument("--state-dir", help=f"state directory (MULTINIC_STATE_DIR, default {DEFAULT_STATE})")
    parser.add_argument("--version", action="version", version=f"multinic {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the plugin (gunicorn on a unix socket)")
    serve.add_argument("--socket", help=f"unix socket (MULTINIC_SOCKET, default {DEFAULT_SOCKET})")
    serve.add_argument("--workers", type=int, default=_env_int("MULTINIC_WORKERS", 2))
    serve.add_argument(
        "--log-level",
        type=_log_level,
        default=_env_log_level(),
        help="debug, info, warning, error (LOG_LEVEL; default info)",
    )
    serve.add_argument("-v", "--verbose", action="store_const", dest="log_level", const="debug",
                       help="same as --log-level debug")
    serve.add_argument("--metrics-address", metavar="HOST:PORT",
                       help="serve Prometheus metrics there (MULTINIC_METRICS_ADDRESS; default: off)")
    status = sub.add_parser("status", help="networks, published ports, gateways, kernel objects")
    status.add_argument("--json", action="store_true")
    status.add_argument("--socket", help="socket of the plugin (names the driver)")
    sub.add_parser("reconcile", help="make the kernel match the saved state now")
    doc = sub.add_parser("doctor", help="check the host; print each problem and its fix (exit 0/1/2)")
    doc.add_argument("--json", action="store_true")
    doc.add_argument("--socket", help="plugin socket (default: the service's, else the managed plugin's)")
    doc.add_argument("--parent", action="append", help="also check this NIC as a parent (repeatable)")
    sub.add_parser("cleanup", help="remove everything multinic added to the kernel and forget state")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, getattr(args, "log_level", "info").upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handlers = {"serve": cmd_serve, "status": cmd_status, "reconcile": cmd_reconcile, "cleanup": cmd_cleanup,
                "doctor": cmd_doctor}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
