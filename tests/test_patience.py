"""Patience before pressure (issue 16), in-process with a manual clock: a request that finds no
room waits for idle memory, and only after its model's patience presses busy holders, the
cheapest to bring back first; learned load times survive a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from helpers import wait_for
from runtime_fakes import FakeSleep, make_manager

from vllm_gateway.admission import QueueFull
from vllm_gateway.lifecycle import State
from vllm_gateway.runtime.clock import ManualClock
from vllm_gateway.runtime.costs import LoadCosts
from vllm_gateway.runtime.manager import Manager


async def busy(manager: Manager, name: str) -> asyncio.Event:
    """Hold one request of ``name`` in flight until the returned event is set."""
    release = asyncio.Event()
    inst = manager.instances[name]

    async def hold() -> None:
        async with manager.lease(inst):
            await release.wait()

    asyncio.get_running_loop().create_task(hold())
    await wait_for(lambda: inst.limiter.in_flight == 1)
    return release


async def test_a_busy_holder_is_not_pressed_before_the_patience_runs_out() -> None:
    clock = ManualClock()
    manager, _ = make_manager({"a": 30, "b": 30}, gpus=[40], clock=clock, swap_patience_s=20)
    a, b = manager.instances["a"], manager.instances["b"]
    release = await busy(manager, "a")
    clock.advance(100)  # a has held its GPU for long enough to be pressed
    waiter = asyncio.create_task(manager.ensure_ready(b))
    await asyncio.sleep(0.3)  # one tick of the waiter's loop
    assert a.pressure == [] and b.state is State.STOPPED
    clock.advance(21)
    await wait_for(lambda: a.pressure != [])
    # Pressed: a's requests that arrive now wait behind b, so a drains and makes room.
    release.set()
    await asyncio.wait_for(waiter, 5)
    assert b.state is State.READY and a.state is State.STOPPED
    assert a.pressure == []


async def test_a_cancelled_waiter_withdraws_its_pressure_at_once() -> None:
    clock = ManualClock()
    manager, _ = make_manager({"a": 30, "b": 30}, gpus=[40], clock=clock, swap_patience_s=0)
    a = manager.instances["a"]
    release = await busy(manager, "a")
    clock.advance(1)
    waiter = asyncio.create_task(manager.ensure_ready(manager.instances["b"]))
    await wait_for(lambda: a.pressure != [])
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert a.pressure == []
    release.set()
    await asyncio.sleep(0.05)
    assert a.state is State.READY  # nobody waits for its room: it keeps serving


async def test_only_holders_that_held_their_gpu_for_the_patience_are_pressed() -> None:
    clock = ManualClock()
    manager, _ = make_manager({"a": 30, "b": 30}, gpus=[40], clock=clock, swap_patience_s=10)
    a = manager.instances["a"]
    release = await busy(manager, "a")
    waiter = asyncio.create_task(manager.ensure_ready(manager.instances["b"]))
    await asyncio.sleep(0.05)  # it starts waiting now
    clock.advance(5)
    await asyncio.sleep(0.3)
    assert a.pressure == []  # b has waited 5 s < 10, and a was loaded 5 s ago
    clock.advance(6)
    await wait_for(lambda: a.pressure != [])
    release.set()
    await asyncio.wait_for(waiter, 5)


async def test_the_holder_cheapest_to_bring_back_is_pressed_not_all() -> None:
    clock = ManualClock()
    manager, _ = make_manager({"a": 20, "b": 20, "c": 20}, gpus=[40], clock=clock,
                              swap_patience_s=0, max_concurrent=1)
    a, b = manager.instances["a"], manager.instances["b"]
    release_a = await busy(manager, "a")
    release_b = await busy(manager, "b")
    # b has requests waiting behind its slot; a has none: a is the cheaper one to press.
    b_more = [asyncio.create_task(_one(manager, "b")) for _ in range(2)]
    await wait_for(lambda: b.limiter.queued == 2)
    clock.advance(1)
    waiter = asyncio.create_task(manager.ensure_ready(manager.instances["c"]))
    await wait_for(lambda: a.pressure != [])
    await asyncio.sleep(0.3)
    assert b.pressure == []
    release_a.set()
    await asyncio.wait_for(waiter, 5)
    assert a.state is State.STOPPED and b.state is State.READY
    release_b.set()
    await asyncio.gather(*b_more)


def hold(manager: Manager, name: str) -> tuple[asyncio.Task[None], asyncio.Event, asyncio.Event]:
    """A request of ``name`` that stays in flight until released: (task, entered, release)."""
    entered, release = asyncio.Event(), asyncio.Event()

    async def run() -> None:
        async with manager.lease(manager.instances[name]):
            entered.set()
            await release.wait()

    return asyncio.get_running_loop().create_task(run()), entered, release


async def test_steady_traffic_drains_only_after_the_patience_and_the_waiter_is_in_the_bound(
) -> None:
    """a is never idle (each request arrives before the last one ends); b's request waits its
    patience, then a's later requests wait behind it, and b is served once a's in-flight
    request ends: patience + the holder's drain + one load (the fake's is instant)."""
    clock = ManualClock()
    manager, _ = make_manager({"a": 30, "b": 30}, gpus=[40], clock=clock, swap_patience_s=20)
    a, b = manager.instances["a"], manager.instances["b"]
    _, entered, release = hold(manager, "a")
    await asyncio.wait_for(entered.wait(), 5)
    clock.advance(100)  # a has held its GPU for longer than the patience
    started = clock.now()
    waiter = asyncio.create_task(_one(manager, "b"))
    await asyncio.sleep(0.05)  # it arrives now
    for _ in range(3):  # t = 5, 10, 15: a's next request is served at once, then the last ends
        clock.advance(5)
        _, entered, next_release = hold(manager, "a")
        await asyncio.wait_for(entered.wait(), 5)
        release.set()
        release = next_release
    assert a.pressure == [] and b.state is State.STOPPED and not waiter.done()
    clock.advance(5)  # t = 20: the patience has run out
    await wait_for(lambda: a.pressure != [])
    later, later_entered, later_release = hold(manager, "a")
    await asyncio.sleep(0.3)
    assert not later_entered.is_set()  # it waits behind b's request now
    clock.advance(4)  # t = 24: a's request in flight ends: the drain took 4 s
    release.set()
    await asyncio.wait_for(waiter, 5)
    assert clock.now() - started <= 20 + 4  # patience + drain + one (instant) load
    await asyncio.wait_for(later_entered.wait(), 5)  # a comes back for it once b is idle
    later_release.set()
    await later
    assert (a.limiter.in_flight, a.limiter.queued, b.limiter.in_flight) == (0, 0, 0)


async def _one(manager: Manager, name: str) -> None:
    async with manager.lease(manager.instances[name]):
        pass


async def test_learned_load_times_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "load-costs.json"
    costs = LoadCosts(path)
    for seconds in (40.0, 42.0, 38.0):
        costs.record("llama", "start", seconds)
    costs.record("llama", "wake", 1.5)
    again = LoadCosts(path)
    assert again.expected("llama", "start") == 40.0
    assert again.expected("llama", "wake") == 1.5
    assert again.expected("other") is None


def test_unreadable_learned_load_times_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "load-costs.json"
    path.write_text("{not json")
    assert LoadCosts(path).expected("llama") is None


async def test_patience_defaults_to_the_learned_load_time() -> None:
    manager, _ = make_manager({"a": 10}, gpus=[40], startup_timeout_s=300)
    inst = manager.instances["a"]
    assert manager.claims.patience_s(inst) == 30.0  # first guess: a tenth of the timeout
    manager.svc.costs.record("a", "start", 12.0)
    assert manager.claims.patience_s(inst) == 12.0


async def test_a_sleepers_patience_is_its_learned_wake_time() -> None:
    """A request for a sleeping model waits to wake it, which takes a second, not a start."""
    manager, _ = make_manager({"a": 10}, gpus=[40], startup_timeout_s=300, sleeper=FakeSleep(),
                              sleep=1)
    inst = manager.instances["a"]
    async with manager.lease(inst):
        pass
    await manager.sleep(inst)
    assert inst.state is State.SLEEPING
    for _ in range(3):  # outweighs the fake's instant start in the moving median
        manager.svc.costs.record("a", "start", 12.0)
    assert manager.claims.patience_s(inst) == 12.0  # no wake yet: a start bounds it
    manager.svc.costs.record("a", "wake", 0.5)
    assert manager.claims.patience_s(inst) == 0.5


async def test_retry_after_on_a_full_queue_while_starting_counts_the_load_left() -> None:
    clock = ManualClock()
    manager, launcher = make_manager({"m": 0}, auto_healthy=False, clock=clock, max_queue=1,
                                     max_concurrent=1)
    manager.svc.costs.record("m", "start", 40.0)
    inst = manager.instances["m"]
    first = asyncio.create_task(_one(manager, "m"))
    second = asyncio.create_task(_one(manager, "m"))
    await wait_for(lambda: inst.state is State.STARTING and inst.limiter.queued == 2)
    clock.advance(10)
    with pytest.raises(QueueFull) as full:
        await _one(manager, "m")
    assert full.value.retry_after_s >= 30  # ~30 s of the expected 40 s start are left
    launcher.handles[0].healthy = True
    await asyncio.wait_for(asyncio.gather(first, second), 5)
