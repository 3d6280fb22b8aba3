"""This checkout's folders as the one `pgcutover` package, for tests, their child processes and mypy.

The project installs core/, proxy/, rewrite/, fallback/ and deploy/ as `pgcutover.core`, ... (pyproject's package-dir).
An editable install maps those names to the checkout it was installed from, through an import hook that mypy cannot
read and that other checkouts (git worktrees sharing one venv) must not use. `.pkgroot/pgcutover/<folder>` links to
this checkout's folders instead; a path entry wins over the editable hook, which setuptools appends to sys.meta_path.

Run as a script (the Makefile does, before mypy), or call `link_package_tree()` (the root conftest.py does).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_ROOT = ROOT / ".pkgroot"
SOURCE_FOLDERS = ("core", "proxy", "rewrite", "fallback", "deploy")


def link_package_tree() -> Path:
    """Create (idempotently, safe when two test runs race) the link tree, and return the path entry to use."""
    package = PACKAGE_ROOT / "pgcutover"
    package.mkdir(parents=True, exist_ok=True)
    for folder in SOURCE_FOLDERS:
        link = package / folder
        if link.is_symlink():
            continue
        with contextlib.suppress(FileExistsError):  # another test run made it first
            link.symlink_to(Path("..", "..", folder), target_is_directory=True)  # relative: the checkout may move
    return PACKAGE_ROOT


def use_package_tree() -> None:
    """Put the link tree first on this process's path and on its children's (PYTHONPATH)."""
    entry = str(link_package_tree())
    if entry not in sys.path:
        sys.path.insert(0, entry)
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != entry]
    os.environ["PYTHONPATH"] = os.pathsep.join([entry, *inherited])


if __name__ == "__main__":
    print(link_package_tree())
