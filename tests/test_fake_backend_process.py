"""The packaged fake vLLM backend's process life, each test with backends of its own: the
port refused while it loads (its worker in the same group), a failing start explained as
vLLM does, a crash after N requests leaving the worker behind, SIGTERM stopping main and
worker despite a hung /health, and bad arguments. Its HTTP API is in test_fake_backend_api.py."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import psutil
import pytest
from fake_backend_helpers import NAME, START_TIMEOUT_S, Backend, chat, poll, spawn, stats, stop
from helpers import free_port
from procutil import fake_backend_cmd, group_pids, port_open, wait_group_gone, wait_port

OOM = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Callable[..., Backend]]:
    """Start backends for one test; their whole groups are killed afterwards."""
    backends: list[Backend] = []

    def start(*extra: str) -> Backend:
        backend = spawn(tmp_path, *extra)
        backends.append(backend)
        return backend

    yield start
    for backend in backends:
        stop(backend)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def test_port_refused_while_loading_then_open(started: Callable[..., Backend]) -> None:
    backend = started("--startup-delay", "2")
    await poll(lambda: "Loading model" in backend.stdout())
    assert not port_open(backend.port)
    worker = psutil.Process(backend.worker_pid())
    assert "--worker-of" in worker.cmdline()
    assert os.getpgid(worker.pid) == backend.proc.pid
    await wait_port(backend.port, START_TIMEOUT_S, alive=backend.alive)
    await poll(lambda: "Application startup complete." in backend.stderr())  # on stderr, as in vLLM


async def test_fail_start(started: Callable[..., Backend]) -> None:
    backend = started("--fail-start", "--startup-delay", "0.1")
    assert await asyncio.to_thread(backend.proc.wait, START_TIMEOUT_S) == 1
    lines = backend.stderr().rstrip("\n").splitlines()
    # As with real vLLM, the cause comes first and the API server's generic error after it.
    assert OOM in lines and lines.index(OOM) < len(lines) - 1
    assert any(line.startswith("RuntimeError: Engine core initialization failed")
               for line in lines[lines.index(OOM):])
    assert "Loading model" in backend.stdout()
    assert "Application startup complete." not in backend.stdout() + backend.stderr()


@pytest.mark.parametrize("stream", [True, False])
async def test_crash_after_leaves_worker(
    started: Callable[..., Backend], http: aiohttp.ClientSession, stream: bool
) -> None:
    backend = started("--crash-after", "2", "--startup-delay", "0")
    await wait_port(backend.port, START_TIMEOUT_S, alive=backend.alive)
    worker = backend.worker_pid()
    url = f"{backend.url}/v1/chat/completions"
    async with http.post(url, json=chat(1)) as resp:
        assert resp.status == 200
    chunks: list[bytes] = []
    with pytest.raises(aiohttp.ClientError):
        async with http.post(url, json=chat(50, stream=stream)) as resp:
            while line := await resp.content.readline():
                chunks += [line] if line.startswith(b"data: ") else []
    # A stream dies after a couple of chunks; a plain request before any answer.
    assert len(chunks) == (2 if stream else 0)
    assert await asyncio.to_thread(backend.proc.wait, START_TIMEOUT_S) == 1
    assert group_pids(backend.proc.pid) == [worker]


async def test_sigterm_stops_main_and_worker_despite_hung_health(
    started: Callable[..., Backend], http: aiohttp.ClientSession
) -> None:
    backend = started("--startup-delay", "0", "--api-key", "sekrit")
    await wait_port(backend.port, START_TIMEOUT_S, alive=backend.alive)
    pgid = backend.proc.pid
    assert len(group_pids(pgid)) == 2
    async with http.get(f"{backend.url}/v1/models") as resp:
        assert resp.status == 401
    auth = {"Authorization": "Bearer sekrit"}
    async with http.get(f"{backend.url}/v1/models", headers=auth) as resp:
        assert resp.status == 200
    async with http.post(f"{backend.url}/fake/hang"):
        pass
    with pytest.raises(asyncio.TimeoutError):
        async with http.get(f"{backend.url}/health", timeout=aiohttp.ClientTimeout(total=0.5)):
            pass
    hung = asyncio.ensure_future(http.get(f"{backend.url}/health"))
    assert (await stats(http, backend))["pid"] == pgid
    started_at = time.monotonic()
    os.kill(pgid, signal.SIGTERM)
    assert await asyncio.to_thread(backend.proc.wait, 10) == 0
    await wait_group_gone(pgid, 10)
    assert time.monotonic() - started_at < 5
    with pytest.raises(aiohttp.ClientError):
        await hung
    assert "Application shutdown complete." in backend.stderr()


def test_bad_arguments_are_explained() -> None:
    cmd = fake_backend_cmd(free_port(), NAME, "--tokens", "0")
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "--tokens: must be at least 1" in done.stderr
