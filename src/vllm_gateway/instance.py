"""One model's runtime state: its lifecycle, admission limiter, server handle and placement.

The :class:`~vllm_gateway.manager.Manager` is the only writer of these fields;
an ``Instance`` is a record with a few derived views, not an actor.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from .admission import Limiter
from .config import FaultConfig, ModelConfig
from .errors import GatewayError
from .launchers.base import LogBuffer, ServerHandle
from .lifecycle import Lifecycle, State


class Changes:
    """A broadcast 'something changed' signal: waiters wake on the next notify."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._waiting = 0

    def notify(self) -> None:
        if self._waiting:
            self._event.set()
            self._event = asyncio.Event()

    async def wait(self, timeout: float | None = None) -> None:
        event = self._event
        self._waiting += 1
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            self._waiting -= 1


class Instance:
    def __init__(self, cfg: ModelConfig, on_state: Callable[[Instance, State, State], None],
                 on_counts: Callable[[Instance], None]) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.life = Lifecycle(cfg.name, lambda old, new: on_state(self, old, new))
        self.limiter = Limiter(cfg.name, cfg.max_concurrent, cfg.max_queue)
        self.limiter.on_change = lambda _limiter: on_counts(self)
        self.changes = Changes()
        self.handle: ServerHandle | None = None
        self.port: int | None = None
        # GPU ids this model holds (empty tuple: holds a model slot but no GPU); None: holds nothing.
        self.placement: tuple[int, ...] | None = None
        # Memory counts as used once the server was launched; before that it is reserved.
        self.launched = False
        self.gpu_memory_utilization = 0.9
        # The start, stop or clean-up in progress; requests wait on it, never cancel it.
        self.transition: asyncio.Task[GatewayError | None] | None = None
        self.watcher: asyncio.Task[None] | None = None  # notices the server dying while ready
        self.draining = False  # set by unload/restart: new requests wait until it is stopped
        self.committed = 0  # requests past the readiness check (waiting for a slot or in flight)
        self.last_used: float | None = None  # wall clock, for people
        self.last_used_mono = 0.0  # monotonic, for LRU order
        self.starting_since: float | None = None
        self.last_start_s: float | None = None
        self.last_error: str | None = None
        self.failed_starts = 0
        self.retry_at: float | None = None  # monotonic time before which no start is tried
        self.backend_metrics: dict[str, float] | None = None
        self.failed_probes = 0
        # Arrival times of requests for other models waiting for the memory this one holds.
        self.pressure: list[float] = []

    @property
    def state(self) -> State:
        return self.life.state

    @property
    def base_url(self) -> str | None:
        if self.cfg.url is not None:
            return self.cfg.url.rstrip("/")
        return self.handle.base_url if self.handle is not None else None

    @property
    def logs(self) -> LogBuffer | None:
        return self.handle.logs if self.handle is not None else None

    def pressed_before(self, arrived: float) -> bool:
        """Whether a request for another model, waiting for this one's memory, came first."""
        return bool(self.pressure) and min(self.pressure) < arrived

    def evictable(self) -> bool:
        # Under pressure, requests still waiting in the queue do not hold the model: they
        # arrived after the request that needs the room, and will start it again afterwards.
        holds = self.committed > 0 or self.limiter.in_flight > 0 or (
            self.limiter.queued > 0 and not self.pressure)
        return (self.state is State.READY and not holds and not self.cfg.pinned
                and not self.draining and self.transition_done())

    def transition_done(self) -> bool:
        return self.transition is None or self.transition.done()

    def touch(self) -> None:
        self.last_used = time.time()
        self.last_used_mono = time.monotonic()
        self.changes.notify()

    def last_lines(self, n: int = 20) -> list[str]:
        return self.logs.tail(n) if self.logs is not None else []

    def backoff_s(self, faults: FaultConfig) -> float:
        if self.failed_starts >= faults.max_failed_starts:
            return faults.start_backoff_max_s
        delay = faults.start_backoff_s * (2 ** max(self.failed_starts - 1, 0))
        return float(min(delay, faults.start_backoff_max_s))

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        shows_process = self.state in (State.STARTING, State.READY, State.STOPPING)
        pid = self.handle.pid if self.handle is not None and shows_process else None
        return {
            "name": self.name,
            "state": self.state.value,
            "vram_gb": self.cfg.vram_gb,
            "gpu_count": self.cfg.gpu_count,
            "gpus": list(self.placement or ()),
            "in_flight": self.limiter.in_flight,
            "queued": self.limiter.queued,
            "last_used": self.last_used,
            "port": self.port if shows_process else None,
            "pid": pid,
            "max_concurrent": self.cfg.max_concurrent,
            "max_queue": self.cfg.max_queue,
            "aliases": list(self.cfg.aliases),
            "managed": self.cfg.managed,
            "pinned": self.cfg.pinned,
            "launcher": self.cfg.launcher if self.cfg.managed else "url",
            "starting_for_s": round(now - self.starting_since, 1)
            if self.starting_since is not None and self.state is State.STARTING else None,
            "last_start_s": self.last_start_s,
            "error": self.last_error,
            "failed_starts": self.failed_starts,
            "retry_in_s": round(max(self.retry_at - now, 0.0), 1)
            if self.retry_at is not None and self.state is State.FAILED else None,
            # vLLM's own gauges are stale once the server is gone.
            "backend": self.backend_metrics if self.state is State.READY else None,
        }
