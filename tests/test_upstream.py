"""The proxy's HTTP/1.1 client (vllm_gateway.upstream) against scripted servers on loopback:
bodies by length, chunked and up to the close, keep-alive reuse and when it must not
happen, servers that half-close, close mid-answer or kill a pooled connection, timeouts,
the connection limit, and what is safe to send again (NotSent) and what is not."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from vllm_gateway import upstream
from vllm_gateway.upstream import connection as upstream_connection

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


def answer(body: bytes, *extra: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + b"".join(
        line + b"\r\n" for line in extra) + b"Content-Length: %d\r\n\r\n" % len(body) + body


class Server:
    """Runs ``script(reader, writer, n)`` for the n-th request the server received (from 0,
    over all connections); counts the connections accepted and keeps every request."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while not reader.at_eof():
                try:
                    self.requests.append(await read_request(reader))
                except asyncio.IncompleteReadError:
                    break
                await self.script(reader, writer, len(self.requests) - 1)
                if writer.is_closing():
                    break
        except ConnectionError:
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@asynccontextmanager
async def serving(script: Script) -> AsyncIterator[Server]:
    server = Server(script)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()


async def post(client: upstream.Client, url: str, body: bytes = b'{"a": 1}',
               timeout_s: float = 5.0) -> tuple[upstream.Response, bytes]:
    response = await client.request(url, "POST", "/v1/chat/completions",
                                     [("Content-Type", "application/json")], body,
                                     connect_timeout_s=timeout_s, read_timeout_s=timeout_s)
    try:
        data = await response.read(timeout_s)
    finally:
        response.close()
    return response, data


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.01)


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


async def test_error_answers_keep_the_connection_and_abandoned_ones_drop_it() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 0:
            writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops")
        elif n == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly a part")
            await writer.drain()
            await asyncio.sleep(0.2)  # the rest never comes before the client gives up
        else:
            writer.write(answer(b"{}"))

    async with serving(script) as server:
        client = upstream.Client()
        response, data = await post(client, server.url)
        assert (response.status, data) == (500, b"oops")
        abandoned = await client.request(server.url, "POST", "/", [], b"",
                                         connect_timeout_s=5, read_timeout_s=5)
        assert await abandoned.chunk(5) == b"only a part"
        abandoned.close()  # before the end: the backend must see the connection go
        await settle()
        response, data = await post(client, server.url)
        assert (response.status, data) == (200, b"{}")
        assert server.connections == 2 and client.open == 1
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


async def test_a_half_closed_connection_is_not_reused() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(answer(b"{}"))
        await writer.drain()
        writer.write_eof()  # done sending, still reading: the connection is of no further use

    async with serving(script) as server:
        client = upstream.Client()
        for _ in range(3):
            _, data = await post(client, server.url)
            assert data == b"{}"
            await settle()
        assert server.connections == 3
        client.close()


async def test_a_server_that_half_closes_without_answering_fails_the_request() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write_eof()
        await asyncio.sleep(0.1)

    async with serving(script) as server:
        client = upstream.Client()
        with pytest.raises(upstream.ConnectionLost) as caught:
            await post(client, server.url)
        assert not isinstance(caught.value, upstream.NotSent)  # it was sent: never again
        client.close()


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
async def test_a_pooled_connection_killed_between_requests_is_not_used(reset: bool) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(answer(b"{}"))
        await writer.drain()
        if reset:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

    async with serving(script) as server:
        client = upstream.Client()
        for _ in range(3):
            _, data = await post(client, server.url)
            assert data == b"{}"
            await settle()
        assert server.connections == 3 and client.open == 0
        client.close()


async def test_a_pooled_connection_found_closing_raises_not_sent() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(answer(b"{}"))

    async with serving(script) as server:
        client = upstream.Client()
        await post(client, server.url)
        (conn,) = client.pool(server.url).idle
        assert conn.transport is not None
        conn.transport.close()  # as a kill the loop has not yet told the pool about
        with pytest.raises(upstream.NotSent):
            conn.send(b"POST / HTTP/1.1\r\n\r\n", b"")
        _, data = await post(client, server.url)  # the pool skips it
        assert data == b"{}" and server.connections == 2
        client.close()


async def test_connection_refused_is_not_sent() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = upstream.Client()
    with pytest.raises(upstream.NotSent):
        await post(client, f"http://127.0.0.1:{port}")
    assert client.open == 0
    client.close()


async def test_no_answer_in_time_is_a_timeout_and_drops_the_connection() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 0:
            await asyncio.sleep(0.5)
        writer.write(answer(b"{}"))

    async with serving(script) as server:
        client = upstream.Client()
        with pytest.raises(TimeoutError):
            await post(client, server.url, timeout_s=0.1)
        _, data = await post(client, server.url)
        assert data == b"{}" and server.connections == 2
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


async def test_the_limit_waits_and_closes_idle_connections_to_other_backends() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await asyncio.sleep(0.05)
        writer.write(answer(b"{}"))

    async with serving(script) as one, serving(script) as two:
        client = upstream.Client(limit=1)
        await post(client, one.url)
        assert client.open == 1
        _, data = await post(client, two.url)  # the idle one to `one` makes room
        assert data == b"{}" and client.open == 1
        results = await asyncio.gather(*(post(client, url) for url in (one.url, two.url) * 2))
        assert [data for _, data in results] == [b"{}"] * 4
        assert client.open <= 1
        client.close()


def test_a_line_break_in_the_head_is_refused() -> None:
    with pytest.raises(ValueError):
        upstream.encode_head("POST", "/v1", "Host: h:1\r\n", [("X-A", "1\r\nX-B: 2")], 0)
    with pytest.raises(ValueError):
        upstream.encode_head("POST", "/v1\r\nGET /", "Host: h:1\r\n", [], 0)
    head = upstream.encode_head("POST", "/v1", "Host: h:1\r\n", [("X-A", "é")], 3)
    assert head == "POST /v1 HTTP/1.1\r\nHost: h:1\r\nX-A: é\r\nContent-Length: 3\r\n\r\n".encode()
