"""vLLM's development endpoints (sleep mode) and its runtime LoRA endpoints.

Each set exists only when its environment switch is on, as in vLLM: without
it the paths answer FastAPI's ``404 {"detail": "Not Found"}``, with it any
other method than the route's gets ``405``. ``/sleep`` reads ``level`` and
``mode`` from the query string only; a body is read and ignored.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from . import parsing
from .engine import OperationFailed
from .options import Settings
from .parsing import ApiError, validation_error
from .state import JSON, STATE

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SLEEP_MODES = ("abort", "wait", "keep")


def _error(exc: ApiError) -> web.Response:
    return web.Response(status=exc.status, body=exc.body(), content_type=JSON)


def _failed(exc: OperationFailed) -> web.Response:
    return _error(ApiError(str(exc), 500, "InternalServerError"))


async def not_found(request: web.Request) -> web.Response:
    return web.json_response({"detail": "Not Found"}, status=404)


async def method_not_allowed(request: web.Request) -> web.Response:
    return web.json_response({"detail": "Method Not Allowed"}, status=405)


def _level(query: Mapping[str, str]) -> int:
    text = query.get("level", "1")
    try:
        level = int(text)
    except ValueError:
        raise validation_error(
            "query.level",
            "int_parsing",
            "Input should be a valid integer, unable to parse string as an integer",
            text,
        ) from None
    if level < 0:
        raise validation_error(
            "query.level", "greater_than_equal", "Input should be greater than or equal to 0", text
        )
    if level > 2:
        raise validation_error(
            "query.level", "less_than_equal", "Input should be less than or equal to 2", text
        )
    return level


def _mode(query: Mapping[str, str]) -> str:
    mode = query.get("mode", "abort")
    if mode not in SLEEP_MODES:
        raise validation_error(
            "query.mode", "literal_error", "Input should be 'abort', 'wait' or 'keep'", mode
        )
    return mode


async def sleep(request: web.Request) -> web.Response:
    try:
        level, mode = _level(request.query), _mode(request.query)
    except ApiError as exc:
        return _error(exc)
    await request.read()
    try:
        await request.app[STATE].engine.sleep(level, mode)
    except OperationFailed as exc:
        return _failed(exc)
    return web.json_response({"status": "sleeping", "level": level})


async def wake_up(request: web.Request) -> web.Response:
    tags = request.query.getall("tags", None)
    try:
        awake = await request.app[STATE].engine.wake(tags)
    except OperationFailed as exc:
        return _failed(exc)
    return web.json_response({"status": "awake" if awake else "sleeping", "tags": tags})


async def is_sleeping(request: web.Request) -> web.Response:
    return web.json_response({"is_sleeping": request.app[STATE].engine.is_sleeping})


async def collective_rpc(request: web.Request) -> web.Response:
    try:
        body = parsing.parse_body(await request.read())
        method = body.get("method")
        if not isinstance(method, str):
            raise validation_error("body.method", "missing", "Field required", body)
        if method != "reload_weights":
            raise ApiError(
                f"Worker failed with error ''Worker' object has no attribute '{method}''",
                500,
                "InternalServerError",
            )
    except ApiError as exc:
        return _error(exc)
    request.app[STATE].engine.reload_weights()
    return web.json_response({"results": [None]})


async def reset_prefix_cache(request: web.Request) -> web.Response:
    return web.json_response({"success": True})


def _plain(text: str) -> web.Response:
    # vLLM answers these with a bare text body.
    return web.Response(body=text.encode(), content_type="text/plain")


async def load_lora_adapter(request: web.Request) -> web.Response:
    try:
        body = parsing.parse_body(await request.read())
        return _plain(request.app[STATE].adapters.load(body))
    except ApiError as exc:
        return _error(exc)


async def unload_lora_adapter(request: web.Request) -> web.Response:
    try:
        body = parsing.parse_body(await request.read())
        return _plain(request.app[STATE].adapters.unload(body))
    except ApiError as exc:
        return _error(exc)


SLEEP_ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("POST", "/sleep", sleep),
    ("POST", "/wake_up", wake_up),
    ("GET", "/is_sleeping", is_sleeping),
    ("POST", "/collective_rpc", collective_rpc),
    ("POST", "/reset_prefix_cache", reset_prefix_cache),
)
LORA_ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("POST", "/v1/load_lora_adapter", load_lora_adapter),
    ("POST", "/v1/unload_lora_adapter", unload_lora_adapter),
)


def _mount(
    router: web.UrlDispatcher, routes: tuple[tuple[str, str, Handler], ...], enabled: bool
) -> None:
    for method, path, handler in routes:
        if enabled:
            router.add_route(method, path, handler)
            router.add_route("*", path, method_not_allowed)
        else:
            router.add_route("*", path, not_found)


def add_routes(router: web.UrlDispatcher, settings: Settings) -> None:
    _mount(router, SLEEP_ROUTES, settings.dev_mode)
    _mount(router, LORA_ROUTES, settings.runtime_lora)
