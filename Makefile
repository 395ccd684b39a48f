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
	$(BIN)/pip install --quiet -c constraints-test.txt -e ".[dev,tracr]"
	touch $@

.PHONY: install demo test test-all bench smoke-tl4
install: $(BIN)/.installed

demo: install
	$(BIN)/edgewise demo --out runs/demo

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow" -p no:cacheprovider

test-all: install
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: install
	$(BIN)/python bench/bench_patch.py

# Smoke run of the TransformerBridge path on TransformerLens 4.x (no HookedTransformer there).
VENV4 := .venv-tl4
smoke-tl4:
	test -x $(VENV4)/bin/python || $(PY) -m venv $(VENV4)
	$(VENV4)/bin/pip install --quiet torch==2.13.0
	$(VENV4)/bin/pip install --quiet "transformer-lens>=4,<5" -e ".[dev]"
	$(VENV4)/bin/python -m pytest -q -p no:cacheprovider -k "bridge or gpt2_small" \
		tests/test_patching.py tests/test_mask_gradient.py tests/test_circuits.py tests/test_hook_points.py \
		tests/test_memory.py
