"""Load the fixture corpus: tests/rewrite/corpus/NNN_name.sql.

Each file has `-- key: value` headers, then sections opened by a line `-- <section>:`:

    -- reason: similarity            (or the expected passthrough reason)
    -- catalog: none                  (default: the full catalog of tests/rewrite/rewrite_schema.py)
    -- search_path: app, public       (default: public)
    -- params: ["[...]", 5]           (JSON; parameters when the SQL is executed)
    -- execute: no                    (do not run it on PostgreSQL)
    -- sql:            the client's SQL, exactly (one trailing newline dropped)
    -- primary:        expected primary_sql, or ORIGINAL (the client's bytes are forwarded)
    -- shadow:         expected shadow_sql
    -- hand-primary:   the query a person would write for the primary (default: the input, or `primary`)
    -- hand-shadow:    the query a person would write for the shadow (default: `shadow`)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

CORPUS = Path(__file__).parent / "corpus"
_SECTION = re.compile(r"^-- (sql|primary|shadow|hand-primary|hand-shadow):\s*$")
_HEADER = re.compile(r"^-- ([a-z_]+): (.*)$")


@dataclass
class Case:
    name: str
    reason: str
    sql: str
    catalog: bool = True
    search_path: tuple[str, ...] = ("public",)
    params: list = field(default_factory=list)
    execute: bool = True
    primary: str | None = None  # None: ORIGINAL
    shadow: str | None = None
    hand_primary: str | None = None
    hand_shadow: str | None = None

    @property
    def similarity(self) -> bool:
        return self.reason == "similarity"

    def hand(self, target: str) -> str:
        if target == "primary":
            return self.hand_primary or self.primary or self.sql
        return self.hand_shadow or self.shadow or ""


def load(path: Path) -> Case:
    headers: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for line in path.read_text().split("\n"):
        match = _SECTION.match(line)
        if match:
            current = match.group(1)
            sections[current] = []
            continue
        if current is None:
            header = _HEADER.match(line)
            if header:
                headers[header.group(1)] = header.group(2).strip()
            continue
        sections[current].append(line)
    text = {k: "\n".join(v).removesuffix("\n") for k, v in sections.items()}
    primary = text.get("primary")
    return Case(
        name=path.stem,
        reason=headers["reason"],
        sql=text["sql"],
        catalog=headers.get("catalog", "full") != "none",
        search_path=tuple(s.strip() for s in headers.get("search_path", "public").split(",")),
        params=json.loads(headers.get("params", "[]")),
        execute=headers.get("execute", "yes") != "no",
        primary=None if primary in (None, "ORIGINAL") else primary,
        shadow=text.get("shadow"),
        hand_primary=text.get("hand-primary"),
        hand_shadow=text.get("hand-shadow"),
    )


def cases() -> list[Case]:
    return [load(p) for p in sorted(CORPUS.glob("*.sql"))]
