"""The runtime's periodic duties: health checks, idle stops, and fresh driver readings.

A hung backend (process alive, health checks failing) is reported to the
manager, which kills it; vLLM's own gauges are read beside each check; the
reaper tick lets idle models sleep or stop. The monitor decides nothing itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

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
            checks = [self.check(inst) for inst in self.manager.instances.values()
                      if inst.state is State.READY and inst.cfg.managed]
            await asyncio.gather(*checks, return_exceptions=True)

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
            self.manager.kill_hung(inst, probes)
