#!/usr/bin/env bash
# Every GPU row of the benchmarks in one run (bench/gpu_rows.py): measured on CUDA,
# projected by bench/cost_model.py otherwise. `bench/gpu.sh --dry-run` runs every row
# end to end on the CPU at tiny sizes. PYTHON picks the interpreter (default: .venv-tl4,
# else .venv, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for p in .venv-tl4/bin/python .venv/bin/python; do [ -x "$p" ] && PY="$p" && break; done
fi
exec "${PY:-python3}" bench/gpu_rows.py "$@"
