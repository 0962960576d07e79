"""Per-model admission: limits, FIFO hand-over, and exact counters under cancellation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

import pytest

from vllm_gateway.admission import (
    INITIAL_HOLD_S,
    Limiter,
    QueueFull,
    Ticket,
    TicketState,
)

Admission = AbstractAsyncContextManager[Ticket]
T = TypeVar("T")


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def enter(limiter: Limiter) -> tuple[Admission, Ticket]:
    cm = limiter.admit()
    return cm, await cm.__aenter__()


async def leave(cm: Admission) -> None:
    await cm.__aexit__(None, None, None)


def activate_now(ticket: Ticket) -> None:
    """Run activate() to its end in one go; fail if it would give the event loop a turn."""
    coro = ticket.activate()
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()
    raise AssertionError("activate() suspended")


async def within(awaitable: Awaitable[T]) -> T:
    """Await with a generous bound, so a lost wake-up fails the test instead of hanging it."""
    return await asyncio.wait_for(awaitable, 10)


async def settle(turns: int = 5) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


# --- admission rule ---------------------------------------------------------------------------


async def test_ready_model_admits_up_to_max_concurrent_even_with_max_queue_zero() -> None:
    limiter = Limiter("m", max_concurrent=2, max_queue=0)
    for _ in range(2):
        _, ticket = await enter(limiter)
        assert (limiter.queued, ticket.state) == (1, TicketState.WAITING)
        activate_now(ticket)
        assert ticket.state is TicketState.ACTIVE
    with pytest.raises(QueueFull) as info:
        await enter(limiter)
    full = info.value
    assert (full.model, full.max_concurrent, full.max_queue) == ("m", 2, 0)
    assert (full.in_flight, full.queued) == (2, 0)
    assert full.retry_after_s >= 1
    assert (limiter.in_flight, limiter.queued) == (2, 0)


async def test_queue_full_carries_the_counts_and_counts_nothing() -> None:
    limiter = Limiter("llama", max_concurrent=1, max_queue=2)
    _, first = await enter(limiter)
    activate_now(first)
    await enter(limiter)
    await enter(limiter)
    with pytest.raises(QueueFull) as info:
        await enter(limiter)
    full = info.value
    assert (full.model, full.max_concurrent, full.max_queue) == ("llama", 1, 2)
    assert (full.in_flight, full.queued) == (1, 2)
    assert "llama" in str(full)
    assert (limiter.in_flight, limiter.queued) == (1, 2)


async def test_cold_start_holds_at_most_max_concurrent_plus_max_queue() -> None:
    limiter = Limiter("m", max_concurrent=2, max_queue=1)
    for _ in range(3):
        await enter(limiter)
    assert (limiter.in_flight, limiter.queued) == (0, 3)
    with pytest.raises(QueueFull):
        await enter(limiter)


def test_rejects_nonsense_limits() -> None:
    with pytest.raises(ValueError):
        Limiter("m", max_concurrent=0, max_queue=1)
    with pytest.raises(ValueError):
        Limiter("m", max_concurrent=1, max_queue=-1)


# --- fast path, FIFO, concurrency ------------------------------------------------------------


async def test_ready_request_never_yields_to_the_event_loop() -> None:
    limiter = Limiter("m", max_concurrent=1, max_queue=0)
    others_ran = False

    async def other() -> None:
        nonlocal others_ran
        others_ran = True

    task = asyncio.create_task(other())
    async with limiter.admit() as ticket:
        await ticket.activate()
        assert limiter.in_flight == 1
    assert not others_ran
    await task
    assert others_ran and limiter.idle


async def test_waiters_get_slots_in_arrival_order_and_newcomers_queue_behind() -> None:
    limiter = Limiter("m", max_concurrent=1, max_queue=10)
    holder_cm, holder = await enter(limiter)
    activate_now(holder)
    arrival = [3, 0, 4, 1, 2]
    go = [asyncio.Event() for _ in arrival]
    order: list[int] = []

    async def user(i: int) -> None:
        async with limiter.admit() as ticket:
            await go[i].wait()
            await ticket.activate()
            order.append(i)

    tasks = [asyncio.create_task(user(i)) for i in range(len(arrival))]
    for i in arrival:
        go[i].set()
        await settle()
    assert (limiter.in_flight, limiter.queued) == (1, 5)
    await leave(holder_cm)
    go.append(asyncio.Event())
    go[5].set()
    tasks.append(asyncio.create_task(user(5)))
    await within(asyncio.gather(*tasks))
    assert order == [*arrival, 5]
    assert limiter.idle


async def test_twelve_tasks_never_exceed_two_slots() -> None:
    limiter = Limiter("m", max_concurrent=2, max_queue=20)
    current = peak = 0

    async def user(i: int) -> None:
        nonlocal current, peak
        async with limiter.admit() as ticket:
            await ticket.activate()
            current += 1
            peak = max(peak, current)
            assert current <= limiter.in_flight <= 2
            for _ in range(i % 3 + 1):
                await asyncio.sleep(0)
            current -= 1

    await within(asyncio.gather(*(user(i) for i in range(12))))
    assert peak == 2
    assert limiter.idle


# --- ticket misuse ---------------------------------------------------------------------------


async def test_activate_is_idempotent_once_active_and_refused_after_release() -> None:
    limiter = Limiter("m", max_concurrent=1, max_queue=1)
    cm, ticket = await enter(limiter)
    activate_now(ticket)
    activate_now(ticket)
    assert limiter.in_flight == 1
    await leave(cm)
    await leave(cm)  # a second exit changes nothing
    assert limiter.idle
    with pytest.raises(RuntimeError):
        await ticket.activate()
    with pytest.raises(RuntimeError):
        await cm.__aenter__()


async def test_release_while_another_task_waits_in_activate() -> None:
    limiter = Limiter("m", max_concurrent=1, max_queue=2)
    holder_cm, holder = await enter(limiter)
    activate_now(holder)
    cm, ticket = await enter(limiter)
    waiting = asyncio.create_task(ticket.activate())
    await settle()
    with pytest.raises(RuntimeError):
        await ticket.activate()
    await leave(cm)
    with pytest.raises(RuntimeError):
        await within(waiting)
    assert (limiter.in_flight, limiter.queued) == (1, 0)
    await leave(holder_cm)
    assert limiter.idle
    cm, ticket = await enter(limiter)
    activate_now(ticket)
    assert limiter.in_flight == 1


# --- idle tracking, retry-after, change callback ---------------------------------------------


async def test_wait_idle_and_last_idle_at() -> None:
    clock = FakeClock(10.0)
    limiter = Limiter("m", max_concurrent=2, max_queue=2, clock=clock)
    assert limiter.idle and limiter.last_idle_at is None
    await within(limiter.wait_idle())
    first_cm, first = await enter(limiter)
    activate_now(first)
    queued_cm, _ = await enter(limiter)
    idle_task = asyncio.create_task(limiter.wait_idle())
    clock.now = 15.0
    await leave(first_cm)
    await settle()
    assert not idle_task.done() and limiter.last_idle_at is None
    clock.now = 20.0
    await leave(queued_cm)  # a request that never got a slot (model failed to start)
    await within(idle_task)
    assert limiter.idle and limiter.last_idle_at == 20.0
    clock.now = 30.0
    async with limiter.admit() as ticket:
        await ticket.activate()
        assert limiter.last_idle_at == 20.0
        clock.now = 31.0
    assert limiter.last_idle_at == 31.0


async def test_retry_after_follows_moving_average_of_hold_times() -> None:
    clock = FakeClock()
    limiter = Limiter("m", max_concurrent=2, max_queue=10, clock=clock)
    assert limiter.avg_hold_s == INITIAL_HOLD_S

    async def hold(seconds: float) -> None:
        async with limiter.admit() as ticket:
            await ticket.activate()
            clock.now += seconds

    await hold(4.0)
    assert limiter.avg_hold_s == 4.0  # the first sample replaces the initial guess
    await hold(2.0)
    assert limiter.avg_hold_s == pytest.approx(3.6)
    held = [await enter(limiter) for _ in range(5)]
    for _, ticket in held[:2]:
        activate_now(ticket)
    assert (limiter.in_flight, limiter.queued) == (2, 3)
    assert limiter.retry_after_s == 8  # ceil(3.6 * (3 + 1) / 2)
    for _ in range(7):
        await enter(limiter)
    with pytest.raises(QueueFull) as info:
        await enter(limiter)
    assert info.value.queued == 10
    assert info.value.retry_after_s == 20  # ceil(3.6 * (10 + 1) / 2)


@pytest.mark.parametrize(("held_s", "expected"), [(0.0, 1), (1000.0, 60)])
async def test_retry_after_is_clamped(held_s: float, expected: int) -> None:
    clock = FakeClock()
    limiter = Limiter("m", max_concurrent=1, max_queue=1, clock=clock)
    async with limiter.admit() as ticket:
        await ticket.activate()
        clock.now += held_s
    assert limiter.retry_after_s == expected


async def test_on_change_sees_every_consistent_step(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[tuple[int, int]] = []
    limiter = Limiter("m", 1, 1, on_change=lambda lim: seen.append((lim.in_flight, lim.queued)))
    first_cm, first = await enter(limiter)
    activate_now(first)
    second_cm, second = await enter(limiter)
    waiting = asyncio.create_task(second.activate())
    await settle()
    with pytest.raises(QueueFull):
        await enter(limiter)
    await leave(first_cm)  # the hand-over is one change, never a transient (0, 1)
    await within(waiting)
    await leave(second_cm)
    assert seen == [(0, 1), (1, 0), (1, 1), (1, 0), (0, 0)]

    def broken(_: Limiter) -> None:
        raise RuntimeError("metrics down")

    limiter.on_change = broken
    with caplog.at_level(logging.ERROR):
        async with limiter.admit() as ticket:
            await ticket.activate()
    assert limiter.idle
    assert "metrics down" in caplog.text
