"""Exact counters after a storm of cancelled requests, end to end (a real gateway, fake
backends as real processes). The admission rules themselves (limits, FIFO, 429s, a leaver's
place) are in test_admission_rules.py, in-process."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

from admission_http_helpers import (
    UNHANDLED,
    assert_full_concurrency,
    backend_stats,
    gauges,
    metrics_text,
    model_status,
    read_all,
    session,
    wait_counts,
)
from harness import chat, fake_command
from helpers import wait_for

STORM = 240
STORM_SLOTS = 4


async def test_storm_of_cancelled_streams_leaves_exact_counters(gateway: Any) -> None:
    gw = gateway({"storm": {
        "command": fake_command("--token-delay", "0.02", worker=False, startup_delay=2.0),
        "max_concurrent": STORM_SLOTS, "max_queue": 150}})
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    outcomes: Counter[str] = Counter()
    cancelled_at: list[float] = []
    last_seen_starting = 0.0
    max_seen = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal last_seen_starting, max_seen
        while not done.is_set():
            asked = time.monotonic()
            m = await model_status(gw, "storm")
            max_seen = max(max_seen, m["in_flight"])
            if m["state"] == "starting":
                last_seen_starting = asked
            await asyncio.sleep(0.05)

    async def one(http: Any, delay: float, life: float, tokens: int) -> None:
        await asyncio.sleep(delay)
        try:
            async with asyncio.timeout(life):
                status, _ = await read_all(http, gw.url, chat("storm", stream=True,
                                                              max_tokens=tokens))
            outcomes[str(status)] += 1
        except TimeoutError:
            cancelled_at.append(time.monotonic())
            outcomes["cancelled"] += 1

    watcher = asyncio.create_task(watch())
    async with session() as http:
        # Most give up at a random moment (queued for the start, queued for a slot, in
        # flight, mid-stream); about one in seven waits for its whole answer.
        runs = [one(http, rng.uniform(0, 1.5), 30.0 if rng.random() < 0.15 else
                    rng.uniform(0, 3.5), rng.randint(1, 40)) for _ in range(STORM)]
        async with asyncio.timeout(60):
            await asyncio.gather(*runs)
    done.set()
    await watcher
    note = f"seed {seed}, outcomes {dict(outcomes)}"
    assert sum(outcomes.values()) == STORM, note
    assert set(outcomes) <= {"200", "429", "cancelled"}, note
    assert outcomes["200"] and outcomes["cancelled"], note
    assert any(t < last_seen_starting for t in cancelled_at), f"none cancelled while starting; {note}"

    await wait_counts(gw, "storm", 0, 0)
    assert await gauges(gw, "storm") == (0.0, 0.0)
    # Each request that reached the gateway is accounted once, under what the client saw
    # (or 499 when it left first).
    answered = _answered(await metrics_text(gw), "storm")
    assert sum(answered.values()) <= STORM and answered["499"] >= 1, answered
    assert answered["200"] >= outcomes["200"] and answered["429"] >= outcomes["429"], answered
    port = (await model_status(gw, "storm"))["port"]

    async def backend_idle() -> dict[str, Any] | None:
        stats = await backend_stats(port)
        return stats if stats["in_flight"] == 0 else None
    stats = await wait_for(backend_idle, 15, "the backend to have nothing in flight")
    assert stats["max_in_flight"] <= STORM_SLOTS and max_seen <= STORM_SLOTS, note
    await assert_full_concurrency(gw, "storm", STORM_SLOTS)
    log = gw.log()
    assert not [w for w in UNHANDLED if w in log], log[-4000:]


def _answered(metrics: str, model: str) -> Counter[str]:
    """vllm_gateway_requests_total of one model, by status code."""
    found: Counter[str] = Counter()
    for line in metrics.splitlines():
        if line.startswith("vllm_gateway_requests_total{") and f'model="{model}"' in line:
            code = line.split('code="', 1)[1].split('"', 1)[0]
            found[code] += int(float(line.rsplit(" ", 1)[1]))
    return found
