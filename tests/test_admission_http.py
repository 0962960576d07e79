"""Admission control end to end: concurrency limits, a bounded FIFO queue, 429s, and
exact counters after a storm of cancelled requests (a real gateway, fake backends)."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

import httpx
from admission_http_helpers import (
    UNHANDLED,
    assert_full_concurrency,
    backend_stats,
    cancel,
    gauges,
    hold,
    metrics_text,
    model_status,
    read_all,
    session,
    wait_counts,
    wait_for,
)
from harness import chat, fake_command

STORM = 240
STORM_SLOTS = 4


async def test_twelve_requests_never_exceed_max_concurrent(gateway: Any) -> None:
    gw = gateway({"pair": {"command": fake_command(worker=False), "max_concurrent": 2}})
    seen: list[int] = []
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            seen.append((await model_status(gw, "pair"))["in_flight"])
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    async with httpx.AsyncClient(base_url=gw.url, timeout=60) as c:
        replies = await asyncio.gather(*(
            c.post("/v1/chat/completions",
                   json=chat("pair", f"q{i}", fake={"token_delay": 0.05, "tokens": 4}))
            for i in range(12)))
    done.set()
    await watcher
    assert [r.status_code for r in replies] == [200] * 12
    stats = await backend_stats((await model_status(gw, "pair"))["port"])
    assert stats["requests"] == 12 and stats["completed"] == 12
    # The limit was reached (the queue really fed two slots) and never passed.
    assert stats["max_in_flight"] == 2
    assert max(seen) <= 2


async def test_full_queue_is_429_with_retry_after_and_the_limits(gateway: Any) -> None:
    gw = gateway({"tight": {"command": fake_command(worker=False), "max_concurrent": 1,
                            "max_queue": 2}})
    async with session() as http:
        holders = [hold(http, gw, "tight") for _ in range(3)]
        try:
            await wait_counts(gw, "tight", 1, 2)
            async with httpx.AsyncClient(base_url=gw.url, timeout=30) as c:
                r = await c.post("/v1/chat/completions", json=chat("tight"))
        finally:
            await cancel(*holders)
    assert r.status_code == 429, r.text
    assert int(r.headers["Retry-After"]) >= 1
    error = r.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"]
    for needle in ("tight", "max_concurrent 1", "max_queue 2"):
        assert needle in error["message"]
    await wait_counts(gw, "tight", 0, 0)
    metrics = await metrics_text(gw)
    assert 'vllm_gateway_requests_total{code="429",model="tight"} 1.0' in metrics


async def test_waiting_requests_are_served_first_come_first_served(gateway: Any) -> None:
    gw = gateway({"fifo": {"command": fake_command(worker=False), "max_concurrent": 1}})
    finished: list[int] = []

    async def ask(c: httpx.AsyncClient, i: int) -> None:
        r = await c.post("/v1/chat/completions",
                         json=chat("fifo", f"q{i}", fake={"token_delay": 0.1, "tokens": 3}))
        assert r.status_code == 200, r.text
        finished.append(i)

    async with session() as http, httpx.AsyncClient(base_url=gw.url, timeout=60) as c:
        # The first request is cold: it and the next ones wait for the model to start, then
        # the blocker keeps the only slot until everyone has lined up in a known order.
        blocker = hold(http, gw, "fifo")
        await wait_for(lambda: _admitted(gw, "fifo", 1), 30, "the blocker admitted")
        asks = []
        for i in range(5):
            asks.append(asyncio.create_task(ask(c, i)))
            await wait_for(lambda n=i + 2: _admitted(gw, "fifo", n), 30, f"request {i} queued")
        await wait_counts(gw, "fifo", 1, 5, timeout=30)
        await cancel(blocker)
        await asyncio.wait_for(asyncio.gather(*asks), 60)
    assert finished == [0, 1, 2, 3, 4]
    await wait_counts(gw, "fifo", 0, 0)


async def _admitted(gw: Any, model: str, n: int) -> bool:
    m = await model_status(gw, model)
    return bool(m["in_flight"] + m["queued"] == n)


async def test_client_leaving_the_queue_frees_its_place_at_once(gateway: Any) -> None:
    gw = gateway({
        "busy": {"command": fake_command(worker=False), "max_concurrent": 1},
        "cold": {"command": fake_command(worker=False, startup_delay=60)},
    })
    async with session() as http:
        blocker = hold(http, gw, "busy")
        try:
            await wait_counts(gw, "busy", 1, 0, timeout=30)
            waiting = hold(http, gw, "busy")
            await wait_counts(gw, "busy", 1, 1)
            began = time.monotonic()
            await cancel(waiting)
            # The place is free while the slot is still taken: the leaver was removed,
            # not served.
            await wait_counts(gw, "busy", 1, 0, timeout=3)
            assert time.monotonic() - began < 3
        finally:
            await cancel(blocker)
        # A stream waiting for its model gets loading comments (its response is already
        # open); leaving then frees the place too, while the model is still starting.
        loading = asyncio.Event()
        starting = asyncio.create_task(_read_until_cancelled(http, gw.url, "cold", loading))
        await asyncio.wait_for(loading.wait(), 20)
        await cancel(starting)
        m = await wait_counts(gw, "cold", 0, 0, timeout=3)
        assert m["state"] == "starting"
    await wait_counts(gw, "busy", 0, 0)
    assert (await backend_stats((await model_status(gw, "busy"))["port"]))["requests"] == 1


async def _read_until_cancelled(http: Any, url: str, model: str, loading: asyncio.Event) -> None:
    async with http.post(url + "/v1/chat/completions", json=chat(model, stream=True)) as resp:
        async for chunk in resp.content.iter_any():
            if chunk.startswith(f": loading model {model}".encode()):
                loading.set()


def test_env_limits_override_defaults_and_models_override_env(gateway: Any) -> None:
    nowhere = "http://127.0.0.1:9"  # never contacted: only the limits are read
    models = {"plain": {"url": nowhere},
              "own": {"url": nowhere, "max_concurrent": 2, "max_queue": 5},
              "half": {"url": nowhere, "max_queue": 1}}
    defaults = {"max_concurrent": 3, "max_queue": 4}
    with_env = gateway(models, env={"GATEWAY_MAX_CONCURRENT": "7", "GATEWAY_MAX_QUEUE_SIZE": "9"},
                       defaults=defaults)
    without = gateway(models, defaults=defaults)

    def limits(gw: Any) -> dict[str, tuple[int, int]]:
        return {m["name"]: (m["max_concurrent"], m["max_queue"]) for m in gw.status()["models"]}

    assert limits(with_env) == {"plain": (7, 9), "own": (2, 5), "half": (7, 1)}
    assert limits(without) == {"plain": (3, 4), "own": (2, 5), "half": (3, 1)}


async def test_storm_of_cancelled_streams_leaves_exact_counters(gateway: Any) -> None:
    gw = gateway({"storm": {
        "command": fake_command("--token-delay", "0.02", worker=False, startup_delay=2.0),
        "max_concurrent": STORM_SLOTS, "max_queue": 150}})
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    outcomes: Counter[str] = Counter()
    cancelled_at: list[float] = []
    last_seen_starting = 0.0
    max_seen = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal last_seen_starting, max_seen
        while not done.is_set():
            asked = time.monotonic()
            m = await model_status(gw, "storm")
            max_seen = max(max_seen, m["in_flight"])
            if m["state"] == "starting":
                last_seen_starting = asked
            await asyncio.sleep(0.05)

    async def one(http: Any, delay: float, life: float, tokens: int) -> None:
        await asyncio.sleep(delay)
        try:
            async with asyncio.timeout(life):
                status, _ = await read_all(http, gw.url, chat("storm", stream=True,
                                                              max_tokens=tokens))
            outcomes[str(status)] += 1
        except TimeoutError:
            cancelled_at.append(time.monotonic())
            outcomes["cancelled"] += 1

    watcher = asyncio.create_task(watch())
    async with session() as http:
        # Most give up at a random moment (queued for the start, queued for a slot, in
        # flight, mid-stream); about one in seven waits for its whole answer.
        runs = [one(http, rng.uniform(0, 1.5), 30.0 if rng.random() < 0.15 else
                    rng.uniform(0, 3.5), rng.randint(1, 40)) for _ in range(STORM)]
        async with asyncio.timeout(60):
            await asyncio.gather(*runs)
    done.set()
    await watcher
    note = f"seed {seed}, outcomes {dict(outcomes)}"
    assert sum(outcomes.values()) == STORM, note
    assert set(outcomes) <= {"200", "429", "cancelled"}, note
    assert outcomes["200"] and outcomes["cancelled"], note
    assert any(t < last_seen_starting for t in cancelled_at), f"none cancelled while starting; {note}"

    await wait_counts(gw, "storm", 0, 0)
    assert await gauges(gw, "storm") == (0.0, 0.0)
    # Each request that reached the gateway is accounted once, under what the client saw
    # (or 499 when it left first).
    answered = _answered(await metrics_text(gw), "storm")
    assert sum(answered.values()) <= STORM and answered["499"] >= 1, answered
    assert answered["200"] >= outcomes["200"] and answered["429"] >= outcomes["429"], answered
    port = (await model_status(gw, "storm"))["port"]

    async def backend_idle() -> dict[str, Any] | None:
        stats = await backend_stats(port)
        return stats if stats["in_flight"] == 0 else None
    stats = await wait_for(backend_idle, 15, "the backend to have nothing in flight")
    assert stats["max_in_flight"] <= STORM_SLOTS and max_seen <= STORM_SLOTS, note
    await assert_full_concurrency(gw, "storm", STORM_SLOTS)
    log = gw.log()
    assert not [w for w in UNHANDLED if w in log], log[-4000:]


def _answered(metrics: str, model: str) -> Counter[str]:
    """vllm_gateway_requests_total of one model, by status code."""
    found: Counter[str] = Counter()
    for line in metrics.splitlines():
        if line.startswith("vllm_gateway_requests_total{") and f'model="{model}"' in line:
            code = line.split('code="', 1)[1].split('"', 1)[0]
            found[code] += int(float(line.rsplit(" ", 1)[1]))
    return found
