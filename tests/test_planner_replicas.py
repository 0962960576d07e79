"""The planner with replicas, GPU restrictions and defaults (issue 20), as property tests.

Histories of models that each run up to a few replicas (every replica its own ``Loaded``
entry, named ``model`` or ``model#k``), some restricted to a set of GPUs, one of them a
default that may come back only into free room. After every step: no GPU over-committed,
no busy replica evicted, no replica evicted for its own model, a restricted model never
outside its set, two replicas of a model never on one GPU, ``max_loaded`` kept; and when a
placement exists (found by brute force) the planner finds one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import combinations

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from vllm_gateway.planner import (
    EPSILON_GB,
    EvictThenPlace,
    Gpu,
    Impossible,
    Loaded,
    Need,
    NoRoom,
    Place,
    used_gb,
)
from vllm_gateway.replica_planner import plan_replica

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Spec:
    name: str
    vram_gb: float
    gpu_count: int
    allowed: frozenset[int] | None
    max_replicas: int
    default: bool


def replicas_of(loaded: Sequence[Loaded], name: str) -> list[Loaded]:
    return [m for m in loaded if m.name.split("#")[0] == name]


def feasible(gpus: Sequence[Gpu], loaded: Sequence[Loaded], spec: Spec, max_loaded: int | None,
             siblings: frozenset[str], evict: bool) -> bool:
    """Brute force: some set of idle non-siblings to evict and some GPUs that take the need."""
    held = {g for m in loaded if m.name in siblings for g in m.gpu_ids}
    ids = [g.id for g in gpus if (spec.allowed is None or g.id in spec.allowed) and g.id not in held]
    pool = [m for m in loaded if evict and m.evictable and m.name not in siblings]
    totals = {g.id: g.total_gb for g in gpus}
    for size in range(len(pool) + 1):
        for gone in combinations(pool, size):
            if max_loaded is not None and len(loaded) - size + 1 > max_loaded:
                continue
            used = used_gb(gpus, [m for m in loaded if m not in gone])
            fits = [g for g in ids if used[g] + spec.vram_gb <= totals[g] + EPSILON_GB]
            if len(fits) >= spec.gpu_count:
                return True
    return False


def step_start(gpus: list[Gpu], loaded: list[Loaded], spec: Spec, max_loaded: int | None,
               now: float, evict: bool) -> list[Loaded]:
    mine = replicas_of(loaded, spec.name)
    if len(mine) >= spec.max_replicas:
        return loaded
    taken = {m.name for m in mine}
    key = next(n for n in [spec.name] + [f"{spec.name}#{k}" for k in range(1, 9)]
               if n not in taken)
    siblings = frozenset(taken)
    need = Need(key, spec.vram_gb, spec.gpu_count, spec.allowed)
    decision = plan_replica(gpus, loaded, need, max_loaded, siblings, evict=evict)
    event(f"{'start' if evict else 'restore'}: {type(decision).__name__}")
    can = feasible(gpus, loaded, spec, max_loaded, siblings, evict)
    if isinstance(decision, (NoRoom, Impossible)):
        assert not can, f"a placement exists but the planner said {decision}"
        if isinstance(decision, NoRoom):
            busy = {m.name for m in loaded if not m.evictable or m.name in siblings or not evict}
            assert set(decision.holders) <= busy
        return loaded
    assert can
    evicted = decision.evict if isinstance(decision, EvictThenPlace) else ()
    assert evict or not evicted, "a default coming back evicted something"
    by_name = {m.name: m for m in loaded}
    assert all(by_name[n].evictable for n in evicted), "evicted a busy replica"
    assert not siblings.intersection(evicted), "evicted a replica for its own model"
    assert len(set(decision.gpu_ids)) == len(decision.gpu_ids) == spec.gpu_count
    if spec.allowed is not None:
        assert set(decision.gpu_ids) <= spec.allowed, "placed outside its gpu_ids"
    held = {g for m in mine for g in m.gpu_ids}
    assert not held.intersection(decision.gpu_ids), "two replicas on one GPU"
    kept = [m for m in loaded if m.name not in evicted]
    kept.append(Loaded(key, decision.gpu_ids, spec.vram_gb, now, evictable=True))
    assert max_loaded is None or len(kept) <= max_loaded
    totals = {g.id: g.total_gb for g in gpus}
    for gpu_id, used in used_gb(gpus, kept).items():
        assert used <= totals[gpu_id] + EPSILON_GB, f"GPU {gpu_id} over-committed"
    return kept


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Gpu], int | None, list[Spec], list[tuple[str, int]]]:
    totals = draw(st.lists(st.sampled_from([8, 12, 16]), min_size=1, max_size=4))
    gpus = [Gpu(i, float(t)) for i, t in enumerate(totals)]
    ids = [g.id for g in gpus]
    specs = []
    for index in range(draw(st.integers(1, 4))):
        restricted = draw(st.booleans())
        allowed = frozenset(draw(st.lists(st.sampled_from(ids), min_size=1, unique=True))) \
            if restricted else None
        specs.append(Spec(f"m{index}", float(draw(st.integers(1, 12))),
                          draw(st.sampled_from([1, 1, 1, 2])), allowed,
                          draw(st.integers(1, 3)), index == 0 and draw(st.booleans())))
    max_loaded = draw(st.one_of(st.none(), st.integers(1, 6)))
    kinds = st.sampled_from(["start", "start", "start", "restore", "busy", "idle", "exit", "use"])
    steps = draw(st.lists(st.tuples(kinds, st.integers(0, 20)), min_size=1, max_size=14))
    return gpus, max_loaded, specs, steps


@PROPERTY
@given(histories())
def test_replicas_restrictions_and_defaults_keep_the_invariants(
    history: tuple[list[Gpu], int | None, list[Spec], list[tuple[str, int]]],
) -> None:
    gpus, max_loaded, specs, steps = history
    loaded: list[Loaded] = []
    for now, (kind, number) in enumerate(steps):
        if kind in ("start", "restore"):
            spec = specs[number % len(specs)]
            if kind == "restore" and not (spec.default and not replicas_of(loaded, spec.name)):
                continue
            loaded = step_start(gpus, loaded, spec, max_loaded, float(now), kind == "start")
        elif loaded:
            model = loaded[number % len(loaded)]
            rest = [m for m in loaded if m is not model]
            if kind == "use":
                rest.append(replace(model, last_used=float(now)))
            elif kind in ("busy", "idle"):
                rest.append(replace(model, evictable=kind == "idle"))
            loaded = rest


def test_a_replica_waits_for_its_siblings_rather_than_being_impossible() -> None:
    gpus = [Gpu(0, 40.0), Gpu(1, 40.0)]
    loaded = [Loaded("m", (1,), 30.0, 0.0, evictable=True)]
    need = Need("m#1", 30.0, 1, frozenset({1}))
    decision = plan_replica(gpus, loaded, need, None, frozenset({"m"}))
    assert isinstance(decision, NoRoom) and decision.holders == ("m",)
    # Without the sibling on GPU 1 it goes there; GPU 0 is never an option.
    assert plan_replica(gpus, [], need, None, frozenset({"m"})) == Place((1,))


def test_a_default_comes_back_only_into_free_room() -> None:
    gpus = [Gpu(0, 40.0)]
    idle = [Loaded("big", (0,), 40.0, 0.0, evictable=True)]
    need = Need("home", 20.0, 1)
    assert isinstance(plan_replica(gpus, idle, need, None, evict=False), NoRoom)
    assert isinstance(plan_replica(gpus, idle, need, None), EvictThenPlace)
    assert plan_replica(gpus, [], need, None, evict=False) == Place((0,))
