"""Real vLLM on the CPU, reached directly (no gateway): proves the fixtures.

One server is shared by the module, since each start costs 20-50 s; the last
test stops it and checks that its whole process tree is gone. What is checked
is what a client sees: the OpenAI response shapes the gateway will relay.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import psutil
import pytest
from vllm_proc import VllmServer

pytestmark = pytest.mark.vllm

MODEL = "tiny"
MAX_TOKENS = 8
# Generation on a busy 2-core machine can stall for seconds: be generous.
TIMEOUT = httpx.Timeout(120.0)


@pytest.fixture(scope="module")
def server(launch_vllm: Any) -> VllmServer:
    started: VllmServer = launch_vllm(MODEL)
    return started


def post(server: VllmServer, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json=body, timeout=TIMEOUT)


def sse_events(lines: list[str]) -> list[str]:
    return [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_models_lists_the_served_name(server: VllmServer) -> None:
    response = httpx.get(f"{server.base_url}/v1/models", timeout=TIMEOUT)
    assert response.status_code == 200
    assert [m["id"] for m in response.json()["data"]] == [MODEL]


def test_chat_completion(server: VllmServer) -> None:
    response = post(server, "/v1/chat/completions", {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": MAX_TOKENS,
    })  # fmt: skip
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == MODEL
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant"
    assert isinstance(message["content"], str)
    assert 1 <= body["usage"]["completion_tokens"] <= MAX_TOKENS


def test_completion(server: VllmServer) -> None:
    response = post(server, "/v1/completions", {
        "model": MODEL, "prompt": "Once upon a time", "max_tokens": MAX_TOKENS,
    })  # fmt: skip
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "text_completion"
    assert isinstance(body["choices"][0]["text"], str)
    assert 1 <= body["usage"]["completion_tokens"] <= MAX_TOKENS


def test_chat_stream(server: VllmServer) -> None:
    request = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a story"}],
        "max_tokens": MAX_TOKENS,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    url = f"{server.base_url}/v1/chat/completions"
    with httpx.stream("POST", url, json=request, timeout=TIMEOUT) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(list(response.iter_lines()))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    # With include_usage, the last chunk carries the usage and no choices.
    assert chunks[-1]["choices"] == []
    usage = chunks[-1]["usage"]
    with_content = [c for c in chunks[1:-1] if c["choices"][0]["delta"].get("content")]
    assert 1 <= len(with_content) <= usage["completion_tokens"] <= MAX_TOKENS


def test_openai_sdk_chat(server: VllmServer) -> None:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", timeout=120.0)
    try:
        reply = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=MAX_TOKENS
        )
    finally:
        client.close()
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage is not None and reply.usage.completion_tokens <= MAX_TOKENS


def test_unknown_model_is_an_openai_404(server: VllmServer) -> None:
    response = post(server, "/v1/chat/completions", {
        "model": "no-such-model", "messages": [{"role": "user", "content": "Hi"}],
    })  # fmt: skip
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "NotFoundError"


def test_sigterm_to_the_group_leaves_no_process(server: VllmServer) -> None:
    """Last on purpose: it stops the module's server."""
    tree = server.tree()
    # api server, resource tracker, EngineCore, Worker
    assert len(tree) >= 3, tree
    assert {proc.pid for proc in tree} <= set(server.alive_in_group())

    took = server.stop()

    assert server.alive_in_group() == []
    survivors = [p for p in tree if _running(p)]
    assert survivors == [], f"still running after SIGTERM ({took:.1f} s): {survivors}"
