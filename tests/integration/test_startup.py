"""Startup details, differential against the server: protocol-version negotiation (3.0, 3.2, an unknown
newer minor, `_pq_.` options), the ParameterStatus set the client is given, and a first query pipelined in
the same packet as the startup."""

from __future__ import annotations

import struct

import pytest

from pgcutover.proxy.protocol import codes
from pgcutover.proxy.protocol import messages as msg

from .wire import Message, RawClient


def startup_replies(port: int, packet: bytes) -> list[Message]:
    with RawClient(port) as client:
        client.send(packet)
        return client.until_ready()


def comparable(replies: list[Message]) -> list[Message]:
    """BackendKeyData differs by design (the proxy issues its own key): keep only its length."""
    return [(kind, bytes(len(payload)) if kind == codes.B_BACKEND_KEY else payload) for kind, payload in replies]


VERSIONS = {
    "3.0": codes.PROTOCOL_3_0,
    "3.1": codes.PROTOCOL_3_0 + 1,
    "3.2": codes.PROTOCOL_3_2,
    "3.99": codes.PROTOCOL_3_0 + 99,
}


@pytest.mark.parametrize("version", list(VERSIONS.values()), ids=list(VERSIONS))
def test_protocol_version_negotiation(pg, proxy, version: int):
    packet = msg.startup_packet({"user": "postgres", "database": "postgres", "application_name": "nego"}, version)
    direct = startup_replies(pg.port, packet)
    through = startup_replies(proxy.port, packet)
    assert comparable(through) == comparable(direct)
    negotiated = [payload for kind, payload in through if kind == codes.B_NEGOTIATE_VERSION]
    if version > codes.PROTOCOL_3_2:  # newer than the server: it answers with the newest it speaks
        assert negotiated and struct.unpack_from("!i", negotiated[0])[0] == codes.PROTOCOL_3_2
    else:
        assert negotiated == []


def test_unknown_protocol_option_is_negotiated_by_the_server(pg, proxy):
    params = {"user": "postgres", "database": "postgres", "_pq_.no_such_option": "on"}
    packet = msg.startup_packet(params, codes.PROTOCOL_3_2)
    direct = startup_replies(pg.port, packet)
    through = startup_replies(proxy.port, packet)
    assert comparable(through) == comparable(direct)
    negotiated = [payload for kind, payload in through if kind == codes.B_NEGOTIATE_VERSION]
    assert len(negotiated) == 1 and b"_pq_.no_such_option\0" in negotiated[0]


def test_parameter_status_at_startup_is_the_servers(pg, proxy):
    packet = msg.startup_packet({"user": "postgres", "database": "postgres", "TimeZone": "America/Lima",
                                 "DateStyle": "SQL, MDY", "application_name": "param-status"})
    direct = [(k, p) for k, p in startup_replies(pg.port, packet) if k == codes.B_PARAM_STATUS]
    through = [(k, p) for k, p in startup_replies(proxy.port, packet) if k == codes.B_PARAM_STATUS]
    assert through == direct
    params = dict(msg.parse_parameter_status(p) for _, p in through)
    assert params["TimeZone"] == "America/Lima" and params["DateStyle"] == "SQL, MDY"


def test_query_pipelined_with_the_startup(pg, proxy):
    """Startup and a first Query in one packet: the query waits for authentication, then runs."""
    packet = msg.startup_packet({"user": "postgres", "database": "postgres"}) + msg.query("SELECT 'early'")
    results = []
    for port in (pg.port, proxy.port):
        with RawClient(port) as client:
            client.send(packet)
            client.until_ready()
            results.append(client.until_ready())
    assert results[1] == results[0]
    assert [kind for kind, _ in results[1]] == list(b"TDCZ")
