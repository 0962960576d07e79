"""A GPU inventory that changes while the gateway runs (the nodes of a Ray cluster).

The one way the manager's GPU list changes after start: :func:`set_gpus`. A replica
whose GPUs left with their node fails at once with the cause given for that node (its
in-flight requests end with a 502, as for any server that dies); one still starting is
stopped, its start failing with the same cause. Either way its memory leaves the
accounting with the node, and the next request places it on what is left. All of it is
one synchronous step, like every other decision of the manager.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from .. import planner
from ..events import EventKind, StopReason
from ..lifecycle import State
from .instance import Instance
from .manager import Manager

# States in which a server runs and is watched; a lost node fails them.
_FAILS = (State.READY, State.DRAINING, State.SLEEPING, State.WAKING)


def set_gpus(manager: Manager, gpus: list[planner.Gpu], causes: Mapping[str, str],
             names: Mapping[str, frozenset[str]] | None = None) -> list[str]:
    """Replace the inventory (``names``: what a model's ``node:`` may call each node);
    returns the keys of the replicas that lost their GPUs."""
    old_node = {g.id: g.node for g in manager.gpus}
    present = {g.id for g in gpus}
    manager.gpus = list(gpus)
    if names is not None:
        manager.claims.node_names = dict(names)
    hit = []
    for inst in list(manager.replicas()):
        gone = [g for g in inst.placement or () if g not in present]
        if not gone:
            continue
        node = old_node.get(gone[0], "")
        cause = causes.get(node) or f"its GPUs {gone} left the inventory"
        if _lose(manager, inst, cause):
            hit.append(inst.key)
    manager.changes.notify()
    return hit


def _lose(manager: Manager, inst: Instance, cause: str) -> bool:
    svc = manager.svc
    state = inst.state
    if state in _FAILS:
        if not inst.life.move(state, State.FAILED):
            return False
        inst.last_error = f"{cause} while {state.value}"
        svc.metrics.failures.labels(inst.name).inc()
        svc.events.add(inst.name, EventKind.CRASHED, f"{cause} while {state.value}")
        inst.transition = asyncio.create_task(manager.transitions.release(inst))
        return True
    if state is State.STARTING:
        inst.last_error = cause
        svc.events.add(inst.name, EventKind.NODE, f"{cause}: its start is stopped")
        return manager.begin_stop(inst, StopReason.NODE_LOST) is not None
    return False
