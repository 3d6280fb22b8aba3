"""The admin console without the server: `[admin] auth = "local"` checks SCRAM-SHA-256 verifiers in the config,
so an operator gets SHOW / PAUSE / RESUME / RELOAD / SHUTDOWN while the upstream is down, and ROLLBACK / SET
SPLIT apply to this replica alone (flagged local_only) until the shared routing table is reachable again.

The outage is real: the proxy reaches PostgreSQL through a TCP relay (plain sockets, in a thread) that the
test closes and re-opens on the same port.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgcutover.proxy.embedded import free_port, pg_binary
from pgcutover.proxy.protocol import messages as msg
from pgcutover.proxy.scram import ScramClient, ScramServer, make_verifier, parse_verifier

PASSWORD = "console-secret"
ROOT = Path(__file__).resolve().parents[2]


class Relay:
    """127.0.0.1:port -> the server, byte for byte; stop() drops every connection and the listener."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self.listener: socket.socket | None = None
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()

    def start(self) -> Relay:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        if self.listener is not None:
            with contextlib.suppress(OSError):  # wakes the accepting thread (close alone does not, on Linux)
                self.listener.shutdown(socket.SHUT_RDWR)
            self.listener.close()
            self.listener = None
        with self.lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self.sockets.clear()


@pytest.fixture
def console_tables(direct) -> Iterator[None]:
    direct.execute("CREATE SCHEMA IF NOT EXISTS lc_shadow")
    direct.execute("CREATE TABLE IF NOT EXISTS public.lc_items (id int PRIMARY KEY, embedding vector(3))")
    direct.execute("CREATE TABLE IF NOT EXISTS lc_shadow.lc_items (id int PRIMARY KEY, embedding vector(3))")
    direct.execute("CREATE SCHEMA IF NOT EXISTS pgcutover")
    direct.execute("DELETE FROM pgcutover.routing WHERE table_name = 'public.lc_items'"
                   if direct.execute("SELECT to_regclass('pgcutover.routing')").fetchone() != (None,) else "SELECT 1")
    yield


def local_console_toml(verifier: str) -> str:
    return (
        "\n[admin]\n"
        'auth = "local"\n'
        f'verifiers = {{ ops = "{verifier}" }}\n'
        "\n[[route]]\n"
        'table = "public.lc_items"\n'
        'column = "embedding"\n'
        'shadow_table = "lc_shadow.lc_items"\n'
    )


@pytest.fixture
def relay(pg) -> Iterator[Relay]:
    relay = Relay(pg.port).start()
    yield relay
    relay.stop()


@pytest.fixture
def console_proxy(relay, spawn_proxy, console_tables):
    return spawn_proxy(relay.port, local_console_toml(make_verifier(PASSWORD)))


def console(proxy, user: str = "ops", password: str = PASSWORD) -> psycopg.Connection:
    return psycopg.connect(proxy.dsn(user, "pgcutover", password), autocommit=True)


def routes(proxy) -> dict[str, tuple]:
    with console(proxy) as conn:
        return {row[0]: row for row in conn.execute("SHOW ROUTES").fetchall()}


def wait_until(check, deadline: float = 60.0) -> None:
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        time.sleep(0.2)


def test_verifier_matches_postgres(direct):
    """Our verifier for the server's salt and iterations is byte for byte the server's own."""
    direct.execute("SET password_encryption = 'scram-sha-256'")
    direct.execute(f"CREATE ROLE verifier_check PASSWORD '{PASSWORD}'")
    try:
        (stored,) = direct.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'verifier_check'").fetchone()
    finally:
        direct.execute("DROP ROLE verifier_check")
    parsed = parse_verifier(stored)
    assert make_verifier(PASSWORD, salt=parsed.salt, iterations=parsed.iterations) == stored


def test_scram_exchange_sans_io():
    verifier = parse_verifier(make_verifier("pw"))
    for password, ok in (("pw", True), ("wrong", False)):
        server, client = ScramServer(verifier), ScramClient("ops", password)
        first = server.client_first(client.first())
        final = client.final(first)
        if ok:
            assert client.verify(server.client_final(final))
        else:
            with pytest.raises(Exception, match="password authentication failed"):
                server.client_final(final)


def test_admin_password_command_reads_stdin_not_argv():
    result = subprocess.run([sys.executable, "-m", "pgcutover.proxy.cli", "admin-password", "ops"], input="s3cret\n",
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    verifier = result.stdout.strip()
    server, client = ScramServer(parse_verifier(verifier)), ScramClient("ops", "s3cret")
    assert client.verify(server.client_final(client.final(server.client_first(client.first()))))
    assert "s3cret" not in result.stdout + result.stderr


def test_local_login_refuses_wrong_password_and_unknown_user(console_proxy):
    for user, password in (("ops", "wrong"), ("nobody", PASSWORD)):
        with pytest.raises(psycopg.OperationalError, match=f'password authentication failed for user "{user}"'):
            console(console_proxy, user, password)
    with console(console_proxy) as conn:
        assert conn.execute("SHOW HELP").fetchall()


def test_console_works_with_the_server_down(pg, relay, console_proxy, direct):
    with console(console_proxy) as conn:  # up: the follower wrote nothing yet; the console answers
        assert "public.lc_items" in {row[0] for row in conn.execute("SHOW ROUTES").fetchall()}
    relay.stop()  # the outage: nothing reaches PostgreSQL any more
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(console_proxy.dsn(), connect_timeout=10)  # applications really cannot get through

    with console(console_proxy) as conn:
        for show in ("ROUTES", "STATS", "CLIENTS", "SERVERS", "FALLBACK", "CONFIG", "REPORT", "HELP"):
            conn.execute(f"SHOW {show}").fetchall()
        config = dict(conn.execute("SHOW CONFIG").fetchall())
        assert config["admin_auth"] == "local" and "SCRAM" not in str(config)
        for command in ("PAUSE", "RESUME", "RELOAD"):
            conn.execute(command)

        notices: list[str] = []
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        conn.execute("SET SPLIT lc_items 40")
        assert any("shared routing table is unreachable" in n and "this replica only" in n for n in notices)
    row = routes(console_proxy)["public.lc_items"]
    assert float(row[5]) == 40 and row[-1] and row[-1].startswith("yes")

    psql = subprocess.run([pg_binary("psql"), "-X", "-A", "-t", "-d", console_proxy.dsn("ops", "pgcutover"),
                           "-c", "SHOW ROUTES"], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PGPASSWORD": PASSWORD})
    assert psql.returncode == 0, psql.stderr
    assert "public.lc_items" in psql.stdout

    relay.start()  # back: the local change is written to the shared table, and the flag goes
    wait_until(lambda: routes(console_proxy)["public.lc_items"][-1] is None)
    assert float(routes(console_proxy)["public.lc_items"][5]) == 40
    shared = direct.execute("SELECT split, reason FROM pgcutover.routing WHERE table_name = 'public.lc_items'")
    split, reason = shared.fetchone()
    assert split == 40 and "reconciled" in reason
    assert "back after" in console_proxy.log()
    assert console_proxy.log().count("routing control connection unavailable") == 1  # once per outage


def test_rollback_during_outage_wins_over_a_later_shared_change(pg, relay, console_proxy, direct):
    with console(console_proxy) as conn:
        conn.execute("SET SPLIT lc_items 60")  # reachable: written to the shared table
    relay.stop()
    with console(console_proxy) as conn:
        conn.execute("ROLLBACK")
    assert float(routes(console_proxy)["public.lc_items"][5]) == 0
    # meanwhile the shared row changes (another replica that still reaches the server sets the split)
    direct.execute("UPDATE pgcutover.routing SET split = 30, generation = nextval('pgcutover.routing_generation') "
                   "WHERE table_name = 'public.lc_items'")
    relay.start()
    wait_until(lambda: routes(console_proxy)["public.lc_items"][-1] is None)
    assert float(routes(console_proxy)["public.lc_items"][5]) == 0  # the rollback is the safe direction
    (split,) = direct.execute("SELECT split FROM pgcutover.routing WHERE table_name = 'public.lc_items'").fetchone()
    assert split == 0


def test_shutdown_with_the_server_down(relay, console_proxy):
    relay.stop()
    with console(console_proxy) as conn:
        conn.execute("SHUTDOWN")
    assert console_proxy.proc.wait(30) == 0


def test_local_login_with_an_unknown_mechanism_gets_08p01(console_proxy):
    with socket.create_connection(("127.0.0.1", console_proxy.port), timeout=10) as sock:
        sock.sendall(msg.startup_packet({"user": "ops", "database": "pgcutover"}))
        assert sock.recv(1) == b"R"
        sock.sendall(msg.message(b"p", msg.cstr("PLAIN") + b"\xff\xff\xff\xff"))
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        assert b"C08P01\0" in data and b"invalid SASL authentication mechanism" in data


def test_control_role_without_reserved_connections_is_warned_about(pg, direct):
    """PostgreSQL 16+: the proxy's control role should be a member of pg_use_reserved_connections (and
    reserved_connections > 0), or a connection storm can lock the routing follower out; the check says how."""
    import asyncio

    import asyncpg

    from pgcutover.proxy.control import check_reserved_connections

    direct.execute("DROP ROLE IF EXISTS lc_control")
    direct.execute("CREATE ROLE lc_control LOGIN")

    async def check(user: str) -> str | None:
        conn = await asyncpg.connect(host="127.0.0.1", port=pg.port, user=user, database="postgres")
        try:
            return await check_reserved_connections(conn)
        finally:
            await conn.close()

    try:
        missing = asyncio.run(check("lc_control"))
        assert missing is not None and "GRANT pg_use_reserved_connections TO lc_control" in missing
        direct.execute("GRANT pg_use_reserved_connections TO lc_control")
        granted = asyncio.run(check("lc_control"))
        assert granted is not None and "GRANT" not in granted and "reserved_connections" in granted
        assert asyncio.run(check("postgres")) is None  # superusers have superuser_reserved_connections
    finally:
        direct.execute("DROP ROLE lc_control")


def test_proxy_warns_at_start_when_the_control_role_has_no_reserved_slots(pg, direct, spawn_proxy):
    direct.execute("DROP ROLE IF EXISTS lc_control2")
    direct.execute("CREATE ROLE lc_control2 LOGIN")
    try:
        proxy = spawn_proxy(pg.port)
        proxy.config_path.write_text(proxy.config_path.read_text().replace("postgresql://postgres@",
                                                                           "postgresql://lc_control2@"))
        proxy.stop()
        proxy.start()
        wait_until(lambda: "pg_use_reserved_connections" in proxy.log())
        assert "GRANT pg_use_reserved_connections TO lc_control2" in proxy.log()
        proxy.stop()
    finally:
        direct.execute("DROP ROLE lc_control2")


def test_routing_follower_gets_back_in_during_a_connection_storm(spawn_proxy, tmp_path):
    """Item 5 end to end: a server whose normal slots are all taken by application connections; a proxy started
    then still follows the shared routing (its control role, a member of pg_use_reserved_connections, gets a
    reserved slot); without the grant the follower is locked out until it is given back."""
    from pgcutover.proxy.control import SCHEMA_SQL
    from pgcutover.proxy.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(tmp_path / "storm", settings={
        "max_connections": "10", "superuser_reserved_connections": "3", "reserved_connections": "4"}).start()
    try:
        server.psql("CREATE EXTENSION IF NOT EXISTS vector")
        server.psql("CREATE ROLE ctl LOGIN; GRANT pg_use_reserved_connections TO ctl; CREATE ROLE app LOGIN")
        server.psql("CREATE SCHEMA lc_shadow; CREATE TABLE public.lc_items (id int PRIMARY KEY, embedding vector(3));"
                    "CREATE TABLE lc_shadow.lc_items (id int PRIMARY KEY, embedding vector(3))")
        server.psql(SCHEMA_SQL + "GRANT USAGE ON SCHEMA pgcutover TO ctl; "
                    "GRANT SELECT ON ALL TABLES IN SCHEMA pgcutover TO ctl;")
        def follower_pid() -> int | None:
            with psycopg.connect(server.dsn(), autocommit=True) as conn:
                row = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = "
                                   "'pgcutover-control' AND usename = 'ctl'").fetchone()
            return row[0] if row else None

        storm = []
        try:
            while True:  # application connections until the server refuses them: its normal slots are gone
                try:
                    storm.append(psycopg.connect(server.dsn("app"), autocommit=True))
                except psycopg.OperationalError as exc:
                    assert "reserved" in str(exc), exc
                    break
                assert len(storm) < 10
            # no shadow: the proxy's only long-lived control connection is the follower's
            proxy = spawn_proxy(server.port, local_console_toml(make_verifier(PASSWORD)).replace(
                'shadow_table = "lc_shadow.lc_items"\n', ""))
            proxy.config_path.write_text(proxy.config_path.read_text().replace("postgresql://postgres@",
                                                                               "postgresql://ctl@"))
            proxy.stop()
            proxy.start()  # during the storm: its follower can only get a reserved slot
            wait_until(lambda: follower_pid() is not None)
            with psycopg.connect(server.dsn(), autocommit=True) as admin:  # a superuser slot
                admin.execute("INSERT INTO pgcutover.routing (table_name, split, sticky, generation, changed_by) "
                              "VALUES ('public.lc_items', 0, 'query', nextval('pgcutover.routing_generation'), "
                              "'storm test')")
                admin.execute("NOTIFY pgcutover_routing")
            wait_until(lambda: routes(proxy)["public.lc_items"][6] == "query")  # the console: no slot needed
            assert "pg_use_reserved_connections" not in proxy.log()  # granted: no warning at start

            # the control: without the grant the same storm locks the follower out until it is given back
            assert server.log_path is not None
            refusal = 'FATAL:  remaining connection slots are reserved for roles with privileges of the ' \
                      '"pg_use_reserved_connections" role'
            refused_before = server.log_path.read_text().count(refusal)
            with psycopg.connect(server.dsn(), autocommit=True) as admin:
                admin.execute("REVOKE pg_use_reserved_connections FROM ctl")
                admin.execute("SELECT pg_terminate_backend(%s)", (follower_pid(),))
            wait_until(lambda: server.log_path.read_text().count(refusal) >= refused_before + 2)  # retried, refused
            assert follower_pid() is None
            with psycopg.connect(server.dsn(), autocommit=True) as admin:
                admin.execute("GRANT pg_use_reserved_connections TO ctl")
            wait_until(lambda: "routing control connection back after" in proxy.log())
            assert proxy.log().count("routing control connection unavailable") == 1  # one line for the outage
        finally:
            for conn in storm:
                conn.close()
        proxy.stop()
    finally:
        server.destroy()
