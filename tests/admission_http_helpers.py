"""Async helpers for the admission and retry suites: status and counters, holding slots.

They take any gateway with a ``url``: a real process (harness.GatewayProc) or one in this
event loop (inproc.InProcessGateway).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import aiohttp
import httpx
from harness import chat
from helpers import metric, scrape_async, wait_for

# Requests that hold a backend slot until the test cancels them (a minute of tokens).
HOLD = {"token_delay": 0.05, "tokens": 1200}
# Log lines that mean an exception escaped somewhere in the gateway.
UNHANDLED = ("Traceback", "Error handling request", "exception was never retrieved",
             "Task was destroyed")


class Served(Protocol):
    @property
    def url(self) -> str: ...


async def model_status(gw: Served, name: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as c:
        doc = (await c.get(gw.url + "/gateway/status")).json()
    for model in doc["models"]:
        if model["name"] == name:
            return dict(model)
    raise KeyError(name)


async def backend_stats(port: int) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as c:
        doc: dict[str, Any] = (await c.get(f"http://127.0.0.1:{port}/fake/stats")).json()
        return doc


async def metrics_text(gw: Served) -> str:
    return await scrape_async(gw.url)


async def gauges(gw: Served, name: str) -> tuple[float, float]:
    """(in_flight, queued) of a model as /metrics shows them."""
    text = await metrics_text(gw)
    return (metric(text, "vllm_gateway_requests_in_flight", None, model=name),
            metric(text, "vllm_gateway_requests_queued", None, model=name))


async def wait_counts(gw: Served, name: str, in_flight: int, queued: int,
                      timeout: float = 15.0) -> dict[str, Any]:
    seen: list[tuple[str, int, int]] = []

    async def check() -> dict[str, Any] | None:
        m = await model_status(gw, name)
        if not seen or seen[-1] != (m["state"], m["in_flight"], m["queued"]):
            seen.append((m["state"], m["in_flight"], m["queued"]))
        return m if (m["in_flight"], m["queued"]) == (in_flight, queued) else None
    try:
        found: dict[str, Any] = await wait_for(
            check, timeout, f"{name}: in_flight={in_flight}, queued={queued}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; (state, in_flight, queued) seen: {seen[-8:]}") from None
    return found


def session() -> aiohttp.ClientSession:
    """A client whose every request has its own connection, closed when it is cancelled."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True),
                                 timeout=aiohttp.ClientTimeout(total=120))


async def read_all(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, bytes]:
    async with http.post(url + "/v1/chat/completions", json=body) as resp:
        return resp.status, await resp.read()


def hold(http: aiohttp.ClientSession, gw: Served, model: str) -> asyncio.Task[tuple[int, bytes]]:
    """A streaming request that keeps a slot busy (or waits for one) until cancelled."""
    body = chat(model, stream=True, fake=HOLD)
    return asyncio.create_task(read_all(http, gw.url, body))


async def cancel(*tasks: asyncio.Task[Any]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def assert_full_concurrency(gw: Served, name: str, n: int) -> None:
    """``n`` parallel requests all reach the backend at once, none waits."""
    port = (await model_status(gw, name))["port"]
    async with session() as http:
        holders = [hold(http, gw, name) for _ in range(n)]
        try:
            await wait_counts(gw, name, n, 0)

            async def backend_has_all() -> bool:
                return bool((await backend_stats(port))["in_flight"] == n)
            await wait_for(backend_has_all, 15, f"{n} requests in flight at the backend")
        finally:
            await cancel(*holders)
    await wait_counts(gw, name, 0, 0)
