"""The aiohttp application: vLLM's OpenAI endpoints plus test hooks under /fake/.

The server runs with handler cancellation on, so a client that goes away
cancels its handler at once: generation stops there and is counted as a
disconnect, like vLLM aborting the request.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from . import parsing
from .options import Settings
from .parsing import ApiError, Plan
from .payloads import Payloads


@dataclass
class Stats:
    in_flight: int = 0
    max_in_flight: int = 0
    # Generation requests received, whatever their outcome.
    requests: int = 0
    # Generation requests the client abandoned before the answer was complete.
    disconnects: int = 0
    # Generation requests answered in full with 200.
    completed: int = 0


@dataclass
class BackendState:
    settings: Settings
    payloads: Payloads
    stats: Stats = field(default_factory=Stats)
    # Lifetime count for --crash-after; /fake/reset_stats leaves it alone.
    generations_seen: int = 0
    finished: dict[str, int] = field(default_factory=lambda: {"stop": 0, "length": 0})
    last_request: dict[str, Any] | None = None
    health_hung: bool = False
    worker_pid: int | None = None


STATE = web.AppKey("state", BackendState)
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8"}
JSON = "application/json"


def _error(exc: ApiError) -> web.Response:
    return web.Response(status=exc.status, body=exc.body(), content_type=JSON)


async def _forever() -> None:
    """Wait until cancelled (the client leaving, or shutdown)."""
    await asyncio.get_running_loop().create_future()


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
    record: dict[str, Any] = {"path": request.path, "headers": dict(request.headers)}
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


async def _generate(request: web.Request, chat: bool) -> web.StreamResponse:
    state = request.app[STATE]
    stats = state.stats
    try:
        body = await _read_body(request, state)
    except ApiError as exc:
        return _error(exc)
    if not _authorized(request, state.settings):
        return web.Response(status=401, body=UNAUTHORIZED, content_type=JSON)
    state.generations_seen += 1
    stats.requests += 1
    stats.in_flight += 1
    stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
    crash = state.settings.crash_after == state.generations_seen
    try:
        try:
            plan = _plan(body, chat, state.settings)
        except ApiError as exc:
            if crash:
                _crash(state)
            return _error(exc)
        if plan.stream:
            return await _stream(request, state, plan, chat, crash)
        if crash:
            _crash(state)
        if plan.stall_after is not None:
            await _forever()
        if plan.token_delay > 0 and plan.tokens > 0:
            await asyncio.sleep(plan.token_delay * plan.tokens)
        payloads = state.payloads
        answer = payloads.chat_body(plan) if chat else payloads.completion_body(plan)
        stats.completed += 1
        state.finished[plan.finish_reason] += 1
        return web.Response(body=answer, content_type=JSON)
    except asyncio.CancelledError:
        stats.disconnects += 1
        raise
    finally:
        stats.in_flight -= 1


def _plan(body: dict[str, Any], chat: bool, settings: Settings) -> Plan:
    fake = parsing.parse_overrides(body)
    if fake.status is not None:
        raise ApiError(f"Fake error: status {fake.status} was requested", fake.status)
    parsing.check_model(body, settings)
    prompt = parsing.chat_prompt_tokens(body) if chat else parsing.completion_prompt_tokens(body)
    return parsing.plan_generation(body, chat, prompt, fake, settings)


async def _stream(
    request: web.Request, state: BackendState, plan: Plan, chat: bool, crash: bool
) -> web.StreamResponse:
    payloads = state.payloads
    # A crash comes after a couple of events, but always before the stream is complete.
    crash_at = min(2, payloads.stream_event_count(plan, chat) - 1) if crash else -1
    stall_at = -1 if plan.stall_after is None else plan.stall_after
    delay = plan.token_delay
    response = web.StreamResponse(headers=SSE_HEADERS)
    try:
        await response.prepare(request)
        for sent, event in enumerate(payloads.stream_events(plan, chat)):
            if sent == stall_at:
                await _forever()
            if sent == crash_at:
                _crash(state)
            if event.is_token:
                # Sleeping 0 still yields, so a long undelayed stream neither starves
                # other connections nor misses its client going away.
                await asyncio.sleep(delay)
            await response.write(event.data)
        await response.write_eof()
    except ConnectionError:
        state.stats.disconnects += 1
        return response
    state.stats.completed += 1
    state.finished[plan.finish_reason] += 1
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
        parsing.check_model(body, state.settings)
        texts, tokens = parsing.embedding_inputs(body)
    except ApiError as exc:
        return _error(exc)
    return web.Response(body=state.payloads.embeddings_body(texts, tokens), content_type=JSON)


async def health(request: web.Request) -> web.Response:
    if request.app[STATE].health_hung:
        await _forever()
    return web.Response()


async def models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if not _authorized(request, state.settings):
        return web.Response(status=401, body=UNAUTHORIZED, content_type=JSON)
    return web.Response(body=state.payloads.models_body, content_type=JSON)


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": "0.0.0+fake"})


def _gauge(name: str, help_text: str, labels: str, value: float) -> str:
    return f"# HELP {name} {help_text}\n# TYPE {name} gauge\n{name}{{{labels}}} {value!r}\n"


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    labels = f'engine="0",model_name={json.dumps(state.settings.model_name)}'
    running = float(state.stats.in_flight)
    # The fake has no KV cache: usage grows with concurrency, full at 256 requests.
    usage = min(1.0, running / 256)
    text = (
        _gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            labels,
            running,
        )
        + _gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.", labels, 0.0
        )
        + _gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", labels, usage
        )
        + "# HELP vllm:request_success_total Count of successfully processed requests.\n"
        + "# TYPE vllm:request_success_total counter\n"
        + "".join(
            f'vllm:request_success_total{{{labels},finished_reason="{reason}"}} {float(n)!r}\n'
            for reason, n in sorted(state.finished.items())
        )
    )
    return web.Response(
        text=text,
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Prometheus-Format": "0.0.4"},
    )


async def fake_stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    stats: dict[str, Any] = asdict(state.stats)
    stats.update(pid=os.getpid(), worker_pid=state.worker_pid)
    return web.json_response(stats)


async def fake_last_request(request: web.Request) -> web.Response:
    last = request.app[STATE].last_request
    return web.json_response(last or {"path": None, "headers": {}, "body": None})


async def fake_hang(request: web.Request) -> web.Response:
    request.app[STATE].health_hung = True
    return web.json_response({"health": "hung"})


async def fake_reset_stats(request: web.Request) -> web.Response:
    stats = request.app[STATE].stats
    # Reset in place: handlers in flight hold this object and still decrement it.
    stats.max_in_flight = stats.in_flight
    stats.requests = stats.disconnects = stats.completed = 0
    return web.json_response(asdict(stats))


def build_app(settings: Settings) -> web.Application:
    # vLLM takes large bodies; the fake must not be the one refusing them.
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STATE] = BackendState(
        settings, Payloads(settings.served_model_names, settings.max_model_len)
    )
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/version", version)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/fake/stats", fake_stats)
    app.router.add_get("/fake/last_request", fake_last_request)
    app.router.add_post("/fake/hang", fake_hang)
    app.router.add_post("/fake/reset_stats", fake_reset_stats)
    return app
