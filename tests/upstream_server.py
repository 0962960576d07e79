"""Scripted HTTP/1.1 servers on loopback for the upstream client's tests and the gateway's
(test_upstream_bodies.py, test_upstream_connections.py, test_upstream_http.py): a server runs
a script per request and keeps count of connections and requests; ``post`` sends one request
with the client and reads the whole answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from vllm_gateway import upstream

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
