"""The session's transition table (proxy/states.py): every state is reachable from startup, every state but closed
can close, and a move the table does not hold is an internal error, not a quiet change of state."""

from __future__ import annotations

import pytest

from pgcutover.proxy import states
from pgcutover.proxy.states import TRANSITIONS, SessionStateError, transition


def test_every_state_is_reachable_from_startup() -> None:
    seen, frontier = {states.STARTUP}, [states.STARTUP]
    while frontier:
        state = frontier.pop()
        for (source, _), target in TRANSITIONS.items():
            if source == state and target not in seen:
                seen.add(target)
                frontier.append(target)
    assert seen == states.STATES


def test_every_state_but_closed_can_close_and_closed_is_final() -> None:
    for state in states.STATES - {states.CLOSED}:
        assert transition(state, states.CLOSE) == states.CLOSED
    assert not [event for (source, event) in TRANSITIONS if source == states.CLOSED]


def test_the_usual_life_of_a_session() -> None:
    state = states.STARTUP
    for event, expected in ((states.TLS_REQUESTED, states.CONNECTING), (states.TLS_DONE, states.STARTUP),
                            (states.CONNECT, states.CONNECTING), (states.STARTUP_SENT, states.AUTH),
                            (states.READY, states.ACTIVE), (states.HOLD, states.WAITING),
                            (states.RELEASE, states.ACTIVE), (states.PAUSE, states.PAUSED),
                            (states.RESUME, states.ACTIVE), (states.TERMINATE, states.TERMINATING),
                            (states.CLOSE, states.CLOSED)):
        state = transition(state, event)
        assert state == expected, event


@pytest.mark.parametrize(("state", "event"), [
    (states.CLOSED, states.RESUME),  # a closed session never comes back
    (states.STARTUP, states.READY),  # ReadyForQuery before authentication: not from our state machine
    (states.ADMIN, states.HOLD),  # the console is answered by the proxy: nothing is routed
    (states.WAITING, states.PAUSE),  # PAUSE holds sessions only at an idle point
    (states.RELAY, states.STARTUP_SENT),
])
def test_moves_outside_the_table_are_internal_errors(state: str, event: str) -> None:
    with pytest.raises(SessionStateError, match=f"state '{state}' cannot take event '{event}'"):
        transition(state, event)


def test_states_and_events_are_the_table_s_own() -> None:
    events = {event for _, event in TRANSITIONS}
    assert {source for source, _ in TRANSITIONS} | set(TRANSITIONS.values()) == states.STATES
    assert events == {states.TLS_REQUESTED, states.TLS_DONE, states.CANCEL_REQUESTED, states.CONNECT,
                      states.LOCAL_LOGIN, states.RELAY_STARTUP, states.STARTUP_SENT, states.READY,
                      states.BECOME_ADMIN, states.HOLD, states.RELEASE, states.PAUSE, states.RESUME,
                      states.TERMINATE, states.CLOSE}
