"""Admission counters stay exact whichever point a cancellation lands on.

Two deterministic sweeps cancel one request of a small scenario at every
event-loop step, and at every counter change (from inside the change hook,
which is the moment a slot is handed over), until the scenario finishes
before the cancellation can land. A Hypothesis test drives random
interleavings of admits, activates, cancels and exits.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_gateway.admission import Limiter, QueueFull, Ticket, TicketState

Mode = Literal["loop_step", "counter_change"]
USERS = ("a", "b", "c", "d")
MAX_SWEEP = 1000


def run_now(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine that must finish without giving the event loop a turn."""
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()
    raise AssertionError("suspended where no await was expected")


async def assert_fully_available(limiter: Limiter) -> None:
    held: list[AbstractAsyncContextManager[Ticket]] = []
    for _ in range(limiter.max_concurrent):
        cm = limiter.admit()
        held.append(cm)
        run_now((await cm.__aenter__()).activate())
    assert limiter.in_flight == limiter.max_concurrent
    for _ in range(limiter.max_queue):
        cm = limiter.admit()
        await cm.__aenter__()
        held.append(cm)
    with pytest.raises(QueueFull):
        await limiter.admit().__aenter__()
    for cm in held:
        await cm.__aexit__(None, None, None)
    assert limiter.idle


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
    await assert_fully_available(limiter)
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


# --- random interleavings ---------------------------------------------------------------------

OPS = st.lists(
    st.tuples(
        st.sampled_from(["admit", "activate", "cancel", "exit", "step"]),
        st.integers(0, 7),
        st.booleans(),
    ),
    max_size=60,
)


@dataclass
class Live:
    cm: AbstractAsyncContextManager[Ticket]
    ticket: Ticket
    task: asyncio.Task[None] | None = None


async def interleave(max_concurrent: int, max_queue: int, ops: list[tuple[str, int, bool]]) -> None:
    limiter = Limiter("m", max_concurrent, max_queue)
    live: list[Live] = []
    released: list[Ticket] = []
    tasks: list[asyncio.Task[None]] = []

    def check() -> None:
        states = [entry.ticket.state for entry in live]
        assert 0 <= limiter.in_flight <= max_concurrent
        assert limiter.queued >= 0
        assert limiter.in_flight == states.count(TicketState.ACTIVE)
        assert limiter.queued == states.count(TicketState.WAITING)
        assert limiter.in_flight + limiter.queued <= max_concurrent + max_queue
        assert all(ticket.state is TicketState.DONE for ticket in released)
        assert limiter.idle == (not live)

    async def settle() -> None:
        for _ in range(3):
            await asyncio.sleep(0)

    async def exit_entry(entry: Live, let_task_finish: bool) -> None:
        task = entry.task
        if task is not None and not task.done():
            task.cancel()  # the owner is going away; its activate() goes with it
            if let_task_finish:
                await asyncio.wait([task])
        await entry.cm.__aexit__(None, None, None)
        live.remove(entry)
        released.append(entry.ticket)

    for kind, index, flag in ops:
        if kind == "admit":
            room = limiter.in_flight + limiter.queued < max_concurrent + max_queue
            cm = limiter.admit()
            try:
                ticket = await cm.__aenter__()
            except QueueFull as full:
                assert not room
                assert (full.in_flight, full.queued) == (limiter.in_flight, limiter.queued)
            else:
                assert room
                live.append(Live(cm, ticket))
        elif kind == "step":
            await settle()
            if limiter.in_flight < max_concurrent:
                # A free slot with someone still blocked in activate() would be starvation.
                assert all(e.task is None or e.task.done() for e in live)
        elif live:
            entry = live[index % len(live)]
            if kind == "activate":
                if entry.ticket.state is TicketState.WAITING and (
                    entry.task is None or entry.task.done()
                ):
                    entry.task = asyncio.create_task(entry.ticket.activate())
                    tasks.append(entry.task)
            elif kind == "cancel":
                if entry.task is not None:
                    entry.task.cancel()
            else:
                await exit_entry(entry, flag)
        check()

    while live:
        await exit_entry(live[0], let_task_finish=False)
    await settle()
    check()
    assert limiter.idle and limiter.in_flight == 0 and limiter.queued == 0
    for task in tasks:
        assert task.done()
        assert task.cancelled() or task.exception() is None


@settings(max_examples=300, deadline=None)
@given(max_concurrent=st.integers(1, 3), max_queue=st.integers(0, 3), ops=OPS)
def test_random_interleavings_keep_counters_exact(
    max_concurrent: int, max_queue: int, ops: list[tuple[str, int, bool]]
) -> None:
    asyncio.run(interleave(max_concurrent, max_queue, ops))
