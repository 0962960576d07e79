"""Per-model admission: a bounded waiting room in front of a fixed number of backend slots.

Correct by construction under cancellation: the counters are nothing but the
number of live tickets in each :class:`TicketState`, and every change to them
happens synchronously (no ``await`` between the admission check and the
increment, none anywhere in the release path). A cancellation can therefore
only land *between* updates, never inside one, so there is nothing to undo
and no "already decremented" flag to get wrong.

Typical use by a request handler::

    async with limiter.admit() as ticket:      # may raise QueueFull (nothing counted then)
        await ensure_model_running()           # ticket counts in `queued`
        await ticket.activate()                # FIFO wait; now counts in `in_flight`
        await proxy_to_backend()
    # whatever happened inside, the ticket's count is gone here
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType

from .errors import TooManyRequests

log = logging.getLogger(__name__)

# Weight of the newest slot hold time in the moving average behind Retry-After.
HOLD_EMA_ALPHA = 0.2
# Hold time assumed before any request of the model has finished.
INITIAL_HOLD_S = 1.0
RETRY_AFTER_MIN_S = 1
RETRY_AFTER_MAX_S = 60


class QueueFull(TooManyRequests):
    """The model's waiting room is full; the request was not admitted (nothing was counted).

    The client's 429, with ``Retry-After`` from ``retry_after_s`` (which the manager
    may still raise, for a model that is loading, before the answer goes out).
    """

    def __init__(
        self,
        *,
        model: str,
        max_concurrent: int,
        max_queue: int,
        in_flight: int,
        queued: int,
        retry_after_s: int,
    ) -> None:
        super().__init__(
            f"model {model} is at its limits: {in_flight} in flight (max_concurrent "
            f"{max_concurrent}) and {queued} queued (max_queue {max_queue}); retry later"
        )
        self.model = model
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.in_flight = in_flight
        self.queued = queued
        self.retry_after_s = retry_after_s

    @property
    def retry_after_s(self) -> int:
        return self._retry_after_s

    @retry_after_s.setter
    def retry_after_s(self, seconds: int) -> None:
        self._retry_after_s = seconds
        self.headers["Retry-After"] = str(seconds)


class TicketState(enum.Enum):
    WAITING = "waiting"  # counted in Limiter.queued
    ACTIVE = "active"  # holds a slot, counted in Limiter.in_flight
    DONE = "done"  # released, counted nowhere


class Ticket:
    """One admitted request. Created by :meth:`Limiter.admit`, released when its context exits."""

    __slots__ = ("_active_since", "_limiter", "_state", "_waiter")

    def __init__(self, limiter: Limiter) -> None:
        self._limiter = limiter
        self._state = TicketState.WAITING
        # Set only while activate() is blocked; the limiter resolves it when it hands over a slot.
        self._waiter: asyncio.Future[None] | None = None
        self._active_since = 0.0

    @property
    def state(self) -> TicketState:
        return self._state

    async def activate(self) -> None:
        """Wait first-come-first-served for a slot; on return the ticket is ACTIVE.

        Returns without yielding to the event loop when a slot is free and nobody
        waits. If the task is cancelled at the moment a slot is handed over, this
        raises CancelledError with the ticket already ACTIVE; the context exit then
        gives the slot back, so it is never lost.
        """
        if self._state is TicketState.ACTIVE:
            return
        if self._state is TicketState.DONE:
            raise RuntimeError("activate() on a ticket that was already released")
        if self._waiter is not None:
            raise RuntimeError("activate() is already waiting for this ticket")
        limiter = self._limiter
        if limiter._try_grant(self):
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        limiter._waiters[self] = None
        try:
            await waiter
        finally:
            # Granted, cancelled or released under us: in every case we no longer wait.
            # A hand-over already removed us; this covers cancellation and errors.
            self._waiter = None
            limiter._waiters.pop(self, None)


class _Admission(AbstractAsyncContextManager[Ticket]):
    """The context of one ticket. Neither method ever suspends, so neither can be cancelled midway."""

    __slots__ = ("_limiter", "_ticket")

    def __init__(self, limiter: Limiter) -> None:
        self._limiter = limiter
        self._ticket: Ticket | None = None

    async def __aenter__(self) -> Ticket:
        if self._ticket is not None:
            raise RuntimeError("an admission context can be entered only once")
        self._ticket = self._limiter._admit()
        return self._ticket

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._ticket is not None:
            self._limiter._release(self._ticket)


class Limiter:
    """Admission and FIFO slot allocation for one model.

    A request is admitted iff ``in_flight + queued < max_concurrent + max_queue``:
    free slots go first to tickets already admitted (they will claim them), and
    only what is left over counts against ``max_queue``. So with a ready model a
    request that can take a slot at once is always admitted (even with
    ``max_queue == 0``), and while the model starts at most
    ``max_concurrent + max_queue`` requests are held.
    """

    def __init__(
        self,
        model: str,
        max_concurrent: int,
        max_queue: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        on_change: Callable[[Limiter], None] | None = None,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self._model = model
        self._max_concurrent = max_concurrent
        self._max_queue = max_queue
        self._clock = clock
        # Called synchronously, once per operation, after the counters changed and are consistent.
        self.on_change = on_change
        self._in_flight = 0
        self._queued = 0
        # Tickets blocked in activate(), oldest first (dicts keep insertion order, remove in O(1)).
        self._waiters: dict[Ticket, None] = {}
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._last_idle_at: float | None = None
        self._avg_hold_s: float | None = None

    @property
    def model(self) -> str:
        return self._model

    @property
    def max_concurrent(self) -> int:
        return self._max_concurrent

    @property
    def max_queue(self) -> int:
        return self._max_queue

    @property
    def in_flight(self) -> int:
        """Requests holding a slot at the backend."""
        return self._in_flight

    @property
    def queued(self) -> int:
        """Requests admitted but not holding a slot (waiting for the model to start or for a slot)."""
        return self._queued

    @property
    def idle(self) -> bool:
        return self._in_flight == 0 and self._queued == 0

    @property
    def last_idle_at(self) -> float | None:
        """Clock time the limiter last became idle; None if it never held a request."""
        return self._last_idle_at

    @property
    def avg_hold_s(self) -> float:
        """Moving average of how long a request holds a slot."""
        return INITIAL_HOLD_S if self._avg_hold_s is None else self._avg_hold_s

    @property
    def retry_after_s(self) -> int:
        """Rough seconds until a newly queued request would get a slot."""
        estimate = math.ceil(self.avg_hold_s * (self._queued + 1) / self._max_concurrent)
        return max(RETRY_AFTER_MIN_S, min(RETRY_AFTER_MAX_S, estimate))

    def set_max_concurrent(self, max_concurrent: int) -> None:
        """Change the number of slots now (a model's replicas come and go): new slots go to
        the oldest waiters at once; with fewer, tickets already active keep theirs."""
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
        if max_concurrent == self._max_concurrent:
            return
        self._max_concurrent = max_concurrent
        if self._waiters:  # not idle then, so the moment it last became idle stays as it was
            self._hand_over()
            self._changed()

    def admit(self) -> AbstractAsyncContextManager[Ticket]:
        """Context holding one ticket; entering raises QueueFull when there is no room."""
        return _Admission(self)

    async def wait_idle(self) -> None:
        """Return once nothing is queued or in flight (immediately if that is so now)."""
        loop = asyncio.get_running_loop()
        while not self.idle:
            waiter: asyncio.Future[None] = loop.create_future()
            self._idle_waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._idle_waiters:
                    self._idle_waiters.remove(waiter)

    def _admit(self) -> Ticket:
        if self._in_flight + self._queued >= self._max_concurrent + self._max_queue:
            raise QueueFull(
                model=self._model,
                max_concurrent=self._max_concurrent,
                max_queue=self._max_queue,
                in_flight=self._in_flight,
                queued=self._queued,
                retry_after_s=self.retry_after_s,
            )
        ticket = Ticket(self)
        self._queued += 1
        self._changed()
        return ticket

    def _try_grant(self, ticket: Ticket) -> bool:
        # Nobody may overtake a ticket already waiting for a slot.
        if self._waiters or self._in_flight >= self._max_concurrent:
            return False
        self._grant(ticket)
        self._changed()
        return True

    def _grant(self, ticket: Ticket) -> None:
        ticket._state = TicketState.ACTIVE
        ticket._active_since = self._clock()
        self._queued -= 1
        self._in_flight += 1

    def _release(self, ticket: Ticket) -> None:
        previous = ticket._state
        if previous is TicketState.DONE:
            return
        ticket._state = TicketState.DONE
        if previous is TicketState.WAITING:
            self._queued -= 1
            self._waiters.pop(ticket, None)
            waiter = ticket._waiter
            if waiter is not None and not waiter.done():
                # Only reachable when activate() runs in another task than the context's owner.
                waiter.set_exception(RuntimeError("ticket released while activate() was waiting"))
        else:
            self._in_flight -= 1
            self._record_hold(self._clock() - ticket._active_since)
            self._hand_over()
        self._changed()

    def _hand_over(self) -> None:
        """Give free slots to the oldest live waiters, moving their counts right now."""
        while self._waiters and self._in_flight < self._max_concurrent:
            ticket = next(iter(self._waiters))
            del self._waiters[ticket]
            waiter = ticket._waiter
            if waiter is None or waiter.done():
                # Cancelled but its task has not run yet; it stays queued until its context exits.
                continue
            self._grant(ticket)
            waiter.set_result(None)

    def _record_hold(self, held_s: float) -> None:
        sample = max(0.0, held_s)
        if self._avg_hold_s is None:
            self._avg_hold_s = sample
        else:
            self._avg_hold_s += HOLD_EMA_ALPHA * (sample - self._avg_hold_s)

    def _changed(self) -> None:
        # Every operation that ends idle started busy, so this is the moment it became idle.
        if self.idle:
            self._last_idle_at = self._clock()
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        if self.on_change is not None:
            try:
                self.on_change(self)
            except Exception:
                # A metrics push must never break admission or leave a release half done.
                log.exception("admission on_change callback failed for model %r", self._model)
