"""The gateway's own routes: liveness, readiness, metrics, status, events, its documents."""

from __future__ import annotations

from importlib import resources

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..errors import BadRequest
from ..openapi import OPENAPI
from .keys import AUTH_KEY, GATEWAY_KEY


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


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/health", health)
    router.add_get("/ready", ready)
    router.add_get("/metrics", metrics)
    router.add_get("/gateway/status", status)
    router.add_get("/gateway/events", events)
    router.add_get("/openapi.json", openapi)
    router.add_get("/", dashboard)
    router.add_get("/gateway/ui", dashboard)
