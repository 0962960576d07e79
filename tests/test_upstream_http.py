"""The gateway in front of scripted backends that misbehave at the connection level: a
backend that closes or resets each keep-alive connection after its answer, one that
streams chunked, and one that hangs up mid-answer. What a client sees must not change."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from harness import chat, sse_events
from upstream_server import Server, answer, serving

ANSWER = json.dumps({"id": "x", "object": "chat.completion", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}).encode()

Start = Callable[..., Awaitable[Any]]


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
async def test_a_backend_that_kills_each_connection_after_answering(
        inproc: Start, reset: bool) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(answer(ANSWER))  # HTTP/1.1 and no Connection: close, so keep-alive
        await writer.drain()
        if reset:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

    async with serving(script) as server:
        gw = await inproc({"kills": {"url": server.url}})
        async with gw.client() as c:
            for _ in range(5):
                r = await c.post("/v1/chat/completions", json=chat("kills"))
                assert r.status_code == 200, r.text
                assert r.json()["choices"][0]["message"]["content"] == "fine"
                await asyncio.sleep(0.02)
        assert server.connections == 5
        assert 'vllm_gateway_tokens_total{kind="prompt",model="kills"} 15.0' in await gw.metrics()
        await gw.wait_counters_zero()


async def test_a_pooled_connection_closed_unnoticed_is_skipped_not_a_502(inproc: Start) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(answer(ANSWER))

    async with serving(script) as server:
        gw = await inproc({"pooled": {"url": server.url}})
        async with gw.client() as c:
            assert (await c.post("/v1/chat/completions", json=chat("pooled"))).status_code == 200
            client = gw.gateway.upstream
            (conn,) = client.pool(server.url).idle
            conn.transport.close()  # dead, and the loop has not yet told the pool
            r = await c.post("/v1/chat/completions", json=chat("pooled"))
            assert r.status_code == 200, r.text
        assert len(server.requests) == 2  # the request went out once, on a new connection
        await gw.wait_counters_zero()


async def test_chunked_streams_pass_through_and_reuse_the_connection(inproc: Start) -> None:
    events = [{"choices": [{"index": 0, "delta": {"content": word}}]} for word in ("a", "b")]

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        for event in [*(f"data: {json.dumps(e)}\n\n" for e in events), "data: [DONE]\n\n"]:
            writer.write(b"%x\r\n%s\r\n" % (len(event), event.encode()))
            await writer.drain()
        writer.write(b"0\r\n\r\n")

    async with serving(script) as server:
        gw = await inproc({"sse": {"url": server.url}})
        async with gw.client() as c:
            for _ in range(3):
                r = await c.post("/v1/chat/completions", json=chat("sse", stream=True))
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                assert sse_events(r.text) == events and r.text.endswith("data: [DONE]\n\n")
        assert server.connections == 1
        await gw.wait_counters_zero()


async def test_a_backend_hanging_up_mid_answer(inproc: Start) -> None:
    def script_for(stream: bool) -> Callable[..., Awaitable[None]]:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         n: int) -> None:
            if n == 0 and stream:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n10\r\ndata: {\"a\": 1}\n\n\r\n")
            elif n == 0:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"partial\"")
            else:
                writer.write(answer(ANSWER))
                return
            await writer.drain()
            writer.close()
        return script

    for stream in (False, True):
        server: Server
        async with serving(script_for(stream)) as server:
            gw = await inproc({"dies": {"url": server.url}})
            async with gw.client() as c:
                r = await c.post("/v1/chat/completions", json=chat("dies", stream=stream))
                if stream:  # the status went out: the error comes in-band, the stream ends
                    assert r.status_code == 200 and sse_events(r.text)[-1]["error"]["status"] == 502
                else:
                    assert r.status_code == 502, r.text
                    assert "the backend failed mid-answer" in r.json()["error"]["message"]
                r = await c.post("/v1/chat/completions", json=chat("dies"))
                assert r.status_code == 200, r.text
            await gw.wait_counters_zero()
