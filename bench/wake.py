"""``python -m bench.wake``: time to first token for a model that is stopped, or asleep.

Three models behind one gateway, all served by the fake backend with its
delays set to published vLLM figures, divided by ``--scale``: ``cold`` has sleep
off (a request finds it stopped: a cold start), ``level1`` and ``level2`` sleep
at those levels. Each goes back to its idle state (stopped or asleep) on its own
after a short idle timeout, and the next request is timed from sending it to
the first token of its stream.

The same backend, reached directly, gives the reference: spawn to first token
for a cold start, and for a wake the steps the gateway itself sends (the wake
calls, ``/is_sleeping``) plus the first token. The gateway's overhead is the
gateway's time minus the direct one, measured in pairs one right after the
other (alternating which goes first) and taken as the median of the pairs, as
``bench/swap.py`` does for cold starts. The overhead includes the gateway's
wake check (a one-token completion after every wake, on by default): it is
the gateway's own doing. The target (issue 15) is under 50 ms beyond the
backend's wake. ``--smoke`` checks that every path answers, not the timings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from .machine import machine_info, tool_versions
from .procs import LOOPBACK, Processes, free_port, wait_port
from .stats import median
from .trace import gateway as gw

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Published figures, seconds: a cold vLLM start "of a minute" (30-100+ s), a level-1 wake of
# about a second (0.1-6 s), a level-2 wake at the top of its 0.8-2.6 s (vLLM blog, Oct 2025).
PUBLISHED_S = {"cold": 60.0, "level1": 1.0, "level2": 2.5}
SLEEP_S = 0.5
DECODE_TOK_S = 50.0
MAX_TOKENS = 4
SCALE, SMOKE_SCALE = 10.0, 100.0
REPEATS, SMOKE_REPEATS = 8, 1
IDLE_TIMEOUT_S = 0.3
TARGET_OVERHEAD_MS = 50.0
TIMEOUT_S = 120.0
DEV_ENV = {"VLLM_SERVER_DEV_MODE": "1"}
Timed = Callable[[], Awaitable[float]]


def backend_argv(model: str, scale: float, port: str = "{port}") -> list[str]:
    startup = PUBLISHED_S["cold"] / scale if model == "cold" else 0.0
    wake = PUBLISHED_S.get(model, 0.0) / scale if model != "cold" else 0.0
    return [sys.executable, "-m", "fake_vllm", "--port", port, "--served-model-name", model,
            "--no-worker", "--startup-delay", f"{startup:.4f}",
            "--token-delay", f"{1.0 / DECODE_TOK_S / scale:.5f}",
            "--sleep-delay", f"{SLEEP_S / scale:.4f}", "--wake-delay", f"{wake:.4f}"]


def gateway_config(scale: float) -> dict[str, Any]:
    models = {name: {"command": backend_argv(name, scale), "idle_timeout_s": IDLE_TIMEOUT_S,
                     **({"sleep": int(name[-1])} if name != "cold" else {})}
              for name in PUBLISHED_S}
    return {"defaults": {"startup_timeout_s": TIMEOUT_S}, "models": models}


async def first_token_s(session: aiohttp.ClientSession, url: str, model: str) -> float:
    """Seconds from sending a streamed chat request to its first token; reads it to the end."""
    body = {"model": model, "messages": [{"role": "user", "content": "Say a few words."}],
            "max_tokens": MAX_TOKENS, "stream": True, "temperature": 0}
    began = time.perf_counter()
    first: float | None = None
    async with session.post(url + "/v1/chat/completions", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{model}: HTTP {resp.status}: {(await resp.text())[:300]}")
        done = False
        async for line in resp.content:
            if not line.startswith(b"data: "):
                continue  # the gateway's loading comments are not tokens
            if line.strip() == b"data: [DONE]":
                done = True
                break
            delta = json.loads(line[6:])["choices"][0].get("delta", {})
            if first is None and delta.get("content"):
                first = time.perf_counter() - began
    if first is None or not done:
        raise RuntimeError(f"{model}: the stream ended without a token or without [DONE]")
    return first


async def _post(session: aiohttp.ClientSession, url: str, body: object = None) -> Any:
    async with session.post(url, json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"POST {url}: HTTP {resp.status}: {await resp.text()}")
        return await resp.text()


async def _sleeping(session: aiohttp.ClientSession, base: str) -> bool:
    async with session.get(base + "/is_sleeping") as resp:
        return bool((await resp.json())["is_sleeping"])


async def direct_wake(session: aiohttp.ClientSession, base: str, level: int) -> tuple[float, float]:
    """Put the backend to sleep, then (wake steps, first token after them) in seconds."""
    await _post(session, f"{base}/sleep?level={level}&mode=wait")
    if not await _sleeping(session, base):
        raise RuntimeError(f"{base}: /sleep was not confirmed")
    began = time.perf_counter()
    if level == 1:
        await _post(session, base + "/wake_up")
    else:
        await _post(session, base + "/wake_up?tags=weights")
        await _post(session, base + "/collective_rpc", {"method": "reload_weights"})
        await _post(session, base + "/wake_up?tags=kv_cache")
        await _post(session, base + "/reset_prefix_cache")
    if await _sleeping(session, base):
        raise RuntimeError(f"{base}: the wake was not confirmed")
    woke = time.perf_counter() - began
    return woke, woke + await first_token_s(session, base, f"level{level}")


async def direct_cold(procs: Processes, session: aiohttp.ClientSession, scale: float) -> float:
    port = free_port()
    began = time.perf_counter()
    child = procs.spawn("direct-cold", backend_argv("cold", scale, str(port)))
    try:
        await asyncio.to_thread(wait_port, child, port, TIMEOUT_S)
        return time.perf_counter() - began + await first_token_s(
            session, f"http://{LOOPBACK}:{port}", "cold")
    finally:
        procs.stop(child)


async def _model(session: aiohttp.ClientSession, base: str, name: str) -> dict[str, Any]:
    async with session.get(base + "/gateway/status") as resp:
        doc = await resp.json()
    found: dict[str, Any] = next(m for m in doc["models"] if m["name"] == name)
    return found


async def until_idle(session: aiohttp.ClientSession, base: str, name: str) -> None:
    """Wait until the model is back in its idle state: stopped with no process, or asleep."""
    want = "stopped" if name == "cold" else "sleeping"
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        model = await _model(session, base, name)
        if model["state"] == want and (want == "sleeping" or model["pid"] is None):
            if want == "sleeping" and model["sleep_level"] != int(name[-1]):
                raise RuntimeError(f"{name} sleeps at level {model['sleep_level']}")
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not become {want}: {model}")
        await asyncio.sleep(0.02)


async def measure(procs: Processes, workdir: Path, scale: float, repeats: int
                  ) -> dict[str, dict[str, Any]]:
    path, port = gw.write_config(gateway_config(scale), workdir, "wake")
    gw.check_config(path)
    gateway = gw.start(procs, path, port, "wake")
    base = f"http://{LOOPBACK}:{port}"
    direct = {}
    for level in (1, 2):
        p = free_port()
        child = procs.spawn(f"direct-level{level}", backend_argv(f"level{level}", scale, str(p)),
                            env=DEV_ENV)
        await asyncio.to_thread(wait_port, child, p, TIMEOUT_S)
        direct[level] = f"http://{LOOPBACK}:{p}"
    samples: dict[str, dict[str, list[float]]] = {
        name: {"gateway_s": [], "direct_s": [], "backend_wake_s": [], "reported_wake_s": []}
        for name in PUBLISHED_S}
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for name in PUBLISHED_S:
            await first_token_s(session, base, name)  # the first start records the wake check
        for index in range(repeats):
            for name, out in samples.items():
                async def through(name: str = name) -> float:
                    await until_idle(session, base, name)
                    return await first_token_s(session, base, name)

                async def alone(name: str = name, out: dict[str, list[float]] = out) -> float:
                    if name == "cold":
                        return await direct_cold(procs, session, scale)
                    woke, total = await direct_wake(session, direct[int(name[-1])],
                                                    int(name[-1]))
                    out["backend_wake_s"].append(woke)
                    return total

                order: list[tuple[str, Timed]] = [("gateway_s", through), ("direct_s", alone)]
                for key, run in order if index % 2 == 0 else order[::-1]:
                    out[key].append(await run())
                if name != "cold":
                    wake = (await _model(session, base, name))["last_wake_s"]
                    out["reported_wake_s"].append(float(wake))
        metrics = gw.read_metrics(base)
    procs.stop(gateway)
    return {name: summarize(name, out, scale, metrics) for name, out in samples.items()}


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1e3, 2)


def summarize(name: str, out: dict[str, list[float]], scale: float,
              metrics: dict[str, dict[str, float]]) -> dict[str, Any]:
    overhead = median([g - d for g, d in zip(out["gateway_s"], out["direct_s"], strict=True)])
    row: dict[str, Any] = {
        "published_s": PUBLISHED_S[name],
        "backend_delay_ms": round(PUBLISHED_S[name] / scale * 1e3, 2),
        "ttft_gateway_ms": _ms(median(out["gateway_s"])),
        "ttft_direct_ms": _ms(median(out["direct_s"])),
        "overhead_ms": _ms(overhead),
        # What a client would see at the published figures: the backend's own time unscaled,
        # plus what the gateway adds (which does not scale).
        "ttft_at_published_s": None if overhead is None
        else round(PUBLISHED_S[name] + overhead, 3),
        "samples": {k: [round(v * 1e3, 2) for v in vs] for k, vs in out.items() if vs},
        "starts": metrics.get(name, {}).get("starts"),
        "wakes": metrics.get(name, {}).get("wakes"),
    }
    if name != "cold":
        row["backend_wake_ms"] = _ms(median(out["backend_wake_s"]))
        row["target_met"] = overhead is not None and overhead * 1e3 < TARGET_OVERHEAD_MS
    return row


def table(rows: dict[str, dict[str, Any]], scale: float) -> str:
    head = ("| model state | published backend time | TTFT through the gateway | backend alone "
            "| gateway overhead | TTFT at published figures |\n| --- | --- | --- | --- | --- | --- |")
    label = {"cold": "stopped (cold start)", "level1": "asleep, level 1",
             "level2": "asleep, level 2"}
    lines = [head] + [
        f"| {label[name]} | {r['published_s']:g} s | {r['ttft_gateway_ms']:.1f} ms "
        f"| {r['ttft_direct_ms']:.1f} ms | {r['overhead_ms']:+.1f} ms "
        f"| {r['ttft_at_published_s']:.2f} s |"
        for name, r in rows.items()]
    return "\n".join(lines) + f"\n(scale {scale:g}: backend times divided by it, overhead not)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wake", description=__doc__)
    parser.add_argument("--scale", type=float, default=None, help=f"default {SCALE:g}")
    parser.add_argument("--repeats", type=int, default=None, help=f"default {REPEATS}")
    parser.add_argument("--smoke", action="store_true", help="seconds; timings not judged")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    scale = args.scale or (SMOKE_SCALE if args.smoke else SCALE)
    repeats = args.repeats or (SMOKE_REPEATS if args.smoke else REPEATS)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-wake-") as tmp, Processes(Path(tmp)) as procs:
        rows = asyncio.run(measure(procs, Path(tmp), scale, repeats))
    print(table(rows, scale), flush=True)
    failures = [f"{name}: {r['wakes']} wakes, expected {repeats}" for name, r in rows.items()
                if name != "cold" and r["wakes"] != repeats]
    failures += [f"cold: {rows['cold']['starts']} starts, expected {repeats + 1}"
                 ] if rows["cold"]["starts"] != repeats + 1 else []
    if not args.smoke:
        doc = {"kind": "wake", "scale": scale, "repeats": repeats, "published_s": PUBLISHED_S,
               "target_overhead_ms": TARGET_OVERHEAD_MS, "wall_s": time.monotonic() - began,
               "machine": machine_info(), "versions": tool_versions(), "results": rows}
        path = args.out / f"wake-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"[wake] wrote {path}")
    for failure in failures:
        print(f"[wake] FAIL {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
