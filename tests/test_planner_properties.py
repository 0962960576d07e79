"""The placement planner's properties: decisions against brute force, simulated histories that
keep every invariant, and planning time on large clusters. One plain test per rule is in
test_planner.py."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import replace
from itertools import combinations

from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from vllm_gateway.planner import (
    EPSILON_GB,
    Decision,
    EvictThenPlace,
    Gpu,
    Impossible,
    Loaded,
    Need,
    NoRoom,
    Place,
    plan,
    used_gb,
)


def gpus(*totals: float) -> list[Gpu]:
    return [Gpu(i, total) for i, total in enumerate(totals)]


# --- property tests against brute force ---------------------------------------------------------
# Sizes are whole GB, so float sums are exact and the reference needs no epsilon.

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# Weighted so that most examples have to evict: idle models and needs that fit a GPU.
MOSTLY_IDLE = st.sampled_from([True, True, True, False])
GPU_COUNTS = st.sampled_from([0, 1, 1, 1, 2, 2, 3])


def _lru(model: Loaded) -> tuple[float, str]:
    return (model.last_used, model.name)


def reference(
    gpu_list: Sequence[Gpu], loaded: Sequence[Loaded], need: Need, max_loaded: int | None
) -> Decision | None:
    """Brute force over every eviction subset and GPU set; None stands for NoRoom."""
    if max_loaded is not None and max_loaded < 1:
        return Impossible("")
    no_gpu = need.gpu_count == 0 or need.vram_gb == 0
    large = [gpu for gpu in gpu_list if gpu.total_gb >= need.vram_gb]
    if not no_gpu and len(large) < need.gpu_count:
        return Impossible("")
    evictable = [model for model in loaded if model.evictable]
    for size in range(len(evictable) + 1):
        best: tuple[list[tuple[float, str]], tuple[int, ...], tuple[str, ...]] | None = None
        for subset in combinations(evictable, size):
            if max_loaded is not None and len(loaded) - size + 1 > max_loaded:
                continue
            placement = () if no_gpu else best_placement(gpu_list, loaded, subset, need)
            if placement is None:
                continue
            recency = sorted((_lru(model) for model in subset), reverse=True)
            names = tuple(model.name for model in sorted(subset, key=_lru))
            if best is None or recency < best[0]:
                best = (recency, placement, names)
        if best is not None:
            return Place(best[1]) if size == 0 else EvictThenPlace(best[2], best[1])
    return None


def best_placement(
    gpu_list: Sequence[Gpu], loaded: Sequence[Loaded], evicted: Sequence[Loaded], need: Need
) -> tuple[int, ...] | None:
    free = {gpu.id: gpu.total_gb for gpu in gpu_list}
    for model in loaded:
        if model not in evicted:
            for gpu_id in model.gpu_ids:
                free[gpu_id] -= model.vram_gb
    fitting = [gpu_id for gpu_id, left in free.items() if left >= need.vram_gb]
    options = []
    for chosen in combinations(sorted(fitting), need.gpu_count):
        after = sorted(
            (left - need.vram_gb if gpu_id in chosen else left for gpu_id, left in free.items()),
            reverse=True,
        )
        options.append(([-left for left in after], chosen))
    return min(options)[1] if options else None


def describe(decision: Decision) -> str:
    if isinstance(decision, EvictThenPlace):
        return f"evict {min(len(decision.evict), 3)}+ on {len(decision.gpu_ids)} GPUs"
    return type(decision).__name__


def same_decision(actual: Decision, expected: Decision | None) -> bool:
    if expected is None:
        return isinstance(actual, NoRoom)
    if isinstance(expected, Impossible):
        return isinstance(actual, Impossible)
    return actual == expected


@st.composite
def snapshots(draw: st.DrawFn) -> tuple[list[Gpu], list[Loaded], Need, int | None]:
    gpu_list = gpus(*draw(st.lists(st.sampled_from([4, 6, 8, 10]), min_size=1, max_size=5)))
    ids = [gpu.id for gpu in gpu_list]
    loaded = []
    for index in range(draw(st.integers(0, 10))):
        span = draw(st.lists(st.sampled_from(ids), min_size=1, max_size=3, unique=True))
        loaded.append(
            Loaded(
                f"m{index}",
                tuple(sorted(span)),
                float(draw(st.integers(1, 6))),
                float(draw(st.integers(0, 4))),  # ties are broken by name
                draw(MOSTLY_IDLE),
            )
        )
    need = Need("new", float(draw(st.integers(0, 8))), draw(GPU_COUNTS))
    max_loaded = draw(st.one_of(st.none(), st.integers(1, 8)))
    return gpu_list, loaded, need, max_loaded


@PROPERTY
@given(snapshots())
def test_matches_brute_force(snapshot: tuple[list[Gpu], list[Loaded], Need, int | None]) -> None:
    """Snapshots may be over-committed already; the rules still hold for the new model."""
    gpu_list, loaded, need, max_loaded = snapshot
    decision = plan(gpu_list, loaded, need, max_loaded)
    expected = reference(gpu_list, loaded, need, max_loaded)
    assert same_decision(decision, expected), (decision, expected)
    event(describe(decision))
    if isinstance(decision, NoRoom):
        busy_names = {model.name for model in loaded if not model.evictable}
        assert decision.holders and set(decision.holders) <= busy_names


def check_and_apply(
    gpu_list: list[Gpu], loaded: list[Loaded], need: Need, max_loaded: int | None, now: float
) -> list[Loaded]:
    """Plan, check every rule on the decision, and return the state after applying it."""
    decision = plan(gpu_list, loaded, need, max_loaded)
    if currently_in_test_context():
        event(describe(decision))
    if sum(model.evictable for model in loaded) <= 8:
        expected = reference(gpu_list, loaded, need, max_loaded)
        assert same_decision(decision, expected), (decision, expected)
    if isinstance(decision, NoRoom):
        busy_names = {model.name for model in loaded if not model.evictable}
        assert decision.holders and set(decision.holders) <= busy_names
    if not isinstance(decision, (Place, EvictThenPlace)):
        return loaded
    evict = decision.evict if isinstance(decision, EvictThenPlace) else ()
    by_name = {model.name: model for model in loaded}
    assert len(set(evict)) == len(evict)
    assert all(by_name[name].evictable for name in evict), "evicted a busy model"
    assert list(evict) == [m.name for m in sorted((by_name[n] for n in evict), key=_lru)]
    no_gpu = need.gpu_count == 0 or need.vram_gb == 0
    if evict:
        count_ok = max_loaded is None or len(loaded) + 1 <= max_loaded
        used = used_gb(gpu_list, loaded)
        room = [gpu for gpu in gpu_list if used[gpu.id] + need.vram_gb <= gpu.total_gb]
        assert not count_ok or not (no_gpu or len(room) >= need.gpu_count), "needless eviction"
    assert len(decision.gpu_ids) == (0 if no_gpu else need.gpu_count)
    assert len(set(decision.gpu_ids)) == len(decision.gpu_ids)
    kept = [model for model in loaded if model.name not in evict]
    kept.append(Loaded(need.name, decision.gpu_ids, need.vram_gb, now, evictable=True))
    assert max_loaded is None or len(kept) <= max_loaded
    totals = {gpu.id: gpu.total_gb for gpu in gpu_list}
    for gpu_id, used_now in used_gb(gpu_list, kept).items():
        assert used_now <= totals[gpu_id] + EPSILON_GB, f"GPU {gpu_id} over-committed"
    return kept


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Gpu], int | None, list[tuple[str, int, int]]]:
    gpu_list = gpus(*draw(st.lists(st.sampled_from([8, 12, 16]), min_size=2, max_size=4)))
    max_loaded = draw(st.one_of(st.none(), st.integers(1, 6)))
    need = st.tuples(st.just("need"), st.integers(0, 12), GPU_COUNTS)
    change = st.tuples(
        st.sampled_from(["use", "busy", "idle", "exit"]), st.integers(0, 20), st.just(0)
    )
    steps = st.lists(st.one_of(need, need, change), min_size=1, max_size=16)
    return gpu_list, max_loaded, draw(steps)


@PROPERTY
@given(histories())
def test_simulated_histories_keep_the_invariants(
    history: tuple[list[Gpu], int | None, list[tuple[str, int, int]]],
) -> None:
    """Start empty, apply every decision (evict, then load), and let models get used or busy."""
    gpu_list, max_loaded, steps = history
    loaded: list[Loaded] = []
    for now, (kind, number, count) in enumerate(steps):
        if kind == "need":
            need = Need(f"n{now}", float(number), count)
            loaded = check_and_apply(gpu_list, loaded, need, max_loaded, float(now))
        elif loaded:
            model = loaded[number % len(loaded)]
            rest = [other for other in loaded if other is not model]
            if kind == "use":
                rest.append(replace(model, last_used=float(now)))
            elif kind in ("busy", "idle"):
                rest.append(replace(model, evictable=kind == "idle"))
            loaded = rest


# --- size -----------------------------------------------------------------------------------------


def test_sixteen_gpus_and_fifty_models_plan_quickly() -> None:
    """Fill 16 GPUs with 50 models of mixed widths through the planner, then plan wide needs."""
    rng = random.Random(11)
    gpu_list = gpus(*([80.0] * 16))
    loaded: list[Loaded] = []
    now = 0
    while len(loaded) < 50 and now < 500:
        now += 1
        need = Need(f"m{now}", float(rng.choice([8, 12, 16, 20, 24])), rng.choice([1, 1, 1, 2, 4]))
        loaded = check_and_apply(gpu_list, loaded, need, None, now)
        if rng.random() < 0.2:
            loaded[-1] = replace(loaded[-1], evictable=False)
    assert len(loaded) == 50
    started = time.monotonic()
    for width, vram in [(1, 80), (2, 60), (4, 70), (8, 40), (8, 80), (16, 80)]:
        check_and_apply(gpu_list, loaded, Need("wide", vram, width), 50, now + 1)
    assert time.monotonic() - started < 10


def dense_cluster(seed: int) -> list[Loaded]:
    """50 models of widths 1 to 8 packed on 16 GPUs of 80 GB at random: much sharing."""
    rng = random.Random(seed)
    free = [80.0] * 16
    loaded: list[Loaded] = []
    for _ in range(2000):
        width = rng.choice([1, 1, 1, 2, 2, 4, 8])
        vram = float(rng.choice([2, 4, 6, 8, 10, 12, 16, 20]))
        span = rng.sample(range(16), width)
        if len(loaded) < 50 and all(free[gpu_id] >= vram for gpu_id in span):
            for gpu_id in span:
                free[gpu_id] -= vram
            busy_now = rng.random() < 0.1
            loaded.append(Loaded(f"m{len(loaded)}", tuple(span), vram, rng.random(), not busy_now))
    return loaded


def test_dense_clusters_plan_in_bounded_time() -> None:
    started = time.monotonic()
    for seed in range(4):
        loaded = dense_cluster(seed)
        assert len(loaded) == 50
        for width, vram, max_loaded in [(8, 60, None), (8, 40, None), (4, 60, 40), (2, 80, None)]:
            need = Need("wide", vram, width)
            check_and_apply(gpus(*([80.0] * 16)), loaded, need, max_loaded, 2.0)
    assert time.monotonic() - started < 15
