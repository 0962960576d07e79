"""How many servers each model runs: idle stops, scale-up, resident defaults, operators.

All of it is ticked by the monitor (and called by operators' requests), and
every decision is one synchronous step that claims with compare-and-set moves:

- **Idle.** A ready replica with no request for ``idle_timeout_s`` sleeps or
  stops, one replica of a model at a time, the least used first; the model's
  ``replicas.min`` (one for a default model) are never stopped for being idle.
- **Scale-up.** When a model's requests have waited for a slot longer than
  ``scale_up_after_s`` and it runs fewer than ``replicas.max``, one more replica
  is woken or started, where that fits by stopping idle models only: a
  scale-up never presses a busy model.
- **Defaults.** A ``default`` model evicted for another comes back (woken or
  started) once its room is free without stopping anything and has stayed
  free for ``restore_after_s``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .. import planner
from ..errors import BackendUnavailable, GatewayError
from ..events import EventKind, StopReason
from ..lifecycle import DOWN, RUNNING, State
from .instance import Instance
from .replicas import ReplicaSet

if TYPE_CHECKING:
    from .manager import Manager

PLACED = (planner.Place, planner.EvictThenPlace)


class Scaler:
    def __init__(self, manager: Manager) -> None:
        self.m = manager

    # -- idle -----------------------------------------------------------------------------

    def reap(self) -> list[str]:
        """Idle replicas sleep or stop, long sleepers stop (one synchronous step)."""
        now = self.m.svc.clock.now()
        acted = []
        for group in self.m.models.values():
            if not group.cfg.managed:
                continue
            group.drop_finished(now, self.m.config.faults)
            idle: list[Instance] = []
            alone = len(group.awake()) <= 1
            for inst in group.replicas:
                if not inst.evictable():
                    continue
                if inst.state is State.READY:
                    timeout = inst.cfg.idle_timeout_s
                    # Idle since the end of its last request, or since it became ready if none
                    # came; a model's only replica also counts requests that left its queue.
                    idle_since = max(inst.limiter.last_idle_at or 0.0 if alone else 0.0,
                                     inst.last_used_mono)
                    if timeout > 0 and now - idle_since >= timeout:
                        idle.append(inst)
                elif (inst.state is State.SLEEPING and inst.cfg.sleep_timeout_s > 0
                      and now - (inst.asleep_since or now) >= inst.cfg.sleep_timeout_s):
                    self.m.begin_stop(inst, StopReason.SLEEP_TIMEOUT)
                    acted.append(inst.name)
            leaving = any(r.state in (State.DRAINING, State.STOPPING) for r in group.replicas)
            if idle and len(group.awake()) > group.floor and not leaving:
                victim = min(idle, key=lambda r: (r.last_used_mono, r.index))
                self.m.begin_evict(victim, StopReason.IDLE, sleep=bool(victim.cfg.sleep))
                acted.append(victim.name)
        return acted

    # -- scale-up and defaults ------------------------------------------------------------

    def tick(self) -> list[str]:
        """Scale up models whose requests wait for a slot; bring defaults back."""
        if self.m.closing:
            return []
        now = self.m.svc.clock.now()
        acted = []
        for group in self.m.models.values():
            if not group.cfg.managed:
                continue
            if self._scale_up(group, now) or self._restore(group, now):
                acted.append(group.name)
        return acted

    def _scale_up(self, group: ReplicaSet, now: float) -> bool:
        cfg = group.cfg
        since = group.oldest_slot_wait()
        if cfg.replicas.max <= 1 or since is None or now - since < cfg.scale_up_after_s:
            return False
        first = group.first
        failed = first.state is State.HELD or (
            first.state is State.BACKOFF and (first.retry_at or 0.0) > now)
        if now < group.scale_retry_at or failed or not group.ready() \
                or len(group.awake()) >= cfg.replicas.max \
                or any(r.state in (State.STARTING, State.WAKING) for r in group.replicas):
            return False
        waited = now - since
        return self.grow(group, f"requests waited {waited:.1f} s for a slot "
                                f"(scale_up_after_s {cfg.scale_up_after_s:g})") is not None

    def grow(self, group: ReplicaSet, why: str) -> Instance | None:
        """Wake a sleeping replica or start a new one where that fits by stopping idle models
        only; None (and nothing changed) where it does not."""
        down = (State.STOPPED, State.FAILED, State.BACKOFF)
        replica = next((r for r in group.replicas
                        if r.state is State.SLEEPING and r.transition_done()), None) or next(
            (r for r in group.replicas if r.state in down and r.transition_done()), None)
        added = replica is None
        if replica is None:
            replica = group.add()
        observed = replica.state
        decision = self.m.claims.claim(replica, observed)
        if not isinstance(decision, PLACED):
            if added:
                group.replicas.remove(replica)
            return None
        self.m.svc.events.add(group.name, EventKind.SCALE_UP, replica.said(
            f"{'waking' if observed is State.SLEEPING else 'starting'}: {why}"))
        return replica

    def _restore(self, group: ReplicaSet, now: float) -> bool:
        cfg = group.cfg
        if not cfg.default:
            return False
        first = group.first
        up = [r for r in group.replicas if r.state in RUNNING and r.state is not State.SLEEPING]
        waiting = first.state is State.HELD or (
            first.state is State.BACKOFF and (first.retry_at or 0.0) > now)
        candidate = next((r for r in group.replicas if r.state is State.SLEEPING), first)
        if up or waiting or not candidate.transition_done() or not (
                candidate.state is State.SLEEPING or candidate.state in DOWN):
            group.free_since = None
            return False
        if not self.m.claims.room_free(candidate):
            group.free_since = None
            return False
        if group.free_since is None:
            group.free_since = now
        if now - group.free_since < cfg.restore_after_s:
            return False
        decision = self.m.claims.claim(candidate, candidate.state)
        if not isinstance(decision, PLACED):
            return False
        group.free_since = None
        self.m.svc.events.add(group.name, EventKind.RESTORE, candidate.said(
            f"its room stayed free for {cfg.restore_after_s:g} s"))
        return True

    # -- operators and start-up -----------------------------------------------------------

    async def scale_to(self, group: ReplicaSet, count: int) -> None:
        """Run ``count`` replicas now: stop the least used beyond it (after their requests),
        start or wake the missing ones (stopping idle models for room); 503 when one cannot
        be placed."""
        if count == 0:
            await self.m.unload(group.first)
            return
        await self.m.ensure_ready(group.first)
        awake = [r for r in group.replicas if r.state in (State.READY, State.STARTING,
                                                          State.WAKING)]
        extra = sorted(awake, key=lambda r: (r.in_flight, r.last_used_mono, -r.index))
        stops: list[asyncio.Task[GatewayError | None]] = []
        for replica in extra[:max(len(awake) - count, 0)]:
            task = self.m.drain_and_stop(replica, StopReason.MANUAL)
            if task is not None:
                stops.append(task)
        starts: list[Instance] = []
        for _ in range(count - len(awake)):
            grown = self.grow(group, "asked for by an operator")
            if grown is None:
                raise BackendUnavailable(
                    f"model {group.name}: no room for replica {len(awake) + len(starts) + 1} "
                    f"of {count} without stopping a busy model")
            starts.append(grown)
        for task in [*stops, *(r.transition for r in starts if r.transition is not None)]:
            await asyncio.shield(task)
        failed = [r for r in starts if r.state is not State.READY]
        if failed:
            raise BackendUnavailable(f"model {group.name}: {len(failed)} of the replicas asked "
                                     f"for did not start: {failed[0].last_error or 'stopped'}")

    async def preload(self) -> None:
        """Start pinned and default models, each with its ``replicas.min`` (failures are
        logged, not fatal)."""
        wanted = [g for g in self.m.models.values()
                  if g.cfg.managed and (g.cfg.pinned or g.cfg.default)]
        results = await asyncio.gather(
            *(self.scale_to(g, max(g.cfg.replicas.min, 1)) for g in wanted),
            return_exceptions=True)
        for group, result in zip(wanted, results, strict=True):
            if isinstance(result, Exception):
                self.m.svc.events.add(group.name, EventKind.FAILED, f"preload failed: {result}")
