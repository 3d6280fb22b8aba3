# Two entry points for a new user; each builds its own virtual environment.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv demo psql chromium test lint floors bench clean

$(BIN)/pgcutover: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[embedded,test]'
	touch $@

venv: $(BIN)/pgcutover

demo: $(BIN)/pgcutover
	$(BIN)/pgcutover demo

# psql from the embedded PostgreSQL wheel, on the demo proxy (DB=pgcutover for the admin console)
DB ?= postgres
PORT ?= 6432
psql: $(BIN)/pgcutover
	"$$($(BIN)/python -c 'from pgcutover.proxy.embedded import pg_binary; print(pg_binary("psql"))')" \
		"postgresql://postgres@127.0.0.1:$(PORT)/$(DB)"

# The readiness page is tested in a real headless Chromium from the system packages (a fresh CI machine has none).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
		echo "installing chromium (apt) for the readiness page test"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# ruff everywhere; mypy on the files pyproject's [tool.mypy] names (strict on core, proxy/protocol and rewrite)
lint: $(BIN)/pgcutover
	$(BIN)/ruff check core proxy rewrite fallback deploy tests bench conftest.py
	$(BIN)/python tests/pkgroot.py >/dev/null
	$(BIN)/python -m mypy

# pyproject's testpaths: tests/ and the docstring examples of core/, proxy/, rewrite/, fallback/, deploy/
test: lint chromium
	$(BIN)/python -m pytest -q
	$(MAKE) --no-print-directory floors

# The declared minimum of every runtime dependency (pyproject `>=` floors, pinned by .ci/floors.py) in a venv of its
# own, with the tests that need no client library: a floor the code has outgrown fails here, not in a user's install.
FLOORS := .venv-floors
FLOOR_TOOLS := 'pytest>=8' 'hypothesis>=6.100' 'psycopg[binary]>=3.2' 'psycopg-pool>=3.2' 'pyyaml>=6'
floors: $(BIN)/pgcutover
	rm -rf $(FLOORS)
	$(PY) -m venv $(FLOORS)
	$(FLOORS)/bin/pip install -q --upgrade pip 'setuptools>=77'
	$(BIN)/python .ci/floors.py embedded > $(FLOORS)/floors.txt
	$(FLOORS)/bin/pip install -q -r $(FLOORS)/floors.txt $(FLOOR_TOOLS)
	$(FLOORS)/bin/pip install -q --no-deps --no-build-isolation -e .
	$(FLOORS)/bin/python -m pip freeze | grep -iE "^($$(cut -d= -f1 $(FLOORS)/floors.txt | tr -- '-_' '..' | paste -sd'|'))=="
	$(FLOORS)/bin/python -m pytest -q -p no:cacheprovider tests/rewrite tests/protocol tests/fallback tests/integration \
		core proxy rewrite fallback deploy

bench: $(BIN)/pgcutover
	$(BIN)/python bench/passthrough.py

clean:
	rm -rf $(VENV) $(FLOORS) .pgcutover .pkgroot
