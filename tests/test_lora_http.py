"""LoRA adapters as models through a real gateway, with the fake backend serving them
(``--enable-lora``; the gateway sets VLLM_ALLOW_RUNTIME_LORA_UPDATING for a base with adapters).

An adapter is a folder holding ``adapter_config.json``; the fake tags an adapter's tokens, so
an answer shows which adapter served it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import GatewayProc, chat, fake_command
from helpers import metric
from security_helpers import error_of, last_backend_request, running


def adapter(folder: Path, rank: int = 8) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"r": rank, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return str(folder)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    tmp = tmp_path_factory.mktemp("lora")
    (tmp / "empty").mkdir()
    models = {
        "base": {"command": fake_command("--enable-lora", worker=False), "max_adapters": 2,
                 "adapters": {"sql": adapter(tmp / "sql"),
                              "chat": {"path": adapter(tmp / "chat"), "aliases": ["chatty"]},
                              "hollow": str(tmp / "empty"),  # no adapter_config.json
                              "huge": adapter(tmp / "huge", rank=64)}},  # over max_lora_rank
        "other": {"command": fake_command(worker=False)},
    }
    with running(tmp, models) as gateway:
        yield gateway


def ask(gw: GatewayProc, model: str) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", json=chat(model, max_tokens=3),
                      timeout=60)


def answer(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    text: str = r.json()["choices"][0]["message"]["content"]
    return text


def loaded_in_backend(gw: GatewayProc) -> list[str]:
    port = gw.model("base")["port"]
    cards = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()["data"]
    return [c["id"] for c in cards if c.get("parent") == "base"]


def admin(gw: GatewayProc, name: str, action: str) -> httpx.Response:
    return httpx.post(f"{gw.url}/gateway/models/{name}/{action}", timeout=60)


def test_models_lists_every_adapter_with_its_parent_before_any_is_loaded(
        gw: GatewayProc) -> None:
    cards = httpx.get(gw.url + "/v1/models", timeout=10).json()["data"]
    assert [(c["id"], c.get("parent")) for c in cards] == [
        ("base", None), ("sql", "base"), ("chat", "base"), ("hollow", "base"), ("huge", "base"),
        ("other", None)]
    assert gw.model("base")["state"] == "stopped"


def test_an_adapter_is_served_by_its_base_under_its_own_name(gw: GatewayProc) -> None:
    plain = answer(ask(gw, "base"))
    sql = answer(ask(gw, "sql"))
    assert sql != plain  # the adapter really applied
    assert last_backend_request(gw, "base")["body"]["model"] == "sql"
    # An alias is the gateway's own: the backend is sent the adapter's name.
    chat_answer = answer(ask(gw, "chatty"))
    assert last_backend_request(gw, "base")["body"]["model"] == "chat"
    assert chat_answer not in (plain, sql)
    assert sorted(loaded_in_backend(gw)) == ["chat", "sql"]
    # Accounted per adapter: metrics and the access log carry the adapter's name.
    metrics = httpx.get(gw.url + "/metrics", timeout=10).text
    assert 'vllm_gateway_requests_total{code="200",model="sql"} 1.0' in metrics
    assert 'vllm_gateway_requests_total{code="200",model="chat"} 1.0' in metrics
    assert re.search(r"POST /v1/chat/completions model=chat status=200", gw.log())
    status = gw.model("base")
    assert sorted(a["name"] for a in status["adapters"]) == ["chat", "sql"]


def test_an_adapters_streamed_tokens_are_counted_under_its_own_name(gw: GatewayProc) -> None:
    def tokens(model: str) -> float:
        text = httpx.get(gw.url + "/metrics", timeout=10).text
        return metric(text, "vllm_gateway_tokens_total", model=model, kind="completion")

    before = {name: tokens(name) for name in ("sql", "base")}
    body = {**chat("sql", max_tokens=3), "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        text = "".join(r.iter_text())
    assert text.rstrip().endswith("data: [DONE]")
    assert tokens("sql") == before["sql"] + 3
    assert tokens("base") == before["base"]


def test_an_unknown_adapter_is_a_404_like_an_unknown_model(gw: GatewayProc) -> None:
    error = error_of(ask(gw, "sql-v2"), 404)
    assert error["code"] == "model_not_found" and "'sql-v2'" in error["message"]


@pytest.mark.parametrize(("name", "reason"), [
    ("hollow", "No adapter found for"),
    ("huge", "LoRA rank 64 is greater than max_lora_rank 16"),
])
def test_an_adapter_that_fails_to_load_is_a_503_with_vllms_reason(
        gw: GatewayProc, name: str, reason: str) -> None:
    error = error_of(ask(gw, name), 503)
    assert reason in error["message"] and name in error["message"], error
    # The base is not taken down: it and its other adapters still answer.
    assert gw.model("base")["state"] == "ready"
    answer(ask(gw, "base"))
    answer(ask(gw, "sql"))


def test_operators_load_and_unload_an_adapter(gw: GatewayProc) -> None:
    answer(ask(gw, "sql"))
    r = admin(gw, "sql", "unload")
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "sql", "state": "unloaded", "parent": "base"}
    assert "sql" not in loaded_in_backend(gw)
    r = admin(gw, "chatty", "load")
    assert r.json() == {"name": "chat", "state": "loaded", "parent": "base"}
    assert "chat" in loaded_in_backend(gw)
    error = error_of(admin(gw, "hollow", "load"), 503)
    assert "No adapter found for" in error["message"]
    error = error_of(admin(gw, "sql", "sleep"), 409)
    assert error["message"] == "sql is an adapter of model base: sleep base instead"
    assert "no model named 'nope'" in error_of(admin(gw, "nope", "unload"), 404)["message"]


def test_an_adapter_is_loaded_again_after_its_base_restarts(gw: GatewayProc) -> None:
    answer(ask(gw, "sql"))
    assert admin(gw, "base", "unload").json()["state"] == "stopped"
    assert gw.model("base")["adapters"] == []
    first: Any = answer(ask(gw, "sql"))
    assert first and loaded_in_backend(gw) == ["sql"]
