"""Waiting for a starting server to answer its health URL.

Polling starts fast and slows down; a log line saying the server is up wakes
the poller at once, so the gateway notices readiness within milliseconds
without hammering a server that takes minutes to load.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable

from .handles import ServerHandle

READY_MARKERS = ("Application startup complete", "Uvicorn running on")

# vLLM's own log prefix, e.g. "(EngineCore pid=12) ERROR 11-26 11:03:03 [core.py:1510] ".
_VLLM_PREFIX = re.compile(
    r"^(?:\([^()]*pid=\d+\)\s+)?(?:[A-Z]+\s+\d\d-\d\d \d\d:\d\d:\d\d\s+\[[^\]]*\]\s+)?"
)
# The last line of a Python traceback: "ValueError: ..." or "torch.OutOfMemoryError: ...".
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception): \S")
MAX_CAUSES = 3
LOG_LINES_SCANNED = 1000

Probe = Callable[[str, float], Awaitable[bool]]


class StartFailed(Exception):
    """The server exited before it became healthy."""


class StartTimedOut(Exception):
    """The server did not answer its health URL before the start-up deadline."""


def failure_causes(lines: Iterable[str]) -> list[str]:
    """The exception lines of a failed start, oldest first, each once, at most MAX_CAUSES.

    Why not just the last line: when vLLM's engine fails to start, the real
    cause (e.g. not enough KV-cache memory) is printed by the EngineCore process
    first; the API server then prints a long traceback of its own ending in
    "RuntimeError: Engine core initialization failed. See root cause above.",
    and resource-tracker warnings come after that. The last lines alone miss it.
    """
    found: list[str] = []
    for line in lines:
        text = _VLLM_PREFIX.sub("", line.strip(), count=1)
        if _EXCEPTION_LINE.match(text):
            if text in found:
                found.remove(text)
            found.append(text)
    return found[-MAX_CAUSES:]


def _exit_message(handle: ServerHandle) -> str:
    message = f"the server exited with code {handle.returncode} before it was ready"
    causes = failure_causes(handle.logs.tail(LOG_LINES_SCANNED))
    return f"{message} ({'; '.join(causes)})" if causes else message


async def wait_healthy(
    probe: Probe, handle: ServerHandle, health_path: str, deadline: float
) -> None:
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
                raise StartFailed(_exit_message(handle))
            if await probe(url, 5.0):
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise StartTimedOut("the server did not answer its health check in time")
            wake.clear()
            waker = asyncio.ensure_future(wake.wait())
            await asyncio.wait(
                {exited, waker}, timeout=min(delay, remaining), return_when=asyncio.FIRST_COMPLETED
            )
            waker.cancel()
            delay = min(delay * 1.5, 0.5)
    finally:
        unsubscribe()
        exited.cancel()
