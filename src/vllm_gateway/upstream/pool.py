"""Keep-alive connections per backend, within one limit on connections to all backends."""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
import urllib.parse
from collections.abc import Iterable

from .connection import Connection, Response
from .errors import NotSent

# A pooled connection idle for longer is closed instead of reused: servers close idle
# keep-alive connections themselves (uvicorn, which vLLM runs, after 5 s), and reusing one
# as the server closes it would lose the request.
IDLE_S = 4.0
IDLE_MAX = 256  # idle connections kept per backend


class Pool:
    """Keep-alive connections to one backend (``http(s)://host:port``), the most recently
    used first."""

    def __init__(self, client: Client, base_url: str) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not a backend address: {base_url}")
        self.client = client
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.tls = parts.scheme == "https"
        self.host_header = f"Host: {parts.netloc}\r\n"
        self.idle: collections.deque[Connection] = collections.deque()
        self.open = 0

    async def connect(self, timeout_s: float | None) -> Connection:
        loop = asyncio.get_running_loop()
        self.open += 1
        self.client.open += 1
        try:
            async with asyncio.timeout(timeout_s):
                _, conn = await loop.create_connection(
                    lambda: Connection(self), self.host, self.port,
                    ssl=ssl.create_default_context() if self.tls else None)
        except BaseException as exc:
            self.open -= 1
            self.client.released()
            if isinstance(exc, TimeoutError):
                raise NotSent(f"no connection to {self.host}:{self.port} within "
                              f"{timeout_s:g} s") from None
            if isinstance(exc, OSError):
                raise NotSent(f"cannot connect to {self.host}:{self.port} ({exc})") from exc
            raise
        return conn

    def take(self) -> Connection | None:
        """An idle connection still open and not idle for too long, or None."""
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if conn.lost or conn.transport is None or conn.transport.is_closing():
                continue
            if now - conn.idle_since > IDLE_S:
                conn._close()
                continue
            return conn
        return None

    def release(self, conn: Connection) -> None:
        if len(self.idle) >= IDLE_MAX:
            conn._close()
            return
        conn.idle_since = time.monotonic()
        self.idle.append(conn)
        self.client.wake()

    def gone(self, conn: Connection) -> None:
        """``conn`` is closed or closing: it no longer counts, and is not handed out."""
        if not conn.counted:
            return
        conn.counted = False
        self.open -= 1
        try:
            self.idle.remove(conn)
        except ValueError:
            pass
        self.client.released()

    def close(self) -> None:
        while self.idle:
            self.idle.pop()._close()


class Client:
    """One pool per backend address, and at most ``limit`` connections to all of them
    (``http_pool_size``): past it a request waits for a connection, closing an idle one
    to another backend if there is one."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.pools: dict[str, Pool] = {}
        self.open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def pool(self, base_url: str) -> Pool:
        pool = self.pools.get(base_url)
        if pool is None:
            if len(self.pools) > 64:
                # Managed backends get a new port on each start: forget the unused pools.
                for url in [url for url, old in self.pools.items() if not old.open]:
                    del self.pools[url]
            pool = self.pools[base_url] = Pool(self, base_url)
        return pool

    async def request(self, base_url: str, method: str, target: str,
                      headers: Iterable[tuple[str, str]], body: bytes, *,
                      connect_timeout_s: float | None, read_timeout_s: float | None) -> Response:
        pool = self.pool(base_url)
        head = encode_head(method, target, pool.host_header, headers, len(body))
        conn = pool.take() or await self._connect(pool, connect_timeout_s)
        response = conn.send(head, body)
        try:
            await conn.answer(read_timeout_s)
        except BaseException:
            response.close()
            raise
        return response

    async def _connect(self, pool: Pool, timeout_s: float | None) -> Connection:
        while self.limit is not None and self.open >= self.limit:
            if self._close_idle():
                continue
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            conn = pool.take()
            if conn is not None:
                return conn
        return await pool.connect(timeout_s)

    def _close_idle(self) -> bool:
        for pool in self.pools.values():
            if pool.idle:
                pool.idle.popleft()._close()
                return True
        return False

    def released(self) -> None:
        self.open -= 1
        self.wake()

    def wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()


def encode_head(method: str, target: str, host_header: str,
                headers: Iterable[tuple[str, str]], length: int) -> bytes:
    """The request line and headers. A CR or LF inside a name, value or target would start
    a header or a request of its own (smuggling), so a head that has one is refused."""
    lines = [f"{method} {target} HTTP/1.1\r\n", host_header]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers)
    lines.append(f"Content-Length: {length}\r\n\r\n")
    text = "".join(lines)
    if text.count("\n") != len(lines) + 1 or text.count("\r") != len(lines) + 1:
        raise ValueError("a header name, value or the target holds a line break")
    return text.encode("utf-8", "surrogateescape")
