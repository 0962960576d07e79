"""The OpenAI face: ``POST /v1/*`` routed by the body's ``model``, and ``GET /v1/models``.

A request goes through five steps, each its own function: identify (the key and
the limits), parse (the body), route (the model or adapter it names, the key's
scope, the name the backend serves), deliver (lease a slot and forward; the one
place a request that never reached a backend is sent again) and account (its
log line and metrics, whatever happened).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..config import AdapterConfig, AuthKey
from ..errors import (
    BackendError,
    BackendUnavailable,
    BadRequest,
    GatewayError,
    NotDelivered,
    PayloadTooLarge,
)
from ..gateway import Gateway
from ..lifecycle import State
from ..proxy import ResponseSink
from ..reqctx import CLIENT_CLOSED, RequestContext, new_request_id
from ..runtime.instance import Instance
from ..runtime.manager import Progress
from .keys import AUTH_KEY, GATEWAY_KEY, MAX_BODY_KEY, PATH_KEY
from .middleware import client_request_id, error_response
from .paths import InvalidPath

log = logging.getLogger("vllm_gateway.web")


@dataclass
class Call:
    """One /v1 request on its way through the steps."""

    request: web.Request
    gateway: Gateway
    ctx: RequestContext
    sink: ResponseSink
    label: str = ""  # the model (or adapter) its metrics are counted under, once known
    body: bytes = b""
    doc: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    """What a request's ``model`` names: a model, or an adapter served by a base model."""

    instance: Instance
    adapter: AdapterConfig | None

    @property
    def served_name(self) -> str:
        """The name the backend knows it by (aliases are the gateway's own)."""
        return self.adapter.name if self.adapter is not None else self.instance.name


async def handle_v1(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY_KEY]
    ctx = RequestContext(client_request_id(request) or new_request_id(), request.method,
                         request[PATH_KEY].path)
    call = Call(request, gateway, ctx, ResponseSink(request, ctx))
    try:
        key = identify(call)
        await parse(call)
        target = route(call, key)
        await deliver(call, target)
    except GatewayError as err:
        return await _fail(call, err)
    except asyncio.CancelledError:
        if not gateway.shutting_down:
            ctx.client_left()
            raise
        # Cancelled by the shutdown deadline: the client is still there, tell it why.
        return await _fail(call, BackendUnavailable("the gateway shut down before the answer "
                                                    "finished"))
    except ConnectionError:
        ctx.client_left()
    finally:
        account(call)
    if call.sink.response is None:  # the client left before anything was sent
        return web.Response(status=CLIENT_CLOSED)
    return call.sink.response


# -- the steps ----------------------------------------------------------------------------


def identify(call: Call) -> AuthKey:
    """The gateway takes requests, the path is one a model serves, the key is known."""
    if not call.gateway.accepting:
        raise BackendUnavailable("the gateway is shutting down")
    path = call.request[PATH_KEY]
    if not path.under("/v1/"):
        raise InvalidPath(f"the request path {path.path!r} is not under /v1/")
    return call.request.app[AUTH_KEY].identify(call.request.headers.get("Authorization"))


async def parse(call: Call) -> None:
    """The body, within the size limit, as a JSON object naming a ``model``."""
    limit = call.request.app[MAX_BODY_KEY]
    too_large = PayloadTooLarge(f"the request body is over the limit of {limit} bytes "
                                "(server.max_body_mb)")
    if call.request.content_length is not None and call.request.content_length > limit:
        raise too_large
    try:
        call.body = await call.request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    call.doc = parse_body(call.body)


def parse_body(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("the request body is nested too deeply") from None
    if not isinstance(doc, dict):
        raise BadRequest(f"the request body must be a JSON object, not {type(doc).__name__}")
    if "model" not in doc:
        raise BadRequest("the request body has no 'model'", param="model")
    if not isinstance(doc["model"], str):
        raise BadRequest(f"'model' must be a string, not {type(doc['model']).__name__}",
                         param="model")
    return doc


def route(call: Call, key: AuthKey) -> Target:
    """The model or adapter named, if the key may use it; the body names it as served."""
    auth = call.request.app[AUTH_KEY]
    inst, adapter = call.gateway.manager.resolve_target(call.doc["model"])
    auth.require_model(key, inst.name)  # a key that may use a base may use its adapters
    auth.check_rate(key)
    target = Target(inst, adapter)
    call.ctx.model = call.label = target.served_name
    if call.doc["model"] != target.served_name:
        call.doc["model"] = target.served_name
        call.body = json.dumps(call.doc).encode()
    return target


async def deliver(call: Call, target: Target) -> None:
    """Lease a slot and forward. A request that never reached a backend (nothing was
    generated) is sent again, up to ``retry.max_retries`` times: at once to a model that
    went away (the lease waits for it to come back), after ``retry.delay_s`` (growing by
    ``retry.backoff``) to a running server that refused the connection."""
    gateway, ctx = call.gateway, call.ctx
    retry = gateway.config.retry
    name = target.instance.name
    progress = _progress(call, name) if call.doc.get("stream") is True else None
    delay = retry.delay_s
    for attempt in range(retry.max_retries + 1):
        async with gateway.manager.lease(target.instance, progress, target.adapter) as lease:
            ctx.mark_slot()
            gateway.metrics.waited(call.label, ctx.queue_wait_s or 0.0)
            try:
                await gateway.proxy.forward(call.request, call.sink, lease,
                                            call.request[PATH_KEY].target, call.body, ctx)
                return
            except NotDelivered as exc:
                gone, still_up = exc, lease.instance.state is State.READY
        if attempt >= retry.max_retries:
            raise BackendError(f"{gone.message} after {attempt + 1} attempt(s)") from gone
        gateway.metrics.retries.labels(name).inc()
        if still_up:
            log.warning("request %s to %s: connection refused, retry %d of %d in %.2f s",
                        ctx.request_id, name, attempt + 1, retry.max_retries, delay)
            await asyncio.sleep(delay)
            delay *= retry.backoff
        else:
            log.warning("request %s to %s: %s; retry %d of %d once it is back", ctx.request_id,
                        name, gone.message, attempt + 1, retry.max_retries)


def account(call: Call) -> None:
    ctx = call.ctx
    call.gateway.metrics.request_done(call.label, ctx.status, ctx.duration_s(), ctx.ttfb_s)
    ctx.log_line()


# -- helpers of the steps -----------------------------------------------------------------


def _progress(call: Call, name: str) -> Progress:
    async def progress(elapsed: float, expected: float | None) -> None:
        of = f" of ~{expected:.0f} s" if expected is not None else ""
        await call.sink.comment(f"loading model {name}, {elapsed:.0f} s{of}")
    return progress


async def _fail(call: Call, err: GatewayError) -> web.StreamResponse:
    """The gateway's own error: a whole answer when nothing was sent yet, else in-band."""
    call.ctx.error = err.message
    if not call.sink.prepared:
        response = error_response(err, call.ctx.request_id)
        call.ctx.status = err.status
        call.ctx.bytes_out += response.content_length or 0
        return response
    with contextlib.suppress(ConnectionError):
        await call.sink.abort(err)
    assert call.sink.response is not None
    return call.sink.response


# -- the list -----------------------------------------------------------------------------


async def list_models(request: web.Request) -> web.Response:
    """Every configured model, then every adapter with its base as ``parent`` (loaded or
    not), as far as the key may use them."""
    gateway = request.app[GATEWAY_KEY]
    auth = request.app[AUTH_KEY]
    key = auth.identify(request.headers.get("Authorization"))
    created = int(gateway.started_at)
    data: list[dict[str, Any]] = []
    for model in gateway.config.models.values():
        if not auth.may_use(key, model.name):
            continue
        data.append({"id": model.name, "object": "model", "created": created,
                     "owned_by": "vllm-gateway"})
        data.extend({"id": adapter.name, "object": "model", "created": created,
                     "owned_by": "vllm-gateway", "parent": model.name}
                    for adapter in model.adapters.values())
    return web.json_response({"object": "list", "data": data})
