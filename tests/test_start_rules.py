"""Starting models, through the HTTP surface, in-process (inproc.py): a failed start and its
backoff and hold (on a manual clock), a start that times out, starts that run side by side and
a start shared by every request that waits for it. Crashes, orphans and signals are tested
with real processes (test_core.py, test_faults.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
from harness import chat
from helpers import metric, wait_for
from inproc import InProcessGateway, fake_model

from vllm_gateway.runtime.clock import ManualClock

Start = Callable[..., Awaitable[InProcessGateway]]
BACKOFF = {"start_backoff_s": 1, "start_backoff_max_s": 30, "max_failed_starts": 2}


async def post(gw: InProcessGateway, model: str) -> httpx.Response:
    async with gw.client() as c:
        return await c.post("/v1/chat/completions", json=chat(model))


async def starts(gw: InProcessGateway, model: str) -> float:
    return metric(await gw.metrics(), "vllm_gateway_model_starts_total", model=model)


async def test_failed_start_is_503_with_the_backends_last_lines(inproc: Start) -> None:
    gw = await inproc({"broken": fake_model("--fail-start")})
    r = await post(gw, "broken")
    assert r.status_code == 503
    assert "CUDA out of memory" in r.json()["error"]["message"]
    assert (await gw.model("broken"))["state"] == "backoff"


async def test_crash_loop_backs_off_then_holds_until_load(inproc: Start) -> None:
    clock = ManualClock()
    gw = await inproc({"broken": fake_model("--fail-start"), "fine": fake_model()},
                      faults=BACKOFF, clock=clock)
    r = await post(gw, "broken")
    assert r.status_code == 503 and "CUDA out of memory" in r.text
    # During the backoff: 503 at once, with the last lines and when the next try will be.
    r = await post(gw, "broken")
    assert r.status_code == 503
    assert "next try in" in r.json()["error"]["message"]
    assert "CUDA out of memory" in r.json()["error"]["message"]
    assert int(r.headers["Retry-After"]) >= 1
    assert await starts(gw, "broken") == 1
    # Other models are never affected.
    assert (await post(gw, "fine")).status_code == 200
    # After the backoff the next request tries again.
    clock.advance(1)
    assert (await gw.model("broken"))["retry_in_s"] == 0
    assert (await post(gw, "broken")).status_code == 503
    assert await starts(gw, "broken") == 2
    # Two failures in a row: held, refused at once, until an operator asks...
    held = await gw.model("broken")
    assert held["state"] == "held" and held["retry_in_s"] is None
    clock.advance(3600)
    r = await post(gw, "broken")
    assert r.status_code == 503 and "held until POST /gateway/models/broken/load" in r.text
    assert await starts(gw, "broken") == 2
    # ...until an operator asks for a load, which tries at once.
    async with gw.client() as c:
        r = await c.post("/gateway/models/broken/load")
    assert r.status_code == 503
    assert await starts(gw, "broken") == 3


async def test_start_timeout_is_504(inproc: Start) -> None:
    gw = await inproc({"slow": fake_model(startup_timeout_s=1)})
    gw.launcher.hold("slow")  # never set: the server loads for ever
    r = await post(gw, "slow")
    assert r.status_code == 504
    assert "slow" in r.json()["error"]["message"]
    await gw.wait_state("slow", "backoff")
    await wait_for(lambda: not gw.launcher.running(), 10, "the timed-out server to be stopped")


async def test_two_models_start_concurrently(inproc: Start) -> None:
    gw = await inproc({"slowstart": fake_model(), "quick": fake_model()})
    loaded = gw.launcher.hold("slowstart")
    slow = asyncio.create_task(post(gw, "slowstart"))
    await gw.wait_state("slowstart", "starting")
    assert (await post(gw, "quick")).status_code == 200
    # The quick model answered while the slow one was still starting.
    assert (await gw.model("slowstart"))["state"] == "starting"
    assert not slow.done()
    loaded.set()
    assert (await slow).status_code == 200


async def test_concurrent_first_requests_start_the_model_once(inproc: Start) -> None:
    gw = await inproc({"once": fake_model()})
    loaded = gw.launcher.hold("once")
    asks = [asyncio.create_task(post(gw, "once")) for _ in range(6)]

    async def all_waiting() -> bool:
        m = await gw.model("once")
        return bool(m["in_flight"] + m["queued"] == 6)
    await wait_for(all_waiting, 10, "six requests waiting for the start")
    loaded.set()
    assert [r.status_code for r in await asyncio.gather(*asks)] == [200] * 6
    text = await gw.metrics()
    assert metric(text, "vllm_gateway_model_starts_total", model="once") == 1.0
    assert metric(text, "vllm_gateway_requests_total", code="200", model="once") == 6.0
