"""Flask routes: JSON in, typed request, driver verb, JSON out. Errors become ``{"Err": ...}``.

dockerd sends no Content-Type and, for Activate/GetCapabilities, no body at all, so the body
is parsed by hand. Every failure, expected or not, is answered as JSON: never an HTML page
or a stack trace.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable

from flask import Flask, Response, request

from . import __version__, messages, metrics
from .driver import CAPABILITIES, Driver
from .errors import DriverError
from .state import Store

log = logging.getLogger(__name__)
CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"


def _reply(payload: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(payload), status=status, mimetype=CONTENT_TYPE)


def create_app(driver: Driver | None = None) -> Flask:
    app = Flask("multinic")
    if driver is None:
        driver = Driver(Store(os.environ.get("MULTINIC_STATE_DIR", "/var/lib/multinic")))

    def body() -> dict[str, Any]:
        raw = request.get_data(cache=True) or b"{}"
        try:
            data = json.loads(raw)
        except ValueError:
            raise DriverError("request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise DriverError("request body must be a JSON object")
        return data

    def route(path: str, handler: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        def view() -> Response:
            try:
                return _reply(handler(body()))
            except DriverError as exc:
                log.warning("%s refused: %s", path, exc)
                return _reply({"Err": str(exc)}, 400)
            except Exception as exc:  # noqa: BLE001 - dockerd must get JSON, the log gets the trace
                log.exception("%s failed", path)
                return _reply({"Err": f"multinic internal error in {path.strip('/')}: {exc}"}, 500)

        app.add_url_rule(path, endpoint=path, view_func=metrics.instrument(path, view), methods=["POST"])

    nd = "/NetworkDriver."
    route("/Plugin.Activate", lambda b: {"Implements": ["NetworkDriver"]})
    route(nd + "GetCapabilities", lambda b: dict(CAPABILITIES))
    route(nd + "GwAllocCheck", lambda b: driver.gw_alloc_check(b.get("Options") or {}))
    route(nd + "CreateNetwork", lambda b: driver.create_network(messages.parse_create_network(b)))
    route(nd + "DeleteNetwork", lambda b: driver.delete_network(messages.parse_network_ref(b)))
    route(nd + "AllocateNetwork", lambda b: {"Options": {}})
    route(nd + "FreeNetwork", lambda b: {})
    route(nd + "CreateEndpoint", lambda b: driver.create_endpoint(messages.parse_create_endpoint(b)))
    route(nd + "DeleteEndpoint", lambda b: driver.delete_endpoint(messages.parse_endpoint_ref(b)))
    route(nd + "EndpointOperInfo", lambda b: driver.endpoint_info(messages.parse_endpoint_ref(b)))
    route(nd + "Join", lambda b: driver.join(messages.parse_join(b)))
    route(nd + "Leave", lambda b: driver.leave(messages.parse_endpoint_ref(b)))
    route(nd + "DiscoverNew", lambda b: {})
    route(nd + "DiscoverDelete", lambda b: {})
    route(
        nd + "ProgramExternalConnectivity",
        lambda b: driver.program_external_connectivity(messages.parse_program(b)),
    )
    route(
        nd + "RevokeExternalConnectivity",
        lambda b: driver.revoke_external_connectivity(messages.parse_endpoint_ref(b)),
    )
    route("/Plugin.Health", lambda b: {"healthy": True, "version": __version__})

    @app.errorhandler(404)
    def not_found(_exc: Exception) -> Response:
        return _reply({"Err": f"multinic does not implement {request.path}"}, 404)

    @app.errorhandler(405)
    def not_allowed(_exc: Exception) -> Response:
        return _reply({"Err": f"{request.path} takes POST"}, 405)

    return app
