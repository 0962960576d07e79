"""The owner of every model and its replicas: the way in for requests, and every decision.

``async with manager.lease(inst)`` is the one way a request reaches a backend:
it takes a place in the model's one queue, makes sure a replica of the model is
running (placing it, waking it, making room), takes a concurrency slot, and
goes to the ready replica with the fewest requests in flight.

Every decision that reads shared state and then changes it (placing, evicting,
waking, idle-stopping, scaling) runs without an ``await`` between the check and
the claim, and moves the state with compare-and-set, so two requests can never
both stop the same model or fill the same memory, and a caller that acted on a
stale read plans again instead of failing.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from .. import planner
from ..admission import QueueFull
from ..config import AdapterConfig
from ..errors import BackendUnavailable, BadRequest, GatewayError, ModelNotFound
from ..events import EventKind, StopReason
from ..lifecycle import DOWN, State
from .adapters import Adapters
from .claims import Claims
from .instance import Changes, Instance
from .readiness import PROGRESS_EVERY_S, TICK_S, Progress, until_ready
from .replicas import ReplicaSet
from .scaling import Scaler
from .transitions import Services, Transitions

__all__ = ["PROGRESS_EVERY_S", "TICK_S", "Lease", "Manager", "Progress"]

EVICTIONS = frozenset({StopReason.LRU, StopReason.IDLE, StopReason.MANUAL,
                       StopReason.SLEEP_TIMEOUT})


@dataclass(frozen=True)
class Lease:
    instance: Instance  # the replica the request goes to
    base_url: str


class Manager:
    def __init__(self, svc: Services, gpus: list[planner.Gpu], host_total_gb: float) -> None:
        self.svc = svc
        self.config = svc.config
        self.gpus = gpus
        self.host_total_gb = host_total_gb
        self.changes = Changes()
        self.closing = False
        # Each model with its replicas, and each model's first replica (its record while
        # nothing runs, and the name requests and operators use).
        self.models: dict[str, ReplicaSet] = {}
        self.instances: dict[str, Instance] = {}
        self.transitions = Transitions(svc, self.used_gb, self._released)
        self.claims = Claims(self)
        self.scaler = Scaler(self)
        self._leases: set[asyncio.Task[object]] = set()
        for cfg in svc.config.models.values():
            group = ReplicaSet(cfg, svc.clock.now, self._on_state, self._on_counts)
            self.models[cfg.name] = group
            self.instances[cfg.name] = group.first
            if not cfg.managed:
                group.first.life.move(State.STOPPED, State.STARTING)
                group.first.life.move(State.STARTING, State.READY)
        # LoRA adapters loaded into each replica of a base that serves some, by replica key.
        self.adapters = {name: Adapters(inst, svc.lora, svc.clock)
                         for name, inst in self.instances.items() if inst.cfg.adapters}

    # -- lookup ---------------------------------------------------------------------------

    def resolve(self, name_or_alias: str) -> Instance:
        cfg = self.config.lookup(name_or_alias)
        if cfg is None or cfg.name not in self.instances:
            raise ModelNotFound(f"The model '{name_or_alias}' does not exist on this gateway; "
                                f"GET /v1/models lists the models it serves")
        return self.instances[cfg.name]

    def resolve_target(self, name_or_alias: str) -> tuple[Instance, AdapterConfig | None]:
        """The model a request names, or the base and the adapter when it names an adapter."""
        found = self.config.lookup_adapter(name_or_alias)
        if found is not None and found[0].name in self.instances:
            return self.instances[found[0].name], found[1]
        return self.resolve(name_or_alias), None

    def replicas(self) -> Iterator[Instance]:
        """Every replica of every model."""
        for group in self.models.values():
            yield from group.replicas

    def find(self, key: str) -> Instance:
        """A replica by its key (the planner's name for it)."""
        name = key.split("#", 1)[0]
        group = self.models.get(name)
        found = group.find(key) if group is not None else None
        if found is None:
            raise KeyError(key)
        return found

    def _adapters_of(self, replica: Instance) -> Adapters:
        found = self.adapters.get(replica.key)
        if found is None or found.base is not replica:  # a new replica under an old number
            found = self.adapters[replica.key] = Adapters(replica, self.svc.lora, self.svc.clock)
        return found

    # -- the way in -----------------------------------------------------------------------

    @asynccontextmanager
    async def lease(self, inst: Instance, progress: Progress | None = None,
                    adapter: AdapterConfig | None = None) -> AsyncIterator[Lease]:
        """Queue, start or wake if needed (and load the adapter), take a slot. QueueFull is
        the caller's 429. An adapter's requests count against its base's limits and stay on
        the replica the adapter was loaded into."""
        group = self.models[inst.name]
        task = asyncio.current_task()
        if task is not None:
            self._leases.add(task)
        try:
            async with group.limiter.admit() as ticket:
                arrived = self.svc.clock.now()
                group.rate.observe(arrived)
                bound = await self.ensure_ready(inst, progress, arrived)
                bound.committed += 1
                try:
                    async with AsyncExitStack() as stack:
                        if adapter is not None:
                            await stack.enter_async_context(
                                self._adapters_of(bound).using(adapter))
                        with group.waiting_for_slot():
                            await ticket.activate()
                        chosen = group.pick(arrived) if adapter is None else None
                        if chosen is not None and chosen is not bound:
                            # One step: the request's binding moves with nothing in between.
                            bound.committed -= 1
                            chosen.committed += 1
                            bound.changes.notify()
                            bound = chosen
                        base_url = bound.base_url
                        if base_url is None or not bound.serving():
                            raise BackendUnavailable(f"model {inst.name} stopped before the "
                                                     "request could be sent; try again")
                        bound.in_flight += 1
                        try:
                            yield Lease(bound, base_url)
                        finally:
                            bound.in_flight -= 1
                finally:
                    bound.committed -= 1
                    bound.touch(self.svc.clock.now(), self.svc.clock.wall())
                    self.changes.notify()
        except QueueFull as full:
            self._retry_after_load(group, full)
            raise
        finally:
            if task is not None:
                self._leases.discard(task)

    def _retry_after_load(self, group: ReplicaSet, full: QueueFull) -> None:
        """A full queue while the model loads: come back once it is loaded and drained."""
        left = self.claims.load_left_s(group.lead())
        if left is not None:
            full.retry_after_s = max(1, min(3600, math.ceil(left + full.retry_after_s)))

    async def ensure_ready(self, inst: Instance, progress: Progress | None = None,
                           started: float | None = None) -> Instance:
        """Return a ready replica of the model, starting or waking one (and making room) if
        needed; see :mod:`.readiness`."""
        started = self.svc.clock.now() if started is None else started
        pressed: list[Instance] = []
        try:
            return await until_ready(self, self.models[inst.name], progress, started, pressed)
        finally:
            for holder in pressed:
                holder.pressure.remove(started)
                holder.changes.notify()

    # -- accounting -----------------------------------------------------------------------

    def used_gb(self, launched_only: bool = True) -> dict[int, float]:
        used = {g.id: 0.0 for g in self.gpus}
        for i in self.replicas():
            if i.placement and (i.launched or not launched_only):
                for g in i.placement:
                    used[g] = used.get(g, 0.0) + i.held_gb(on_gpu=launched_only)
        return used

    def host_used_gb(self) -> float:
        return sum(i.host_gb for i in self.replicas())

    # -- moves (synchronous: decide and claim in one step) --------------------------------

    def begin_stop(self, inst: Instance, reason: StopReason, grace_s: float | None = None
                   ) -> asyncio.Task[GatewayError | None] | None:
        """Move to stopping now and stop in the background; None when already down."""
        state = inst.state
        if state in DOWN or state is State.STOPPING:
            return None
        if not inst.life.move(state, State.STOPPING):
            return None
        inst.stopping_asleep = state is State.SLEEPING
        self.count_stop(inst, reason)
        previous = inst.transition
        inst.transition = asyncio.create_task(self.transitions.stop(inst, previous, grace_s))
        return inst.transition

    def count_stop(self, inst: Instance, reason: StopReason) -> None:
        if reason in EVICTIONS:
            self.svc.metrics.evictions.labels(inst.name, reason.value).inc()
        kind = {StopReason.LRU: EventKind.EVICTED, StopReason.IDLE: EventKind.IDLE_STOP}.get(
            reason, EventKind.STOPPING)
        self.svc.events.add(inst.name, kind, inst.said(f"stopping ({reason.value})"))

    def begin_sleep(self, inst: Instance, reason: StopReason
                    ) -> asyncio.Task[GatewayError | None] | None:
        """Drain, then put to sleep at the deepest level host RAM allows; None if it cannot."""
        if not inst.cfg.sleep or inst.state is not State.READY:
            return None
        weights = inst.cfg.weights_gb if inst.cfg.weights_gb is not None else inst.vram_gb
        level = 2
        if inst.cfg.sleep == 1 and self.host_used_gb() + weights <= self.host_total_gb:
            level = 1
        if not inst.life.move(State.READY, State.DRAINING):
            return None
        inst.host_gb = weights if level == 1 else 0.0
        if reason in EVICTIONS:
            self.svc.metrics.evictions.labels(inst.name, reason.value).inc()
        self.svc.events.add(inst.name, EventKind.DRAINING, inst.said(
            f"going to sleep at level {level} ({reason.value})"))
        inst.transition = asyncio.create_task(self.transitions.sleep(inst, level, reason.value))
        return inst.transition

    def begin_evict(self, inst: Instance, reason: StopReason, sleep: bool
                    ) -> asyncio.Task[GatewayError | None] | None:
        task = self.begin_sleep(inst, reason) if sleep else None
        return task if task is not None else self.begin_stop(inst, reason)

    def drain_and_stop(self, inst: Instance, reason: StopReason
                       ) -> asyncio.Task[GatewayError | None] | None:
        """Stop a replica after its requests finish (at once when it is not ready)."""
        if inst.state is State.READY and inst.life.move(State.READY, State.DRAINING):
            inst.transition = asyncio.create_task(self._drain_then_stop(inst, reason))
            return inst.transition
        if inst.state is State.DRAINING:
            return inst.transition
        return self.begin_stop(inst, reason)

    async def _drain_then_stop(self, inst: Instance, reason: StopReason) -> GatewayError | None:
        await self.transitions.drained(inst)
        if inst.life.move(State.DRAINING, State.STOPPING):
            self.count_stop(inst, reason)
            await self.transitions.release(inst)
        return None

    # -- operators ------------------------------------------------------------------------

    async def load(self, inst: Instance, replicas: int | None = None) -> None:
        """Start the model now (a held or backing-off one at once); with ``replicas``, run
        that many replicas now (0 unloads)."""
        if inst.state in (State.BACKOFF, State.HELD):
            inst.failed_starts, inst.retry_at = 0, None  # an operator asked: try now
            inst.life.move(inst.state, State.STOPPED)
        group = self.models[inst.name]
        group.scale_retry_at = 0.0
        if replicas is None:
            await self.ensure_ready(inst)
            return
        if not 0 <= replicas <= group.cfg.replicas.max:
            raise BadRequest(f"model {inst.name} may run 0 to {group.cfg.replicas.max} "
                             f"replicas (replicas.max), not {replicas}")
        await self.scaler.scale_to(group, replicas)

    async def unload(self, inst: Instance, reason: StopReason = StopReason.MANUAL) -> None:
        """Stop every replica after its in-flight requests finish; requests arriving
        meanwhile wait."""
        if not inst.cfg.managed:
            return
        group = self.models[inst.name]
        for replica in list(group.replicas):
            self.drain_and_stop(replica, reason)
        for replica in list(group.replicas):
            while replica.transition is not None and not replica.transition.done():
                await asyncio.shield(replica.transition)

    async def sleep(self, inst: Instance) -> int:
        """Put a model's ready replicas to sleep now (each after its in-flight requests);
        how many it put to sleep (0: the model has sleep off or no replica was ready)."""
        tasks = [task for r in self.models[inst.name].replicas
                 if (task := self.begin_sleep(r, StopReason.MANUAL)) is not None]
        for task in tasks:
            await asyncio.shield(task)
        return len(tasks)

    async def load_adapter(self, inst: Instance, adapter: AdapterConfig) -> None:
        """Start the base if needed and load the adapter into a ready replica of it now."""
        bound = await self.ensure_ready(inst)
        async with self._adapters_of(bound).using(adapter):
            pass

    async def unload_adapter(self, inst: Instance, adapter: AdapterConfig) -> bool:
        """Unload the adapter from every replica of its base; False when a replica has
        requests in flight on it (it stays loaded there)."""
        unloaded = True
        for replica in list(self.models[inst.name].replicas):
            loaded = self.adapters.get(replica.key)
            if loaded is not None and not await loaded.unload(adapter.name):
                unloaded = False
        return unloaded

    # -- what the monitor ticks ------------------------------------------------------------

    def reap(self) -> list[str]:
        """Idle replicas sleep or stop, long sleepers stop (one synchronous step)."""
        return self.scaler.reap()

    # -- callbacks ------------------------------------------------------------------------

    def _released(self, inst: Instance) -> None:
        inst.changes.notify()
        self.changes.notify()

    def _on_state(self, inst: Instance, old: State, new: State) -> None:
        group = self.models[inst.name]
        if State.READY in (old, new):
            group.update_slots()
        if new is State.READY and inst is not group.first:
            group.scale_failures = 0
        inst.changes.notify()
        self.changes.notify()

    def _on_counts(self, group: ReplicaSet) -> None:
        if group.limiter.idle:
            for replica in group.replicas:
                replica.changes.notify()
            self.changes.notify()

    # -- start-up and shutdown ------------------------------------------------------------

    async def preload(self) -> None:
        """Start pinned and default models with their ``replicas.min``."""
        await self.scaler.preload()

    def begin_shutdown(self) -> None:
        """Stop accepting: waiting requests are refused and no model starts any more."""
        self.closing = True
        self.changes.notify()
        for inst in self.replicas():
            inst.changes.notify()

    async def drain_requests(self, deadline_s: float) -> None:
        """Give requests holding a lease until the deadline, then cancel what is left."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        while self._leases and loop.time() < end:
            await self.changes.wait(min(0.05, max(end - loop.time(), 0.0)))
        for task in list(self._leases):
            task.cancel()

    async def shutdown(self) -> None:
        """Stop every model this gateway started and wait until their processes are gone."""
        self.begin_shutdown()
        tasks = []
        for inst in list(self.replicas()):
            if not inst.cfg.managed:
                continue
            task = self.begin_stop(inst, StopReason.SHUTDOWN)
            if task is None and inst.transition is not None and not inst.transition.done():
                task = inst.transition
            if task is not None:
                tasks.append(task)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for inst in self.replicas():
            if inst.watcher is not None:
                inst.watcher.cancel()
