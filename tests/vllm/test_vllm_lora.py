"""LoRA adapters through the gateway against a real vLLM server (CPU build, tiny local model).

The adapters are made at setup by ``scripts/make_tiny_lora.py`` in the vLLM venv (random
rank-8 ``q_proj``/``v_proj`` weights, a few KB; a rank-16 one for the refusal; no download).
One base, ``max_adapters: 2``, in order:

1. an adapter answers, at temperature 0, apart from the base (so it really applied);
2. a second adapter loads beside it: vLLM's own ``/v1/models`` lists both under the base;
3. a third unloads the least recently used one (vLLM's listing confirms), and the one
   unloaded comes back with its own answer when asked again;
4. an adapter that cannot load (no such folder; a rank above ``max_lora_rank``) is a 503
   carrying vLLM's reason, and the base keeps answering in the same server; what the gateway
   says is loaded is what vLLM lists.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import GatewayProc
from helpers import HOST
from vllm_gateway_helpers import HTTP_TIMEOUT_S, serving
from vllm_proc import VllmStack

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[2]
BASE = "tiny"
PROMPT = {"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}
LORA_ARGS = ("--enable-lora", "--max-loras", "{max_loras}", "--max-lora-rank", "{max_lora_rank}")


def make_adapter(python: Path, model: Path, out: Path, seed: int, rank: int = 8) -> str:
    done = subprocess.run(
        [str(python), str(ROOT / "scripts" / "make_tiny_lora.py"), str(model), str(out),
         "--seed", str(seed), "--rank", str(rank)],
        capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        pytest.fail(f"make_tiny_lora.py failed:\n{done.stdout}{done.stderr}", pytrace=False)
    return str(out)


@pytest.fixture(scope="module")
def gw(vllm_stack: VllmStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    tmp = tmp_path_factory.mktemp("vllm-lora")
    python, model = vllm_stack.python, vllm_stack.model_dir
    adapters = {f"ad{n}": make_adapter(python, model, tmp / f"ad{n}", seed=n) for n in (1, 2, 3)}
    adapters["big"] = make_adapter(python, model, tmp / "big", seed=4, rank=16)
    adapters["missing"] = str(tmp / "no-such-adapter")
    local = dataclasses.replace(
        vllm_stack, extra_args=(*vllm_stack.extra_args, "--host", HOST, *LORA_ARGS))
    models = {BASE: {"command": local.command(), "env": vllm_stack.server_env,
                     "adapters": adapters, "max_adapters": 2, "max_lora_rank": 8}}
    with serving(tmp, models) as gateway:
        yield gateway


def post(gw: GatewayProc, model: str) -> httpx.Response:
    return httpx.post(gw.url + "/v1/completions", json={"model": model, **PROMPT},
                      timeout=HTTP_TIMEOUT_S)


def complete(gw: GatewayProc, model: str) -> str:
    r = post(gw, model)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["model"] == model
    text = doc["choices"][0]["text"]
    assert isinstance(text, str)
    return text


def vllm_listing(gw: GatewayProc) -> dict[str, Any]:
    """vLLM's own ``/v1/models``, read straight from the base's server: id -> parent."""
    port = gw.model(BASE)["port"]
    r = httpx.get(f"http://{HOST}:{port}/v1/models", timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 200, r.text
    return {card["id"]: card.get("parent") for card in r.json()["data"]}


def loaded(gw: GatewayProc) -> list[str]:
    return [a["name"] for a in gw.model(BASE)["adapters"] or []]


@pytest.fixture(scope="module")
def answers(gw: GatewayProc) -> dict[str, str]:
    """Answers seen so far, by model; the base's first."""
    return {BASE: complete(gw, BASE)}


def test_an_adapter_answers_apart_from_the_base(gw: GatewayProc, answers: dict[str, str]) -> None:
    answers["ad1"] = complete(gw, "ad1")
    assert answers["ad1"] != answers[BASE]
    assert complete(gw, "ad1") == answers["ad1"]
    assert complete(gw, BASE) == answers[BASE]
    assert vllm_listing(gw) == {BASE: None, "ad1": BASE}


def test_a_second_adapter_loads_beside_it(gw: GatewayProc, answers: dict[str, str]) -> None:
    answers["ad2"] = complete(gw, "ad2")
    assert len({answers[BASE], answers["ad1"], answers["ad2"]}) == 3
    assert vllm_listing(gw) == {BASE: None, "ad1": BASE, "ad2": BASE}
    assert loaded(gw) == ["ad1", "ad2"]


def test_a_third_unloads_the_least_recently_used(gw: GatewayProc,
                                                 answers: dict[str, str]) -> None:
    complete(gw, "ad2")  # ad1 is now the least recently used
    answers["ad3"] = complete(gw, "ad3")
    assert vllm_listing(gw) == {BASE: None, "ad2": BASE, "ad3": BASE}
    assert loaded(gw) == ["ad2", "ad3"]
    # Asked again, ad1 is loaded again (ad2 goes) and answers as it did.
    assert complete(gw, "ad1") == answers["ad1"]
    assert vllm_listing(gw) == {BASE: None, "ad3": BASE, "ad1": BASE}


def test_an_adapter_that_cannot_load_is_a_503_with_vllms_reason(
        gw: GatewayProc, answers: dict[str, str]) -> None:
    pid = gw.model(BASE)["pid"]
    for name, reason in (("missing", "No adapter found"),
                         ("big", "LoRA rank 16 is greater than max_lora_rank 8")):
        r = post(gw, name)
        assert r.status_code == 503, r.text
        assert reason in r.json()["error"]["message"], r.text
    # The base was not taken down: same server, same answer. The gateway made room before
    # each load (unloading the least recently used adapter), so what it says is loaded is what
    # vLLM lists, and the adapter still loaded answers as before.
    base = gw.model(BASE)
    assert (base["state"], base["pid"]) == ("ready", pid)
    assert complete(gw, BASE) == answers[BASE]
    assert "ad1" in loaded(gw)
    assert vllm_listing(gw) == {BASE: None} | {name: BASE for name in loaded(gw)}
    assert complete(gw, "ad1") == answers["ad1"]
