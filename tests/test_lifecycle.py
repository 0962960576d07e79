"""The lifecycle state machine: every pair of states, legal or not."""

from __future__ import annotations

import itertools

import pytest

from vllm_gateway.lifecycle import ALLOWED, IllegalTransition, Lifecycle, State

LEGAL = {
    (State.STOPPED, State.STARTING),
    (State.STARTING, State.READY), (State.STARTING, State.FAILED), (State.STARTING, State.STOPPING),
    (State.READY, State.STOPPING), (State.READY, State.FAILED),
    (State.STOPPING, State.STOPPED),
    (State.FAILED, State.STARTING), (State.FAILED, State.STOPPING), (State.FAILED, State.STOPPED),
}


def reach(state: State) -> Lifecycle:
    """A lifecycle brought to ``state`` through legal moves only."""
    paths = {
        State.STOPPED: [],
        State.STARTING: [State.STARTING],
        State.READY: [State.STARTING, State.READY],
        State.STOPPING: [State.STARTING, State.READY, State.STOPPING],
        State.FAILED: [State.STARTING, State.FAILED],
    }
    life = Lifecycle("m")
    for step in paths[state]:
        life.move(step)
    return life


@pytest.mark.parametrize("old,new", list(itertools.product(State, State)))
def test_every_transition(old: State, new: State) -> None:
    life = reach(old)
    if (old, new) in LEGAL:
        life.move(new)
        assert life.state is new
    else:
        with pytest.raises(IllegalTransition, match=f"{old.value} to {new.value}"):
            life.move(new)
        assert life.state is old


def test_table_matches_the_documented_moves() -> None:
    assert {(a, b) for a, targets in ALLOWED.items() for b in targets} == LEGAL


def test_observer_sees_each_move_once() -> None:
    seen: list[tuple[State, State]] = []
    life = Lifecycle("m", lambda old, new: seen.append((old, new)))
    life.move(State.STARTING)
    life.move(State.READY)
    assert seen == [(State.STOPPED, State.STARTING), (State.STARTING, State.READY)]
