"""The sleep tier against a real vLLM server (CPU build, tiny local model).

vLLM's CPU build refuses ``--enable-sleep-mode`` but, with ``VLLM_SERVER_DEV_MODE=1`` (which
the gateway sets for a model with ``sleep`` on), its engine pauses on ``/sleep``, reports it on
``/is_sleeping`` and resumes on ``/wake_up``; no memory moves on the CPU. So this drives the
gateway through a real sleep and a real wake of a real engine:

1. ``sleepy`` starts and answers at temperature 0 (the gateway records its wake-check answer);
2. idle for ``IDLE_S``, it goes to sleep: state ``sleeping``, vLLM's own ``/is_sleeping`` true;
3. a request wakes it and gets the same answer as before the sleep; ``/is_sleeping`` false;
4. a manual sleep at level 2, then a wake through the three-step level-2 wake;
5. SIGTERM to the gateway leaves nothing of vLLM.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import httpx
import pytest
from harness import GatewayProc
from helpers import HOST, metric, wait_until
from vllm_gateway_helpers import (
    HTTP_TIMEOUT_S,
    events,
    serving,
)
from vllm_proc import VllmStack

pytestmark = pytest.mark.vllm

SLEEPY, DEEP = "sleepy", "deep"
IDLE_S = 8
PROMPT = {"prompt": "Once upon a time", "max_tokens": 6, "temperature": 0}


@pytest.fixture(scope="module")
def gw(vllm_stack: VllmStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    tmp = tmp_path_factory.mktemp("vllm-sleep")
    local = dataclasses.replace(vllm_stack, extra_args=(*vllm_stack.extra_args, "--host", HOST))
    models = {
        SLEEPY: {"command": local.command(), "vram_gb": 4, "env": vllm_stack.server_env,
                 "sleep": 1, "idle_timeout_s": IDLE_S},
        DEEP: {"command": local.command(), "vram_gb": 4, "env": vllm_stack.server_env,
               "sleep": 2},
    }
    with serving(tmp, models, gpus=[{"id": 0, "vram_gb": 10}]) as gateway:
        yield gateway


def complete(gw: GatewayProc, model: str) -> str:
    r = httpx.post(gw.url + "/v1/completions", json={"model": model, **PROMPT},
                   timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 200, r.text
    text = r.json()["choices"][0]["text"]
    assert isinstance(text, str)
    return text


def gateway_metrics(gw: GatewayProc) -> str:
    return httpx.get(gw.url + "/metrics", timeout=HTTP_TIMEOUT_S).text


def is_sleeping(gw: GatewayProc, model: str) -> bool:
    port = gw.model(model)["port"]
    r = httpx.get(f"http://{HOST}:{port}/is_sleeping", timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 200, r.text
    value = r.json()["is_sleeping"]
    assert isinstance(value, bool)
    return value


@pytest.fixture(scope="module")
def before(gw: GatewayProc) -> str:
    return complete(gw, SLEEPY)


def test_an_idle_model_goes_to_sleep_and_vllm_says_so(gw: GatewayProc, before: str) -> None:
    assert gw.model(SLEEPY)["state"] == "ready" and not is_sleeping(gw, SLEEPY)
    asleep = gw.wait_state(SLEEPY, "sleeping", timeout=IDLE_S + 120)
    assert asleep["sleep_level"] == 1 and asleep["pid"] is not None
    assert is_sleeping(gw, SLEEPY)
    assert gw.status()["host_memory"]["used_gb"] == 4
    assert any(e["kind"] == "asleep" and e["model"] == SLEEPY for e in events(gw))


def test_a_request_wakes_it_with_the_same_answer(gw: GatewayProc, before: str) -> None:
    pid = gw.model(SLEEPY)["pid"]
    assert complete(gw, SLEEPY) == before
    woken = gw.model(SLEEPY)
    assert woken["state"] == "ready" and woken["pid"] == pid  # woken, not restarted
    assert woken["last_wake_s"] is not None and not is_sleeping(gw, SLEEPY)
    kinds = [e["kind"] for e in events(gw) if e["model"] == SLEEPY]
    assert "woken" in kinds and "wake_failed" not in kinds
    assert metric(gateway_metrics(gw), "vllm_gateway_wakes_total", model=SLEEPY) == 1


def test_level_two_sleep_and_its_three_step_wake(gw: GatewayProc) -> None:
    answer = complete(gw, DEEP)
    pid = gw.model(DEEP)["pid"]
    r = httpx.post(gw.url + f"/gateway/models/{DEEP}/sleep", timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 200, r.text
    wait_until(lambda: gw.model(DEEP)["state"] == "sleeping", 120, what="deep asleep")
    assert gw.model(DEEP)["sleep_level"] == 2 and is_sleeping(gw, DEEP)
    assert complete(gw, DEEP) == answer
    assert gw.model(DEEP)["pid"] == pid and not is_sleeping(gw, DEEP)
    assert metric(gateway_metrics(gw), "vllm_gateway_sleeps_total", model=DEEP, level="2") == 1
