"""The runtime's watch over running servers: exits, hangs, idle time, driver readings.

A server that exits while it runs (ready, draining, asleep, waking) is marked
failed with its cause and cleaned up; one that hangs (process alive, health
checks failing) is killed at once, not drained, since a hung server never
finishes its requests. vLLM's own gauges are read beside each health check; the
reaper tick asks the manager to let idle models sleep or stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from ..events import EventKind
from ..handles import ServerHandle
from ..lifecycle import State
from .instance import Instance
from .manager import Manager

log = logging.getLogger("vllm_gateway.monitor")

REAP_EVERY_S = 0.25
READINGS_EVERY_S = 2.0
Scrape = Callable[[str, str], Awaitable[dict[str, float] | None]]


class Monitor:
    def __init__(self, manager: Manager, scrape: Scrape) -> None:
        self.manager = manager
        self.scrape = scrape
        self._tasks: list[asyncio.Task[None]] = []
        manager.transitions.watch = self.watch

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._reap_loop()),
                       asyncio.create_task(self._health_loop())]
        if self.manager.svc.gpus_reader.enabled:
            self._tasks.append(asyncio.create_task(self._readings_loop()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(REAP_EVERY_S)
            self.manager.reap()
            self.manager.scaler.tick()

    async def _readings_loop(self) -> None:
        reader = self.manager.svc.gpus_reader
        while True:
            with contextlib.suppress(Exception):
                await reader.read()
            await asyncio.sleep(READINGS_EVERY_S)

    async def _health_loop(self) -> None:
        faults = self.manager.config.faults
        while True:
            await asyncio.sleep(faults.health_interval_s)
            checks = [self.check(inst) for inst in self.manager.replicas()
                      if inst.state is State.READY and inst.cfg.managed]
            reads = [self.read_asleep(inst) for inst in self.manager.replicas()
                     if inst.state is State.SLEEPING]
            await asyncio.gather(*checks, *reads, return_exceptions=True)

    async def read_asleep(self, inst: Instance) -> None:
        """vLLM's own gauges of a sleeper (its engine_sleep_state among them); no health probe:
        a sleeping server answers /health like an awake one, and its exit is watched anyway."""
        base = inst.base_url
        if base is None:
            return
        found = await self.scrape(base, inst.name)
        if inst.state is State.SLEEPING and inst.base_url == base:
            inst.backend_metrics = found

    async def check(self, inst: Instance) -> None:
        base = inst.base_url
        if base is None:
            return
        faults = self.manager.config.faults
        # A busy server may answer slowly; only silence for this long counts as a failed probe.
        timeout = max(2.0, min(2 * faults.health_interval_s, 10.0))
        healthy = await self.manager.svc.probe(base + inst.cfg.health_path, timeout)
        if inst.state is not State.READY or inst.base_url != base:
            return  # it moved on while the probe ran: the answer is about another life
        if healthy:
            inst.failed_probes = 0
            inst.backend_metrics = await self.scrape(base, inst.name)
            return
        inst.failed_probes += 1
        if inst.failed_probes >= faults.unhealthy_probes:
            probes, inst.failed_probes = inst.failed_probes, 0
            self.kill_hung(inst, probes)

    def watch(self, inst: Instance, handle: ServerHandle) -> None:
        # Kept on the instance: the loop holds tasks only weakly.
        inst.watcher = asyncio.create_task(self._watch_exit(inst, handle))

    async def _watch_exit(self, inst: Instance, handle: ServerHandle) -> None:
        """Notice a server that dies while it runs, with or without traffic."""
        code = await handle.wait_exit()
        state = inst.state
        if inst.handle is not handle or state not in (State.READY, State.DRAINING,
                                                      State.SLEEPING, State.WAKING):
            return  # stopped on purpose, or a start that failed (the start reports it)
        if not inst.life.move(state, State.FAILED):
            return
        svc = self.manager.svc
        inst.last_error = f"exited with code {code} while {state.value}"
        svc.metrics.failures.labels(inst.name).inc()
        svc.events.add(inst.name, EventKind.CRASHED, inst.said(
            f"exit code {code} while {state.value}; last output:\n"
            + "\n".join(inst.last_lines(20))))
        inst.transition = asyncio.create_task(self.manager.transitions.release(inst))

    def kill_hung(self, inst: Instance, probes: int) -> None:
        """Its in-flight requests end with an error; the next request starts it again."""
        state = inst.state
        if state not in (State.READY, State.DRAINING) or not inst.life.move(state, State.FAILED):
            return
        svc = self.manager.svc
        inst.last_error = f"stopped answering its health checks ({probes} in a row)"
        svc.metrics.failures.labels(inst.name).inc()
        svc.events.add(inst.name, EventKind.UNHEALTHY, inst.said(
            f"{probes} health checks failed in a row: killing it; the next request starts it "
            "again"))
        previous = inst.transition
        inst.transition = asyncio.create_task(self.manager.transitions.stop(inst, previous, 0.0))
