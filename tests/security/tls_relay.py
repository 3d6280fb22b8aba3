"""A TLS front for a server built without SSL (pgserver's is): it answers SSLRequest with 'S', completes the
handshake, and relays the decrypted bytes to the real PostgreSQL. A client that does not ask for TLS is turned
away. It counts both, so a test can tell how the proxy reached its upstream."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
from pathlib import Path

SSL_REQUEST = struct.pack("!ii", 8, 80877103)


class TlsRelay:
    def __init__(self, upstream_port: int, cert: Path, key: Path) -> None:
        self.upstream_port = upstream_port
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert), str(key))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.tls_sessions = 0
        self.plaintext_refused = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            first = client.recv(8, socket.MSG_WAITALL)
            if first != SSL_REQUEST:
                self.plaintext_refused += bool(first)  # a bare connect-and-close is the proxy's readiness probe
                client.close()
                return
            client.sendall(b"S")
            secure = self.context.wrap_socket(client, server_side=True)
            self.tls_sessions += 1
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
        except (OSError, ssl.SSLError):
            client.close()
            return
        threading.Thread(target=_pump, args=(server, secure), daemon=True).start()
        _pump(secure, server)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except (OSError, ssl.SSLError):
        pass
    finally:
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.close()
