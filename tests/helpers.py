"""What every suite shares: a free loopback port, waiting with a deadline, reading metrics.

Each exists once here; the harnesses (real processes, in-process gateways, vLLM,
Docker, Ray, browser) import them from this module.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

import httpx
from prometheus_client.parser import text_string_to_metric_families

HOST = "127.0.0.1"
T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _timed_out(what: str, timeout: float, last: object) -> AssertionError:
    return AssertionError(f"timed out after {timeout} s waiting for {what}; last value: {last!r}")


def wait_until(predicate: Callable[[], T | None], timeout: float = 20.0, interval: float = 0.05,
               what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy, and return that; fail after
    ``timeout`` s with the last value it returned."""
    deadline = time.monotonic() + timeout
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout, last)
        time.sleep(interval)


@overload
async def wait_for(check: Callable[[], Awaitable[T | None]], timeout: float = ...,
                   what: str = ..., interval: float | None = ...) -> T: ...


@overload
async def wait_for(check: Callable[[], T | None], timeout: float = ..., what: str = ...,
                   interval: float | None = ...) -> T: ...


async def wait_for(check: Callable[[], Any], timeout: float = 5.0, what: str = "condition",
                   interval: float | None = None) -> Any:
    """:func:`wait_until` in a running event loop; ``check`` may be a coroutine function.

    A plain check is asked every 10 ms; a coroutine (an HTTP round trip, often to a gateway
    in this same loop) every 30 ms, so that asking does not starve what it waits for."""
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if inspect.isawaitable(last):
            last = await last
            interval = 0.03 if interval is None else interval
        if last:
            return last
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout, last)
        await asyncio.sleep(0.01 if interval is None else interval)


def metric(text: str, name: str, default: float | None = 0.0, /, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``, from
    Prometheus' text format as ``/metrics`` answers it. Without such a sample: ``default``,
    or KeyError when it is None (for series that must be there)."""
    found = [float(sample.value)
             for family in text_string_to_metric_families(text) for sample in family.samples
             if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())]
    if not found and default is None:
        raise KeyError(f"no sample {name}{labels or ''} in the metrics")
    return sum(found) if found else float(default or 0.0)


def scrape(base_url: str, timeout: float = 60.0) -> str:
    """``GET /metrics`` of a gateway or a backend."""
    response = httpx.get(base_url + "/metrics", timeout=timeout)
    response.raise_for_status()
    return response.text


async def scrape_async(base_url: str, timeout: float = 30.0) -> str:
    """:func:`scrape` in a running event loop."""
    async with httpx.AsyncClient(timeout=timeout) as client:
        response = await client.get(base_url + "/metrics")
    response.raise_for_status()
    return response.text
