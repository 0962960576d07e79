"""The swap path: how much the gateway adds when a request finds its model stopped.

Two measurements, from the same fake backend command the gateway is configured
with. Alone: from spawning the backend to its port accepting connections (the
backend's own start-up). Through the gateway: from sending a request for the
stopped model to the first byte of the answer. The difference is what the
gateway adds: noticing the port is open, routing, and proxying the first
response of a freshly started server.

Start-up time moves with the machine's load, so the two are measured in pairs,
one right after the other (in alternating order), and the overhead is the
median of the differences within pairs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp
import psutil

from .check import request_body
from .peers import SWAP_MODEL, Endpoint
from .procs import LOOPBACK, Processes, free_port, tree, wait_port
from .stats import median

BACKEND_MARK = "fake_vllm"
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class SwapResult:
    backend_start_ms: list[float]
    backend_first_byte_ms: list[float]
    gateway_first_byte_ms: list[float]

    def figures(self) -> dict[str, float | None]:
        pairs = zip(self.gateway_first_byte_ms, self.backend_start_ms, strict=True)
        return {
            "swap_backend_start_ms": median(self.backend_start_ms),
            "swap_backend_first_byte_ms": median(self.backend_first_byte_ms),
            "swap_first_byte_ms": median(self.gateway_first_byte_ms),
            "swap_overhead_ms": median([through - start for through, start in pairs]),
        }


async def first_byte_s(url: str, headers: dict[str, str], timeout_s: float) -> float:
    """Seconds from sending a streamed request to the first byte of its body; reads the rest."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    body = request_body(SWAP_MODEL, 1, stream=True)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        start = time.perf_counter()
        async with session.post(
            url, data=body, headers={"Content-Type": "application/json", **headers}
        ) as resp:
            first = await resp.content.readany()
            elapsed = time.perf_counter() - start
            rest = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {(first + rest)[:300]!r}")
    return elapsed


def backend_alone(
    procs: Processes,
    backend_argv: Callable[[str, str], list[str]],
    cpus: Sequence[int] | None,
) -> tuple[float, float]:
    """Start-up (spawn to port open) and first-byte time, in ms, of the backend alone."""
    port = free_port()
    spawned = time.perf_counter()
    child = procs.spawn("swap-backend", backend_argv(str(port), SWAP_MODEL), cpus=cpus)
    try:
        wait_port(child, port, STOP_TIMEOUT_S)
        start_ms = (time.perf_counter() - spawned) * 1e3
        url = f"http://{LOOPBACK}:{port}/v1/chat/completions"
        first_ms = asyncio.run(first_byte_s(url, {}, STOP_TIMEOUT_S)) * 1e3
    finally:
        procs.stop(child)
    return start_ms, first_ms


def _backends_under(pid: int) -> list[psutil.Process]:
    found = []
    for proc in tree(pid)[1:]:
        try:
            if any(BACKEND_MARK in part for part in proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


async def _unload(endpoint: Endpoint) -> None:
    url = f"{endpoint.base_url}/gateway/models/{SWAP_MODEL}/unload"
    timeout = aiohttp.ClientTimeout(total=STOP_TIMEOUT_S)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(url, headers=endpoint.headers) as resp,
    ):
        # 404/409 may mean "not running" on a gateway that says so; anything else is a bug.
        if resp.status >= 300 and resp.status not in (404, 409):
            raise RuntimeError(f"unload answered HTTP {resp.status}: {await resp.text()}")


def wait_stopped(pid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while _backends_under(pid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the {SWAP_MODEL} backend still runs {timeout_s:g} s after unload")
        time.sleep(0.02)


def through_gateway(endpoint: Endpoint) -> float:
    """First-byte time, in ms, of a request that finds the swap model stopped."""
    assert endpoint.child is not None
    asyncio.run(_unload(endpoint))
    wait_stopped(endpoint.child.pid, STOP_TIMEOUT_S)
    url = f"{endpoint.base_url}/v1/chat/completions"
    first_ms = asyncio.run(first_byte_s(url, endpoint.headers, STOP_TIMEOUT_S)) * 1e3
    asyncio.run(_unload(endpoint))
    wait_stopped(endpoint.child.pid, STOP_TIMEOUT_S)
    return first_ms


def measure(
    procs: Processes,
    endpoint: Endpoint,
    backend_argv: Callable[[str, str], list[str]],
    cpus: Sequence[int] | None,
    repeats: int,
) -> SwapResult:
    starts: list[float] = []
    direct_first: list[float] = []
    through: list[float] = []
    for index in range(repeats):
        if index % 2:
            through.append(through_gateway(endpoint))
        start_ms, first_ms = backend_alone(procs, backend_argv, cpus)
        starts.append(start_ms)
        direct_first.append(first_ms)
        if not index % 2:
            through.append(through_gateway(endpoint))
    return SwapResult(starts, direct_first, through)
