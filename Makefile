PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench clean

$(BIN)/leasestore: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

setup: $(BIN)/leasestore

demo: setup
	$(BIN)/leasestore demo

test: setup
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/store_vs_raw.py
	$(BIN)/python benchmarks/exporter_scrape.py

clean:
	rm -rf $(VENV) out .pytest_cache
