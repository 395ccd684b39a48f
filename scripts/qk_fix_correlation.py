"""How closely AtP*'s QK fix and plain EAP track exact patching on query/key edges.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/qk_fix_correlation.py [--seeds 10]

Random 2-layer HookedTransformers (4 heads of 8, LayerNorm, MLPs, float64) with W_Q and
W_K scaled by 4 (sharper attention), 8 random prompt pairs of 6 tokens, logit
difference. Prints, per seed and on average, the Pearson correlation of each method's
Q/K edge scores with exact per-edge patching.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from edgewise import (
    atp_star_prune_scores,
    exact_patching_prune_scores,
    mask_gradient_prune_scores,
    patchable_model,
)
from edgewise.models import random_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from util import random_loader  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, default=10)
    args = p.parse_args()
    rows = []
    for seed in range(args.seeds):
        model = random_model(n_layers=2, n_heads=4, d_head=8, d_vocab=20,
                                          dtype=torch.float64, seed=seed)
        with torch.no_grad():
            for block in model.blocks:
                block.attn.W_Q.mul_(4)
                block.attn.W_K.mul_(4)
        pm = patchable_model(model)
        loader = random_loader(seed=seed, n=8, seq=6, batch_size=4)
        exact = exact_patching_prune_scores(pm, loader, edges_per_pass=16, progress=False)
        eap = mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", mask_val=0.0,
                                         progress=False)
        atp = atp_star_prune_scores(pm, loader, progress=False)
        qk = [e for e in pm.edges if e.dest.qkv in ("q", "k")]

        def values(scores, qk=qk):
            return torch.tensor([float(scores[e.dest.module_name][e.patch_idx]) for e in qk])

        want = values(exact)
        corr = [float(torch.corrcoef(torch.stack([want, values(s)]))[0, 1]) for s in (eap, atp)]
        rows.append(corr)
        print(f"seed {seed}: {len(qk)} Q/K edges, corr(EAP, exact) = {corr[0]:+.3f}, "
              f"corr(QK fix, exact) = {corr[1]:+.3f}")
    print(f"mean over {args.seeds} seeds: EAP {statistics.mean(r[0] for r in rows):+.3f}, "
          f"QK fix {statistics.mean(r[1] for r in rows):+.3f}")


if __name__ == "__main__":
    main()
