# Two entry points for a new user; each builds its own virtual environment.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/pgcutover: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[embedded,test]'
	touch $@

demo: $(BIN)/pgcutover
	$(BIN)/pgcutover demo

test: $(BIN)/pgcutover
	$(BIN)/ruff check proxy rewrite fallback deploy tests bench
	$(BIN)/python -m pytest -q tests

bench: $(BIN)/pgcutover
	$(BIN)/python bench/passthrough.py

clean:
	rm -rf $(VENV) .pgcutover
