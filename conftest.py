"""The package this checkout provides, and the names its docstring examples share (pytest's doctest_namespace).

The doctests of core/, proxy/, rewrite/, fallback/ and deploy/ run with --doctest-modules (pyproject.toml).
pytest imports those files by their folder names (`core.routing`); each such name is made the same module object
as the package's (`pgcutover.core.routing`), so no module is loaded twice (twice would mean two classes per enum
and metrics registered twice). The source code itself never uses those short names (tests/test_layout.py).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

import pytest

from tests.pkgroot import SOURCE_FOLDERS, use_package_tree

use_package_tree()  # before the first import of pgcutover: this checkout's code, here and in child processes


def _alias_folder_names() -> None:
    for folder in SOURCE_FOLDERS:
        package = importlib.import_module(f"pgcutover.{folder}")
        sys.modules[folder] = package
        for info in pkgutil.walk_packages(package.__path__, f"pgcutover.{folder}."):
            sys.modules[info.name.removeprefix("pgcutover.")] = importlib.import_module(info.name)


_alias_folder_names()

from pgcutover.core.config import Route  # noqa: E402
from pgcutover.rewrite.analyze import analyze  # noqa: E402
from pgcutover.rewrite.dialect import parse_one, to_sql  # noqa: E402

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
