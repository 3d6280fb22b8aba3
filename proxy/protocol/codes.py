"""Postgres v3 wire constants. Message types are ints (bytes index to ints), so the hot loops compare ints."""

from __future__ import annotations

# Untyped first packets: the Int32 after the length.
PROTOCOL_3_0 = 196608  # 3 << 16
PROTOCOL_3_2 = 196610  # 3.2: variable-length cancel keys (PostgreSQL 18)
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
MAX_STARTUP_PACKET = 10000  # the server's own limit (MAX_STARTUP_PACKET_LENGTH)
MAX_CANCEL_KEY = 256  # protocol 3.2 caps the secret at 256 bytes

# Frontend (client -> server) message types.
F_BIND = ord("B")
F_CLOSE = ord("C")
F_COPY_DATA = ord("d")
F_COPY_DONE = ord("c")
F_COPY_FAIL = ord("f")
F_DESCRIBE = ord("D")
F_EXECUTE = ord("E")
F_FLUSH = ord("H")
F_FUNCTION_CALL = ord("F")
F_PASSWORD = ord("p")  # also SASLInitialResponse / SASLResponse / GSSResponse
F_PARSE = ord("P")
F_QUERY = ord("Q")
F_SYNC = ord("S")
F_TERMINATE = ord("X")
FRONTEND_TYPES = frozenset(b"BdcfDEHFpPQSXC")

# Backend (server -> client) message types.
B_AUTH = ord("R")
B_BACKEND_KEY = ord("K")
B_BIND_COMPLETE = ord("2")
B_CLOSE_COMPLETE = ord("3")
B_COMMAND_COMPLETE = ord("C")
B_COPY_DATA = ord("d")
B_COPY_DONE = ord("c")
B_COPY_IN = ord("G")
B_COPY_OUT = ord("H")
B_COPY_BOTH = ord("W")
B_DATA_ROW = ord("D")
B_EMPTY_QUERY = ord("I")
B_ERROR = ord("E")
B_FUNCTION_RESULT = ord("V")
B_NEGOTIATE_VERSION = ord("v")
B_NO_DATA = ord("n")
B_NOTICE = ord("N")
B_NOTIFICATION = ord("A")
B_PARAM_DESCRIPTION = ord("t")
B_PARAM_STATUS = ord("S")
B_PARSE_COMPLETE = ord("1")
B_PORTAL_SUSPENDED = ord("s")
B_READY = ord("Z")
B_ROW_DESCRIPTION = ord("T")

# Transaction status in ReadyForQuery.
TX_IDLE = ord("I")
TX_IN_BLOCK = ord("T")
TX_FAILED = ord("E")
