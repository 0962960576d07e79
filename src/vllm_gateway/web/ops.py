"""The gateway's own routes: liveness, readiness, metrics, status, events, its documents."""

from __future__ import annotations

from importlib import resources

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..errors import BadRequest, NotFound
from ..openapi import OPENAPI
from .keys import AUTH_KEY, GATEWAY_KEY

_JS = "text/javascript; charset=utf-8"
# The dashboard page's files, by the name it asks for them under /gateway/ui/. Only these are
# read, so no request can name another file of the package; they are open like the page itself.
DASHBOARD_FILES = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": _JS,
    "actions.js": _JS,
    "api.js": _JS,
    "events.js": _JS,
    "poll.js": _JS,
    "status.js": _JS,
    "timeline.js": _JS,
    "ui.js": _JS,
}


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY_KEY]
    if not gateway.accepting:
        return web.json_response({"status": "not ready"}, status=503)
    return web.json_response({"status": "ready", "models": len(gateway.config.models)})


async def metrics(request: web.Request) -> web.Response:
    request.app[AUTH_KEY].require_status(request.headers.get("Authorization"))
    body = generate_latest(request.app[GATEWAY_KEY].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def status(request: web.Request) -> web.Response:
    request.app[AUTH_KEY].require_status(request.headers.get("Authorization"))
    return web.json_response(request.app[GATEWAY_KEY].status())


async def events(request: web.Request) -> web.Response:
    request.app[AUTH_KEY].require_status(request.headers.get("Authorization"))
    try:
        since = int(request.query.get("since", "0"))
    except ValueError:
        raise BadRequest("'since' must be an integer", param="since") from None
    return web.json_response(request.app[GATEWAY_KEY].events.since(since))


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


async def dashboard(request: web.Request) -> web.Response:
    try:
        page = resources.files("vllm_gateway").joinpath("static/dashboard.html").read_text()
    except (FileNotFoundError, OSError):
        page = "<!doctype html><title>vllm-gateway</title><p>See /gateway/status</p>"
    return web.Response(text=page, content_type="text/html")


async def dashboard_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    content_type = DASHBOARD_FILES.get(name)
    if content_type is None:
        raise NotFound(f"no such file of the dashboard: {request.path}")
    try:
        body = resources.files("vllm_gateway").joinpath(f"static/{name}").read_bytes()
    except (FileNotFoundError, OSError):
        raise NotFound(f"the dashboard file {name} is missing from this install") from None
    return web.Response(body=body, headers={"Content-Type": content_type})


def add_dashboard_routes(router: web.UrlDispatcher) -> None:
    """The page at / and /gateway/ui, its stylesheet and scripts at /gateway/ui/NAME."""
    router.add_get("/", dashboard)
    router.add_get("/gateway/ui", dashboard)
    router.add_get("/gateway/ui/{name}", dashboard_file)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/health", health)
    router.add_get("/ready", ready)
    router.add_get("/metrics", metrics)
    router.add_get("/gateway/status", status)
    router.add_get("/gateway/events", events)
    router.add_get("/openapi.json", openapi)
    add_dashboard_routes(router)
