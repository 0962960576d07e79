"""Every request the fake server received, as its method and raw target.

Tests that must prove a request never reached a backend read ``GET /fake/requests``
(the log's own reads are not logged). The log keeps the last ``KEEP`` requests.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable

from aiohttp import web

KEEP = 1000


class RequestLog:
    def __init__(self) -> None:
        self.entries: deque[dict[str, str]] = deque(maxlen=KEEP)


LOG = web.AppKey("request_log", RequestLog)
LOG_PATH = "/fake/requests"


@web.middleware
async def _record(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.path != LOG_PATH:
        request.app[LOG].entries.append({"method": request.method, "target": request.raw_path})
    return await handler(request)


async def _requests(request: web.Request) -> web.Response:
    return web.json_response(list(request.app[LOG].entries))


def install(app: web.Application) -> None:
    app[LOG] = RequestLog()
    app.middlewares.append(_record)
    app.router.add_get(LOG_PATH, _requests)
