"""Recent lifecycle events (starts, evictions, failures), for people and the dashboard.

Each event is logged once, here, with the model's name; the bounded list
behind ``/gateway/events`` is read by the dashboard.
"""

from __future__ import annotations

import collections
import enum
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger("vllm_gateway.lifecycle")



class EventKind(str, enum.Enum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"  # a start failed
    CRASHED = "crashed"  # a running server exited
    UNHEALTHY = "unhealthy"  # a running server stopped answering: killed
    EVICTED = "evicted"
    IDLE_STOP = "idle_stop"
    STOPPING = "stopping"
    STOPPED = "stopped"
    STOP_FAILED = "stop_failed"
    CLEANUP = "cleanup"
    ASLEEP = "asleep"
    WOKEN = "woken"
    SLEEP_FAILED = "sleep_failed"
    WAKE_FAILED = "wake_failed"
    DRAINING = "draining"
    NODE = "node"  # a cluster node joined or left
    SCALE_UP = "scale_up"  # another replica of a model is started (or woken)
    RESTORE = "restore"  # a default model comes back once its room stayed free
    VRAM_OVER = "vram_over"  # a server holds more GPU memory than its vram_gb


class StopReason(str, enum.Enum):
    """Why the gateway stops (or puts to sleep) a model it started."""

    LRU = "lru"  # room for another model
    IDLE = "idle"  # idle_timeout_s passed
    MANUAL = "manual"  # POST /gateway/models/{name}/unload or /sleep
    UNHEALTHY = "unhealthy"
    SHUTDOWN = "shutdown"
    SLEEP_TIMEOUT = "sleep_timeout"  # asleep for longer than sleep_timeout_s
    NODE_LOST = "node_lost"


WARNING_KINDS = frozenset({EventKind.FAILED, EventKind.CRASHED, EventKind.UNHEALTHY,
                           EventKind.SLEEP_FAILED, EventKind.WAKE_FAILED, EventKind.VRAM_OVER})


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

    def add(self, model: str, kind: EventKind, message: str) -> None:
        self._seq += 1
        self._events.append(Event(self._seq, time.time(), model, kind.value, message))
        level = logging.WARNING if kind in WARNING_KINDS else logging.INFO
        log.log(level, "model %s %s: %s", model, kind.value, message,
                extra={"model": model, "event": kind.value})

    def since(self, seq: int) -> dict[str, Any]:
        return {
            "events": [asdict(e) for e in self._events if e.seq > seq],
            "next": self._seq,
        }
