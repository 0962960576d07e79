"""Logging as text for people or one JSON object per line for log shippers."""

from __future__ import annotations

import atexit
import collections
import contextlib
import json
import logging
import threading
import time
from typing import Any, TextIO

# Attributes every LogRecord has; anything else was passed through ``extra``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key == "request" and hasattr(value, "fields"):
                doc.update(value.fields())  # a request's log line: its structured fields
            elif key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    """The stdlib's text format, with the date part formatted once per second: on the proxy
    path the one log line per request is a noticeable share of the gateway's own CPU."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._stamp},{int(record.msecs):03d}"


class BatchWriter(logging.Handler):
    """Hands records to a writer thread that formats and writes them in batches.

    On the proxy path the one access line per request was a noticeable share of the
    gateway's CPU: formatting, a write and a flush per line, and a thread woken per line.
    Here a record costs the event loop one append; every ``interval_s`` the thread takes
    what piled up, formats it and writes it with one write and one flush. Records stay in
    order; what is pending is written when the process exits (``close``).
    """

    def __init__(self, target: logging.StreamHandler[TextIO], interval_s: float = 0.05) -> None:
        super().__init__()
        self.target = target
        self.interval_s = interval_s
        self.pending: collections.deque[logging.LogRecord] = collections.deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        self.pending.append(record)  # atomic: no lock, no wake-up

    def handle(self, record: logging.LogRecord) -> bool:
        # logging.Handler.handle takes a lock per record; the deque needs none.
        self.pending.append(record)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()
        self.flush()

    def flush(self) -> None:
        lines = []
        target = self.target
        while self.pending:
            record = self.pending.popleft()
            if record.levelno < target.level or not target.filter(record):
                continue
            try:
                lines.append(target.format(record))
            except Exception:  # noqa: BLE001 - as logging does: report it, write the rest
                target.handleError(record)
        if lines:
            # A closed or broken stream loses the lines, as logging's own handlers would.
            with target.lock or contextlib.nullcontext(), \
                    contextlib.suppress(OSError, ValueError):
                target.stream.write("\n".join(lines) + "\n")
                target.flush()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        self.flush()
        super().close()


def setup_logging(level: str, fmt: str) -> None:
    """Log through a batching writer thread, so the request path never blocks on a
    terminal or a slow disk; what is pending is written when the process exits."""
    handler: logging.StreamHandler[TextIO] = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    writer = BatchWriter(handler)
    atexit.register(writer.close)
    root.addHandler(writer)
    root.setLevel(level.upper())
    # The logging HOWTO's optimizations: no formatter here prints where a call came from,
    # the thread or the process, and finding them out costs a stack walk and syscalls on
    # every record.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # aiohttp's own access log would duplicate the gateway's one line per request.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(_drop_malformed_http)


def _drop_malformed_http(record: logging.LogRecord) -> bool:
    """aiohttp answers malformed HTTP with a 400 itself and logs a traceback for each one; a
    client could flood the log that way, so those records are dropped (real errors stay)."""
    from aiohttp.http_exceptions import BadHttpMessage, BadStatusLine

    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, (BadHttpMessage, BadStatusLine))
