"""Admission counters stay exact under random interleavings: a Hypothesis test drives
admits, activates, cancels and exits in any order and checks the counters, FIFO hand-over
and that no free slot is left while someone waits, after every step. The targeted
cancellation tests and the deterministic sweeps are in test_admission_cancel_points.py.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_gateway.admission import Limiter, QueueFull, Ticket, TicketState

# Weighted so that tickets pile up behind full slots often enough to exercise hand-overs.
KINDS = ("admit", "admit", "activate", "activate", "finish", "abandon", "cancel")
# (kind, which ticket, abandon only: let its activate() end first, give the loop turns afterwards)
Op = tuple[str, int, bool, bool]
# Long lists: Hypothesis' default lengths are too short for queues to build up.
OPS = st.lists(
    st.tuples(st.sampled_from(KINDS), st.integers(0, 7), st.booleans(), st.booleans()),
    min_size=20,
    max_size=80,
)


@dataclass
class Live:
    cm: AbstractAsyncContextManager[Ticket]
    ticket: Ticket
    task: asyncio.Task[None] | None = None
    asked_at: int = -1  # when the current activate() call was made


async def interleave(max_concurrent: int, max_queue: int, ops: list[Op]) -> None:
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
        # FIFO: nobody got a slot while an earlier, still wanted activate() keeps waiting.
        still_waiting = [
            e.asked_at
            for e in live
            if e.ticket.state is TicketState.WAITING
            and e.task is not None
            and not e.task.done()
            and not e.task.cancelling()
        ]
        for entry in live:
            if entry.ticket.state is TicketState.ACTIVE and still_waiting:
                assert entry.asked_at < min(still_waiting)

    def pending(entry: Live) -> bool:
        return entry.task is not None and not entry.task.done()

    def pick(index: int, candidates: list[Live]) -> Live | None:
        return candidates[index % len(candidates)] if candidates else None

    async def settle() -> None:
        for _ in range(3):
            await asyncio.sleep(0)

    async def leave(entry: Live, let_task_finish: bool) -> None:
        task = entry.task
        if task is not None and not task.done():
            task.cancel()  # the owner is going away; its activate() goes with it
            if let_task_finish:
                await asyncio.wait([task])
        await entry.cm.__aexit__(None, None, None)
        live.remove(entry)
        released.append(entry.ticket)

    for step, (kind, index, flag, turns) in enumerate(ops):
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
        elif kind == "activate":
            idle = [e for e in live if e.ticket.state is TicketState.WAITING and not pending(e)]
            if entry := pick(index, idle):
                entry.task = asyncio.create_task(entry.ticket.activate())
                entry.asked_at = step
                tasks.append(entry.task)
        elif kind == "cancel":
            if (entry := pick(index, [e for e in live if pending(e)])) and entry.task:
                entry.task.cancel()
        elif kind == "finish":
            active = [e for e in live if e.ticket.state is TicketState.ACTIVE and not pending(e)]
            if entry := pick(index, active):
                await leave(entry, let_task_finish=False)
        elif entry := pick(index, live):
            await leave(entry, let_task_finish=flag)
        check()
        if turns:
            await settle()
            check()
            if limiter.in_flight < max_concurrent:
                # A free slot while someone is still blocked in activate() would be starvation.
                assert not any(pending(e) for e in live)

    while live:
        await leave(live[0], let_task_finish=False)
    await settle()
    check()
    assert limiter.idle and limiter.in_flight == 0 and limiter.queued == 0
    for task in tasks:
        assert task.done()
        assert task.cancelled() or task.exception() is None


@settings(max_examples=300, deadline=None)
@given(max_concurrent=st.integers(1, 3), max_queue=st.integers(0, 3), ops=OPS)
def test_random_interleavings_keep_counters_exact(
    max_concurrent: int, max_queue: int, ops: list[Op]
) -> None:
    asyncio.run(interleave(max_concurrent, max_queue, ops))
