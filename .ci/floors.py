"""Print pyproject's runtime dependencies pinned at their declared minimums (`name>=X` -> `name==X`).

`make floors` installs these into a separate venv and runs the tests that need no client library, so a floor that
the code has outgrown (an API added in a later release) fails CI instead of a user's install.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

FLOOR = re.compile(r"^(?P<name>[A-Za-z0-9_.\[\]-]+)\s*>=\s*(?P<version>[^,;\s]+)(?P<rest>[^;]*)(?P<marker>;.*)?$")


def pinned(requirement: str) -> str:
    match = FLOOR.match(requirement.strip())
    if not match:
        raise SystemExit(f"floors: dependency without a >= floor: {requirement!r}")
    return f"{match['name']}=={match['version']}{match['marker'] or ''}"


def main() -> int:
    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
    extras = sys.argv[1:]  # optional-dependency groups to pin as well (e.g. embedded)
    for requirement in [*project["dependencies"], *(r for e in extras for r in project["optional-dependencies"][e])]:
        print(pinned(requirement))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
