"""The TOML configuration: `[proxy]`, `[admin]` and `[[route]]`, validated into frozen dataclasses.

Every key is documented in KEY_HELP, which `pgcutover serve --help` prints, so the help text and the
parser cannot drift apart. Validation errors name the key and the value; nothing half-loads.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .enums import (
    INDEX_METRICS,
    BadVectorMode,
    FallbackStorage,
    InexactMode,
    LegacyFormat,
    Metric,
    StickyMode,
    values,
)
from .verifier import parse_verifier

# the accepted values of the choice keys, as plain strings (messages list them; core/enums.py names them)
STICKY_MODES = values(StickyMode)
LEGACY_FORMATS = values(LegacyFormat)
BAD_VECTOR_MODES = values(BadVectorMode)
FALLBACK_STORAGES = values(FallbackStorage)
METRICS = tuple(metric.value for metric in INDEX_METRICS)
INEXACT_MODES = values(InexactMode)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message says which key and why."""


_URL_USERINFO = re.compile(r"^(?P<head>[^:/?#@]*://)?(?P<user>[^:@]*):(?P<secret>.*)@(?P<tail>[^@]*)$", re.S)
_PASSWORD_PARAM = re.compile(
    r"(?P<key>(?:^|[?&;\s])(?:password|sslpassword)\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'|[^&\s]*)", re.I)


def redact_url(text: object) -> str:
    """A connection string with any password replaced by ***, also when it is malformed: everything between
    the first ':' of the user part and the last '@' is the secret, and so is any password= parameter (URL
    query or key=value form). Used for every message, log line and SHOW CONFIG value that names an upstream.

    >>> redact_url("postgresql://app:s3cret@db:5432/x?sslmode=require")
    'postgresql://app:***@db:5432/x?sslmode=require'
    >>> redact_url("postgresq://app:p@ss:w/rd@db:54x2/x")  # a typo in the scheme, '@' and '/' in the password
    'postgresq://app:***@db:54x2/x'
    >>> redact_url("postgresql://db/x?user=app&password=s3cret")
    'postgresql://db/x?user=app&password=***'
    >>> redact_url("host=db password='a b' user=app")
    'host=db password=*** user=app'
    """
    text = str(text)
    match = _URL_USERINFO.match(text)
    if match is not None:
        text = f"{match['head'] or ''}{match['user']}:***@{match['tail']}"
    return _PASSWORD_PARAM.sub(lambda m: f"{m['key']}***", text)


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, key: str) -> HostPort:
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"{key} = {text!r}: expected host:port")
        return cls(host.strip("[]") or "127.0.0.1", int(port))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class UpstreamDsn:
    """Where the real server is. User and database come from each client's startup packet."""

    host: str  # a hostname, an IP, or a directory holding the unix socket
    port: int
    user: str
    password: str | None = field(repr=False)
    database: str
    sslmode: str  # disable | prefer | require | verify-ca | verify-full
    sslrootcert: str | None
    text: str = field(repr=False)  # as written: holds the password; show redact_url(text) instead

    @property
    def is_unix(self) -> bool:
        return self.host.startswith("/")

    @property
    def redacted(self) -> str:
        return redact_url(self.text)

    @classmethod
    def parse(cls, text: str) -> UpstreamDsn:
        if not isinstance(text, str):
            raise ConfigError("upstream must be a string: postgresql://user@host:port/database")
        shown = redact_url(text)  # every message below names the URL without its password
        try:
            parts = urlsplit(text)
            hostname = parts.hostname
        except ValueError as exc:
            raise ConfigError(f"upstream = {shown!r}: not a URL ({exc})") from None
        if parts.scheme not in ("postgresql", "postgres"):
            raise ConfigError(f"upstream = {shown!r}: expected postgresql://user@host:port/database")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        host = query.get("host") or unquote(hostname or "") or "127.0.0.1"
        try:
            port = int(query.get("port") or parts.port or 5432)
        except ValueError:
            raise ConfigError(f"upstream = {shown!r}: bad port") from None
        sslmode = query.get("sslmode", "disable" if host.startswith("/") else "prefer")
        if sslmode not in ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"):
            raise ConfigError(f"upstream sslmode = {sslmode!r} is not a libpq sslmode")
        return cls(
            host=host,
            port=port,
            user=unquote(parts.username or "postgres"),
            password=unquote(parts.password) if parts.password else None,
            database=unquote(parts.path.lstrip("/")) or "postgres",
            sslmode=sslmode,
            sslrootcert=query.get("sslrootcert"),
            text=text,
        )

    def asyncpg_kwargs(self, *, user: str | None = None, database: str | None = None) -> dict[str, Any]:
        """Arguments for the proxy's own control connections (asyncpg)."""
        from .connect import asyncpg_ssl  # the TLS policy lives with the connection factory

        ssl: Any = asyncpg_ssl(self)
        return {
            "host": self.host,
            "port": self.port,
            "user": user or self.user,
            "password": self.password,
            "database": database or self.database,
            "ssl": ssl,
        }


@dataclass(frozen=True, slots=True)
class ProxySettings:
    listen: HostPort
    upstream: UpstreamDsn
    metrics: HostPort | None
    tls_cert: str | None = None
    tls_key: str | None = None
    max_message_size: int = 256 * 1024 * 1024
    shutdown_timeout: float = 30.0
    connect_timeout: float = 10.0
    mirror_user: str | None = None  # the role mirrored statements connect as (then SET ROLE to the client's)
    upstream_sslmode: str | None = None  # overrides the URL's sslmode; "disable" is the only way to TLS -> plain
    plan_cache_bytes: int = 128 << 20  # plans, and again merge plans, by estimated bytes (core/lru.py)
    max_prepared_statements: int = 1000  # routed named statements per session; more -> FATAL 54000
    notify_channel: str = "pgcutover_changes"
    startup_timeout: float = 60.0  # like PostgreSQL's authentication_timeout
    max_client_conn: int = 1000


ADMIN_AUTH_MODES = ("upstream", "local")


@dataclass(frozen=True, slots=True)
class AdminSettings:
    users: tuple[str, ...] = ()
    token: str | None = None
    auth: str = "upstream"  # "local": the console checks SCRAM verifiers itself and works with the server down
    verifiers: tuple[tuple[str, str], ...] = ()  # (user, "SCRAM-SHA-256$...") for auth = "local"

    def verifier(self, user: str) -> str | None:
        return dict(self.verifiers).get(user)


_CHOICE_KEYS: tuple[tuple[str, type[StrEnum]], ...] = (
    ("sticky", StickyMode), ("legacy_format", LegacyFormat), ("fallback_storage", FallbackStorage),
    ("on_bad_vector", BadVectorMode), ("metric", Metric), ("on_inexact", InexactMode))


@dataclass(frozen=True, slots=True)
class Route:
    """One table whose similarity queries pgcutover routes (keys from the routing, fallback and shadow issues)."""

    table: str
    column: str
    key: str = "id"
    vector_column: str | None = None  # defaults to `column`
    shadow_table: str | None = None
    shadow_column: str | None = None  # defaults to vector_column
    shadow_type: str = "vector"
    split: float = 0.0
    sticky: str = StickyMode.SESSION
    legacy_column: str | None = None
    legacy_format: str = LegacyFormat.JSON
    dims: int | None = None
    fallback: bool = True
    # int8 saves memory, but the exact scans (l1, farthest, shipped) need rows
    fallback_storage: str = FallbackStorage.FLOAT32
    on_bad_vector: str = BadVectorMode.ERROR
    metric: str = Metric.COSINE
    mirror: float = 0.0
    mirror_exact: float = 0.0
    mirror_max_per_s: float = 5.0  # budget of mirrored queries per second (0: no budget)
    shadow_timeout_ms: int = 0
    min_recall: float = 0.95
    max_latency_ratio: float = 1.5
    max_error_rate: float = 0.01
    min_samples: int = 100
    breaker_window_s: float = 30.0
    breaker_min_samples: int = 20
    breaker_latency_floor_ms: float = 10.0  # the shadow must also be this much slower to trip on latency
    on_inexact: str = InexactMode.ERROR  # a similarity query the fallback cannot answer exactly: error | primary_only
    fallback_wait_ms: int = 5000  # how long such a query waits for a store that is not loaded yet
    max_shipped_rows: int = 1_000_000  # legacy distances shipped to the server by the universal exact path

    def __post_init__(self) -> None:
        # the choice keys hold their core/enums.py member (equal to the TOML string); a value outside the choices
        # stays as written, for validate() to name
        for name, choices in _CHOICE_KEYS:
            value = getattr(self, name)
            if isinstance(value, str) and value in choices.__members__.values():
                object.__setattr__(self, name, choices(value))

    @property
    def schema(self) -> str | None:
        return self.table.rpartition(".")[0] or None

    @property
    def relname(self) -> str:
        return self.table.rpartition(".")[2]

    @property
    def pg_vector_column(self) -> str:
        return self.vector_column or self.column

    @property
    def pg_shadow_column(self) -> str:
        return self.shadow_column or self.pg_vector_column

    def with_split(self, split: float, sticky: str | None = None) -> Route:
        route = replace(self, split=split, sticky=sticky or self.sticky)
        route.validate()
        return route

    def validate(self) -> None:
        where = f"[[route]] table = {self.table!r}"
        if not 0 <= self.split <= 100:
            raise ConfigError(f"{where}: split = {self.split} must be between 0 and 100")
        for name in ("mirror", "mirror_exact"):
            if not 0 <= getattr(self, name) <= 100:
                raise ConfigError(f"{where}: {name} must be between 0 and 100")
        if self.sticky not in STICKY_MODES:
            raise ConfigError(f"{where}: sticky = {self.sticky!r} must be one of {', '.join(STICKY_MODES)}")
        if self.legacy_format not in LEGACY_FORMATS:
            raise ConfigError(
                f"{where}: legacy_format = {self.legacy_format!r} must be one of {', '.join(LEGACY_FORMATS)}"
            )
        if self.fallback_storage not in FALLBACK_STORAGES:
            raise ConfigError(f"{where}: fallback_storage must be one of {', '.join(FALLBACK_STORAGES)}")
        if self.on_bad_vector not in BAD_VECTOR_MODES:
            raise ConfigError(f"{where}: on_bad_vector must be one of {', '.join(BAD_VECTOR_MODES)}")
        if self.on_inexact not in INEXACT_MODES:
            raise ConfigError(f"{where}: on_inexact = {self.on_inexact!r} must be one of {', '.join(INEXACT_MODES)}")
        if isinstance(self.fallback_wait_ms, bool) or not isinstance(self.fallback_wait_ms, int) \
                or self.fallback_wait_ms < 0:
            raise ConfigError(f"{where}: fallback_wait_ms = {self.fallback_wait_ms!r} must be an integer >= 0")
        if isinstance(self.max_shipped_rows, bool) or not isinstance(self.max_shipped_rows, int) \
                or self.max_shipped_rows < 0:
            raise ConfigError(f"{where}: max_shipped_rows = {self.max_shipped_rows!r} must be an integer >= 0")
        if self.metric not in METRICS:
            raise ConfigError(f"{where}: metric = {self.metric!r} must be one of {', '.join(METRICS)}")
        if self.split > 0 and not self.shadow_table:
            raise ConfigError(f"{where}: split = {self.split} needs shadow_table")
        if self.dims is not None and self.dims <= 0:
            raise ConfigError(f"{where}: dims must be positive")
        if self.table.count(".") > 1 or not self.relname:
            raise ConfigError(f"{where}: table must be 'name' or 'schema.name'")


def needs_store(route: Route) -> bool:
    """A route whose legacy rows are searched in memory (the legacy column is not the vector column)."""
    return bool(route.legacy_column and route.fallback and route.legacy_column != route.pg_vector_column)


@dataclass(frozen=True, slots=True)
class Config:
    proxy: ProxySettings
    admin: AdminSettings = field(default_factory=AdminSettings)
    routes: tuple[Route, ...] = ()
    source: str | None = None

    def route_for(self, table: str) -> Route | None:
        for route in self.routes:
            if table in (route.table, route.relname):
                return route
        return None


KEY_HELP: dict[str, str] = {
    "[proxy] listen": 'host:port the applications connect to (default "127.0.0.1:6432")',
    "[proxy] upstream": (
        "the real server as a libpq URL; gives host, port and TLS (sslmode, sslrootcert). The host may be a "
        "unix-socket directory (?host=/run/postgresql). User and database come from each client's startup packet."
    ),
    "[proxy] metrics": 'host:port for Prometheus /metrics, /healthz, /readyz (default "127.0.0.1:9187"; "" disables)',
    "[proxy] tls_cert, tls_key": "PEM files: when both are set, SSLRequest is answered 'S' and TLS is terminated",
    "[proxy] max_message_size": "largest client message in bytes (default 268435456); larger -> 08P01, closed",
    "[proxy] shutdown_timeout": "seconds SIGTERM waits for sessions to finish (default 30)",
    "[proxy] notify_channel": "LISTEN channel of the triggers' change notices (default pgcutover_changes)",
    "[proxy] connect_timeout": "seconds to reach the upstream before the client gets 08006 (default 10)",
    "[proxy] upstream_sslmode": (
        "libpq sslmode for the upstream, overriding the URL's. With tls_cert set, the upstream is encrypted too "
        "(at least 'require'); only upstream_sslmode = \"disable\" allows a plaintext upstream (warned at start)"
    ),
    "[proxy] plan_cache_bytes": (
        "bytes of plans cached (default 134217728); the merge-plan cache, and the plans all sessions' prepared "
        "statements hold, get the same budget each. Bounded in bytes, not entries: every distinct SQL text "
        "(e.g. an inlined vector literal) is a new entry"
    ),
    "[proxy] max_prepared_statements": (
        "routed named statements one session may hold (default 1000, and 64 MB of their plans); one more ends "
        "the session with 54000 program_limit_exceeded"
    ),
    "[proxy] mirror_user": (
        "role the mirror connects as (password: $PGCUTOVER_MIRROR_PASSWORD or ~/.pgpass); it needs no privileges "
        "of its own, only membership (NOINHERIT) of the application roles, and runs each mirrored statement after "
        "SET ROLE to the client's user. Unset: nothing is mirrored"
    ),
    "[proxy] startup_timeout": "seconds a client has to finish startup and authentication, else closed (default 60)",
    "[proxy] max_client_conn": "client connections at once (default 1000); more get 53300 'too many clients'",
    "[admin] users": "upstream users allowed on the admin console (virtual database 'pgcutover')",
    "[admin] auth": (
        '"upstream" (default): the server authenticates console users; "local": the proxy does, against '
        "[admin] verifiers, so the console works while the server is down"
    ),
    "[admin] verifiers": (
        '{name = "SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>"}: console users for auth = "local" '
        "(make one with `pgcutover admin-password NAME`)"
    ),
    "[admin] token": "when set, /metrics asks for 'Authorization: Bearer <token>' (/healthz and /readyz stay open)",
    "[[route]] table, column, key": "table applications query, the column in `column <-> $1`, its primary key",
    "[[route]] vector_column": "pgvector column in the table (default: column)",
    "[[route]] shadow_table, shadow_column, shadow_type": "shadow copy, its vector column, query-vector cast",
    "[[route]] split, sticky": "percent of similarity queries sent to the shadow; query | session | application_name",
    "[[route]] legacy_column, legacy_format, dims, fallback": "legacy vectors (json|bytea_f32|bytea_f64|array)",
    "[[route]] fallback_storage": "float32 | int8 | float16: the fallback store's rows (default float32). int8 takes"
    " a quarter of the memory (candidates proven by error bounds, ranked exactly by the server) but keeps no rows:"
    " l1, farthest-first and shipped-distance shapes are then refused (fallback-storage-int8)",
    "[[route]] on_bad_vector": "error | skip: what dual-write triggers do with a vector of the wrong size",
    "[[route]] on_inexact": (
        'error | primary_only (default "error"): a similarity query the fallback cannot answer exactly over all '
        "rows gets SQLSTATE 0A000 naming the route and the reason, or the answer from pgvector rows with a NOTICE"
    ),
    "[[route]] fallback_wait_ms": (
        "how long a similarity query waits for the route's fallback store to load (default 5000) before it gets "
        "the on_inexact treatment with reason store-not-ready"
    ),
    "[[route]] max_shipped_rows": (
        "statements the top-k merge cannot bound (a weighted score, a window function) are answered exactly by "
        "shipping every legacy row's distance to the server, up to this many rows (default 1000000); above it, "
        "on_inexact applies"
    ),
    "[[route]] metric": "l2 | cosine | ip: distance the `index` command builds the HNSW index for (default cosine)",
    "[[route]] mirror, mirror_exact, shadow_timeout_ms": "percent mirrored to the other target; shadow timeout",
    "[[route]] mirror_max_per_s": "at most this many mirrored queries a second per proxy (default 5; 0: no cap)",
    "[[route]] breaker_latency_floor_ms": "latency trips also need shadow p95 - primary p95 above this (default 10)",
    "[[route]] min_recall, max_latency_ratio, max_error_rate, min_samples": "shadow readiness thresholds",
    "[[route]] breaker_window_s, breaker_min_samples": (
        "circuit breaker: sliding window in seconds (default 30) and executions needed on each side before it "
        "judges (default 20); it sets split to 0 when the shadow's error rate or p95 latency crosses the "
        "thresholds above"
    ),
}


@dataclass(frozen=True, slots=True)
class Rule:
    """What a key's value may be, beyond its type: a closed range and/or one of a set of values.

    `kind` overrides the type read from the dataclass annotation (for keys parsed from text: host:port, URLs).
    """

    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    kind: str | None = None  # "hostport", "hostport?" ("" allowed), "url"
    exclusive_low: bool = False


# One row per key that has a range, a set of values or a textual format; the type of every key comes from its
# dataclass field. A new key: a field, a KEY_HELP row, and a row here when its values are restricted.
KEY_RULES: dict[str, Rule] = {
    "proxy.listen": Rule(kind="hostport"),
    "proxy.upstream": Rule(kind="url"),
    "proxy.metrics": Rule(kind="hostport?"),
    "proxy.max_message_size": Rule(low=1024),
    "proxy.shutdown_timeout": Rule(low=0),
    "proxy.connect_timeout": Rule(low=0, exclusive_low=True),
    "route.split": Rule(0, 100),
    "route.sticky": Rule(choices=STICKY_MODES),
    "route.legacy_format": Rule(choices=LEGACY_FORMATS),
    "route.dims": Rule(1, 16000),
    "route.on_bad_vector": Rule(choices=BAD_VECTOR_MODES),
    "route.metric": Rule(choices=METRICS),
    "route.mirror": Rule(0, 100),
    "route.mirror_exact": Rule(0, 100),
    "route.mirror_max_per_s": Rule(low=0),
    "route.shadow_timeout_ms": Rule(low=0),
    "route.min_recall": Rule(0, 1),
    "route.max_latency_ratio": Rule(low=0, exclusive_low=True),
    "route.max_error_rate": Rule(0, 1),
    "route.min_samples": Rule(low=1),
    "route.breaker_window_s": Rule(low=0, exclusive_low=True),
    "route.breaker_min_samples": Rule(low=1),
    "route.breaker_latency_floor_ms": Rule(low=0),
}
REQUIRED_KEYS = {"proxy": ("upstream",), "route": ("table", "column")}
SECTIONS = {"proxy": "ProxySettings", "admin": "AdminSettings", "route": "Route"}
SECRET_KEYS = {"upstream", "token"}  # may hold a password: never echoed in a message


def _take(table: dict[str, Any], cls: type, where: str) -> dict[str, Any]:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    return dict(table)


def _parse_route(raw: dict[str, Any], index: int) -> Route:
    where = f"[[route]] #{index + 1}"
    values = _take(raw, Route, where)
    for required in ("table", "column"):
        if not isinstance(values.get(required), str) or not values[required]:
            raise ConfigError(f"{where}: {required} is required")
    try:
        route = Route(**values)
        if isinstance(route.split, bool) or not isinstance(route.split, int | float):
            raise ConfigError(f"{where}: split must be a number")
        route = replace(route, split=float(route.split), mirror=float(route.mirror))
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    route.validate()
    return route


def _parse_admin(raw: dict[str, Any]) -> AdminSettings:
    auth = raw.get("auth", "upstream")
    if auth not in ADMIN_AUTH_MODES:
        raise ConfigError(f"[admin] auth = {auth!r} must be one of {', '.join(ADMIN_AUTH_MODES)}")
    verifiers = raw.get("verifiers", {})
    if not isinstance(verifiers, dict):
        raise ConfigError('[admin] verifiers must be a table: {name = "SCRAM-SHA-256$..."}')
    for name, text in verifiers.items():
        try:
            parse_verifier(text if isinstance(text, str) else "")
        except ValueError as exc:  # the message never repeats the verifier itself
            raise ConfigError(f"[admin] verifiers.{name}: {exc}") from exc
    users = tuple(raw.get("users", ()))
    if auth == "local":
        if not verifiers:
            raise ConfigError('[admin] auth = "local" needs [admin] verifiers (pgcutover admin-password NAME)')
        missing = [user for user in users if user not in verifiers]
        if missing:
            raise ConfigError(f"[admin] users without a verifier for auth = \"local\": {', '.join(missing)}")
        users = users or tuple(verifiers)
    return AdminSettings(users=users, token=raw.get("token"), auth=auth,
                         verifiers=tuple((name, text) for name, text in verifiers.items()))


def _parse_proxy(raw: dict[str, Any]) -> ProxySettings:
    values = _take(raw, ProxySettings, "[proxy]")
    if "upstream" not in values:
        raise ConfigError("[proxy] upstream is required")
    metrics = values.get("metrics", "127.0.0.1:9187")
    settings = ProxySettings(
        listen=HostPort.parse(values.get("listen", "127.0.0.1:6432"), "[proxy] listen"),
        upstream=UpstreamDsn.parse(values["upstream"]),
        metrics=HostPort.parse(metrics, "[proxy] metrics") if metrics else None,
        tls_cert=values.get("tls_cert"),
        tls_key=values.get("tls_key"),
        max_message_size=int(values.get("max_message_size", 256 * 1024 * 1024)),
        shutdown_timeout=float(values.get("shutdown_timeout", 30.0)),
        connect_timeout=float(values.get("connect_timeout", 10.0)),
        mirror_user=values.get("mirror_user") or None,
        upstream_sslmode=values.get("upstream_sslmode"),
        plan_cache_bytes=int(values.get("plan_cache_bytes", 128 << 20)),
        max_prepared_statements=int(values.get("max_prepared_statements", 1000)),
        notify_channel=values.get("notify_channel", "pgcutover_changes"),
        startup_timeout=float(values.get("startup_timeout", 60.0)),
        max_client_conn=int(values.get("max_client_conn", 1000)),
    )
    if settings.startup_timeout <= 0 or settings.max_client_conn <= 0:
        raise ConfigError("[proxy] startup_timeout and max_client_conn must be positive")
    if settings.plan_cache_bytes < 1 << 20:
        raise ConfigError("[proxy] plan_cache_bytes must be at least 1048576")
    if settings.max_prepared_statements < 1:
        raise ConfigError("[proxy] max_prepared_statements must be at least 1")
    channel = settings.notify_channel
    if not isinstance(channel, str) or not 0 < len(channel.encode()) <= 63 or "\x00" in channel:
        raise ConfigError("[proxy] notify_channel must be a channel name of 1 to 63 bytes")
    settings = replace(settings, upstream=upstream_tls_policy(settings))
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError("[proxy] tls_cert and tls_key go together")
    if settings.max_message_size < 1024:
        raise ConfigError("[proxy] max_message_size must be at least 1024")
    return settings


SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def upstream_tls_policy(settings: ProxySettings) -> UpstreamDsn:
    """The upstream as the proxy may use it. A client that negotiated TLS with the proxy (maybe verify-full)
    believes its queries travel encrypted: so when the proxy terminates TLS, the upstream leg is encrypted too,
    at least `require` ('prefer' would fall back to plaintext silently). A plaintext upstream then needs
    `upstream_sslmode = "disable"`, said explicitly (serve() warns about it). A unix socket never leaves the
    host (and PostgreSQL offers no TLS on it): it stays as it is."""
    upstream, mode = settings.upstream, settings.upstream_sslmode
    if mode is not None:
        if mode not in SSLMODES:
            raise ConfigError(f"[proxy] upstream_sslmode = {mode!r} must be one of {', '.join(SSLMODES)}")
        return replace(upstream, sslmode=mode)
    if not settings.tls_cert or upstream.is_unix:
        return upstream
    if upstream.sslmode in ("disable", "allow"):
        raise ConfigError(
            f"[proxy] tls_cert is set but the upstream URL says sslmode={upstream.sslmode}: clients would get TLS "
            "to the proxy and plaintext beyond it. Use sslmode=require (or verify-full) for the upstream, or set "
            "[proxy] upstream_sslmode = \"disable\" to accept a plaintext upstream explicitly")
    return replace(upstream, sslmode="require") if upstream.sslmode == "prefer" else upstream


def parse_config(data: dict[str, Any], source: str | None = None) -> Config:
    problems = check_config_data(data, "", source or "<config>")
    if problems:
        raise ConfigError("\n".join(problems))
    unknown = sorted(set(data) - {"proxy", "admin", "route"})
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(unknown)}")
    if "proxy" not in data:
        raise ConfigError("[proxy] section is required")
    admin = _parse_admin(_take(data.get("admin", {}), AdminSettings, "[admin]"))
    routes = tuple(_parse_route(raw, i) for i, raw in enumerate(data.get("route", [])))
    tables = [r.table for r in routes]
    if len(set(tables)) != len(tables):
        raise ConfigError("two [[route]] entries name the same table")
    return Config(proxy=_parse_proxy(data["proxy"]), admin=admin, routes=routes, source=source)


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text()
        data = tomllib.loads(text)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    problems = check_config_data(data, text, str(path))
    if problems:  # with line numbers, before parse_config reports the same without
        raise ConfigError("\n".join(problems))
    try:
        return parse_config(data, source=str(path))
    except ConfigError as exc:  # a cross-key rule (Route.validate, ...): point at the section at least
        raise ConfigError(f"{path}: {exc}") from exc


# -- schema check: every problem at once, with file:line ----------------------------------------------------
_SECTION_LINE = re.compile(r"^\s*(\[\[|\[)\s*([A-Za-z0-9_.-]+)\s*\]")
_KEY_LINE = re.compile(r"^\s*([A-Za-z0-9_-]+|\"[^\"]*\")\s*=")


def key_lines(text: str) -> dict[tuple[str, int, str], int]:
    """(section, index, key) -> 1-based line, from a plain scan (tomllib keeps no positions).

    Key "" is the section header's line. [[route]] entries are numbered from 0 in file order.

    >>> key_lines('[proxy]\\n[[route]]\\ntable = "t"\\n[[route]]\\ntable = "u"\\n')[("route", 1, "table")]
    5
    """
    lines: dict[tuple[str, int, str], int] = {}
    counts: dict[str, int] = {}
    section, index = "", 0
    for number, line in enumerate(text.splitlines(), start=1):
        header = _SECTION_LINE.match(line)
        if header:
            section = header.group(2)
            if header.group(1) == "[[":
                index = counts.get(section, -1) + 1
                counts[section] = index
            else:
                index = 0
            lines.setdefault((section, index, ""), number)
            continue
        key = _KEY_LINE.match(line)
        if key:
            lines.setdefault((section, index, key.group(1).strip('"')), number)
    return lines


def _suggest(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_of(section: str, name: str) -> str:
    cls = {"proxy": ProxySettings, "admin": AdminSettings, "route": Route}[section]
    for f in fields(cls):
        if f.name == name:
            return str(f.type)
    return "Any"


def _check_type(value: Any, annotation: str) -> str | None:
    """None when `value` (as TOML gave it) fits the field's annotation, else what was expected."""
    optional = "None" in annotation
    base = annotation.replace("| None", "").replace("None |", "").strip()
    if value is None and optional:
        return None
    if base == "str":
        return None if isinstance(value, str) else "a string"
    if base == "bool":
        return None if isinstance(value, bool) else "true or false"
    if base == "int":
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if base == "float":
        return None if isinstance(value, int | float) and not isinstance(value, bool) else "a number"
    if base.startswith(("tuple[str", "list[str")):
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        return None if ok else "a list of strings, e.g. [\"postgres\"]"
    return None


def _check_rule(value: Any, rule: Rule) -> str | None:
    if rule.kind in ("hostport", "hostport?"):
        if not isinstance(value, str):
            return 'a string "host:port"'
        if value == "" and rule.kind == "hostport?":
            return None
        try:
            HostPort.parse(value, "")
        except ConfigError:
            return 'a string "host:port" with a port from 0 to 65535'
        return None
    if rule.kind == "url":
        if not isinstance(value, str):
            return 'a string "postgresql://user@host:port/database"'
        try:
            UpstreamDsn.parse(value)
        except ConfigError as exc:
            return str(exc).partition(": ")[2] or "a libpq URL"
        return None
    if rule.choices and value not in rule.choices:
        return "one of " + ", ".join(repr(c) for c in rule.choices) + _suggest(str(value), list(rule.choices))
    if isinstance(value, int | float) and not isinstance(value, bool):
        low_ok = rule.low is None or (value > rule.low if rule.exclusive_low else value >= rule.low)
        high_ok = rule.high is None or value <= rule.high
        if not (low_ok and high_ok):
            if rule.low is not None and rule.high is not None:
                return f"between {rule.low:g} and {rule.high:g}"
            return f"{'greater than' if rule.exclusive_low else 'at least'} {rule.low:g}"
    return None


def check_config_data(data: dict[str, Any], text: str = "", path: str = "<config>") -> list[str]:
    """Every schema problem of a parsed TOML document, one line each: `file:line: where: key = value: what`."""
    lines = key_lines(text)
    problems: list[str] = []

    def at(section: str, index: int, key: str) -> str:
        line = lines.get((section, index, key)) or lines.get((section, index, ""))
        return f"{path}:{line}" if line else path

    for name in data:
        if name not in SECTIONS:
            problems.append(f"{at(name, 0, '')}: unknown section [{name}]{_suggest(name, list(SECTIONS))}")
    if "proxy" not in data:
        problems.append(f"{path}: [proxy] section is required (with upstream = \"postgresql://...\")")
    for section in SECTIONS:
        raw = data.get(section)
        if raw is None:
            continue
        entries = raw if isinstance(raw, list) else [raw]
        if section == "route" and not isinstance(raw, list):
            problems.append(f"{at(section, 0, '')}: [route] must be written [[route]] (one per table)")
            continue
        if section != "route" and isinstance(raw, list):
            problems.append(f"{at(section, 0, '')}: [[{section}]] must be written [{section}] (only one)")
            continue
        cls = {"proxy": ProxySettings, "admin": AdminSettings, "route": Route}[section]
        known = [f.name for f in fields(cls)]
        for index, entry in enumerate(entries):
            title = f"[[route]] #{index + 1}" if section == "route" else f"[{section}]"
            if section == "route" and isinstance(entry.get("table"), str):
                title += f" ({entry['table']})"
            for required in REQUIRED_KEYS.get(section, ()):
                if required not in entry:
                    problems.append(f"{at(section, index, '')}: {title}: {required} is required")
            for key, value in entry.items():
                where = at(section, index, key)
                if key not in known:
                    problems.append(f"{where}: {title}: unknown key {key!r}{_suggest(key, known)}")
                    continue
                rule = KEY_RULES.get(f"{section}.{key}")
                expected = None if rule and rule.kind else _check_type(value, _type_of(section, key))
                if expected is None and rule is not None:
                    expected = _check_rule(value, rule)
                if expected is not None:
                    shown = "(hidden)" if key in SECRET_KEYS and isinstance(value, str) else _show(value)
                    problems.append(f"{where}: {title}: {key} = {shown}: expected {expected}")
    return problems


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else '"' + value + '"'
    return text if len(text) <= 60 else text[:57] + "..."
