"""Before a proxy is timed, it must give the same answer as going direct.

A proxy that answers errors, empty bodies or truncated streams fast would
otherwise look like the winner. Answers are compared on what a client reads:
the generated text and the finish reason, plain and streamed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import aiohttp

from .peers import Endpoint

CHECK_TOKENS = 8


@dataclass(frozen=True)
class Answer:
    text: str
    finish_reason: str | None


def request_body(model: str, max_tokens: int, stream: bool) -> bytes:
    return json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Say a few words."}],
            "max_tokens": max_tokens,
            "stream": stream,
        }
    ).encode()


def _headers(endpoint: Endpoint) -> dict[str, str]:
    return {"Content-Type": "application/json", **endpoint.headers}


async def plain_answer(session: aiohttp.ClientSession, endpoint: Endpoint, model: str) -> Answer:
    url = f"{endpoint.base_url}/v1/chat/completions"
    body = request_body(model, CHECK_TOKENS, stream=False)
    async with session.post(url, data=body, headers=_headers(endpoint)) as resp:
        text = await resp.text()
        if resp.status != 200:
            raise ValueError(f"HTTP {resp.status}: {text[:300]}")
    choice = json.loads(text)["choices"][0]
    return Answer(choice["message"]["content"], choice.get("finish_reason"))


async def stream_answer(session: aiohttp.ClientSession, endpoint: Endpoint, model: str) -> Answer:
    url = f"{endpoint.base_url}/v1/chat/completions"
    body = request_body(model, CHECK_TOKENS, stream=True)
    parts: list[str] = []
    finish: str | None = None
    async with session.post(url, data=body, headers=_headers(endpoint)) as resp:
        if resp.status != 200:
            raise ValueError(f"HTTP {resp.status}: {(await resp.text())[:300]}")
        async for line in resp.content:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            for choice in json.loads(payload).get("choices", ()):
                parts.append((choice.get("delta") or {}).get("content") or "")
                finish = choice.get("finish_reason") or finish
        else:
            raise ValueError("the stream ended without data: [DONE]")
    return Answer("".join(parts), finish)


async def compare(direct: Endpoint, other: Endpoint, model: str) -> str | None:
    """None when ``other`` answers as ``direct`` does, else what differs."""
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for kind, fetch in (("plain", plain_answer), ("streamed", stream_answer)):
            try:
                expected = await fetch(session, direct, model)
                got = await fetch(session, other, model)
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, IndexError) as exc:
                return f"{kind} request failed: {type(exc).__name__}: {exc}"
            if not expected.text:
                return f"direct gave an empty {kind} answer; the upstream is broken"
            if got != expected:
                return f"{kind} answer differs from direct: {got!r} != {expected!r}"
    return None
