"""What the plugin asks dockerd (docker SDK): the engine's version, its networks and containers.

Never called from inside a verb: dockerd may be waiting on us (start-up cleanup, a container mid-start),
so every call here is bounded and answers None (or empty) when dockerd does not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..settings import Settings

log = logging.getLogger(__name__)

MIN_ENGINE = (20, 10)
MIN_API = (1, 41)


@dataclass(frozen=True)
class EngineInfo:
    version: str
    api_version: str

    @property
    def major_minor(self) -> tuple[int, int]:
        parts = self.version.split("+")[0].split("-")[0].split(".")
        try:
            return int(parts[0]), int(parts[1])
        except (IndexError, ValueError):
            return (0, 0)

    @property
    def supported(self) -> bool:
        return self.major_minor >= MIN_ENGINE


def client(settings: Settings, timeout: int = 5) -> Any:
    import docker

    if settings.docker_host:
        return docker.DockerClient(base_url=settings.docker_host, timeout=timeout)
    return docker.DockerClient(timeout=timeout)


def engine_info(settings: Settings, timeout: int = 5) -> EngineInfo | None:
    """None if dockerd does not answer (it may start after the plugin)."""
    try:
        data = client(settings, timeout).version()
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable now"
        log.info("docker engine not reachable: %s", exc)
        return None
    return EngineInfo(version=str(data.get("Version", "?")), api_version=str(data.get("ApiVersion", "?")))


def on_this_node(network: dict[str, Any]) -> bool:
    """Whether dockerd's ``network inspect`` of a network is of one on this node. A swarm manager also
    lists every swarm-scoped network of the cluster, made on this node (with its first task here) or not;
    for one that is not, inspect gives the cluster's view, without an IPAM driver (``network ls`` on a
    manager always gives that view). Measured on 20.10 and 28.5."""
    return network.get("Scope") != "swarm" or bool((network.get("IPAM") or {}).get("Driver"))


def _here(api: Any, listed: dict[str, Any]) -> dict[str, Any] | None:
    """``network inspect`` of a listed network, if it is on this node."""
    detail = api.inspect_network(listed["Id"])
    return detail if on_this_node(detail) else None


def network_ids(settings: Settings, timeout: int = 5) -> set[str] | None:
    """Ids of every network dockerd has on this node, whatever its driver (a managed plugin's networks
    report ``multinic:latest``, a legacy one's ``multinic``); None if it does not answer."""
    try:
        api = client(settings, timeout).api
        return {n["Id"] for n in api.networks() if n.get("Scope") != "swarm" or _here(api, n)}
    except Exception as exc:  # noqa: BLE001
        log.info("cannot list docker networks: %s", exc)
        return None


def networks_detail(settings: Settings, timeout: int = 5) -> list[dict[str, Any]] | None:
    """``network inspect`` of every network dockerd has on this node; None if it does not answer."""
    try:
        api = client(settings, timeout).api
        return [d for n in api.networks() if (d := _here(api, n))]
    except Exception as exc:  # noqa: BLE001
        log.info("cannot read docker networks: %s", exc)
        return None


def endpoint_owners(settings: Settings, timeout: int = 5) -> dict[str, dict[str, str]]:
    """endpoint id → {"container", "network"} for display; {} if dockerd does not answer."""
    out: dict[str, dict[str, str]] = {}
    for detail in networks_detail(settings, timeout) or ():
        for cid, info in (detail.get("Containers") or {}).items():
            out[info.get("EndpointID", "")] = {"container": info.get("Name") or cid[:12],
                                               "network": detail.get("Name", "")}
    return out


def endpoints_by_network(settings: Settings, timeout: int = 5) -> dict[str, set[str]] | None:
    """network id → endpoint ids of its running containers, for every network dockerd has; None if it
    does not answer (then nothing may be garbage-collected)."""
    details = networks_detail(settings, timeout)
    if details is None:
        return None
    return {d["Id"]: {info.get("EndpointID", "") for info in (d.get("Containers") or {}).values()} for d in details}


def our_driver_names(api: Any, settings: Settings) -> set[str]:
    """The driver names our networks carry: the legacy plugin's (its socket's name) and those of every
    enabled managed plugin serving a socket of that name (``multinic:latest``, ``registry/multinic:1``)."""
    names = {settings.driver_name}
    try:
        for plugin in api.plugins():
            config = plugin.get("Config") or {}
            socket = (config.get("Interface") or {}).get("Socket") or ""
            if plugin.get("Enabled") and socket == Path(settings.socket).name:
                names.add(plugin.get("Name", ""))
    except Exception as exc:  # noqa: BLE001 - the legacy name still works
        log.info("cannot list docker plugins: %s", exc)
    return names


def rebuild_view(settings: Settings, bridge_ids: Iterable[str],
                 timeout: int = 10) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    """What a lost state is rebuilt from: ``network inspect`` of each of our networks (by driver name,
    or because the kernel still has its bridge) and ``inspect`` of each running container on them; None
    if dockerd does not answer."""
    try:
        api = client(settings, timeout).api
        names, bridges = our_driver_names(api, settings), set(bridge_ids)
        ours = [d for n in api.networks() if (n.get("Driver") in names or n["Id"] in bridges) and (d := _here(api, n))]
        ids = sorted({cid for d in ours for cid in (d.get("Containers") or {})})
        return ours, [api.inspect_container(cid) for cid in ids]
    except Exception as exc:  # noqa: BLE001
        log.info("cannot read docker networks for the rebuild: %s", exc)
        return None
