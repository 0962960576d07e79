"""GPU placement, LRU eviction, idle time, limits and manual control through the HTTP surface,
in-process (inproc.py): the real gateway and fake backends in this loop, a manual clock where
time matters. What only processes show (CUDA_VISIBLE_DEVICES, a stopped process) is in
test_placement_http.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from harness import chat
from helpers import metric, wait_for
from inproc import InProcessGateway, fake_model

from vllm_gateway.runtime.clock import ManualClock

Start = Callable[..., Awaitable[InProcessGateway]]
POST = "/v1/chat/completions"


async def assert_accounting(gw: InProcessGateway) -> None:
    """used_gb on every GPU is the sum of what is placed there, and never over the total."""
    status = await gw.status()
    for gpu in status["gpus"]:
        placed = sum(m["vram_gb"] for m in status["models"]
                     if gpu["id"] in m["gpus"] and m["state"] in ("starting", "ready", "stopping"))
        assert gpu["used_gb"] <= gpu["vram_gb"]
        assert gpu["used_gb"] <= placed + 1e-9


async def post(gw: InProcessGateway, model: str, **extra: Any) -> httpx.Response:
    async with gw.client() as c:
        return await c.post(POST, json=chat(model, **extra))


async def test_two_models_swap_on_one_gpu_in_lru_order(inproc: Start) -> None:
    models = {name: fake_model(vram_gb=24) for name in ("m1", "m2")}
    models["m3"] = fake_model(vram_gb=10)
    gw = await inproc(models, gpus=[{"id": 0, "vram_gb": 40}])
    assert (await post(gw, "m1")).status_code == 200
    assert (await post(gw, "m3")).status_code == 200
    assert (await gw.status())["gpus"][0]["used_gb"] == 34
    await assert_accounting(gw)
    # m2 needs 24: m1 (24) must go; m3 alone would not make room.
    assert (await post(gw, "m2")).status_code == 200
    state = await gw.models()
    assert state["m1"]["state"] == "stopped" and state["m2"]["state"] == "ready"
    assert state["m3"]["state"] == "ready"
    assert (await gw.status())["gpus"][0]["used_gb"] == 34
    # Now m3 is least recently used... but evicting it alone does not fit m1, so m2 goes.
    assert (await post(gw, "m3")).status_code == 200
    assert (await post(gw, "m1")).status_code == 200
    state = await gw.models()
    assert state["m2"]["state"] == "stopped" and state["m1"]["state"] == "ready"
    await assert_accounting(gw)
    assert [e["model"] for e in await gw.events("evicted")] == ["m1", "m2"]
    assert metric(await gw.metrics(), "vllm_gateway_model_evictions_total",
                  model="m1", reason="lru") == 1.0


async def test_lru_picks_the_least_recently_used_idle_model(inproc: Start) -> None:
    models = {name: fake_model(vram_gb=10) for name in ("a", "b", "c", "d")}
    gw = await inproc(models, gpus=[{"id": 0, "vram_gb": 30}])
    for name in ("a", "b", "c", "a", "d"):  # before d, b is the least recently used
        assert (await post(gw, name)).status_code == 200
    state = await gw.models()
    assert state["b"]["state"] == "stopped"
    assert all(state[n]["state"] == "ready" for n in ("a", "c", "d"))


async def test_three_models_on_two_gpus_without_over_commit(inproc: Start) -> None:
    models = {name: fake_model(vram_gb=30) for name in ("x", "y", "z")}
    gw = await inproc(models, gpus=[{"id": 0, "vram_gb": 48}, {"id": 1, "vram_gb": 48}])
    for name in ("x", "y", "z"):
        assert (await post(gw, name)).status_code == 200
        await assert_accounting(gw)
    state = await gw.models()
    ready = [n for n in ("x", "y", "z") if state[n]["state"] == "ready"]
    assert len(ready) == 2  # only two 30 GB models fit on two 48 GB GPUs
    assert {state[n]["gpus"][0] for n in ready} == {0, 1}


async def test_busy_model_is_not_evicted_and_the_other_request_waits(inproc: Start) -> None:
    models = {"busy": fake_model(vram_gb=24), "other": fake_model(vram_gb=24)}
    gw = await inproc(models, gpus=[{"id": 0, "vram_gb": 40}])
    assert (await post(gw, "busy", max_tokens=1)).status_code == 200
    long = asyncio.create_task(post(gw, "busy", fake={"token_delay": 0.05, "tokens": 60}))
    await wait_for(lambda: _count(gw, "busy", "in_flight", 1), 10, "busy to be in flight")
    waiter = asyncio.create_task(post(gw, "other"))
    await wait_for(lambda: _count(gw, "other", "queued", 1), 10, "other to queue")
    # While busy is in flight it is not evicted and other does not start.
    state = await gw.models()
    assert state["busy"]["state"] == "ready" and state["other"]["state"] == "stopped"
    assert not long.done()
    assert [r.status_code for r in await asyncio.gather(long, waiter)] == [200, 200]
    assert (await gw.model("busy"))["state"] == "stopped"
    await assert_accounting(gw)


async def _count(gw: InProcessGateway, model: str, field: str, n: int) -> bool:
    return bool((await gw.model(model))[field] == n)


async def test_no_room_in_time_is_503_naming_the_holder(inproc: Start) -> None:
    models = {"hog": fake_model(vram_gb=30), "late": fake_model(vram_gb=30, startup_timeout_s=1)}
    gw = await inproc(models, gpus=[{"id": 0, "vram_gb": 40}])
    hog = asyncio.create_task(post(gw, "hog", fake={"token_delay": 0.1, "tokens": 100}))
    await wait_for(lambda: _count(gw, "hog", "in_flight", 1), 10, "hog in flight")
    r = await post(gw, "late")
    assert r.status_code == 503
    assert "hog" in r.json()["error"]["message"]
    hog.cancel()
    await asyncio.gather(hog, return_exceptions=True)
    await gw.wait_counters_zero()


async def test_idle_time_counts_from_the_end_of_the_last_request(inproc: Start) -> None:
    clock = ManualClock()
    gw = await inproc({"long": fake_model(idle_timeout_s=1)}, clock=clock)
    reap = gw.gateway.manager.reap  # what the monitor runs every tick
    request = asyncio.create_task(post(gw, "long", max_tokens=25, fake={"token_delay": 0.05}))
    await wait_for(lambda: _count(gw, "long", "in_flight", 1), 10, "the request in flight")
    clock.advance(5)  # the request lasts longer than the idle timeout
    reap()
    assert (await request).status_code == 200
    reap()
    assert (await gw.model("long"))["state"] == "ready"
    clock.advance(1.5)
    reap()
    await gw.wait_state("long", "stopped")


async def test_pinned_model_is_never_evicted_or_idle_stopped(inproc: Start) -> None:
    clock = ManualClock()
    models = {"pin": fake_model(vram_gb=24, pinned=True, idle_timeout_s=1),
              "guest": fake_model(vram_gb=24, startup_timeout_s=2)}
    gw = await inproc(models, gpus=[{"id": 0, "vram_gb": 40}], clock=clock)
    await gw.wait_state("pin", "ready")  # pinned models start with the gateway
    guest = asyncio.create_task(post(gw, "guest"))
    await wait_for(lambda: _count(gw, "guest", "queued", 1), 10, "guest waiting for room")
    clock.advance(3)  # past the idle timeout of pin and the start-up timeout of guest
    gw.gateway.manager.reap()
    r = await guest
    assert r.status_code == 503
    assert (await gw.model("pin"))["state"] == "ready"


async def test_max_loaded_models_holds(inproc: Start) -> None:
    gw = await inproc({name: fake_model() for name in ("p", "q", "r")}, max_loaded_models=2)
    for name in ("p", "q", "r", "p"):
        assert (await post(gw, name)).status_code == 200
        loaded = [m for m in (await gw.status())["models"] if m["state"] != "stopped"]
        assert len(loaded) <= 2
    assert (await gw.model("q"))["state"] == "stopped"


async def test_unload_waits_for_in_flight_requests(inproc: Start) -> None:
    gw = await inproc({"m": fake_model("--token-delay", "0.05")})
    request = asyncio.create_task(post(gw, "m", max_tokens=30))
    await wait_for(lambda: _count(gw, "m", "in_flight", 1), 10, "request in flight")
    async with gw.client() as c:
        r = await c.post("/gateway/models/m/unload")
    assert r.json() == {"name": "m", "state": "stopped"}
    assert (await request).status_code == 200
    # A new request starts it again.
    assert (await post(gw, "m")).status_code == 200


async def test_steady_traffic_does_not_starve_a_model_waiting_for_its_memory(
        inproc: Start) -> None:
    models = {"steady": fake_model("--token-delay", "0.02", vram_gb=24),
              "rare": fake_model(vram_gb=24, startup_timeout_s=20)}
    gw = await inproc(models, gpus=[{"id": 0, "vram_gb": 40}])
    stop = asyncio.Event()
    codes: list[int] = []

    async def traffic() -> None:
        # Overlapping requests: 'steady' is never idle while this runs.
        while not stop.is_set():
            codes.append((await post(gw, "steady", max_tokens=10)).status_code)

    workers = [asyncio.create_task(traffic()) for _ in range(3)]
    try:
        await wait_for(lambda: len(codes) >= 6, 30, "steady traffic")
        r = await post(gw, "rare")
        assert r.status_code == 200, r.text
    finally:
        stop.set()
        await asyncio.gather(*workers)
    # The steady model's requests waited behind the swap and were then served again.
    assert set(codes) == {200}
    await gw.wait_counters_zero()
    await assert_accounting(gw)


def test_model_too_large_is_refused_by_check_config(tmp_path: Path) -> None:
    from vllm_gateway.cli import main
    path = tmp_path / "big.yaml"
    path.write_text("gpus: [{id: 0, vram_gb: 40}]\nmodels:\n  big: {command: x, vram_gb: 80}\n")
    assert main(["check-config", str(path)]) == 2
