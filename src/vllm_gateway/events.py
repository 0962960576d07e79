"""Recent lifecycle events (starts, evictions, failures), for people and the dashboard.

Each event is logged once, here, with the model's name; the bounded list
behind ``/gateway/events`` is read by the dashboard.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger("vllm_gateway.lifecycle")

WARNING_KINDS = frozenset({"failed", "crashed", "unhealthy", "start_timeout"})


@dataclass(frozen=True)
class Event:
    seq: int
    time: float
    model: str
    kind: str
    message: str


class EventLog:
    def __init__(self, max_events: int = 500) -> None:
        self._events: collections.deque[Event] = collections.deque(maxlen=max_events)
        self._seq = 0

    def add(self, model: str, kind: str, message: str) -> None:
        self._seq += 1
        self._events.append(Event(self._seq, time.time(), model, kind, message))
        level = logging.WARNING if kind in WARNING_KINDS else logging.INFO
        log.log(level, "model %s %s: %s", model, kind, message, extra={"model": model, "event": kind})

    def since(self, seq: int) -> dict[str, Any]:
        return {
            "events": [asdict(e) for e in self._events if e.seq > seq],
            "next": self._seq,
        }
