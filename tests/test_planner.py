"""The placement planner: one plain test per rule (properties against brute force are in
test_planner_properties.py)."""

from __future__ import annotations

import random

import pytest

from vllm_gateway.planner import (
    EPSILON_GB,
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
