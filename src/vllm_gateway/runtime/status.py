"""The status document behind ``/gateway/status``, the dashboard, metrics and the CLI.

A model's fields are those of the model as a whole: its state is the best state
of its replicas (``ready`` if any is ready), counts are the model's queue, GPUs
are those of every replica; per-life fields (port, pid, start and sleep times,
errors) are those of the replica whose state it shows. ``replicas`` lists every
replica that holds memory, in start order.
"""

from __future__ import annotations

import math
from typing import Any

from ..lifecycle import RUNNING, State
from .instance import Instance
from .manager import Manager


def _pid(inst: Instance) -> int | None:
    return inst.handle.pid if inst.handle is not None and inst.state in RUNNING else None


def replica_status(inst: Instance) -> dict[str, Any]:
    return {"replica": inst.index, "state": inst.state.value, "gpus": list(inst.placement or ()),
            "port": inst.port if inst.state in RUNNING else None, "pid": _pid(inst),
            "in_flight": inst.in_flight, "measured_vram_gb": inst.measured_vram_gb}


def model_status(manager: Manager, first: Instance) -> dict[str, Any]:
    now = manager.svc.clock.now()
    cfg = first.cfg
    group = manager.models[first.name]
    inst = group.lead()
    holding = group.holding()
    nodes = {g.id: g.node for g in manager.gpus}
    gpus = list(dict.fromkeys(g for r in holding for g in r.placement or ()))
    node = next((nodes[g] for g in gpus if nodes.get(g)), None)
    expected = manager.claims.expected_load_s(inst)
    measured = [r.measured_vram_gb for r in holding if r.measured_vram_gb is not None]
    used = [r.last_used for r in group.replicas if r.last_used is not None]
    return {
        "name": first.name,
        "state": inst.state.value,
        "vram_gb": inst.vram_gb if inst.placement else manager.svc.vram.planned(cfg),
        "gpu_count": cfg.gpu_count,
        "gpus": gpus,
        "node": node,
        "in_flight": group.limiter.in_flight,
        "queued": group.limiter.queued,
        "last_used": max(used, default=None),
        "port": inst.port if inst.state in RUNNING else None,
        "pid": _pid(inst),
        "max_concurrent": cfg.max_concurrent,
        "max_queue": cfg.max_queue,
        "aliases": list(cfg.aliases),
        "managed": cfg.managed,
        "pinned": cfg.pinned,
        "default": cfg.default,
        "launcher": cfg.launcher if cfg.managed else "url",
        "starting_for_s": round(now - inst.starting_since, 1)
        if inst.starting_since is not None and inst.state is State.STARTING else None,
        "last_start_s": inst.last_start_s if inst.last_start_s is not None
        else first.last_start_s,
        "expected_load_s": round(expected, 2) if expected is not None else None,
        "error": inst.last_error,
        "failed_starts": inst.failed_starts,
        # Rounded up: 0 only once a request would really be tried again.
        "retry_in_s": math.ceil(max(inst.retry_at - now, 0.0) * 10) / 10
        if inst.retry_at is not None and inst.state is State.BACKOFF else None,
        "sleep": cfg.sleep or None,
        # A sleeper being stopped still sleeps (and holds only its residual) until it is gone.
        "sleep_level": inst.sleep_level if inst.state is State.SLEEPING or (
            inst.state is State.STOPPING and inst.stopping_asleep) else None,
        "asleep_for_s": round(now - inst.asleep_since, 1)
        if inst.asleep_since is not None and inst.state is State.SLEEPING else None,
        "last_wake_s": inst.last_wake_s,
        "wake_check_failures": sum(r.wake_check_failures for r in group.replicas),
        "adapters": manager.adapters[first.name].status() if first.name in manager.adapters
        else None,
        # vLLM's own gauges are stale once the server is gone.
        "backend": inst.backend_metrics if inst.state in (State.READY, State.SLEEPING) else None,
        "measured_vram_gb": max(measured) if measured else manager.svc.vram.last(cfg.name),
        "vram_warning": next((r.vram_warning for r in group.replicas if r.vram_warning), None),
        "replicas": [replica_status(r) for r in holding],
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
