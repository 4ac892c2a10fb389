PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-slow demo lint typecheck bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

# Long runs (floods, repeated crash runs): marked slow, left out of `make test`, run by .ci/run.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

demo: $(STAMP)
	$(BIN)/casebridge demo

bench: $(STAMP)
	$(BIN)/python bench/seal.py
	$(BIN)/python bench/policy.py
	$(BIN)/python bench/federation.py

clean:
	rm -rf $(VENV) certs/dev .pytest_cache .mypy_cache .ruff_cache
