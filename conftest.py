"""Names the docstring examples of rewrite/ share (pytest's doctest_namespace), so each example stays short.

The doctests of proxy/, rewrite/, fallback/ and deploy/ run with --doctest-modules (pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import Route
from rewrite.analyze import analyze
from rewrite.dialect import parse_one, to_sql

ROUTE = Route(table="public.items", column="embedding", vector_column="embedding_vector",
              shadow_table="ruvector_new.items", shadow_column="embedding", shadow_type="ruvector_new.vector")

TESTS = Path(__file__).resolve().parent / "tests"


def pytest_ignore_collect(collection_path: Path) -> bool | None:
    """tests/ helper modules (fixtures, the Django app) are imported by the tests that use them, in their context
    (the Django app needs its settings): --doctest-modules must not import them on their own."""
    if collection_path.suffix == ".py" and TESTS in collection_path.parents and collection_path.name != "conftest.py" \
            and not collection_path.name.startswith("test_"):
        return True
    return None


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace: dict[str, object]) -> None:
    doctest_namespace.update(route=ROUTE, Route=Route, analyze=analyze, to_sql=to_sql, parse_one=parse_one)
