# Two entry points for a new user; each builds its own virtual environment.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv demo psql test lint bench clean

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
	"$$($(BIN)/python -c 'from proxy.embedded import pg_binary; print(pg_binary("psql"))')" \
		"postgresql://postgres@127.0.0.1:$(PORT)/$(DB)"

test: $(BIN)/pgcutover
	$(BIN)/ruff check proxy rewrite fallback deploy tests bench
	$(BIN)/python -m pytest -q tests

bench: $(BIN)/pgcutover
	$(BIN)/python bench/passthrough.py

clean:
	rm -rf $(VENV) .pgcutover
