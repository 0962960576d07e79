"""Waiting until a model serves: starting or waking a replica, making room, patience.

A request that finds no replica ready brings one up: it waits on a start or
wake already on its way, or wakes a sleeping replica, or starts the model's
first replica. When there is no room it waits for idle models to free it;
once it has waited longer than its model's patience it presses the busy
holders that are cheapest to bring back, so they drain and make room (see
README, "Scheduling").
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .. import planner
from ..errors import BackendTimeout, BackendUnavailable
from ..lifecycle import DOWN, State
from .instance import Instance
from .replicas import ReplicaSet

if TYPE_CHECKING:
    from .manager import Manager

# elapsed seconds, and the expected total when the model's load time is known
Progress = Callable[[float, float | None], Awaitable[None]]
PROGRESS_EVERY_S = 2.0
TICK_S = 0.25  # the longest a waiter sleeps before it looks again (clock seam, patience)


def _target(group: ReplicaSet) -> Instance:
    """The replica a waiter acts on: one on its way up, else a sleeper, else the first."""
    for replica in group.replicas:
        if replica.state in (State.STARTING, State.WAKING) and not replica.transition_done():
            return replica
    if group.first.state is not State.SLEEPING:
        for replica in group.replicas:
            if replica.state is State.SLEEPING and replica.transition_done():
                return replica
    return group.first


async def until_ready(m: Manager, group: ReplicaSet, progress: Progress | None, started: float,
                      pressed: list[Instance]) -> Instance:
    """The ready replica with the fewest requests bound to it, once there is one."""
    clock = m.svc.clock
    cfg = group.cfg
    deadline = started + cfg.startup_timeout_s
    next_tick = started + PROGRESS_EVERY_S
    while True:
        if m.closing:
            raise BackendUnavailable("the gateway is shutting down")
        open_ = [r for r in group.ready() if not r.pressed_before(started)]
        if open_:
            return min(open_, key=lambda r: (r.committed, r.claimed_at, r.index))
        now = clock.now()
        inst = _target(group)
        if progress is not None and now >= next_tick:
            next_tick = now + PROGRESS_EVERY_S
            await progress(now - started, m.claims.expected_load_s(inst))
            continue  # the state may have changed while the client was written to
        state = inst.state
        wait_s = max(min(next_tick if progress is not None else deadline, deadline) - now, 0.01)
        transition = inst.transition
        if transition is not None and not transition.done():
            # No shorter timeout here: waiters resume in the order they started waiting,
            # which keeps requests first come, first served once the model is ready.
            done, _ = await asyncio.wait({transition}, timeout=wait_s)
            if done and not transition.cancelled():
                error = transition.result()
                if error is not None and inst is group.first \
                        and inst.state in (State.BACKOFF, State.HELD):
                    raise error
            elif now >= deadline:
                raise BackendTimeout(f"model {inst.name} did not become available within "
                                     f"{cfg.startup_timeout_s:g} s")
            continue
        if state is State.SLEEPING or state in DOWN:
            if state in DOWN:
                refuse_down(m, inst)
            decision = m.claims.claim(inst, state)
            if isinstance(decision, planner.Impossible):
                raise BackendUnavailable(f"model {inst.name} cannot be placed: "
                                         f"{decision.message}")
            if isinstance(decision, planner.NoRoom):
                m.claims.press(inst, decision, started, pressed)
                if clock.now() >= deadline:
                    raise BackendUnavailable(
                        f"no room to start model {inst.name} within "
                        f"{cfg.startup_timeout_s:g} s: {decision.message}")
                await m.changes.wait(min(wait_s, TICK_S))
            continue
        # Draining, stopping, or ready with an earlier presser: wait for it to settle.
        if now >= deadline:
            raise BackendTimeout(f"model {inst.name} did not become available within "
                                 f"{cfg.startup_timeout_s:g} s")
        await inst.changes.wait(min(wait_s, TICK_S))


def refuse_down(m: Manager, inst: Instance) -> None:
    """Refuse at once while a failed model backs off or is held."""
    lines = "\n".join(inst.last_lines(10))
    if inst.state is State.HELD:
        raise BackendUnavailable(
            f"model {inst.name} failed to start {inst.failed_starts} times in a row and is "
            f"held until POST /gateway/models/{inst.name}/load. {inst.last_error or ''}\n"
            f"Last output:\n{lines}")
    if inst.state is not State.BACKOFF or inst.retry_at is None:
        return
    remaining = inst.retry_at - m.svc.clock.now()
    if remaining > 0:
        raise BackendUnavailable(
            f"model {inst.name} failed to start {inst.failed_starts} time(s) in a row; next "
            f"try in {remaining:.1f} s (or POST /gateway/models/{inst.name}/load). "
            f"{inst.last_error or ''}\nLast output:\n{lines}",
            headers={"Retry-After": str(max(1, math.ceil(remaining)))})
