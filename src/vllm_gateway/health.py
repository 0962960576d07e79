"""Waiting for a starting server to answer its health URL.

Polling starts fast and slows down; a log line saying the server is up wakes
the poller at once, so the gateway notices readiness within milliseconds
without hammering a server that takes minutes to load.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from .launchers.base import ServerHandle

READY_MARKERS = ("Application startup complete", "Uvicorn running on")

Probe = Callable[[str, float], Awaitable[bool]]


class StartFailed(Exception):
    """The server exited before it became healthy."""


class StartTimedOut(Exception):
    """The server did not answer its health URL before the start-up deadline."""


async def wait_healthy(probe: Probe, handle: ServerHandle, health_path: str, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    url = handle.base_url + health_path
    wake = asyncio.Event()

    def on_line(line: str) -> None:
        if any(marker in line for marker in READY_MARKERS):
            wake.set()

    unsubscribe = handle.logs.subscribe(on_line)
    exited = asyncio.ensure_future(handle.wait_exit())
    delay = 0.01
    try:
        while True:
            if not handle.alive():
                await asyncio.sleep(0.05)  # let the pipes deliver the last lines
                raise StartFailed(f"the server exited with code {handle.returncode} before it was ready")
            if await probe(url, 5.0):
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise StartTimedOut("the server did not answer its health check in time")
            wake.clear()
            waker = asyncio.ensure_future(wake.wait())
            await asyncio.wait({exited, waker}, timeout=min(delay, remaining),
                               return_when=asyncio.FIRST_COMPLETED)
            waker.cancel()
            delay = min(delay * 1.5, 0.5)
    finally:
        unsubscribe()
        exited.cancel()
