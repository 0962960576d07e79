"""``create_app(config)``: the HTTP surface of the gateway (aiohttp.web)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .admission import QueueFull
from .auth import Authenticator
from .config import GatewayConfig
from .errors import (
    BackendUnavailable,
    BadRequest,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
)
from .gateway import Gateway
from .launchers.base import Launcher
from .openapi import OPENAPI
from .proxy import NotDelivered, ResponseSink
from .reqctx import CLIENT_CLOSED, RequestContext, new_request_id
from .web.paths import InvalidPath, RequestPath, normalise

log = logging.getLogger("vllm_gateway.app")

GATEWAY_KEY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)
AUTH_KEY: web.AppKey[Authenticator] = web.AppKey("auth", Authenticator)
MAX_BODY_KEY: web.AppKey[int] = web.AppKey("max_body", int)
PATH_KEY: web.RequestKey[RequestPath] = web.RequestKey("path", RequestPath)
# A client's X-Request-ID is kept only when it is short visible ASCII: it is echoed in
# headers, forwarded to backends and written to every log line.
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def client_request_id(request: web.Request) -> str | None:
    presented = request.headers.get("X-Request-ID", "")
    return presented if _REQUEST_ID.fullmatch(presented) else None


def error_response(err: GatewayError, request_id: str | None = None) -> web.Response:
    headers = dict(err.headers)
    if request_id:
        headers["X-Request-ID"] = request_id
    return web.json_response(err.body(), status=err.status, headers=headers)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error a client sees is OpenAI-shaped JSON, including aiohttp's own 404/405/413."""
    try:
        return await handler(request)
    except GatewayError as err:
        return error_response(err, client_request_id(request))
    except web.HTTPRequestEntityTooLarge as exc:
        return error_response(PayloadTooLarge(f"request body too large: {exc.text}"))
    except web.HTTPMethodNotAllowed as exc:
        return error_response(MethodNotAllowed(
            f"method {request.method} is not allowed on {request.path}; allowed: "
            f"{', '.join(sorted(exc.allowed_methods))}"))
    except web.HTTPNotFound:
        return error_response(NotFound(f"no such endpoint: {request.method} {request.path}"))


@web.middleware
async def paths_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every route and every decision on it (auth included) sees one normalised path."""
    try:
        found = normalise(request.raw_path)
    except InvalidPath:
        log.warning("refused request path %r", request.raw_path[:200])
        raise
    if found.path != request.path:
        # aiohttp routed on another reading of the same bytes: never let the two differ.
        raise InvalidPath(f"the request path {request.raw_path[:200]!r} is refused: it does "
                          "not read the same to every server")
    request[PATH_KEY] = found
    return await handler(request)


def create_app(config: GatewayConfig, *, nvml: Any = None,
               launchers: Mapping[str, Launcher] | None = None) -> web.Application:
    max_body = int(config.server.max_body_mb * 1024 * 1024)
    app = web.Application(middlewares=[errors_middleware, paths_middleware], client_max_size=max_body)
    gateway = Gateway(config, nvml=nvml, launchers=launchers)
    app[GATEWAY_KEY] = gateway
    app[AUTH_KEY] = Authenticator(config.auth)
    app[MAX_BODY_KEY] = max_body

    async def on_startup(_: web.Application) -> None:
        await gateway.start()

    async def on_shutdown(_: web.Application) -> None:
        await gateway.begin_shutdown()

    async def on_cleanup(_: web.Application) -> None:
        await gateway.close()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    r = app.router
    r.add_post("/v1/{tail:.+}", handle_v1)
    r.add_get("/v1/models", list_models)
    r.add_get("/health", health)
    r.add_get("/ready", ready)
    r.add_get("/metrics", metrics)
    r.add_get("/gateway/status", status)
    r.add_get("/gateway/events", events)
    r.add_post("/gateway/models/{name:.+}/load", load)
    r.add_post("/gateway/models/{name:.+}/unload", unload)
    r.add_get("/gateway/models/{name:.+}/logs", logs)
    r.add_get("/openapi.json", openapi)
    r.add_get("/", dashboard)
    r.add_get("/gateway/ui", dashboard)
    return app


# -- the proxy path -----------------------------------------------------------------------


def _parse(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("the request body is nested too deeply") from None
    if not isinstance(doc, dict):
        raise BadRequest(f"the request body must be a JSON object, not {type(doc).__name__}")
    if "model" not in doc:
        raise BadRequest("the request body has no 'model'")
    if not isinstance(doc["model"], str):
        raise BadRequest(f"'model' must be a string, not {type(doc['model']).__name__}")
    return doc


async def handle_v1(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY_KEY]
    auth = request.app[AUTH_KEY]
    target = request[PATH_KEY]
    ctx = RequestContext(client_request_id(request) or new_request_id(),
                         request.method, target.path)
    sink = ResponseSink(request, ctx)
    model_label = ""
    try:
        if not gateway.accepting:
            raise BackendUnavailable("the gateway is shutting down")
        if not target.under("/v1/"):
            raise InvalidPath(f"the request path {target.path!r} is not under /v1/")
        key = auth.identify(request.headers.get("Authorization"))
        limit = request.app[MAX_BODY_KEY]
        too_large = PayloadTooLarge(f"the request body is over the limit of {limit} bytes "
                                    "(server.max_body_mb)")
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None
        doc = _parse(body)
        inst = gateway.manager.resolve(doc["model"])
        auth.require_model(key, inst.name)
        auth.check_rate(key)
        ctx.model = model_label = inst.name
        if doc["model"] != inst.name:
            doc["model"] = inst.name  # backends serve the model under its name, not its aliases
            body = json.dumps(doc).encode()

        async def progress(elapsed: float, expected: float | None) -> None:
            of = f" of ~{expected:.0f} s" if expected is not None else ""
            await sink.comment(f"loading model {inst.name}, {elapsed:.0f} s{of}")

        wants_stream = doc.get("stream") is True
        try:
            for attempt in range(gateway.config.retry.max_retries + 1):
                try:
                    async with gateway.manager.lease(inst, progress if wants_stream else None) as lease:
                        ctx.mark_slot()
                        gateway.metrics.waited(inst.name, ctx.queue_wait_s or 0.0)
                        await gateway.proxy.forward(request, sink, lease, target.target, body, ctx)
                    break
                except NotDelivered as gone:
                    # The model died before the request reached it: wait for it to come back.
                    if attempt >= gateway.config.retry.max_retries:
                        raise
                    log.warning("request %s: %s; retry %d of %d", ctx.request_id, gone.message,
                                attempt + 1, gateway.config.retry.max_retries)
        except QueueFull as full:
            raise TooManyRequests(
                f"model {inst.name} is at its limits: {full.in_flight} in flight "
                f"(max_concurrent {full.max_concurrent}) and {full.queued} queued "
                f"(max_queue {full.max_queue}); retry later",
                headers={"Retry-After": str(full.retry_after_s)}) from None
    except GatewayError as err:
        ctx.error = err.message
        if sink.prepared:
            with contextlib.suppress(ConnectionError):
                await sink.abort(err)
        else:
            return _refuse(ctx, err)
    except asyncio.CancelledError:
        if not gateway.shutting_down:
            ctx.client_left()
            raise
        # Cancelled by the shutdown deadline: the client is still there, tell it why.
        shut = BackendUnavailable("the gateway shut down before the answer finished")
        ctx.error = shut.message
        if not sink.prepared:
            return _refuse(ctx, shut)
        with contextlib.suppress(ConnectionError):
            await sink.abort(shut)
    except ConnectionError:
        ctx.client_left()
    finally:
        _account(gateway, ctx, model_label)
    if sink.response is None:  # the client left before anything was sent
        return web.Response(status=CLIENT_CLOSED)
    return sink.response


def _refuse(ctx: RequestContext, err: GatewayError) -> web.Response:
    """The gateway's own error answer, counted in the request's log line like any other."""
    response = error_response(err, ctx.request_id)
    ctx.status = err.status
    ctx.bytes_out += response.content_length or 0
    return response


def _account(gateway: Gateway, ctx: RequestContext, model: str) -> None:
    gateway.metrics.request_done(model, ctx.status, ctx.duration_s(), ctx.ttfb_s)
    ctx.log_line()


# -- the rest of the surface --------------------------------------------------------------


async def list_models(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY_KEY]
    auth = request.app[AUTH_KEY]
    key = auth.identify(request.headers.get("Authorization"))
    created = int(gateway.started_at)
    data = [{"id": name, "object": "model", "created": created, "owned_by": "vllm-gateway"}
            for name in gateway.config.models if auth.may_use(key, name)]
    return web.json_response({"object": "list", "data": data})


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
        raise BadRequest("'since' must be an integer") from None
    return web.json_response(request.app[GATEWAY_KEY].events.since(since))


def _instance(request: web.Request) -> Any:
    gateway = request.app[GATEWAY_KEY]
    name = request.match_info["name"]
    inst = gateway.manager.instances.get(name)
    if inst is None:
        cfg = gateway.config.lookup(name)
        inst = gateway.manager.instances.get(cfg.name) if cfg is not None else None
    if inst is None:
        raise NotFound(f"no model named '{name}'")
    return inst


async def load(request: web.Request) -> web.Response:
    request.app[AUTH_KEY].require_admin(request.headers.get("Authorization"))
    inst = _instance(request)
    await request.app[GATEWAY_KEY].manager.load(inst)
    return web.json_response({"name": inst.name, "state": inst.state.value})


async def unload(request: web.Request) -> web.Response:
    request.app[AUTH_KEY].require_admin(request.headers.get("Authorization"))
    inst = _instance(request)
    await request.app[GATEWAY_KEY].manager.unload(inst)
    return web.json_response({"name": inst.name, "state": inst.state.value})


async def logs(request: web.Request) -> web.Response:
    request.app[AUTH_KEY].require_status(request.headers.get("Authorization"))
    inst = _instance(request)
    try:
        lines = int(request.query.get("lines", "100"))
    except ValueError:
        raise BadRequest("'lines' must be an integer") from None
    return web.json_response({"name": inst.name, "state": inst.state.value,
                              "lines": inst.last_lines(max(0, min(lines, 10000)))})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


async def dashboard(request: web.Request) -> web.Response:
    try:
        page = resources.files("vllm_gateway").joinpath("static/dashboard.html").read_text()
    except (FileNotFoundError, OSError):
        page = "<!doctype html><title>vllm-gateway</title><p>See /gateway/status</p>"
    return web.Response(text=page, content_type="text/html")
