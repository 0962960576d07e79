"""The planner's exact search: the fewest evictions that make room, and which of them to take.

Pure like the planner it serves. Models are indexes in least-to-most valuable order (the
planner's LRU key), so "spare the recent" is "prefer lower indexes".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Sizes are float GB and float sums drift (0.1 + 0.2 != 0.3). A model counts as fitting when it
# overshoots the GPU by less than this (about a kilobyte), so configs that add up exactly on paper
# never fail by rounding, and the slack is far too small to matter to a real allocation.
EPSILON_GB = 1e-6


@dataclass(frozen=True)
class Problem:
    """A GPU need seen from the candidate GPUs (those large enough for it)."""

    need_gb: float
    count: int
    free: Mapping[int, float]  # free GB per candidate GPU with every loaded model in place
    spans: tuple[tuple[int, ...], ...]  # per evictable model (LRU order): its candidate GPUs
    sizes: tuple[float, ...]  # per evictable model: GB it frees on each of those GPUs


def fewest_evictions(
    problem: Problem, forced: frozenset[int], allowed: frozenset[int], limit: int, first: bool
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


def _dominates(problem: Problem, big: int, small: int, usable: set[int]) -> bool:
    """Whether evicting ``big`` frees at least what ``small`` frees on every usable GPU.

    Then a solution evicting ``small`` but not ``big`` becomes one of the same size by swapping
    them, so once the search keeps ``big`` it may keep ``small`` too.
    """
    return problem.sizes[big] >= problem.sizes[small] and usable.intersection(
        problem.spans[small]
    ) <= set(problem.spans[big])


def best_fit(problem: Problem, evicted: Sequence[int], gpu_count: int) -> tuple[int, ...]:
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


def _padded(evictions: frozenset[int], allowed: frozenset[int], total: int) -> frozenset[int]:
    """Grow a memory-valid eviction set to ``total`` with the least recently used allowed models.

    Evicting more never takes memory away, so the result stays valid.
    """
    spare = sorted(allowed - evictions)[: total - len(evictions)]
    return evictions.union(spare)


def spare_recent(problem: Problem, fewest: frozenset[int], total: int) -> frozenset[int]:
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
            other = fewest_evictions(problem, forced, without, total, first=True)
        if other is None:
            forced = forced | {index}
        else:
            allowed = without
            witness = _padded(other, without, total)
    # Every model was either dropped from `allowed` or forced, so the witness is `forced`.
    return forced
