"""``python -m bench.trace``: generate the workloads, serve each with every configuration, report.

Full runs write ``bench/results/trace-<stamp>.json`` and a PNG beside it and print
a markdown table per workload. ``--smoke`` replays a few minutes of each workload
at a high scale and exits non-zero unless every request got a complete answer
and nothing was over-committed (timings are not judged).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..machine import machine_info
from ..procs import ChildFailed, Processes
from . import costs, report
from .configs import CONFIGURATIONS, STARTUP_TIMEOUT_S
from .run import detect_backend, run_one
from .summary import problems
from .workloads import FULL_DURATION_S, WORKLOADS

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"
SMOKE_DURATION_S = {"team": 900.0, "agents": 600.0, "skewed": 240.0}
SMOKE_SCALE = 60.0
# A smoke run checks answers, so no request may be refused for waiting too long at its scale.
SMOKE_STARTUP_TIMEOUT_S = 4 * 3600.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.trace", description=__doc__)
    parser.add_argument("--workload", action="append", choices=list(WORKLOADS),
                        help="a workload to run (repeatable; default: all three)")
    parser.add_argument("--config", action="append", choices=[c.name for c in CONFIGURATIONS],
                        help="a configuration to run (repeatable; default: all)")
    parser.add_argument("--scale", type=float, default=None,
                        help="trace seconds per wall second (default 20; smoke 60)")
    parser.add_argument("--duration", type=float, default=None,
                        help="trace seconds in which sessions start (default: the workload's)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--smoke", action="store_true",
                        help="minutes of wall time: checks answers and over-commitment only")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    scale = args.scale or (SMOKE_SCALE if args.smoke else 20.0)
    names = args.workload or list(WORKLOADS)
    configs = [c for c in CONFIGURATIONS if not args.config or c.name in args.config]
    results: dict[str, dict[str, dict[str, Any]]] = {}
    failures: list[str] = []
    warnings: list[str] = []
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-trace-") as tmp, Processes(Path(tmp)) as procs:
        backend = detect_backend(procs, SMOKE_STARTUP_TIMEOUT_S if args.smoke
                                 else STARTUP_TIMEOUT_S)
        print(f"[trace] fake backend: python -m {backend.module}, bare start "
              f"{backend.python_start_s:.2f} s wall, sleep delays: {backend.sleep_options}",
              flush=True)
        for name in names:
            duration = args.duration or (SMOKE_DURATION_S[name] if args.smoke
                                         else FULL_DURATION_S[name])
            workload = WORKLOADS[name](args.seed, duration)
            print(f"[trace] {name}: {len(workload.sessions)} sessions, {workload.requests} "
                  f"requests over {duration:.0f} s of trace, scale {scale:g}", flush=True)
            clipped = sorted(m.name for m in workload.models
                             if costs.cold_start_s(m.vram_gb) / scale <= backend.python_start_s)
            if clipped:
                warning = (f"{name}: at scale {scale:g} the cold starts of {', '.join(clipped)} "
                           f"are shorter than the interpreter's own start "
                           f"({backend.python_start_s:.2f} s wall): they take what the machine "
                           "gives, not the modelled cost")
                warnings.append(warning)
                print(f"[trace] WARNING {warning}", flush=True)
            rows = results.setdefault(name, {})
            for config in configs:
                started = time.monotonic()
                try:
                    row = run_one(workload, config, backend, scale, Path(tmp), procs)
                except (ChildFailed, OSError) as exc:
                    row = {"status": "failed", "note": f"{type(exc).__name__}: {exc}"}
                    failures.append(f"{name}/{config.name}: {row['note']}")
                rows[config.name] = row
                if row["status"] == "ok":
                    failures += [f"{name}/{config.name}: {p}" for p in problems(row)]
                print(f"[trace] {name}/{config.name}: {row['status']} "
                      f"{row.get('note', '')} ({time.monotonic() - started:.0f} s)", flush=True)
            print(report.table(name, rows) + "\n", flush=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    doc = {"kind": "trace", "smoke": args.smoke, "scale": scale, "seed": args.seed,
           "backend": backend.__dict__, "wall_s": time.monotonic() - began,
           "machine": machine_info(), "warnings": warnings, "results": results}
    if not args.smoke:
        path = args.out / f"trace-{stamp}.json"
        report.write_json(path, doc)
        skipped = report.plot(path.with_suffix(".png"), results)
        print(f"[trace] wrote {path}" + (f"; {skipped}" if skipped else f" and {path.stem}.png"))
    for failure in failures:
        print(f"[trace] FAIL {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
