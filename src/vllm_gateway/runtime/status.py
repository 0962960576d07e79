"""The status document behind ``/gateway/status``, the dashboard, metrics and the CLI."""

from __future__ import annotations

import math
from typing import Any

from ..lifecycle import RUNNING, State
from .instance import Instance
from .manager import Manager


def model_status(manager: Manager, inst: Instance) -> dict[str, Any]:
    now = manager.svc.clock.now()
    cfg = inst.cfg
    shows_process = inst.state in RUNNING
    pid = inst.handle.pid if inst.handle is not None and shows_process else None
    nodes = {g.id: g.node for g in manager.gpus}
    node = next((nodes[g] for g in inst.placement or () if nodes.get(g)), None)
    expected = manager.claims.expected_load_s(inst)
    return {
        "name": inst.name,
        "state": inst.state.value,
        "vram_gb": cfg.vram_gb,
        "gpu_count": cfg.gpu_count,
        "gpus": list(inst.placement or ()),
        "node": node,
        "in_flight": inst.limiter.in_flight,
        "queued": inst.limiter.queued,
        "last_used": inst.last_used,
        "port": inst.port if shows_process else None,
        "pid": pid,
        "max_concurrent": cfg.max_concurrent,
        "max_queue": cfg.max_queue,
        "aliases": list(cfg.aliases),
        "managed": cfg.managed,
        "pinned": cfg.pinned,
        "launcher": cfg.launcher if cfg.managed else "url",
        "starting_for_s": round(now - inst.starting_since, 1)
        if inst.starting_since is not None and inst.state is State.STARTING else None,
        "last_start_s": inst.last_start_s,
        "expected_load_s": round(expected, 2) if expected is not None else None,
        "error": inst.last_error,
        "failed_starts": inst.failed_starts,
        # Rounded up: 0 only once a request would really be tried again.
        "retry_in_s": math.ceil(max(inst.retry_at - now, 0.0) * 10) / 10
        if inst.retry_at is not None and inst.state is State.BACKOFF else None,
        "sleep": cfg.sleep or None,
        "sleep_level": inst.sleep_level if inst.state is State.SLEEPING else None,
        "asleep_for_s": round(now - inst.asleep_since, 1)
        if inst.asleep_since is not None and inst.state is State.SLEEPING else None,
        "last_wake_s": inst.last_wake_s,
        "wake_check_failures": inst.wake_check_failures,
        "adapters": manager.adapters[inst.name].status() if inst.name in manager.adapters
        else None,
        # vLLM's own gauges are stale once the server is gone.
        "backend": inst.backend_metrics if inst.state in (State.READY, State.SLEEPING) else None,
    }


def status(manager: Manager) -> dict[str, Any]:
    used = manager.used_gb()
    driver = {r.id: round(r.used_gb, 2) for r in manager.svc.gpus_reader.cached()}
    gpus = [{"id": g.id, "node": g.node or None, "vram_gb": g.total_gb,
             "used_gb": round(used.get(g.id, 0.0), 2), "driver_used_gb": driver.get(g.id)}
            for g in manager.gpus]
    return {
        "gpus": gpus,
        "models": [model_status(manager, inst) for inst in manager.instances.values()],
        "host_memory": {"total_gb": round(manager.host_total_gb, 2),
                        "used_gb": round(manager.host_used_gb(), 2)},
    }
