# Set-up and entry points. `make demo` and `make test` each create the virtual
# environment on first use, so both work from a clean clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

# Two environments, both tested by `make test`:
#   .venv-tl4  what a plain `pip install edgewise` resolves today (TransformerLens 4.x: bridges only)
#   .venv      the TransformerLens 3.9 pin (HookedTransformer and TransformerBridge)
VENV4 := .venv-tl4
BIN4 := $(VENV4)/bin

$(BIN)/.installed: pyproject.toml constraints-test.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints-test.txt -e ".[dev,tracr]"
	touch $@

$(BIN4)/.installed: pyproject.toml
	$(PY) -m venv $(VENV4)
	$(BIN4)/pip install --quiet torch==2.13.0
	$(BIN4)/pip install --quiet -e ".[dev,tracr]"
	touch $@

.PHONY: install demo test test-all bench
install: $(BIN)/.installed $(BIN4)/.installed

demo: $(BIN4)/.installed
	$(BIN4)/edgewise demo --out runs/demo

# The two suites run side by side, one thread each (the machine has two cores; tiny models
# gain little from a second thread), and each one's output is printed when it ends.
test: install
	$(BIN4)/ruff check .
	$(MAKE) --no-print-directory -j2 --output-sync=target test-tl4 test-tl3

.PHONY: test-tl4 test-tl3
test-tl4: $(BIN4)/.installed
	@echo "== TransformerLens $$($(BIN4)/python -c 'import importlib.metadata as m; print(m.version("transformer-lens"))') (plain install)"
	OMP_NUM_THREADS=1 EDGEWISE_TEST_THREADS=1 $(BIN4)/python -m pytest -q -m "not slow" -p no:cacheprovider --durations=5

test-tl3: $(BIN)/.installed
	@echo "== TransformerLens $$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("transformer-lens"))') (pinned)"
	OMP_NUM_THREADS=1 EDGEWISE_TEST_THREADS=1 $(BIN)/python -m pytest -q -m "not slow" -p no:cacheprovider --durations=5

test-all: install
	$(BIN4)/python -m pytest -q -p no:cacheprovider
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: install
	$(BIN)/python bench/bench_patch.py

# Every GPU row in one run (measured on CUDA, else projected); DRY=1: tiny, on the CPU
.PHONY: bench-gpu
bench-gpu: $(BIN4)/.installed
	PYTHON=$(BIN4)/python bench/gpu.sh $(if $(DRY),--dry-run)

# Parity with auto-circuit 1.0.1 (parity/README.md): auto-circuit in its own
# TransformerLens 2.x environment (.venv-ac), edgewise from .venv, same float64 weights.
VENVAC := .venv-ac
$(VENVAC)/bin/.installed:
	$(PY) -m venv $(VENVAC)
	$(VENVAC)/bin/pip install --quiet torch==2.13.0
	$(VENVAC)/bin/pip install --quiet auto-circuit==1.0.1 transformer-lens==2.18.0 "pyarrow<26" "plotly<7" attrs
	touch $@

.PHONY: parity
# .venv is built only when it is missing (it is not refreshed here: `make install` does that)
parity: $(if $(wildcard $(BIN)/python),,$(BIN)/.installed) $(VENVAC)/bin/.installed
	$(BIN)/python parity/compare.py --ac-python $(VENVAC)/bin/python --ew-python $(BIN)/python

# Parity with MIB's reference code (parity/MIB.md): hannamw/EAP-IG at the commit
# hannamw/MIB-circuit-track pins and MIB-circuit-track, both from local checkouts in
# MIB_REF (nothing downloaded, nothing vendored), run in their own TransformerLens 2.x
# environment (.venv-mib); edgewise from .venv, same weights, prompts and scores.
VENVMIB := .venv-mib
MIB_REF ?=
$(VENVMIB)/bin/.installed:
	$(PY) -m venv $(VENVMIB)
	$(VENVMIB)/bin/pip install --quiet torch==2.13.0
	$(VENVMIB)/bin/pip install --quiet transformer-lens==2.18.0 "matplotlib>=3.10.1" tabulate pandas datasets "pyarrow<26"
	touch $@

.PHONY: mib-parity mib-ref-given
mib-ref-given:
	@test -n "$(MIB_REF)" || { echo "edgewise: error: give MIB_REF=DIR, a folder holding EAP-IG/ and MIB-circuit-track/ checkouts (parity/MIB.md)" >&2; exit 2; }

mib-parity: mib-ref-given $(if $(wildcard $(BIN)/python),,$(BIN)/.installed) $(VENVMIB)/bin/.installed
	$(BIN)/python parity/mib_compare.py --mib-ref "$(MIB_REF)" --mib-python $(VENVMIB)/bin/python
