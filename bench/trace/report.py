"""The trace benchmark's outputs: a markdown table, the JSON file and the latency plot."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .configs import BY_NAME

COLUMNS = (
    ("starts", "starts", "{:.0f}"),
    ("wakes", "wakes", "{:.0f}"),
    ("load_gpu_s", "GPU-s loading", "{:,.0f}"),
    ("latency_p50_s", "latency p50", "{:.1f}"),
    ("latency_p95_s", "p95", "{:.1f}"),
    ("latency_p99_s", "p99", "{:.1f}"),
    ("ttft_p50_s", "TTFT p50", "{:.1f}"),
    ("ttft_p95_s", "TTFT p95", "{:.1f}"),
    ("slo_share", "first token ≤ 5 s", "{:.0%}"),
    ("unfairness", "unfairness", "{:.1f}"),
    ("wait_p50_s", "wait p50", "{:.1f}"),
)


def _cell(value: object, fmt: str) -> str:
    return fmt.format(value) if isinstance(value, (int, float)) else "-"


def _room(row: Mapping[str, Any]) -> str:
    room = row["max_wait_for_room"]
    text = f"{room['wait_s']:,.0f}"
    if room.get("bound_s") is not None:
        text += f" (bound {room['bound_s']:,.0f}; {room['over_bound']} over)"
    return text


def table(workload: str, rows: Mapping[str, Mapping[str, Any]]) -> str:
    head = ["configuration", *(label for _, label, _ in COLUMNS), "max wait for room",
            "complete answers"]
    lines = [f"**{workload}** (trace seconds)", "",
             "| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for name, row in rows.items():
        label = BY_NAME[name].label
        if row.get("status") != "ok":
            note = row.get("note", "")
            lines.append(f"| {label} | {row.get('status')}: {note} |"
                         + " |" * (len(head) - 2))
            continue
        cells = [_cell(row.get(key), fmt) for key, _, fmt in COLUMNS]
        answers = f"{row['complete']}/{row['expected_requests']}"
        if row["overcommits"]:
            answers += ", OVER-COMMITTED"
        if row.get("accounting_over", {}).get("polls"):
            answers += f", status over the GPU in {row['accounting_over']['polls']} polls"
        lines.append("| " + " | ".join([label, *cells, _room(row), answers]) + " |")
    return "\n".join(lines)


def write_json(path: Path, doc: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


def plot(path: Path, results: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """Latency distribution (empirical CDF) per configuration, one panel per workload.

    matplotlib is a bench-only dependency (bench/requirements-trace.txt); without
    it the plot is skipped and the reason returned, the figures are still written.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed (bash scripts/install_bench_tools.sh)"
    names = list(results)
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.2), squeeze=False)
    for ax, workload in zip(axes[0], names, strict=True):
        for config, row in results[workload].items():
            values: Sequence[float] = sorted(row.get("latencies_s") or ())
            if not values:
                continue
            share = [(i + 1) / len(values) for i in range(len(values))]
            ax.step(values, share, where="post", label=BY_NAME[config].label)
        ax.set_xscale("log")
        ax.set_xlabel("latency, arrival to last token (trace s, log)")
        ax.set_ylabel("share of requests")
        ax.set_title(workload)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return ""
