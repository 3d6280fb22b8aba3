"""Every corpus case plans to exactly the expected decision and SQL (no server needed)."""

from __future__ import annotations

import pytest
import rewrite_schema as schema
from rewrite_corpus import Case, cases

from pgcutover.rewrite.router import build_plan

CASES = cases()


def test_corpus_is_large_enough() -> None:
    assert sum(c.similarity for c in CASES) >= 60
    assert len({c.reason for c in CASES if not c.similarity}) >= 20


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_plan(case: Case) -> None:
    plan = build_plan(case.sql, schema.ROUTES, case.search_path, schema.catalog() if case.catalog else None)
    assert plan.reason == case.reason
    if not case.similarity:
        assert plan.passthrough and plan.sql_for("primary") is None and plan.sql_for("shadow") is None
        return
    assert plan.query is not None
    assert plan.primary_sql == case.primary
    assert plan.shadow_sql == case.shadow
