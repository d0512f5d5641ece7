"""``multinic serve | status | reconcile | cleanup | doctor``: settings read once, then one command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from .. import __version__
from .. import settings as config
from ..settings import DEFAULT_SOCKET, DEFAULT_STATE_DIR, Settings

log = logging.getLogger("multinic")


def _worker_exit(_server: Any, _worker: Any) -> None:
    """A worker leaving (restart, shutdown): the loops it hosts stopped, and the veths it retired but had
    not yet deleted deleted."""
    from ..kernel import reaper
    from ..loops import supervisor

    supervisor.stop_hosting()
    try:
        reaper.wait()
    except Exception:  # noqa: BLE001 - the whole-host writer removes what is left
        log.exception("deleting retired veths at worker exit failed")


def start(driver: Any, settings: Settings) -> None:
    """Before listening: the firewall backend chosen and recorded, the state file checked (an unreadable
    one set aside for a rebuild from dockerd), then the whole host reconciled from it. Nothing here waits
    for dockerd, which waits for its plugins at boot: what needs dockerd (a lost state rebuilt, networks
    it lost while we were down forgotten, its version) is the loops' first work. Whatever fails here is logged, reported
    in health and left to the healer: the socket must listen regardless (dockerd 20.10 panics at its
    next start on a managed plugin that cannot start; a missing legacy socket stalls every docker
    command)."""
    from ..plan.state import StateLost
    from . import health

    store = driver.store

    def report(note: Any, *args: Any) -> None:  # the state directory itself may be what fails
        try:
            note(store.directory, *args)
        except OSError:
            log.exception("cannot write health under %s", store.directory)

    report(health.note_settings, settings.problems)
    try:
        report(health.note_settings, settings.problems, driver.firewall.flavour)
        usable, problem = store.check()
        if not usable:
            kept = store.set_aside()
            log.error("%s; set aside as %s: the state is rebuilt from dockerd", problem, kept)
        report(health.note_state, True, None)
        from ..kernel.firewall import remove_leftovers

        for what in remove_leftovers(driver.firewall):
            log.warning("removed %s: written by another firewall backend than %s", what, driver.firewall.name)
        if not store.exists():
            outcome = driver.resolve_missing_state(None)  # StateLost while the kernel holds our networks
            log.warning("no state file: %s", outcome)
            report(health.note_state, True, None, outcome)
        else:
            driver.reconcile()
        report(health.note_startup, True)
    except StateLost as exc:
        log.error("%s", exc)
        report(health.note_state, False, str(exc))
    except Exception as exc:  # noqa: BLE001 - serve anyway; the healer retries
        log.exception("reconcile at start failed; serving anyway (the healer retries)")
        report(health.note_startup, False, exc)


def cmd_serve(settings: Settings) -> int:
    """gunicorn's arbiter (this process, with the supervisor thread) and its worker(s), one of which hosts
    the loops as threads: everything is imported and the garbage collector's objects frozen before it
    forks, so they share their pages (docs/ARCHITECTURE.md, *Processes*)."""
    import gc
    import time

    from . import memory

    memory.one_arena()
    from gunicorn.app.base import BaseApplication

    from ..api.http import create_app
    from ..loops import gateways, healer, supervisor
    from ..plan.driver import Driver
    from ..plan.state import Store
    from . import faults, metrics

    serving_since = time.time()  # networks created from now on were not lost by dockerd while we were down
    metrics_at = metrics.setup(settings.metrics_address) if settings.metrics_address else None
    store = Store(settings.state_dir)
    pause = faults.Faults(settings.fault, store.directory)
    driver = Driver(store, settings, defer_deletes=True, on_saved=lambda: pause.point("saved"))
    start(driver, settings)
    sock = Path(settings.socket)
    sock.parent.mkdir(parents=True, exist_ok=True)
    sock.unlink(missing_ok=True)
    options = {
        "bind": f"unix:{sock}", "workers": settings.workers, "umask": 0o077,  # the socket rewrites the firewall
        "timeout": 120, "graceful_timeout": 10, "accesslog": "-" if settings.log_level == "debug" else None,
        "loglevel": settings.log_level, "proc_name": "multinic",
        # gunicorn >= 23 opens a control socket in $HOME; two plugins (or two labs) would share it.
        "control_socket_disable": True, "worker_exit": _worker_exit,
    }
    app = create_app(driver, pause)

    class Server(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                if value is not None and key in self.cfg.settings:
                    self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    log.info("multinic %s serving on %s (driver name %r)", __version__, sock, settings.driver_name)
    # The loops' own driver and store: nothing of the request path's (its fault pause, its caches) is
    # shared with threads that run beside it.
    loops_store = Store(settings.state_dir)
    try:
        chosen = driver.firewall
    except Exception:  # noqa: BLE001 - the loops' driver chooses again, and the healer reports why it fails
        chosen = None
    loops = {"watcher": gateways.loop(loops_store, settings),
             "healer": healer.loop(Driver(loops_store, settings, defer_deletes=True, firewall=chosen),
                                   serving_since)}
    if metrics_at:
        loops["metrics"] = metrics.loop(*metrics_at, str(store.directory))
        log.info("prometheus metrics on http://%s:%s/metrics", *metrics_at)
    watchdog = supervisor.Supervisor(str(store.directory), loops, settings.health_stale)

    def ready(arbiter: Any) -> None:
        """gunicorn's arbiter is set up and about to fork its worker(s): nothing it wrote while setting up
        is copied into one."""
        _settle()
        gc.freeze()  # what is allocated so far stays shared with the forks: the collector never writes to it
        watchdog.start()

    def worker_ready(worker: Any) -> None:
        supervisor.host_loops(loops, str(store.directory), pause, settings.health_stale)

    options["when_ready"] = ready
    options["post_worker_init"] = worker_ready
    options["child_exit"] = lambda _arbiter, _worker: watchdog.wake()
    try:
        Server().run()
    finally:
        watchdog.stop()
        if metrics_at:
            metrics.teardown()
    return 0


def _settle() -> None:
    """Garbage of the imports and of the reconcile at start collected, and the heap's free pages given back,
    before anything forks."""
    import gc

    from . import memory

    gc.collect()
    memory.give_back()


def cmd_status(settings: Settings, as_json: bool) -> int:
    from . import status

    report = status.collect(settings)
    print(json.dumps(report, indent=2, default=str) if as_json else status.render(report))
    return 0


def cmd_reconcile(settings: Settings) -> int:
    from ..plan.driver import Driver
    from ..plan.state import Store

    Driver(Store(settings.state_dir), settings).reconcile()
    print("reconciled")
    return 0


def cmd_cleanup(settings: Settings) -> int:
    """Everything multinic added to the kernel and to containers removed, the state forgotten (uninstall).
    Best effort: a step that fails (a firewall that cannot be read) is logged with its trace and said, the
    others still run; exit 1 then."""
    from ..kernel.firewall import remove_leftovers
    from ..loops.gateways import cleanup
    from ..plan.driver import Driver
    from ..plan.state import Store

    store = Store(settings.state_dir)
    cleanup(str(store.directory))  # our policy rules inside running containers
    driver = Driver(store, settings)
    failed = []
    for what, step in (("bridges, veths, routes, rules and firewall", driver.cleanup),
                       ("another firewall backend's leftovers", lambda: remove_leftovers(driver.firewall))):
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - uninstall removes all it can
            log.exception("cleanup: removing %s failed", what)
            failed.append(f"{what}: {exc}")
    if failed:
        print("multinic cleanup could not remove everything (the log above has the trace):\n  "
              + "\n  ".join(failed), file=sys.stderr)
        return 1
    print("removed all multinic bridges, veths, routes, rules and firewall chains")
    return 0


def cmd_doctor(settings: Settings, flags: dict[str, Any], as_json: bool, parents: list[str]) -> int:
    """Check the host for what breaks multinic; exit 0 all pass, 1 warnings, 2 errors."""
    from . import doctor
    from .doctor import gather as hostfacts

    logging.getLogger().setLevel(logging.WARNING)  # the verdicts are the output, not the engine client's chatter
    facts = hostfacts.gather(settings, state_given=flags.get("state_dir") is not None,
                             socket_given=flags.get("socket") is not None, parents=parents)
    results = doctor.run_checks(facts)
    if as_json:
        print(json.dumps(doctor.as_json(results, facts), indent=2))
    else:
        print(f"multinic doctor: state {facts.state_dir}, socket {facts.socket_path} ({facts.socket_from})")
        print(doctor.render(results))
    return doctor.exit_code(results)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="multinic", description="Docker network driver bound to a host NIC")
    top.add_argument("--state-dir", help=f"state directory (MULTINIC_STATE_DIR, default {DEFAULT_STATE_DIR})")
    top.add_argument("--version", action="version", version=f"multinic {__version__}")
    sub = top.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the plugin (gunicorn on a unix socket)")
    serve.add_argument("--socket", help=f"unix socket (MULTINIC_SOCKET, default {DEFAULT_SOCKET})")
    serve.add_argument("--workers", type=int, help="gunicorn workers (MULTINIC_WORKERS, default 1)")
    serve.add_argument("--log-level", help="debug, info, warning, error (LOG_LEVEL; default info)")
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
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    flags = {k: getattr(args, k, None) for k in ("state_dir", "socket", "workers", "log_level", "metrics_address")}
    settings = config.load(flags)
    logging.basicConfig(level=getattr(logging, settings.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for problem in settings.problems:
        log.warning("setting refused: %s", problem)
    if args.command == "serve":
        return cmd_serve(settings)
    if args.command == "status":
        return cmd_status(settings, args.json)
    if args.command == "reconcile":
        return cmd_reconcile(settings)
    if args.command == "cleanup":
        return cmd_cleanup(settings)
    return cmd_doctor(settings, flags, args.json, args.parent or [])


if __name__ == "__main__":
    sys.exit(main())
