"""The states of a client session and the one table of moves between them (as h11 keeps its state machine).

A session moves only through `transition(state, event)`: a move the table does not hold is a bug in the proxy
(`SessionStateError`), never a quiet change of state. The states, in a session's usual order:

    startup      reading the first packets (SSLRequest, GSSENCRequest, CancelRequest, StartupMessage)
    connecting   the TLS handshake with the client, or the upstream connect, is in progress
    auth         the startup packet went upstream; authentication messages are relayed
    active       ReadyForQuery reached the client: the steady state (the hot path)
    waiting      a routing decision is computed off the event loop, or a guarded shadow cycle is in flight:
                 the client's later bytes wait, in order
    paused       held by the admin console's PAUSE at an idle point
    terminating  the client sent Terminate; replies still due are relayed until the server closes
    closed       both sides closed
and the side roads: relay (a startup packet the server will refuse: its own answer is relayed raw), local-auth
(an admin console login the proxy checks itself), admin (the admin console), cancelling (a CancelRequest is
relayed).
"""

from __future__ import annotations

STARTUP, CONNECTING, AUTH, ACTIVE, CLOSED = "startup", "connecting", "auth", "active", "closed"
ADMIN, PAUSED = "admin", "paused"
WAITING = "waiting"
RELAY = "relay"
LOCAL_AUTH = "local-auth"
TERMINATING = "terminating"
CANCELLING = "cancelling"
STATES = frozenset((STARTUP, CONNECTING, AUTH, ACTIVE, CLOSED, ADMIN, PAUSED, WAITING, RELAY, LOCAL_AUTH,
                    TERMINATING, CANCELLING))

# events
TLS_REQUESTED = "tls-requested"  # SSLRequest answered 'S': the handshake runs
TLS_DONE = "tls-done"  # the handshake finished: the startup packet is read over TLS
CANCEL_REQUESTED = "cancel-requested"  # the first packet was a CancelRequest
CONNECT = "connect"  # a startup packet: the upstream connection is opened
LOCAL_LOGIN = "local-login"  # a console login checked by the proxy ([admin] auth = "local")
RELAY_STARTUP = "relay-startup"  # connected for a startup packet the server will refuse
STARTUP_SENT = "startup-sent"  # connected; the startup packet went upstream
READY = "ready"  # the first ReadyForQuery: authentication is over
BECOME_ADMIN = "become-admin"  # authenticated for the admin console: the proxy answers from now on
HOLD = "hold"  # a deferred routing decision or a guarded cycle: the client's bytes wait
RELEASE = "release"  # ... the decision is applied or the cycle judged
PAUSE = "pause"
RESUME = "resume"
TERMINATE = "terminate"  # the client's Terminate with replies still due
CLOSE = "close"

TRANSITIONS: dict[tuple[str, str], str] = {
    (STARTUP, TLS_REQUESTED): CONNECTING,
    (CONNECTING, TLS_DONE): STARTUP,
    (STARTUP, CANCEL_REQUESTED): CANCELLING,
    (STARTUP, CONNECT): CONNECTING,
    (STARTUP, LOCAL_LOGIN): LOCAL_AUTH,
    (CONNECTING, RELAY_STARTUP): RELAY,
    (CONNECTING, STARTUP_SENT): AUTH,
    (AUTH, READY): ACTIVE,
    (AUTH, BECOME_ADMIN): ADMIN,
    (LOCAL_AUTH, BECOME_ADMIN): ADMIN,
    # a client may pipeline a Query behind its last authentication message: it is routed like any other
    (AUTH, HOLD): WAITING,
    (ACTIVE, HOLD): WAITING,
    (WAITING, RELEASE): ACTIVE,
    (ACTIVE, PAUSE): PAUSED,
    (PAUSED, RESUME): ACTIVE,
    (AUTH, TERMINATE): TERMINATING,
    (ACTIVE, TERMINATE): TERMINATING,
    **{(state, CLOSE): CLOSED for state in STATES - {CLOSED}},
}


class SessionStateError(RuntimeError):
    """The proxy tried a move the table does not allow: an internal error, not the client's."""


def transition(state: str, event: str) -> str:
    """The state after `event` in `state`.

    >>> transition(AUTH, READY)
    'active'
    >>> (CLOSED, RESUME) in TRANSITIONS  # transition() raises SessionStateError
    False
    """
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise SessionStateError(f"internal error: a session in state {state!r} cannot take event {event!r}") \
            from None
