"""The real gateway in front of real vLLM servers (CPU build, tiny local model).

Each vLLM start costs 20-90 s on a loaded machine, so one gateway serves the
whole module and the tests run in file order, each leaving the state the next
one starts from:

1. nothing running: ``/v1/models``, then a model whose command is wrong and one
   whose engine fails (503s carrying vLLM's own error lines);
2. ``alpha`` starts (start 1): chat and completions, streaming and not;
   vLLM's gauges in ``/gateway/status``; a client disconnect mid-stream;
3. ``beta`` is asked for; only one 8 GB model fits the declared 10 GB GPU, so
   ``alpha`` is evicted (start 2);
4. ``beta`` sits idle and is stopped, its whole process tree with it;
5. ``alpha`` again (start 3), then SIGTERM to the gateway: nothing of vLLM survives.

No GPU is used: the declared GPU only drives the accounting, and vLLM's CPU
build ignores CUDA_VISIBLE_DEVICES. ``{gpu_memory_utilization}`` is not passed
(vLLM's CPU build would read it as a share of host memory).
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import psutil
import pytest
from harness import GatewayProc
from helpers import HOST, metric, wait_until
from procutil import group_pids
from vllm_gateway_helpers import (
    HTTP_TIMEOUT_S,
    backend_gauges,
    backend_metrics,
    describe,
    events,
    gateway_tree,
    server_tree,
    serving,
    wait_all_gone,
)
from vllm_proc import VllmStack

pytestmark = pytest.mark.vllm

ALPHA, BETA, BROKEN, NO_KV = "alpha", "beta", "broken", "no-kv"
ALPHA_ALIAS = "tiny-chat"
GPU_GB, MODEL_GB = 10, 8
MAX_TOKENS = 8
# Long enough that a stream the client abandons would still be generating for
# half a minute or more (270-1,100 tokens/s here), so a finished "length"
# request would show that the disconnect did not reach vLLM. The tiny model
# allows 32,768 positions.
LONG_MODEL_LEN, LONG_MAX_TOKENS = 32768, 32000
IDLE_S = 15
GAUGES = ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc")


@pytest.fixture(scope="module")
def gw(vllm_stack: VllmStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    tmp = tmp_path_factory.mktemp("vllm-gateway")
    # vLLM listens on every interface unless told otherwise.
    local = dataclasses.replace(vllm_stack, extra_args=(*vllm_stack.extra_args, "--host", HOST))
    long_stack = dataclasses.replace(
        local, extra_args=(*local.extra_args, "--max-model-len", str(LONG_MODEL_LEN))
    )
    missing = dataclasses.replace(local, model_dir=tmp / "no-such-model")
    # Fails inside vLLM's engine, after its child processes started: too little KV cache.
    no_kv = dataclasses.replace(
        long_stack, extra_args=(*long_stack.extra_args, "--kv-cache-memory-bytes", "1M")
    )
    env = vllm_stack.server_env
    long_env = {**env, "VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"}
    models = {
        ALPHA: {
            "command": long_stack.command(),
            "vram_gb": MODEL_GB,
            "aliases": [ALPHA_ALIAS],
            "env": long_env,
        },
        BETA: {
            "command": local.command(),
            "vram_gb": MODEL_GB,
            "env": env,
            "idle_timeout_s": IDLE_S,
        },
        BROKEN: {"command": missing.command(), "vram_gb": 1, "env": env},
        NO_KV: {"command": no_kv.command(), "vram_gb": 1, "env": long_env},
    }
    with serving(tmp, models, gpus=[{"id": 0, "vram_gb": GPU_GB}],
                 server={"shutdown_timeout_s": 60}) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def trees() -> dict[str, list[psutil.Process]]:
    """Process trees recorded by one test for a later one (a server may stop in between)."""
    return {}


@pytest.fixture
def client(gw: GatewayProc) -> Iterator[openai.OpenAI]:
    # No retries: a retried 503 would hide the answer under test.
    sdk = openai.OpenAI(
        base_url=gw.url + "/v1", api_key="unused", timeout=HTTP_TIMEOUT_S, max_retries=0
    )
    yield sdk
    sdk.close()


def chat(client: openai.OpenAI, model: str) -> Any:
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=MAX_TOKENS
    )


def test_models_lists_every_configured_model_before_any_starts(
    gw: GatewayProc, client: openai.OpenAI
) -> None:
    assert [m.id for m in client.models.list()] == [ALPHA, BETA, BROKEN, NO_KV]
    assert {m["state"] for m in gw.status()["models"]} == {"stopped"}


def test_wrong_command_is_503_carrying_vllms_own_error(
    gw: GatewayProc, client: openai.OpenAI
) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        chat(client, BROKEN)
    assert caught.value.status_code == 503
    message = caught.value.response.json()["error"]["message"]
    assert BROKEN in message
    # The line vLLM itself ends with for a model folder that does not exist.
    assert "Repo id must be in the form" in message or "HFValidationError" in message, message
    broken = gw.model(BROKEN)
    assert broken["state"] == "backoff" and broken["pid"] is None
    assert gw.status()["gpus"][0]["used_gb"] == 0
    wait_until(lambda: not gw.model_pids(), 60, what="the failed server's processes to be gone")


def test_engine_failure_is_503_naming_the_root_cause(
    gw: GatewayProc, client: openai.OpenAI
) -> None:
    """vLLM prints the engine's error first, then a long traceback of its API server
    ("Engine core initialization failed. See root cause above.") and warnings: the
    cause is not among the last lines, yet the 503 must name it."""
    with pytest.raises(openai.APIStatusError) as caught:
        chat(client, NO_KV)
    assert caught.value.status_code == 503
    message = caught.value.response.json()["error"]["message"]
    assert "larger than the available KV cache memory" in message, message
    assert "larger than the available KV cache memory" in gw.model(NO_KV)["error"]
    wait_until(lambda: not gw.model_pids(), 60, what="the failed engine's processes to be gone")


def test_chat_and_completions_non_streaming(gw: GatewayProc, client: openai.OpenAI) -> None:
    reply = chat(client, ALPHA)  # starts alpha
    assert reply.model == ALPHA
    assert reply.choices[0].message.role == "assistant"
    assert isinstance(reply.choices[0].message.content, str)
    assert reply.usage is not None and 1 <= reply.usage.completion_tokens <= MAX_TOKENS
    # An alias is rewritten to the served name, which is the only one vLLM knows.
    done = client.completions.create(
        model=ALPHA_ALIAS, prompt="Once upon a time", max_tokens=MAX_TOKENS
    )
    assert done.model == ALPHA
    assert isinstance(done.choices[0].text, str)
    assert done.usage is not None and 1 <= done.usage.completion_tokens <= MAX_TOKENS
    alpha = gw.model(ALPHA)
    assert alpha["state"] == "ready" and alpha["gpus"] == [0]
    assert gw.status()["gpus"][0]["used_gb"] == MODEL_GB


def test_chat_and_completions_streaming(gw: GatewayProc, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=ALPHA,
        messages=[{"role": "user", "content": "Tell me a story"}],
        max_tokens=MAX_TOKENS,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    texts = [c.choices[0].delta.content for c in chunks[:-1] if c.choices]
    assert any(texts)
    assert 1 <= chunks[-1].usage.completion_tokens <= MAX_TOKENS

    pieces = list(
        client.completions.create(
            model=ALPHA, prompt="Once upon a time", max_tokens=MAX_TOKENS, stream=True
        )
    )
    assert pieces and all(p.model == ALPHA for p in pieces)
    assert pieces[-1].choices[0].finish_reason in ("length", "stop")
    gw.wait_counters_zero(60)


def test_status_shows_vllms_own_gauges(gw: GatewayProc) -> None:
    gauges = wait_until(
        lambda: backend_gauges(gw, ALPHA),
        60,
        interval=0.2,
        what="alpha's backend gauges in /gateway/status",
    )
    assert set(GAUGES) <= set(gauges), gauges
    assert all(isinstance(gauges[key], (int, float)) for key in GAUGES)
    assert 0 <= gauges["kv_cache_usage_perc"] <= 1
    # vLLM's own output is kept: uvicorn's line that the gateway takes as a hint of readiness.
    lines = httpx.get(gw.url + f"/gateway/models/{ALPHA}/logs?lines=1000", timeout=30).json()
    assert any("Application startup complete" in line for line in lines["lines"])

    # Nothing is in flight: once read again, vLLM has nothing running or waiting.
    def idle() -> bool:
        now = backend_gauges(gw, ALPHA) or {}
        return now.get("num_requests_running") == 0 and now.get("num_requests_waiting") == 0

    wait_until(idle, 60, interval=0.2, what="alpha's backend gauges at 0")


def test_client_disconnect_mid_stream_aborts_generation_in_vllm(
    gw: GatewayProc, client: openai.OpenAI
) -> None:
    """The client leaves mid-stream: vLLM must abort the request, not finish it.

    While vLLM generates flat out, this 2-core machine starves every other
    process (gateway and test client included) for up to a minute. So once the
    stream runs, vLLM's Worker is paused (SIGSTOP): the request stays running in
    vLLM, nothing else is starved, and the client leaves before it could finish.
    """
    alpha = gw.model(ALPHA)
    port = alpha["port"]
    worker = next(p for p in server_tree(alpha["pid"]) if "Worker" in p.name())
    length_done = metric(backend_metrics(port), "vllm:request_success_total", finished_reason="length")
    stream = client.completions.create(
        model=ALPHA,
        prompt="Once upon a time",
        max_tokens=LONG_MAX_TOKENS,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    try:
        for received, _ in enumerate(stream, start=1):
            if received >= 5:
                break
        worker.suspend()
        try:
            assert metric(backend_metrics(port), "vllm:num_requests_running") == 1, (
                "the stream ended before the client left: this machine is too slow for the test"
            )
            # The gateway's status shows vLLM working on it, read from vLLM's own gauges.
            wait_until(
                lambda: (backend_gauges(gw, ALPHA) or {}).get("num_requests_running", 0) >= 1,
                60,
                interval=0.2,
                what="num_requests_running >= 1 in /gateway/status",
            )
            assert gw.model(ALPHA)["in_flight"] == 1
        finally:
            stream.close()  # the client goes away mid-stream
    finally:
        worker.resume()

    wait_until(
        lambda: metric(backend_metrics(port), "vllm:num_requests_running") == 0,
        120,
        interval=0.2,
        what="vLLM's num_requests_running back to 0",
    )
    # Stopped, not finished: a request that ran to max_tokens would count as "length".
    after = backend_metrics(port)
    assert metric(after, "vllm:request_success_total", finished_reason="length") == length_done
    assert metric(after, "vllm:num_requests_waiting") == 0
    gw.wait_counters_zero(60)
    wait_until(
        lambda: (backend_gauges(gw, ALPHA) or {}).get("num_requests_running") == 0,
        60,
        interval=0.2,
        what="/gateway/status to show vLLM idle again",
    )


def test_swap_when_only_one_model_fits(
    gw: GatewayProc, client: openai.OpenAI, trees: dict[str, list[psutil.Process]]
) -> None:
    alpha_tree = server_tree(gw.model(ALPHA)["pid"])
    # api server, resource tracker, EngineCore, Worker (measured on the CPU build)
    assert len(alpha_tree) >= 3, describe(alpha_tree)

    reply = chat(client, BETA)  # 8 + 8 > 10: alpha must go first
    assert reply.model == BETA
    beta = gw.model(BETA)
    assert beta["state"] == "ready" and beta["gpus"] == [0]
    trees[BETA] = server_tree(beta["pid"])
    assert gw.model(ALPHA)["state"] == "stopped"
    assert gw.status()["gpus"][0]["used_gb"] == MODEL_GB
    wait_all_gone(alpha_tree, "the evicted alpha's process tree")
    evicted = [e["model"] for e in events(gw) if e["kind"] == "evicted"]
    assert evicted == [ALPHA]


def test_idle_model_is_stopped_with_its_whole_tree(
    gw: GatewayProc, trees: dict[str, list[psutil.Process]]
) -> None:
    beta_tree = trees[BETA]
    assert len(beta_tree) >= 3, describe(beta_tree)
    gw.wait_state(BETA, "stopped", timeout=IDLE_S + 120)
    wait_all_gone(beta_tree, "the idle beta's process tree")
    assert group_pids(beta_tree[0].pid) == []
    assert gw.status()["gpus"][0]["used_gb"] == 0
    assert [e["model"] for e in events(gw) if e["kind"] == "idle_stop"] == [BETA]


def test_sigterm_of_the_gateway_leaves_no_vllm_process(
    gw: GatewayProc, client: openai.OpenAI
) -> None:
    """Last on purpose: it stops the module's gateway."""
    assert chat(client, ALPHA).model == ALPHA  # starts alpha again
    # No model was restarted behind the tests' back (e.g. health probes timing out under load).
    assert not [e for e in events(gw) if e["kind"] in ("unhealthy", "crashed")]
    pid = gw.model(ALPHA)["pid"]
    procs = gateway_tree(gw)
    assert {p.pid for p in server_tree(pid)} <= {p.pid for p in procs}
    assert len(procs) >= 3, describe(procs)

    assert gw.stop(signal.SIGTERM, timeout=120) == 0

    wait_all_gone(procs, "vLLM's processes after SIGTERM of the gateway")
    assert group_pids(pid) == []
    with pytest.raises(httpx.TransportError):
        httpx.get(gw.url + "/health", timeout=5)
