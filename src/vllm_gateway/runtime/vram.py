"""GPU memory measured rather than declared.

Once a server is ready, and where NVML is available, the gateway reads what the
server's processes (its whole process group: vLLM's engine and workers hold the
memory, not the API process) really hold on each GPU of its placement. Status
shows it as ``measured_vram_gb``; more than ``vram_gb`` by over
``OVER_SHARE`` is a warning (an event and a status field), since the planner
trusts ``vram_gb``. A model with ``vram_gb: auto`` is accounted with the last
figure measured, kept in the state dir across restarts like the learned load
times, and with its ``vram_gb_estimate`` until it was ever measured.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from pathlib import Path

from ..config import ModelConfig
from ..events import EventKind, EventLog
from ..gpu import GpuReader
from . import state_file
from .instance import Instance

log = logging.getLogger("vllm_gateway.vram")

WHAT = "measured GPU memory"
OVER_SHARE = 0.05  # measured above vram_gb by more than this share: a warning
MEASURE_TIMEOUT_S = 5.0


class MeasuredVram:
    """The last GPU memory measured per model (GB per GPU), optionally kept in a file."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._last: dict[str, float] = {}
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        data = state_file.read(path, WHAT)
        if isinstance(data, dict):
            self._last = {str(k): float(v) for k, v in data.items()
                          if isinstance(v, (int, float)) and v > 0}

    def last(self, model: str) -> float | None:
        return self._last.get(model)

    def planned(self, cfg: ModelConfig) -> float:
        """What a new server of the model is accounted with, per GPU."""
        if cfg.vram_auto:
            return self._last.get(cfg.name, cfg.vram_gb)
        return cfg.vram_gb

    def record(self, model: str, gb: float) -> None:
        self._last[model] = gb
        if self._path is not None:
            state_file.write(self._path, self._last, WHAT)


async def measure(inst: Instance, reader: GpuReader, group_pids: Callable[[int], list[int]],
                  store: MeasuredVram, events: EventLog) -> None:
    """Read what a ready server holds and act on it (see the module's docstring)."""
    handle, placement = inst.handle, inst.placement
    if not reader.enabled or handle is None or handle.pid is None or not placement:
        return
    pid = handle.pid
    try:
        pids = await asyncio.wait_for(asyncio.to_thread(group_pids, pid), MEASURE_TIMEOUT_S)
        used = await asyncio.wait_for(reader.process_used_gb({pid, *pids}), MEASURE_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - a failed reading must not touch the server's life
        log.warning("model %s: cannot read its GPU memory: %s", inst.name, exc)
        return
    per_gpu = [used[g] for g in placement if g in used]
    if not per_gpu:
        return
    # Rounded up to 0.01 GB: accounting with it must never under-count.
    measured = math.ceil(max(per_gpu) * 100 - 1e-6) / 100
    inst.measured_vram_gb = measured
    store.record(inst.name, measured)
    cfg = inst.cfg
    if cfg.vram_auto:
        inst.vram_gb = measured
        log.info("model %s: %s", inst.name,
                 inst.said(f"holds {measured:g} GB per GPU, accounted so (vram_gb: auto)"))
    elif measured > cfg.vram_gb * (1 + OVER_SHARE):
        inst.vram_warning = (f"holds {measured:g} GB per GPU, over its vram_gb of "
                             f"{cfg.vram_gb:g}: the planner may over-commit its GPUs; raise "
                             "vram_gb or lower what the server takes")
        events.add(inst.name, EventKind.VRAM_OVER, inst.said(inst.vram_warning))
