"""One connection to a backend: an asyncio protocol feeding httptools' response parser,
and the answer it is reading, handed to the proxy chunk by chunk."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

import httptools

from .errors import BadResponse, ConnectionLost, NotSent, UpstreamError

if TYPE_CHECKING:
    from .pool import Pool

# Past this many bytes buffered and not yet taken by the proxy, reading from the backend
# pauses until the client catches up.
HIGH_WATER = 1 << 18


class Response:
    """One answer, read as it arrives. ``close()`` hands a finished connection back to its
    pool and drops an unfinished one, so the backend sees an abandoned request at once."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self.content_type = ""
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._until_close = False
        self.complete = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None

    def header_pairs(self) -> list[tuple[str, str]]:
        return [(name.decode("latin-1"), value.decode("utf-8", "surrogateescape"))
                for name, value in self.raw_headers]

    async def chunk(self, timeout_s: float | None) -> bytes:
        """What arrived since the last call, waiting for it; ``b""`` once the body ended.
        Raises TimeoutError when nothing came within ``timeout_s``."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self.complete:
                return b""
            await self._wait(timeout_s)
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        self._conn.resume()
        return data

    async def read(self, timeout_s: float | None) -> bytes:
        """The whole body; ``timeout_s`` bounds each wait for more of it."""
        parts = []
        while data := await self.chunk(timeout_s):
            parts.append(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _wait(self, timeout_s: float | None) -> None:
        waiter = self._waiter = self._conn.loop.create_future()
        try:
            await self._conn.wait(waiter, timeout_s)
        finally:
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None and not self.complete:
            self._error = error
        self._wake()

    def close(self) -> None:
        self._conn.finished(self)


class Connection(asyncio.Protocol):
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        # Looked up once: in Python 3.11 each get_running_loop() costs a getpid() call.
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.headers_done: asyncio.Future[None] | None = None
        self.lost = False
        self.paused = False
        self.reusable = True
        self.idle_since = 0.0
        self.counted = True  # still counted against the client's limit on connections
        # Read timeouts: one timer per connection that re-arms itself from the time the
        # backend last sent something, instead of a timer made and cancelled per chunk.
        self.last_seen = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._waiting: asyncio.Future[None] | None = None
        self._timeout_s = 0.0

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have asyncio.Transport's methods without deriving from it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.last_seen = self.loop.time()
        if self.response is None or self.response.complete:
            # Nothing may arrive between answers: a server that sends it is out of step.
            self.reusable = False
            self._close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._broken(BadResponse(f"the backend's answer is not valid HTTP ({exc})"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.pool.gone(self)
        response = self.response
        if response is None:
            return
        if response._until_close and self.headers_done is None:
            response.complete = True  # a body without a length ends with the connection
            response._wake()
            return
        why = f": {exc}" if exc else ""
        self._broken(ConnectionLost(f"the backend closed the connection{why}"))

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.lost:
            self.paused = False
            self.last_seen = self.loop.time()  # the backend was not silent: we stopped reading
            self.transport.resume_reading()

    # -- httptools callbacks -------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            response.raw_headers = []  # an interim answer (103 Early Hints): the real one follows
            return
        response.status = status
        chunked = False
        for name, value in response.raw_headers:
            lower = name.lower()
            if lower == b"content-length":
                response.content_length = int(value)
            elif lower == b"content-type":
                response.content_type = value.decode("latin-1")
            elif lower == b"transfer-encoding":
                chunked = True
        response._until_close = response.content_length is None and not chunked
        self.reusable = self.parser.should_keep_alive() and not response._until_close
        if self.headers_done is not None and not self.headers_done.done():
            self.headers_done.set_result(None)
        self.headers_done = None

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response._feed(body)

    def on_message_complete(self) -> None:
        response = self.response
        if response is None or response.status == 0:
            return  # the end of an interim answer
        response.complete = True
        response._wake()

    # -- the pool's side -----------------------------------------------------------------

    def send(self, head: bytes, body: bytes) -> Response:
        assert self.transport is not None
        if self.lost or self.transport.is_closing():
            raise NotSent("the pooled connection was closed before the request was written")
        response = self.response = Response(self)
        self.headers_done = self.loop.create_future()
        self.last_seen = self.loop.time()
        self.transport.writelines((head, body) if body else (head,))
        return response

    async def answer(self, timeout_s: float | None) -> None:
        """Waits for the status line and headers of the answer."""
        if self.headers_done is not None:
            await self.wait(self.headers_done, timeout_s)

    async def wait(self, future: asyncio.Future[None], timeout_s: float | None) -> None:
        """Awaits ``future``; it fails with TimeoutError once the backend has sent nothing
        for ``timeout_s`` (counted from the request, or from the last bytes received)."""
        if timeout_s:
            self._waiting, self._timeout_s = future, timeout_s
            deadline = self.last_seen + timeout_s
            if self._timer is not None and self._timer_at > deadline:
                self._timer.cancel()
                self._timer = None
            if self._timer is None:
                self._timer_at = deadline
                self._timer = self.loop.call_at(deadline, self._check_deadline)
        try:
            await future
        finally:
            self._waiting = None

    def _check_deadline(self) -> None:
        self._timer = None
        future = self._waiting
        if future is None or future.done():
            return  # nobody waits: the next wait arms it again
        deadline = self.last_seen + self._timeout_s
        if self.loop.time() >= deadline:
            future.set_exception(TimeoutError())
        else:
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._check_deadline)

    def _broken(self, error: UpstreamError) -> None:
        self.reusable = False
        if self.headers_done is not None and not self.headers_done.done():
            self.headers_done.set_exception(error)
        self.headers_done = None
        if self.response is not None:
            self.response._fail(error)
        self._close()

    def finished(self, response: Response) -> None:
        if response is not self.response:
            return
        self.response = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if response.complete and self.reusable and not self.lost:
            self.resume()
            self.pool.release(self)
        else:
            self._close()

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.pool.gone(self)
