"""Pure GPU placement planner: where a model goes and which idle models must go first.

Everything here is a pure function of its arguments (no I/O, no clock, no shared state), so the
caller can take a snapshot of the loaded models under its own lock, ask for a decision and apply it.

What a decision optimises, in order:

1. never over-commit a GPU and never evict a model that is not evictable;
2. evict as few models as possible (memory and ``max_loaded`` together), so a model that fits
   without eviction never evicts anything;
3. among eviction sets of that size, the one that spares recently used models: compare the sets'
   members from most to least recent and prefer the set whose member is older at the first
   difference (plain LRU order);
4. with the eviction set fixed, best fit: place on the fitting GPUs with the least free memory, which
   maximises the largest free block left on any single GPU (and then the second largest, and so on);
   ties go to the lowest GPU ids.

Three extensions keep those rules and narrow where they apply:

* **sleep tier.** An idle model that may sleep frees ``vram_gb - sleep_gb`` by sleeping and keeps
  its process; a sleeping model still holds ``sleep_gb`` and frees it only by being stopped. The
  plan is tried in up to three rounds, and the first that finds room wins: (a) sleepers stay,
  idle models that may sleep are put to sleep and other idle models stopped; (b) sleepers may be
  stopped too; (c) idle models that may sleep may be stopped as well. A wake costs seconds and
  a cold start a minute, so a plan that sleeps more models beats one that stops fewer. A stopped
  sleeper frees memory but no model slot (``max_loaded`` counts awake models).
* **reload costs.** "Least recently used" is refined by what it costs to bring a model back
  (expected load time × recent request rate, given by the caller): among sets of the same size,
  the cheapest to bring back goes, and recency only breaks ties.
* **nodes and GPU sets.** A model's GPUs are always on one node (tensor parallelism stays inside
  a machine), and only on the GPUs it allows; each node is planned alone, the best node wins.
* **replicas.** Each server of a model is its own ``Loaded`` entry; ``replica_planner`` places
  one more on top of :func:`plan`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

from .eviction_search import EPSILON_GB, Problem, best_fit, fewest_evictions, spare_recent

__all__ = ["EPSILON_GB", "Decision", "EvictThenPlace", "Gpu", "Impossible", "Loaded", "Need",
           "NoRoom", "Place", "gpu_memory_utilization", "needs_text", "plan", "used_gb"]


@dataclass(frozen=True)
class Gpu:
    id: int  # unique across the whole inventory (all nodes)
    total_gb: float
    node: str = ""  # the machine it is in; a model's GPUs are always on one node


@dataclass(frozen=True)
class Loaded:
    """A model that holds memory now (starting, ready or stopping)."""

    name: str
    gpu_ids: tuple[int, ...]
    vram_gb: float  # per GPU in gpu_ids, held now
    last_used: float  # larger = more recent
    evictable: bool  # False when busy, starting, stopping, or pinned
    # Awake and able to sleep: what it still holds per GPU once asleep. None: cannot sleep.
    sleep_gb: float | None = None
    asleep: bool = False  # sleeping: vram_gb is its residual, freed only by a stop
    reload_cost: float = 0.0  # what evicting it costs later (larger = keep it longer)


@dataclass(frozen=True)
class Need:
    """What the model to start asks for; gpu_count 0 or vram_gb 0 means it needs no GPU."""

    name: str
    vram_gb: float
    gpu_count: int
    allowed_gpus: frozenset[int] | None = None  # None: any GPU


@dataclass(frozen=True)
class Place:
    gpu_ids: tuple[int, ...]


@dataclass(frozen=True)
class EvictThenPlace:
    evict: tuple[str, ...]  # evict in this order (LRU first)
    gpu_ids: tuple[int, ...]
    sleep: tuple[str, ...] = ()  # those of ``evict`` that are put to sleep instead of stopped


@dataclass(frozen=True)
class NoRoom:
    """Cannot place now because busy models hold the room; retry when something changes."""

    holders: tuple[str, ...]
    message: str


@dataclass(frozen=True)
class Impossible:
    """Can never fit, whatever gets evicted."""

    message: str


Decision: TypeAlias = Place | EvictThenPlace | NoRoom | Impossible
_Key: TypeAlias = tuple[float, float, str]  # see _lru_key


def used_gb(gpus: Sequence[Gpu], loaded: Sequence[Loaded]) -> dict[int, float]:
    """Memory held on each GPU of ``gpus``; ids a model names that are not in ``gpus`` are ignored."""
    used = {gpu.id: 0.0 for gpu in gpus}
    for model in loaded:
        for gpu_id in dict.fromkeys(model.gpu_ids):
            if gpu_id in used:
                used[gpu_id] += model.vram_gb
    return used


def gpu_memory_utilization(
    need_vram_gb: float, gpus: Sequence[Gpu], gpu_ids: Sequence[int]
) -> float:
    """vLLM's ``--gpu-memory-utilization`` for a model placed on ``gpu_ids``.

    The share of the smallest chosen GPU, rounded down to 2 decimals so the server never takes
    more than it was planned for; at least 0.01 and at most 1.0.
    """
    totals = {gpu.id: gpu.total_gb for gpu in gpus}
    if not gpu_ids:
        raise ValueError("gpu_memory_utilization needs at least one GPU id")
    unknown = [gpu_id for gpu_id in gpu_ids if gpu_id not in totals]
    if unknown:
        raise ValueError(f"unknown GPU ids: {unknown}")
    smallest = min(totals[gpu_id] for gpu_id in gpu_ids)
    if smallest <= 0:
        raise ValueError("GPU total memory must be positive")
    # The nudge keeps 57/100 at 0.57: as floats, 57 / 100 * 100 is 56.99999999999999.
    percent = math.floor(max(0.0, need_vram_gb) / smallest * 100 + 1e-9)
    # vLLM refuses 0: a model under 1 % of a GPU still gets the smallest share it accepts.
    return min(1.0, max(percent, 1) / 100)


def _gb(value: float) -> str:
    return f"{value:g}"


def _gpus_word(count: int) -> str:
    return "1 GPU" if count == 1 else f"{count} GPUs"


def _lru_key(model: Loaded) -> _Key:
    """Total order from cheapest to dearest to lose: reload cost, then least to most recently
    used; names break ties so results are stable."""
    return (model.reload_cost, model.last_used, model.name)


def needs_text(need: Need) -> str:
    if need.gpu_count <= 0 or need.vram_gb <= 0:
        return f"{need.name} (needs no GPU)"
    return f"{need.name} (needs {_gb(need.vram_gb)} GB on {_gpus_word(need.gpu_count)})"


def _names(models: Sequence[Loaded]) -> tuple[str, ...]:
    return tuple(sorted({model.name for model in models}))


def _count_no_room(need: Need, busy: Sequence[Loaded], max_loaded: int) -> NoRoom:
    holders = _names(busy)
    return NoRoom(
        holders,
        f"no room for {needs_text(need)}: max_loaded={max_loaded} slots held by busy models "
        f"{', '.join(holders)}",
    )


def plan(
    gpus: Sequence[Gpu], loaded: Sequence[Loaded], need: Need, max_loaded: int | None
) -> Decision:
    """Decide how to make room for ``need``; ``loaded`` must not contain the model asked for."""
    if max_loaded is not None and max_loaded < 1:
        return Impossible(f"cannot load {need.name}: max_loaded is {max_loaded}")
    if need.gpu_count < 0 or need.vram_gb < 0 or math.isnan(need.vram_gb):
        return Impossible(f"cannot load {need.name}: invalid GPU need {need}")
    if need.allowed_gpus is not None and need.gpu_count > 0 and need.vram_gb > 0:
        gpus = [gpu for gpu in gpus if gpu.id in need.allowed_gpus]
        if len(gpus) < need.gpu_count:
            return Impossible(
                f"cannot load {needs_text(need)}: only {_gpus_word(len(gpus))} of its gpu_ids "
                "are in the inventory")
    nodes = list(dict.fromkeys(gpu.node for gpu in gpus))
    if len(nodes) <= 1 or need.gpu_count == 0 or need.vram_gb == 0:
        return _plan_rounds(gpus, loaded, need, max_loaded)
    decisions = [
        _plan_rounds([gpu for gpu in gpus if gpu.node == node], loaded, need, max_loaded)
        for node in nodes
    ]
    return _best_of(decisions, loaded, need)


def _best_of(decisions: Sequence[Decision], loaded: Sequence[Loaded], need: Need) -> Decision:
    """The best node's decision: a placement over a wait over never; then one that stops no
    sleeper and no model that could sleep (the tiers hold across nodes as within one), fewer
    evictions, fewer stops, the set that spares valuable models; earlier nodes on ties."""
    by_name = {model.name: model for model in loaded}

    def rank(decision: Place | EvictThenPlace) -> tuple[bool, int, int, list[_Key]]:
        if isinstance(decision, Place):
            return (False, 0, 0, [])
        stopped = [by_name[name] for name in decision.evict if name not in decision.sleep]
        tier = any(m.asleep or m.sleep_gb is not None for m in stopped)
        spared = sorted((_lru_key(by_name[name]) for name in decision.evict), reverse=True)
        return (tier, len(decision.evict), len(stopped), spared)

    placed = [d for d in decisions if isinstance(d, (Place, EvictThenPlace))]
    if placed:
        return min(placed, key=rank)
    waits = [d for d in decisions if isinstance(d, NoRoom)]
    if waits:
        holders = tuple(sorted({name for d in waits for name in d.holders}))
        return NoRoom(holders, f"no room for {needs_text(need)} on any node: memory held by "
                               f"busy models {', '.join(holders)}")
    impossible = [d for d in decisions if isinstance(d, Impossible)]
    return Impossible(f"cannot load {needs_text(need)} on any node: "
                      + "; ".join(d.message for d in impossible))


def _plan_rounds(
    gpus: Sequence[Gpu], loaded: Sequence[Loaded], need: Need, max_loaded: int | None
) -> Decision:
    """The sleep tier's three rounds (see the module's docstring); without sleepers it is one."""
    awake = sum(1 for model in loaded if not model.asleep)
    over = 0 if max_loaded is None else max(0, awake + 1 - max_loaded)
    may_sleep = any(m.evictable and m.sleep_gb is not None and not m.asleep for m in loaded)
    has_sleepers = any(m.asleep for m in loaded)
    rounds: list[tuple[bool, bool]] = []  # (idle models sleep, sleepers may be stopped)
    if may_sleep or has_sleepers:
        rounds.append((may_sleep, False))
    if has_sleepers:
        rounds.append((may_sleep, True))
    if not rounds or may_sleep:
        rounds.append((False, True))
    last: Decision | None = None
    for sleep_idle, stop_sleepers in rounds:
        decision = _round(gpus, loaded, need, over, max_loaded, sleep_idle, stop_sleepers)
        if isinstance(decision, (Place, EvictThenPlace, Impossible)):
            return decision
        last = decision
    assert last is not None
    return last


def _round(
    gpus: Sequence[Gpu], loaded: Sequence[Loaded], need: Need, over: int, max_loaded: int | None,
    sleep_idle: bool, stop_sleepers: bool,
) -> Decision:
    """One round. A stopped sleeper frees memory but no slot, so under a count limit it is planned
    twice, with sleepers kept and with sleepers stopped for memory and slots freed by awake
    models added after (``_with_slots``); fewer evictions win."""
    counted = _round_once(gpus, loaded, need, over, max_loaded, sleep_idle,
                          stop_sleepers and over == 0)
    if over == 0 or not stop_sleepers or not any(m.asleep and m.evictable for m in loaded):
        return counted
    for_memory = _with_slots(
        _round_once(gpus, loaded, need, 0, max_loaded, sleep_idle, True),
        loaded, need, over, max_loaded, sleep_idle)
    placed = [d for d in (counted, for_memory) if isinstance(d, EvictThenPlace)]
    return min(placed, key=lambda d: (len(d.evict), len(d.evict) - len(d.sleep)), default=counted)


def _with_slots(decision: Decision, loaded: Sequence[Loaded], need: Need, over: int,
                max_loaded: int | None, sleep_idle: bool) -> Decision:
    """Add the least valuable awake idle models to a memory-valid plan until ``over`` slots are
    free (evicting more never takes memory away, so the plan stays valid)."""
    if not isinstance(decision, (Place, EvictThenPlace)):
        return decision
    evict, sleep = (decision.evict, decision.sleep) if isinstance(decision, EvictThenPlace) \
        else ((), ())
    by_name = {model.name: model for model in loaded}
    short = over - sum(1 for name in evict if not by_name[name].asleep)
    if short <= 0:
        return decision
    spare = sorted((m for m in loaded if m.evictable and not m.asleep and m.name not in evict),
                   key=_lru_key)[:short]
    if len(spare) < short:
        return _count_no_room(need, [m for m in loaded if not m.evictable], max_loaded or 0)
    extra = tuple(m.name for m in spare)
    slept = tuple(m.name for m in spare if sleep_idle and m.sleep_gb is not None)
    return EvictThenPlace((*evict, *extra), decision.gpu_ids, (*sleep, *slept))


def _round_once(
    gpus: Sequence[Gpu], loaded: Sequence[Loaded], need: Need, over: int, max_loaded: int | None,
    sleep_idle: bool, stop_sleepers: bool,
) -> Decision:
    fixed: list[Loaded] = []
    items: list[Loaded] = []
    sleeping: set[str] = set()
    for model in loaded:
        if not model.evictable or (model.asleep and not stop_sleepers):
            fixed.append(model)
        elif sleep_idle and model.sleep_gb is not None and not model.asleep:
            freed = max(model.vram_gb - model.sleep_gb, 0.0)
            items.append(Loaded(model.name, model.gpu_ids, freed, model.last_used, True,
                                reload_cost=model.reload_cost))
            fixed.append(Loaded(model.name, model.gpu_ids, model.vram_gb - freed,
                                model.last_used, False))
            sleeping.add(model.name)
        else:
            items.append(model)
    busy = [m for m in loaded if not m.evictable]
    decision = _plan_on(gpus, fixed, items, need, over, max_loaded, busy)
    if isinstance(decision, EvictThenPlace) and sleeping:
        slept = tuple(name for name in decision.evict if name in sleeping)
        decision = EvictThenPlace(decision.evict, decision.gpu_ids, slept)
    return decision


def _plan_on(
    gpus: Sequence[Gpu], fixed: Sequence[Loaded], evictable_models: Sequence[Loaded], need: Need,
    over: int, max_loaded: int | None, busy: Sequence[Loaded],
) -> Decision:
    """One round on one node: ``fixed`` memory stays, each of ``evictable_models`` frees its
    ``vram_gb`` when it goes, and ``over`` models must go for the model-count limit."""
    evictable = sorted(evictable_models, key=_lru_key)
    loaded = [*fixed, *evictable]

    if need.gpu_count == 0 or need.vram_gb == 0:
        if over == 0:
            return Place(())
        if over > len(evictable):
            assert max_loaded is not None
            return _count_no_room(need, busy, max_loaded)
        return EvictThenPlace(tuple(model.name for model in evictable[:over]), ())

    if need.gpu_count > len(gpus):
        return Impossible(
            f"cannot load {needs_text(need)}: only {_gpus_word(len(gpus))} configured"
        )
    candidates = [gpu for gpu in gpus if need.vram_gb <= gpu.total_gb + EPSILON_GB]
    if len(candidates) < need.gpu_count:
        largest = max((gpu.total_gb for gpu in gpus), default=0.0)
        return Impossible(
            f"cannot load {needs_text(need)}: only {len(candidates)} of {_gpus_word(len(gpus))} "
            f"have that much memory (largest: {_gb(largest)} GB)"
        )

    used = used_gb(gpus, loaded)
    candidate_ids = {gpu.id for gpu in candidates}
    problem = Problem(
        need_gb=need.vram_gb,
        count=need.gpu_count,
        free={gpu.id: gpu.total_gb - used[gpu.id] for gpu in candidates},
        spans=tuple(
            tuple(g for g in dict.fromkeys(model.gpu_ids) if g in candidate_ids)
            for model in evictable
        ),
        sizes=tuple(model.vram_gb for model in evictable),
    )
    everyone = frozenset(range(len(evictable)))
    fewest = fewest_evictions(problem, frozenset(), everyone, len(evictable), first=False)
    if fewest is None:
        holders = _names([m for m in busy if candidate_ids.intersection(m.gpu_ids)])
        return NoRoom(
            holders,
            f"no room for {needs_text(need)}: memory held by busy models {', '.join(holders)}",
        )
    total = max(over, len(fewest))
    if total > len(evictable):
        assert max_loaded is not None
        return _count_no_room(need, busy, max_loaded)
    if total == 0:
        return Place(best_fit(problem, (), need.gpu_count))
    chosen = sorted(spare_recent(problem, fewest, total))
    return EvictThenPlace(
        tuple(evictable[index].name for index in chosen),
        best_fit(problem, chosen, need.gpu_count),
    )
