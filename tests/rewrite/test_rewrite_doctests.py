"""The examples in the rewrite modules' docstrings run, with a shared route in scope."""

from __future__ import annotations

import doctest

import pytest

from proxy.config import Route
from rewrite import analyze, dialect, transforms
from rewrite.dialect import parse_one, to_sql

ROUTE = Route(table="public.items", column="embedding", vector_column="embedding_vector",
              shadow_table="ruvector_new.items", shadow_column="embedding", shadow_type="ruvector_new.vector")


@pytest.mark.parametrize("module", [dialect, transforms, analyze], ids=lambda m: m.__name__)
def test_doctests(module) -> None:
    globs = {"route": ROUTE, "Route": Route, "analyze": analyze.analyze, "to_sql": to_sql, "parse_one": parse_one}
    result = doctest.testmod(module, extraglobs=globs, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    if module is not analyze:
        assert result.attempted > 0
