"""The manager with a fake launcher: starts, stops and evictions cancelled at awkward moments."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from helpers import wait_for
from runtime_fakes import make_manager, settle

from vllm_gateway.errors import BackendUnavailable
from vllm_gateway.launchers.fake import FakeLauncher
from vllm_gateway.lifecycle import State
from vllm_gateway.runtime.clock import ManualClock
from vllm_gateway.runtime.manager import PROGRESS_EVERY_S, Manager


def make(models: dict[str, float], gpus: list[float] | None = None, auto_healthy: bool = True,
         **kw: Any) -> tuple[Manager, FakeLauncher]:
    return make_manager(models, gpus, auto_healthy, **kw)


async def test_waiter_cancelled_during_start_does_not_cancel_the_start() -> None:
    manager, launcher = make({"m": 0}, auto_healthy=False)
    inst = manager.instances["m"]
    first = asyncio.create_task(manager.ensure_ready(inst))
    second = asyncio.create_task(manager.ensure_ready(inst))
    await wait_for(lambda: launcher.by_name("m"))
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert inst.state is State.STARTING
    launcher.by_name("m")[0].healthy = True
    await asyncio.wait_for(second, 5)
    assert inst.state is State.READY and len(launcher.handles) == 1


async def test_unload_while_starting_stops_the_server_and_frees_the_memory() -> None:
    manager, launcher = make({"m": 10}, gpus=[40], auto_healthy=False)
    inst = manager.instances["m"]
    waiter = asyncio.create_task(manager.ensure_ready(inst))
    await wait_for(lambda: launcher.by_name("m"))
    await manager.unload(inst)
    assert inst.state is State.STOPPED and inst.placement is None
    assert launcher.by_name("m")[0].stop_calls >= 1
    assert manager.used_gb() == {0: 0.0}
    # The waiter goes on and starts the model again.
    launcher.auto_healthy = True
    await asyncio.wait_for(waiter, 5)
    assert inst.state is State.READY


async def test_two_claims_never_evict_the_same_model_twice() -> None:
    manager, _ = make({"old": 30, "a": 30, "b": 30}, gpus=[40, 40])
    await manager.ensure_ready(manager.instances["old"])
    other_gpu = 1 - manager.instances["old"].placement[0]  # type: ignore[index]
    # Hold the other GPU with a busy model so both a and b need old's GPU.
    manager.instances["a"].committed += 1
    await manager.ensure_ready(manager.instances["a"])
    assert manager.instances["a"].placement == (other_gpu,)
    b = asyncio.create_task(manager.ensure_ready(manager.instances["b"]))
    again = asyncio.create_task(manager.ensure_ready(manager.instances["old"]))
    await asyncio.wait_for(b, 5)
    evictions = [e for e in manager.svc.events.since(0)["events"] if e["kind"] == "evicted"]
    assert [e["model"] for e in evictions][:1] == ["old"]
    # old waits: a is busy and b is idle once ready, so b is evicted for old, once.
    await asyncio.wait_for(again, 5)
    evictions = [e["model"] for e in manager.svc.events.since(0)["events"] if e["kind"] == "evicted"]
    assert evictions == ["old", "b"]
    used = manager.used_gb()
    assert all(v <= 40 for v in used.values())
    manager.instances["a"].committed -= 1


async def test_stop_in_progress_keeps_the_memory_counted_until_processes_are_gone() -> None:
    manager, launcher = make({"x": 30, "y": 30}, gpus=[40])
    await manager.ensure_ready(manager.instances["x"])
    handle = launcher.by_name("x")[0]
    handle.stop_gate = asyncio.Event()
    y = asyncio.create_task(manager.ensure_ready(manager.instances["y"]))
    await wait_for(lambda: manager.instances["x"].state is State.STOPPING)
    await asyncio.sleep(0.05)
    assert manager.used_gb() == {0: 30.0}  # x still holds it; y only reserved it
    assert not launcher.by_name("y")
    handle.stop_gate.set()
    await asyncio.wait_for(y, 5)
    assert manager.used_gb() == {0: 30.0}
    assert manager.instances["x"].state is State.STOPPED


async def test_crash_while_ready_is_noticed_and_restarted_by_the_next_request() -> None:
    manager, launcher = make({"m": 0})
    inst = manager.instances["m"]
    await manager.ensure_ready(inst)
    launcher.by_name("m")[0].crash(137, "Killed")
    await wait_for(lambda: inst.state is State.FAILED)
    await settle(manager)
    assert inst.placement is None and "137" in (inst.last_error or "")
    await manager.ensure_ready(inst)
    assert inst.state is State.READY and len(launcher.handles) == 2


async def test_launch_error_fails_with_a_clear_message() -> None:
    manager, launcher = make({"m": 0})
    launcher.fail_with = "image vllm/vllm-openai:nope not found"
    with pytest.raises(BackendUnavailable, match="not found"):
        await manager.ensure_ready(manager.instances["m"])
    assert manager.instances["m"].state is State.BACKOFF


async def test_shutdown_during_start_stops_everything() -> None:
    manager, launcher = make({"a": 0, "b": 0}, auto_healthy=False)
    tasks = [asyncio.create_task(manager.ensure_ready(i)) for i in manager.instances.values()]
    await wait_for(lambda: len(launcher.handles) == 2)
    await manager.shutdown()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, BackendUnavailable) for r in results), results
    assert all(not h.alive() for h in launcher.handles)
    assert all(i.state is State.STOPPED for i in manager.instances.values())


async def test_idle_reaper_is_one_step_and_skips_busy_models() -> None:
    manager, _ = make({"idle": 0, "busy": 0}, idle_timeout_s=0.01)
    for inst in manager.instances.values():
        await manager.ensure_ready(inst)
    async with manager.instances["busy"].limiter.admit():
        await asyncio.sleep(0.05)
        assert manager.reap() == ["idle"]
        assert manager.instances["idle"].state is State.STOPPING
    await settle(manager)
    assert manager.instances["idle"].state is State.STOPPED
    assert manager.instances["busy"].state is State.READY


async def test_a_port_taken_before_the_server_binds_it_is_picked_again() -> None:
    manager, launcher = make({"m": 0}, auto_healthy=False)
    inst = manager.instances["m"]
    waiter = asyncio.create_task(manager.ensure_ready(inst))
    await wait_for(lambda: launcher.handles)
    launcher.auto_healthy = True
    launcher.handles[0].crash(1, "OSError: [Errno 98] Address already in use")
    await asyncio.wait_for(waiter, 5)
    assert inst.state is State.READY and inst.failed_starts == 0
    assert len(launcher.handles) == 2


async def test_a_slow_progress_write_while_the_model_becomes_ready_still_gets_its_slot() -> None:
    """The loading comment goes to a slow client; meanwhile the model becomes ready. The request
    must act on what is true after the write (ready: take a slot), not on what it read before
    (stopped or starting: claim it again)."""
    clock = ManualClock()
    manager, launcher = make({"m": 10}, gpus=[40], auto_healthy=False, clock=clock)
    inst = manager.instances["m"]
    writing, written = asyncio.Event(), asyncio.Event()

    async def progress(elapsed: float, expected: float | None) -> None:
        writing.set()
        await written.wait()

    async def request() -> str:
        async with manager.lease(inst, progress) as lease:
            return lease.base_url

    task = asyncio.create_task(request())
    await wait_for(lambda: launcher.by_name("m"))
    clock.advance(PROGRESS_EVERY_S + 0.5)
    await asyncio.wait_for(writing.wait(), 10)
    launcher.by_name("m")[0].healthy = True
    await wait_for(lambda: inst.state is State.READY)
    written.set()
    assert await asyncio.wait_for(task, 10) == inst.base_url
    assert inst.state is State.READY and len(launcher.handles) == 1
    assert inst.limiter.in_flight == 0 and inst.limiter.queued == 0
