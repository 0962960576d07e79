"""One model and its replicas: the model's one queue in front of its servers.

Each replica is its own server (an :class:`Instance`: lifecycle, placement, port,
handle) with ``max_concurrent`` slots of its own; the model has one queue, whose
slot count is ``max_concurrent`` times the replicas that are ready (at least one,
so a cold start holds as many requests as before). A request that got its slot
goes to the ready replica with the fewest requests in flight.

The first replica always exists (it is the model's record while nothing runs);
further ones are added when the model scales up and dropped once they are down
again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..admission import Limiter
from ..config import FaultConfig, ModelConfig
from ..lifecycle import DOWN, RUNNING, State
from .costs import DecayingRate
from .instance import Instance

# The state a model shows when its replicas differ: the first of these that one of them is
# in (ready if any is ready), else its first replica's.
BEST_STATES = (State.READY, State.DRAINING, State.WAKING, State.STARTING, State.SLEEPING,
               State.STOPPING)


class ReplicaSet:
    def __init__(self, cfg: ModelConfig, clock: Callable[[], float],
                 on_state: Callable[[Instance, State, State], None],
                 on_counts: Callable[[ReplicaSet], None]) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self._clock = clock
        self._on_state = on_state
        self.limiter = Limiter(cfg.name, cfg.max_concurrent, cfg.max_queue, clock)
        self.limiter.on_change = lambda _limiter: on_counts(self)
        self.rate = DecayingRate()
        self.first = self._make(0)
        self.replicas: list[Instance] = [self.first]
        # Arrival times of the requests now waiting for a slot (scale-up looks at the oldest).
        self._slot_waits: dict[int, float] = {}
        self._next_wait = 0
        # A default model: since when its room has been free (None: not free, or running).
        self.free_since: float | None = None
        # No scale-up before this (monotonic): replicas beyond the first failed to start, this
        # many in a row (the delay doubles like a model's own backoff).
        self.scale_retry_at = 0.0
        self.scale_failures = 0

    def _make(self, index: int) -> Instance:
        return Instance(self.cfg, index, self.limiter, self.rate, self._on_state)

    # -- the replicas ---------------------------------------------------------------------

    def add(self) -> Instance:
        """A new replica record (stopped), numbered with the lowest free number."""
        used = {r.index for r in self.replicas}
        index = next(i for i in range(1, len(used) + 2) if i not in used)
        replica = self._make(index)
        self.replicas.append(replica)
        return replica

    def drop_finished(self, now: float, faults: FaultConfig) -> None:
        """Forget replicas beyond the first that are down and settled; one whose start failed
        holds further scale-ups back, doubling like a failed start's backoff."""
        kept = []
        for r in self.replicas:
            if r is not self.first and r.state in DOWN and r.transition_done() \
                    and r.committed == 0:
                if r.state in (State.BACKOFF, State.HELD):
                    self.scale_failures += 1
                    delay = min(faults.start_backoff_s * 2 ** (self.scale_failures - 1),
                                faults.start_backoff_max_s)
                    self.scale_retry_at = max(self.scale_retry_at, now + delay)
                continue
            kept.append(r)
        self.replicas = kept

    def holding(self) -> list[Instance]:
        """Replicas that hold (or have reserved) memory, in start order."""
        return sorted((r for r in self.replicas if r.placement is not None and r.state in RUNNING),
                      key=lambda r: (r.claimed_at, r.index))

    def awake(self) -> list[Instance]:
        """Replicas that serve or will serve soon: neither asleep nor on the way down."""
        return [r for r in self.replicas
                if r.state in (State.STARTING, State.READY, State.WAKING)]

    def ready(self) -> list[Instance]:
        return [r for r in self.replicas if r.state is State.READY]

    def lead(self) -> Instance:
        """The replica whose state the model shows."""
        for state in BEST_STATES:
            for replica in self.holding() or self.replicas:
                if replica.state is state:
                    return replica
        return self.first

    @property
    def state(self) -> State:
        return self.lead().state

    # -- slots ----------------------------------------------------------------------------

    def update_slots(self) -> None:
        self.limiter.set_max_concurrent(self.cfg.max_concurrent * max(1, len(self.ready())))

    def pick(self, arrived: float) -> Instance | None:
        """The ready replica with the fewest requests in flight (start order on ties), among
        those no request for another model waits on since before ``arrived``."""
        open_ = [r for r in self.ready() if not r.pressed_before(arrived)]
        if not open_:
            return None
        order = {id(r): n for n, r in enumerate(self.holding())}
        return min(open_, key=lambda r: (r.in_flight, order.get(id(r), 0)))

    @contextmanager
    def waiting_for_slot(self) -> Iterator[None]:
        """Count a request as waiting for a slot (synchronously in, synchronously out)."""
        self._next_wait += 1
        token = self._next_wait
        self._slot_waits[token] = self._clock()
        try:
            yield
        finally:
            del self._slot_waits[token]

    def oldest_slot_wait(self) -> float | None:
        """Since when the longest-waiting request has waited for a slot; None: nobody does."""
        return min(self._slot_waits.values(), default=None)

    @property
    def slot_waiters(self) -> int:
        return len(self._slot_waits)

    # -- scaling bounds -------------------------------------------------------------------

    @property
    def floor(self) -> int:
        """Replicas never stopped for being idle: ``replicas.min``, and one for a default."""
        return max(self.cfg.replicas.min, 1 if self.cfg.default else 0)

    def find(self, key: str) -> Instance | None:
        return next((r for r in self.replicas if r.key == key), None)
