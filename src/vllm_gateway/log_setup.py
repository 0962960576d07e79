"""Logging as text for people or one JSON object per line for log shippers."""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import time
from typing import Any

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


class _HandOver(logging.handlers.QueueHandler):
    """Hands records to the writer thread as they are: formatting and writing happen there,
    not on the event loop (the stdlib's QueueHandler would format here)."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


def setup_logging(level: str, fmt: str) -> None:
    """Log through a queue to one writer thread, so the request path never blocks on a
    terminal or a slow disk; the writer drains the queue when the process exits."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, handler)
    listener.start()
    atexit.register(listener.stop)
    root.addHandler(_HandOver(records))
    root.setLevel(level.upper())
    # aiohttp's own access log would duplicate the gateway's one line per request.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(_drop_malformed_http)


def _drop_malformed_http(record: logging.LogRecord) -> bool:
    """aiohttp answers malformed HTTP with a 400 itself and logs a traceback for each one; a
    client could flood the log that way, so those records are dropped (real errors stay)."""
    from aiohttp.http_exceptions import BadHttpMessage, BadStatusLine

    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, (BadHttpMessage, BadStatusLine))
