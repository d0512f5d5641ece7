"""What the plugin asks dockerd (docker SDK): engine version, networks, containers.

Never called from inside a verb: dockerd may be waiting on us (start-up cleanup, a
container mid-start), so calls here are bounded and optional.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

MIN_ENGINE = (20, 10)


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


def client(timeout: int = 5) -> Any:
    import docker

    return docker.from_env(timeout=timeout)


def engine_info(timeout: int = 5) -> EngineInfo | None:
    """None if dockerd does not answer (it may start after the plugin)."""
    try:
        data = client(timeout).version()
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable now"
        log.info("docker engine not reachable: %s", exc)
        return None
    return EngineInfo(version=str(data.get("Version", "?")), api_version=str(data.get("ApiVersion", "?")))


def network_ids(timeout: int = 5) -> set[str] | None:
    """Ids of every network dockerd has, whatever its driver; None if it does not answer.

    Not filtered by driver name: a managed plugin's networks report ``multinic:latest``, a legacy
    one's ``multinic``; an id dockerd no longer has at all is what makes a network ours to forget."""
    try:
        nets = client(timeout).api.networks()
    except Exception as exc:  # noqa: BLE001
        log.info("cannot list docker networks: %s", exc)
        return None
    return {n["Id"] for n in nets}


def endpoint_owners(timeout: int = 5) -> dict[str, dict[str, str]]:
    """endpoint id → {"container", "network"} for display; {} if dockerd does not answer."""
    out: dict[str, dict[str, str]] = {}
    try:
        api = client(timeout).api
        for net in api.networks():
            detail = api.inspect_network(net["Id"])
            for cid, info in (detail.get("Containers") or {}).items():
                out[info.get("EndpointID", "")] = {
                    "container": (info.get("Name") or cid[:12]),
                    "network": detail.get("Name", ""),
                }
    except Exception as exc:  # noqa: BLE001
        log.info("cannot read docker endpoints: %s", exc)
    return out


def endpoints_by_network(timeout: int = 5) -> dict[str, set[str]] | None:
    """network id → endpoint ids of its running containers, for every network dockerd has;
    None if dockerd does not answer (then nothing may be garbage-collected)."""
    try:
        api = client(timeout).api
        view = {}
        for net in api.networks():
            detail = api.inspect_network(net["Id"])
            view[net["Id"]] = {info.get("EndpointID", "") for info in (detail.get("Containers") or {}).values()}
        return view
    except Exception as exc:  # noqa: BLE001
        log.info("cannot read docker networks: %s", exc)
        return None
