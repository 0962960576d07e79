"""The lifecycle of one model server as an explicit state machine (pure, no I/O).

Every change of state goes through :meth:`Lifecycle.move`, a compare-and-set:
the caller names the state it read and the state it wants. A caller acting on a
stale read (another task moved the model meanwhile) gets ``False`` and plans
again; a move the table does not allow is a bug and raises at the place it
happens, rather than leaving a model in a state nobody expected.

The states say everything that decides behaviour; nothing lives in side flags:

- ``backoff``: a start failed; the next one is tried after a delay set as the state is entered.
- ``held``: starts failed too often in a row; given up until an operator asks (``/load``).
- ``failed``: a running server died or hung; the next request starts it again.
- ``draining``: finishing the requests already past admission, then it stops or sleeps.
- ``sleeping`` / ``waking``: the vLLM sleep tier (the server process stays, its GPU memory goes).
"""

from __future__ import annotations

import enum
from collections.abc import Callable


class State(str, enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    SLEEPING = "sleeping"
    WAKING = "waking"
    STOPPING = "stopping"
    FAILED = "failed"
    BACKOFF = "backoff"
    HELD = "held"


ALLOWED: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.STARTING}),
    # A start ends ready, or in backoff/held (exited, timed out), or stopping (unload, shutdown).
    State.STARTING: frozenset({State.READY, State.BACKOFF, State.HELD, State.STOPPING}),
    # A ready server drains before it stops or sleeps, is stopped at once (eviction of an idle
    # server, shutdown), or is found dead or hung.
    State.READY: frozenset({State.DRAINING, State.STOPPING, State.FAILED}),
    State.DRAINING: frozenset({State.STOPPING, State.SLEEPING, State.FAILED}),
    State.SLEEPING: frozenset({State.WAKING, State.STOPPING, State.FAILED}),
    # A failed wake stops the server; the waiting requests then get a cold start.
    State.WAKING: frozenset({State.READY, State.STOPPING, State.FAILED}),
    State.STOPPING: frozenset({State.STOPPED}),
    # A dead server's processes are cleaned up (stopping), then it starts again on demand.
    State.FAILED: frozenset({State.STARTING, State.STOPPING}),
    State.BACKOFF: frozenset({State.STARTING, State.STOPPED}),
    State.HELD: frozenset({State.STARTING, State.STOPPED}),
}

# States in which requests are sent to the server.
SERVING = frozenset({State.READY, State.DRAINING})
# States in which the server's processes may run.
RUNNING = frozenset({State.STARTING, State.READY, State.DRAINING, State.SLEEPING, State.WAKING,
                     State.STOPPING})
# States after which the model needs a new start; BACKOFF and HELD refuse it for a while.
DOWN = frozenset({State.STOPPED, State.FAILED, State.BACKOFF, State.HELD})


class IllegalTransition(RuntimeError):
    pass


class Lifecycle:
    def __init__(
        self, name: str, on_change: Callable[[State, State], None] | None = None
    ) -> None:
        self.name = name
        self._state = State.STOPPED
        self._on_change = on_change

    @property
    def state(self) -> State:
        return self._state

    def move(self, expected: State, new: State) -> bool:
        """Move from ``expected`` to ``new``; False (and no change) when the state is not
        ``expected`` any more. Raises IllegalTransition for a move the table forbids."""
        if new not in ALLOWED[expected]:
            raise IllegalTransition(
                f"model {self.name}: cannot go from {expected.value} to {new.value}")
        old = self._state
        if old is not expected:
            return False
        self._state = new
        if self._on_change is not None:
            self._on_change(old, new)
        return True
