"""Streaming load generator: N concurrent SSE chat completions for a fixed time.

Runs as its own process (``python -m bench.stream_load ...``), pinned away
from the proxy by the caller, and prints one JSON object on stdout: time to
first token (the first chunk with non-empty content) per stream, and content
tokens per second over the whole run, counted from the chunks received.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from .procs import pinned
from .stats import percentile

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Tally:
    streams: int = 0
    errors: int = 0
    tokens: int = 0
    ttft_s: list[float] = field(default_factory=list)
    first_error: str | None = None

    def fail(self, reason: str) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = reason


def chunk_tokens(line: bytes) -> int | None:
    """Content-bearing choices in one SSE line; None at ``data: [DONE]``."""
    if not line.startswith(b"data:"):
        return 0
    payload = line[5:].strip()
    if payload == b"[DONE]":
        return None
    chunk = json.loads(payload)
    return sum(
        1 for choice in chunk.get("choices", ()) if (choice.get("delta") or {}).get("content")
    )


async def one_stream(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str], tally: Tally
) -> None:
    start = time.perf_counter()
    first: float | None = None
    tokens = 0
    async with session.post(url, data=body, headers=headers) as resp:
        if resp.status != 200:
            tally.fail(f"HTTP {resp.status}: {(await resp.text())[:200]}")
            return
        async for line in resp.content:
            count = chunk_tokens(line)
            if count is None:
                break
            if count and first is None:
                first = time.perf_counter() - start
            tokens += count
        else:
            tally.fail("stream ended without data: [DONE]")
            return
    if first is None:
        tally.fail("stream carried no content")
        return
    tally.streams += 1
    tally.tokens += tokens
    tally.ttft_s.append(first)


async def worker(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    deadline: float,
    tally: Tally,
) -> None:
    while time.perf_counter() < deadline:
        try:
            await one_stream(session, url, body, headers, tally)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            tally.fail(f"{type(exc).__name__}: {exc}")


async def run(args: argparse.Namespace) -> dict[str, object]:
    body = json.dumps(
        {
            "model": args.model,
            "messages": [{"role": "user", "content": args.prompt}],
            "max_tokens": args.max_tokens,
            "stream": True,
        }
    ).encode()
    headers = {"Content-Type": "application/json"}
    for item in args.header:
        key, _, value = item.partition(":")
        headers[key.strip()] = value.strip()
    tally = Tally()
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        deadline = start + args.duration
        await asyncio.gather(
            *(
                worker(session, args.url, body, headers, deadline, tally)
                for _ in range(args.concurrency)
            )
        )
        wall = time.perf_counter() - start
    ttft_ms = [value * 1e3 for value in tally.ttft_s]
    return {
        "concurrency": args.concurrency,
        "streams": tally.streams,
        "errors": tally.errors,
        "first_error": tally.first_error,
        "tokens": tally.tokens,
        "wall_s": wall,
        "tok_s": tally.tokens / wall if wall > 0 else 0.0,
        "ttft_p50_ms": percentile(ttft_ms, 50),
        "ttft_p99_ms": percentile(ttft_ms, 99),
    }


def run_process(
    url: str,
    model: str,
    *,
    concurrency: int,
    duration_s: float,
    max_tokens: int,
    headers: Mapping[str, str],
    cpus: Sequence[int] | None,
) -> dict[str, object]:
    """Run this module as its own process on ``cpus``; its JSON summary."""
    argv = [sys.executable, "-m", "bench.stream_load", "--url", url, "--model", model]
    argv += ["--concurrency", str(concurrency), "--duration", str(duration_s)]
    argv += ["--max-tokens", str(max_tokens)]
    for key, value in headers.items():
        argv += ["--header", f"{key}: {value}"]
    paths = [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
    done = subprocess.run(
        pinned(argv, cpus),
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))},
        timeout=duration_s + 120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"stream load generator failed: {done.stderr.strip()[-2000:]}")
    summary: dict[str, object] = json.loads(done.stdout)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stream_load", description=__doc__)
    parser.add_argument("--url", required=True, help="full /v1/chat/completions URL")
    parser.add_argument("--model", required=True)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds to start streams")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompt", default="Count to sixty-four.")
    parser.add_argument("--request-timeout", type=float, default=60.0)
    parser.add_argument("--header", action="append", default=[], metavar="'KEY: VALUE'")
    args = parser.parse_args(argv)
    json.dump(asyncio.run(run(args)), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
