"""Forwarding one request to a ready backend and streaming the answer back untouched.

A request that never reached the backend (the connection was refused) raises
NotDelivered, and the web layer decides whether to send it again: generation is
not idempotent, so a request whose body was sent is never sent again.
``request_timeout_s`` bounds the wait for the first byte and each gap between
chunks, never the whole answer, so long generations run on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterable, Iterator

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from . import upstream
from .config import RetryConfig
from .errors import BackendError, BackendTimeout, GatewayError, NotDelivered
from .metrics import Metrics
from .reqctx import RequestContext
from .runtime.manager import Lease

log = logging.getLogger("vllm_gateway.proxy")

# Non-streamed answers up to this size are read whole and sent in one write.
WHOLE_BODY_MAX = 1 << 20

# RFC 9110 hop-by-hop headers, plus those aiohttp recomputes for the new connection.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade", "host", "content-length",
})


def _connection_listed(values: Iterable[str]) -> set[str]:
    """Headers that the Connection header names are hop-by-hop too (RFC 9110, 7.6.1)."""
    return {name.strip().lower() for value in values for name in value.split(",")
            if name.strip()}


def _hop_by_hop(lower: str, listed: set[str]) -> bool:
    # Proxy-* headers are addressed to the proxy in between (this gateway), never to the backend.
    return lower in HOP_BY_HOP or lower in listed or lower.startswith("proxy-")


def forward_headers(headers: CIMultiDictProxy[str], keep_authorization: bool, request_id: str
                    ) -> list[tuple[str, str]]:
    listed = _connection_listed(headers.getall("Connection", ()))
    out: list[tuple[str, str]] = []
    for key, value in headers.items():
        lower = key.lower()
        if _hop_by_hop(lower, listed) or lower == "x-request-id":
            continue
        if lower == "authorization" and not keep_authorization:
            continue
        out.append((key, value))
    out.append(("X-Request-ID", request_id))
    return out


def response_headers(headers: list[tuple[str, str]]) -> CIMultiDict[str]:
    listed = _connection_listed(value for key, value in headers if key.lower() == "connection")
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in headers:
        lower = key.lower()
        if _hop_by_hop(lower, listed) or lower in ("date", "server"):
            continue
        out.add(key, value)
    return out


@contextlib.contextmanager
def reading_answer(model: str, timeout_s: float) -> Iterator[None]:
    """The errors of reading a backend's answer, before anything went to the client."""
    try:
        yield
    except TimeoutError as exc:
        raise BackendTimeout(f"model {model} sent no answer within {timeout_s:g} s") from exc
    except upstream.UpstreamError as exc:
        raise BackendError(f"model {model}: the backend failed mid-answer ({exc})") from exc


class Proxy:
    def __init__(self, client: upstream.Client, retry: RetryConfig, metrics: Metrics) -> None:
        self.client = client
        self.retry = retry
        self.metrics = metrics

    async def _send(self, lease: Lease, path: str, body: bytes, headers: list[tuple[str, str]],
                    timeout_s: float, ctx: RequestContext) -> upstream.Response:
        try:
            return await self.client.request(
                lease.base_url, "POST", path, headers, body,
                connect_timeout_s=min(timeout_s, 30.0) or None, read_timeout_s=timeout_s or None)
        except upstream.NotSent as exc:
            # Nothing reached the backend: the web layer may send it again (web.v1.deliver).
            raise NotDelivered(f"model {lease.instance.name}: cannot connect to the backend "
                               f"({exc})") from exc
        except TimeoutError as exc:
            raise BackendTimeout(f"model {lease.instance.name} sent no answer within "
                                 f"{timeout_s:g} s") from exc
        except upstream.UpstreamError as exc:
            raise BackendError(f"model {lease.instance.name}: the backend failed before "
                               f"answering ({type(exc).__name__}: {exc})") from exc

    async def _forward_whole(self, answer: upstream.Response, sink: ResponseSink,
                             ctx: RequestContext, timeout_s: float) -> None:
        with reading_answer(ctx.model, timeout_s):
            data = await answer.read(timeout_s or None)
        ctx.mark_first_byte()
        counter = UsageCounter(self.metrics, ctx.model)
        counter.feed(data)
        counter.finish()
        sink.whole(answer.status, response_headers(answer.header_pairs()), data)

    async def forward(self, request: web.Request, sink: ResponseSink, lease: Lease, path: str,
                      body: bytes, ctx: RequestContext) -> None:
        cfg = lease.instance.cfg
        timeout_s = cfg.request_timeout_s
        read_timeout = timeout_s or None
        headers = forward_headers(request.headers, cfg.forward_authorization, ctx.request_id)
        answer = await self._send(lease, path, body, headers, timeout_s, ctx)
        try:
            is_stream = answer.content_type.startswith("text/event-stream")
            length = answer.content_length
            if not is_stream and length is not None and length <= WHOLE_BODY_MAX and \
                    not sink.prepared:
                # A small JSON answer goes back in one write: cheaper than streaming it.
                await self._forward_whole(answer, sink, ctx, timeout_s)
                return
            with reading_answer(cfg.name, timeout_s):
                first = await answer.chunk(read_timeout)
            ctx.mark_first_byte()
            await sink.start(answer.status, response_headers(answer.header_pairs()),
                             None if is_stream else length, is_stream)
            counter = UsageCounter(self.metrics, ctx.model)  # an adapter's under its own name
            counter.feed(first)
            await sink.write(first)
            try:
                while chunk := await answer.chunk(read_timeout):
                    counter.feed(chunk)
                    if is_stream and b"data: [DONE]" in chunk:
                        # Clients such as the openai SDK hang up as soon as they see this:
                        # from here on a disconnect is not a failure.
                        ctx.delivered = True
                    await sink.write(chunk)
            except TimeoutError:
                ctx.error = "stream stalled"
                await sink.abort(BackendTimeout(f"model {cfg.name} sent nothing for "
                                                f"{timeout_s:g} s mid-answer"))
                return
            except upstream.UpstreamError as exc:
                ctx.error = "backend died mid-answer"
                await sink.abort(BackendError(f"model {cfg.name}: the backend failed mid-answer "
                                              f"({type(exc).__name__})"))
                return
            counter.finish()
            await sink.finish()
        finally:
            # An answer not read to its end drops its connection at once (the client went
            # away mid-stream), so the backend sees the disconnect and stops generating; a
            # finished one goes back to the pool.
            answer.close()


class ResponseSink:
    """The client's response: prepared late (after the first upstream byte) or early
    (to send SSE loading comments while a model starts), and knows which it is."""

    def __init__(self, request: web.Request, ctx: RequestContext) -> None:
        self.request = request
        self.ctx = ctx
        self.response: web.StreamResponse | None = None
        self.sse_early = False
        # A JSON answer for a client that already holds an early event stream, kept whole
        # and sent as one SSE event: SSE parsers silently skip raw JSON lines.
        self.held: bytearray | None = None
        self.held_status = 200

    @property
    def prepared(self) -> bool:
        return self.response is not None

    async def start_sse_early(self) -> None:
        response = web.StreamResponse(status=200, headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Request-ID": self.ctx.request_id})
        await response.prepare(self.request)
        self.response, self.sse_early = response, True
        self.ctx.status = 200

    async def comment(self, text: str) -> None:
        if self.response is None:
            await self.start_sse_early()
        assert self.response is not None
        data = f": {text}\n\n".encode()
        await self.response.write(data)
        self.ctx.bytes_out += len(data)

    def whole(self, status: int, headers: CIMultiDict[str], body: bytes) -> None:
        """The whole answer at once; the handler returns it and aiohttp sends it."""
        headers["X-Request-ID"] = self.ctx.request_id
        self.response = web.Response(status=status, headers=headers, body=body)
        self.ctx.status = status
        self.ctx.bytes_out += len(body)

    async def start(self, status: int, headers: CIMultiDict[str], length: int | None,
                    is_stream: bool = True) -> None:
        if self.response is not None:
            if status >= 400:
                self.ctx.status = status
            if not is_stream:
                self.held, self.held_status = bytearray(), status
            return  # the early SSE response already carries status 200
        headers["X-Request-ID"] = self.ctx.request_id
        response = web.StreamResponse(status=status, headers=headers)
        if length is not None:
            response.content_length = length
        await response.prepare(self.request)
        self.response = response
        self.ctx.status = status

    async def write(self, data: bytes) -> None:
        if data:
            if self.held is not None:
                self.held += data
                return
            assert self.response is not None
            await self.response.write(data)
            self.ctx.bytes_out += len(data)

    async def finish(self) -> None:
        if self.response is not None:
            if self.held is not None:
                data = held_as_event(self.held_status, bytes(self.held))
                self.held = None
                await self.response.write(data)
                self.ctx.bytes_out += len(data)
            await self.response.write_eof()

    async def abort(self, error: GatewayError) -> None:
        """An error after the status line went out. An SSE client is told in-band and its
        stream ends well-formed, so its connection stays usable: cutting it would break the
        client's next request on it. Any other body is cut short, with the connection."""
        self.ctx.error = self.ctx.error or error.message
        if self.response is None:
            raise error
        if self.response.content_type == "text/event-stream" or self.sse_early:
            payload = dict(error.body())
            payload["error"]["status"] = error.status
            data = f"data: {json.dumps(payload)}\n\n".encode()
            await self.response.write(data)
            self.ctx.bytes_out += len(data)
            if self.ctx.status < 400:
                self.ctx.status = error.status
            await self.response.write_eof()
            return
        await self.response.write_eof()
        if self.request.transport is not None:
            self.request.transport.close()


def held_as_event(status: int, body: bytes) -> bytes:
    """A JSON answer as one SSE event; an error in the shape of the gateway's in-stream errors."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if status >= 400:
        if not (isinstance(doc, dict) and isinstance(doc.get("error"), dict)):
            text = body.decode("utf-8", "replace").strip() or f"HTTP {status}"
            doc = BackendError(f"the backend answered {status}: {text}").body()
        doc["error"].setdefault("status", status)
    if doc is None:
        lines = body.decode("utf-8", "replace").splitlines() or [""]
        return "".join(f"data: {line}\n" for line in lines).encode() + b"\n"
    return f"data: {json.dumps(doc)}\n\n".encode()


class UsageCounter:
    """Counts tokens from the backend's ``usage`` without parsing the answer.

    OpenAI-style answers carry ``usage`` near their end (a stream in its last event), so only
    the last few KB are kept (a rolling window, trimmed in bulk so each chunk costs an append)
    and the two counts are read from the last ``"usage"`` object in it. A JSON parse of every
    answer would cost more than the rest of the proxy path for large ones (embeddings).
    """

    TAIL = 4096
    COUNT = re.compile(rb'"(prompt|completion)_tokens"\s*:\s*(\d+)')

    def __init__(self, metrics: Metrics, model: str) -> None:
        self.metrics, self.model = metrics, model
        self.tail = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.tail += chunk
        if len(self.tail) > 2 * self.TAIL:
            del self.tail[:-self.TAIL]

    def finish(self) -> None:
        for kind, value in self.counts(bytes(self.tail)).items():
            self.metrics.count_tokens(self.model, kind, value)

    @classmethod
    def counts(cls, data: bytes) -> dict[str, int]:
        at = data.rfind(b'"usage"')
        if at < 0:
            return {}
        # The usage object is flat and small; nested *_details keys do not match the pattern.
        window = data[at:at + 512]
        end = window.find(b"}")
        found = {m.group(1).decode(): int(m.group(2))
                 for m in cls.COUNT.finditer(window[:end] if end > 0 else window)}
        return found

