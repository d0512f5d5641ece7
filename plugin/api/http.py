"""The HTTP side of the remote-driver protocol: Flask routes, JSON in, a typed request, a driver verb,
JSON out. A refusal is a 400 with ``{"Err"}`` logged at info; any other error is a failure: a 500 with
``{"Err"}`` saying what failed, a traceback in the log, and a mark in health and the error metric.

dockerd sends no Content-Type and, for Activate and GetCapabilities, no body, so bodies are parsed here.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from .. import __version__
from ..errors import Refusal
from ..ops import faults, health, metrics
from ..plan.driver import CAPABILITIES, Driver
from . import messages

log = logging.getLogger(__name__)
CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"
MAX_BODY = 1 << 20  # 1 MiB; dockerd's largest request (a port map of thousands of ports) is far below
REFUSED, FAILED = 400, 500


def _reply(payload: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(payload), status=status, mimetype=CONTENT_TYPE)


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


def create_app(driver: Driver, pause: faults.Faults | None = None) -> Flask:
    """``pause``: the fault tests' pause points (its ``saved`` point is the driver's ``on_saved``)."""
    app = Flask("multinic")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    state_dir = str(driver.store.directory)
    pause = pause or faults.Faults("", state_dir)

    def route(path: str, handler: Callable[[dict[str, Any]], dict[str, Any]], reads_body: bool = True) -> None:
        verb = path.rsplit(".", 1)[-1]

        def view() -> Response:
            pause.entering(verb)
            try:
                answer = handler(parse_body(request.get_data(cache=True)) if reads_body else {})
                pause.point("applied")
            except Refusal as exc:
                log.info("%s refused: %s", path, exc)
                return _reply({"Err": str(exc)}, REFUSED)
            if verb not in ("Health", "EndpointOperInfo", "GetCapabilities", "Activate"):
                health.note_verb_ok(state_dir, verb)
            return _reply(answer)

        app.add_url_rule(path, endpoint=path, view_func=metrics.instrument(path, view), methods=["POST"])

    nd = "/NetworkDriver."
    # Verbs that ignore their body answer whatever it holds: dockerd sends none for the first two.
    route("/Plugin.Activate", lambda b: {"Implements": ["NetworkDriver"]}, reads_body=False)
    route(nd + "GetCapabilities", lambda b: dict(CAPABILITIES), reads_body=False)
    route(nd + "GwAllocCheck", lambda b: driver.gw_alloc_check(dict(messages.parse_gw_alloc_check(b).options)))
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

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = exc.code or REFUSED
        if code == 404:
            text = f"multinic does not implement {request.path}"
        elif code == 405:
            text = f"{request.path} takes POST"
        elif code == 413:
            text = f"request body is larger than {MAX_BODY} bytes; dockerd never sends that much"
        else:
            text = f"{request.path}: {exc.description or exc.name}"
        return _reply({"Err": text}, code if 400 <= code < 500 else REFUSED)

    @app.errorhandler(Exception)
    def failed(exc: Exception) -> Response:
        """Not a refusal: the host failed us while applying a valid request (the kernel, the firewall,
        the state file, a setting)."""
        name = request.path.strip("/")
        log.exception("%s failed", name)
        health.note_verb_error(state_dir, name, exc)
        return _reply({"Err": f"multinic failed in {name}: {exc} (the plugin's log has the trace)"}, FAILED)

    return app
