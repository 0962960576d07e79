"""Operators' routes on one model: load, unload, sleep, logs (``/gateway/models/{name}/...``).

The name is a model's name or alias, as for a request, or a LoRA adapter's (load
and unload then act on the adapter in its base); it is a path below the route
(``org/model`` keeps its slash), already checked by the paths middleware.
"""

from __future__ import annotations

from aiohttp import web

from ..config import AdapterConfig
from ..errors import BadRequest, Conflict, ModelNotFound, NotFound
from ..runtime.instance import Instance
from .keys import AUTH_KEY, GATEWAY_KEY

LOG_LINES_MAX = 10000


def _target(request: web.Request) -> tuple[Instance, AdapterConfig | None]:
    name = request.match_info["name"]
    try:
        return request.app[GATEWAY_KEY].manager.resolve_target(name)
    except ModelNotFound:
        raise NotFound(f"no model named '{name}'") from None


def _model(request: web.Request, action: str) -> Instance:
    """The model itself: an adapter is slept (or read) through its base."""
    inst, adapter = _target(request)
    if adapter is not None and action != "logs":
        raise Conflict(f"{adapter.name} is an adapter of model {inst.name}: {action} "
                       f"{inst.name} instead")
    return inst


def _adapter(inst: Instance, adapter: AdapterConfig, state: str) -> web.Response:
    return web.json_response({"name": adapter.name, "state": state, "parent": inst.name})


def _state(inst: Instance) -> web.Response:
    return web.json_response({"name": inst.name, "state": inst.state.value})


async def _replicas_asked(request: web.Request) -> int | None:
    """``{"replicas": K}`` in the body of a load: run K replicas now (no body: start it)."""
    if not request.can_read_body:
        return None
    try:
        doc = await request.json()
    except ValueError:
        raise BadRequest("the body must be JSON, e.g. {\"replicas\": 2}") from None
    if doc is None:
        return None
    count = doc.get("replicas") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or set(doc) - {"replicas"} or (
            "replicas" in doc and (type(count) is not int or count < 0)):
        raise BadRequest("the body may only hold 'replicas', a whole number >= 0",
                         param="replicas")
    return count


async def load(request: web.Request) -> web.Response:
    """Start the model now; with ``{"replicas": K}``, run that many replicas now. Answers
    the model's state (``ready`` if any replica is) and, when a count was asked for, how
    many replicas hold memory."""
    request.app[AUTH_KEY].require_admin(request.headers.get("Authorization"))
    inst, adapter = _target(request)
    manager = request.app[GATEWAY_KEY].manager
    if adapter is not None:
        await manager.load_adapter(inst, adapter)
        return _adapter(inst, adapter, "loaded")
    replicas = await _replicas_asked(request)
    await manager.load(inst, replicas)
    group = manager.models[inst.name]
    answer: dict[str, object] = {"name": inst.name, "state": group.state.value}
    if replicas is not None:
        answer["replicas"] = len(group.holding())
    return web.json_response(answer)


async def unload(request: web.Request) -> web.Response:
    """Stop the model after its in-flight requests; an adapter is unloaded from its base
    at once, or refused with a 409 while it has requests in flight."""
    request.app[AUTH_KEY].require_admin(request.headers.get("Authorization"))
    inst, adapter = _target(request)
    manager = request.app[GATEWAY_KEY].manager
    if adapter is not None:
        if not await manager.unload_adapter(inst, adapter):
            raise Conflict(f"adapter {adapter.name} has requests in flight; try again once "
                           "they finish")
        return _adapter(inst, adapter, "unloaded")
    await manager.unload(inst)
    return _state(inst)


async def sleep(request: web.Request) -> web.Response:
    """Put a ready model to sleep now, after its in-flight requests; the state after it
    (``sleeping``, or ``stopped`` when the sleep failed: the model's events say why)."""
    request.app[AUTH_KEY].require_admin(request.headers.get("Authorization"))
    inst = _model(request, "sleep")
    manager = request.app[GATEWAY_KEY].manager
    if not await manager.sleep(inst):
        why = (f"sleep is off (models.{inst.name}.sleep)" if not inst.cfg.sleep
               else f"it is {manager.models[inst.name].state.value}, not ready")
        raise Conflict(f"cannot put model {inst.name} to sleep: {why}")
    return _state(inst)


async def logs(request: web.Request) -> web.Response:
    request.app[AUTH_KEY].require_status(request.headers.get("Authorization"))
    inst = _model(request, "logs")  # an adapter's lines are its base server's
    try:
        lines = int(request.query.get("lines", "100"))
    except ValueError:
        raise BadRequest("'lines' must be an integer", param="lines") from None
    return web.json_response({"name": inst.name, "state": inst.state.value,
                              "lines": inst.last_lines(max(0, min(lines, LOG_LINES_MAX)))})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/gateway/models/{name:.+}/load", load)
    router.add_post("/gateway/models/{name:.+}/unload", unload)
    router.add_post("/gateway/models/{name:.+}/sleep", sleep)
    router.add_get("/gateway/models/{name:.+}/logs", logs)
