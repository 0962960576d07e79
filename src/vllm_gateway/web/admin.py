"""Operators' routes on one model: load, unload, logs (``/gateway/models/{name}/...``).

The name is a model's name or alias, as for a request; it is a path below the
route (``org/model`` keeps its slash), already checked by the paths middleware.
"""

from __future__ import annotations

from aiohttp import web

from ..errors import BadRequest, ModelNotFound, NotFound
from ..runtime.instance import Instance
from .keys import AUTH_KEY, GATEWAY_KEY

LOG_LINES_MAX = 10000


def _model(request: web.Request) -> Instance:
    name = request.match_info["name"]
    try:
        return request.app[GATEWAY_KEY].manager.resolve(name)
    except ModelNotFound:
        raise NotFound(f"no model named '{name}'") from None


def _state(inst: Instance) -> web.Response:
    return web.json_response({"name": inst.name, "state": inst.state.value})


async def load(request: web.Request) -> web.Response:
    request.app[AUTH_KEY].require_admin(request.headers.get("Authorization"))
    inst = _model(request)
    await request.app[GATEWAY_KEY].manager.load(inst)
    return _state(inst)


async def unload(request: web.Request) -> web.Response:
    request.app[AUTH_KEY].require_admin(request.headers.get("Authorization"))
    inst = _model(request)
    await request.app[GATEWAY_KEY].manager.unload(inst)
    return _state(inst)


async def logs(request: web.Request) -> web.Response:
    request.app[AUTH_KEY].require_status(request.headers.get("Authorization"))
    inst = _model(request)
    try:
        lines = int(request.query.get("lines", "100"))
    except ValueError:
        raise BadRequest("'lines' must be an integer", param="lines") from None
    return web.json_response({"name": inst.name, "state": inst.state.value,
                              "lines": inst.last_lines(max(0, min(lines, LOG_LINES_MAX)))})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/gateway/models/{name:.+}/load", load)
    router.add_post("/gateway/models/{name:.+}/unload", unload)
    router.add_get("/gateway/models/{name:.+}/logs", logs)
