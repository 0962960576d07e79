"""The gateway configurations a workload is served with, as gateway config documents.

Every duration is written in trace seconds and divided by the scale here, so the
gateway's timers (idle timeout, start-up timeout, patience) keep their meaning
in a replay that runs ``scale`` times faster. Each configuration differs from
the gateway's defaults only where the peer it stands for differs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import costs
from .workloads import Model, Workload

# The gateway's own defaults, in trace seconds.
IDLE_TIMEOUT_S = 1800.0
STARTUP_TIMEOUT_S = 1800.0
REQUEST_TIMEOUT_S = 600.0
MAX_CONCURRENT = 16
# Deep enough that no request is refused: every configuration serves the same requests.
MAX_QUEUE = 10_000
PATIENCE_INFINITE_S = 1e9
HOST_RAM_SHARE = 1.0


@dataclass(frozen=True)
class Backend:
    """How each model's fake server is started: its module and the options it knows."""

    module: str
    sleep_options: bool  # it takes --sleep-delay and --wake-delay
    python_start_s: float  # spawn to port open with no start-up delay, measured, wall seconds
    # The gateway's start-up timeout (trace s), which also bounds a wait for room (504 after).
    startup_timeout_s: float = STARTUP_TIMEOUT_S


def backend_command(model: Model, backend: Backend, scale: float) -> list[str]:
    # The interpreter's own start-up is part of every start: take it off the delay.
    startup = max(0.0, costs.cold_start_s(model.vram_gb) / scale - backend.python_start_s)
    argv = [sys.executable, "-m", backend.module, "--port", "{port}",
            "--served-model-name", model.name, "--no-worker",
            "--startup-delay", f"{startup:.4f}",
            "--token-delay", f"{1.0 / costs.decode_tok_s(model.vram_gb) / scale:.6f}"]
    if backend.sleep_options:
        argv += ["--sleep-delay", f"{costs.sleep_s(model.vram_gb) / scale:.4f}",
                 "--wake-delay", f"{costs.wake_s(model.vram_gb) / scale:.4f}"]
    return argv


def _models(workload: Workload, backend: Backend, scale: float) -> dict[str, Any]:
    return {m.name: {"command": backend_command(m, backend, scale), "vram_gb": m.vram_gb}
            for m in workload.models}


def _gpus(sizes: tuple[float, ...]) -> list[dict[str, Any]]:
    return [{"id": index, "vram_gb": size} for index, size in enumerate(sizes)]


def base(workload: Workload, backend: Backend, scale: float) -> dict[str, Any]:
    return {
        "gpus": _gpus(workload.gpus_gb),
        "defaults": {
            "max_concurrent": MAX_CONCURRENT,
            "max_queue": MAX_QUEUE,
            "idle_timeout_s": IDLE_TIMEOUT_S / scale,
            "startup_timeout_s": backend.startup_timeout_s / scale,
            "request_timeout_s": REQUEST_TIMEOUT_S / scale,
        },
        "models": _models(workload, backend, scale),
    }


def _with(doc: dict[str, Any], defaults: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    return {**doc, **top, "defaults": {**doc["defaults"], **(defaults or {})}}


def sleep_on(workload: Workload, backend: Backend, scale: float) -> dict[str, Any]:
    return _with(base(workload, backend, scale),
                 {"sleep": 1, "sleep_vram_gb": costs.SLEEP_RESIDUAL_GB},
                 host_memory_gb=workload.host_ram_gb * HOST_RAM_SHARE)


def llama_swap(workload: Workload, backend: Backend, scale: float) -> dict[str, Any]:
    return _with(base(workload, backend, scale), max_loaded_models=1)


def ollama(workload: Workload, backend: Backend, scale: float) -> dict[str, Any]:
    return _with(base(workload, backend, scale), {"idle_timeout_s": 300.0 / scale},
                 max_loaded_models=3)


def idle_only(workload: Workload, backend: Backend, scale: float) -> dict[str, Any]:
    return _with(base(workload, backend, scale), {"swap_patience_s": PATIENCE_INFINITE_S})


def floor(workload: Workload, backend: Backend, scale: float) -> dict[str, Any]:
    """One GPU that holds every model, none ever stopped: only the first starts."""
    total = sum(m.vram_gb for m in workload.models)
    return _with(base(workload, backend, scale), {"idle_timeout_s": 0}, gpus=_gpus((total,)))


@dataclass(frozen=True)
class Configuration:
    name: str
    label: str
    build: Callable[[Workload, Backend, float], dict[str, Any]]
    # A request waits for room at most patience + drain + one load (README, "Scheduling").
    bounded: bool = True


CONFIGURATIONS = (
    Configuration("defaults", "gateway defaults", base),
    Configuration("sleep", "gateway, sleep: 1", sleep_on),
    Configuration("llama-swap", "llama-swap default (max_loaded_models: 1)", llama_swap),
    Configuration("ollama", "Ollama defaults (3 loaded, keep-alive 300 s)", ollama),
    Configuration("idle-only", "evict idle only (patience infinite)", idle_only, bounded=False),
    Configuration("floor", "floor (every model resident)", floor),
)
BY_NAME = {c.name: c for c in CONFIGURATIONS}
