"""Admission control through the HTTP surface, in-process (inproc.py): concurrency limits, a
bounded FIFO queue, 429s, a leaver's place, and where the limits come from. The storm of
cancelled streams against real processes is in test_admission_http.py."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable

import aiohttp
from admission_http_helpers import (
    backend_stats,
    cancel,
    hold,
    metrics_text,
    model_status,
    session,
    wait_counts,
)
from harness import chat
from helpers import metric, wait_for
from inproc import InProcessGateway, fake_model

Start = Callable[..., Awaitable[InProcessGateway]]


async def test_twelve_requests_never_exceed_max_concurrent(inproc: Start) -> None:
    gw = await inproc({"pair": fake_model(max_concurrent=2)})
    seen: list[int] = []
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            seen.append((await model_status(gw, "pair"))["in_flight"])
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    async with gw.client() as c:
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


async def test_full_queue_is_429_with_retry_after_and_the_limits(inproc: Start) -> None:
    gw = await inproc({"tight": fake_model(max_concurrent=1, max_queue=2)})
    async with session() as http:
        holders = [hold(http, gw, "tight") for _ in range(3)]
        try:
            await wait_counts(gw, "tight", 1, 2)
            async with gw.client(30) as c:
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
    assert metric(await metrics_text(gw), "vllm_gateway_requests_total",
                  code="429", model="tight") == 1.0


async def test_waiting_requests_are_served_first_come_first_served(inproc: Start) -> None:
    gw = await inproc({"fifo": fake_model(max_concurrent=1)})
    release = gw.launcher.hold("fifo")
    finished: list[int] = []

    async def ask(i: int) -> None:
        async with gw.client() as c:
            r = await c.post("/v1/chat/completions",
                             json=chat("fifo", f"q{i}", fake={"token_delay": 0.01, "tokens": 3}))
        assert r.status_code == 200, r.text
        finished.append(i)

    async with session() as http:
        # The first request is cold: it and the next ones wait for the model to start, then
        # the blocker keeps the only slot until everyone has lined up in a known order.
        blocker = hold(http, gw, "fifo")
        await wait_for(lambda: _admitted(gw, "fifo", 1), 30, "the blocker admitted")
        asks = []
        for i in range(5):
            asks.append(asyncio.create_task(ask(i)))
            await wait_for(functools.partial(_admitted, gw, "fifo", i + 2), 30,
                           f"request {i} queued")
        release.set()
        await wait_counts(gw, "fifo", 1, 5, timeout=30)
        await cancel(blocker)
        await asyncio.wait_for(asyncio.gather(*asks), 60)
    assert finished == [0, 1, 2, 3, 4]
    await wait_counts(gw, "fifo", 0, 0)


async def _admitted(gw: InProcessGateway, model: str, n: int) -> bool:
    m = await model_status(gw, model)
    return bool(m["in_flight"] + m["queued"] == n)


async def test_client_leaving_the_queue_frees_its_place_at_once(inproc: Start) -> None:
    gw = await inproc({"busy": fake_model(max_concurrent=1), "cold": fake_model()})
    gw.launcher.hold("cold")  # never set: cold stays starting
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


async def _read_until_cancelled(http: aiohttp.ClientSession, url: str, model: str,
                                loading: asyncio.Event) -> None:
    async with http.post(url + "/v1/chat/completions", json=chat(model, stream=True)) as resp:
        async for chunk in resp.content.iter_any():
            if chunk.startswith(f": loading model {model}".encode()):
                loading.set()


async def test_env_limits_override_defaults_and_models_override_env(inproc: Start) -> None:
    nowhere = "http://127.0.0.1:9"  # never contacted: only the limits are read
    models = {"plain": {"url": nowhere},
              "own": {"url": nowhere, "max_concurrent": 2, "max_queue": 5},
              "half": {"url": nowhere, "max_queue": 1}}
    defaults = {"max_concurrent": 3, "max_queue": 4}
    with_env = await inproc(models, defaults=defaults,
                            env={"GATEWAY_MAX_CONCURRENT": "7", "GATEWAY_MAX_QUEUE_SIZE": "9"})
    without = await inproc(models, defaults=defaults)

    async def limits(gw: InProcessGateway) -> dict[str, tuple[int, int]]:
        return {m["name"]: (m["max_concurrent"], m["max_queue"])
                for m in (await gw.status())["models"]}

    assert await limits(with_env) == {"plain": (7, 9), "own": (2, 5), "half": (7, 1)}
    assert await limits(without) == {"plain": (3, 4), "own": (2, 5), "half": (3, 1)}
