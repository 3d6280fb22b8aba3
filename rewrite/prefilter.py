"""A textual pre-filter: SQL that cannot be a similarity query on a route is never parsed.

A similarity query must contain a pgvector distance (one of six operators, or one of six function names
followed by `(`), a route's table name and a route's column name. Three compiled regular expressions over
the raw text decide that in microseconds; they only ever say "maybe", never "no" wrongly, for SQL written with
plain or quoted identifiers. Identifiers spelled with escapes (U&"...") are not recognised, so such queries pass
through untouched, which is always safe.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.config import Route

_DISTANCE = (r"<->|<=>|<\#>|<\+>|<~>|<%>"
             r"|\b(?:l2_distance|cosine_distance|inner_product|l1_distance|hamming_distance|jaccard_distance)\s*\(")


def _names_pattern(names: Iterable[str]) -> str:
    alternatives = sorted({re.escape(n) for n in names if n}, key=len, reverse=True)
    # A name is bounded by anything that cannot continue an identifier (quotes and dots included).
    return r"(?<![\w$])(?:" + "|".join(alternatives) + r")(?![\w$])" if alternatives else r"(?!x)x"


class Prefilter:
    """`might_match(sql)` is False only when `sql` cannot be a similarity query on any route."""

    __slots__ = ("_columns", "_columns_b", "_distance", "_distance_b", "_tables", "_tables_b")

    def __init__(self, routes: Sequence[Route]) -> None:
        tables = [r.relname for r in routes]
        columns = [n for r in routes for n in (r.column, r.pg_vector_column)]
        flags = re.IGNORECASE | re.ASCII  # same answer for str and bytes
        self._distance = re.compile(_DISTANCE, flags)
        self._tables = re.compile(_names_pattern(tables), flags)
        self._columns = re.compile(_names_pattern(columns), flags)
        self._distance_b = re.compile(_DISTANCE.encode(), flags)
        self._tables_b = re.compile(_names_pattern(tables).encode(), flags)
        self._columns_b = re.compile(_names_pattern(columns).encode(), flags)

    def might_match(self, sql: str | bytes) -> bool:
        if isinstance(sql, str):
            return bool(self._distance.search(sql) and self._tables.search(sql) and self._columns.search(sql))
        return bool(self._distance_b.search(sql) and self._tables_b.search(sql) and self._columns_b.search(sql))
