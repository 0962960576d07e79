"""One model server's runtime record (one replica): its lifecycle, server handle and placement.

A model's replicas share its one queue (the admission limiter) and its request rate,
owned by its :class:`~vllm_gateway.runtime.replicas.ReplicaSet`. The
:class:`~vllm_gateway.runtime.manager.Manager` and the services it owns
(transitions, monitor, scaler) are the only writers of these fields; an ``Instance`` is
a record with a few derived views, not an actor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..admission import Limiter
from ..config import ModelConfig
from ..errors import GatewayError
from ..handles import LogBuffer, ServerHandle
from ..lifecycle import SERVING, Lifecycle, State
from .costs import DecayingRate


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
    def __init__(self, cfg: ModelConfig, index: int, limiter: Limiter, rate: DecayingRate,
                 on_state: Callable[[Instance, State, State], None]) -> None:
        self.cfg = cfg
        self.name = cfg.name
        # The replica's number within its model: 0 is the first, which always exists.
        self.index = index
        self.key = cfg.name if index == 0 else f"{cfg.name}#{index}"
        self.life = Lifecycle(self.key, lambda old, new: on_state(self, old, new))
        self.limiter = limiter  # the model's one queue, shared by its replicas
        self.changes = Changes()
        self.handle: ServerHandle | None = None
        self.port: int | None = None
        # GPU ids this model holds (empty tuple: a model slot but no GPU); None: holds nothing.
        self.placement: tuple[int, ...] | None = None
        # Memory counts as used once the server was launched; before that it is reserved.
        self.launched = False
        self.wake_sent = False  # while waking: /wake_up was sent, the memory is coming back
        self.stopping_asleep = False  # stopping from sleep: it holds its residual until gone
        self.gpu_memory_utilization = 0.9
        # The start, stop, sleep, wake or clean-up in progress; requests wait on it, never
        # cancel it. Its result is the error a waiting request should see, if any.
        self.transition: asyncio.Task[GatewayError | None] | None = None
        self.watcher: asyncio.Task[None] | None = None  # notices the server dying
        # Requests past the readiness check bound to this replica (waiting for a slot or in
        # flight), and those of them holding a slot here.
        self.committed = 0
        self.in_flight = 0
        self.claimed_at = 0.0  # monotonic: when its memory was claimed (start order)
        # GPU memory per GPU it is accounted with: vram_gb, or for vram_gb: auto the last
        # figure measured; what NVML saw it hold after it became ready, and a warning when
        # that is over vram_gb.
        self.vram_gb = cfg.vram_gb
        self.measured_vram_gb: float | None = None
        self.vram_warning: str | None = None
        self.last_used: float | None = None  # wall clock, for people
        self.last_used_mono = 0.0  # monotonic, for LRU order
        self.ready_since = 0.0  # monotonic: when it last became ready (patience of pressers)
        self.starting_since: float | None = None
        self.last_start_s: float | None = None
        self.last_error: str | None = None
        self.failed_starts = 0
        self.retry_at: float | None = None  # set as BACKOFF is entered: when the next try is
        self.backend_metrics: dict[str, float] | None = None
        self.failed_probes = 0
        # Arrival times of requests for other models waiting for the memory this one holds.
        self.pressure: list[float] = []
        self.rate = rate  # the model's, shared by its replicas
        # Sleep tier: the level it sleeps at now, the host RAM it holds, the answer its wake
        # check expects (recorded after a cold start) and the GPU memory it still holds asleep.
        self.sleep_level: int | None = None
        self.host_gb = 0.0
        self.asleep_since: float | None = None
        self.last_wake_s: float | None = None
        self.reference_answer: str | None = None
        self.residual_gb: float | None = None  # measured by NVML; None: sleep_vram_gb
        self.wake_check_failures = 0

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

    def held_gb(self, on_gpu: bool = False) -> float:
        """GPU memory per GPU of its placement that this model has reserved, or with ``on_gpu``
        holds now: a wake reserves the full size once decided, but until ``/wake_up`` is sent
        (after the room is made) the server still holds only its residual; a sleeper being
        stopped holds its residual until its processes are gone."""
        if not self.placement:
            return 0.0
        if self.state is State.SLEEPING or (
                self.state is State.STOPPING and self.stopping_asleep) or (
                on_gpu and self.state is State.WAKING and not self.wake_sent):
            return self.residual_gb if self.residual_gb is not None else self.cfg.sleep_vram_gb
        return self.vram_gb

    def pressed_before(self, arrived: float) -> bool:
        """Whether a request for another model, waiting for this one's memory, came first."""
        return bool(self.pressure) and min(self.pressure) < arrived

    def holds_requests(self) -> bool:
        # Under pressure, requests still waiting in the queue do not hold the model: they
        # arrived after the request that needs the room, and will bring it back afterwards.
        return self.committed > 0 or self.in_flight > 0 or (
            self.limiter.queued > 0 and not self.pressure)

    def evictable(self) -> bool:
        """Idle and settled: it may be stopped, or put to sleep, to make room."""
        if self.cfg.pinned or not self.transition_done():
            return False
        if self.state is State.SLEEPING:
            return self.limiter.queued == 0
        return self.state is State.READY and not self.holds_requests()

    def serving(self) -> bool:
        return self.state in SERVING

    def transition_done(self) -> bool:
        return self.transition is None or self.transition.done()

    def touch(self, now: float, wall: float) -> None:
        self.last_used = wall
        self.last_used_mono = now
        self.changes.notify()

    def said(self, text: str) -> str:
        """An event's text, naming the replica where the model has more than its first."""
        return text if self.index == 0 else f"replica {self.index}: {text}"

    def last_lines(self, n: int = 20) -> list[str]:
        return self.logs.tail(n) if self.logs is not None else []
