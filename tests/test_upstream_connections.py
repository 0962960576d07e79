"""The proxy's HTTP/1.1 client (vllm_gateway.upstream) and its connections, against scripted
servers on loopback: keep-alive reuse and when it must not happen (error answers kept,
abandoned ones dropped), servers that half-close or kill a pooled connection, what is safe
to send again (NotSent) and what is not, no answer in time, and the connection limit.
How answers are read is in test_upstream_bodies.py."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from upstream_server import answer, post, serving

from vllm_gateway import upstream


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.01)


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
