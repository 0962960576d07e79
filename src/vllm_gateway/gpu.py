"""GPU inventory: declared in the config or read through NVML.

NVML is reached through a module object with pynvml's interface, so tests pass
:class:`FakeNvml` (canned readings) and production passes the real ``pynvml``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .config import GpuSpec
from .planner import Gpu

_GIB = 1024**3


class GpuDiscoveryError(Exception):
    pass


class NvmlModule(Protocol):
    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any: ...
    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> Any: ...


@dataclass(frozen=True)
class Reading:
    id: int
    total_gb: float
    used_gb: float


class GpuReader(Protocol):
    """What the runtime reads of the driver; the null reader stands for "no NVML"."""

    enabled: bool

    async def read(self) -> list[Reading]:
        """A fresh reading, taken off the event loop (NVML calls block)."""

    def cached(self) -> list[Reading]:
        """The last reading, for status pages: never blocks."""

    async def process_used_gb(self, pids: Collection[int]) -> dict[int, float]:
        """GPU memory the given processes hold, summed per GPU id (GPUs they use only)."""

    def close(self) -> None: ...


class NullGpuReader:
    enabled = False

    async def read(self) -> list[Reading]:
        return []

    def cached(self) -> list[Reading]:
        return []

    async def process_used_gb(self, pids: Collection[int]) -> dict[int, float]:
        return {}

    def close(self) -> None:
        pass


class NvmlReader:
    """Reads total and used memory per GPU from the NVIDIA driver."""

    enabled = True

    def __init__(self, nvml: NvmlModule) -> None:
        self._nvml = nvml
        self._nvml.nvmlInit()
        self._last: list[Reading] = []

    def read_now(self) -> list[Reading]:
        readings = []
        for index in range(self._nvml.nvmlDeviceGetCount()):
            info = self._nvml.nvmlDeviceGetMemoryInfo(self._nvml.nvmlDeviceGetHandleByIndex(index))
            readings.append(Reading(index, info.total / _GIB, info.used / _GIB))
        self._last = readings
        return readings

    async def read(self) -> list[Reading]:
        return await asyncio.to_thread(self.read_now)

    def cached(self) -> list[Reading]:
        return list(self._last)

    def process_used_now(self, pids: Collection[int]) -> dict[int, float]:
        wanted = set(pids)
        used: dict[int, float] = {}
        for index in range(self._nvml.nvmlDeviceGetCount()):
            handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
            for proc in self._nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                # usedGpuMemory is None where the driver will not say (some containers, MIG).
                if proc.pid in wanted and proc.usedGpuMemory is not None:
                    used[index] = used.get(index, 0.0) + proc.usedGpuMemory / _GIB
        return used

    async def process_used_gb(self, pids: Collection[int]) -> dict[int, float]:
        return await asyncio.to_thread(self.process_used_now, pids)

    def close(self) -> None:
        self._nvml.nvmlShutdown()


def open_nvml() -> NvmlReader:
    """The real driver, or a GpuDiscoveryError that says what to do instead."""
    try:
        import pynvml
    except ImportError as exc:  # pragma: no cover - nvidia-ml-py is a dependency
        raise GpuDiscoveryError(f"gpus: auto needs nvidia-ml-py: {exc}") from exc
    try:
        return NvmlReader(pynvml)
    except Exception as exc:
        raise GpuDiscoveryError(
            f"gpus: auto could not read the GPUs through NVML ({exc}); is the NVIDIA driver "
            "installed? Declare the GPUs instead, e.g. gpus: [{id: 0, vram_gb: 80}], "
            "or set TOTAL_GPU_VRAM=80 for one GPU"
        ) from exc


def inventory(declared: Sequence[GpuSpec] | None, reader: NvmlReader | None) -> list[Gpu]:
    """The GPUs the planner places onto: declared ones win, else what NVML reports."""
    if declared is not None:
        return [Gpu(g.id, g.vram_gb) for g in declared]
    if reader is None:
        return []
    return [Gpu(r.id, round(r.total_gb, 2)) for r in reader.read_now()]


async def wait_released(reader: GpuReader, gpu_ids: Sequence[int], expected_used_gb: dict[int, float],
                        timeout_s: float = 10.0, slack_gb: float = 0.5) -> bool:
    """Wait (bounded) until the driver's used memory on each GPU drops to what the gateway
    still has placed there, so the next model does not start into an out-of-memory error."""
    deadline = time.monotonic() + timeout_s
    while True:
        readings = {r.id: r for r in await reader.read()}
        if all(
            g not in readings or readings[g].used_gb <= expected_used_gb.get(g, 0.0) + slack_gb
            for g in gpu_ids
        ):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.1)


class _MemInfo:
    def __init__(self, total: int, used: int) -> None:
        self.total, self.used, self.free = total, used, total - used


class _ProcessInfo:
    def __init__(self, pid: int, used: int | None) -> None:
        self.pid, self.usedGpuMemory = pid, used


class FakeNvml:
    """pynvml's interface with canned readings, for tests without a GPU.

    ``processes`` maps a GPU index to the compute processes on it, ``{pid: GB}`` (None: the
    driver does not say)."""

    def __init__(self, totals_gb: Sequence[float], used_gb: Sequence[float] | None = None,
                 fail_init: str | None = None) -> None:
        self.totals_gb = list(totals_gb)
        self.used_gb = list(used_gb) if used_gb is not None else [0.0] * len(self.totals_gb)
        self.processes: dict[int, dict[int, float | None]] = {}
        self._fail_init = fail_init
        self.initialised = False

    def nvmlInit(self) -> None:
        if self._fail_init:
            raise RuntimeError(self._fail_init)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        return len(self.totals_gb)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> _MemInfo:
        return _MemInfo(int(self.totals_gb[handle] * _GIB), int(self.used_gb[handle] * _GIB))

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[_ProcessInfo]:
        return [_ProcessInfo(pid, None if gb is None else int(gb * _GIB))
                for pid, gb in self.processes.get(handle, {}).items()]
