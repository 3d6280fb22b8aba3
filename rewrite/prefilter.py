"""A textual pre-filter: SQL that cannot be a similarity query on a route is never parsed.

A similarity query must contain a pgvector distance (one of six operators, or one of six function names
followed by `(`), a route's table name and a route's column name. The check lower-cases the text once, rules
most statements out with plain substring tests (`<`, `distance`, `inner_product`), and only then runs compiled
regular expressions: well under a microsecond for ordinary SQL. Route names are lower-cased the same way as the
text (str.lower for str, ASCII-only bytes.lower for bytes), so a name present in the text is always found.

It only ever says "maybe", never "no" wrongly, for SQL written with plain or quoted identifiers. Identifiers
spelled with escapes (U&"...") are not recognised, so such queries pass through untouched, which is always safe.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pgcutover.core.config import Route

_OPERATORS = r"<[-=#+~%]>"
_FUNCTIONS = r"\b(?:l2_distance|cosine_distance|inner_product|l1_distance|hamming_distance|jaccard_distance)\s*\("


def _names_pattern(names: Iterable[str], *, encode: bool) -> str | bytes:
    # bytes SQL is lowered as bytes (ASCII letters only), so its names are too
    lowered = {n.encode().lower().decode("utf-8", "surrogateescape") if encode else n.lower() for n in names if n}
    alternatives = sorted((re.escape(n) for n in lowered), key=len, reverse=True)
    # A name is bounded by anything that cannot continue an identifier (quotes and dots included).
    pattern = r"(?<![\w$])(?:" + "|".join(alternatives) + r")(?![\w$])" if alternatives else r"(?!x)x"
    return pattern.encode("utf-8", "surrogateescape") if encode else pattern


class _Patterns:
    __slots__ = ("columns", "functions", "markers", "operators", "tables")

    def __init__(self, tables: list[str], columns: list[str], encode: bool) -> None:
        def compile_(pattern: str | bytes) -> re.Pattern[Any]:
            if encode and isinstance(pattern, str):
                pattern = pattern.encode()
            return re.compile(pattern, re.ASCII)

        self.operators = compile_(_OPERATORS)
        self.functions = compile_(_FUNCTIONS)
        self.tables = compile_(_names_pattern(tables, encode=encode))
        self.columns = compile_(_names_pattern(columns, encode=encode))
        self.markers = (b"<", b"distance", b"inner_product") if encode else ("<", "distance", "inner_product")


class Prefilter:
    """`might_match(sql)` is False only when `sql` cannot be a similarity query on any route."""

    __slots__ = ("_bytes", "_str")

    def __init__(self, routes: Sequence[Route]) -> None:
        tables = [r.relname for r in routes]
        columns = [n for r in routes for n in (r.column, r.pg_vector_column)]
        self._str = _Patterns(tables, columns, encode=False)
        self._bytes = _Patterns(tables, columns, encode=True)

    def might_match(self, sql: str | bytes) -> bool:
        low: Any = sql.lower()  # str or bytes, searched with the patterns of its kind
        patterns = self._str if isinstance(sql, str) else self._bytes
        lt, distance, inner = patterns.markers
        if not ((lt in low and patterns.operators.search(low))
                or ((distance in low or inner in low) and patterns.functions.search(low))):
            return False
        return bool(patterns.tables.search(low) and patterns.columns.search(low))
