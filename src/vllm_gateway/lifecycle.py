"""The lifecycle of one model server as an explicit state machine (pure, no I/O).

Every change of state goes through :meth:`Lifecycle.move`, which refuses
moves the table does not allow, so a bug shows up as an error at the place it
happens rather than as a model stuck in a state nobody expected.
"""

from __future__ import annotations

import enum
from collections.abc import Callable


class State(str, enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"


ALLOWED: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.STARTING}),
    # A start ends ready, or failed (exited, timed out), or stopping (cancelled by shutdown/unload).
    State.STARTING: frozenset({State.READY, State.FAILED, State.STOPPING}),
    # A ready server is stopped on purpose, or found dead/hung.
    State.READY: frozenset({State.STOPPING, State.FAILED}),
    State.STOPPING: frozenset({State.STOPPED}),
    # A failed server may still have processes to clean up, or be retried.
    State.FAILED: frozenset({State.STARTING, State.STOPPING, State.STOPPED}),
}

# States in which the model holds (or may still hold) GPU memory.
HOLDS_MEMORY = frozenset({State.STARTING, State.READY, State.STOPPING})


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

    def move(self, new: State) -> None:
        old = self._state
        if new not in ALLOWED[old]:
            raise IllegalTransition(f"model {self.name}: cannot go from {old.value} to {new.value}")
        self._state = new
        if self._on_change is not None:
            self._on_change(old, new)
