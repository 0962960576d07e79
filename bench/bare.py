"""The bare proxy: the least code that forwards the benchmark's requests on the gateway's stack.

    python -m bench.bare --upstream http://127.0.0.1:PORT --port PORT

An aiohttp server, one aiohttp client session with a keep-alive pool, uvloop, and nothing
else: no routing by model, admission, metrics, access log, request ids or header hygiene.
Small answers are read whole and sent in one write, streams are passed on chunk by chunk,
as the gateway does. Its row in the table is the floor of the stack the gateway runs on,
so the rest of the gateway's figure is the gateway's own work.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Callable, Sequence

import aiohttp
from aiohttp import web

SESSION_KEY: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM_KEY: web.AppKey[str] = web.AppKey("upstream", str)


async def forward(request: web.Request) -> web.StreamResponse:
    session = request.app[SESSION_KEY]
    body = await request.read()
    headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
    async with session.post(
        request.app[UPSTREAM_KEY] + request.path_qs, data=body, headers=headers
    ) as upstream:
        content_type = upstream.headers.get("Content-Type", "application/json")
        if not content_type.startswith("text/event-stream"):
            data = await upstream.read()
            return web.Response(
                status=upstream.status, body=data, headers={"Content-Type": content_type}
            )
        response = web.StreamResponse(
            status=upstream.status, headers={"Content-Type": content_type}
        )
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM_KEY] = upstream.rstrip("/")

    async def session_context(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=256)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
            app[SESSION_KEY] = session
            yield

    app.cleanup_ctx.append(session_context)
    app.router.add_get("/health", health)
    app.router.add_post("/{tail:.+}", forward)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare", description=__doc__)
    parser.add_argument("--upstream", required=True, help="the backend's base URL")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(create_app(args.upstream), args.host, args.port))


async def _serve(app: web.Application, host: str, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    main()
