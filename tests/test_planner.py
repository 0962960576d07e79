"""The placement planner: one plain test per rule, then property tests against brute force."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import replace
from itertools import combinations

import pytest
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
    gpu_memory_utilization,
    plan,
    used_gb,
)


def gpus(*totals: float) -> list[Gpu]:
    return [Gpu(i, total) for i, total in enumerate(totals)]


def idle(name: str, gpu_ids: tuple[int, ...], vram: float, last_used: float) -> Loaded:
    return Loaded(name, gpu_ids, vram, last_used, evictable=True)


def busy(name: str, gpu_ids: tuple[int, ...], vram: float, last_used: float = 0.0) -> Loaded:
    return Loaded(name, gpu_ids, vram, last_used, evictable=False)


# --- used_gb and gpu_memory_utilization ---------------------------------------------------------


def test_used_gb_counts_every_gpu_of_a_model_and_ignores_unknown_ids() -> None:
    loaded = [idle("a", (0, 1), 10, 1), idle("b", (1,), 5, 2), idle("c", (7,), 3, 3)]
    assert used_gb(gpus(80, 80, 80), loaded) == {0: 10.0, 1: 15.0, 2: 0.0}


@pytest.mark.parametrize(
    ("vram", "ids", "expected"),
    [
        (24, (0,), 0.3),
        (23.2, (0,), 0.29),  # 23.2 / 80 * 100 is 28.999999999999996 as floats
        (20, (2,), 0.83),  # 0.8333 rounds down
        (23.99, (2,), 0.99),
        (24, (2,), 1.0),
        (100, (0,), 1.0),
        (20, (0, 2), 0.83),  # the smallest chosen GPU decides
        (0, (0,), 0.01),  # vLLM refuses 0: the floor is 0.01
    ],
)
def test_gpu_memory_utilization(vram: float, ids: tuple[int, ...], expected: float) -> None:
    assert gpu_memory_utilization(vram, gpus(80, 40, 24), ids) == expected


def test_gpu_memory_utilization_rejects_no_or_unknown_gpus() -> None:
    with pytest.raises(ValueError):
        gpu_memory_utilization(10, gpus(80), ())
    with pytest.raises(ValueError):
        gpu_memory_utilization(10, gpus(80), (3,))


# --- placement without eviction -----------------------------------------------------------------


def test_places_on_an_empty_gpu() -> None:
    assert plan(gpus(80), [], Need("m", 24, 1), None) == Place((0,))


def test_best_fit_keeps_the_largest_block_free() -> None:
    # Free: 40, 24, 80. Placing 20 on the 24 GB GPU leaves both larger blocks whole.
    assert plan(gpus(40, 24, 80), [], Need("m", 20, 1), None) == Place((1,))


def test_best_fit_counts_memory_already_used() -> None:
    loaded = [busy("a", (1,), 50)]
    assert plan(gpus(80, 80), loaded, Need("m", 20, 1), None) == Place((1,))


def test_ties_go_to_the_lowest_gpu_ids() -> None:
    assert plan(gpus(80, 80, 80, 80), [], Need("m", 20, 2), None) == Place((0, 1))


def test_multi_gpu_need_takes_distinct_gpus_that_each_fit() -> None:
    loaded = [busy("a", (0,), 50), busy("b", (1,), 70), busy("c", (2,), 50)]
    assert plan(gpus(80, 80, 80, 80), loaded, Need("m", 20, 2), None) == Place((0, 2))


def test_fills_a_gpu_exactly_but_never_over_commits() -> None:
    loaded = [busy("a", (0,), 56)]
    assert plan(gpus(80), loaded, Need("m", 24, 1), None) == Place((0,))
    decision = plan(gpus(80), loaded, Need("m", 24.01, 1), None)
    assert isinstance(decision, NoRoom)


def test_float_sums_get_epsilon_slack() -> None:
    loaded = [busy("a", (0,), 0.1), busy("b", (0,), 0.2)]
    assert 0.1 + 0.2 + 0.3 > 0.6  # the drift the epsilon absorbs
    assert plan(gpus(0.6), loaded, Need("m", 0.3, 1), None) == Place((0,))
    over = plan(gpus(0.6), loaded, Need("m", 0.3 + 10 * EPSILON_GB, 1), None)
    assert isinstance(over, NoRoom)


# --- eviction -----------------------------------------------------------------------------------


def test_never_evicts_when_another_gpu_has_room() -> None:
    loaded = [idle("old", (0,), 80, 1)]
    assert plan(gpus(80, 80), loaded, Need("m", 40, 1), None) == Place((1,))


def test_evicts_the_least_recently_used_model() -> None:
    loaded = [idle("new", (0,), 70, 5), idle("old", (1,), 70, 1)]
    assert plan(gpus(80, 80), loaded, Need("m", 40, 1), None) == EvictThenPlace(("old",), (1,))


def test_fewest_evictions_beats_lru_order() -> None:
    # Free 10, need 40. Evicting the two oldest (10 + 20) would do, but one eviction is fewer.
    loaded = [idle("a", (0,), 10, 1), idle("b", (0,), 20, 2), idle("c", (0,), 40, 3)]
    assert plan(gpus(80), loaded, Need("m", 40, 1), None) == EvictThenPlace(("c",), (0,))


def test_equal_counts_spare_the_most_recent_and_list_lru_first() -> None:
    loaded = [idle("c", (0,), 20, 3), idle("b", (0,), 30, 2), idle("a", (0,), 30, 1)]
    decision = plan(gpus(80), loaded, Need("m", 40, 1), None)
    assert decision == EvictThenPlace(("a", "b"), (0,))


def test_fewest_evictions_across_gpus() -> None:
    # GPU 0 needs two small evictions, GPU 1 one large one: GPU 1 wins although its model is newer.
    loaded = [
        idle("s1", (0,), 30, 1),
        idle("s2", (0,), 30, 2),
        idle("s3", (0,), 20, 3),
        idle("big", (1,), 70, 9),
    ]
    decision = plan(gpus(80, 80), loaded, Need("m", 50, 1), None)
    assert decision == EvictThenPlace(("big",), (1,))


def test_evicting_a_multi_gpu_model_frees_all_its_gpus() -> None:
    loaded = [idle("tp", (0, 1), 60, 1), idle("x", (2,), 60, 0), idle("y", (3,), 60, 0)]
    # One eviction (tp) frees two GPUs; x and y are older but would take two.
    decision = plan(gpus(80, 80, 80, 80), loaded, Need("m", 40, 2), None)
    assert decision == EvictThenPlace(("tp",), (0, 1))


def test_never_evicts_a_busy_model() -> None:
    loaded = [busy("hot", (0,), 70, 0), idle("warm", (1,), 70, 5)]
    decision = plan(gpus(80, 80), loaded, Need("m", 40, 1), None)
    assert decision == EvictThenPlace(("warm",), (1,))


def test_no_room_names_the_busy_holders() -> None:
    loaded = [busy("a", (0,), 70), busy("b", (1,), 70), idle("c", (1,), 5, 1)]
    decision = plan(gpus(80, 80, 16), loaded, Need("llama-8b", 24, 1), None)
    assert decision == NoRoom(
        ("a", "b"),
        "no room for llama-8b (needs 24 GB on 1 GPU): memory held by busy models a, b",
    )


def test_no_room_holders_are_only_on_gpus_large_enough() -> None:
    loaded = [busy("a", (0,), 70), busy("small", (1,), 10)]
    decision = plan(gpus(80, 16), loaded, Need("m", 24, 1), None)
    assert isinstance(decision, NoRoom)
    assert decision.holders == ("a",)


def test_no_room_while_a_busy_model_holds_part_of_a_multi_gpu_need() -> None:
    loaded = [busy("a", (0,), 50), idle("b", (1,), 50, 1)]
    decision = plan(gpus(80, 80), loaded, Need("m", 40, 2), None)
    assert isinstance(decision, NoRoom)
    assert decision.holders == ("a",)
    assert "on 2 GPUs" in decision.message


# --- max_loaded ---------------------------------------------------------------------------------


def test_max_loaded_evicts_the_lru_model_even_with_free_memory() -> None:
    loaded = [idle("new", (0,), 10, 5), idle("old", (0,), 10, 1)]
    decision = plan(gpus(80, 80), loaded, Need("m", 10, 1), 2)
    # Best fit then prefers GPU 0 (70 GB free) and keeps GPU 1 whole.
    assert decision == EvictThenPlace(("old",), (0,))


def test_max_loaded_allows_up_to_the_limit() -> None:
    loaded = [idle("a", (0,), 10, 5)]
    assert plan(gpus(80, 80), loaded, Need("m", 10, 1), 2) == Place((0,))


def test_one_eviction_serves_memory_and_max_loaded() -> None:
    loaded = [idle("old", (0,), 10, 1), idle("big", (0,), 70, 5)]
    decision = plan(gpus(80), loaded, Need("m", 40, 1), 2)
    assert decision == EvictThenPlace(("big",), (0,))


def test_max_loaded_adds_lru_evictions_to_the_memory_ones() -> None:
    loaded = [
        idle("old", (1,), 10, 1),
        idle("older", (1,), 10, 0),
        busy("pinned", (1,), 10),
        idle("big", (0,), 70, 5),
    ]
    decision = plan(gpus(80, 80), loaded, Need("m", 75, 1), 3)
    # Only evicting big makes room; the slot count wants a second eviction: the oldest.
    assert decision == EvictThenPlace(("older", "big"), (0,))


def test_count_evictions_may_make_the_memory_room_too() -> None:
    loaded = [idle("old", (1,), 10, 1), idle("older", (1,), 10, 0), idle("big", (0,), 70, 5)]
    decision = plan(gpus(80, 80), loaded, Need("m", 75, 1), 2)
    # Two evictions are due anyway; the two oldest free GPU 1, so the recent big model stays.
    assert decision == EvictThenPlace(("older", "old"), (1,))


def test_max_loaded_no_room_names_the_busy_slot_holders() -> None:
    loaded = [busy("a", (0,), 10), busy("b", (1,), 10)]
    decision = plan(gpus(80, 80), loaded, Need("m", 10, 1), 2)
    assert isinstance(decision, NoRoom)
    assert decision.holders == ("a", "b")
    assert "max_loaded=2" in decision.message


def test_max_loaded_zero_is_impossible() -> None:
    assert isinstance(plan(gpus(80), [], Need("m", 10, 1), 0), Impossible)


# --- needs without a GPU ------------------------------------------------------------------------


@pytest.mark.parametrize("need", [Need("cpu", 0, 1), Need("cpu", 24, 0)])
def test_no_gpu_need_ignores_memory(need: Need) -> None:
    loaded = [busy("a", (0,), 80)]
    assert plan(gpus(80), loaded, need, None) == Place(())
    assert plan([], [], need, 3) == Place(())


def test_no_gpu_need_obeys_max_loaded() -> None:
    loaded = [idle("b", (0,), 80, 2), idle("a", (0,), 0, 1), busy("c", (), 0)]
    assert plan(gpus(80), loaded, Need("cpu", 0, 0), 2) == EvictThenPlace(("a", "b"), ())
    decision = plan(gpus(80), [busy("c", (), 0)], Need("cpu", 0, 0), 1)
    assert isinstance(decision, NoRoom)
    assert decision.holders == ("c",)


# --- impossible ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gpu_list", "need"),
    [
        (gpus(80, 40), Need("huge", 81, 1)),  # larger than every GPU
        (gpus(80, 40), Need("wide", 10, 3)),  # more GPUs than exist
        (gpus(80, 40), Need("wide", 60, 2)),  # only one GPU is large enough
        ([], Need("any", 1, 1)),
        (gpus(80), Need("bad", -1, 1)),
    ],
)
def test_impossible(gpu_list: list[Gpu], need: Need) -> None:
    loaded = [busy("a", (0,), 80)] if gpu_list else []
    decision = plan(gpu_list, loaded, need, None)
    assert isinstance(decision, Impossible)
    assert need.name in decision.message


def test_deterministic_whatever_the_input_order() -> None:
    loaded = [idle(f"m{i}", (i % 4,), 20, i % 3) for i in range(12)]
    need = Need("n", 30, 2)
    expected = plan(gpus(80, 80, 80, 80), loaded, need, 10)
    assert isinstance(expected, EvictThenPlace)
    for seed in range(5):
        shuffled = list(loaded)
        random.Random(seed).shuffle(shuffled)
        assert plan(gpus(80, 80, 80, 80), shuffled, need, 10) == expected


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
