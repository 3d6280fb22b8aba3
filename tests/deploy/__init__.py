"""The deploy tests. This package is imported as `deploy` (pytest puts tests/ on sys.path, and tests/ has no
__init__.py), which hides the real `deploy` package: without the line below, `deploy.triggers` and friends were
found by the venv's editable-install finder, i.e. in whatever checkout the venv was installed from, not in this
one. Searching the real package's directory too makes `deploy.X` this checkout's deploy/X.py."""

from pathlib import Path

__path__.append(str(Path(__file__).resolve().parents[2] / "deploy"))
