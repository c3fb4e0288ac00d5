PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The venv's Python once it exists (it can log in to PostgreSQL), else $(PY).
CHECK_PY = $(firstword $(wildcard $(BIN)/python) $(PY))

.PHONY: setup demo test services bench clean

$(BIN)/leasestore: pyproject.toml
	@echo "==> creating the virtualenv $(VENV) with $(PY)"
	$(PY) -m venv $(VENV)
	@echo "==> upgrading pip in $(VENV)"
	$(BIN)/pip install -q --upgrade pip
	@echo "==> installing leasestore (editable) with its test tools into $(VENV): a minute or two the first time"
	$(BIN)/pip install -q -e '.[test]'
	@touch $@
	@echo "==> $(VENV) is ready"

setup: $(BIN)/leasestore

demo: setup
	@echo "==> leasestore demo: agents drain a queue on a fresh SQLite file in a temporary folder"
	$(BIN)/leasestore demo

# Says up front which real services the tests use and which are missing; never fails by itself.
services:
	@sh scripts/check_services.sh $(CHECK_PY)

test: services setup
	@echo "==> type check (mypy --strict)"
	$(BIN)/mypy
	@echo "==> tests on two workers, the slow ones one after another on one of them (a dot per test; the slowest are listed at the end)"
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=10

bench: setup
	$(BIN)/python benchmarks/store_vs_raw.py
	$(BIN)/python benchmarks/exporter_scrape.py

clean:
	rm -rf $(VENV) out .pytest_cache
