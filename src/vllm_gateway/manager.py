"""The owner of every model instance: placement, starts, stops, eviction.

``async with manager.lease(name)`` is the one way a request reaches a backend:
it takes a place in the model's queue, makes sure the model is running (placing
it, evicting idle models if needed), then takes a concurrency slot.

Every decision that reads shared state and then changes it (placing, evicting,
idle-stopping) runs without an ``await`` between the check and the claim, so
two requests can never both stop the same model or fill the same memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from . import planner
from .config import GatewayConfig
from .errors import BackendTimeout, BackendUnavailable, GatewayError, ModelNotFound
from .events import EventLog
from .gpu import NvmlReader, wait_released
from .health import StartFailed, StartTimedOut, wait_healthy
from .instance import Changes, Instance
from .launchers.base import Launcher, LaunchError, LaunchSpec, ServerHandle
from .lifecycle import State
from .metrics import EVICTION_REASONS, Metrics

log = logging.getLogger("vllm_gateway.manager")

Progress = Callable[[float], Awaitable[None]]
PROGRESS_EVERY_S = 2.0
PORT_ATTEMPTS = 3


@dataclass(frozen=True)
class Lease:
    instance: Instance
    base_url: str


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Manager:
    def __init__(self, config: GatewayConfig, gpus: list[planner.Gpu],
                 launchers: Mapping[str, Launcher], events: EventLog, metrics: Metrics,
                 probe: Callable[[str, float], Awaitable[bool]],
                 nvml: NvmlReader | None = None) -> None:
        self.config = config
        self.gpus = gpus
        self.launchers = launchers
        self.events = events
        self.metrics = metrics
        self.probe = probe
        self.nvml = nvml
        self.changes = Changes()
        self.closing = False
        self.instances: dict[str, Instance] = {}
        for cfg in config.models.values():
            inst = Instance(cfg, self._on_state, self._on_counts)
            if not cfg.managed:
                inst.life.move(State.STARTING)
                inst.life.move(State.READY)
            self.instances[cfg.name] = inst

    # -- lookup -------------------------------------------------------------------------

    def resolve(self, name_or_alias: str) -> Instance:
        cfg = self.config.lookup(name_or_alias)
        if cfg is None or cfg.name not in self.instances:
            raise ModelNotFound(f"The model '{name_or_alias}' does not exist on this gateway; "
                                f"GET /v1/models lists the models it serves")
        return self.instances[cfg.name]

    # -- the way in ---------------------------------------------------------------------

    @asynccontextmanager
    async def lease(self, inst: Instance, progress: Progress | None = None) -> AsyncIterator[Lease]:
        """Queue, start if needed, take a slot. The caller catches QueueFull (429)."""
        async with inst.limiter.admit() as ticket:
            await self.ensure_ready(inst, progress)
            inst.committed += 1
            try:
                await ticket.activate()
                base_url = inst.base_url
                if base_url is None or inst.state is not State.READY:
                    raise BackendUnavailable(f"model {inst.name} stopped before the request "
                                             "could be sent; try again")
                yield Lease(inst, base_url)
            finally:
                inst.committed -= 1
                inst.touch()
                self.changes.notify()

    async def ensure_ready(self, inst: Instance, progress: Progress | None = None) -> None:
        """Return once the model is ready, starting it (and evicting others) if needed.

        A request that finds no room presses the busy models holding it: their requests that
        arrive later wait behind it, so the holders drain and can be swapped out. Requests are
        thus served first come, first served across models, and a model with steady traffic
        cannot starve another that shares its GPU.
        """
        started = asyncio.get_running_loop().time()
        pressed: list[Instance] = []
        try:
            await self._ensure_ready(inst, progress, started, pressed)
        finally:
            for holder in pressed:
                holder.pressure.remove(started)
                holder.changes.notify()

    async def _ensure_ready(self, inst: Instance, progress: Progress | None, started: float,
                            pressed: list[Instance]) -> None:
        loop = asyncio.get_running_loop()
        deadline = started + inst.cfg.startup_timeout_s
        next_tick = started + PROGRESS_EVERY_S
        while True:
            if self.closing:
                raise BackendUnavailable("the gateway is shutting down")
            state = inst.state
            if state is State.READY and not inst.draining and not inst.pressed_before(started):
                return
            now = loop.time()
            if progress is not None and now >= next_tick:
                await progress(now - started)
                next_tick = now + PROGRESS_EVERY_S
            wake_at = min(next_tick, deadline) if progress is not None else deadline
            wait_s = max(wake_at - now, 0.05)
            transition = inst.transition
            if transition is not None and not transition.done():
                done, _ = await asyncio.wait({transition}, timeout=wait_s)
                if done and not transition.cancelled():
                    error = transition.result()
                    if error is not None and inst.state is State.FAILED:
                        raise error
                continue
            if state in (State.STOPPED, State.FAILED):
                self._refuse_during_backoff(inst)
                decision = self._claim(inst)
                if isinstance(decision, planner.Impossible):
                    raise BackendUnavailable(f"model {inst.name} cannot be placed: {decision.message}")
                if isinstance(decision, planner.NoRoom):
                    for name in decision.holders:
                        holder = self.instances[name]
                        if holder not in pressed and not holder.cfg.pinned:
                            holder.pressure.append(started)
                            pressed.append(holder)
                    if loop.time() >= deadline:
                        raise BackendUnavailable(
                            f"no room to start model {inst.name} within {inst.cfg.startup_timeout_s:g} s: "
                            f"{decision.message}")
                    await self.changes.wait(min(wait_s, 1.0))
                continue
            # Ready but draining, or stopping: wait for it to settle, then start again.
            if loop.time() >= deadline:
                raise BackendTimeout(f"model {inst.name} did not become available within "
                                     f"{inst.cfg.startup_timeout_s:g} s")
            await inst.changes.wait(min(wait_s, 1.0))

    def _refuse_during_backoff(self, inst: Instance) -> None:
        if inst.state is not State.FAILED or inst.retry_at is None:
            return
        remaining = inst.retry_at - time.monotonic()
        if remaining > 0:
            lines = "\n".join(inst.last_lines(10))
            raise BackendUnavailable(
                f"model {inst.name} failed to start {inst.failed_starts} time(s) in a row; next "
                f"try in {remaining:.1f} s (or POST /gateway/models/{inst.name}/load). "
                f"{inst.last_error or ''}\nLast output:\n{lines}",
                headers={"Retry-After": str(max(1, int(remaining + 0.999)))})

    # -- placement ----------------------------------------------------------------------

    def _claim(self, inst: Instance) -> planner.Decision:
        """Plan and claim in one step: no await between reading state and changing it."""
        if self.gpus and inst.cfg.vram_gb > 0:
            need = planner.Need(inst.name, inst.cfg.vram_gb, inst.cfg.gpu_count)
        else:
            need = planner.Need(inst.name, 0.0, 0)
        loaded = [
            planner.Loaded(i.name, i.placement, i.cfg.vram_gb if i.placement else 0.0,
                           i.last_used_mono, i.evictable())
            for i in self.instances.values() if i.placement is not None and i.cfg.managed
        ]
        decision = planner.plan(self.gpus, loaded, need, self.config.max_loaded_models)
        if isinstance(decision, (planner.Place, planner.EvictThenPlace)):
            victims = decision.evict if isinstance(decision, planner.EvictThenPlace) else ()
            stops = [self._begin_stop(self.instances[v], "lru") for v in victims]
            inst.placement = tuple(decision.gpu_ids)
            inst.gpu_memory_utilization = (
                planner.gpu_memory_utilization(inst.cfg.vram_gb, self.gpus, decision.gpu_ids)
                if decision.gpu_ids else 0.9)
            inst.life.move(State.STARTING)
            inst.transition = asyncio.create_task(self._start(inst, stops))
        return decision

    def used_gb(self, launched_only: bool = True) -> dict[int, float]:
        used = {g.id: 0.0 for g in self.gpus}
        for i in self.instances.values():
            if i.placement and (i.launched or not launched_only):
                for g in i.placement:
                    used[g] = used.get(g, 0.0) + i.cfg.vram_gb
        return used

    # -- starting -----------------------------------------------------------------------

    async def _start(self, inst: Instance, evictions: list[asyncio.Task[GatewayError | None]]
                     ) -> GatewayError | None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        inst.starting_since = time.monotonic()
        try:
            if evictions:
                await asyncio.gather(*evictions, return_exceptions=True)
            await self._launch_until_healthy(inst, began + inst.cfg.startup_timeout_s)
        except asyncio.CancelledError:
            await self._release(inst)
            raise
        except (LaunchError, StartFailed, StartTimedOut) as exc:
            return await self._start_failed(inst, exc)
        took = loop.time() - began
        inst.last_start_s = round(took, 3)
        inst.starting_since = None
        inst.failed_starts, inst.retry_at, inst.last_error = 0, None, None
        inst.failed_probes = 0
        inst.life.move(State.READY)
        inst.touch()
        self.metrics.start_seconds.labels(inst.name).observe(took)
        self.events.add(inst.name, "ready", f"in {took:.2f} s")
        handle = inst.handle
        assert handle is not None
        # Kept on the instance: the loop holds tasks only weakly.
        inst.watcher = asyncio.create_task(self._watch_exit(inst, handle))
        return None

    async def _launch_until_healthy(self, inst: Instance, deadline: float) -> None:
        launcher = self.launchers[inst.cfg.launcher]
        for attempt in range(PORT_ATTEMPTS):
            # The port is free when picked but another process may take it before the server
            # binds it; that is the gateway's race, not the model's failure, so pick again.
            inst.port = free_port()
            spec = LaunchSpec(inst.cfg, inst.port, inst.placement or (), inst.gpu_memory_utilization)
            self.events.add(inst.name, "starting", f"on port {inst.port}, GPUs {list(spec.gpu_ids)}")
            try:
                inst.handle = await launcher.start(spec)
            finally:
                inst.launched = True
            self.metrics.starts.labels(inst.name).inc()
            try:
                await wait_healthy(self.probe, inst.handle, inst.cfg.health_path, deadline)
                return
            except StartFailed:
                lost_port = any("address already in use" in line.lower()
                                for line in inst.last_lines(5))
                if not lost_port or attempt == PORT_ATTEMPTS - 1:
                    raise
                await inst.handle.stop(self.config.faults.stop_grace_s)

    async def _start_failed(self, inst: Instance, exc: Exception) -> GatewayError:
        lines = inst.last_lines(20)
        inst.failed_starts += 1
        # StartFailed already names the exception lines of the output; otherwise the last line
        # a server printed is the best guess at its reason.
        reason = "" if isinstance(exc, StartFailed) else next(
            (line.strip() for line in reversed(lines) if line.strip()), "")
        inst.last_error = f"{exc}: {reason}" if reason else str(exc)
        inst.starting_since = None
        inst.life.move(State.FAILED)
        await self._release(inst)
        backoff = inst.backoff_s(self.config.faults)
        inst.retry_at = time.monotonic() + backoff
        self.metrics.failures.labels(inst.name).inc()
        tail = "\n".join(lines)
        self.events.add(inst.name, "failed", f"{exc}; next try in {backoff:.0f} s; last output:\n{tail}")
        message = f"model {inst.name} failed to start: {exc}\nLast output:\n{tail}"
        if isinstance(exc, StartTimedOut):
            return BackendTimeout(message)
        return BackendUnavailable(message)

    async def _watch_exit(self, inst: Instance, handle: ServerHandle) -> None:
        """Notice a backend that dies while ready, even with no traffic."""
        code = await handle.wait_exit()
        if inst.handle is not handle or inst.state is not State.READY:
            return  # stopped on purpose, or already handled
        lines = inst.last_lines(20)
        inst.last_error = f"exited with code {code} while ready"
        inst.life.move(State.FAILED)
        inst.retry_at = None  # a crash is not a failed start: the next request restarts it
        self.metrics.failures.labels(inst.name).inc()
        self.events.add(inst.name, "crashed", f"exit code {code}; last output:\n" + "\n".join(lines))
        inst.transition = asyncio.create_task(self._release(inst))

    # -- stopping -----------------------------------------------------------------------

    def _begin_stop(self, inst: Instance, reason: str) -> asyncio.Task[GatewayError | None]:
        """Move to stopping now (synchronously) and stop in the background."""
        previous = inst.transition
        inst.life.move(State.STOPPING)
        inst.draining = False
        if reason in EVICTION_REASONS:
            self.metrics.evictions.labels(inst.name, reason).inc()
        kind = {"lru": "evicted", "idle": "idle_stop"}.get(reason, "stopping")
        self.events.add(inst.name, kind, f"stopping ({reason})")

        async def run() -> GatewayError | None:
            if previous is not None and not previous.done():
                previous.cancel()
                await asyncio.gather(previous, return_exceptions=True)
            if inst.state is State.STOPPING:
                await self._release(inst)
            return None

        inst.transition = asyncio.create_task(run())
        return inst.transition

    async def _release(self, inst: Instance) -> GatewayError | None:
        """Stop the server's processes, then free its memory in the accounting."""
        handle = inst.handle
        try:
            if handle is not None:
                try:
                    await handle.stop(self.config.faults.stop_grace_s)
                except Exception as exc:  # noqa: BLE001 - an engine error must not wedge the model
                    log.error("model %s: stopping its server failed: %s", inst.name, exc)
                    self.events.add(inst.name, "stop_failed", str(exc))
            if self.nvml is not None and inst.placement:
                expected = self.used_gb()
                for g in inst.placement:
                    expected[g] = max(expected.get(g, 0.0) - inst.cfg.vram_gb, 0.0)
                if not await wait_released(self.nvml, inst.placement, expected):
                    log.warning("model %s: the driver still reports its memory in use", inst.name)
        finally:
            inst.placement = None
            inst.launched = False
            if inst.state is State.STOPPING:
                inst.life.move(State.STOPPED)
                self.events.add(inst.name, "stopped", "processes gone, memory released")
            inst.changes.notify()
            self.changes.notify()
        return None

    async def unload(self, inst: Instance, reason: str = "manual") -> None:
        """Stop after in-flight requests finish; requests arriving meanwhile wait."""
        if not inst.cfg.managed:
            return
        if inst.state is State.READY:
            inst.draining = True
            try:
                # Only requests already past the readiness check are waited for; new ones
                # queue behind the drain and start the model again once it is stopped.
                while inst.committed > 0 and inst.state is State.READY:
                    await inst.changes.wait(1.0)
            finally:
                if inst.state is not State.READY:
                    inst.draining = False
            if inst.state is State.READY:
                self._begin_stop(inst, reason)
        elif inst.state is State.STARTING:
            self._begin_stop(inst, reason)
        if inst.transition is not None:
            await asyncio.shield(inst.transition)

    async def load(self, inst: Instance) -> None:
        if inst.state is State.FAILED:
            inst.failed_starts, inst.retry_at = 0, None  # an operator asked: try now
        await self.ensure_ready(inst)

    # -- callbacks ----------------------------------------------------------------------

    def _on_state(self, inst: Instance, old: State, new: State) -> None:
        inst.changes.notify()
        self.changes.notify()

    def _on_counts(self, inst: Instance) -> None:
        if inst.limiter.idle:
            inst.changes.notify()
            self.changes.notify()

    # -- background duties --------------------------------------------------------------

    def reap_idle(self) -> list[str]:
        """Stop models idle for longer than their idle_timeout_s (one synchronous step)."""
        now = time.monotonic()
        stopped = []
        for inst in self.instances.values():
            timeout = inst.cfg.idle_timeout_s
            # Idle since the end of the last request, or since it became ready if none came.
            idle_since = max(inst.limiter.last_idle_at or 0.0, inst.last_used_mono)
            if (timeout > 0 and inst.cfg.managed and inst.evictable()
                    and now - idle_since >= timeout):
                self._begin_stop(inst, "idle")
                stopped.append(inst.name)
        return stopped

    async def preload_pinned(self) -> None:
        pinned = [i for i in self.instances.values() if i.cfg.pinned and i.cfg.managed]
        results = await asyncio.gather(*(self.ensure_ready(i) for i in pinned),
                                       return_exceptions=True)
        for inst, result in zip(pinned, results):
            if isinstance(result, Exception):
                log.warning("pinned model %s did not start: %s", inst.name, result)

    async def shutdown(self) -> None:
        """Stop every model this gateway started and wait until their processes are gone."""
        self.closing = True
        self.changes.notify()
        tasks = []
        for inst in self.instances.values():
            if not inst.cfg.managed:
                continue
            if inst.state in (State.READY, State.STARTING):
                tasks.append(self._begin_stop(inst, "shutdown"))
            elif inst.transition is not None and not inst.transition.done():
                tasks.append(inst.transition)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        # A failed model may still be cleaning up; make sure nothing is left behind.
        for inst in self.instances.values():
            if inst.handle is not None and inst.handle.alive():
                with contextlib.suppress(Exception):
                    await inst.handle.stop(self.config.faults.stop_grace_s)
