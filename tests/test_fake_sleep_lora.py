"""The fake backend's sleep-mode and runtime-LoRA endpoints against a real process, as vLLM
0.32 answers them over HTTP (measured on its CPU build; see the fake's engine and lora modules).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fake_backend_helpers import NAME, Backend, spawn, stop
from helpers import wait_for
from procutil import wait_port_blocking

DEV = {"VLLM_SERVER_DEV_MODE": "1"}
LORA = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
# Bounds for a wait that should end at once; far above the fake's own delays.
PROMPT_S = 10.0


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Callable[..., Backend]]:
    """Start fake backends with an environment; ``start(env, *args)`` waits for the port."""
    started: list[Backend] = []

    def start(env: dict[str, str], *extra: str) -> Backend:
        found = spawn(tmp_path, "--startup-delay", "0", "--no-worker", *extra, env=env)
        started.append(found)
        wait_port_blocking(found.port, 20.0, alive=found.alive)
        return found

    yield start
    for found in started:
        stop(found)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def call(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any]:
    """Status and body (JSON when it parses, else text)."""
    async with http.request(method, url, **kwargs) as resp:
        text = await resp.text()
    try:
        return resp.status, json.loads(text)
    except ValueError:
        return resp.status, text


async def is_sleeping(http: aiohttp.ClientSession, b: Backend) -> bool:
    status, body = await call(http, "GET", f"{b.url}/is_sleeping")
    assert status == 200, body
    result: bool = body["is_sleeping"]
    return result


def chat(model: str = NAME, max_tokens: int = 4, **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return body | {"max_tokens": max_tokens} | extra


async def answer(http: aiohttp.ClientSession, b: Backend, model: str = NAME) -> str:
    status, body = await call(
        http, "POST", f"{b.url}/v1/chat/completions", json=chat(model, temperature=0)
    )
    assert status == 200, body
    assert body["model"] == model
    text: str = body["choices"][0]["message"]["content"]
    return text


SLEEP_PATHS = [("POST", "/sleep?level=1"), ("POST", "/wake_up"), ("GET", "/is_sleeping"),
               ("POST", "/collective_rpc"), ("POST", "/reset_prefix_cache")]
LORA_PATHS = [("POST", "/v1/load_lora_adapter"), ("POST", "/v1/unload_lora_adapter")]


async def test_the_endpoints_are_404_without_their_environment_switch(
    backend: Callable[..., Backend], http: aiohttp.ClientSession
) -> None:
    plain = backend({}, "--enable-lora")
    for method, path in SLEEP_PATHS + LORA_PATHS:
        assert await call(http, method, plain.url + path) == (404, {"detail": "Not Found"}), path
    # Each switch mounts its own set only.
    dev = backend(DEV, "--enable-lora")
    assert (await call(http, "GET", f"{dev.url}/is_sleeping"))[0] == 200
    for method, path in LORA_PATHS:
        assert (await call(http, method, dev.url + path))[0] == 404, path
    lora = backend(LORA, "--enable-lora")
    assert (await call(http, "GET", f"{lora.url}/is_sleeping"))[0] == 404
    assert (await call(http, "POST", f"{lora.url}/v1/load_lora_adapter", json={}))[0] == 400
    # With the switch on, another method is 405, as FastAPI answers it.
    assert (await call(http, "GET", f"{dev.url}/sleep"))[0] == 405


def test_dev_mode_is_read_as_an_integer(tmp_path: Path) -> None:
    b = spawn(tmp_path, "--startup-delay", "0", "--no-worker",
              env={"VLLM_SERVER_DEV_MODE": "true"})
    assert b.proc.wait(timeout=30) == 1
    assert "invalid literal for int() with base 10: 'true'" in b.stderr()


async def test_level_and_mode_come_from_the_query_string_only(
    backend: Callable[..., Backend], http: aiohttp.ClientSession
) -> None:
    b = backend(DEV)
    assert not await is_sleeping(http, b)
    # A body naming level 2 is ignored: the answer says level 1, as vLLM's does.
    status, body = await call(http, "POST", f"{b.url}/sleep", json={"level": 2, "mode": "wait"})
    assert (status, body) == (200, {"status": "sleeping", "level": 1})
    assert await is_sleeping(http, b)
    metrics = await (await http.get(f"{b.url}/metrics")).text()
    assert 'sleep_state="weights_offloaded"} 1.0' in metrics
    assert await call(http, "POST", f"{b.url}/wake_up") == (200, {"status": "awake", "tags": None})
    assert not await is_sleeping(http, b)

    status, body = await call(http, "POST", f"{b.url}/sleep?level=2&mode=wait")
    assert (status, body) == (200, {"status": "sleeping", "level": 2})
    metrics = await (await http.get(f"{b.url}/metrics")).text()
    assert 'sleep_state="discard_all"} 1.0' in metrics

    for query, param in [("level=3", "query.level"), ("level=x", "query.level"),
                         ("mode=later", "query.mode")]:
        status, body = await call(http, "POST", f"{b.url}/sleep?{query}")
        assert status == 400, query
        assert body["error"]["param"] == param


async def test_level_two_wakes_only_after_weights_reload_and_kv_cache(
    backend: Callable[..., Backend], http: aiohttp.ClientSession
) -> None:
    b = backend(DEV)
    await call(http, "POST", f"{b.url}/sleep?level=2&mode=wait")
    status, body = await call(http, "POST", f"{b.url}/wake_up?tags=weights")
    assert (status, body) == (200, {"status": "sleeping", "tags": ["weights"]})
    assert await is_sleeping(http, b)
    status, body = await call(
        http, "POST", f"{b.url}/collective_rpc", json={"method": "reload_weights"}
    )
    assert (status, body) == (200, {"results": [None]})
    assert await is_sleeping(http, b)
    status, body = await call(http, "POST", f"{b.url}/wake_up?tags=kv_cache")
    assert (status, body) == (200, {"status": "awake", "tags": ["kv_cache"]})
    assert not await is_sleeping(http, b)
    assert await call(http, "POST", f"{b.url}/reset_prefix_cache") == (200, {"success": True})


async def test_a_generation_sent_while_asleep_is_held_until_the_wake(
    backend: Callable[..., Backend], http: aiohttp.ClientSession
) -> None:
    b = backend(DEV, "--wake-delay", "0.3")
    before = await answer(http, b)
    await call(http, "POST", f"{b.url}/sleep?level=1&mode=wait")
    held = asyncio.create_task(answer(http, b))
    stream = await http.post(f"{b.url}/v1/chat/completions", json=chat(stream=True))
    # A stream gets its headers at once, then nothing until the wake.
    assert stream.status == 200
    assert stream.headers["Content-Type"].startswith("text/event-stream")
    first_line = asyncio.create_task(stream.content.readline())

    async def both_held() -> bool:
        return bool((await call(http, "GET", f"{b.url}/fake/stats"))[1]["held"] >= 2)

    await wait_for(both_held, PROMPT_S, "both generations held")
    # /health and /v1/models cannot tell a sleeping server from an awake one.
    assert (await call(http, "GET", f"{b.url}/health"))[0] == 200
    assert (await call(http, "GET", f"{b.url}/v1/models"))[0] == 200
    assert not held.done() and not first_line.done()

    await call(http, "POST", f"{b.url}/wake_up")
    assert await asyncio.wait_for(held, PROMPT_S) == before
    assert (await asyncio.wait_for(first_line, PROMPT_S)).startswith(b"data: ")
    rest = await asyncio.wait_for(stream.content.read(), PROMPT_S)
    assert rest.rstrip().endswith(b"data: [DONE]")
    stream.release()
    _, stats = await call(http, "GET", f"{b.url}/fake/stats")
    assert (stats["held"], stats["sleeps"], stats["full_wakes"]) == (0, 1, 1)


async def test_the_wake_delay_is_paid_once_per_sleep(
    backend: Callable[..., Backend], http: aiohttp.ClientSession
) -> None:
    b = backend(DEV, "--wake-delay", "0.5")
    loop = asyncio.get_running_loop()
    await call(http, "POST", f"{b.url}/sleep?level=1")
    started = loop.time()
    await call(http, "POST", f"{b.url}/wake_up")
    assert loop.time() - started >= 0.5
    # Already awake: no delay, still 200.
    started = loop.time()
    assert await call(http, "POST", f"{b.url}/wake_up") == (200, {"status": "awake", "tags": None})
    assert loop.time() - started < 0.5


async def test_stats_say_when_a_sleeper_holds_its_memory_again(
    backend: Callable[..., Backend], http: aiohttp.ClientSession
) -> None:
    b = backend(DEV, "--wake-delay", "0.5")

    async def stats() -> dict[str, Any]:
        found: dict[str, Any] = (await call(http, "GET", f"{b.url}/fake/stats"))[1]
        return found

    assert (await stats())["resident"] is True
    await call(http, "POST", f"{b.url}/sleep?level=2")
    assert (await stats())["resident"] is False
    # From the moment a wake begins the memory is coming back, though it still sleeps.
    waking = asyncio.create_task(call(http, "POST", f"{b.url}/wake_up?tags=weights"))

    async def resident_while_asleep() -> bool:
        s = await stats()
        return bool(s["resident"] and s["is_sleeping"])

    await wait_for(resident_while_asleep, PROMPT_S, "resident while still asleep")
    await waking
    assert (await stats())["resident"] is True and await is_sleeping(http, b)


async def test_a_silent_failure_answers_200_and_changes_nothing(
    backend: Callable[..., Backend], http: aiohttp.ClientSession
) -> None:
    no_sleep = backend(DEV, "--fail-sleep", "silent")
    status, body = await call(http, "POST", f"{no_sleep.url}/sleep?level=1&mode=wait")
    assert (status, body) == (200, {"status": "sleeping", "level": 1})
    assert not await is_sleeping(http, no_sleep)
    await answer(http, no_sleep)

    no_wake = backend(DEV, "--fail-wake", "silent")
    await call(http, "POST", f"{no_wake.url}/sleep?level=1&mode=wait")
    assert await call(http, "POST", f"{no_wake.url}/wake_up") == (
        200, {"status": "awake", "tags": None})
    assert await is_sleeping(http, no_wake)


async def test_a_loud_failure_answers_500(
    backend: Callable[..., Backend], http: aiohttp.ClientSession
) -> None:
    no_sleep = backend(DEV, "--fail-sleep", "error")
    status, body = await call(http, "POST", f"{no_sleep.url}/sleep?level=1")
    assert status == 500 and "sleep failed" in body["error"]["message"]
    assert not await is_sleeping(http, no_sleep)
    # A failed sleep leaves the engine open.
    await asyncio.wait_for(answer(http, no_sleep), PROMPT_S)

    no_wake = backend(DEV, "--fail-wake", "error")
    await call(http, "POST", f"{no_wake.url}/sleep?level=1")
    status, body = await call(http, "POST", f"{no_wake.url}/wake_up")
    assert status == 500 and "wake failed" in body["error"]["message"]
    assert await is_sleeping(http, no_wake)


async def test_garbage_after_wakes(backend: Callable[..., Backend], http: aiohttp.ClientSession) -> None:
    b = backend(DEV, "--garbage-after-wakes", "2")
    clean = await answer(http, b)
    for wakes in (1, 2):
        await call(http, "POST", f"{b.url}/sleep?level=1")
        await call(http, "POST", f"{b.url}/wake_up")
        assert (await answer(http, b) == clean) is (wakes < 2)


def adapter(folder: Path, rank: int = 8) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"r": rank, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return str(folder)


async def load(
    http: aiohttp.ClientSession, b: Backend, name: str, path: str
) -> tuple[int, Any]:
    return await call(
        http, "POST", f"{b.url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path}
    )


async def test_an_adapter_needs_a_folder_with_adapter_config(
    backend: Callable[..., Backend], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    b = backend(LORA, "--enable-lora", "--max-lora-rank", "8")
    empty = tmp_path / "empty"
    empty.mkdir()
    for path in (str(tmp_path / "missing"), str(empty)):
        status, body = await load(http, b, "ad1", path)
        assert status == 404, path
        # vLLM hides absolute paths in its messages.
        assert body["error"]["message"] == "Loading lora ad1 failed: No adapter found for <path>"
    status, body = await load(http, b, "ad1", adapter(tmp_path / "ad1"))
    assert (status, body) == (200, "Success: LoRA adapter 'ad1' added successfully.")
    status, body = await load(http, b, "ad1", adapter(tmp_path / "ad1"))
    assert status == 400 and "already been loaded" in body["error"]["message"]
    status, body = await load(http, b, NAME, adapter(tmp_path / "ad1"))
    assert status == 400 and "conflicts with a served base model" in body["error"]["message"]


async def test_adapters_answer_apart_from_the_base_and_from_each_other(
    backend: Callable[..., Backend], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    b = backend(LORA, "--enable-lora", "--max-loras", "2")
    base = await answer(http, b)
    # Not loaded: vLLM's 404 for an unknown model.
    status, body = await call(http, "POST", f"{b.url}/v1/chat/completions", json=chat("ad1"))
    assert status == 404 and body["error"]["param"] == "model"
    await load(http, b, "ad1", adapter(tmp_path / "one"))
    await load(http, b, "ad2", adapter(tmp_path / "two"))
    await load(http, b, "same", adapter(tmp_path / "one"))
    first, second = await answer(http, b, "ad1"), await answer(http, b, "ad2")
    assert len({base, first, second}) == 3
    assert await answer(http, b, "ad1") == first
    assert await answer(http, b, "same") == first
    assert await answer(http, b) == base


async def test_a_rank_above_max_lora_rank_or_lora_off_is_refused_and_the_base_serves(
    backend: Callable[..., Backend], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    b = backend(LORA, "--enable-lora", "--max-lora-rank", "8")
    status, body = await load(http, b, "big", adapter(tmp_path / "big", rank=16))
    assert status == 500
    assert "LoRA rank 16 is greater than max_lora_rank 8." in body["error"]["message"]
    assert b.alive()
    await answer(http, b)
    _, models = await call(http, "GET", f"{b.url}/v1/models")
    assert [card["id"] for card in models["data"]] == [NAME]
    # Without --enable-lora, a load is the worker's error too.
    status, body = await load(http, backend(LORA), "ad1", adapter(tmp_path / "ad1"))
    assert status == 500 and "LoRA is not enabled" in body["error"]["message"]


async def test_models_list_adapters_with_their_parent_until_unloaded(
    backend: Callable[..., Backend], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    b = backend(LORA, "--enable-lora")
    one = adapter(tmp_path / "one")
    await load(http, b, "ad1", one)
    await load(http, b, "ad2", adapter(tmp_path / "two"))
    _, models = await call(http, "GET", f"{b.url}/v1/models")
    cards = {card["id"]: card for card in models["data"]}
    assert list(cards) == [NAME, "ad1", "ad2"]
    assert cards[NAME].get("parent") is None
    assert (cards["ad1"]["parent"], cards["ad1"]["root"]) == (NAME, one)

    unload = f"{b.url}/v1/unload_lora_adapter"
    status, body = await call(http, "POST", unload, json={"lora_name": "ad1"})
    assert (status, body) == (200, "Success: LoRA adapter 'ad1' removed successfully.")
    _, models = await call(http, "GET", f"{b.url}/v1/models")
    assert [card["id"] for card in models["data"]] == [NAME, "ad2"]
    status, body = await call(http, "POST", unload, json={"lora_name": "ad1"})
    assert status == 404 and "cannot be found" in body["error"]["message"]
    # The unloaded name is unknown again to generation requests.
    status, _ = await call(http, "POST", f"{b.url}/v1/chat/completions", json=chat("ad1"))
    assert status == 404
