"""Running a gateway until SIGTERM or Ctrl-C, with the shutdown order written down once:
stop accepting, let in-flight requests finish up to ``server.shutdown_timeout_s``, cancel
the rest with a clear error, then stop every model server and wait for its processes."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from typing import Any

from aiohttp import web

from .config import GatewayConfig
from .web.app import create_app

log = logging.getLogger("vllm_gateway")


async def run_gateway(config: GatewayConfig, *, banner: str | None = None, nvml: Any = None) -> None:
    app = create_app(config, nvml=nvml)
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           handler_cancellation=True,
                           # The gateway cancels requests at its own deadline and writes them
                           # a clear error; aiohttp's own deadline only backs it up.
                           shutdown_timeout=config.server.shutdown_timeout_s + 5)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await runner.setup()
        site = web.TCPSite(runner, config.server.host, config.server.port, reuse_address=True)
        await site.start()
        # What start-up built lives as long as the process: out of the collector's sight, a
        # collection scans only what requests allocate (a tenth of the proxy path's CPU
        # went to scanning the modules, config and metrics each time). A larger youngest
        # generation lets most of a request's objects die by reference count before any
        # collection looks at them (the default of 700 ran one every request or two).
        gc.freeze()
        gc.set_threshold(20_000, 10, 10)
        log.info("listening on http://%s:%d", config.server.host, config.server.port)
        if banner:
            print(banner, flush=True)
        await stop.wait()
        log.info("shutting down: draining requests for up to %g s", config.server.shutdown_timeout_s)
    finally:
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped")
