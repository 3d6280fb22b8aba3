"""Every bench script still imports. The suite does not run them (timed figures belong in bench/, not in tests), so
without this a moved module (pgcutover.proxy.config -> pgcutover.core.config) shows only when someone benchmarks."""

from __future__ import annotations

import importlib

import pytest

from tests.pkgroot import ROOT

SCRIPTS = sorted(path.stem for path in (ROOT / "bench").glob("*.py") if path.stem != "__init__")


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_imports(script: str) -> None:
    importlib.import_module(f"bench.{script}")
