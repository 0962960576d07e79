"""Proxy benchmark: direct, nginx, vllm-gateway and the LiteLLM proxy in front of one upstream.

    python -m bench.proxy                      # the full run, about four minutes
    python -m bench.proxy --smoke              # everything in seconds, for CI
    python -m bench.proxy --only direct,gateway

One fake upstream (``python -m fake_vllm``) runs for the whole
benchmark; each peer is started in front of it in turn, checked to answer as
direct does, loaded, measured and stopped. It prints one table and the
targets, and writes every figure as JSON under bench/results/. The smoke run fails when
the gateway's CPU per request, as a ratio to the bare proxy's, rose above twice the one
recorded (bench/guard.py).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from . import guard, report
from .machine import machine_info, tool_versions
from .peers import PEERS
from .placement import available_cpus, plan
from .runner import RESULTS_DIR, Settings, run_all, settings_json
from .wrk import wrk_path


def write_json(document: dict[str, object], out_dir: Path, smoke: bool) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"proxy-{stamp}{'-smoke' if smoke else ''}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m bench.proxy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--only",
        default=",".join(report.PEER_ORDER),
        help="comma-separated peers to run, from: %(default)s",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny durations, for CI: checks the harness, not the timings",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="seconds of each loaded phase (default 10; --smoke: 1)",
    )
    parser.add_argument(
        "--token-delay",
        type=float,
        default=0.005,
        help="upstream seconds per generated token (default 0.005)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR,
        help="folder for the JSON results (default bench/results)",
    )
    args = parser.parse_args(argv)
    only = tuple(name.strip() for name in args.only.split(",") if name.strip())
    unknown = [name for name in only if name not in PEERS]
    if unknown or not only:
        parser.error(f"--only: unknown peers {unknown}; choose from {', '.join(PEERS)}")
    load_s = 1.0 if args.smoke else max(1.0, args.duration)
    return Settings(
        only=tuple(name for name in report.PEER_ORDER if name in only),
        smoke=args.smoke,
        warmup_s=0.0 if args.smoke else min(2.0, load_s),
        latency_s=load_s if args.smoke else max(1.0, load_s / 2),
        load_s=load_s,
        stream_s=load_s,
        swap_repeats=1 if args.smoke else 5,
        token_delay_s=args.token_delay,
        out_dir=args.out,
    )


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Raising lets every ``with`` block stop its children on the way out.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if importlib.util.find_spec("fake_vllm") is None:
        print(
            "fake_vllm is not importable: run from the project's venv",
            file=sys.stderr,
        )
        return 2
    if wrk_path() is None:
        print("wrk is not installed: run scripts/install_bench_tools.sh", file=sys.stderr)
        return 2
    placement = plan(available_cpus())
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    print(f"[bench] peers: {', '.join(settings.only)}; CPUs: {placement.note}", flush=True)
    machine = machine_info()
    busy = os.getloadavg()[0]
    if busy > 0.5 * len(available_cpus()):
        print(f"[bench] note: the machine is busy (load {busy:.1f}): expect noisy figures")
    clock = time.monotonic()
    results = run_all(settings, placement)
    elapsed_s = time.monotonic() - clock
    machine["load_average_end"] = os.getloadavg()
    report.add_derived(results)
    targets = report.evaluate_targets(results)
    print()
    print(report.render_table(results))
    print()
    print(report.render_targets(targets))
    kind = guard.machine_kind(machine)
    peers = report.as_json(results)
    verdict = guard.decide(guard.cpu_ratio(peers), guard.recorded(settings.out_dir, kind), kind)
    print(verdict.text)
    document: dict[str, object] = {
        "benchmark": "proxy",
        "started": started,
        "elapsed_s": round(elapsed_s, 1),
        "settings": settings_json(settings),
        "machine": machine,
        "placement": placement.as_json(),
        "versions": {**tool_versions(), **{n: r.version for n, r in results.items() if r.version}},
        "peers": peers,
        "targets": targets,
        "guard": verdict.as_json(),
    }
    path = write_json(document, settings.out_dir, settings.smoke)
    print(f"\n[bench] {elapsed_s:.0f} s; wrote {path}")
    if any(result.status == "failed" for result in results.values()):
        return 1
    # The smoke run (CI) is where the guard fails a build; a full run only reports it.
    return 1 if settings.smoke and not verdict.ok else 0


if __name__ == "__main__":
    sys.exit(main())
