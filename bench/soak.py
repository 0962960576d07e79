"""Soak: a real gateway under mixed traffic, client cancellations, killed backends and swaps.

Three fake-backend models share one declared 24 GB GPU at 16 GB each, so only one fits at a
time and the traffic keeps swapping them. Meanwhile some clients give up early, a chaos task
SIGKILLs a running model's server now and then, and an admin task asks for loads. At the end
the gateway must have every ``in_flight`` and ``queued`` counter at 0 and, after SIGTERM, no
process left. Loopback only, bounded in time::

    .venv/bin/python -m bench.soak              # 180 s
    .venv/bin/python -m bench.soak --smoke      # a few seconds (CI)
    .venv/bin/python -m bench.soak --duration 600 --concurrency 16 --seed 7

Exit status: 0 when the counters and the leftover processes are 0 and the gateway stayed up;
1 otherwise (the gateway's log tail is printed then).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

# The gateway is started the way the integration tests start it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from harness import GatewayProc, fake_command, start_gateway

MODELS = ("red", "green", "blue")
GPU_GB = 24
MODEL_GB = 16  # two never fit together: every change of model is a swap
SETTLE_S = 30.0  # how long counters may take to reach 0 once the traffic stops


@dataclass(frozen=True)
class Plan:
    duration_s: float
    concurrency: int
    cancel_ratio: float
    kill_every_s: float
    load_every_s: float
    token_delay_s: float
    seed: int


@dataclass
class Tally:
    """What the clients saw, by kind: HTTP statuses, in-band stream errors, exceptions."""

    outcomes: Counter[str] = field(default_factory=Counter)
    samples: dict[str, str] = field(default_factory=dict)  # one error message per kind
    admin: Counter[str] = field(default_factory=Counter)
    kills: int = 0
    groups: set[int] = field(default_factory=set)  # every model process group seen

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())

    def errors(self) -> dict[str, int]:
        return {k: v for k, v in sorted(self.outcomes.items()) if k not in ("200", "cancelled")}


def parse_args(argv: list[str] | None) -> Plan:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of traffic")
    parser.add_argument("--smoke", action="store_true", help="a few seconds, for CI")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients")
    parser.add_argument("--cancel-ratio", type=float, default=0.15,
                        help="share of requests the client abandons early")
    parser.add_argument("--kill-every", type=float, default=8.0,
                        help="seconds between SIGKILLs of a model server (ready or starting)")
    parser.add_argument("--load-every", type=float, default=6.0,
                        help="seconds between admin loads of a random model")
    parser.add_argument("--token-delay", type=float, default=0.005,
                        help="the fake backends' seconds per generated token")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: time)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else int(time.time())
    if args.smoke:
        return Plan(6.0, 4, args.cancel_ratio, 2.5, 2.0, args.token_delay, seed)
    return Plan(args.duration, args.concurrency, args.cancel_ratio, args.kill_every,
                args.load_every, args.token_delay, seed)


def gateway_config(plan: Plan) -> tuple[dict[str, Any], dict[str, Any]]:
    command = fake_command("--token-delay", str(plan.token_delay_s), startup_delay=0.3)
    models = {name: {"command": command, "vram_gb": MODEL_GB, "max_concurrent": 4,
                     "max_queue": 32, "startup_timeout_s": 30, "request_timeout_s": 30,
                     "idle_timeout_s": 0} for name in MODELS}
    top = {
        "gpus": [{"id": 0, "vram_gb": GPU_GB}],
        # Quick to notice a killed server and to try again, so the run keeps moving.
        "faults": {"health_interval_s": 0.5, "unhealthy_probes": 2, "start_backoff_s": 0.2,
                   "start_backoff_max_s": 2, "max_failed_starts": 5, "stop_grace_s": 3},
        "retry": {"max_retries": 2, "delay_s": 0.1, "backoff": 1.5},
    }
    return models, top


# -- the traffic --------------------------------------------------------------------------


def request_body(rng: random.Random, model: str, stream: bool) -> dict[str, Any]:
    return {"model": model, "stream": stream, "max_tokens": rng.randint(1, 48),
            "messages": [{"role": "user", "content": f"soak {rng.random():.6f}"}]}


Outcome = tuple[str, str]  # the kind (a status, an in-band error, an exception), a detail


def error_message(data: bytes) -> str:
    try:
        return str(json.loads(data)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return data[:200].decode(errors="replace")


async def one_request(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Outcome:
    """What one request got: its status, or the in-band error that ended its stream."""
    async with http.post(url + "/v1/chat/completions", json=body) as resp:
        data = await resp.read()
        if resp.status == 200 and body["stream"]:
            for line in data.split(b"\n"):
                if line.startswith(b"data: {\"error\""):
                    status = json.loads(line[6:])["error"].get("status", "?")
                    return f"200+stream-error-{status}", error_message(line[6:])
            if b"data: [DONE]" not in data:
                return "200+stream-unfinished", data[-200:].decode(errors="replace")
        return str(resp.status), "" if resp.status == 200 else error_message(data)


async def client(http: aiohttp.ClientSession, url: str, plan: Plan, rng: random.Random,
                 tally: Tally, deadline: float) -> None:
    while time.monotonic() < deadline:
        body = request_body(rng, rng.choice(MODELS), stream=rng.random() < 0.5)
        gives_up = rng.random() < plan.cancel_ratio
        try:
            if gives_up:
                kind, detail = await abandon(one_request(http, url, body), rng.uniform(0.01, 1.0))
            else:
                kind, detail = await one_request(http, url, body)
        except (TimeoutError, aiohttp.ClientError) as exc:
            kind, detail = type(exc).__name__, str(exc)
        tally.outcomes[kind] += 1
        if detail:
            tally.samples.setdefault(kind, " ".join(detail.split()))


async def abandon(request: Coroutine[Any, Any, Outcome], after_s: float) -> Outcome:
    """The request's outcome, or "cancelled" when the client gives up on it first."""
    try:
        return await asyncio.wait_for(request, after_s)
    except TimeoutError:
        return "cancelled", ""  # the gateway must clean up after a client that went away


async def status(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url + "/gateway/status") as resp:
        doc: dict[str, Any] = await resp.json()
        return doc


async def watcher(http: aiohttp.ClientSession, url: str, tally: Tally) -> None:
    """Remembers every model process group, to look for leftovers of killed servers later."""
    while True:
        for model in (await status(http, url))["models"]:
            if model["pid"]:
                tally.groups.add(int(model["pid"]))  # started with its own session: pid == pgid
        await asyncio.sleep(0.2)


async def chaos(http: aiohttp.ClientSession, url: str, plan: Plan, rng: random.Random,
                tally: Tally) -> None:
    while True:
        await asyncio.sleep(plan.kill_every_s * rng.uniform(0.5, 1.5))
        # With constant swapping a model is often still starting: a kill then fails its start.
        running = [m for m in (await status(http, url))["models"]
                   if m["state"] in ("ready", "starting") and m["pid"]]
        if running:
            victim = rng.choice(running)
            try:
                os.kill(int(victim["pid"]), signal.SIGKILL)
                tally.kills += 1
            except ProcessLookupError:
                pass


async def admin(http: aiohttp.ClientSession, url: str, plan: Plan, rng: random.Random,
                tally: Tally) -> None:
    loads: set[asyncio.Task[None]] = set()

    async def load(name: str) -> None:
        try:
            async with http.post(f"{url}/gateway/models/{name}/load") as resp:
                tally.admin[f"load {resp.status}"] += 1
        except aiohttp.ClientError as exc:
            tally.admin[f"load {type(exc).__name__}"] += 1

    try:
        while True:
            await asyncio.sleep(plan.load_every_s * rng.uniform(0.5, 1.5))
            task = asyncio.create_task(load(rng.choice(MODELS)))
            loads.add(task)
            task.add_done_callback(loads.discard)
    finally:
        for task in loads:
            task.cancel()
        await asyncio.gather(*loads, return_exceptions=True)


async def drive(gw: GatewayProc, plan: Plan, tally: Tally) -> None:
    rng = random.Random(plan.seed)
    deadline = time.monotonic() + plan.duration_s
    timeout = aiohttp.ClientTimeout(total=90)
    connector = aiohttp.TCPConnector(limit=plan.concurrency + 8)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        helpers = [asyncio.create_task(watcher(http, gw.url, tally)),
                   asyncio.create_task(chaos(http, gw.url, plan, random.Random(rng.random()),
                                             tally)),
                   asyncio.create_task(admin(http, gw.url, plan, random.Random(rng.random()),
                                             tally))]
        clients = [asyncio.create_task(client(http, gw.url, plan, random.Random(rng.random()),
                                              tally, deadline))
                   for _ in range(plan.concurrency)]
        # Requests still running at the deadline are abandoned mid-way: more cancellations.
        await asyncio.wait(clients, timeout=max(0.0, deadline - time.monotonic()))
        for task in clients + helpers:
            task.cancel()
        results = await asyncio.gather(*clients, *helpers, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                tally.outcomes[f"client bug: {type(result).__name__}: {result}"] += 1


# -- the checks ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Ending:
    in_flight: int
    queued: int
    healthy: bool
    starts: float
    exit_code: int | None
    left: list[str]
    rss_end_mb: float


def counters(gw: GatewayProc) -> tuple[int, int]:
    models = gw.status()["models"]
    return sum(m["in_flight"] for m in models), sum(m["queued"] for m in models)


def settle(gw: GatewayProc) -> tuple[int, int]:
    """The counters once they reach 0, or as they are after SETTLE_S."""
    deadline = time.monotonic() + SETTLE_S
    found = counters(gw)
    while found != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.2)
        found = counters(gw)
    return found


def metric_sum(gw: GatewayProc, name: str) -> float:
    with gw.client(timeout=10) as http:
        text = http.get("/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name + "{"))


def group_members(groups: set[int]) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) in groups and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def finish(gw: GatewayProc, tally: Tally) -> Ending:
    if gw.proc.poll() is not None:  # the gateway died: nothing to ask it
        orphans = [str(p.pid) for p in group_members(tally.groups)]
        return Ending(-1, -1, False, 0.0, gw.proc.returncode, orphans, 0.0)
    in_flight, queued = settle(gw)
    with gw.client(timeout=10) as http:
        healthy = http.get("/health").status_code == 200
    starts = metric_sum(gw, "vllm_gateway_model_starts_total")
    rss_end = rss_mb(gw.proc.pid)
    watched = psutil.Process(gw.proc.pid).children(recursive=True)
    exit_code = gw.stop(signal.SIGTERM)
    _, alive = psutil.wait_procs(watched, timeout=15)
    # Also the groups of killed servers: their workers are nobody's children any more.
    left = {p.pid: p for p in alive + group_members(tally.groups)}
    described = []
    for pid, proc in sorted(left.items()):
        try:
            described.append(f"{pid} {' '.join(proc.cmdline())[:120]}")
        except psutil.Error:
            continue
    return Ending(in_flight, queued, healthy, starts, exit_code, described, rss_end)


def report(plan: Plan, tally: Tally, ending: Ending, rss_start: float, elapsed: float) -> bool:
    ok = (ending.in_flight == 0 and ending.queued == 0 and not ending.left and ending.healthy
          and ending.exit_code == 0)
    lines = [
        f"soak: {elapsed:.0f} s, {plan.concurrency} clients, seed {plan.seed}",
        f"requests          {tally.requests}",
        f"  answered 200    {tally.outcomes['200']}",
        f"  cancelled       {tally.outcomes['cancelled']} (by the client, on purpose)",
        "  errors by kind  " + (json.dumps(tally.errors()) if tally.errors() else "none"),
        *(f"    {kind}: {tally.samples.get(kind, '')[:150]}" for kind in tally.errors()),
        f"backends killed   {tally.kills}",
        f"model starts      {ending.starts:.0f} (swaps and restarts)",
        "admin loads       " + (json.dumps(dict(sorted(tally.admin.items())))
                                 if tally.admin else "none"),
        f"in_flight at end  {ending.in_flight}",
        f"queued at end     {ending.queued}",
        f"/health at end    {'ok' if ending.healthy else 'FAILED'}",
        f"gateway exit      {ending.exit_code}",
        f"processes left    {len(ending.left)}" + "".join(f"\n  {p}" for p in ending.left),
        f"gateway RSS       {rss_start:.1f} MB at start, {ending.rss_end_mb:.1f} MB at end",
        "result            " + ("PASS" if ok else "FAIL"),
    ]
    print("\n".join(lines), flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    plan = parse_args(argv)
    models, top = gateway_config(plan)
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="vllm-gateway-soak-") as tmp:
        gw = start_gateway(Path(tmp), models, **top)
        try:
            rss_start = rss_mb(gw.proc.pid)
            started = time.monotonic()
            asyncio.run(drive(gw, plan, tally))
            elapsed = time.monotonic() - started
            ending = finish(gw, tally)
        finally:
            # Counted above already; whatever happened, leave nothing running on the machine.
            if gw.proc.poll() is None:
                gw.stop(signal.SIGTERM)
            for proc in group_members(tally.groups):
                proc.kill()
        ok = report(plan, tally, ending, rss_start, elapsed)
        if not ok:
            print("--- gateway log (tail) ---\n" + "\n".join(gw.log().splitlines()[-60:]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
