"""What the web layer hangs off the application and each request (no globals)."""

from __future__ import annotations

from aiohttp import web

from ..auth import Authenticator
from ..gateway import Gateway
from .paths import RequestPath

GATEWAY_KEY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)
AUTH_KEY: web.AppKey[Authenticator] = web.AppKey("auth", Authenticator)
MAX_BODY_KEY: web.AppKey[int] = web.AppKey("max_body", int)
# The request's path as the gateway decided it once (see paths.py), for every route.
PATH_KEY: web.RequestKey[RequestPath] = web.RequestKey("path", RequestPath)
