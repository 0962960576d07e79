"""GPU accounting while a wake waits for the room it claimed (found by the trace benchmark).

A wake that must first put another model to sleep reserves its full size from
the moment it is decided (so no other claim takes the room), while the model
making room for it still holds its own full size until its sleep is confirmed.
What ``/gateway/status`` shows is what the GPU holds: the waking server's
residual until ``/wake_up`` is sent, after the room is made, as a start is
counted only once it is launched. (The trace benchmark's ``sleep: 1`` row once
read 56 of 48 GB here.)
"""

from __future__ import annotations

import asyncio

from helpers import wait_for
from runtime_fakes import FakeSleep, make_manager, settle

from vllm_gateway.events import StopReason
from vllm_gateway.lifecycle import State
from vllm_gateway.runtime.status import model_status


async def test_a_wake_waiting_for_its_room_never_reads_over_the_gpu() -> None:
    sleep = FakeSleep()
    manager, _ = make_manager({"a": 30, "b": 30}, gpus=[40], sleeper=sleep, sleep=1,
                              sleep_vram_gb=2)
    a, b = manager.instances["a"], manager.instances["b"]
    for inst in (a, b):
        await asyncio.wait_for(manager.ensure_ready(inst), 5)
    assert a.state is State.SLEEPING and b.state is State.READY
    sleep.gate = asyncio.Event()  # b's sleep, made for a's wake, stays open
    waking = asyncio.create_task(manager.ensure_ready(a))
    await wait_for(lambda: a.state is State.WAKING and len(sleep.calls) == 2)
    try:
        assert manager.used_gb()[0] <= 40, manager.used_gb()
    finally:
        sleep.gate.set()
        await asyncio.wait_for(waking, 5)
        await settle(manager)
    assert manager.used_gb() == {0: 32.0}


async def test_a_sleeper_being_stopped_holds_only_its_residual_until_it_is_gone() -> None:
    """Found by the trace benchmark (skewed, sleep on): a sleeper stopped to make room was
    counted at its full size again while its processes went away, and read over the GPU."""
    sleep = FakeSleep()
    manager, launcher = make_manager({"a": 30, "b": 30}, gpus=[40], sleeper=sleep, sleep=1,
                                     sleep_vram_gb=2)
    a = manager.instances["a"]
    await asyncio.wait_for(manager.ensure_ready(a), 5)
    await manager.sleep(a)
    assert a.state is State.SLEEPING and manager.used_gb() == {0: 2.0}
    [handle] = launcher.by_name("a")
    handle.stop_gate = asyncio.Event()  # its processes take their time to go
    manager.begin_stop(a, StopReason.LRU)
    await wait_for(lambda: handle.stop_calls == 1)
    assert a.state is State.STOPPING and manager.used_gb() == {0: 2.0}
    assert model_status(manager, a)["sleep_level"] == 1  # still asleep until it is gone
    handle.stop_gate.set()
    await wait_for(lambda: a.state is State.STOPPED)
    assert manager.used_gb() == {0: 0.0} and model_status(manager, a)["sleep_level"] is None
    # Stopped from awake, it holds its full size until it is gone.
    await asyncio.wait_for(manager.ensure_ready(a), 5)
    [_, handle] = launcher.by_name("a")
    handle.stop_gate = asyncio.Event()
    manager.begin_stop(a, StopReason.LRU)
    await wait_for(lambda: handle.stop_calls == 1)
    assert manager.used_gb() == {0: 30.0} and model_status(manager, a)["sleep_level"] is None
    handle.stop_gate.set()
    await settle(manager)
