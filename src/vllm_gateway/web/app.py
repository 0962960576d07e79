"""``create_app(config)``: the gateway's web application, built and wired (no globals)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from ..auth import authenticator
from ..config import GatewayConfig
from ..gateway import Gateway
from ..launchers.base import Launcher
from . import admin, ops
from .keys import AUTH_KEY, GATEWAY_KEY, MAX_BODY_KEY
from .middleware import errors_middleware, paths_middleware
from .v1 import handle_v1, list_models


def create_app(config: GatewayConfig, *, nvml: Any = None,
               launchers: Mapping[str, Launcher] | None = None) -> web.Application:
    max_body = int(config.server.max_body_mb * 1024 * 1024)
    # Errors outermost, so a refused path is answered in the same shape as the rest.
    app = web.Application(middlewares=[errors_middleware, paths_middleware],
                          client_max_size=max_body)
    gateway = Gateway(config, nvml=nvml, launchers=launchers)
    app[GATEWAY_KEY] = gateway
    app[AUTH_KEY] = authenticator(config.auth)
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
    app.router.add_post("/v1/{tail:.+}", handle_v1)
    app.router.add_get("/v1/models", list_models)
    admin.add_routes(app.router)
    ops.add_routes(app.router)
    return app
