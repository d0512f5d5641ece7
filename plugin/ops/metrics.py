"""Prometheus metrics, off unless the setting ``metrics_address`` (``--metrics-address``,
MULTINIC_METRICS_ADDRESS) is given. Counters and histograms count in every process (prometheus_client's
multiprocess mode, in a private directory made before anything forks); levels (networks, endpoints,
ports, gateway decisions, the firewall backend) are read from the state directory at scrape time.
docs/TROUBLESHOOTING.md lists them."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Iterator

from .. import settings

_ENV_DIR = "PROMETHEUS_MULTIPROC_DIR"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

_metrics: dict[str, Any] = {}
_dir: str | None = None
_owner: int | None = None  # the process that made _dir; gunicorn workers unwind through serve's finally too


def enabled() -> bool:
    return bool(_metrics)


def setup(address: str) -> tuple[str, int]:
    """The address parsed (settings.load has refused one that does not), the multiprocess dir made, the
    metrics created. Call
    once in ``multinic serve`` before the app is built and before the workers fork. An address
    that cannot be bound yet (its interface not up at boot, the port held) is not refused: the exporter
    tries it until it can, a failed round each time (:func:`serve`)."""
    global _dir, _owner
    host, port = settings.metrics_endpoint(address)
    _dir, _owner = tempfile.mkdtemp(prefix="multinic-metrics-"), os.getpid()
    settings.export(_ENV_DIR, _dir)
    from prometheus_client import Counter, Histogram, values

    values.ValueClass = values.get_value_class()  # in case prometheus_client was imported before the env
    _metrics["latency"] = Histogram(
        "multinic_verb_duration_seconds", "Time to answer one remote-driver call", ["verb"], buckets=BUCKETS
    )
    _metrics["errors"] = Counter(
        "multinic_verb_errors_total", "Calls answered with an error (refused: 4xx, internal: 5xx)", ["verb", "kind"]
    )
    _metrics["repairs"] = Counter(
        "multinic_healer_repairs_total", "Objects the healer found missing and re-applied", ["kind"]
    )
    return host, port


def teardown() -> None:
    """Remove the multiprocess dir; a no-op anywhere but in the process that made it."""
    global _dir
    if os.getpid() != _owner:
        return
    if _dir:
        shutil.rmtree(_dir, ignore_errors=True)
    _dir = None
    settings.export(_ENV_DIR, None)
    _metrics.clear()


def instrument(verb: str, view: Callable[..., Any]) -> Callable[..., Any]:
    """The view itself when metrics are off; else the view timed and its errors counted under ``verb``."""
    if not enabled():
        return view
    latency = _metrics["latency"].labels(verb)
    errors = _metrics["errors"]

    def timed(*args: Any) -> Any:
        start = time.perf_counter()
        response = None
        try:
            response = view(*args)
            return response
        finally:
            latency.observe(time.perf_counter() - start)
            code = getattr(response, "status_code", 500)
            if code >= 400:
                errors.labels(verb, "refused" if code < 500 else "internal").inc()

    timed.__name__ = getattr(view, "__name__", "view")
    return timed


def repaired(kind: str, count: int = 1) -> None:
    """The healer re-applied ``count`` objects of ``kind`` (route, rule, bridge, ...)."""
    if enabled() and count > 0:
        _metrics["repairs"].labels(kind).inc(count)


# -- scrape time -------------------------------------------------------------------------------
class StateCollector:
    """Levels read from the state directory at each scrape (no process memory involved)."""

    def __init__(self, state_dir: str, backend: Callable[[], str]) -> None:
        self.state_dir = state_dir
        self.backend = backend

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from ..loops.decisions import load as load_decisions
        from ..plan.state import Store

        state = Store(self.state_dir).load()
        nets = GaugeMetricFamily("multinic_networks", "Networks in multinic's state", labels=["mode"])
        modes = {"internal": 0, "masquerade": 0, "routed": 0}
        for net in state.networks.values():
            modes["internal" if net.internal else "masquerade" if net.masquerade else "routed"] += 1
        for mode, n in sorted(modes.items()):
            nets.add_metric([mode], n)
        yield nets
        families = GaugeMetricFamily("multinic_networks_by_family", "Networks in multinic's state by address "
                                     "family", labels=["family"])
        kinds = {"ipv4": 0, "dual-stack": 0, "ipv6": 0}
        for net in state.networks.values():
            kinds[{(4,): "ipv4", (4, 6): "dual-stack", (6,): "ipv6"}.get(net.families, "ipv4")] += 1
        for kind, n in sorted(kinds.items()):
            families.add_metric([kind], n)
        yield families
        yield GaugeMetricFamily("multinic_endpoints", "Endpoints in multinic's state", value=len(state.endpoints))
        ports = GaugeMetricFamily("multinic_published_ports", "Ports multinic publishes", labels=["proto"])
        counts = {"tcp": 0, "udp": 0}
        for ep in state.endpoints.values():
            for port in ep.ports:
                counts[port.proto] = counts.get(port.proto, 0) + 1
        for proto, n in sorted(counts.items()):
            ports.add_metric([proto], n)
        yield ports
        gws = GaugeMetricFamily(
            "multinic_gateway_decisions",
            "Containers by the priority source that chose their default gateway (override: multinic changed "
            "Docker's choice)",
            labels=["source", "override"],
        )
        tally: dict[tuple[str, str], int] = {}
        for dec in load_decisions(self.state_dir).values():
            chosen = dec.get("chosen")
            source = next((n.get("source") for n in dec.get("networks") or () if n.get("name") == chosen), None)
            key = (str(source or "none"), "true" if dec.get("override") else "false")
            tally[key] = tally.get(key, 0) + 1
        for key, n in sorted(tally.items()):
            gws.add_metric(list(key), n)
        yield gws
        info = GaugeMetricFamily("multinic_firewall_backend_info", "Firewall backend in use", labels=["backend"])
        info.add_metric([self.backend()], 1)
        yield info


def registry(state_dir: str) -> Any:
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    reg = CollectorRegistry()
    MultiProcessCollector(reg, path=_dir)
    from . import health

    reg.register(StateCollector(state_dir, lambda: health.firewall_in_use(state_dir) or "unknown"))  # type: ignore[arg-type]
    return reg


LISTEN_RETRY_MAX = 30.0


def serve(host: str, port: int, state_dir: str, stop: Any) -> None:
    """The exporter's loop (a thread of the worker hosting the loops, :func:`loop`). An address it cannot
    listen on (held by another process, not on the host yet) is a failed round, retried from 1 s doubling
    to 30 s: the exporter's health says so, and the other loops are not restarted."""
    from prometheus_client import start_http_server

    from . import health

    reg, delay = registry(state_dir), 1.0
    while True:
        try:
            server, _thread = start_http_server(port, addr=host, registry=reg)
            break
        except OSError as exc:
            error = f"cannot listen on {host}:{port} ({exc.strerror}); retrying in {delay:.0f} s"
            logging.getLogger(__name__).error("metrics: %s", error)
            health.note(False, error)
            if stop.wait(delay):
                return
            delay = min(delay * 2, LISTEN_RETRY_MAX)
    health.note(True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.shutdown()
        server.server_close()


def loop(host: str, port: int, state_dir: str) -> Callable[[Any], None]:
    return lambda stop: serve(host, port, state_dir, stop)
