"""Replaying a workload's sessions against a running gateway, time-scaled.

Each session is one task: it waits for its start, sends a turn, reads the whole
answer, waits the think (or tool) time, and sends the next turn, so the trace
stays closed loop however slow the gateway is. All times are taken on the wall
clock and divided back into trace seconds by the caller.

The fake backend spends one token delay per generated token and has no
prefill of its own, so a request's prefill is spread over its token delays:
the request holds its server for its whole service time, and its first token
is reported at the moment it would have come (measured first token, moved by
the difference the spread made). At high scales tokens are grouped so that no
delay is shorter than the event loops can keep (``MIN_TOKEN_WALL_S``).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass

import aiohttp

from . import costs
from .workloads import Session, Turn, Workload

TOKEN_CHUNK = b'"delta":{"content":"'
# Below this many wall seconds per token the event loops, not the token delay, would set the
# pace: generate fewer, longer tokens with the same total time instead.
MIN_TOKEN_WALL_S = 0.002


@dataclass
class Record:
    """One request as the client saw it; times in wall seconds from the replay's start."""

    session: int
    model: str
    stream: bool
    prompt_tokens: int
    output_tokens: int
    service_s: float  # its own prefill and decode, trace seconds
    sent_tokens: int  # what the fake backend is asked to generate (see replayed_tokens)
    sent: float = 0.0
    first: float | None = None
    end: float | None = None
    status: int = 0
    complete: bool = False
    error: str = ""


def replayed_tokens(turn: Turn, vram_gb: float, scale: float) -> int:
    """Tokens the fake backend generates for ``turn``: its own, or fewer at a high scale."""
    per_token_wall = 1.0 / costs.decode_tok_s(vram_gb) / scale
    group = max(1, math.ceil(MIN_TOKEN_WALL_S / per_token_wall))
    return max(1, math.ceil(turn.output_tokens / group))


def body(turn: Turn, vram_gb: float, scale: float) -> dict[str, object]:
    service = costs.service_s(vram_gb, turn.prompt_tokens, turn.output_tokens)
    tokens = replayed_tokens(turn, vram_gb, scale)
    return {
        "model": turn.model,
        "messages": [{"role": "user", "content": f"turn of {turn.prompt_tokens} tokens"}],
        "max_tokens": tokens,
        "stream": turn.stream,
        "fake": {"token_delay": service / tokens / scale},
    }


def first_token_shift_s(record: Record, vram_gb: float) -> float:
    """Trace seconds from the replayed first token to the one the real server would send.

    The replay's first token comes one (spread) token delay after the request got
    its server; the real one after the prefill and one decode step.
    """
    real = costs.prefill_s(vram_gb, record.prompt_tokens) + 1.0 / costs.decode_tok_s(vram_gb)
    return real - record.service_s / record.sent_tokens


async def _send(session: aiohttp.ClientSession, url: str, record: Record,
                payload: dict[str, object], t0: float) -> None:
    record.sent = time.monotonic() - t0
    async with session.post(url, json=payload) as resp:
        record.status = resp.status
        if resp.status != 200:
            record.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
            record.end = time.monotonic() - t0
            return
        if not record.stream:
            doc = json.loads(await resp.read())
            record.end = record.first = time.monotonic() - t0
            usage = doc.get("usage") or {}
            record.complete = (doc["choices"][0].get("finish_reason") == "length"
                               and usage.get("completion_tokens") == record.sent_tokens)
            return
        tokens = 0
        done = False
        async for line in resp.content:
            if line.startswith(b"data: [DONE]"):
                done = True
            elif TOKEN_CHUNK in line and b'"role"' not in line:
                tokens += 1
                if record.first is None:
                    record.first = time.monotonic() - t0
        record.end = time.monotonic() - t0
        record.complete = done and tokens == record.sent_tokens
        if not record.complete:
            record.error = f"stream ended after {tokens} of {record.sent_tokens} tokens"


async def _session(index: int, sess: Session, workload: Workload, scale: float,
                   http: aiohttp.ClientSession, url: str, t0: float,
                   records: list[Record]) -> None:
    await asyncio.sleep(max(0.0, t0 + sess.start_s / scale - time.monotonic()))
    for turn in sess.turns:
        if turn.gap_s:
            await asyncio.sleep(turn.gap_s / scale)
        vram = workload.model(turn.model).vram_gb
        record = Record(index, turn.model, turn.stream, turn.prompt_tokens, turn.output_tokens,
                        costs.service_s(vram, turn.prompt_tokens, turn.output_tokens),
                        replayed_tokens(turn, vram, scale))
        records.append(record)
        try:
            await _send(http, url, record, body(turn, vram, scale), t0)
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError) as exc:
            record.error = f"{type(exc).__name__}: {exc}"
            record.end = time.monotonic() - t0
        if record.first is not None and record.stream:
            record.first += first_token_shift_s(record, vram) / scale
            record.first = max(record.sent, min(record.first, record.end or record.first))


async def replay(workload: Workload, base_url: str, scale: float, timeout_s: float,
                 t0: float, records: list[Record]) -> None:
    """Every turn of every session, appended to ``records`` as it is sent; ``t0``: the start.

    The records are the caller's, so what was sent survives a replay cut short.
    """
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    url = f"{base_url}/v1/chat/completions"
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        await asyncio.gather(*(_session(i, s, workload, scale, http, url, t0, records)
                               for i, s in enumerate(workload.sessions)))
