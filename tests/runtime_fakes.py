"""In-process runtime for rule tests: a Manager over the fake launcher, a fake sleep API and a
manual clock, with no process and no socket."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from vllm_gateway import planner
from vllm_gateway.config import GatewayConfig, ModelConfig
from vllm_gateway.events import EventLog
from vllm_gateway.gpu import GpuReader, NullGpuReader
from vllm_gateway.launchers.fake import FakeLauncher
from vllm_gateway.metrics import Metrics
from vllm_gateway.runtime.clock import Clock, SystemClock
from vllm_gateway.runtime.costs import LoadCosts
from vllm_gateway.runtime.lora_api import LoraError
from vllm_gateway.runtime.manager import Manager
from vllm_gateway.runtime.monitor import Monitor
from vllm_gateway.runtime.sleep_api import SleepError
from vllm_gateway.runtime.transitions import Services
from vllm_gateway.runtime.vram import MeasuredVram


@dataclass
class FakeSleep:
    """vLLM's sleep endpoints as the runtime sees them, per server URL."""

    asleep: set[str] = field(default_factory=set)
    calls: list[tuple[str, str, int]] = field(default_factory=list)
    fail_sleep: bool = False
    fail_wake: bool = False
    answers: dict[str, str] = field(default_factory=dict)  # base_url -> check answer
    gate: asyncio.Event | None = None  # set by a test to hold sleeps and wakes open

    async def _hold(self) -> None:
        if self.gate is not None:
            await self.gate.wait()

    async def sleep(self, base_url: str, level: int) -> None:
        self.calls.append(("sleep", base_url, level))
        await self._hold()
        if self.fail_sleep:
            raise SleepError("/sleep answered 200 but /is_sleeping says false")
        self.asleep.add(base_url)

    async def wake(self, base_url: str, level: int) -> None:
        self.calls.append(("wake", base_url, level))
        await self._hold()
        if self.fail_wake:
            raise SleepError("/wake_up answered 500: engine dead")
        self.asleep.discard(base_url)

    async def is_sleeping(self, base_url: str) -> bool:
        return base_url in self.asleep

    async def answer(self, base_url: str, model: str) -> str:
        return self.answers.get(base_url, "Paris")


@dataclass
class FakeLora:
    """vLLM's runtime LoRA endpoints as the runtime sees them, per server URL."""

    loaded: dict[str, list[str]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    bad: set[str] = field(default_factory=set)  # adapter names whose load fails
    gate: asyncio.Event | None = None

    async def load(self, base_url: str, name: str, path: str) -> None:
        self.calls.append(("load", name))
        if self.gate is not None:
            await self.gate.wait()
        if name in self.bad:
            raise LoraError(f"Loading lora {name} failed: No adapter found for {path}")
        self.loaded.setdefault(base_url, []).append(name)

    async def unload(self, base_url: str, name: str) -> None:
        self.calls.append(("unload", name))
        self.loaded.get(base_url, []).remove(name)


def make_manager(models: dict[str, float], gpus: list[float] | None = None,
                 auto_healthy: bool = True, clock: Clock | None = None,
                 sleeper: FakeSleep | None = None, host_gb: float = 1000.0,
                 max_loaded: int | None = None, lora: FakeLora | None = None,
                 gpus_reader: GpuReader | None = None, vram: MeasuredVram | None = None,
                 per_model: dict[str, dict[str, Any]] | None = None,
                 **kw: Any) -> tuple[Manager, FakeLauncher]:
    """``kw`` are ModelConfig fields of every model; ``per_model`` those of one model."""
    launcher = FakeLauncher(auto_healthy)
    per_model = per_model or {}
    config = GatewayConfig(
        models={n: ModelConfig(name=n, command=("x",), vram_gb=v, **{**kw, **per_model.get(n, {})})
                for n, v in models.items()},
        max_loaded_models=max_loaded)
    svc = Services(config=config, launchers={"subprocess": launcher}, events=EventLog(),
                   metrics=Metrics(), probe=launcher.probe,
                   gpus_reader=gpus_reader or NullGpuReader(),
                   sleep=sleeper or FakeSleep(), lora=lora or FakeLora(), clock=clock or SystemClock(), costs=LoadCosts(),
                   vram=vram or MeasuredVram(),
                   # The fake launcher's pids are no processes: a server's group is its pid.
                   group_pids=lambda pid: [pid])
    gpu_list = [planner.Gpu(i, t) for i, t in enumerate(gpus or [])]
    manager = Manager(svc, gpu_list, host_gb)
    Monitor(manager, _no_scrape)  # watches launched servers; its loops are not started here
    return manager, launcher


async def _no_scrape(base_url: str, name: str) -> None:
    return None


async def settle(manager: Manager) -> None:
    for inst in list(manager.replicas()):
        while inst.transition is not None and not inst.transition.done():
            await asyncio.gather(inst.transition, return_exceptions=True)


def kinds(manager: Manager, kind: str) -> list[str]:
    return [e["model"] for e in manager.svc.events.since(0)["events"] if e["kind"] == kind]
