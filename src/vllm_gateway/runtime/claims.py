"""Placement claims: what the runtime asks the pure planner, and applying its answer.

A claim reads the instances, asks :func:`planner.plan`, and applies the
decision (evictions, sleeps, the move to starting or waking) in one synchronous
step. Each replica of a model is its own entry for the planner (named by its
key); a replica never evicts its siblings and is never placed on a GPU a sibling
holds (a second server on the same GPU adds memory, not compute). Patience and
pressure live here too: how long a request waits for idle memory before it
presses busy holders, and which holders it presses.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING

from .. import planner, replica_planner
from ..errors import GatewayError
from ..events import StopReason
from ..lifecycle import State
from .instance import Instance

if TYPE_CHECKING:
    from .manager import Manager

# The first guess at a model's load time, before it was ever timed: a tenth of the time it
# is allowed to take.
FIRST_GUESS_SHARE = 0.1


class Claims:
    def __init__(self, manager: Manager) -> None:
        self.m = manager
        # What a model's ``node:`` may name, for each node of the inventory (a Ray cluster's:
        # its id, short id, IP and label values); set with the inventory (runtime.nodes).
        self.node_names: dict[str, frozenset[str]] = {}

    # -- costs ----------------------------------------------------------------------------

    def expected_load_s(self, inst: Instance) -> float | None:
        kind = "wake" if inst.state in (State.SLEEPING, State.WAKING) else "start"
        return self.m.svc.costs.expected(inst.name, kind)

    def patience_s(self, inst: Instance) -> float:
        if inst.cfg.swap_patience_s is not None:
            return inst.cfg.swap_patience_s
        # What it waits for is its own load: a wake for a sleeper (a second), not a start;
        # a wake is never slower than a start, so a learned start bounds an unknown wake.
        learned = self.expected_load_s(inst)
        if learned is None:
            learned = self.m.svc.costs.expected(inst.name, "start")
        return learned if learned is not None else inst.cfg.startup_timeout_s * FIRST_GUESS_SHARE

    def load_left_s(self, inst: Instance) -> float | None:
        """Seconds until a starting or waking model is expected to be ready."""
        if inst.state not in (State.STARTING, State.WAKING) or inst.starting_since is None:
            return None
        expected = self.expected_load_s(inst)
        if expected is None:
            return None
        return max(expected - (self.m.svc.clock.now() - inst.starting_since), 0.0)

    def _reload_cost(self, inst: Instance, now: float) -> float:
        """Expected load time × recent request rate. The load time is rounded to a power of
        two: timings of alike models differ by noise, and noise must not override recency
        (the decayed rate orders models of equal traffic by how recently they were used)."""
        load = self.m.svc.costs.expected(inst.name, "start")
        if load is None:
            load = inst.cfg.startup_timeout_s * FIRST_GUESS_SHARE
        bucket = 2.0 ** round(math.log2(max(load, 0.125)))
        return bucket * inst.rate.at(now)

    # -- planner inputs -------------------------------------------------------------------

    def _loaded(self, exclude: Instance, evictable: frozenset[str] = frozenset()
                ) -> list[planner.Loaded]:
        """Every replica holding memory but ``exclude``."""
        now = self.m.svc.clock.now()
        accounted = bool(self.m.gpus)
        return [
            planner.Loaded(
                i.key, i.placement, i.held_gb() if accounted else 0.0, i.last_used_mono,
                i.evictable() or i.key in evictable,
                sleep_gb=i.cfg.sleep_vram_gb if i.cfg.sleep and i.state is State.READY else None,
                asleep=i.state is State.SLEEPING,
                reload_cost=self._reload_cost(i, now))
            for i in self.m.replicas()
            if i is not exclude and i.placement is not None and i.cfg.managed
        ]

    def _need(self, inst: Instance) -> planner.Need:
        cfg = inst.cfg
        vram = self.m.svc.vram.planned(cfg)
        if not self.m.gpus or vram <= 0:
            return planner.Need(inst.key, 0.0, 0)
        if inst.state is State.SLEEPING and inst.placement is not None:
            # A wake needs its whole size again, on the GPUs it sleeps on.
            return planner.Need(inst.key, inst.vram_gb, len(inst.placement),
                                frozenset(inst.placement))
        allowed = frozenset(cfg.gpu_ids) if cfg.gpu_ids is not None else None
        if cfg.node is not None:
            on_node = frozenset(g.id for g in self.m.gpus
                                if cfg.node in self.node_names.get(g.node, ()))
            allowed = on_node if allowed is None else allowed & on_node
        return planner.Need(inst.key, vram, cfg.gpu_count, allowed)

    def _plan(self, inst: Instance, evictable: frozenset[str] = frozenset(),
              nobody: bool = False) -> planner.Decision:
        siblings = frozenset(r.key for r in self.m.models[inst.name].replicas if r is not inst)
        return replica_planner.plan_replica(
            self.m.gpus, self._loaded(inst, evictable), self._need(inst),
            self.m.config.max_loaded_models, siblings, evict=not nobody)

    def room_free(self, inst: Instance) -> bool:
        """Whether the replica would fit now without stopping or sleeping anything."""
        return isinstance(self._plan(inst, nobody=True), planner.Place)

    # -- claims ---------------------------------------------------------------------------

    def claim(self, inst: Instance, observed: State) -> planner.Decision | None:
        """Plan and claim in one step; None when the state changed since it was read."""
        decision = self._plan(inst)
        if not isinstance(decision, (planner.Place, planner.EvictThenPlace)):
            if isinstance(decision, planner.Impossible) and observed is State.SLEEPING:
                # Its GPUs are gone (a node left): stop it, and the next look cold-starts it.
                self.m.begin_stop(inst, StopReason.NODE_LOST)
                return None
            return decision
        target = State.WAKING if observed is State.SLEEPING else State.STARTING
        if not inst.life.move(observed, target):
            return None
        stops = self._evict(decision)
        inst.starting_since = self.m.svc.clock.now()
        if target is State.WAKING:
            inst.transition = asyncio.create_task(self.m.transitions.wake(inst, stops))
            return decision
        inst.claimed_at = self.m.svc.clock.now()
        inst.vram_gb = self.m.svc.vram.planned(inst.cfg)
        inst.measured_vram_gb, inst.vram_warning = None, None
        inst.placement = tuple(decision.gpu_ids)
        inst.gpu_memory_utilization = (
            planner.gpu_memory_utilization(inst.vram_gb, self.m.gpus, decision.gpu_ids)
            if decision.gpu_ids else 0.9)
        inst.transition = asyncio.create_task(self.m.transitions.start(inst, stops))
        return decision

    def _evict(self, decision: planner.Place | planner.EvictThenPlace
               ) -> list[asyncio.Task[GatewayError | None]]:
        if not isinstance(decision, planner.EvictThenPlace):
            return []
        tasks = []
        for key in decision.evict:
            task = self.m.begin_evict(self.m.find(key), StopReason.LRU,
                                      sleep=key in decision.sleep)
            if task is not None:
                tasks.append(task)
        return tasks

    # -- patience and pressure ------------------------------------------------------------

    def press(self, inst: Instance, decision: planner.NoRoom, started: float,
              pressed: list[Instance]) -> None:
        """After its patience, a waiting request presses the busy holders that are cheapest
        to bring back (fewest queued requests, then least recently used), as few as make
        room, and only those that have held their GPU for at least that patience."""
        now = self.m.svc.clock.now()
        patience = self.patience_s(inst)
        if now - started < patience:
            return
        already = frozenset(h.key for h in pressed)
        if already and isinstance(self._plan(inst, already),
                                  (planner.Place, planner.EvictThenPlace)):
            return  # those already pressed make room once they drain: press nobody else
        candidates = sorted(
            (h for h in (self.m.find(key) for key in decision.holders)
             if h not in pressed and not h.cfg.pinned and h.state is State.READY
             and h.name != inst.name and now - h.ready_since >= patience),
            key=lambda h: (h.limiter.queued, h.last_used_mono, h.key))
        if not candidates:
            return
        chosen = candidates
        for k in range(1, len(candidates) + 1):
            names = already | {h.key for h in candidates[:k]}
            if isinstance(self._plan(inst, names), (planner.Place, planner.EvictThenPlace)):
                chosen = candidates[:k]
                break
        for holder in chosen:
            holder.pressure.append(started)
            pressed.append(holder)
            holder.changes.notify()
