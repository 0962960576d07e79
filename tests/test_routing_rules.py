"""Routing and the OpenAI-shaped answers of the gateway, in-process (inproc.py): names and
aliases, the body forwarded, the model list and status document, bad requests and unknown
endpoints. Streams through the OpenAI client, crashes and signals are in test_core.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from harness import chat
from helpers import metric
from inproc import InProcessGateway, fake_model

Start = Callable[..., Awaitable[InProcessGateway]]


def two_models() -> dict[str, Any]:
    return {
        "alpha": fake_model(aliases=["a", "gpt-4o-mini"]),
        "beta": fake_model("--token-delay", "0.01"),
    }


async def test_routes_by_name_and_alias_and_rewrites_alias(inproc: Start) -> None:
    gw = await inproc(two_models())
    async with gw.client() as c:
        r = await c.post("/v1/chat/completions", json=chat("gpt-4o-mini", temperature=0.5))
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "alpha"
        assert r.headers["X-Request-ID"]
        port = (await gw.model("alpha"))["port"]
        last = (await c.get(f"http://127.0.0.1:{port}/fake/last_request")).json()
        # The alias was replaced by the name; nothing else in the body changed.
        assert last["body"] == chat("alpha", temperature=0.5)
        r = await c.post("/v1/completions", json={"model": "beta", "prompt": "x", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["model"] == "beta"
        r = await c.post("/v1/embeddings", json={"model": "a", "input": "hello"})
        assert r.status_code == 200 and r.json()["data"][0]["embedding"]
        # Later requests reuse the running server.
        await c.post("/v1/chat/completions", json=chat("alpha"))
    assert (await gw.model("alpha"))["port"] == port
    assert metric(await gw.metrics(), "vllm_gateway_model_starts_total", model="alpha") == 1.0


async def test_models_list_and_status_shape(inproc: Start) -> None:
    gw = await inproc(two_models())
    async with gw.client() as c:
        models = (await c.get("/v1/models")).json()
        assert models["object"] == "list"
        assert [m["id"] for m in models["data"]] == ["alpha", "beta"]
        assert (await c.get("/health")).status_code == 200
        assert (await c.get("/ready")).status_code == 200
    status = await gw.status()
    assert status["gpus"] == []
    first = status["models"][0]
    for key in ("name", "state", "vram_gb", "gpus", "in_flight", "queued", "last_used", "port",
                "pid", "max_concurrent", "max_queue"):
        assert key in first
    assert first["state"] == "stopped" and first["pid"] is None and first["port"] is None


@pytest.mark.parametrize("body,status,needle", [
    (b"not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b'{"messages": []}', 400, "no 'model'"),
    (b'{"model": 3}', 400, "'model' must be a string"),
    (b'{"model": "nope"}', 404, "nope"),
])
async def test_bad_requests_get_openai_errors(inproc: Start, body: bytes, status: int,
                                              needle: str) -> None:
    gw = await inproc(two_models())
    async with gw.client() as c:
        r = await c.post("/v1/chat/completions", content=body,
                         headers={"Content-Type": "application/json"})
    assert r.status_code == status
    error = r.json()["error"]
    assert needle in error["message"] and error["type"] and error["code"]


async def test_unknown_paths_and_models_for_admin_endpoints(inproc: Start) -> None:
    gw = await inproc(two_models())
    async with gw.client() as c:
        r = await c.get("/nowhere")
        assert r.status_code == 404 and "error" in r.json()
        r = await c.post("/gateway/models/nope/load")
        assert r.status_code == 404 and "nope" in r.json()["error"]["message"]
        r = await c.post("/gateway/models/nope/unload")
        assert r.status_code == 404
        r = await c.delete("/v1/models")
        assert r.status_code == 405 and "error" in r.json()
