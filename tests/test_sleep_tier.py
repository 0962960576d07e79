"""The sleep tier's rules, in-process: the manager over the fake launcher, a fake sleep API and a
manual clock. What the real HTTP side does is tested against the fake backend and real vLLM."""

from __future__ import annotations

import asyncio

from helpers import wait_for
from runtime_fakes import FakeSleep, kinds, make_manager, settle

from vllm_gateway.lifecycle import State
from vllm_gateway.runtime.clock import ManualClock
from vllm_gateway.runtime.manager import Manager


async def ready(manager: Manager, *names: str) -> None:
    for name in names:
        await asyncio.wait_for(manager.ensure_ready(manager.instances[name]), 5)


async def test_an_idle_model_sleeps_instead_of_stopping() -> None:
    clock, sleep = ManualClock(), FakeSleep()
    manager, launcher = make_manager({"m": 20}, gpus=[40], clock=clock, sleeper=sleep, sleep=1,
                                     idle_timeout_s=60, sleep_vram_gb=2)
    inst = manager.instances["m"]
    await ready(manager, "m")
    clock.advance(59)
    assert manager.reap() == []
    clock.advance(2)
    assert manager.reap() == ["m"]
    await settle(manager)
    assert inst.state is State.SLEEPING and inst.sleep_level == 1
    assert launcher.handles[0].alive() and launcher.handles[0].stop_calls == 0
    assert manager.used_gb() == {0: 2.0} and manager.host_used_gb() == 20.0
    assert kinds(manager, "asleep") == ["m"]


async def test_memory_counts_in_full_until_the_sleep_is_confirmed() -> None:
    sleep = FakeSleep(gate=asyncio.Event())
    manager, _ = make_manager({"m": 20}, gpus=[40], sleeper=sleep, sleep=2, sleep_vram_gb=3)
    inst = manager.instances["m"]
    await ready(manager, "m")
    task = asyncio.create_task(manager.sleep(inst))
    await wait_for(lambda: sleep.calls)
    assert inst.state is State.DRAINING and manager.used_gb() == {0: 20.0}
    sleep.gate.set()  # type: ignore[union-attr]
    await task
    assert inst.state is State.SLEEPING and manager.used_gb() == {0: 3.0}
    assert sleep.calls == [("sleep", inst.base_url, 2)] and manager.host_used_gb() == 0.0


async def test_a_new_model_puts_the_idle_one_to_sleep_and_a_request_wakes_it_once() -> None:
    sleep = FakeSleep()
    manager, launcher = make_manager({"a": 30, "b": 30}, gpus=[40], sleeper=sleep, sleep=1,
                                     sleep_vram_gb=2)
    a, b = manager.instances["a"], manager.instances["b"]
    await ready(manager, "a", "b")
    assert a.state is State.SLEEPING and b.state is State.READY
    assert len(launcher.handles) == 2 and launcher.handles[0].stop_calls == 0
    # Three requests for a at once: b goes to sleep, a is woken once, all three are served.
    await asyncio.gather(*(manager.ensure_ready(a) for _ in range(3)))
    assert a.state is State.READY and b.state is State.SLEEPING
    assert [c[0] for c in sleep.calls] == ["sleep", "sleep", "wake"]
    assert len(launcher.handles) == 2  # no cold start
    assert manager.used_gb() == {0: 32.0}
    assert manager.svc.metrics.wakes.labels("a")._value.get() == 1.0
    assert a.last_wake_s is not None


async def test_sleepers_are_stopped_when_their_residual_memory_is_needed() -> None:
    manager, launcher = make_manager({"a": 20, "b": 20, "c": 20}, gpus=[24], sleep=1,
                                     sleep_vram_gb=3)
    await ready(manager, "a", "b")
    assert manager.instances["a"].state is State.SLEEPING
    await ready(manager, "c")
    # Sleeping b (the idle one) and keeping a asleep would leave 3 + 3 + 20 > 24: the oldest
    # sleeper goes for good.
    states = {n: i.state for n, i in manager.instances.items()}
    assert states == {"a": State.STOPPED, "b": State.SLEEPING, "c": State.READY}
    assert manager.used_gb() == {0: 23.0}
    assert launcher.by_name("a")[0].stop_calls == 1


async def test_level_one_falls_back_to_level_two_when_host_memory_is_full() -> None:
    sleep = FakeSleep()
    manager, _ = make_manager({"a": 10, "b": 10, "c": 10}, gpus=[80], sleeper=sleep, sleep=1,
                              host_gb=15, weights_gb=10)
    await ready(manager, "a", "b", "c")
    await manager.sleep(manager.instances["a"])
    await manager.sleep(manager.instances["b"])
    assert [lvl for kind, _, lvl in sleep.calls if kind == "sleep"] == [1, 2]
    assert manager.host_used_gb() == 10.0


async def test_a_failed_sleep_stops_the_model() -> None:
    manager, launcher = make_manager({"m": 10}, gpus=[40], sleeper=FakeSleep(fail_sleep=True),
                                     sleep=1)
    inst = manager.instances["m"]
    await ready(manager, "m")
    await manager.sleep(inst)
    await settle(manager)
    assert inst.state is State.STOPPED and not launcher.handles[0].alive()
    assert kinds(manager, "sleep_failed") == ["m"] and manager.used_gb() == {0: 0.0}


async def test_a_failed_wake_is_served_by_a_cold_start() -> None:
    sleep = FakeSleep()
    manager, launcher = make_manager({"m": 10}, gpus=[40], sleeper=sleep, sleep=1)
    inst = manager.instances["m"]
    await ready(manager, "m")
    await manager.sleep(inst)
    sleep.fail_wake = True
    await asyncio.gather(*(manager.ensure_ready(inst) for _ in range(2)))
    assert inst.state is State.READY and len(launcher.handles) == 2
    assert not launcher.handles[0].alive()
    assert kinds(manager, "wake_failed") == ["m"]


async def test_a_wake_check_that_differs_is_a_failed_wake() -> None:
    sleep = FakeSleep()
    manager, launcher = make_manager({"m": 10}, gpus=[40], sleeper=sleep, sleep=2)
    inst = manager.instances["m"]
    await ready(manager, "m")
    assert inst.reference_answer == "Paris"
    await manager.sleep(inst)
    sleep.answers[launcher.handles[0].base_url] = "garbage"
    await manager.ensure_ready(inst)
    assert len(launcher.handles) == 2 and inst.wake_check_failures == 1
    assert manager.svc.metrics.wake_check_failures.labels("m")._value.get() == 1.0


async def test_death_while_asleep_is_noticed_without_traffic() -> None:
    manager, launcher = make_manager({"m": 10}, gpus=[40], sleep=1)
    inst = manager.instances["m"]
    await ready(manager, "m")
    await manager.sleep(inst)
    launcher.handles[0].crash(139, "Segmentation fault")
    await wait_for(lambda: inst.state is State.FAILED)
    await settle(manager)
    assert inst.placement is None and "while sleeping" in (inst.last_error or "")
    assert manager.used_gb() == {0: 0.0} and manager.host_used_gb() == 0.0


async def test_a_client_gone_while_its_model_wakes_leaves_nothing_behind() -> None:
    sleep = FakeSleep()
    manager, _ = make_manager({"m": 10}, gpus=[40], sleeper=sleep, sleep=1)
    inst = manager.instances["m"]
    await ready(manager, "m")
    await manager.sleep(inst)
    sleep.gate = asyncio.Event()

    async def request() -> None:
        async with manager.lease(inst):
            pass

    client = asyncio.create_task(request())
    await wait_for(lambda: inst.state is State.WAKING)
    client.cancel()
    await asyncio.gather(client, return_exceptions=True)
    assert inst.limiter.queued == 0 and inst.limiter.in_flight == 0 and inst.committed == 0
    sleep.gate.set()
    await settle(manager)
    assert inst.state is State.READY  # the wake went on for the next request


async def test_a_long_sleeper_is_stopped_after_sleep_timeout() -> None:
    clock = ManualClock()
    manager, launcher = make_manager({"m": 10}, gpus=[40], clock=clock, sleep=1,
                                     sleep_timeout_s=600)
    inst = manager.instances["m"]
    await ready(manager, "m")
    await manager.sleep(inst)
    clock.advance(599)
    assert manager.reap() == []
    clock.advance(2)
    assert manager.reap() == ["m"]
    await settle(manager)
    assert inst.state is State.STOPPED and not launcher.handles[0].alive()


async def test_a_model_with_sleep_off_is_stopped_as_before() -> None:
    sleep = FakeSleep()
    manager, _ = make_manager({"a": 30, "b": 30}, gpus=[40], sleeper=sleep)
    await ready(manager, "a", "b")
    assert manager.instances["a"].state is State.STOPPED and sleep.calls == []


async def test_a_sleepers_own_sleep_gauge_is_read_into_status() -> None:
    from vllm_gateway.runtime.monitor import Monitor
    from vllm_gateway.runtime.status import model_status

    asleep_level = {"engine_sleep_level": 1.0}

    async def scrape(base_url: str, name: str) -> dict[str, float] | None:
        return asleep_level

    manager, _ = make_manager({"m": 20}, gpus=[40], sleep=1, sleep_vram_gb=2)
    monitor = Monitor(manager, scrape)
    inst = manager.instances["m"]
    await ready(manager, "m")
    await manager.sleep(inst)
    await monitor.read_asleep(inst)
    shown = model_status(manager, inst)
    assert shown["state"] == "sleeping" and shown["backend"] == {"engine_sleep_level": 1.0}
    # Once it is stopped the server's gauges are stale and no longer shown.
    await manager.unload(inst)
    assert model_status(manager, inst)["backend"] is None
