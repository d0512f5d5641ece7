"""What the plugin asks dockerd: the engine's version, its networks, containers, plugins and events.

Never called from inside a verb: dockerd may be waiting on us (start-up cleanup, a container mid-start),
so every call here is bounded and answers None (or empty) when dockerd does not.

Docker's API is read with :class:`DockerAPI`, a few read-only GETs over ``http.client`` with the docker
SDK's method names, not the SDK itself (why: docs/ARCHITECTURE.md, *Processes*).
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator
from urllib.parse import quote, urlencode

from ..settings import Settings, docker_endpoint

log = logging.getLogger(__name__)

MIN_ENGINE = (20, 10)
MIN_API = (1, 41)


@dataclass(frozen=True)
class EngineInfo:
    version: str
    api_version: str

    @property
    def release(self) -> tuple[int, ...]:
        """``28.5.2+dfsg4`` → (28, 5, 2); what does not parse ends it (``29.0.0-rc.1`` → (29, 0, 0))."""
        return _numbers(self.version)

    @property
    def major_minor(self) -> tuple[int, int]:
        release = self.release
        return release[:2] if len(release) >= 2 else (0, 0)

    @property
    def supported(self) -> bool:
        """Engine 20.10 (API 1.41) or newer."""
        return self.major_minor >= MIN_ENGINE and _numbers(self.api_version)[:2] >= MIN_API

    @property
    def announces_addresses(self) -> bool:
        """Engine 28 sends an unsolicited ARP and NA when it configures a container's interface (libnetwork
        ``osl`` ``advertiseAddrs``); older engines leave neighbours to their own ARP retry."""
        return self.major_minor >= (28, 0)

    @property
    def crashes_on_revoke(self) -> bool:
        """Engine 29.0.0-29.0.2 crash in RevokeExternalConnectivity for any remote plugin."""
        return len(self.release) >= 3 and (29, 0, 0) <= self.release[:3] <= (29, 0, 2)

    @classmethod
    def of(cls, data: dict[str, Any]) -> EngineInfo:
        """From dockerd's ``/version``."""
        return cls(version=str(data.get("Version", "?")), api_version=str(data.get("ApiVersion", "?")))


def _numbers(version: str) -> tuple[int, ...]:
    """``28.5.2+dfsg4`` → (28, 5, 2), ``1.41`` → (1, 41); what does not parse ends it."""
    out = []
    for part in version.split("+")[0].split("-")[0].split("."):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


class DockerError(Exception):
    """dockerd answered with an error status (``status``), or could not be reached (``status`` 0)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class NotFound(DockerError):
    """404: the container or network is gone."""


class TooOld(DockerError):
    """dockerd answers, but its engine is older than multinic supports."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


class Events:
    """dockerd's event stream (one JSON object a line, chunked); :meth:`close` from another thread ends
    the iteration."""

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        self.conn = conn
        self.response = response
        self.closed = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            try:
                line = self.response.readline()
            except (OSError, ValueError, AttributeError, http.client.HTTPException):
                if self.closed:
                    return  # closed under the reader's feet
                raise
            if not line:
                return
            if line.strip():
                yield json.loads(line)

    def close(self) -> None:
        self.closed = True
        sock = self.conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.conn.close()


def _filters(filters: dict[str, Any]) -> dict[str, list[str]]:
    """dockerd's filters are lists of strings: ``{"status": "running"}`` → ``{"status": ["running"]}``."""
    out = {}
    for key, value in filters.items():
        values = value if isinstance(value, (list, tuple, set)) else [value]
        out[key] = [str(v).lower() if isinstance(v, bool) else str(v) for v in values]
    return out


def _read_answer(sock: socket.socket) -> bytes:
    """An HTTP/1.0 answer: to the end of the connection, or of its Content-Length (a server that keeps
    the connection open all the same)."""
    data, length = b"", None
    while chunk := sock.recv(1 << 16):
        data += chunk
        if length is None and b"\r\n\r\n" in data:
            head = data.partition(b"\r\n\r\n")[0].lower()
            found = re.search(rb"\r\ncontent-length:\s*(\d+)", head)
            length = int(found.group(1)) + len(head) + 4 if found else -1
        if length is not None and 0 <= length <= len(data):
            break
    return data


class DockerAPI:
    """Docker's API, read-only, with the docker SDK's ``APIClient`` method names (``api.networks()``,
    ``api.inspect_container(id)``...). ``DOCKER_HOST`` ``unix://PATH`` or ``tcp://HOST:PORT`` (plain HTTP,
    as the SDK without TLS settings); one connection per call, as dockerd serves them."""

    def __init__(self, base_url: str = "", timeout: float = 5) -> None:
        """``base_url``: as :func:`plugin.settings.docker_endpoint` reads it (settings.load refuses one it cannot)."""
        try:
            self.unix_path, self.address = docker_endpoint(base_url)
        except ValueError as exc:
            raise DockerError(f"DOCKER_HOST={base_url!r}: {exc}") from None
        self.timeout = timeout

    def _connect(self, timeout: float | None) -> http.client.HTTPConnection:
        if self.unix_path:
            return _UnixConnection(self.unix_path, timeout)
        return http.client.HTTPConnection(*self.address, timeout=timeout)

    @staticmethod
    def _target(path: str, params: dict[str, Any] | None) -> str:
        query = {k: json.dumps(_filters(v)) if k == "filters" else v for k, v in (params or {}).items()}
        return path + (f"?{urlencode(query)}" if query else "")

    @staticmethod
    def _refused(path: str, status: int, body: bytes) -> DockerError:
        try:
            text = json.loads(body[:500]).get("message") or body[:500].decode(errors="replace")
        except (ValueError, AttributeError):
            text = body[:500].decode(errors="replace")
        return (NotFound if status == 404 else DockerError)(f"{path}: {text}", status)

    def _open(self, path: str, params: dict[str, Any] | None, timeout: float | None
              ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """A streamed answer (the events), through http.client."""
        conn = self._connect(timeout)
        try:
            conn.request("GET", self._target(path, params))
            response = conn.getresponse()
        except OSError as exc:
            conn.close()
            raise DockerError(f"dockerd at {self.unix_path or self.address}: {exc}") from exc
        if response.status >= 400:
            body = response.read()
            conn.close()
            raise self._refused(path, response.status, body)
        return conn, response

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """One JSON answer. An HTTP/1.0 request, so dockerd sends the body whole and closes: read to its
        end and split off the status line, with no header parsing (http.client's cost a container start
        in the gateway watcher paid for)."""
        request = f"GET {self._target(path, params)} HTTP/1.0\r\nHost: docker\r\n\r\n".encode()
        try:
            if self.unix_path:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.timeout)
                sock.connect(self.unix_path)
            else:
                sock = socket.create_connection(self.address, self.timeout)
            with sock:
                sock.sendall(request)
                answer = _read_answer(sock)
        except OSError as exc:
            raise DockerError(f"dockerd at {self.unix_path or self.address}: {exc}") from exc
        head, _, body = answer.partition(b"\r\n\r\n")
        try:
            status = int(head.split(None, 2)[1])
        except (IndexError, ValueError):
            raise DockerError(f"{path}: not an HTTP answer: {head[:80]!r}") from None
        if status >= 400:
            raise self._refused(path, status, body)
        try:
            return json.loads(body or b"null")
        except ValueError as exc:
            raise DockerError(f"{path}: {exc}") from exc

    def version(self) -> dict[str, Any]:
        return self.get("/version")

    def info(self) -> dict[str, Any]:
        return self.get("/info")

    def networks(self) -> list[dict[str, Any]]:
        return self.get("/networks")

    def inspect_network(self, network_id: str) -> dict[str, Any]:
        return self.get(f"/networks/{quote(network_id, safe='')}")

    def containers(self, filters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return self.get("/containers/json", {"filters": filters} if filters else None)

    def inspect_container(self, container_id: str) -> dict[str, Any]:
        return self.get(f"/containers/{quote(container_id, safe='')}/json")

    def plugins(self) -> list[dict[str, Any]]:
        return self.get("/plugins")

    def events(self, decode: bool = True, filters: dict[str, Any] | None = None) -> Events:
        """The stream of events from now on (no timeout once it answers; :meth:`Events.close` ends it)."""
        conn, response = self._open("/events", {"filters": filters} if filters else None, self.timeout)
        if conn.sock is not None:
            conn.sock.settimeout(None)
        return Events(conn, response)

    def close(self) -> None:
        """Nothing is kept open between calls."""


def client(settings: Settings, timeout: int = 5) -> DockerAPI:
    return DockerAPI(settings.docker_host, timeout)


def engine_info(settings: Settings, timeout: int = 5) -> EngineInfo | None:
    """None if dockerd does not answer (it may start after the plugin)."""
    try:
        data = client(settings, timeout).version()
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable now"
        log.info("docker engine not reachable: %s", exc)
        return None
    return EngineInfo.of(data)


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
        api = client(settings, timeout)
        return {n["Id"] for n in api.networks() if n.get("Scope") != "swarm" or _here(api, n)}
    except Exception as exc:  # noqa: BLE001
        log.info("cannot list docker networks: %s", exc)
        return None


def networks_detail(settings: Settings, timeout: int = 5) -> list[dict[str, Any]] | None:
    """``network inspect`` of every network dockerd has on this node; None if it does not answer."""
    try:
        api = client(settings, timeout)
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
        api = client(settings, timeout)
        names, bridges = our_driver_names(api, settings), set(bridge_ids)
        ours = [d for n in api.networks() if (n.get("Driver") in names or n["Id"] in bridges) and (d := _here(api, n))]
        ids = sorted({cid for d in ours for cid in (d.get("Containers") or {})})
        return ours, [api.inspect_container(cid) for cid in ids]
    except Exception as exc:  # noqa: BLE001
        log.info("cannot read docker networks for the rebuild: %s", exc)
        return None
