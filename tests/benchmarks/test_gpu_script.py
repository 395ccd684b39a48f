"""``bench/gpu.sh --dry-run`` (``make bench-gpu``'s script) runs every GPU row end to end
on the CPU at tiny sizes, so it works the day a GPU is lent; and its cost model's
projections are the closed forms its docstring states."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from cost_model import H100, cost, forward_flops  # noqa: E402
from edgewise.models.shapes import SHAPES  # noqa: E402


def test_dry_run_prints_every_row_measured_and_projected():
    env = dict(os.environ, PYTHON=sys.executable, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))  # fmt: skip
    res = subprocess.run([str(ROOT / "bench" / "gpu.sh"), "--dry-run"], env=env,
                         capture_output=True, text=True, timeout=900)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    for row in ("[1] GPT-2 small, EAP vs floor, 8x16", "[2] GPT-2 small, EAP vs floor, 32x32",
                "[3] GPT-2 small, ACDC", "[4] Pythia-1.4B, EAP, 16x64, float32",
                "[5] Llama-3.1-8B, EAP, bfloat16", "[6] auto-circuit"):  # fmt: skip
        assert row in out, out
    assert out.count("DRY RUN (CPU, 1 layer, widths / 16: not a timing): ") == 5
    assert out.count("PROJECTION: ") == 5 and "projections assume H100 SXM (assumed)" in out
    assert "nan" not in out.split("[5]")[1]  # the bfloat16 row computed finite numbers


def test_cost_model_counts_are_the_stated_closed_forms():
    m = SHAPES["gpt2"]
    # GPT-2 small: 85,056,000 parameters outside the embeddings (124,439,808 - 50257 x 768
    # - 1024 x 768); 8 x 16 tokens, attention 4 T s H d_head per layer, unembedding 2 T d V
    tokens = 8 * 16
    want = 2 * tokens * 85_056_000 + 4 * tokens * 16 * 12 * 64 * 12 + 2 * tokens * 768 * 50257
    assert m.n_params - 50257 * 768 - 1024 * 768 == 85_056_000
    assert forward_flops(m, 8, 16) == want
    eap, floor = cost("eap", m, 32491, 157, 8, 16), cost("floor", m, 32491, 157, 8, 16)
    assert floor.flops == 3 * want and eap.flops == 3 * want + 3 * 2 * 32491 * tokens * 768
    ig = cost("eap-ig", m, 32491, 157, 8, 16, steps=5)
    assert ig.flops == 2 * want + 5 * (2 * want + 3 * 2 * 32491 * tokens * 768)
    # compute-bound in float32: FLOPs / (67e12 x 0.5) plus 3 passes x 40 kernels x 12 layers x 6 us
    big = cost("eap", m, 32491, 157, 512, 1024)
    assert big.seconds(H100, 12, torch.float32) == pytest.approx(
        big.flops / (67e12 * 0.5) + 3 * 40 * 12 * 6e-6)
    with pytest.raises(ValueError, match="unknown algorithm 'acdc2'; choose floor, eap, eap-ig or acdc"):
        cost("acdc2", m, 1, 1, 1, 1)
