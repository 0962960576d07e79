"""What every request passes through: one path decided once, and OpenAI-shaped errors."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..errors import GatewayError, MethodNotAllowed, NotFound, PayloadTooLarge
from .keys import PATH_KEY
from .paths import InvalidPath, normalise

log = logging.getLogger("vllm_gateway.web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# A client's X-Request-ID is kept only when it is short visible ASCII: it is echoed in
# headers, forwarded to backends and written to every log line.
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")


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
