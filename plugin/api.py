"""Flask routes: JSON in, typed request, driver verb, JSON out. Errors become ``{"Err": ...}``.

dockerd sends no Content-Type and, for Activate/GetCapabilities, no body at all, so the body
is parsed by hand. Every request a verb acts on is validated by :mod:`plugin.messages` before
the driver sees it (ids, types, ranges, sizes), so a refusal changes nothing.

Status codes: 200 for success; **every failure is a 4xx with a JSON ``{"Err": ...}`` body, never
a 5xx** - 400 for a refused request, 404 for an unknown path, 405 for a method other than POST,
413 for a body over :data:`MAX_BODY`. dockerd treats "non-200 + Err" and "200 + Err" alike (both
fail the user's command and roll back), but with a non-200 it prefixes the text with the verb
(``NetworkDriver.Join: ...``), which tells the user where it failed, and access logs and curl
show the failure; a 5xx would also be an error to dockerd but reads as "the plugin is broken".
The same 400 carries the rare unexpected failure (a netlink or iptables error while applying),
after the full trace went to the log.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from . import __version__, faults, health, messages, metrics
from .driver import CAPABILITIES, Driver
from .errors import DriverError
from .state import Store

log = logging.getLogger(__name__)
CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"
MAX_BODY = 1 << 20  # 1 MiB; dockerd's largest request (a port map of thousands of ports) is far below
REFUSED = 400


def _reply(payload: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(payload), status=status, mimetype=CONTENT_TYPE)


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object ({} when empty), or a :class:`DriverError` saying why not."""
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:80]
        raise DriverError(
            f"request body is not valid JSON ({reason}); dockerd sends one JSON object per request"
        ) from None
    if not isinstance(data, dict):
        raise DriverError(
            f"request body must be a JSON object, got {type(data).__name__}; "
            "dockerd sends one JSON object per request"
        )
    return data


def create_app(driver: Driver | None = None) -> Flask:
    app = Flask("multinic")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    if driver is None:
        driver = Driver(Store(os.environ.get("MULTINIC_STATE_DIR", "/var/lib/multinic")))
    state_dir = str(driver.store.directory)

    def route(path: str, handler: Callable[[dict[str, Any]], dict[str, Any]], reads_body: bool = True) -> None:
        verb = path.rsplit(".", 1)[-1]

        def view() -> Response:
            faults.entering(verb)
            try:
                answer = handler(parse_body(request.get_data(cache=True)) if reads_body else {})
                faults.point("applied", state_dir)
                return _reply(answer)
            except DriverError as exc:
                log.warning("%s refused: %s", path, exc)
                return _reply({"Err": str(exc)}, REFUSED)

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
    route(
        nd + "ProgramExternalConnectivity",
        lambda b: driver.program_external_connectivity(messages.parse_program(b)),
    )
    route(
        nd + "RevokeExternalConnectivity",
        lambda b: driver.revoke_external_connectivity(messages.parse_endpoint_ref(b)),
    )
    route("/Plugin.Health", lambda b: {**health.report(state_dir), "version": __version__}, reads_body=False)

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
    def unexpected(exc: Exception) -> Response:
        """Not a refusal: applying a valid request failed (netlink, iptables). JSON, never a 5xx."""
        log.exception("%s failed", request.path)
        name = request.path.strip("/")
        health.note_verb_error(state_dir, name, exc)
        return _reply({"Err": f"multinic internal error in {name}: {exc} (the plugin log has the details)"}, REFUSED)

    return app
