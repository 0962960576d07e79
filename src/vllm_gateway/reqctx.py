"""What one request did, for its log line and its metrics."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

log = logging.getLogger("vllm_gateway.access")

CLIENT_CLOSED = 499  # nginx's convention for "the client went away first"


def new_request_id() -> str:
    return uuid.uuid4().hex


@dataclass
class RequestContext:
    request_id: str
    method: str
    path: str
    model: str = "-"
    status: int = 0
    started: float = field(default_factory=time.monotonic)
    queue_wait_s: float | None = None
    ttfb_s: float | None = None
    bytes_out: int = 0
    error: str | None = None
    delivered: bool = False  # the whole answer reached the client (e.g. a stream's [DONE])
    ended: float | None = None  # set by log_line: the line is formatted later, elsewhere

    def client_left(self) -> None:
        """The client hung up: a failure only if it had not got the whole answer."""
        if not self.delivered:
            self.status, self.error = CLIENT_CLOSED, "client disconnected"

    def mark_slot(self) -> None:
        self.queue_wait_s = time.monotonic() - self.started

    def mark_first_byte(self) -> None:
        if self.ttfb_s is None:
            self.ttfb_s = time.monotonic() - self.started

    def duration_s(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def fields(self) -> dict[str, object]:
        """The structured form of the log line (the JSON log format writes these)."""
        return {
            "request_id": self.request_id, "model": self.model, "status": self.status,
            "method": self.method, "path": self.path,
            "queue_wait_ms": None if self.queue_wait_s is None else round(self.queue_wait_s * 1000, 2),
            "ttfb_ms": None if self.ttfb_s is None else round(self.ttfb_s * 1000, 2),
            "duration_ms": round(self.duration_s() * 1000, 2), "bytes": self.bytes_out,
            "error": self.error,
        }

    def __str__(self) -> str:
        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value * 1000:.1f}ms"

        error = f" error={self.error!r}" if self.error else ""
        return (f"{self.request_id} {self.method} {self.path} model={self.model} "
                f"status={self.status} queue={ms(self.queue_wait_s)} ttfb={ms(self.ttfb_s)} "
                f"duration={ms(self.duration_s())} bytes={self.bytes_out}{error}")

    def log_line(self) -> None:
        # The context itself is the message (formatted only if a handler writes it) and the
        # one extra attribute, which the JSON formatter expands into its fields.
        if log.isEnabledFor(logging.INFO):
            self.ended = time.monotonic()
            log.info(self, extra={"request": self})
