"""The aiohttp application: vLLM's OpenAI endpoints plus test hooks under /fake/.

The server runs with handler cancellation on, so a client that goes away
cancels its handler at once: generation stops there and is counted as a
disconnect, like vLLM aborting the request. A generation request that finds
the engine asleep is held until the wake (streams get their headers first),
as vLLM holds it; its model name is checked before, as vLLM's API server does.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from typing import Any

from aiohttp import web

from . import dev, parsing, request_log
from .engine import Engine, EngineDead, Generation
from .lora import Adapters
from .metrics import metrics
from .options import Settings
from .parsing import ApiError, Plan
from .payloads import DONE, Payloads
from .state import JSON, STATE, BackendState

SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8"}
# What vLLM answers to requests held when it is stopped while asleep.
ENGINE_DEAD = ApiError(
    "EngineCore encountered an issue. See stack trace (above) for the root cause.",
    500,
    "InternalServerError",
)
GARBLED_VOICE = "garbled-"


def _error(exc: ApiError) -> web.Response:
    return web.Response(status=exc.status, body=exc.body(), content_type=JSON)


def _crash(state: BackendState) -> None:
    print(
        f"ERROR fake backend: crashing on generation request {state.generations_seen} "
        "(--crash-after)",
        file=sys.stderr,
        flush=True,
    )
    sys.stdout.flush()
    os._exit(1)


async def _read_body(request: web.Request, state: BackendState) -> dict[str, Any]:
    raw = await request.read()
    record: dict[str, Any] = {
        "path": request.path,
        "headers": dict(request.headers),
        "raw": raw.decode("utf-8", "replace"),
    }
    try:
        body = parsing.parse_body(raw)
    except ApiError:
        record["body"] = raw.decode("utf-8", "replace")
        state.last_request = record
        raise
    record["body"] = body
    state.last_request = record
    return body


def _authorized(request: web.Request, settings: Settings) -> bool:
    if settings.api_key is None:
        return True
    return request.headers.get("Authorization") == f"Bearer {settings.api_key}"


UNAUTHORIZED = b'{"error":"Unauthorized"}'


def _adapter_name(body: dict[str, Any], state: BackendState) -> str:
    """The loaded adapter a request names, "" for the base; 404 for anything else."""
    model = body.get("model")
    if model is None or model in state.settings.served_model_names:
        return ""
    if isinstance(model, str) and state.adapters.get(model) is not None:
        return model
    raise ApiError(f"The model `{model}` does not exist.", 404, "NotFoundError", param="model")


def _plan(body: dict[str, Any], chat: bool, state: BackendState) -> Plan:
    fake = parsing.parse_overrides(body)
    if fake.status is not None:
        raise ApiError(f"Fake error: status {fake.status} was requested", fake.status)
    adapter = _adapter_name(body, state)
    prompt = parsing.chat_prompt_tokens(body) if chat else parsing.completion_prompt_tokens(body)
    plan = parsing.plan_generation(body, chat, prompt, fake, state.settings)
    return replace(plan, model=adapter) if adapter else plan


def _voiced(plan: Plan, state: BackendState) -> Plan:
    """Set the text's voice once the engine runs: a wake may have garbled it meanwhile."""
    if state.engine.garbled:
        return replace(plan, voice=GARBLED_VOICE)
    adapter = state.adapters.get(plan.model) if plan.model else None
    return plan if adapter is None else replace(plan, voice=adapter.voice + "-")


async def _hold(state: BackendState) -> bool:
    """Wait while the engine sleeps; False when the server stopped meanwhile."""
    try:
        await state.engine.hold()
    except EngineDead:
        return False
    except asyncio.CancelledError:
        state.stats.disconnects += 1
        raise
    return True


async def _thawed(state: BackendState) -> bool:
    """Wait while a sleep with mode=keep freezes a running request; False if it died."""
    try:
        await state.engine.hold(count=False)
    except EngineDead:
        return False
    return True


@contextmanager
def _running(state: BackendState, plan: Plan) -> Iterator[Generation]:
    stats = state.stats
    generation = Generation()
    stats.in_flight += 1
    stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
    state.engine.running.add(generation)
    if plan.model:
        state.adapters.running[plan.model] += 1
    try:
        yield generation
    except asyncio.CancelledError:
        stats.disconnects += 1
        raise
    finally:
        stats.in_flight -= 1
        state.engine.running.discard(generation)
        if plan.model:
            state.adapters.running[plan.model] -= 1


def _finish(state: BackendState, reason: str, complete: bool) -> None:
    state.finished[reason] = state.finished.get(reason, 0) + 1
    if complete:
        state.stats.completed += 1


async def _generate(request: web.Request, chat: bool) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        body = await _read_body(request, state)
    except ApiError as exc:
        return _error(exc)
    if not _authorized(request, state.settings):
        return web.Response(status=401, body=UNAUTHORIZED, content_type=JSON)
    state.generations_seen += 1
    state.stats.requests += 1
    crash = state.settings.crash_after == state.generations_seen
    try:
        plan = _plan(body, chat, state)
    except ApiError as exc:
        if crash:
            _crash(state)
        return _error(exc)
    if plan.stream:
        return await _stream(request, state, plan, chat, crash)
    if not await _hold(state):
        return _error(ENGINE_DEAD)
    plan = _voiced(plan, state)
    with _running(state, plan) as generation:
        if crash:
            _crash(state)
        if plan.stall_after is not None:
            await generation.pause(None)
        elif plan.token_delay > 0 and plan.tokens > 0:
            await generation.pause(plan.token_delay * plan.tokens)
        # A sleep with mode=keep freezes the request until the wake.
        if not generation.aborted and not await _thawed(state):
            return _error(ENGINE_DEAD)
        if generation.aborted:
            plan = replace(plan, tokens=0, finish_reason="abort")
        payloads = state.payloads
        answer = payloads.chat_body(plan) if chat else payloads.completion_body(plan)
        _finish(state, plan.finish_reason, not generation.aborted)
        return web.Response(body=answer, content_type=JSON)


def _dead_event() -> bytes:
    return b"data: " + ENGINE_DEAD.body() + b"\n\n" + DONE


async def _stream(
    request: web.Request, state: BackendState, plan: Plan, chat: bool, crash: bool
) -> web.StreamResponse:
    payloads = state.payloads
    engine = state.engine
    # A crash comes after a couple of events, but always before the stream is complete.
    crash_at = min(2, payloads.stream_event_count(plan, chat) - 1) if crash else -1
    stall_at = -1 if plan.stall_after is None else plan.stall_after
    delay = plan.token_delay
    response = web.StreamResponse(headers=SSE_HEADERS)
    try:
        await response.prepare(request)
        if not await _hold(state):
            await response.write(_dead_event())
            await response.write_eof()
            return response
        plan = _voiced(plan, state)
        with _running(state, plan) as generation:
            for sent, event in enumerate(payloads.stream_events(plan, chat)):
                if sent == stall_at:
                    await generation.pause(None)
                if sent == crash_at:
                    _crash(state)
                if event.is_token:
                    # Sleeping 0 still yields, so a long undelayed stream neither starves
                    # other connections nor misses its client going away.
                    await asyncio.sleep(delay)
                if not engine.is_open and not generation.aborted and not await _thawed(state):
                    await response.write(_dead_event())
                    await response.write_eof()
                    return response
                if generation.aborted:
                    await response.write(payloads.abort_events(plan, chat))
                    await response.write_eof()
                    _finish(state, "abort", complete=False)
                    return response
                await response.write(event.data)
            await response.write_eof()
    except ConnectionError:
        state.stats.disconnects += 1
        return response
    _finish(state, plan.finish_reason, complete=True)
    return response


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=False)


async def embeddings(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        body = await _read_body(request, state)
        if not _authorized(request, state.settings):
            return web.Response(status=401, body=UNAUTHORIZED, content_type=JSON)
        fake = parsing.parse_overrides(body)
        if fake.status is not None:
            raise ApiError(f"Fake error: status {fake.status} was requested", fake.status)
        _adapter_name(body, state)
        texts, tokens = parsing.embedding_inputs(body)
    except ApiError as exc:
        return _error(exc)
    return web.Response(body=state.payloads.embeddings_body(texts, tokens), content_type=JSON)


async def _forever() -> None:
    """Wait until cancelled (the client leaving, or shutdown)."""
    await asyncio.get_running_loop().create_future()


async def health(request: web.Request) -> web.Response:
    if request.app[STATE].health_hung:
        await _forever()
    return web.Response()


async def models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if not _authorized(request, state.settings):
        return web.Response(status=401, body=UNAUTHORIZED, content_type=JSON)
    if not state.adapters.loaded:
        return web.Response(body=state.payloads.models_body, content_type=JSON)
    body = state.payloads.models_with(state.adapters.cards())
    return web.Response(body=body, content_type=JSON)


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": "0.0.0+fake"})


async def fake_stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    stats: dict[str, Any] = asdict(state.stats)
    engine = state.engine
    stats.update(
        pid=os.getpid(),
        worker_pid=state.worker_pid,
        held=engine.held,
        is_sleeping=engine.is_sleeping,
        resident=engine.resident,
        sleeps=engine.sleeps,
        full_wakes=engine.full_wakes,
    )
    return web.json_response(stats)


async def fake_last_request(request: web.Request) -> web.Response:
    last = request.app[STATE].last_request
    return web.json_response(last or {"path": None, "headers": {}, "body": None})


async def fake_hang(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.health_hung = True
    state.engine.hang()
    return web.json_response({"health": "hung"})


async def fake_reset_stats(request: web.Request) -> web.Response:
    stats = request.app[STATE].stats
    # Reset in place: handlers in flight hold this object and still decrement it.
    stats.max_in_flight = stats.in_flight
    stats.requests = stats.disconnects = stats.completed = 0
    return web.json_response(asdict(stats))


async def _release_held(app: web.Application) -> None:
    app[STATE].engine.shut_down()


def build_app(settings: Settings) -> web.Application:
    # vLLM takes large bodies; the fake must not be the one refusing them.
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STATE] = BackendState(
        settings,
        Payloads(settings.served_model_names, settings.max_model_len),
        Engine(settings),
        Adapters(settings),
    )
    app.on_shutdown.append(_release_held)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/version", version)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    dev.add_routes(app.router, settings)
    app.router.add_get("/fake/stats", fake_stats)
    app.router.add_get("/fake/last_request", fake_last_request)
    app.router.add_post("/fake/hang", fake_hang)
    app.router.add_post("/fake/reset_stats", fake_reset_stats)
    request_log.install(app)
    return app
