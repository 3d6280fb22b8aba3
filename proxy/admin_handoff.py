"""The admin console's hand-off: a session authenticated for the console database stops talking to the
upstream and is answered by the proxy itself (proxy/admin.py) from then on."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import states
from .protocol import messages as msg

if TYPE_CHECKING:
    from .session import Session


def hand_over_to_admin(session: Session) -> None:
    """Authentication (by the upstream, or the proxy's own login) is done: hang up on the upstream and answer
    this client ourselves."""
    from .admin import AdminConsole

    session._to(states.BECOME_ADMIN)
    session._startup_done()
    server, session.server_transport = session.server_transport, None
    session._to_server = _nowhere
    if server is not None:
        server.write(msg.TERMINATE)
        server.close()
    session.admin = AdminConsole(session, session._to_client)


def _nowhere(_: bytes) -> None:
    """The upstream is gone: nothing is sent to it any more."""
