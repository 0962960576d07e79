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
  plan is tried in three rounds, and the first that finds room wins: (a) put idle models to
  sleep, sleepers stay; (b) also stop sleepers; (c) stop any idle model. A wake costs seconds and
  a cold start a minute, so a plan that sleeps more models beats one that stops fewer.
* **reload costs.** "Least recently used" is refined by what it costs to bring a model back
  (expected load time × recent request rate, given by the caller): among sets of the same size,
  the cheapest to bring back goes, and recency only breaks ties.
* **nodes and GPU sets.** A model's GPUs are always on one node (tensor parallelism stays inside
  a machine), and only on the GPUs it allows; each node is planned alone and the best node wins.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

# Sizes are float GB and float sums drift (0.1 + 0.2 != 0.3). A model counts as fitting when it
# overshoots the GPU by less than this (about a kilobyte), so configs that add up exactly on paper
# never fail by rounding, and the slack is far too small to matter to a real allocation.
EPSILON_GB = 1e-6


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


def _lru_key(model: Loaded) -> tuple[float, float, str]:
    """Total order from cheapest to dearest to lose: reload cost, then least to most recently
    used; names break ties so results are stable."""
    return (model.reload_cost, model.last_used, model.name)


def _needs_text(need: Need) -> str:
    if need.gpu_count <= 0 or need.vram_gb <= 0:
        return f"{need.name} (needs no GPU)"
    return f"{need.name} (needs {_gb(need.vram_gb)} GB on {_gpus_word(need.gpu_count)})"


@dataclass(frozen=True)
class _Problem:
    """A GPU need seen from the candidate GPUs (those large enough for it)."""

    need_gb: float
    count: int
    free: Mapping[int, float]  # free GB per candidate GPU with every loaded model in place
    spans: tuple[tuple[int, ...], ...]  # per evictable model (LRU order): its candidate GPUs
    sizes: tuple[float, ...]  # per evictable model: GB it frees on each of those GPUs


def _fewest_evictions(
    problem: _Problem, forced: frozenset[int], allowed: frozenset[int], limit: int, first: bool
) -> frozenset[int] | None:
    """A smallest eviction set E, forced <= E <= allowed, after which ``count`` GPUs fit.

    None when every such E has more than ``limit`` models. With ``first`` it returns the first E
    within the limit (a yes/no question with a witness). Exact branch and bound:

    * a model's reach is the number of GPUs it sits on that still lack room and could get it.
      While some model reaches two or more, branch on the widest: evict it, or keep it (and then
      also keep every model it dominates, see ``_dominates``). Every optimum stays reachable.
    * once every model reaches at most one such GPU the GPUs are independent: on one GPU the
      fewest models freeing a deficit are the largest ones first (exact), and the best GPU set is
      the one with the cheapest such counts. That leaf is solved outright.
    * bounds: each GPU of the final set needs at least its largest-first count, so the count-th
      smallest count bounds the answer; and charging a model 1/reach on each GPU it reaches, the
      cheapest fractional cover of each GPU summed over the cheapest GPUs bounds it too (a model
      is charged at most 1 in total). Both are exact when nothing is shared.

    The worst case is exponential in the number of models shared between GPUs; with 50 models
    of widths 1 to 8 packed at random on 16 GPUs it stays well under a second.
    """
    deficit = {gpu_id: problem.need_gb - free for gpu_id, free in problem.free.items()}
    for index in forced:
        for gpu_id in problem.spans[index]:
            deficit[gpu_id] -= problem.sizes[index]
    pool = sorted(
        (index for index in allowed - forced if problem.spans[index]),
        key=lambda index: (-problem.sizes[index], index),
    )
    on_gpu = {gpu_id: [i for i in pool if gpu_id in problem.spans[i]] for gpu_id in deficit}
    best = limit - len(forced) + 1  # size of the best extra set so far (a sentinel at first)
    best_extra: frozenset[int] = frozenset()

    def largest_first(gpu_id: int, left: float, out: frozenset[int]) -> list[int] | None:
        picks = []
        for index in on_gpu[gpu_id]:
            if left <= EPSILON_GB:
                break
            if index not in out:
                left -= problem.sizes[index]
                picks.append(index)
        return picks if left <= EPSILON_GB else None

    def shared_cost(gpu_id: int, left: float, out: frozenset[int], reach: dict[int, int]) -> float:
        # Fits once at most EPSILON_GB is left; asking for more would overstate the bound.
        left -= EPSILON_GB
        cost = 0.0
        items = sorted(
            (i for i in on_gpu[gpu_id] if i not in out),
            key=lambda i: -problem.sizes[i] * reach[i],
        )
        for index in items:
            if left <= 0:
                break
            part = min(1.0, left / problem.sizes[index])
            cost += part / reach[index]
            left -= part * problem.sizes[index]
        return cost

    def found(extra: frozenset[int]) -> bool:
        nonlocal best, best_extra
        best, best_extra = len(extra), extra
        return first

    def search(deficit: dict[int, float], taken: frozenset[int], out: frozenset[int]) -> bool:
        """``out``: models taken or kept in this subtree. True stops the whole search."""
        needing = [gpu_id for gpu_id, left in deficit.items() if left > EPSILON_GB]
        missing = problem.count - (len(deficit) - len(needing))
        if missing <= 0:
            return found(taken)
        picks = {}
        for gpu_id in needing:
            chosen = largest_first(gpu_id, deficit[gpu_id], out)
            if chosen is not None:
                picks[gpu_id] = chosen
        cheapest = sorted(picks, key=lambda gpu_id: (len(picks[gpu_id]), gpu_id))[:missing]
        if len(cheapest) < missing or len(taken) + len(picks[cheapest[-1]]) >= best:
            return False
        open_gpus = set(picks)
        remaining = [i for i in pool if i not in out]
        reach = {i: len(open_gpus.intersection(problem.spans[i])) for i in remaining}
        wide = [i for i in remaining if reach[i] >= 2]
        if not wide:
            extra = taken.union(*(picks[gpu_id] for gpu_id in cheapest))
            return len(extra) < best and found(extra)
        costs = sorted(shared_cost(gpu_id, deficit[gpu_id], out, reach) for gpu_id in picks)
        if len(taken) + math.ceil(sum(costs[:missing]) - 1e-9) >= best:
            return False
        pick = max(wide, key=lambda i: (reach[i], problem.sizes[i], -i))
        after = dict(deficit)
        for gpu_id in problem.spans[pick]:
            after[gpu_id] -= problem.sizes[pick]
        if search(after, taken | {pick}, out | {pick}):
            return True
        kept = {i for i in remaining if _dominates(problem, pick, i, open_gpus)}
        return search(deficit, taken, out | kept | {pick})

    search(deficit, frozenset(), frozenset())
    if best > limit - len(forced):
        return None
    return forced | best_extra


def _dominates(problem: _Problem, big: int, small: int, usable: set[int]) -> bool:
    """Whether evicting ``big`` frees at least what ``small`` frees on every usable GPU.

    Then a solution evicting ``small`` but not ``big`` becomes one of the same size by swapping
    them, so once the search keeps ``big`` it may keep ``small`` too.
    """
    return problem.sizes[big] >= problem.sizes[small] and usable.intersection(
        problem.spans[small]
    ) <= set(problem.spans[big])


def _best_fit(problem: _Problem, evicted: Sequence[int], gpu_count: int) -> tuple[int, ...]:
    """The fitting GPUs with the least free memory after ``evicted`` go; lowest ids on ties.

    Taking a GPU with less free memory instead of one with more leaves the larger one whole, so
    this maximises the largest free block (then the next largest, and so on).
    """
    free = dict(problem.free)
    for index in evicted:
        for gpu_id in problem.spans[index]:
            free[gpu_id] += problem.sizes[index]
    fitting = [gpu_id for gpu_id, left in free.items() if problem.need_gb <= left + EPSILON_GB]
    # Rounding keeps float noise from overriding the lowest-id tie-break.
    fitting.sort(key=lambda gpu_id: (round(free[gpu_id], 6), gpu_id))
    return tuple(sorted(fitting[:gpu_count]))


def _names(models: Sequence[Loaded]) -> tuple[str, ...]:
    return tuple(sorted({model.name for model in models}))


def _count_no_room(need: Need, busy: Sequence[Loaded], max_loaded: int) -> NoRoom:
    holders = _names(busy)
    return NoRoom(
        holders,
        f"no room for {_needs_text(need)}: max_loaded={max_loaded} slots held by busy models "
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
                f"cannot load {_needs_text(need)}: only {_gpus_word(len(gpus))} of its gpu_ids "
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
    """The best node's decision: a placement over a wait over never; fewer evictions, fewer stops,
    then the set that spares valuable models; earlier nodes on ties."""
    keys = {model.name: _lru_key(model) for model in loaded}

    def rank(decision: Place | EvictThenPlace) -> tuple[int, int, list[tuple[float, float, str]]]:
        if isinstance(decision, Place):
            return (0, 0, [])
        stops = len(decision.evict) - len(decision.sleep)
        spared = sorted((keys[name] for name in decision.evict), reverse=True)
        return (len(decision.evict), stops, spared)

    placed = [d for d in decisions if isinstance(d, (Place, EvictThenPlace))]
    if placed:
        return min(placed, key=rank)
    waits = [d for d in decisions if isinstance(d, NoRoom)]
    if waits:
        holders = tuple(sorted({name for d in waits for name in d.holders}))
        return NoRoom(holders, f"no room for {_needs_text(need)} on any node: memory held by "
                               f"busy models {', '.join(holders)}")
    impossible = [d for d in decisions if isinstance(d, Impossible)]
    return Impossible(f"cannot load {_needs_text(need)} on any node: "
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
    if may_sleep:
        rounds.append((True, False))
    if has_sleepers:
        rounds.append((may_sleep, True))
    if not rounds or may_sleep:
        rounds.append((False, True))
    last: Decision | None = None
    for sleep_idle, stop_sleepers in rounds:
        fixed: list[Loaded] = []
        items: list[Loaded] = []
        sleeping: set[str] = set()
        for model in loaded:
            # A stopped sleeper frees no model slot, so a count limit never picks one.
            if not model.evictable or (model.asleep and (not stop_sleepers or over > 0)):
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
        if isinstance(decision, (Place, EvictThenPlace, Impossible)):
            return decision
        last = decision
    assert last is not None
    return last


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
            f"cannot load {_needs_text(need)}: only {_gpus_word(len(gpus))} configured"
        )
    candidates = [gpu for gpu in gpus if need.vram_gb <= gpu.total_gb + EPSILON_GB]
    if len(candidates) < need.gpu_count:
        largest = max((gpu.total_gb for gpu in gpus), default=0.0)
        return Impossible(
            f"cannot load {_needs_text(need)}: only {len(candidates)} of {_gpus_word(len(gpus))} "
            f"have that much memory (largest: {_gb(largest)} GB)"
        )

    used = used_gb(gpus, loaded)
    candidate_ids = {gpu.id for gpu in candidates}
    problem = _Problem(
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
    fewest = _fewest_evictions(problem, frozenset(), everyone, len(evictable), first=False)
    if fewest is None:
        holders = _names([m for m in busy if candidate_ids.intersection(m.gpu_ids)])
        return NoRoom(
            holders,
            f"no room for {_needs_text(need)}: memory held by busy models {', '.join(holders)}",
        )
    total = max(over, len(fewest))
    if total > len(evictable):
        assert max_loaded is not None
        return _count_no_room(need, busy, max_loaded)
    if total == 0:
        return Place(_best_fit(problem, (), need.gpu_count))
    chosen = sorted(_spare_recent(problem, fewest, total))
    return EvictThenPlace(
        tuple(evictable[index].name for index in chosen),
        _best_fit(problem, chosen, need.gpu_count),
    )


def _padded(evictions: frozenset[int], allowed: frozenset[int], total: int) -> frozenset[int]:
    """Grow a memory-valid eviction set to ``total`` with the least recently used allowed models.

    Evicting more never takes memory away, so the result stays valid.
    """
    spare = sorted(allowed - evictions)[: total - len(evictions)]
    return evictions.union(spare)


def _spare_recent(problem: _Problem, fewest: frozenset[int], total: int) -> frozenset[int]:
    """Among eviction sets of ``total`` models that make room, the one sparing recent models.

    Indexes are in LRU order. From the most recently used model down, keep a model out of the
    set whenever a valid set of ``total`` still exists without it, otherwise it must go: this
    gives the set whose members, compared from most to least recent, are the least recent.
    A known valid set (the witness) answers most of those questions without a search: when it
    does not contain the model, it is itself a valid set without it.
    """
    forced: frozenset[int] = frozenset()
    allowed = frozenset(range(len(problem.sizes)))
    witness = _padded(fewest, allowed, total)
    for index in reversed(range(len(problem.sizes))):
        without = allowed - {index}
        if index not in witness:
            allowed = without
            continue
        other = None
        if len(without) >= total:
            other = _fewest_evictions(problem, forced, without, total, first=True)
        if other is None:
            forced = forced | {index}
        else:
            allowed = without
            witness = _padded(other, without, total)
    # Every model was either dropped from `allowed` or forced, so the witness is `forced`.
    return forced
