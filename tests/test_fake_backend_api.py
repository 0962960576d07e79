"""The packaged fake vLLM backend's HTTP API, on one backend process shared by the module:
health and models, chat and completions (plain and streamed, read by the OpenAI SDK too),
embeddings, unknown models, scripted statuses and bad requests, the last request, in-flight
metrics, and disconnects stopping generation. Its process life (loading, failing starts,
crashes, SIGTERM, bad arguments) is in test_fake_backend_process.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from fake_backend_helpers import NAME, START_TIMEOUT_S, Backend, chat, poll, spawn, stats, stop
from procutil import wait_port_blocking


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
