"""Proxy benchmark: direct, nginx, vllm-gateway and the LiteLLM proxy in front of one upstream.

    python -m bench.proxy                      # the full run, about three minutes
    python -m bench.proxy --smoke              # everything in seconds, for CI
    python -m bench.proxy --only direct,gateway

One fake upstream (``python -m vllm_gateway.fake_backend``) runs for the whole
benchmark; each peer is started in front of it in turn, checked to answer as
direct does, loaded, measured and stopped. It prints one table and the
targets, and writes every figure as JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Sequence

from . import report, swap
from .check import compare, request_body
from .machine import machine_info, tool_versions
from .peers import MODEL, PEERS, Context, Direct, Endpoint
from .placement import Placement, available_cpus, plan
from .procs import LOOPBACK, ChildFailed, Processes, RssSampler, free_port, tree_cpu_seconds
from .procs import pinned, wait_port
from .report import PeerResult
from .wrk import WrkError, WrkResult, run_wrk, write_script

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
PLAIN_TOKENS = 1  # a non-streamed answer costs one token delay upstream
STREAM_TOKENS = 64
PLAIN_CONCURRENCY = 64
STREAM_CONCURRENCY = 32
# More failed requests than this and a peer's figures are not reported as valid.
MAX_BAD_FRACTION = 0.01


@dataclass(frozen=True)
class Settings:
    only: tuple[str, ...]
    smoke: bool
    warmup_s: float
    latency_s: float
    load_s: float
    stream_s: float
    swap_repeats: int
    token_delay_s: float


def backend_argv(port: str, name: str) -> list[str]:
    """The fake backend command; the gateway's managed models use it with placeholders."""
    return [
        sys.executable, "-m", "vllm_gateway.fake_backend",
        "--port", port, "--served-model-name", name, "--no-worker",
    ]


def upstream_argv(port: int, token_delay_s: float) -> list[str]:
    return backend_argv(str(port), MODEL) + [
        "--token-delay", str(token_delay_s), "--tokens", str(STREAM_TOKENS), "--startup-delay", "0",
    ]


def stream_load(
    endpoint: Endpoint, settings: Settings, placement: Placement
) -> dict[str, object]:
    """Run the streaming load generator as its own pinned process; its JSON summary."""
    argv = [
        sys.executable, "-m", "bench.stream_load",
        "--url", f"{endpoint.base_url}/v1/chat/completions",
        "--model", MODEL,
        "--concurrency", str(STREAM_CONCURRENCY),
        "--duration", str(settings.stream_s),
        "--max-tokens", str(STREAM_TOKENS),
    ]
    for key, value in endpoint.headers.items():
        argv += ["--header", f"{key}: {value}"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        pinned(argv, placement.load), capture_output=True, text=True, env=env,
        timeout=settings.stream_s + 120, check=False, cwd=REPO_ROOT,
    )
    if done.returncode != 0:
        raise RuntimeError(f"stream load generator failed: {done.stderr.strip()[-2000:]}")
    summary: dict[str, object] = json.loads(done.stdout)
    return summary


def _good(result: WrkResult, what: str) -> tuple[int, str]:
    """Successful requests of a wrk run; raises when too many failed to trust the figures."""
    bad = result.errors + result.non2xx
    if result.requests == 0 or bad > MAX_BAD_FRACTION * max(result.requests, 1):
        raise RuntimeError(
            f"{what}: {bad} of {result.requests} requests failed (socket errors or non-2xx)"
        )
    return result.requests - result.non2xx, f"{what}: {bad} failed requests; " if bad else ""


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def measure(
    endpoint: Endpoint, ctx: Context, settings: Settings, placement: Placement
) -> PeerResult:
    """Load one running peer and collect its figures (the check against direct passed)."""
    result = PeerResult(endpoint.name, version=endpoint.version)
    url = f"{endpoint.base_url}/v1/chat/completions"
    body = request_body(MODEL, PLAIN_TOKENS, stream=False)
    script = write_script(
        ctx.workdir / f"{endpoint.name}.lua",
        body,
        {"Content-Type": "application/json", **endpoint.headers},
    )
    pid = endpoint.child.pid if endpoint.child else None
    sampler = RssSampler(pid) if pid is not None else None

    def cpu() -> float:
        return tree_cpu_seconds(pid) if pid is not None else 0.0

    with sampler if sampler is not None else contextlib.nullcontext():
        if settings.warmup_s > 0:
            run_wrk(url, script, connections=PLAIN_CONCURRENCY, duration_s=settings.warmup_s,
                    cpus=placement.load)
        single = run_wrk(url, script, connections=1, duration_s=settings.latency_s,
                         cpus=placement.load)
        _, note_single = _good(single, "1 concurrent")
        cpu_before = cpu()
        loaded = run_wrk(url, script, connections=PLAIN_CONCURRENCY, duration_s=settings.load_s,
                         cpus=placement.load)
        cpu_plain = cpu() - cpu_before
        good, note_loaded = _good(loaded, f"{PLAIN_CONCURRENCY} concurrent")
        cpu_before = cpu()
        streamed = stream_load(endpoint, settings, placement)
        cpu_stream = cpu() - cpu_before
    result.note = note_single + note_loaded
    streams = int(_float(streamed["streams"]) or 0)
    errors = int(_float(streamed["errors"]) or 0)
    if streams == 0 or errors > MAX_BAD_FRACTION * (streams + errors):
        raise RuntimeError(
            f"streaming: {errors} of {streams + errors} streams failed: {streamed['first_error']}"
        )
    figures = result.figures
    figures["rps_c64"] = good / loaded.duration_s
    figures["p50_ms_c1"], figures["p99_ms_c1"] = single.p50_ms, single.p99_ms
    figures["p50_ms_c64"], figures["p99_ms_c64"] = loaded.p50_ms, loaded.p99_ms
    figures["ttft_p50_ms_c32"] = _float(streamed["ttft_p50_ms"])
    figures["ttft_p99_ms_c32"] = _float(streamed["ttft_p99_ms"])
    figures["tok_s_c32"] = _float(streamed["tok_s"])
    if pid is not None and sampler is not None:
        # CPU seconds per 1,000 requests is the same number as CPU milliseconds per request.
        figures["cpu_s_per_1k_req"] = cpu_plain / good * 1e3
        figures["cpu_ms_per_stream"] = cpu_stream / streams * 1e3
        figures["rss_peak_mb"] = sampler.peak_bytes / 2**20
    result.raw = {"wrk_c1": asdict(single), "wrk_c64": asdict(loaded), "stream_c32": streamed}
    return result


def run_peer(
    name: str, ctx: Context, direct: Endpoint, settings: Settings, placement: Placement
) -> PeerResult:
    peer = PEERS[name]
    missing = peer.missing(ctx.repo_root)
    if missing:
        return PeerResult(name, "skipped", missing)
    print(f"[bench] {name}: starting", flush=True)
    endpoint: Endpoint | None = None
    try:
        endpoint = peer.start(ctx)
        mismatch = asyncio.run(compare(direct, endpoint, MODEL))
        if mismatch:
            return PeerResult(name, "failed", f"not timed: {mismatch}", endpoint.version)
        print(f"[bench] {name}: answers as direct does; measuring", flush=True)
        result = measure(endpoint, ctx, settings, placement)
        if name == "gateway":
            print("[bench] gateway: swap path", flush=True)
            swapped = swap.measure(
                ctx.procs, endpoint, backend_argv, placement.proxy, settings.swap_repeats
            )
            result.figures.update(swapped.figures())
            result.raw["swap"] = asdict(swapped)
        return result
    except (ChildFailed, WrkError, RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        version = endpoint.version if endpoint else ""
        return PeerResult(name, "failed", f"{type(exc).__name__}: {exc}", version)
    finally:
        if endpoint is not None and endpoint.child is not None:
            ctx.procs.stop(endpoint.child)


def run_all(settings: Settings, placement: Placement) -> dict[str, PeerResult]:
    results: dict[str, PeerResult] = {}
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp, Processes(Path(tmp)) as procs:
        port = free_port()
        upstream = procs.spawn(
            "upstream", upstream_argv(port, settings.token_delay_s), cpus=placement.upstream
        )
        wait_port(upstream, port, 60.0)
        ctx = Context(procs, Path(tmp), REPO_ROOT, port, placement.proxy, backend_argv)
        direct = Direct().start(ctx)
        broken = asyncio.run(compare(direct, direct, MODEL))
        if broken:
            raise ChildFailed(f"the upstream itself is broken: {broken}\n{upstream.log_tail()}")
        for name in settings.only:
            results[name] = run_peer(name, ctx, direct, settings, placement)
            if results[name].status != "ok":
                print(f"[bench] {name}: {results[name].status}: {results[name].note}", flush=True)
    return results


def write_json(document: dict[str, object], smoke: bool) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = RESULTS_DIR / f"proxy-{stamp}{'-smoke' if smoke else ''}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench.proxy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(report.PEER_ORDER),
                        help="comma-separated peers to run, from: %(default)s")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny durations, for CI: checks the harness, not the timings")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds of each loaded phase (default 10; --smoke: 1)")
    parser.add_argument("--token-delay", type=float, default=0.005,
                        help="upstream seconds per generated token (default 0.005)")
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
    )


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Raising lets every ``with`` block stop its children on the way out.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if importlib.util.find_spec("vllm_gateway.fake_backend") is None:
        print("vllm_gateway.fake_backend is not importable: run from the project's venv",
              file=sys.stderr)
        return 2
    placement = plan(available_cpus())
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(f"[bench] peers: {', '.join(settings.only)}; CPUs: {placement.note}", flush=True)
    machine = machine_info()
    results = run_all(settings, placement)
    report.add_derived(results)
    targets = report.evaluate_targets(results)
    print()
    print(report.render_table(results))
    print()
    print(report.render_targets(targets))
    document: dict[str, object] = {
        "benchmark": "proxy",
        "started": started,
        "settings": {
            **asdict(settings),
            "plain_tokens": PLAIN_TOKENS,
            "stream_tokens": STREAM_TOKENS,
            "plain_concurrency": PLAIN_CONCURRENCY,
            "stream_concurrency": STREAM_CONCURRENCY,
            "upstream": upstream_argv(0, settings.token_delay_s)[1:],
        },
        "machine": machine,
        "placement": placement.as_json(),
        "versions": {**tool_versions(), **{n: r.version for n, r in results.items() if r.version}},
        "peers": report.as_json(results),
        "targets": targets,
    }
    path = write_json(document, settings.smoke)
    print(f"\n[bench] wrote {path.relative_to(REPO_ROOT)}")
    return 1 if any(result.status == "failed" for result in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
