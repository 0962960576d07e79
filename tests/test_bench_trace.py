"""The trace benchmark's pure parts: the generator (seeded, shaped as TRACES.md describes) and
the status watch that tells an over-committed GPU."""

from __future__ import annotations

import itertools
import os
import random
import statistics
from typing import Any

import pytest

from bench.trace import costs, shapes
from bench.trace.gateway import Watch
from bench.trace.workloads import FULL_DURATION_S, WORKLOADS, agents, skewed, team


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_same_seed_same_workload_other_seed_other(name: str) -> None:
    make = WORKLOADS[name]
    duration = FULL_DURATION_S[name]
    assert make(7, duration) == make(7, duration)
    assert make(7, duration) != make(8, duration)


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_sessions_start_in_order_within_the_duration(name: str) -> None:
    workload = WORKLOADS[name](3, FULL_DURATION_S[name])
    starts = [s.start_s for s in workload.sessions]
    assert starts == sorted(starts)
    assert all(0 <= s < workload.duration_s for s in starts)
    names = {m.name for m in workload.models}
    for session in workload.sessions:
        assert session.turns[0].gap_s == 0
        assert all(t.gap_s > 0 for t in session.turns[1:])
        for turn in session.turns:
            assert turn.model in names
            assert turn.prompt_tokens >= 1 and turn.output_tokens >= 1
    # Every model fits on one of the workload's GPUs.
    assert all(m.vram_gb <= max(workload.gpus_gb) for m in workload.models)


def test_team_counts_and_models() -> None:
    runs = [team(seed) for seed in range(1, 6)]
    sizes = sorted(m.vram_gb for m in runs[0].models)
    assert len(sizes) == 6 and sizes[0] >= 16 and sizes[-1] <= 20
    assert sizes[-1] + sizes[-2] <= 48 < sum(sizes[:3])  # any two fit, never three
    sessions = statistics.mean(len(w.sessions) for w in runs)
    assert 50 <= sessions <= 100  # 24 an hour for 3 hours
    turns = [len(s.turns) for w in runs for s in w.sessions]
    assert 4.0 <= statistics.mean(turns) <= 6.0
    streamed = [t.stream for w in runs for s in w.sessions for t in s.turns]
    assert 0.9 <= sum(streamed) / len(streamed) <= 0.99
    gaps = [t.gap_s for w in runs for s in w.sessions for t in s.turns[1:]]
    assert 20 <= statistics.median(gaps) <= 45


def test_agents_rounds_and_sizes() -> None:
    workload = agents(2)
    assert 25 <= len(workload.sessions) <= 60  # Poisson, 40 an hour
    sizes = {m.name: m.vram_gb for m in workload.models}
    assert sizes["planner"] + sizes["coder"] > 80
    for session in workload.sessions:
        names = [t.model for t in session.turns]
        assert names[0] == "planner" and names[-1] == "critic"
        assert 2 <= names.count("planner") == names.count("critic") <= 4
        prompts = [t.prompt_tokens for t in session.turns]
        assert all(b - a == 600 for a, b in itertools.pairwise(prompts))
    outputs = {name: statistics.median(t.output_tokens for s in workload.sessions
                                       for t in s.turns if t.model == name) for name in sizes}
    assert 180 <= outputs["planner"] <= 330 and 300 <= outputs["coder"] <= 520
    assert 25 <= outputs["critic"] <= 60


def test_skewed_popularity_is_long_tailed() -> None:
    workload = skewed(1)
    assert len(workload.models) == 20 and workload.gpus_gb == (80.0, 80.0)
    assert min(m.vram_gb for m in workload.models) == 16
    assert max(m.vram_gb for m in workload.models) == 72
    assert 1200 <= workload.requests <= 2600  # 0.5 a second for an hour
    counts: dict[str, int] = {}
    for session in workload.sessions:
        assert len(session.turns) == 1
        counts[session.turns[0].model] = counts.get(session.turns[0].model, 0) + 1
    assert 0.15 <= max(counts.values()) / workload.requests <= 0.5


def test_azure_shapes_keep_their_medians() -> None:
    rng = random.Random(5)
    for shape, prompt_p50, output_p50 in ((shapes.CODE, 1469, 13),
                                          (shapes.CONVERSATION, 1020, 129)):
        prompts = [shape.prompt.sample(rng) for _ in range(4000)]
        outputs = [shape.output.sample(rng) for _ in range(4000)]
        assert abs(statistics.median(prompts) / prompt_p50 - 1) < 0.1
        assert abs(statistics.median(outputs) / output_p50 - 1) < 0.15


def test_gamma_gaps_have_the_asked_mean_and_variation() -> None:
    rng = random.Random(3)
    gaps = [shapes.gamma_gap(rng, 10.0, 2.0) for _ in range(20000)]
    mean = statistics.mean(gaps)
    assert abs(mean / 10.0 - 1) < 0.1
    assert abs(statistics.pstdev(gaps) / mean / 2.0 - 1) < 0.15


def test_costs_follow_the_published_figures() -> None:
    assert costs.cold_start_s(16) == 40 and costs.cold_start_s(72) == 96
    assert costs.decode_tok_s(16) == 80 and costs.decode_tok_s(40) == 40
    assert costs.prefill_tok_s(16) == 10_000 and costs.prefill_tok_s(32) == 5_000
    assert costs.service_s(16, 1000, 80) == pytest.approx(1.1)


def _status(used_gb: float, *models: tuple[str, str, float]) -> dict[str, Any]:
    own = os.getpid()  # a live pid: the watch counts only models whose process runs
    return {"gpus": [{"id": 0, "vram_gb": 48, "used_gb": used_gb}],
            "models": [{"name": n, "state": s, "vram_gb": v, "gpus": [0], "pid": own,
                        "in_flight": 0} for n, s, v in models]}


def test_a_wake_ahead_of_its_room_is_accounting_not_over_commitment() -> None:
    # The gateway counts the waker in full while the model making room still drains.
    status = _status(56, ("ready", "ready", 16), ("drain", "draining", 16),
                     ("a", "sleeping", 2), ("b", "sleeping", 2), ("waker", "waking", 20))
    watch = Watch()
    watch.check(status, 16, frozenset({"waker"}))
    assert watch.overcommits == [] and len(watch.accounting) == 1
    # Once its server has begun to wake, the same reading is an over-commitment.
    watch.check(status, 16)
    assert len(watch.overcommits) == 2 and len(watch.accounting) == 1
