"""The planner with the sleep tier, reload costs, nodes and GPU sets: properties checked on random
snapshots against a brute force over every way to sleep or stop the idle models.

What must hold, whatever the snapshot:

* nothing busy is touched; only awake models that may sleep are put to sleep;
* after the decision is applied no GPU is over-committed, the new model's GPUs are distinct, on
  one node and among those it allows, and the model-count limit holds for awake models;
* the tiers: when room can be made without stopping a sleeper or a model that could sleep
  instead, neither is stopped, and then no plan of that kind evicts fewer models;
* "no room" and "impossible" only when no plan at all exists.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import product

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from vllm_gateway.planner import (
    Decision,
    EvictThenPlace,
    Gpu,
    Impossible,
    Loaded,
    Need,
    NoRoom,
    Place,
    plan,
)

PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
Snapshot = tuple[list[Gpu], list[Loaded], Need, int | None]
KEEP, SLEEP, STOP = "keep", "sleep", "stop"


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    """Whole-GB sizes (exact sums) on one or two nodes, never over-committed to begin with."""
    gpu_list: list[Gpu] = []
    for node in draw(st.sampled_from([["a"], ["a", "b"]])):
        for total in draw(st.lists(st.sampled_from([4, 6, 8]), min_size=1, max_size=3)):
            gpu_list.append(Gpu(len(gpu_list), float(total), node))
    free = {gpu.id: gpu.total_gb for gpu in gpu_list}
    loaded: list[Loaded] = []
    for index in range(draw(st.integers(0, 7))):
        node = draw(st.sampled_from(sorted({gpu.node for gpu in gpu_list})))
        ids = [gpu.id for gpu in gpu_list if gpu.node == node]
        span = tuple(sorted(draw(st.lists(st.sampled_from(ids), min_size=1, max_size=2,
                                          unique=True))))
        vram = float(draw(st.integers(1, 5)))
        kind = draw(st.sampled_from(["plain", "sleepy", "sleepy", "asleep", "busy"]))
        held = 1.0 if kind == "asleep" else vram
        if any(free[gpu_id] < held for gpu_id in span):
            continue
        for gpu_id in span:
            free[gpu_id] -= held
        loaded.append(Loaded(
            f"m{index}", span, held, float(draw(st.integers(0, 5))), kind != "busy",
            sleep_gb=1.0 if kind == "sleepy" else None, asleep=kind == "asleep",
            reload_cost=float(draw(st.integers(0, 3)))))
    allowed = draw(st.one_of(st.none(), st.frozensets(
        st.sampled_from([gpu.id for gpu in gpu_list]), min_size=1)))
    need = Need("new", float(draw(st.integers(1, 8))), draw(st.sampled_from([1, 1, 2])),
                allowed_gpus=allowed)
    return gpu_list, loaded, need, draw(st.one_of(st.none(), st.integers(1, 6)))


def _choices(model: Loaded) -> tuple[str, ...]:
    if not model.evictable:
        return (KEEP,)
    if model.sleep_gb is not None and not model.asleep:
        return (KEEP, SLEEP, STOP)
    return (KEEP, STOP)


def _after(loaded: Sequence[Loaded], moves: dict[str, str]) -> list[Loaded]:
    out = []
    for model in loaded:
        move = moves.get(model.name, KEEP)
        if move == SLEEP:
            assert model.sleep_gb is not None
            out.append(Loaded(model.name, model.gpu_ids, model.sleep_gb, model.last_used, True,
                              asleep=True))
        elif move == KEEP:
            out.append(model)
    return out


def _fits(gpu_list: Sequence[Gpu], after: Sequence[Loaded], need: Need, gpu_ids: Sequence[int],
          max_loaded: int | None) -> bool:
    if max_loaded is not None and sum(not m.asleep for m in after) + 1 > max_loaded:
        return False
    free = {gpu.id: gpu.total_gb for gpu in gpu_list}
    for model in after:
        for gpu_id in model.gpu_ids:
            free[gpu_id] -= model.vram_gb
    return all(free[gpu_id] >= need.vram_gb for gpu_id in gpu_ids)


def _placements(gpu_list: Sequence[Gpu], need: Need) -> Iterator[tuple[int, ...]]:
    from itertools import combinations

    allowed = [g for g in gpu_list if need.allowed_gpus is None or g.id in need.allowed_gpus]
    for node in sorted({gpu.node for gpu in allowed}):
        ids = [gpu.id for gpu in allowed if gpu.node == node]
        yield from combinations(ids, need.gpu_count)


def feasible_plans(snapshot: Snapshot) -> Iterator[dict[str, str]]:
    """Every assignment of keep, sleep or stop to the loaded models that makes room somewhere."""
    gpu_list, loaded, need, max_loaded = snapshot
    for moves in product(*(_choices(model) for model in loaded)):
        assignment = {model.name: move for model, move in zip(loaded, moves, strict=True)}
        after = _after(loaded, assignment)
        if any(_fits(gpu_list, after, need, ids, max_loaded)
               for ids in _placements(gpu_list, need)):
            yield assignment


def _stops_a_tier(loaded: Sequence[Loaded], moves: dict[str, str]) -> bool:
    """Whether a plan stops a sleeper or a model that could have slept instead."""
    return any(moves.get(m.name) == STOP and (m.asleep or m.sleep_gb is not None) for m in loaded)


def apply(snapshot: Snapshot, decision: Place | EvictThenPlace) -> list[Loaded]:
    _, loaded, need, _ = snapshot
    moves: dict[str, str] = {}
    if isinstance(decision, EvictThenPlace):
        moves = {name: SLEEP if name in decision.sleep else STOP for name in decision.evict}
    after = _after(loaded, moves)
    return [*after, Loaded(need.name, decision.gpu_ids, need.vram_gb, 99.0, False)]


@PROPERTY
@given(snapshots())
def test_tiers_keep_every_rule(snapshot: Snapshot) -> None:
    gpu_list, loaded, need, max_loaded = snapshot
    decision: Decision = plan(gpu_list, loaded, need, max_loaded)
    plans = list(feasible_plans(snapshot))
    event(type(decision).__name__)
    if isinstance(decision, (NoRoom, Impossible)):
        assert not plans, (decision, plans[:3])
        return
    assert plans, decision
    by_name = {model.name: model for model in loaded}
    evict = decision.evict if isinstance(decision, EvictThenPlace) else ()
    slept = decision.sleep if isinstance(decision, EvictThenPlace) else ()
    assert all(by_name[name].evictable for name in evict)
    assert set(slept) <= set(evict)
    assert all(by_name[n].sleep_gb is not None and not by_name[n].asleep for n in slept)

    # Applied, the decision over-commits nothing and keeps every placement rule.
    ids = decision.gpu_ids
    assert len(ids) == need.gpu_count == len(set(ids))
    assert len({gpu.node for gpu in gpu_list if gpu.id in ids}) == 1
    assert need.allowed_gpus is None or set(ids) <= need.allowed_gpus
    after = apply(snapshot, decision)
    for gpu in gpu_list:
        assert sum(m.vram_gb for m in after if gpu.id in m.gpu_ids) <= gpu.total_gb, gpu
    assert max_loaded is None or sum(not m.asleep for m in after) <= max_loaded

    # The tiers: stopping a sleeper, or a model that could sleep, only when nothing else works;
    # and then as few evictions as any plan of that kind.
    moves = {name: SLEEP if name in slept else STOP for name in evict}
    gentle = [p for p in plans if not _stops_a_tier(loaded, p)]
    if gentle:
        assert not _stops_a_tier(loaded, moves), (decision, gentle[0])
        fewest = min(sum(move != KEEP for move in p.values()) for p in gentle)
        assert len(evict) == fewest, (decision, fewest)


def test_a_sleep_beats_a_stop_of_the_same_model() -> None:
    gpu_list = [Gpu(0, 10.0)]
    loaded = [Loaded("old", (0,), 8.0, 1.0, True, sleep_gb=1.0)]
    decision = plan(gpu_list, loaded, Need("new", 8.0, 1), None)
    assert decision == EvictThenPlace(("old",), (0,), ("old",))


def test_reload_cost_comes_before_recency() -> None:
    """Two idle models, either one frees enough: the cheaper to bring back goes, even if it was
    used more recently."""
    gpu_list = [Gpu(0, 10.0)]
    loaded = [Loaded("dear", (0,), 5.0, 1.0, True, reload_cost=3.0),
              Loaded("cheap", (0,), 5.0, 2.0, True, reload_cost=1.0)]
    assert plan(gpu_list, loaded, Need("new", 5.0, 1), None) == EvictThenPlace(("cheap",), (0,))


def test_a_model_goes_to_the_node_that_needs_no_eviction() -> None:
    gpu_list = [Gpu(0, 10.0, "a"), Gpu(1, 10.0, "b")]
    loaded = [Loaded("there", (0,), 6.0, 1.0, True)]
    assert plan(gpu_list, loaded, Need("new", 6.0, 1), None) == Place((1,))
    # Two GPUs on one node only: the need never spans nodes.
    assert isinstance(plan(gpu_list, [], Need("wide", 6.0, 2), None), Impossible)


def test_the_tiers_hold_across_nodes() -> None:
    """One eviction makes room on either node: node b's only way stops a model that could sleep
    (sleeping it frees nothing there), node a's stops a plain one; node a wins."""
    gpu_list = [Gpu(0, 6.0, "a"), Gpu(1, 6.0, "b")]
    loaded = [Loaded("plain", (0,), 1.0, 5.0, True),
              Loaded("sleepy", (1,), 1.0, 0.0, True, sleep_gb=1.0)]
    assert plan(gpu_list, loaded, Need("new", 6.0, 1), None) == EvictThenPlace(("plain",), (0,))
