"""The owner of every model instance: the way in for requests, and every decision.

``async with manager.lease(inst)`` is the one way a request reaches a backend:
it takes a place in the model's queue, makes sure the model is running (placing
it, waking it, making room), then takes a concurrency slot.

Every decision that reads shared state and then changes it (placing, evicting,
waking, idle-stopping) runs without an ``await`` between the check and the
claim, and moves the state with compare-and-set, so two requests can never both
stop the same model or fill the same memory, and a caller that acted on a stale
read plans again instead of failing.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from .. import planner
from ..admission import QueueFull
from ..config import AdapterConfig
from ..errors import BackendTimeout, BackendUnavailable, GatewayError, ModelNotFound
from ..events import EventKind, StopReason
from ..lifecycle import DOWN, State
from .adapters import Adapters
from .claims import Claims
from .instance import Changes, Instance
from .transitions import Services, Transitions

# elapsed seconds, and the expected total when the model's load time is known
Progress = Callable[[float, float | None], Awaitable[None]]
PROGRESS_EVERY_S = 2.0
EVICTIONS = frozenset({StopReason.LRU, StopReason.IDLE, StopReason.MANUAL,
                       StopReason.SLEEP_TIMEOUT})
TICK_S = 0.25  # the longest a waiter sleeps before it looks again (clock seam, patience)


@dataclass(frozen=True)
class Lease:
    instance: Instance
    base_url: str


class Manager:
    def __init__(self, svc: Services, gpus: list[planner.Gpu], host_total_gb: float) -> None:
        self.svc = svc
        self.config = svc.config
        self.gpus = gpus
        self.host_total_gb = host_total_gb
        self.changes = Changes()
        self.closing = False
        self.instances: dict[str, Instance] = {}
        self.transitions = Transitions(svc, self.used_gb, self._released)
        self.claims = Claims(self)
        self._leases: set[asyncio.Task[object]] = set()
        for cfg in svc.config.models.values():
            inst = Instance(cfg, self._on_state, self._on_counts, svc.clock.now)
            if not cfg.managed:
                inst.life.move(State.STOPPED, State.STARTING)
                inst.life.move(State.STARTING, State.READY)
            self.instances[cfg.name] = inst
        # LoRA adapters loaded into each base that serves some.
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

    # -- the way in -----------------------------------------------------------------------

    @asynccontextmanager
    async def lease(self, inst: Instance, progress: Progress | None = None,
                    adapter: AdapterConfig | None = None) -> AsyncIterator[Lease]:
        """Queue, start or wake if needed (and load the adapter), take a slot. QueueFull is
        the caller's 429. An adapter's requests count against its base's limits."""
        task = asyncio.current_task()
        if task is not None:
            self._leases.add(task)
        try:
            async with inst.limiter.admit() as ticket:
                inst.rate.observe(self.svc.clock.now())
                await self.ensure_ready(inst, progress)
                inst.committed += 1
                try:
                    async with AsyncExitStack() as stack:
                        if adapter is not None:
                            await stack.enter_async_context(
                                self.adapters[inst.name].using(adapter))
                        await ticket.activate()
                        base_url = inst.base_url
                        if base_url is None or not inst.serving():
                            raise BackendUnavailable(f"model {inst.name} stopped before the "
                                                     "request could be sent; try again")
                        yield Lease(inst, base_url)
                finally:
                    inst.committed -= 1
                    inst.touch(self.svc.clock.now(), self.svc.clock.wall())
                    self.changes.notify()
        except QueueFull as full:
            self._retry_after_load(inst, full)
            raise
        finally:
            if task is not None:
                self._leases.discard(task)

    def _retry_after_load(self, inst: Instance, full: QueueFull) -> None:
        """A full queue while the model loads: come back once it is loaded and drained."""
        left = self.claims.load_left_s(inst)
        if left is not None:
            full.retry_after_s = max(1, min(3600, math.ceil(left + full.retry_after_s)))

    async def ensure_ready(self, inst: Instance, progress: Progress | None = None) -> None:
        """Return once the model serves, starting or waking it (and making room) if needed.

        A request that finds no room waits for idle models to free it; once it has waited
        longer than its model's patience it presses the busy holders that are cheapest to
        bring back, so they drain and make room (see README, "Scheduling").
        """
        started = self.svc.clock.now()
        pressed: list[Instance] = []
        try:
            await self._ensure_ready(inst, progress, started, pressed)
        finally:
            for holder in pressed:
                holder.pressure.remove(started)
                holder.changes.notify()

    async def _ensure_ready(self, inst: Instance, progress: Progress | None, started: float,
                            pressed: list[Instance]) -> None:
        clock = self.svc.clock
        deadline = started + inst.cfg.startup_timeout_s
        next_tick = started + PROGRESS_EVERY_S
        while True:
            if self.closing:
                raise BackendUnavailable("the gateway is shutting down")
            state = inst.state
            if state is State.READY and not inst.pressed_before(started):
                return
            now = clock.now()
            if progress is not None and now >= next_tick:
                next_tick = now + PROGRESS_EVERY_S
                await progress(now - started, self.claims.expected_load_s(inst))
                continue  # the state may have changed while the client was written to
            wait_s = max(min(next_tick if progress is not None else deadline, deadline) - now,
                         0.01)
            transition = inst.transition
            if transition is not None and not transition.done():
                # No shorter timeout here: waiters resume in the order they started waiting,
                # which keeps requests first come, first served once the model is ready.
                done, _ = await asyncio.wait({transition}, timeout=wait_s)
                if done and not transition.cancelled():
                    error = transition.result()
                    if error is not None and inst.state in (State.BACKOFF, State.HELD):
                        raise error
                elif now >= deadline:
                    raise BackendTimeout(f"model {inst.name} did not become available within "
                                         f"{inst.cfg.startup_timeout_s:g} s")
                continue
            if state is State.SLEEPING or state in DOWN:
                if state in DOWN:
                    self._refuse_down(inst)
                decision = self.claims.claim(inst, state)
                if isinstance(decision, planner.Impossible):
                    raise BackendUnavailable(f"model {inst.name} cannot be placed: "
                                             f"{decision.message}")
                if isinstance(decision, planner.NoRoom):
                    self.claims.press(inst, decision, started, pressed)
                    if clock.now() >= deadline:
                        raise BackendUnavailable(
                            f"no room to start model {inst.name} within "
                            f"{inst.cfg.startup_timeout_s:g} s: {decision.message}")
                    await self.changes.wait(min(wait_s, TICK_S))
                continue
            # Draining, stopping, or ready with an earlier presser: wait for it to settle.
            if now >= deadline:
                raise BackendTimeout(f"model {inst.name} did not become available within "
                                     f"{inst.cfg.startup_timeout_s:g} s")
            await inst.changes.wait(min(wait_s, TICK_S))

    def _refuse_down(self, inst: Instance) -> None:
        lines = "\n".join(inst.last_lines(10))
        if inst.state is State.HELD:
            raise BackendUnavailable(
                f"model {inst.name} failed to start {inst.failed_starts} times in a row and is "
                f"held until POST /gateway/models/{inst.name}/load. {inst.last_error or ''}\n"
                f"Last output:\n{lines}")
        if inst.state is not State.BACKOFF or inst.retry_at is None:
            return
        remaining = inst.retry_at - self.svc.clock.now()
        if remaining > 0:
            raise BackendUnavailable(
                f"model {inst.name} failed to start {inst.failed_starts} time(s) in a row; next "
                f"try in {remaining:.1f} s (or POST /gateway/models/{inst.name}/load). "
                f"{inst.last_error or ''}\nLast output:\n{lines}",
                headers={"Retry-After": str(max(1, math.ceil(remaining)))})

    # -- accounting -----------------------------------------------------------------------

    def used_gb(self, launched_only: bool = True) -> dict[int, float]:
        used = {g.id: 0.0 for g in self.gpus}
        for i in self.instances.values():
            if i.placement and (i.launched or not launched_only):
                for g in i.placement:
                    used[g] = used.get(g, 0.0) + i.held_gb()
        return used

    def host_used_gb(self) -> float:
        return sum(i.host_gb for i in self.instances.values())

    # -- moves (synchronous: decide and claim in one step) --------------------------------

    def begin_stop(self, inst: Instance, reason: StopReason, grace_s: float | None = None
                   ) -> asyncio.Task[GatewayError | None] | None:
        """Move to stopping now and stop in the background; None when already down."""
        state = inst.state
        if state in DOWN or state is State.STOPPING:
            return None
        if not inst.life.move(state, State.STOPPING):
            return None
        self.count_stop(inst, reason)
        previous = inst.transition
        inst.transition = asyncio.create_task(self.transitions.stop(inst, previous, grace_s))
        return inst.transition

    def count_stop(self, inst: Instance, reason: StopReason) -> None:
        if reason in EVICTIONS:
            self.svc.metrics.evictions.labels(inst.name, reason.value).inc()
        kind = {StopReason.LRU: EventKind.EVICTED, StopReason.IDLE: EventKind.IDLE_STOP}.get(
            reason, EventKind.STOPPING)
        self.svc.events.add(inst.name, kind, f"stopping ({reason.value})")

    def begin_sleep(self, inst: Instance, reason: StopReason
                    ) -> asyncio.Task[GatewayError | None] | None:
        """Drain, then put to sleep at the deepest level host RAM allows; None if it cannot."""
        if not inst.cfg.sleep or inst.state is not State.READY:
            return None
        weights = inst.cfg.weights_gb if inst.cfg.weights_gb is not None else inst.cfg.vram_gb
        level = 2
        if inst.cfg.sleep == 1 and self.host_used_gb() + weights <= self.host_total_gb:
            level = 1
        if not inst.life.move(State.READY, State.DRAINING):
            return None
        inst.host_gb = weights if level == 1 else 0.0
        if reason in EVICTIONS:
            self.svc.metrics.evictions.labels(inst.name, reason.value).inc()
        self.svc.events.add(inst.name, EventKind.DRAINING, f"going to sleep at level {level} "
                                                           f"({reason.value})")
        inst.transition = asyncio.create_task(self.transitions.sleep(inst, level, reason.value))
        return inst.transition

    def begin_evict(self, inst: Instance, reason: StopReason, sleep: bool
                    ) -> asyncio.Task[GatewayError | None] | None:
        task = self.begin_sleep(inst, reason) if sleep else None
        return task if task is not None else self.begin_stop(inst, reason)

    # -- operators ------------------------------------------------------------------------

    async def load(self, inst: Instance) -> None:
        if inst.state in (State.BACKOFF, State.HELD):
            inst.failed_starts, inst.retry_at = 0, None  # an operator asked: try now
            inst.life.move(inst.state, State.STOPPED)
        await self.ensure_ready(inst)

    async def unload(self, inst: Instance, reason: StopReason = StopReason.MANUAL) -> None:
        """Stop after in-flight requests finish; requests arriving meanwhile wait."""
        if not inst.cfg.managed:
            return
        if inst.state is State.READY and inst.life.move(State.READY, State.DRAINING):
            inst.transition = asyncio.create_task(self._drain_then_stop(inst, reason))
        elif inst.state is not State.DRAINING:
            self.begin_stop(inst, reason)
        while inst.transition is not None and not inst.transition.done():
            await asyncio.shield(inst.transition)

    async def _drain_then_stop(self, inst: Instance, reason: StopReason) -> GatewayError | None:
        await self.transitions.drained(inst)
        if inst.life.move(State.DRAINING, State.STOPPING):
            self.count_stop(inst, reason)
            await self.transitions.release(inst)
        return None

    async def sleep(self, inst: Instance) -> None:
        """Put a ready model to sleep now (after its in-flight requests)."""
        task = self.begin_sleep(inst, StopReason.MANUAL)
        if task is not None:
            await asyncio.shield(task)

    # -- what the monitor ticks ------------------------------------------------------------

    def reap(self) -> list[str]:
        """Idle models sleep or stop, long sleepers stop (one synchronous step)."""
        now = self.svc.clock.now()
        acted = []
        for inst in self.instances.values():
            if not inst.cfg.managed or not inst.evictable():
                continue
            if inst.state is State.READY:
                timeout = inst.cfg.idle_timeout_s
                # Idle since the end of the last request, or since it became ready if none came.
                idle_since = max(inst.limiter.last_idle_at or 0.0, inst.last_used_mono)
                if timeout > 0 and now - idle_since >= timeout:
                    self.begin_evict(inst, StopReason.IDLE, sleep=bool(inst.cfg.sleep))
                    acted.append(inst.name)
            elif (inst.state is State.SLEEPING and inst.cfg.sleep_timeout_s > 0
                  and now - (inst.asleep_since or now) >= inst.cfg.sleep_timeout_s):
                self.begin_stop(inst, StopReason.SLEEP_TIMEOUT)
                acted.append(inst.name)
        return acted

    # -- callbacks ------------------------------------------------------------------------

    def _released(self, inst: Instance) -> None:
        inst.changes.notify()
        self.changes.notify()

    def _on_state(self, inst: Instance, old: State, new: State) -> None:
        inst.changes.notify()
        self.changes.notify()

    def _on_counts(self, inst: Instance) -> None:
        if inst.limiter.idle:
            inst.changes.notify()
            self.changes.notify()

    # -- start-up and shutdown ------------------------------------------------------------

    async def preload(self) -> None:
        """Start pinned and default models (their failures are logged, not fatal)."""
        wanted = [i for i in self.instances.values()
                  if i.cfg.managed and (i.cfg.pinned or i.cfg.default)]
        results = await asyncio.gather(*(self.ensure_ready(i) for i in wanted),
                                       return_exceptions=True)
        for inst, result in zip(wanted, results):
            if isinstance(result, Exception):
                self.svc.events.add(inst.name, EventKind.FAILED, f"preload failed: {result}")

    def begin_shutdown(self) -> None:
        """Stop accepting: waiting requests are refused and no model starts any more."""
        self.closing = True
        self.changes.notify()
        for inst in self.instances.values():
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
        for inst in self.instances.values():
            if not inst.cfg.managed:
                continue
            task = self.begin_stop(inst, StopReason.SHUTDOWN)
            if task is None and inst.transition is not None and not inst.transition.done():
                task = inst.transition
            if task is not None:
                tasks.append(task)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for inst in self.instances.values():
            if inst.watcher is not None:
                inst.watcher.cancel()
