"""The lifecycle state machine: every pair of states, legal or not, and compare-and-set."""

from __future__ import annotations

import itertools

import pytest

from vllm_gateway.lifecycle import ALLOWED, DOWN, RUNNING, IllegalTransition, Lifecycle, State

S = State
LEGAL = {
    (S.STOPPED, S.STARTING),
    (S.STARTING, S.READY), (S.STARTING, S.BACKOFF), (S.STARTING, S.HELD),
    (S.STARTING, S.STOPPING),
    (S.READY, S.DRAINING), (S.READY, S.STOPPING), (S.READY, S.FAILED),
    (S.DRAINING, S.STOPPING), (S.DRAINING, S.SLEEPING), (S.DRAINING, S.FAILED),
    (S.SLEEPING, S.WAKING), (S.SLEEPING, S.STOPPING), (S.SLEEPING, S.FAILED),
    (S.WAKING, S.READY), (S.WAKING, S.STOPPING), (S.WAKING, S.FAILED),
    (S.STOPPING, S.STOPPED),
    (S.FAILED, S.STARTING), (S.FAILED, S.STOPPING),
    (S.BACKOFF, S.STARTING), (S.BACKOFF, S.STOPPED),
    (S.HELD, S.STARTING), (S.HELD, S.STOPPED),
}
PATHS = {
    S.STOPPED: [],
    S.STARTING: [S.STARTING],
    S.READY: [S.STARTING, S.READY],
    S.DRAINING: [S.STARTING, S.READY, S.DRAINING],
    S.SLEEPING: [S.STARTING, S.READY, S.DRAINING, S.SLEEPING],
    S.WAKING: [S.STARTING, S.READY, S.DRAINING, S.SLEEPING, S.WAKING],
    S.STOPPING: [S.STARTING, S.READY, S.STOPPING],
    S.FAILED: [S.STARTING, S.READY, S.FAILED],
    S.BACKOFF: [S.STARTING, S.BACKOFF],
    S.HELD: [S.STARTING, S.HELD],
}


def reach(state: State) -> Lifecycle:
    """A lifecycle brought to ``state`` through legal moves only."""
    life = Lifecycle("m")
    for step in PATHS[state]:
        assert life.move(life.state, step)
    return life


@pytest.mark.parametrize(("old", "new"), list(itertools.product(State, State)))
def test_every_transition(old: State, new: State) -> None:
    life = reach(old)
    if (old, new) in LEGAL:
        assert life.move(old, new)
        assert life.state is new
    else:
        with pytest.raises(IllegalTransition, match=f"{old.value} to {new.value}"):
            life.move(old, new)
        assert life.state is old


@pytest.mark.parametrize(("expected", "new"), sorted(LEGAL))
def test_a_stale_expectation_changes_nothing(expected: State, new: State) -> None:
    for actual in State:
        if actual is expected:
            continue
        life = reach(actual)
        assert life.move(expected, new) is False
        assert life.state is actual


def test_table_matches_the_documented_moves() -> None:
    assert {(a, b) for a, targets in ALLOWED.items() for b in targets} == LEGAL


def test_every_state_is_reachable_and_can_end_stopped() -> None:
    for state in State:
        life = reach(state)
        seen = {life.state}
        frontier = [life.state]
        while frontier:
            for nxt in ALLOWED[frontier.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        assert S.STOPPED in seen or state is S.STOPPED


def test_down_and_running_do_not_overlap() -> None:
    assert not DOWN & RUNNING
    assert DOWN | RUNNING == set(State)


def test_observer_sees_each_move_once() -> None:
    seen: list[tuple[State, State]] = []
    life = Lifecycle("m", lambda old, new: seen.append((old, new)))
    life.move(S.STOPPED, S.STARTING)
    life.move(S.STOPPED, S.STARTING)  # stale: no move, no notice
    life.move(S.STARTING, S.READY)
    assert seen == [(S.STOPPED, S.STARTING), (S.STARTING, S.READY)]
