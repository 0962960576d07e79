"""Figures, their ratios to direct, bare and LiteLLM, the targets, the table and the JSON.

Everything here is pure: it takes the figures measured for each peer and turns
them into text and a JSON-ready dict, so it is tested without running anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

Figures = dict[str, float | None]
Verdict = Literal["PASS", "FAIL", "n/a"]
PEER_ORDER = ("direct", "nginx", "bare", "gateway", "litellm")


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    better: Literal["higher", "lower"]


METRICS = (
    Metric("rps_c64", "req/s, 64 concurrent", "higher"),
    Metric("p50_ms_c1", "p50 ms, 1 concurrent", "lower"),
    Metric("p99_ms_c1", "p99 ms, 1 concurrent", "lower"),
    Metric("added_p50_ms_c1", "p50 ms added over direct, 1 conc", "lower"),
    Metric("p50_ms_c64", "p50 ms, 64 concurrent", "lower"),
    Metric("p99_ms_c64", "p99 ms, 64 concurrent", "lower"),
    Metric("ttft_p50_ms_c32", "stream TTFT p50 ms, 32 conc", "lower"),
    Metric("ttft_p99_ms_c32", "stream TTFT p99 ms, 32 conc", "lower"),
    Metric("tok_s_c32", "stream tokens/s, 32 conc", "higher"),
    Metric("cpu_s_per_1k_req", "proxy CPU s / 1,000 requests", "lower"),
    Metric("cpu_ms_per_stream", "proxy CPU ms / 64-token stream", "lower"),
    Metric("rss_peak_mb", "proxy peak RSS MB (tree)", "lower"),
    Metric("swap_backend_start_ms", "swap: backend start ms (alone)", "lower"),
    Metric("swap_first_byte_ms", "swap: request to first byte ms", "lower"),
    Metric("swap_overhead_ms", "swap: gateway overhead ms", "lower"),
)


@dataclass
class PeerResult:
    name: str
    status: Literal["ok", "skipped", "failed"] = "ok"
    note: str = ""
    version: str = ""
    figures: Figures = field(default_factory=dict)
    raw: dict[str, object] = field(default_factory=dict)


def ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def add_derived(results: Mapping[str, PeerResult]) -> None:
    """Figures that compare a peer with direct from the same run."""
    direct = results.get("direct")
    base = direct.figures.get("p50_ms_c1") if direct else None
    for result in results.values():
        own = result.figures.get("p50_ms_c1")
        if own is not None and base is not None:
            result.figures["added_p50_ms_c1"] = own - base


def ratios_to(results: Mapping[str, PeerResult], reference: str) -> dict[str, Figures]:
    ref = results.get(reference)
    ref_figures = ref.figures if ref else {}
    return {
        name: {key: ratio(value, ref_figures.get(key)) for key, value in result.figures.items()}
        for name, result in results.items()
    }


@dataclass(frozen=True)
class Target:
    name: str
    text: str
    # Returns the measured value and whether it meets the target (None: not measured).
    check: Callable[[Mapping[str, Figures]], tuple[float | None, bool | None]]


def _fig(figs: Mapping[str, Figures], peer: str, key: str) -> float | None:
    return figs.get(peer, {}).get(key)


def _at_most(peer: str, key: str, limit: float) -> Callable[..., tuple[float | None, bool | None]]:
    def check(figs: Mapping[str, Figures]) -> tuple[float | None, bool | None]:
        value = _fig(figs, peer, key)
        return value, None if value is None else value <= limit

    return check


def _below(peer: str, key: str, limit: float) -> Callable[..., tuple[float | None, bool | None]]:
    def check(figs: Mapping[str, Figures]) -> tuple[float | None, bool | None]:
        value = _fig(figs, peer, key)
        return value, None if value is None else value < limit

    return check


def _ratio_at_least(
    key: str, reference: str, minimum: float
) -> Callable[..., tuple[float | None, bool | None]]:
    def check(figs: Mapping[str, Figures]) -> tuple[float | None, bool | None]:
        value = ratio(_fig(figs, "gateway", key), _fig(figs, reference, key))
        return value, None if value is None else value >= minimum

    return check


def _ratio_at_most(
    key: str, reference: str, maximum: float
) -> Callable[..., tuple[float | None, bool | None]]:
    def check(figs: Mapping[str, Figures]) -> tuple[float | None, bool | None]:
        value = ratio(_fig(figs, "gateway", key), _fig(figs, reference, key))
        return value, None if value is None else value <= maximum

    return check


TARGETS = (
    Target(
        "cpu_per_request",
        "gateway CPU per request <= 0.25 ms",
        _at_most("gateway", "cpu_s_per_1k_req", 0.25),
    ),
    Target(
        "cpu_per_stream",
        "gateway CPU per 64-token stream <= 2 ms",
        _at_most("gateway", "cpu_ms_per_stream", 2.0),
    ),
    Target(
        "rps_vs_litellm",
        "gateway req/s at 64 conc >= 30x LiteLLM",
        _ratio_at_least("rps_c64", "litellm", 30.0),
    ),
    Target(
        "rps_vs_nginx",
        "gateway req/s at 64 conc >= 0.5x nginx",
        _ratio_at_least("rps_c64", "nginx", 0.5),
    ),
    Target(
        "p99_vs_nginx",
        "gateway p99 at 64 conc <= 2x nginx's",
        _ratio_at_most("p99_ms_c64", "nginx", 2.0),
    ),
    Target(
        "added_latency",
        "gateway p50 added latency at 1 conc < 0.5 ms",
        _below("gateway", "added_p50_ms_c1", 0.5),
    ),
    Target(
        "stream_vs_nginx",
        "gateway streaming tokens/s >= 0.8x nginx",
        _ratio_at_least("tok_s_c32", "nginx", 0.8),
    ),
    Target(
        "swap_overhead",
        "gateway swap detection overhead < 100 ms",
        _below("gateway", "swap_overhead_ms", 100.0),
    ),
    Target(
        "rss",
        "gateway RSS < 100 MB with 10 configured models",
        _below("gateway", "rss_peak_mb", 100.0),
    ),
)


def evaluate_targets(results: Mapping[str, PeerResult]) -> list[dict[str, object]]:
    figs = {name: result.figures for name, result in results.items() if result.status == "ok"}
    rows: list[dict[str, object]] = []
    for target in TARGETS:
        value, met = target.check(figs)
        verdict: Verdict = "n/a" if met is None else ("PASS" if met else "FAIL")
        rows.append(
            {"name": target.name, "target": target.text, "value": value, "verdict": verdict}
        )
    return rows


def fmt_value(value: float | None) -> str:
    if value is None:
        return "-"
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if size >= 1 else f"{value:.3f}"


def fmt_ratio(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}x" if abs(value) >= 100 else f"{value:.2f}x"


def render_table(results: Mapping[str, PeerResult]) -> str:
    """One table: each metric on a row, then its ratios to direct, bare and LiteLLM below it."""
    names = [name for name in PEER_ORDER if name in results]
    to_direct = ratios_to(results, "direct")
    to_bare = ratios_to(results, "bare")
    to_litellm = ratios_to(results, "litellm")
    width = 12
    lines = [f"{'metric':<36}" + "".join(f"{name:>{width}}" for name in names)]
    lines.append("-" * len(lines[0]))
    for metric in METRICS:
        values = [results[name].figures.get(metric.key) for name in names]
        if all(value is None for value in values):
            continue
        lines.append(f"{metric.label:<36}" + "".join(f"{fmt_value(v):>{width}}" for v in values))
        rows = (("  vs direct", to_direct), ("  vs bare", to_bare), ("  vs litellm", to_litellm))
        for label, table in rows:
            cells = [fmt_ratio(table[name].get(metric.key)) for name in names]
            if any(cells):
                lines.append(f"{label:<36}" + "".join(f"{cell:>{width}}" for cell in cells))
    notes = [
        f"{name}: {results[name].status}: {results[name].note}"
        for name in names
        if results[name].note
    ]
    return "\n".join(lines + ([""] + notes if notes else []))


def render_targets(rows: list[dict[str, object]]) -> str:
    lines = ["targets (informative, never asserted):"]
    for row in rows:
        value = row["value"]
        shown = fmt_value(value) if isinstance(value, float) else "-"
        lines.append(f"  [{row['verdict']:>4}] {row['target']:<52} measured {shown}")
    return "\n".join(lines)


def as_json(results: Mapping[str, PeerResult]) -> dict[str, object]:
    to_direct = ratios_to(results, "direct")
    to_bare = ratios_to(results, "bare")
    to_litellm = ratios_to(results, "litellm")
    return {
        name: {
            "status": result.status,
            "note": result.note,
            "version": result.version,
            "figures": result.figures,
            "ratio_to_direct": to_direct[name],
            "ratio_to_bare": to_bare[name],
            "ratio_to_litellm": to_litellm[name],
            "raw": result.raw,
        }
        for name, result in results.items()
    }
