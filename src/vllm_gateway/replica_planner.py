"""Placing one more server of a model that already has some (a replica), on top of the planner.

Pure like the planner. Its siblings are never evicted for it and it never shares a GPU with one
of them (a second server on a GPU adds memory, not compute); with ``evict=False`` nothing at all
is evicted (a default model comes back only into free room).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from .planner import Decision, Gpu, Impossible, Loaded, Need, NoRoom, needs_text, plan

__all__ = ["plan_replica"]


def plan_replica(
    gpus: Sequence[Gpu], loaded: Sequence[Loaded], need: Need, max_loaded: int | None,
    siblings: frozenset[str] = frozenset(), evict: bool = True,
) -> Decision:
    """:func:`plan` for one server of a model whose other servers are ``siblings`` (names in
    ``loaded``); see this module's docstring. When only the GPUs its siblings hold could take it,
    it waits for them (NoRoom naming them) rather than being impossible."""
    fixed = [replace(m, evictable=False) if m.evictable and (not evict or m.name in siblings)
             else m for m in loaded]
    held = frozenset(g for m in loaded if m.name in siblings for g in m.gpu_ids)
    if not held or need.gpu_count == 0 or need.vram_gb == 0:
        return plan(gpus, fixed, need, max_loaded)
    allowed = need.allowed_gpus if need.allowed_gpus is not None else frozenset(g.id for g in gpus)
    decision = plan(gpus, fixed, replace(need, allowed_gpus=allowed - held), max_loaded)
    if isinstance(decision, Impossible) and not isinstance(plan(gpus, fixed, need, max_loaded),
                                                           Impossible):
        holders = tuple(sorted(m.name for m in loaded if m.name in siblings))
        return NoRoom(holders, f"no room for {needs_text(need)}: the GPUs it may use are held "
                               f"by its other replicas {', '.join(holders)}")
    return decision
