"""One row of the report: the figures of one workload served by one configuration.

Pure: it takes the client's records, the gateway's counters and what the status
poller saw, all in wall seconds, and gives trace seconds (wall times the scale).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..stats import percentile
from . import costs
from .configs import STARTUP_TIMEOUT_S
from .replay import Record
from .workloads import Workload

SLO_FIRST_TOKEN_S = 5.0


@dataclass(frozen=True)
class Observed:
    """What the gateway said about the run: ``/metrics`` per model, and the status poller."""

    metrics: Mapping[str, Mapping[str, float]]
    overcommits: Sequence[str]
    polls: int
    # model, wall time from the replay's start -> expected load time (wall s) then, or None
    expected_load: Callable[[str, float], float | None]
    # Polls where only the gateway's accounting read over a GPU (a wake ahead of its room).
    accounting: Sequence[str] = ()


def _pct(values: Sequence[float], pct: float) -> float | None:
    return percentile(values, pct)


def _total(metrics: Mapping[str, Mapping[str, float]], key: str) -> float:
    return sum(per.get(key, 0.0) for per in metrics.values())


def wait_bound_s(record: Record, workload: Workload, expected_load_s: float | None,
                 drain_s: float, startup_timeout_s: float = STARTUP_TIMEOUT_S) -> float:
    """README's bound for a request waiting for room: patience + the holders' drain + one load.

    The patience is the model's expected load time when the gateway had learned one,
    else its first guess (``startup_timeout_s / 10``). Stopping the holders is
    counted as part of the load.
    """
    vram = workload.model(record.model).vram_gb
    patience = expected_load_s if expected_load_s is not None else startup_timeout_s / 10
    return patience + drain_s + costs.cold_start_s(vram) + costs.STOP_S


def summarize(workload: Workload, records: Sequence[Record], observed: Observed, scale: float,
              bounded: bool, startup_timeout_s: float = STARTUP_TIMEOUT_S) -> dict[str, Any]:
    done = [r for r in records if r.complete and r.end is not None]
    latency = [(r.end - r.sent) * scale for r in done if r.end is not None]
    first = [((r.first if r.first is not None else r.end) - r.sent) * scale
             for r in done if r.end is not None]
    slo = sum(1 for value in first if value <= SLO_FIRST_TOKEN_S)
    waits: dict[str, list[float]] = {}
    for r, lat in zip(done, latency, strict=True):
        waits.setdefault(r.model, []).append(max(0.0, lat - r.service_s))
    p95_wait = {model: _pct(values, 95) or 0.0 for model, values in waits.items()}
    # A holder's drain: its longest request, as served in this replay (never under the model's).
    spans = [(r.end - r.first) * scale + r.service_s / r.sent_tokens
             for r in done if r.stream and r.first is not None and r.end is not None]
    drain = max([r.service_s for r in records] + spans, default=0.0)
    worst: dict[str, Any] = {"wait_s": 0.0, "bound_s": None, "model": None}
    over_bound = 0
    for r, lat in zip(done, latency, strict=True):
        wait = max(0.0, lat - r.service_s)
        expected = observed.expected_load(r.model, r.sent)
        bound = wait_bound_s(r, workload, None if expected is None else expected * scale, drain,
                             startup_timeout_s)
        over_bound += bounded and wait > bound
        if wait > worst["wait_s"]:
            worst = {"wait_s": wait, "bound_s": bound if bounded else None, "model": r.model}
    ends = [r.end for r in done if r.end is not None]
    span_s = (max(ends) - min(r.sent for r in records)) * scale if ends else 0.0
    metrics = observed.metrics
    return {
        "requests": len(records),
        "expected_requests": workload.requests,
        "complete": len(done),
        "errors": sorted({r.error for r in records if not r.complete})[:5],
        "starts": round(_total(metrics, "starts")),
        "wakes": round(_total(metrics, "wakes")),
        "sleeps": round(_total(metrics, "sleeps")),
        "evictions": round(_total(metrics, "evictions")),
        "load_gpu_s": (_total(metrics, "start_s") + _total(metrics, "wake_s")) * scale,
        "latency_p50_s": _pct(latency, 50),
        "latency_p95_s": _pct(latency, 95),
        "latency_p99_s": _pct(latency, 99),
        "ttft_p50_s": _pct(first, 50),
        "ttft_p95_s": _pct(first, 95),
        "slo_share": slo / len(records) if records else None,
        "throughput_rps": len(done) / span_s if span_s else None,
        "unfairness": ((max(p95_wait.values()) + 1) / (min(p95_wait.values()) + 1)
                       if p95_wait else None),
        "p95_wait_by_model_s": p95_wait,
        # On the floor (nothing to wait for but first starts) this is the replay's own overhead.
        "wait_p50_s": _pct([w for values in waits.values() for w in values], 50),
        "max_wait_for_room": {**worst, "over_bound": int(over_bound) if bounded else None},
        "overcommits": list(observed.overcommits)[:10],
        "accounting_over": {"polls": len(observed.accounting),
                            "first": list(observed.accounting)[:3]},
        "status_polls": observed.polls,
        "latencies_s": latency,
    }


def problems(row: Mapping[str, Any]) -> list[str]:
    """What the smoke run fails on: an incomplete answer or an over-committed GPU or model."""
    found = []
    if row["complete"] != row["expected_requests"]:
        found.append(f"{row['complete']} of {row['expected_requests']} requests got a complete "
                     f"answer: {row['errors']}")
    if row["overcommits"]:
        found.append(f"over-committed: {row['overcommits']}")
    if not row["status_polls"]:
        found.append("/gateway/status was never read")
    return found
