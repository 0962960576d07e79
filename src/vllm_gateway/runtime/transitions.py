"""The effects of a model's life: start, stop, sleep, wake, and the clean-up after each.

Each runs as the instance's one ``transition`` task, started by the manager
right after it moved the state synchronously (so the decision and the claim are
one step). A transition ends by moving the state with compare-and-set: when the
state changed meanwhile (an unload, a shutdown, a crash), it leaves it alone.
The task's result is the error requests waiting on it should get, if any.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from ..config import GatewayConfig
from ..errors import BackendTimeout, BackendUnavailable, GatewayError
from ..events import EventKind, EventLog
from ..gpu import GpuReader, wait_released
from ..handles import ServerHandle
from ..health import StartFailed, StartTimedOut, wait_healthy
from ..launchers.base import Launcher, LaunchError, LaunchSpec
from ..launchers.pgroup import group_members
from ..lifecycle import State
from ..metrics import Metrics
from .clock import Clock
from .costs import LoadCosts
from .instance import Instance
from .lora_api import LoraControl
from .sleep_api import SleepControl, SleepError
from .vram import MeasuredVram, measure

log = logging.getLogger("vllm_gateway.runtime")

PORT_ATTEMPTS = 3
Probe = Callable[[str, float], Awaitable[bool]]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Services:
    """Everything the runtime acts through; built by the composition root."""

    config: GatewayConfig
    launchers: Mapping[str, Launcher]
    events: EventLog
    metrics: Metrics
    probe: Probe
    gpus_reader: GpuReader
    sleep: SleepControl
    lora: LoraControl
    clock: Clock
    costs: LoadCosts
    vram: MeasuredVram = field(default_factory=MeasuredVram)
    # The live processes of a server's process group (its memory is theirs, summed).
    group_pids: Callable[[int], list[int]] = group_members


class Transitions:
    def __init__(self, svc: Services, used_gb: Callable[[], dict[int, float]],
                 on_released: Callable[[Instance], None]) -> None:
        self.svc = svc
        self._used_gb = used_gb
        self._on_released = on_released
        # Set by the manager: starts watching a launched server for its exit.
        self.watch: Callable[[Instance, ServerHandle], None] = lambda inst, handle: None

    # -- start ----------------------------------------------------------------------------

    async def start(self, inst: Instance, evictions: list[asyncio.Task[GatewayError | None]]
                    ) -> GatewayError | None:
        svc = self.svc
        began = svc.clock.now()
        inst.starting_since = began
        try:
            if evictions:
                await asyncio.gather(*evictions, return_exceptions=True)
            await self._launch_until_healthy(inst, asyncio.get_running_loop().time()
                                             + inst.cfg.startup_timeout_s)
            if inst.cfg.sleep and inst.cfg.wake_check:
                inst.reference_answer = await self._reference(inst)
        except asyncio.CancelledError:
            await self.release(inst)
            raise
        except (LaunchError, StartFailed, StartTimedOut) as exc:
            return await self._start_failed(inst, exc)
        took = svc.clock.now() - began
        inst.last_start_s = round(took, 3)
        inst.starting_since = None
        inst.failed_starts, inst.retry_at, inst.last_error = 0, None, None
        inst.failed_probes = 0
        if not inst.life.move(State.STARTING, State.READY):
            return None
        inst.ready_since = svc.clock.now()
        inst.touch(svc.clock.now(), svc.clock.wall())
        svc.costs.record(inst.name, "start", took)
        svc.metrics.start_seconds.labels(inst.name).observe(took)
        svc.events.add(inst.name, EventKind.READY, inst.said(f"in {took:.2f} s"))
        await measure(inst, svc.gpus_reader, svc.group_pids, svc.vram, svc.events)
        return None

    async def _reference(self, inst: Instance) -> str | None:
        assert inst.base_url is not None
        try:
            return await self.svc.sleep.answer(inst.base_url, inst.name)
        except SleepError as exc:
            log.warning("model %s: no reference answer for the wake check: %s", inst.name, exc)
            return None

    async def _launch_until_healthy(self, inst: Instance, deadline: float) -> None:
        svc = self.svc
        launcher = svc.launchers.get(inst.cfg.launcher)
        if launcher is None:
            raise LaunchError(f"launcher {inst.cfg.launcher!r} is not available in this gateway")
        env = {}
        if inst.cfg.sleep:
            env["VLLM_SERVER_DEV_MODE"] = "1"  # vLLM reads it with int(): "true" makes it exit
        if inst.cfg.adapters:
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        for attempt in range(PORT_ATTEMPTS):
            # The port is free when picked but another process may take it before the server
            # binds it; that is the gateway's race, not the model's failure, so pick again.
            inst.port = free_port()
            spec = LaunchSpec(inst.cfg, inst.port, inst.placement or (),
                              inst.gpu_memory_utilization, env)
            svc.events.add(inst.name, EventKind.STARTING,
                           inst.said(f"on port {inst.port}, GPUs {list(spec.gpu_ids)}"))
            try:
                inst.handle = await launcher.start(spec)
            finally:
                inst.launched = True
            self.watch(inst, inst.handle)
            svc.metrics.starts.labels(inst.name).inc()
            svc.metrics.replica_starts.labels(inst.name, str(inst.index)).inc()
            try:
                await wait_healthy(svc.probe, inst.handle, inst.cfg.health_path, deadline)
                return
            except StartFailed:
                lost_port = any("address already in use" in line.lower()
                                for line in inst.last_lines(5))
                if not lost_port or attempt == PORT_ATTEMPTS - 1:
                    raise
                await inst.handle.stop(svc.config.faults.stop_grace_s)

    async def _start_failed(self, inst: Instance, exc: Exception) -> GatewayError:
        svc, faults = self.svc, self.svc.config.faults
        lines = inst.last_lines(20)
        inst.failed_starts += 1
        # StartFailed already names the exception lines of the output; otherwise the last line
        # a server printed is the best guess at its reason.
        reason = "" if isinstance(exc, StartFailed) else next(
            (line.strip() for line in reversed(lines) if line.strip()), "")
        inst.last_error = f"{exc}: {reason}" if reason else str(exc)
        inst.starting_since = None
        tail = "\n".join(lines)
        if inst.failed_starts >= faults.max_failed_starts:
            inst.retry_at = None
            inst.life.move(State.STARTING, State.HELD)
            next_try = f"held after {inst.failed_starts} failed starts in a row until " \
                       f"POST /gateway/models/{inst.name}/load"
        else:
            backoff = min(faults.start_backoff_s * 2 ** (inst.failed_starts - 1),
                          faults.start_backoff_max_s)
            inst.retry_at = svc.clock.now() + backoff
            inst.life.move(State.STARTING, State.BACKOFF)
            next_try = f"next try in {backoff:.0f} s"
        await self.release(inst)
        svc.metrics.failures.labels(inst.name).inc()
        svc.events.add(inst.name, EventKind.FAILED,
                       inst.said(f"{exc}; {next_try}; last output:\n{tail}"))
        message = f"model {inst.name} failed to start: {exc}\nLast output:\n{tail}"
        if isinstance(exc, StartTimedOut):
            return BackendTimeout(message)
        return BackendUnavailable(message)

    # -- stop -----------------------------------------------------------------------------

    async def stop(self, inst: Instance, previous: asyncio.Task[GatewayError | None] | None,
                   grace_s: float | None = None) -> GatewayError | None:
        if previous is not None and not previous.done():
            previous.cancel()
            await asyncio.gather(previous, return_exceptions=True)
        await self.release(inst, grace_s)
        return None

    async def drained(self, inst: Instance) -> None:
        # Only requests already past the readiness check are waited for; new ones queue
        # behind the drain and bring the model back once it is stopped or asleep.
        while (inst.committed > 0 or inst.in_flight > 0) and inst.state is State.DRAINING:
            await inst.changes.wait(1.0)

    async def release(self, inst: Instance, grace_s: float | None = None) -> None:
        """Stop the server's processes, then free its memory in the accounting."""
        svc = self.svc
        handle = inst.handle
        try:
            if handle is not None:
                try:
                    await handle.stop(svc.config.faults.stop_grace_s if grace_s is None
                                      else grace_s)
                except Exception as exc:  # noqa: BLE001 - an engine error must not wedge the model
                    log.error("model %s: stopping its server failed: %s", inst.name, exc)
                    svc.events.add(inst.name, EventKind.STOP_FAILED, inst.said(str(exc)))
            if inst.placement and svc.gpus_reader.enabled:
                expected = self._used_gb()
                for g in inst.placement:
                    expected[g] = max(expected.get(g, 0.0) - inst.held_gb(), 0.0)
                if not await wait_released(svc.gpus_reader, inst.placement, expected):
                    log.warning("model %s: the driver still reports its memory in use", inst.name)
        finally:
            inst.placement = None
            inst.launched = False
            inst.sleep_level, inst.host_gb, inst.asleep_since = None, 0.0, None
            inst.residual_gb, inst.stopping_asleep = None, False
            if inst.life.move(State.STOPPING, State.STOPPED):
                svc.events.add(inst.name, EventKind.STOPPED,
                               inst.said("processes gone, memory released"))
            self._on_released(inst)

    # -- sleep and wake -------------------------------------------------------------------

    async def sleep(self, inst: Instance, level: int, reason: str) -> GatewayError | None:
        svc = self.svc
        await self.drained(inst)
        if inst.state is not State.DRAINING or inst.base_url is None:
            return None
        before = self._driver_used(inst)
        try:
            await svc.sleep.sleep(inst.base_url, level)
        except SleepError as exc:
            svc.events.add(inst.name, EventKind.SLEEP_FAILED,
                           inst.said(f"{exc}; stopping it instead"))
            if inst.life.move(State.DRAINING, State.STOPPING):
                await self.release(inst)
            return None
        inst.residual_gb = await self._measured_residual(inst, before)
        if not inst.life.move(State.DRAINING, State.SLEEPING):
            return None
        inst.sleep_level = level
        inst.asleep_since = svc.clock.now()
        svc.metrics.sleeps.labels(inst.name, str(level)).inc()
        held = f", {inst.host_gb:g} GB of host RAM" if inst.host_gb else ""
        svc.events.add(inst.name, EventKind.ASLEEP, inst.said(f"level {level} ({reason}){held}"))
        return None

    def _driver_used(self, inst: Instance) -> dict[int, float]:
        return {r.id: r.used_gb for r in self.svc.gpus_reader.cached()
                if inst.placement and r.id in inst.placement}

    async def _measured_residual(self, inst: Instance, before: dict[int, float]) -> float | None:
        """What the sleeper really still holds per GPU, where the driver can tell: vLLM has
        freed far less than expected in some versions, and placement trusts what it sees."""
        if not before:
            return None
        after = {r.id: r.used_gb for r in await self.svc.gpus_reader.read()}
        freed = [before[g] - after[g] for g in before if g in after]
        if not freed:
            return None
        residual = max(inst.vram_gb - min(freed), 0.0)
        return round(min(residual, inst.vram_gb), 2)

    async def wake(self, inst: Instance, evictions: list[asyncio.Task[GatewayError | None]]
                   ) -> GatewayError | None:
        svc = self.svc
        began = svc.clock.now()
        level = inst.sleep_level or 1
        inst.wake_sent = False
        try:
            if evictions:
                await asyncio.gather(*evictions, return_exceptions=True)
            assert inst.base_url is not None
            inst.wake_sent = True
            await svc.sleep.wake(inst.base_url, level)
            if inst.cfg.wake_check and inst.reference_answer is not None:
                got = await svc.sleep.answer(inst.base_url, inst.name)
                if got != inst.reference_answer:
                    inst.wake_check_failures += 1
                    svc.metrics.wake_check_failures.labels(inst.name).inc()
                    raise SleepError(f"wake check: answered {got!r}, expected "
                                     f"{inst.reference_answer!r} as after the cold start")
        except SleepError as exc:
            inst.wake_sent = False
            svc.events.add(inst.name, EventKind.WAKE_FAILED, inst.said(f"{exc}; cold-starting it"))
            if inst.life.move(State.WAKING, State.STOPPING):
                await self.release(inst)
            return None
        took = svc.clock.now() - began
        inst.wake_sent = False
        inst.sleep_level, inst.host_gb, inst.asleep_since, inst.residual_gb = None, 0.0, None, None
        if not inst.life.move(State.WAKING, State.READY):
            return None
        inst.last_wake_s = round(took, 3)
        inst.ready_since = svc.clock.now()
        inst.touch(svc.clock.now(), svc.clock.wall())
        svc.costs.record(inst.name, "wake", took)
        svc.metrics.wakes.labels(inst.name).inc()
        svc.metrics.wake_seconds.labels(inst.name).observe(took)
        svc.events.add(inst.name, EventKind.WOKEN,
                       inst.said(f"from level {level} in {took:.2f} s"))
        return None
