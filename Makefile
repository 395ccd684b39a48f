# Set-up and entry points. `make demo` and `make test` each create the virtual
# environment on first use, so both work from a clean clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

$(BIN)/.installed: pyproject.toml constraints-test.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints-test.txt -e ".[dev]"
	touch $@

.PHONY: install demo test lint bench
install: $(BIN)/.installed

demo: install
	$(BIN)/python examples/demo.py

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow" -p no:cacheprovider

test-all: install
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: install
	$(BIN)/python bench/bench_patch.py
