"""The packaged fake vLLM backend, run as a real process on 127.0.0.1."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from helpers import free_port
from procutil import (
    fake_backend_cmd,
    group_pids,
    kill_group,
    port_open,
    wait_group_gone,
    wait_port,
    wait_port_blocking,
)

NAME = "tiny"
START_TIMEOUT_S = 20.0
OOM = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"


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


def spawn(directory: Path, *extra: str) -> Backend:
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    out, err = directory / f"{port}.out", directory / f"{port}.err"
    with out.open("wb") as out_file, err.open("wb") as err_file:
        proc = subprocess.Popen(
            fake_backend_cmd(port, NAME, *extra),
            stdout=out_file,
            stderr=err_file,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Backend(proc, port, out, err)


def stop(backend: Backend) -> None:
    kill_group(backend.proc.pid)
    backend.proc.wait(timeout=10)


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


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    backend = spawn(tmp_path_factory.mktemp("shared"), "--startup-delay", "0", "--tokens", "5")
    try:
        wait_port_blocking(backend.port, START_TIMEOUT_S, alive=backend.alive)
        yield backend
    finally:
        stop(backend)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


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


async def events(resp: aiohttp.ClientResponse, limit: int | None = None) -> list[str]:
    """The ``data:`` payloads of an SSE stream, up to ``limit`` of them."""
    found: list[str] = []
    while limit is None or len(found) < limit:
        line = await resp.content.readline()
        if not line:
            break
        if line.startswith(b"data: "):
            found.append(line[6:].decode().rstrip("\n"))
        else:
            assert line == b"\n", line
    return found


def chat(max_tokens: int | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": NAME, "messages": [{"role": "user", "content": "hi there"}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body | extra


async def test_port_refused_while_loading_then_open(started: Callable[..., Backend]) -> None:
    backend = started("--startup-delay", "2")
    await poll(lambda: "Loading model" in backend.stdout())
    assert not port_open(backend.port)
    worker = psutil.Process(backend.worker_pid())
    assert "--worker-of" in worker.cmdline()
    assert os.getpgid(worker.pid) == backend.proc.pid
    await wait_port(backend.port, START_TIMEOUT_S, alive=backend.alive)
    await poll(lambda: "Application startup complete." in backend.stderr())  # on stderr, as in vLLM


async def test_health_and_models(shared: Backend, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{shared.url}/health") as resp:
        assert resp.status == 200
        assert await resp.read() == b""
    async with http.get(f"{shared.url}/v1/models") as resp:
        listed = await resp.json()
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == [NAME]


async def test_chat_non_stream(shared: Backend, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{shared.url}/v1/chat/completions", json=chat(3)) as resp:
        body = await resp.json()
    assert body["model"] == NAME and body["object"] == "chat.completion"
    [choice] = body["choices"]
    assert choice["message"] == {
        "role": "assistant",
        "content": " tok0 tok1 tok2",
        "tool_calls": [],
    }
    assert choice["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 2, "total_tokens": 5, "completion_tokens": 3}
    # Without max_tokens the backend's --tokens (5 here) is the natural length.
    async with http.post(f"{shared.url}/v1/chat/completions", json=chat()) as resp:
        body = await resp.json()
    assert body["usage"]["completion_tokens"] == 5
    assert body["choices"][0]["finish_reason"] == "stop"


async def test_chat_stream_format(shared: Backend, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{shared.url}/v1/chat/completions", json=chat(2, stream=True)) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        data = await events(resp)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"]["content"] for c in chunks[1:]] == [" tok0", " tok1"]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "length"]
    assert all(c["model"] == NAME and "usage" not in c for c in chunks)
    usage_on = chat(2, stream=True, stream_options={"include_usage": True})
    async with http.post(f"{shared.url}/v1/chat/completions", json=usage_on) as resp:
        data = await events(resp)
    last = json.loads(data[-2])
    assert last["choices"] == []
    assert last["usage"] == {"prompt_tokens": 2, "total_tokens": 4, "completion_tokens": 2}


async def test_completions(shared: Backend, http: aiohttp.ClientSession) -> None:
    request = {"model": NAME, "prompt": "one two three", "max_tokens": 2}
    async with http.post(f"{shared.url}/v1/completions", json=request) as resp:
        body = await resp.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == " tok0 tok1"
    assert body["usage"]["prompt_tokens"] == 3
    async with http.post(f"{shared.url}/v1/completions", json=request | {"stream": True}) as resp:
        data = await events(resp)
    assert data[-1] == "[DONE]"
    assert [json.loads(d)["choices"][0]["text"] for d in data[:-1]] == [" tok0", " tok1"]


async def test_openai_sdk_reads_it(shared: Backend) -> None:
    import openai

    client = openai.AsyncOpenAI(base_url=f"{shared.url}/v1", api_key="unused", max_retries=0)
    async with client:
        done = await client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "x"}], max_tokens=2
        )
        assert done.choices[0].message.content == " tok0 tok1"
        stream = await client.chat.completions.create(
            model=NAME,
            messages=[{"role": "user", "content": "x"}],
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
        parts = [chunk async for chunk in stream]
    assert (
        "".join(c.choices[0].delta.content or "" for c in parts if c.choices) == " tok0 tok1 tok2"
    )
    assert parts[-1].usage is not None and parts[-1].usage.completion_tokens == 3


async def test_embeddings_are_deterministic(shared: Backend, http: aiohttp.ClientSession) -> None:
    request = {"model": NAME, "input": ["alpha", "beta", "alpha"]}
    async with http.post(f"{shared.url}/v1/embeddings", json=request) as resp:
        body = await resp.json()
    vectors = [d["embedding"] for d in body["data"]]
    assert vectors[0] == vectors[2] != vectors[1]
    assert abs(sum(v * v for v in vectors[0]) - 1.0) < 1e-3


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
async def test_unknown_model_is_404(
    shared: Backend, http: aiohttp.ClientSession, path: str
) -> None:
    request = {"model": "x", "messages": [], "prompt": "p", "input": "i"}
    async with http.post(f"{shared.url}{path}", json=request) as resp:
        assert resp.status == 404
        assert await resp.json() == {
            "error": {
                "message": "The model `x` does not exist.",
                "type": "NotFoundError",
                "param": "model",
                "code": 404,
            }
        }


async def test_fake_status_and_bad_requests(shared: Backend, http: aiohttp.ClientSession) -> None:
    url = f"{shared.url}/v1/chat/completions"
    async with http.post(url, json=chat(fake={"status": 503})) as resp:
        assert resp.status == 503
        assert (await resp.json())["error"]["type"] == "ServiceUnavailableError"
    async with http.post(url, json=chat(fake={"stall_after": -1})) as resp:
        assert resp.status == 400
    async with http.post(url, json=chat(stream_options={"include_usage": True})) as resp:
        assert resp.status == 400
    async with http.post(url, data=b"{not json") as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "BadRequestError"


async def test_last_request(shared: Backend, http: aiohttp.ClientSession) -> None:
    request = chat(1, extra_field={"kept": True})
    async with http.post(
        f"{shared.url}/v1/chat/completions", json=request, headers={"X-Probe": "42"}
    ):
        pass
    async with http.get(f"{shared.url}/fake/last_request") as resp:
        last = await resp.json()
    assert last["path"] == "/v1/chat/completions"
    assert last["headers"]["X-Probe"] == "42"
    assert last["body"] == request


async def test_in_flight_metrics_and_disconnects(
    shared: Backend, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{shared.url}/fake/reset_stats"):
        pass
    stalled = chat(stream=True, fake={"stall_after": 2})
    first = await http.post(f"{shared.url}/v1/chat/completions", json=stalled)
    second = await http.post(f"{shared.url}/v1/completions", json={"prompt": "p"} | stalled)
    assert len(await events(first, 2)) == 2
    assert len(await events(second, 2)) == 2
    now = await stats(http, shared)
    assert (now["in_flight"], now["max_in_flight"], now["requests"]) == (2, 2, 2)
    async with http.get(f"{shared.url}/metrics") as resp:
        text = await resp.text()
    assert f'vllm:num_requests_running{{engine="0",model_name="{NAME}"}} 2.0' in text
    assert f'vllm:num_requests_waiting{{engine="0",model_name="{NAME}"}} 0.0' in text
    assert "vllm:kv_cache_usage_perc{" in text
    first.close()
    second.close()

    async def both_gone() -> bool:
        now = await stats(http, shared)
        return bool(now["disconnects"] == 2 and now["in_flight"] == 0)

    await poll(both_gone)
    assert (await stats(http, shared))["completed"] == 0


async def test_disconnect_stops_generation(shared: Backend, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{shared.url}/fake/reset_stats"):
        pass
    long = chat(stream=True, fake={"tokens": 10000, "token_delay": 0.01})
    resp = await http.post(f"{shared.url}/v1/chat/completions", json=long)
    assert len(await events(resp, 3)) == 3
    resp.close()

    async def stopped() -> bool:
        now = await stats(http, shared)
        return bool(now["disconnects"] == 1 and now["in_flight"] == 0)

    await poll(stopped)
    async with http.get(f"{shared.url}/metrics") as metrics:
        assert 'vllm:num_requests_running{engine="0",model_name="tiny"} 0.0' in await metrics.text()


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
