"""The shared vocabulary, one spelling each: targets, distance metrics, and the config's choice keys.

StrEnum: every member is its string, so TOML values, metric label values, JSON, log lines and SQL parameters stay
byte-identical (`f"{Target.SHADOW}"` is "shadow", `Target.SHADOW == "shadow"`). repr() is the string's too, so a
message written `{route.legacy_format!r}` reads as it did when the value was a plain string. (orjson refuses enum
members as dict keys: key JSON objects by plain strings.)

>>> Target.SHADOW == "shadow", f"{Metric.IP}", StickyMode("session") is StickyMode.SESSION, LegacyFormat.JSON
(True, 'ip', True, 'json')
"""

from __future__ import annotations

from enum import StrEnum


class Choice(StrEnum):
    """A StrEnum whose repr() is its value's: messages keep their text."""

    def __repr__(self) -> str:
        return repr(self.value)


class Target(Choice):
    """Where a statement runs, and the `target` label of the query metrics."""

    PRIMARY = "primary"  # the table applications name, its pgvector column
    SHADOW = "shadow"  # the route's shadow_table
    EXACT = "exact"  # the primary without its index: the mirror's ground truth (rewrite/mirror_sql.py)
    MERGED = "fallback_merged"  # pgvector rows and in-memory legacy rows merged (runs on the primary)
    REFUSED = "fallback_refused"  # refused with 0A000 (on_inexact = "error"): no target answered it
    PASSTHROUGH = "passthrough"  # not a similarity query on a route: the client's bytes, unchanged


class Metric(Choice):
    """A distance, by one name everywhere: the router's analysis, the fallback's searches, the config's
    `metric` (the index opclass: l2, cosine, ip) and `pgcutover index --metric`."""

    L2 = "l2"  # <->, l2_distance()
    COSINE = "cosine"  # <=>, cosine_distance()
    IP = "ip"  # <#>: the negative inner product (nearest first = largest inner product)
    IP_POSITIVE = "ip_positive"  # inner_product(): the inner product itself, a similarity (nearest first = DESC)
    L1 = "l1"  # <+>, l1_distance()
    HAMMING = "hamming"  # <~>, hamming_distance() (bit vectors)
    JACCARD = "jaccard"  # <%>, jaccard_distance() (bit vectors)


INDEX_METRICS = (Metric.L2, Metric.COSINE, Metric.IP)  # a route's `metric`: the opclass of its vector index


class StickyMode(Choice):
    """`sticky`: what keeps one client on one target while 0 < split < 100."""

    QUERY = "query"
    SESSION = "session"
    APPLICATION_NAME = "application_name"


class LegacyFormat(Choice):
    """`legacy_format`: how unmigrated rows keep their vector."""

    JSON = "json"
    BYTEA_F32 = "bytea_f32"
    BYTEA_F64 = "bytea_f64"
    ARRAY = "array"


class FallbackStorage(Choice):
    """`fallback_storage`: the in-memory store's element type."""

    FLOAT32 = "float32"
    INT8 = "int8"
    FLOAT16 = "float16"


class BadVectorMode(Choice):
    """`on_bad_vector`: a legacy value that is not a vector of the route's dims."""

    ERROR = "error"
    SKIP = "skip"


class InexactMode(Choice):
    """`on_inexact`: a similarity query the fallback cannot answer exactly."""

    ERROR = "error"  # SQLSTATE 0A000
    PRIMARY_ONLY = "primary_only"  # the pgvector rows only, with a NOTICE


def values(choices: type[StrEnum]) -> tuple[str, ...]:
    """The plain strings of an enum, for messages and TOML checks.

    >>> values(InexactMode)
    ('error', 'primary_only')
    """
    return tuple(member.value for member in choices)
