"""Admission counters stay exact whichever point a cancellation lands on.

Targeted tests cover each exit path and both orders of "slot handed over" and
"waiter cancelled". Two deterministic sweeps cancel one request of a small scenario at every
event-loop step, and at every counter change (from inside the change hook,
which is the moment a slot is handed over), until the scenario finishes
before the cancellation can land. Random interleavings are in test_admission_interleavings.py.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import pytest

from vllm_gateway.admission import Limiter, QueueFull, Ticket, TicketState

Admission = AbstractAsyncContextManager[Ticket]
T = TypeVar("T")
Mode = Literal["loop_step", "counter_change"]
USERS = ("a", "b", "c", "d")
MAX_SWEEP = 1000


async def enter(limiter: Limiter) -> tuple[Admission, Ticket]:
    cm = limiter.admit()
    return cm, await cm.__aenter__()


async def leave(cm: Admission) -> None:
    await cm.__aexit__(None, None, None)


def run_now(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine that must finish without giving the event loop a turn."""
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()
    raise AssertionError("suspended where no await was expected")


def activate_now(ticket: Ticket) -> None:
    run_now(ticket.activate())


def state(ticket: Ticket) -> TicketState:
    # A call, so the type checker does not pin the state across the awaits that change it.
    return ticket.state


async def within(awaitable: Awaitable[T]) -> T:
    """Await with a generous bound, so a lost wake-up fails the test instead of hanging it."""
    return await asyncio.wait_for(awaitable, 10)


async def settle(turns: int = 5) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


def assert_fully_available(limiter: Limiter) -> None:
    """All slots take the no-yield fast path again, and the whole queue is there behind them."""

    async def check() -> None:
        held = [await enter(limiter) for _ in range(limiter.max_concurrent)]
        for _, ticket in held:
            activate_now(ticket)
        assert limiter.in_flight == limiter.max_concurrent
        held += [await enter(limiter) for _ in range(limiter.max_queue)]
        assert limiter.queued == limiter.max_queue
        with pytest.raises(QueueFull):
            await enter(limiter)
        for cm, _ in held:
            await leave(cm)
        assert limiter.idle

    run_now(check())


# --- release on every exit path and at the hand-over ---------------------------------------------


async def test_exception_in_body_releases_and_propagates() -> None:
    limiter = Limiter("m", max_concurrent=1, max_queue=1)
    with pytest.raises(ValueError):
        async with limiter.admit() as ticket:
            await ticket.activate()
            raise ValueError("backend broke")
    assert limiter.idle and ticket.state is TicketState.DONE
    with pytest.raises(ValueError):
        async with limiter.admit():
            raise ValueError("model failed to start")
    assert limiter.idle
    assert_fully_available(limiter)


@pytest.mark.parametrize("where", ["model_start", "slot_wait", "backend"])
async def test_cancellation_releases(where: str) -> None:
    limiter = Limiter("m", max_concurrent=1, max_queue=2)
    never = asyncio.Event()
    holder_cm, holder = await enter(limiter)
    activate_now(holder)

    async def user() -> None:
        async with limiter.admit() as ticket:
            if where == "model_start":
                await never.wait()
            await ticket.activate()
            await never.wait()

    if where == "backend":
        await leave(holder_cm)
    task = asyncio.create_task(user())
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await within(task)
    if where != "backend":
        assert (limiter.in_flight, limiter.queued) == (1, 0)
        await leave(holder_cm)
    assert limiter.idle
    assert_fully_available(limiter)


async def test_slot_handed_over_as_the_waiter_is_cancelled_is_not_lost() -> None:
    limiter = Limiter("m", max_concurrent=1, max_queue=2)
    holder_cm, holder = await enter(limiter)
    activate_now(holder)
    tickets: list[Ticket] = []

    async def user() -> None:
        async with limiter.admit() as ticket:
            tickets.append(ticket)
            await ticket.activate()
            raise AssertionError("the cancelled waiter must not run its request")

    task = asyncio.create_task(user())
    await settle()
    await leave(holder_cm)
    assert state(tickets[0]) is TicketState.ACTIVE
    assert (limiter.in_flight, limiter.queued) == (1, 0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await within(task)
    assert state(tickets[0]) is TicketState.DONE
    assert limiter.idle
    assert_fully_available(limiter)


async def test_waiter_cancelled_before_hand_over_is_skipped() -> None:
    limiter = Limiter("m", max_concurrent=1, max_queue=3)
    holder_cm, holder = await enter(limiter)
    activate_now(holder)
    tickets: dict[str, Ticket] = {}

    async def user(name: str) -> None:
        async with limiter.admit() as ticket:
            tickets[name] = ticket
            await ticket.activate()

    first = asyncio.create_task(user("first"))
    await settle()
    second = asyncio.create_task(user("second"))
    await settle()
    first.cancel()
    await leave(holder_cm)
    assert tickets["first"].state is TicketState.WAITING
    assert tickets["second"].state is TicketState.ACTIVE
    assert (limiter.in_flight, limiter.queued) == (1, 1)
    with pytest.raises(asyncio.CancelledError):
        await within(first)
    await within(second)
    assert limiter.idle
    assert_fully_available(limiter)


async def test_waiter_that_gave_up_and_retries_goes_to_the_back() -> None:
    limiter = Limiter("m", max_concurrent=1, max_queue=2)
    holder_cm, holder = await enter(limiter)
    activate_now(holder)
    first_cm, first = await enter(limiter)
    second_cm, second = await enter(limiter)
    first_try = asyncio.create_task(first.activate())
    await settle()
    second_wait = asyncio.create_task(second.activate())
    await settle()
    first_try.cancel()  # e.g. the handler's own timeout around activate()
    await settle()
    assert first_try.cancelled() and first.state is TicketState.WAITING
    first_retry = asyncio.create_task(first.activate())
    await settle()
    await leave(holder_cm)
    assert (first.state, second.state) == (TicketState.WAITING, TicketState.ACTIVE)
    await within(second_wait)
    await leave(second_cm)
    await within(first_retry)
    assert state(first) is TicketState.ACTIVE
    await leave(first_cm)
    assert limiter.idle


# --- cancellation sweeps ----------------------------------------------------------------------


@dataclass
class Run:
    landed: bool = False
    # Ticket state seen by the target when activate() raised CancelledError.
    state_in_activate: TicketState | None = None
    served: list[str] = field(default_factory=list)


async def scenario(max_concurrent: int, target: str, mode: Mode, cancel_at: int) -> Run:
    """Four users queue while the model starts, then share the slots; cancel `target` once."""
    loop = asyncio.get_running_loop()
    run = Run()
    tasks: dict[str, asyncio.Task[None]] = {}
    changes = 0
    ticks = 0
    ticking = True

    def fire() -> None:
        run.landed = tasks[target].cancel()

    def on_change(_: Limiter) -> None:
        nonlocal changes
        if mode == "counter_change" and changes == cancel_at:
            fire()
        changes += 1

    def tick() -> None:
        # Rescheduled with call_soon, so it runs exactly once per event-loop iteration.
        nonlocal ticks
        if mode == "loop_step" and ticks == cancel_at:
            fire()
        ticks += 1
        if ticking:
            loop.call_soon(tick)

    limiter = Limiter("m", max_concurrent, max_queue=len(USERS), on_change=on_change)
    model_ready = asyncio.Event()

    async def user(name: str) -> None:
        async with limiter.admit() as ticket:
            await model_ready.wait()
            try:
                await ticket.activate()
            except asyncio.CancelledError:
                run.state_in_activate = ticket.state
                raise
            assert limiter.in_flight <= max_concurrent
            for _ in range(3):
                await asyncio.sleep(0)
            run.served.append(name)

    async def start_model() -> None:
        for _ in range(2):
            await asyncio.sleep(0)
        model_ready.set()

    loop.call_soon(tick)  # first in the ready queue: cancel_at=0 lands before the target starts
    tasks.update((name, asyncio.create_task(user(name))) for name in USERS)
    async with asyncio.timeout(5):  # a lost slot would hang the others
        await asyncio.gather(start_model(), *tasks.values(), return_exceptions=True)
    ticking = False
    for name, task in tasks.items():
        if name != target:
            assert task.result() is None
            assert name in run.served
    assert (limiter.in_flight, limiter.queued) == (0, 0) and limiter.idle
    assert_fully_available(limiter)
    return run


@pytest.mark.parametrize("mode", ["loop_step", "counter_change"])
@pytest.mark.parametrize("max_concurrent", [1, 2])
@pytest.mark.parametrize("target", USERS)
def test_cancel_at_every_point_keeps_counters_exact(
    mode: Mode, max_concurrent: int, target: str
) -> None:
    states: set[TicketState | None] = set()
    for cancel_at in itertools.count():
        assert cancel_at < MAX_SWEEP, "the scenario never outran the cancellation"
        run = asyncio.run(scenario(max_concurrent, target, mode, cancel_at))
        if not run.landed:
            assert target in run.served
            break
        states.add(run.state_in_activate)
    assert cancel_at > 5  # the sweep really walked through the scenario
    if USERS.index(target) >= max_concurrent:
        # The target queues for a slot: some cancellation found its ticket still waiting, and
        # some landed on the step that handed it a slot (the ticket is ACTIVE; its exit returns it).
        assert TicketState.ACTIVE in states
        if mode == "loop_step":
            assert TicketState.WAITING in states
