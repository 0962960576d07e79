"""The packaged fake vLLM backend as a real process on 127.0.0.1, for its own tests
(test_fake_backend_api.py, test_fake_backend_process.py, test_fake_sleep_lora.py): start one in its own process
group, stop the whole group, poll for a condition, read its /fake/stats, build a chat body."""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from helpers import free_port
from procutil import fake_backend_cmd, kill_group

NAME = "tiny"
START_TIMEOUT_S = 20.0


@dataclass
class Backend:
    proc: subprocess.Popen[bytes]
    port: int
    out: Path
    err: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def worker_pid(self) -> int:
        [child] = psutil.Process(self.proc.pid).children()
        return child.pid


def spawn(directory: Path, *extra: str, env: dict[str, str] | None = None) -> Backend:
    """A fake backend with ``extra`` arguments; ``env`` replaces every VLLM_* variable of
    this environment (the dev-mode and LoRA switches), if given."""
    port = free_port()
    full_env = None if env is None else \
        {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")} | env
    directory.mkdir(parents=True, exist_ok=True)
    out, err = directory / f"{port}.out", directory / f"{port}.err"
    with out.open("wb") as out_file, err.open("wb") as err_file:
        proc = subprocess.Popen(
            fake_backend_cmd(port, NAME, *extra),
            stdout=out_file,
            stderr=err_file,
            stdin=subprocess.DEVNULL,
            env=full_env,
            start_new_session=True,
        )
    return Backend(proc, port, out, err)


def stop(backend: Backend) -> None:
    kill_group(backend.proc.pid)
    backend.proc.wait(timeout=10)


async def poll(check: Callable[[], Any], timeout: float = 10.0) -> None:
    """Poll ``check()`` (plain or async, returning truthy) within a deadline."""
    deadline = time.monotonic() + timeout
    while not (await result if inspect.isawaitable(result := check()) else result):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def stats(http: aiohttp.ClientSession, backend: Backend) -> dict[str, Any]:
    async with http.get(f"{backend.url}/fake/stats") as resp:
        result: dict[str, Any] = await resp.json()
        return result


def chat(max_tokens: int | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": NAME, "messages": [{"role": "user", "content": "hi there"}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body | extra
