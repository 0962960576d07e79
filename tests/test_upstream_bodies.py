"""The proxy's HTTP/1.1 client (vllm_gateway.upstream) reading answers from scripted servers
on loopback: bodies by length, chunked and up to the close, interim answers, a backend that
closes mid-answer or mid-stream, read timeouts mid-body, a large body that pauses reading,
garbage, and line breaks refused in the request head. Keep-alive reuse, broken connections,
timeouts before an answer and the connection limit are in test_upstream_connections.py."""

from __future__ import annotations

import asyncio

import pytest
from upstream_server import answer, post, serving

from vllm_gateway import upstream
from vllm_gateway.upstream import connection as upstream_connection


async def test_length_bodies_reuse_one_connection_and_send_what_was_given() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        whole = answer(b'{"n": %d}' % n)
        writer.write(whole[:30])  # the answer in two pieces
        await writer.drain()
        writer.write(whole[30:])

    async with serving(script) as server:
        client = upstream.Client()
        for n in range(3):
            response, data = await post(client, server.url)
            assert (response.status, data) == (200, b'{"n": %d}' % n)
            assert response.content_type == "application/json"
        assert server.connections == 1
        head, _, body = server.requests[0].partition(b"\r\n\r\n")
        assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
        assert f"Host: 127.0.0.1:{server.port}".encode() in head
        assert b"Content-Length: 8" in head and body == b'{"a": 1}'
        client.close()


async def test_chunked_bodies_arrive_whole_and_the_connection_is_reused() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        for part in (b"data: one\n\n", b"data: two\n\n", b"data: [DONE]\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
            await asyncio.sleep(0.005)
        writer.write(b"0\r\n\r\n")

    async with serving(script) as server:
        client = upstream.Client()
        for _ in range(2):
            response, data = await post(client, server.url)
            assert response.content_length is None
            assert data == b"data: one\n\ndata: two\n\ndata: [DONE]\n\n"
        assert server.connections == 1
        client.close()


async def test_a_body_without_length_ends_with_the_connection_which_is_not_reused() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
        await writer.drain()
        writer.close()

    async with serving(script) as server:
        client = upstream.Client()
        for _ in range(2):
            _, data = await post(client, server.url)
            assert data == b"until the end"
        assert server.connections == 2
        client.close()


async def test_an_interim_answer_is_skipped() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + answer(b"{}"))

    async with serving(script) as server:
        client = upstream.Client()
        response, data = await post(client, server.url)
        assert (response.status, data) == (200, b"{}")
        assert all(name.lower() != b"link" for name, _ in response.raw_headers)
        client.close()


async def test_backend_closing_mid_answer_is_an_error_not_a_short_body() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 0:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            await writer.drain()
            writer.close()
        else:
            writer.write(answer(b"{}"))

    async with serving(script) as server:
        client = upstream.Client()
        with pytest.raises(upstream.ConnectionLost):
            await post(client, server.url)
        _, data = await post(client, server.url)  # a fresh connection works
        assert data == b"{}"
        client.close()


async def test_backend_closing_mid_stream_is_an_error() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        writer.close()

    async with serving(script) as server:
        client = upstream.Client()
        response = await client.request(server.url, "POST", "/", [], b"{}",
                                         connect_timeout_s=5, read_timeout_s=5)
        assert await response.chunk(5) == b"hello"
        with pytest.raises(upstream.ConnectionLost):
            await response.chunk(5)
        response.close()
        client.close()


async def test_a_stall_mid_body_is_a_timeout() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
        await asyncio.sleep(0.5)

    async with serving(script) as server:
        client = upstream.Client()
        response = await client.request(server.url, "POST", "/", [], b"",
                                         connect_timeout_s=1, read_timeout_s=1)
        assert await response.chunk(0.1) == b"01234"
        with pytest.raises(TimeoutError):
            await response.chunk(0.1)
        response.close()
        client.close()


async def test_a_slow_steady_body_is_not_cut_by_the_read_timeout() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await asyncio.sleep(0.06)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(8):  # 0.5 s in all, never 0.15 s without a byte
            await asyncio.sleep(0.06)
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")

    async with serving(script) as server:
        client = upstream.Client()
        response = await client.request(server.url, "POST", "/", [], b"",
                                         connect_timeout_s=1, read_timeout_s=0.15)
        assert await response.read(0.15) == b"x" * 8
        response.close()
        client.close()


async def test_a_large_body_pauses_reading_and_arrives_intact(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstream_connection, "HIGH_WATER", 1024)
    big = bytes(range(256)) * 4096  # 1 MiB

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(answer(big))
        await writer.drain()

    async with serving(script) as server:
        client = upstream.Client()
        response = await client.request(server.url, "POST", "/", [], b"",
                                         connect_timeout_s=5, read_timeout_s=5)
        await asyncio.sleep(0.05)  # let the buffer pass its high water
        assert response._conn.paused
        received = bytearray()
        while chunk := await response.chunk(5):
            received += chunk
        response.close()
        assert bytes(received) == big
        _, data = await post(client, server.url)  # paused, resumed, and back in the pool
        assert data == big and server.connections == 1
        client.close()


async def test_garbage_is_a_bad_response() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"SMTP ready\r\n\r\n")

    async with serving(script) as server:
        client = upstream.Client()
        with pytest.raises(upstream.BadResponse):
            await post(client, server.url)
        client.close()


def test_a_line_break_in_the_head_is_refused() -> None:
    with pytest.raises(ValueError):
        upstream.encode_head("POST", "/v1", "Host: h:1\r\n", [("X-A", "1\r\nX-B: 2")], 0)
    with pytest.raises(ValueError):
        upstream.encode_head("POST", "/v1\r\nGET /", "Host: h:1\r\n", [], 0)
    head = upstream.encode_head("POST", "/v1", "Host: h:1\r\n", [("X-A", "é")], 3)
    assert head == "POST /v1 HTTP/1.1\r\nHost: h:1\r\nX-A: é\r\nContent-Length: 3\r\n\r\n".encode()
