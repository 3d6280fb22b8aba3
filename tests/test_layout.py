"""The shape of the package: which folder may import which, how imports are spelled, and what a wheel ships.

The five source folders install as one package, `pgcutover` (pyproject's package-dir). Imports run one way:

    core  <-  rewrite  <-  fallback  <-  deploy  <-  proxy

core/ (the config model, the routing snapshot, the enums, SQLSTATE names, quoting, the LRU, the connection
factory) imports nothing of ours; each folder imports only the folders to its left; proxy/, the running proxy,
may import them all and nothing outside proxy/ imports it.
"""

from __future__ import annotations

import ast
import doctest
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import setuptools

from tests.pkgroot import ROOT, SOURCE_FOLDERS

ORDER = ("core", "rewrite", "fallback", "deploy", "proxy")  # a folder imports only folders before it
# Known exceptions, each a module and the folder it may reach "upward", with the reason it is still allowed:
EXCEPTIONS = {
    # `pgcutover explain` prints the decision the proxy would apply: it composes the router and the decision
    # (rewrite/decision.py) with the merge's verdict on the shape (fallback.merge.build_merge)
    ("rewrite/cli.py", "fallback"),
}
SHORT_NAMES = frozenset(SOURCE_FOLDERS)  # never imported by these names: always pgcutover.<folder>


def _python_files(*folders: str) -> Iterator[Path]:
    for folder in folders:
        path = ROOT / folder
        if path.is_file():
            yield path
            continue
        for file in sorted(path.rglob("*.py")):
            if "__pycache__" not in file.parts:
                yield file


def _trees(path: Path) -> Iterator[ast.AST]:
    """The module's syntax tree, and one per docstring example (doctests import too)."""
    tree = ast.parse(path.read_text(), str(path))
    yield tree
    parser = doctest.DocTestParser()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            docstring = ast.get_docstring(node, clean=False)
            for example in parser.get_examples(docstring or ""):
                try:
                    yield ast.parse(example.source)
                except SyntaxError:  # an example that is not a statement on its own (continuation lines)
                    continue


def _imported(path: Path) -> Iterator[tuple[str, int]]:
    """(absolute module name, level) of every import in the file; relative ones resolved against its package."""
    relative = path.relative_to(ROOT).with_suffix("")
    package = ["pgcutover", *relative.parts[:-1]]  # the package a relative import starts from
    for tree in _trees(path):
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield alias.name, 0
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0:
                    yield node.module or "", 0
                    continue
                base = package[: len(package) - (node.level - 1)]
                names = [node.module] if node.module else [alias.name for alias in node.names]
                for name in names:
                    yield ".".join([*base, name]), node.level


def test_import_directions() -> None:
    wrong = []
    for folder in SOURCE_FOLDERS:
        allowed = set(ORDER[: ORDER.index(folder)])
        for path in _python_files(folder):
            where = path.relative_to(ROOT).as_posix()
            for module, _ in _imported(path):
                parts = module.split(".")
                if parts[0] != "pgcutover" or len(parts) < 2 or parts[1] == folder:
                    continue
                target = parts[1]
                if target not in allowed and (where, target) not in EXCEPTIONS:
                    wrong.append(f"{where} imports {module}")
    assert not wrong, "imports against the direction core <- rewrite <- fallback <- deploy <- proxy:\n" + \
        "\n".join(wrong)


def test_core_imports_nothing_of_ours() -> None:
    ours = {f"pgcutover.{folder}" for folder in SOURCE_FOLDERS if folder != "core"}
    found = [f"{path.relative_to(ROOT)}: {module}" for path in _python_files("core")
             for module, _ in _imported(path) if ".".join(module.split(".")[:2]) in ours]
    assert not found, found


def test_no_short_package_names() -> None:
    """`from proxy.config import ...` would import a second copy (or another distribution's `proxy`)."""
    found = []
    for path in _python_files(*SOURCE_FOLDERS, "tests", "bench", "conftest.py"):
        for module, level in _imported(path):
            if level == 0 and module.split(".")[0] in SHORT_NAMES:
                found.append(f"{path.relative_to(ROOT)}: import {module}")
    assert not found, "write pgcutover.<folder>:\n" + "\n".join(found)


def _setuptools_major() -> int:
    return int(setuptools.__version__.split(".")[0])


def test_wheel_ships_one_package(tmp_path: Path) -> None:
    source = tmp_path / "src"  # a clean copy: an in-tree build would leave build/ and *.egg-info behind
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for folder in SOURCE_FOLDERS:
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    # pyproject asks for setuptools>=77 (the test extra installs it); an older one in this environment builds
    # in pip's isolated environment instead, which fetches it
    isolation = ["--no-build-isolation"] if _setuptools_major() >= 77 else []
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w",
                            str(tmp_path / "dist"), str(source)], capture_output=True, text=True, env=env,
                           timeout=600)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = (tmp_path / "dist").glob("pgcutover-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"pgcutover"}, top
    assert {name.split("/")[1] for name in names if name.startswith("pgcutover/")} >= set(SOURCE_FOLDERS)
    shipped_sql = {name.rpartition("/")[2] for name in names if name.startswith("pgcutover/deploy/sql/")}
    assert shipped_sql == {path.name for path in (ROOT / "deploy" / "sql").glob("*.sql")} != set()
