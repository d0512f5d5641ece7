"""The HTTP side of the remote-driver protocol: a WSGI application (served by gunicorn) routing each
verb's path to its handler, JSON in, a typed request, a driver verb, JSON out. A refusal is a 400 with
``{"Err"}`` logged at info; any other error is a failure: a 500 with ``{"Err"}`` saying what failed, a
traceback in the log, a mark in health until that verb succeeds again, and the error metric.

dockerd sends no Content-Type and, for Activate and GetCapabilities, no body, so bodies are parsed here.
Plain WSGI, not Flask: seventeen POST routes need no framework (docs/ARCHITECTURE.md, *Processes*).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .. import __version__
from ..errors import Refusal
from ..ops import faults, health, metrics
from ..plan.driver import CAPABILITIES, Driver
from . import messages

log = logging.getLogger(__name__)
CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"
MAX_BODY = 1 << 20  # 1 MiB; dockerd's largest request (a port map of thousands of ports) is far below
REFUSED, FAILED = 400, 500
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 411: "Length Required",
           413: "Payload Too Large", 500: "Internal Server Error"}


@dataclass
class Response:
    status_code: int
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)


def _reply(payload: dict[str, Any], status: int = 200) -> Response:
    return Response(status, json.dumps(payload).encode(), {"Content-Type": CONTENT_TYPE})


class _TooLarge(Exception):
    pass


def _read_body(environ: dict[str, Any]) -> bytes:
    """At most MAX_BODY bytes of the request body (Content-Length, else until the end: chunked)."""
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    length = environ.get("CONTENT_LENGTH") or ""
    if length.strip():
        try:
            size = int(length)
        except ValueError:
            raise Refusal(f"Content-Length {length[:20]!r} is not a number") from None
        if size > MAX_BODY:
            raise _TooLarge()
        return stream.read(size) if size > 0 else b""
    raw = stream.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise _TooLarge()
    return raw


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object ({} when empty), or a :class:`Refusal` saying why not."""
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:80]
        raise Refusal(f"request body is not valid JSON ({reason}); dockerd sends one JSON object per request") from None
    if not isinstance(data, dict):
        raise Refusal(f"request body must be a JSON object, got {type(data).__name__}; "
                      "dockerd sends one JSON object per request")
    return data


class App:
    """The WSGI application: ``POST <path>`` → the path's view; anything else a 4xx ``{"Err"}``."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.views: dict[str, Callable[[bytes], Response]] = {}

    def handle(self, method: str, path: str, read: Callable[[], bytes]) -> Response:
        view = self.views.get(path)
        if view is None:
            return _reply({"Err": f"multinic does not implement {path}"}, 404)
        if method != "POST":
            return _reply({"Err": f"{path} takes POST"}, 405)
        try:
            return view(read())
        except Refusal as exc:  # the body could not be read
            return _refused(path, exc)
        except _TooLarge:
            return _reply({"Err": f"request body is larger than {MAX_BODY} bytes; dockerd never sends that much"}, 413)
        except Exception as exc:  # noqa: BLE001 - not a refusal: the host failed us applying a valid request
            name = path.strip("/")
            log.exception("%s failed", name)
            health.note_verb_error(self.state_dir, name, exc)
            return _reply({"Err": f"multinic failed in {name}: {exc} (the plugin's log has the trace)"}, FAILED)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        response = self.handle(environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO") or "/",
                               lambda: _read_body(environ))
        headers = [*response.headers.items(), ("Content-Length", str(len(response.data)))]
        code = response.status_code
        start_response(f"{code} {REASONS.get(code, 'Error')}", headers)
        return [response.data]

    def test_client(self) -> TestClient:
        return TestClient(self)


def verb_of(path: str) -> str:
    """``/NetworkDriver.CreateNetwork`` → ``CreateNetwork``; ``/Plugin.Health`` → ``Health``."""
    return path.strip("/").rpartition(".")[2] or path


def _refused(path: str, refusal: Refusal) -> Response:
    """What the user can fix: logged at info, answered 4xx with what to change."""
    log.info("%s refused: %s", path, refusal)
    return _reply({"Err": str(refusal)}, REFUSED)


class TestClient:
    """The tests' client: the app called in-process (``post(path, data=...)`` → :class:`Response`)."""

    __test__ = False  # not a pytest class

    def __init__(self, app: App) -> None:
        self.application = app  # Werkzeug's name

    def open(self, method: str, path: str, data: bytes | str = b"") -> Response:
        body = data.encode() if isinstance(data, str) else data

        def read() -> bytes:
            if len(body) > MAX_BODY:
                raise _TooLarge()
            return body

        return self.application.handle(method, path, read)

    def post(self, path: str, data: bytes | str = b"") -> Response:
        return self.open("POST", path, data)

    def get(self, path: str) -> Response:
        return self.open("GET", path)

    def put(self, path: str, data: bytes | str = b"") -> Response:
        return self.open("PUT", path, data)


def create_app(driver: Driver, pause: faults.Faults | None = None) -> App:
    """``pause``: the fault tests' pause points (its ``saved`` point is the driver's ``on_saved``)."""
    state_dir = str(driver.store.directory)
    app = App(state_dir)
    pause = pause or faults.Faults("", state_dir)

    def route(path: str, handler: Callable[[dict[str, Any]], dict[str, Any]], reads_body: bool = True) -> None:
        verb, name = verb_of(path), path.strip("/")  # name: dockerd's, in failure messages and health

        def view(raw: bytes) -> Response:
            pause.entering(verb)
            try:
                answer = handler(parse_body(raw) if reads_body else {})
                pause.point("applied")
            except Refusal as exc:
                return _refused(path, exc)
            health.note_verb_ok(state_dir, name)  # clears this verb's own failure only
            return _reply(answer)

        app.views[path] = metrics.instrument(verb, view)
    nd = "/NetworkDriver."
    # Verbs that ignore their body answer whatever it holds: dockerd sends none for the first two.
    route("/Plugin.Activate", lambda b: {"Implements": ["NetworkDriver"]}, reads_body=False)
    route(nd + "GetCapabilities", lambda b: dict(CAPABILITIES), reads_body=False)
    route(nd + "GwAllocCheck", lambda b: driver.gw_alloc_check(), reads_body=False)
    route(nd + "CreateNetwork", lambda b: driver.create_network(messages.parse_create_network(b)))
    route(nd + "DeleteNetwork", lambda b: driver.delete_network(messages.parse_network_ref(b)))
    route(nd + "AllocateNetwork", lambda b: {"Options": {}}, reads_body=False)
    route(nd + "FreeNetwork", lambda b: {}, reads_body=False)
    route(nd + "CreateEndpoint", lambda b: driver.create_endpoint(messages.parse_create_endpoint(b)))
    route(nd + "DeleteEndpoint", lambda b: driver.delete_endpoint(messages.parse_endpoint_ref(b)))
    route(nd + "EndpointOperInfo", lambda b: driver.endpoint_info(messages.parse_endpoint_ref(b)))
    route(nd + "Join", lambda b: driver.join(messages.parse_join(b)))
    route(nd + "Leave", lambda b: driver.leave(messages.parse_endpoint_ref(b)))
    route(nd + "DiscoverNew", lambda b: {}, reads_body=False)
    route(nd + "DiscoverDelete", lambda b: {}, reads_body=False)
    route(nd + "ProgramExternalConnectivity",
          lambda b: driver.program_external_connectivity(messages.parse_program(b)))
    route(nd + "RevokeExternalConnectivity",
          lambda b: driver.revoke_external_connectivity(messages.parse_endpoint_ref(b)))
    route("/Plugin.Health", lambda b: {**health.report(state_dir, driver.settings.health_stale),
                                       "version": __version__}, reads_body=False)

    return app
