"""End-to-end: score every edge of a tiny model, pick circuits, measure faithfulness.

Runs offline in seconds: a random-weight 2-layer model (a TransformerLens
`TransformerBridge` on a plain install, a `HookedTransformer` on TransformerLens 3.9) and
the `toy_copy` dataset that ships inside edgewise. Swap in
`edgewise.models.load_hf_bridge("path/to/model")` (a local Hugging Face folder) and your
own dataset JSON (docs/datasets.md) for a real experiment; nothing else changes.
"""

from __future__ import annotations

import torch

import edgewise as ew
from edgewise.models import random_model


def main() -> None:
    torch.manual_seed(0)
    model = random_model(n_layers=2, n_heads=4, d_head=8, d_vocab=50, seed=0)
    pm = ew.patchable_model(model, factorized=True, slice_output="last_seq", separate_qkv=True)
    train, test = ew.load_datasets_from_json(pm, "toy_copy", batch_size=4,
                                             train_test_size=(8, 8), shuffle=False)
    print(f"graph: {len(pm.srcs)} sources, {len(pm.dests)} destinations, {pm.n_edges} edges")

    algos = {
        "EAP": lambda: ew.mask_gradient_prune_scores(
            pm, train, None, "logit", "avg_diff", mask_val=0.0, progress=False),
        "IG (10 steps)": lambda: ew.mask_gradient_prune_scores(
            pm, train, None, "logit", "avg_diff", integrated_grad_samples=10, progress=False),
    }
    sizes = [5, 20, 50, pm.n_edges]
    print(f"\n{'algorithm':<14} {'edges':>6} {'logit diff %':>13} {'KL(full||circuit)':>18}")
    for name, run in algos.items():
        scores = run()
        outs = ew.run_circuits(pm, test, sizes, scores, progress=False)
        pct = dict(ew.measure_logit_diff_percent(pm, test, outs))
        kl = dict(ew.measure_kl_div(pm, test, outs))
        for size in sorted(outs):
            print(f"{name:<14} {size:>6} {pct[size]:>13.1f} {kl[size]:>18.4f}")
        top = ew.circuit_edges(pm, scores, 5)
        print(f"{'':<14} top edges: {', '.join(e.name for e in top)}")


if __name__ == "__main__":
    main()
