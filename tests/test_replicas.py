"""Replicas of a busy model (issue 20), in-process with the fake launcher and a manual clock:
a model grows to a second replica when its requests wait for a slot, requests go to the
replica with the fewest in flight, idle replicas beyond ``replicas.min`` stop one at a time,
``gpu_ids`` bound every replica, and an operator sets the count."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from helpers import wait_for
from runtime_fakes import kinds, make_manager, settle

from vllm_gateway.config import Replicas
from vllm_gateway.errors import BadRequest
from vllm_gateway.lifecycle import State
from vllm_gateway.runtime.clock import ManualClock
from vllm_gateway.runtime.instance import Instance
from vllm_gateway.runtime.manager import Manager
from vllm_gateway.runtime.status import status


def model(manager: Manager, name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(m for m in status(manager)["models"] if m["name"] == name)
    return found


def hold(manager: Manager, inst: Instance, release: asyncio.Event,
         served: list[int]) -> asyncio.Task[None]:
    """A request that stays in flight until ``release`` is set; ``served`` gets its replica."""

    async def run() -> None:
        async with manager.lease(inst) as lease:
            served.append(lease.instance.index)
            await release.wait()

    return asyncio.get_running_loop().create_task(run())


def counters_zero(manager: Manager) -> bool:
    return all(g.limiter.in_flight == 0 and g.limiter.queued == 0 and g.slot_waiters == 0
               for g in manager.models.values()) and all(
        r.committed == 0 and r.in_flight == 0 for r in manager.replicas())


def scaling(clock: ManualClock, gpus: list[float] | None = None, **kw: Any
            ) -> tuple[Manager, Any]:
    return make_manager({"m": 30, **kw.pop("others", {})}, gpus=[40, 40] if gpus is None else gpus,
                        clock=clock, per_model={"m": {"max_concurrent": 2,
                                                      "replicas": kw.pop("replicas", Replicas(1, 2)),
                                                      "scale_up_after_s": 5.0,
                                                      **kw.pop("m", {})}},
                        idle_timeout_s=60, **kw)


async def test_a_model_under_load_grows_to_two_replicas_on_two_gpus_then_shrinks_back() -> None:
    clock = ManualClock()
    manager, launcher = scaling(clock)
    m, group = manager.instances["m"], manager.models["m"]
    release, served = asyncio.Event(), list[int]()
    tasks = [hold(manager, m, release, served) for _ in range(3)]
    await wait_for(lambda: group.limiter.in_flight == 2 and group.slot_waiters == 1)
    assert manager.scaler.tick() == []  # it has not waited scale_up_after_s yet
    clock.advance(5.5)
    assert manager.scaler.tick() == ["m"]
    await wait_for(lambda: len(served) == 3)
    # The waiting request went to the new replica; the next goes where fewer are in flight.
    tasks.append(hold(manager, m, release, served))
    await wait_for(lambda: len(served) == 4)
    assert served == [0, 0, 1, 1]
    doc = model(manager, "m")
    assert doc["state"] == "ready" and doc["in_flight"] == 4 and doc["gpus"] == [0, 1]
    assert [(r["state"], r["gpus"], r["in_flight"]) for r in doc["replicas"]] == [
        ("ready", [0], 2), ("ready", [1], 2)]
    assert len({r["port"] for r in doc["replicas"]}) == 2 and all(r["pid"] for r in doc["replicas"])
    assert [h.spec.gpu_ids for h in launcher.handles] == [(0,), (1,)]
    metrics = manager.svc.metrics
    assert metrics.replica_starts.labels("m", "1")._value.get() == 1
    assert kinds(manager, "scale_up") == ["m"]
    release.set()
    await asyncio.gather(*tasks)
    assert counters_zero(manager)
    clock.advance(61)
    assert manager.reap() == ["m"]  # one replica at a time
    await settle(manager)
    assert manager.reap() == []  # replicas.min is 1: the last one stays
    doc = model(manager, "m")
    assert doc["state"] == "ready" and len(doc["replicas"]) == 1
    assert kinds(manager, "idle_stop") == ["m"]


async def test_idle_replicas_stop_one_at_a_time_least_used_first() -> None:
    clock = ManualClock()
    manager, _ = scaling(clock, replicas=Replicas(0, 2))
    m = manager.instances["m"]
    await manager.load(m, replicas=2)
    first, second = manager.models["m"].holding()
    release, served = asyncio.Event(), list[int]()
    clock.advance(10)
    task = hold(manager, m, release, served)  # the first replica is used later
    await wait_for(lambda: served == [0])
    release.set()
    await task
    clock.advance(55)  # the second has been idle 65 s, the first 55 s
    assert manager.reap() == ["m"]
    assert second.state is State.STOPPING and first.state is State.READY
    await settle(manager)
    assert manager.reap() == []
    clock.advance(6)
    assert manager.reap() == ["m"]
    await settle(manager)
    assert model(manager, "m")["state"] == "stopped" and model(manager, "m")["replicas"] == []


async def test_a_scale_up_evicts_idle_models_but_never_a_busy_one() -> None:
    clock = ManualClock()
    manager, _ = scaling(clock, others={"b": 30})
    m, b = manager.instances["m"], manager.instances["b"]
    b_release, b_served = asyncio.Event(), list[int]()
    b_task = hold(manager, b, b_release, b_served)
    await wait_for(lambda: b.state is State.READY and b_served)
    release, served = asyncio.Event(), list[int]()
    tasks = [hold(manager, m, release, served) for _ in range(3)]
    await wait_for(lambda: len(served) == 2 and manager.models["m"].slot_waiters == 1)
    clock.advance(30)
    assert manager.scaler.tick() == []  # b is busy on the other GPU
    assert b.state is State.READY and b.pressure == []
    b_release.set()
    await b_task
    assert manager.scaler.tick() == ["m"]  # b is idle now
    await wait_for(lambda: len(served) == 3)
    assert kinds(manager, "evicted") == ["b"] and b.state is State.STOPPED
    release.set()
    await asyncio.gather(*tasks)
    assert counters_zero(manager)


async def test_gpu_ids_bound_every_replica_under_eviction_pressure() -> None:
    clock = ManualClock()
    manager, _ = make_manager(
        {"r": 30, "a": 30, "b": 30}, gpus=[40, 40, 40], clock=clock,
        per_model={"r": {"gpu_ids": (1, 2), "replicas": Replicas(0, 2), "max_concurrent": 1,
                         "scale_up_after_s": 1.0},
                   "a": {"gpu_ids": (1,)}, "b": {"gpu_ids": (2,)}})
    r, a, b = (manager.instances[n] for n in "rab")
    await manager.ensure_ready(a)
    clock.advance(1)
    await manager.ensure_ready(b)
    # GPU 0 is free, but r may not go there: the least recently used of a and b makes room.
    await manager.ensure_ready(r)
    assert r.placement == (1,) and a.state is State.STOPPED and b.state is State.READY
    b_release, b_served = asyncio.Event(), list[int]()
    b_task = hold(manager, b, b_release, b_served)
    await wait_for(lambda: bool(b_served))
    release, served = asyncio.Event(), list[int]()
    tasks = [hold(manager, r, release, served) for _ in range(2)]
    await wait_for(lambda: served == [0] and manager.models["r"].slot_waiters == 1)
    clock.advance(5)
    assert manager.scaler.tick() == []  # only GPU 2 is allowed, and busy b holds it
    b_release.set()
    await b_task
    assert manager.scaler.tick() == ["r"]
    await wait_for(lambda: served == [0, 1])
    assert [x["gpus"] for x in model(manager, "r")["replicas"]] == [[1], [2]]
    assert manager.used_gb()[0] == 0.0
    release.set()
    await asyncio.gather(*tasks)


async def test_an_operator_sets_the_count_now_within_replicas_max() -> None:
    manager, _ = scaling(ManualClock(), gpus=[40, 40, 40], replicas=Replicas(0, 3))
    m = manager.instances["m"]
    await manager.load(m, replicas=3)
    assert [r["gpus"] for r in model(manager, "m")["replicas"]] == [[0], [1], [2]]
    assert manager.models["m"].limiter.max_concurrent == 6  # 2 slots per ready replica
    await manager.load(m, replicas=1)
    await settle(manager)
    assert len(model(manager, "m")["replicas"]) == 1
    assert manager.models["m"].limiter.max_concurrent == 2
    with pytest.raises(BadRequest, match="replicas.max"):
        await manager.load(m, replicas=4)
    await manager.load(m, replicas=0)
    assert model(manager, "m")["state"] == "stopped"


async def test_replicas_count_toward_max_loaded_models_one_each() -> None:
    manager, _ = scaling(ManualClock(), gpus=[40, 40, 40], others={"o": 10}, max_loaded=2,
                         replicas=Replicas(0, 2))
    await manager.load(manager.instances["m"], replicas=2)
    await manager.ensure_ready(manager.instances["o"])
    assert len(model(manager, "m")["replicas"]) == 1
    assert kinds(manager, "evicted") == ["m"]


async def test_a_pinned_model_starts_its_min_replicas_and_keeps_them() -> None:
    clock = ManualClock()
    manager, _ = scaling(clock, replicas=Replicas(2, 2), m={"pinned": True})
    await manager.preload()
    assert [r["state"] for r in model(manager, "m")["replicas"]] == ["ready", "ready"]
    clock.advance(1000)
    assert manager.reap() == []


# -- every waiting path, cancelled at the awkward moment ---------------------------------------


async def _busy_model(clock: ManualClock, auto_healthy: bool = True
                      ) -> tuple[Manager, Any, asyncio.Event, list[asyncio.Task[None]]]:
    manager, launcher = scaling(clock, replicas=Replicas(0, 2), m={"max_concurrent": 1})
    launcher.auto_healthy = auto_healthy
    release, served = asyncio.Event(), list[int]()
    first = hold(manager, manager.instances["m"], release, served)
    if auto_healthy:
        await wait_for(lambda: served == [0])
    return manager, launcher, release, [first]


@pytest.mark.parametrize("moment", ["starting", "slot", "slot_while_scaling", "handed_over",
                                    "in_flight_on_second", "operator"])
async def test_cancelled_waiters_leave_no_counter_behind(moment: str) -> None:
    clock = ManualClock()
    manager, launcher, release, tasks = await _busy_model(clock, moment != "starting")
    m, group = manager.instances["m"], manager.models["m"]
    served: list[int] = []
    victim: asyncio.Task[Any]
    fired: list[bool] = []
    if moment == "starting":
        await wait_for(lambda: m.state is State.STARTING)
        victim = tasks.pop()
    elif moment == "operator":
        launcher.auto_healthy = False
        victim = asyncio.create_task(manager.load(m, replicas=2))
        await wait_for(lambda: len(group.replicas) == 2 and group.replicas[1].state is State.STARTING)
    else:
        victim = hold(manager, m, release, served)
        await wait_for(lambda: group.slot_waiters == 1)
        if moment in ("slot_while_scaling", "handed_over", "in_flight_on_second"):
            launcher.auto_healthy = moment != "slot_while_scaling"
            if moment == "handed_over":
                # Cancel at the moment the new replica's slot is handed to the waiter.
                notify = group.limiter.on_change

                def cancel_on_grant(limiter: Any) -> None:
                    if limiter.in_flight == 2 and not victim.done() and not fired:
                        fired.append(victim.cancel())
                    if notify is not None:
                        notify(limiter)

                group.limiter.on_change = cancel_on_grant
            clock.advance(6)
            assert manager.scaler.tick() == ["m"]
            if moment == "slot_while_scaling":
                await wait_for(lambda: group.replicas[1].state is State.STARTING)
            if moment == "in_flight_on_second":
                await wait_for(lambda: served == [1])
            if moment == "handed_over":
                await wait_for(lambda: bool(fired))
    victim.cancel()
    await asyncio.gather(victim, return_exceptions=True)
    assert fired == ([True] if moment == "handed_over" else [])
    launcher.auto_healthy = True
    for handle in launcher.handles:
        handle.healthy = True
    release.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    await settle(manager)
    assert counters_zero(manager)
    doc = model(manager, "m")
    assert doc["in_flight"] == 0 and doc["queued"] == 0
    assert all(r["in_flight"] == 0 for r in doc["replicas"])
    # The model still serves afterwards.
    async with manager.lease(m) as lease:
        assert lease.instance.state is State.READY
    assert counters_zero(manager)


async def test_a_failed_scale_up_is_not_retried_before_its_backoff() -> None:
    clock = ManualClock()
    manager, launcher = scaling(clock, replicas=Replicas(0, 2))
    m, group = manager.instances["m"], manager.models["m"]
    release, served = asyncio.Event(), list[int]()
    tasks = [hold(manager, m, release, served) for _ in range(3)]
    await wait_for(lambda: len(served) == 2 and group.slot_waiters == 1)
    launcher.fail_with = "torch.OutOfMemoryError: CUDA out of memory"
    clock.advance(6)
    assert manager.scaler.tick() == ["m"]
    await settle(manager)
    manager.reap()  # forgets the failed replica, and holds scale-ups back for the backoff
    assert [r.index for r in group.replicas] == [0] and kinds(manager, "failed") == ["m"]
    assert manager.scaler.tick() == []
    clock.advance(manager.config.faults.start_backoff_s)
    assert manager.scaler.tick() == ["m"]  # fails again: the next wait is twice as long
    await settle(manager)
    manager.reap()
    launcher.fail_with = None
    clock.advance(manager.config.faults.start_backoff_s * 1.5)
    assert manager.scaler.tick() == []
    clock.advance(manager.config.faults.start_backoff_s)
    assert manager.scaler.tick() == ["m"]
    await wait_for(lambda: len(served) == 3)
    assert group.scale_failures == 0
    assert served[2] == 1
    release.set()
    await asyncio.gather(*tasks)
    assert counters_zero(manager)
