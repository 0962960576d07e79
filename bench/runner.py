"""One benchmark run: the upstream, then each peer in turn, checked, loaded and measured."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from . import swap
from .check import compare, request_body
from .peers import MODEL, PEERS, Context, Direct, Endpoint
from .placement import Placement
from .procs import ChildFailed, Processes, RssSampler, free_port, tree_cpu_seconds, wait_port
from .report import PeerResult
from .stream_load import run_process
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
    out_dir: Path


def settings_json(settings: Settings) -> dict[str, object]:
    """The settings of a run, with the fixed shape of its load, as recorded in the JSON."""
    recorded = {key: value for key, value in asdict(settings).items() if key != "out_dir"}
    return {
        **recorded,
        "plain_tokens": PLAIN_TOKENS,
        "stream_tokens": STREAM_TOKENS,
        "plain_concurrency": PLAIN_CONCURRENCY,
        "stream_concurrency": STREAM_CONCURRENCY,
        "upstream_command": upstream_argv("{port}", settings.token_delay_s)[1:],
    }


def backend_argv(port: str, name: str) -> list[str]:
    """The fake backend command; the gateway's managed models use it with placeholders."""
    return [
        sys.executable,
        "-m",
        "fake_vllm",
        "--port",
        port,
        "--served-model-name",
        name,
        "--no-worker",
    ]


def upstream_argv(port: str, token_delay_s: float) -> list[str]:
    return backend_argv(port, MODEL) + [
        "--token-delay",
        str(token_delay_s),
        "--tokens",
        str(STREAM_TOKENS),
        "--startup-delay",
        "0",
    ]


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
            run_wrk(
                url,
                script,
                connections=PLAIN_CONCURRENCY,
                duration_s=settings.warmup_s,
                cpus=placement.load,
            )
        single = run_wrk(
            url, script, connections=1, duration_s=settings.latency_s, cpus=placement.load
        )
        _, note_single = _good(single, "1 concurrent")
        cpu_before = cpu()
        loaded = run_wrk(
            url,
            script,
            connections=PLAIN_CONCURRENCY,
            duration_s=settings.load_s,
            cpus=placement.load,
        )
        cpu_plain = cpu() - cpu_before
        good, note_loaded = _good(loaded, f"{PLAIN_CONCURRENCY} concurrent")
        cpu_before = cpu()
        streamed = run_process(
            f"{endpoint.base_url}/v1/chat/completions",
            MODEL,
            concurrency=STREAM_CONCURRENCY,
            duration_s=settings.stream_s,
            max_tokens=STREAM_TOKENS,
            headers=endpoint.headers,
            cpus=placement.load,
        )
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
    result.raw = {
        "wrk_c1": asdict(single),
        "wrk_c64": asdict(loaded),
        "stream_c32": streamed,
        # CPU seconds over each phase's wall time tells a CPU-bound proxy from a starved one.
        "proxy_cpu_s_c64": cpu_plain if pid is not None else None,
        "proxy_cpu_s_stream": cpu_stream if pid is not None else None,
    }
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
            "upstream", upstream_argv(str(port), settings.token_delay_s), cpus=placement.upstream
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
