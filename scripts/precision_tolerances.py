"""How far float32, bfloat16 and float16 models are from the same weights in float64:
patched logits, EAP and integrated-gradient scores, and circuit outputs.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/precision_tolerances.py [--seeds 5]

Each model is built once in float64 and copied into each lower dtype (the weights are
rounded once), so every difference comes from computing in that dtype. Measures, each
the worst over the seeds:

- ``logits``: patched logits under random binary masks (each edge ablated with
  probability 1/2), ``max |x - x64| / max |x64|``.
- ``EAP`` / ``IG``: ``mask_gradient_prune_scores`` at ``mask_val=0`` and with
  ``integrated_grad_samples=5``: the same normalised error, Pearson and Spearman
  correlation with the float64 scores, and the fraction of float64's top 10% edges (by
  ``|score|``) that are also in the dtype's top 10%.
- ``EAP hooks``: the normalised error of the plain-hook EAP reference
  (``tests/reference.py``'s ``reference_eap_scores``: TransformerLens' own backward in the same
  dtype), i.e. the error that computing in that dtype brings anyway.
- ``circuits``: ``run_circuits`` outputs for circuits of 10%, 30% and 60% of the edges
  (chosen by the float64 EAP scores, so every dtype runs the same circuits), normalised
  error over all sizes and batches.

``docs/precision.md`` holds the table and the tolerances ``tests/patching/test_precision.py``
asserts.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from edgewise import (
    PromptDataLoader,
    PromptDataset,
    mask_gradient_prune_scores,
    patchable_model,
    run_circuits,
)
from edgewise.evaluation.circuits import flat_prune_scores
from edgewise.metrics.agreement import pearson, spearman, top_overlap
from edgewise.metrics.agreement import relative_error as rel_err
from edgewise.models import random_bridge, random_hooked_transformer
from edgewise.patching import PatchableModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference import reference_eap_scores  # noqa: E402

VOCAB = 24
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _hooked(**shape: Any) -> Callable[[int, torch.dtype], Any]:
    def build(seed: int, dtype: torch.dtype) -> Any:
        m64 = random_hooked_transformer(d_vocab=VOCAB, dtype=torch.float64, seed=seed, **shape)
        if dtype == torch.float64:
            return m64
        model = random_hooked_transformer(d_vocab=VOCAB, dtype=dtype, seed=seed, **shape)
        model.load_state_dict(m64.state_dict())
        return model

    return build


def _bridge(arch: str, **shape: Any) -> Callable[[int, torch.dtype], Any]:
    def build(seed: int, dtype: torch.dtype) -> Any:
        # the same seed gives the same float32 initialisation, then cast to dtype
        return random_bridge(arch, d_vocab=VOCAB, dtype=dtype, seed=seed, **shape)  # type: ignore[arg-type]

    return build


MODELS: dict[str, Callable[[int, torch.dtype], Any]] = {
    "hooked LN 2L d16": _hooked(n_layers=2, n_heads=4, d_head=4),
    "hooked RMS GQA rotary 2L d16": _hooked(n_layers=2, n_heads=4, d_head=4, n_kv_heads=2,
                                            normalization_type="RMS",
                                            positional_embedding_type="rotary"),
    "hooked LN 4L d64": _hooked(n_layers=4, n_heads=4, d_head=16),
    "bridge gpt2 2L d16": _bridge("gpt2", n_layers=2, n_heads=4, d_head=4),
}


def loader(seed: int, n: int = 8, seq: int = 6, batch_size: int = 4) -> PromptDataLoader:
    """Clean/corrupt prompts differing at the last two positions, random answers."""
    gen = torch.Generator().manual_seed(1000 + seed)
    clean = torch.randint(3, VOCAB, (n, seq), generator=gen)
    corrupt = clean.clone()
    corrupt[:, -2:] = torch.randint(3, VOCAB, (n, 2), generator=gen)
    answers = [torch.randint(0, VOCAB, (1,), generator=gen) for _ in range(n)]
    wrong = [torch.randint(0, VOCAB, (1,), generator=gen) for _ in range(n)]
    return PromptDataLoader(PromptDataset(clean, corrupt, answers, wrong), diverge_idx=0,
                            batch_size=batch_size)


def measure(pm: PatchableModel, seed: int, ref_scores: torch.Tensor | None = None) -> dict:
    """Everything compared, on one model: patched logits, EAP and IG scores (flat, graph
    order), and circuit outputs (circuits chosen by ``ref_scores``, default: its own EAP)."""
    data = loader(seed)
    batch = next(iter(data))
    gen = torch.Generator().manual_seed(seed)
    masks = {n: (torch.rand(m.mask_shape, generator=gen) < 0.5).float()
             for n, m in pm.dest_modules.items()}
    with torch.inference_mode():
        logits = pm.run_patched(batch.clean, masks, pm.src_outs(batch.corrupt)).clone()
    eap = mask_gradient_prune_scores(pm, data, None, "logit", "avg_diff", mask_val=0.0,
                                     progress=False)
    ig = mask_gradient_prune_scores(pm, data, None, "logit", "avg_diff",
                                    integrated_grad_samples=5, progress=False)
    hooks = reference_eap_scores(pm, data)
    flat_eap = flat_prune_scores(eap, pm)
    chosen = flat_eap if ref_scores is None else ref_scores
    shaped, i = {}, 0
    for name, m in pm.dest_modules.items():
        n = math.prod(m.mask_shape)
        shaped[name] = chosen[i : i + n].view(m.mask_shape)
        i += n
    outs = run_circuits(pm, data, [0.1, 0.3, 0.6], shaped, progress=False)
    circuits = torch.cat([o.flatten() for per in outs.values() for o in per.values()])
    return {
        "logits": logits,
        "eap": flat_eap,
        "ig": flat_prune_scores(ig, pm),
        "eap hooks": flat_prune_scores(hooks, pm),
        "circuits": circuits,
        "score_dtypes": {v.dtype for v in (*eap.values(), *ig.values())},
    }


def compare(got: dict, want: dict) -> dict[str, float]:
    row = {"logits": rel_err(got["logits"], want["logits"]),
           "circuits": rel_err(got["circuits"], want["circuits"]),
           "eap hooks": rel_err(got["eap hooks"], want["eap hooks"])}
    for key in ("eap", "ig"):
        row[f"{key} err"] = rel_err(got[key], want[key])
        row[f"{key} pearson"] = pearson(got[key], want[key])
        row[f"{key} spearman"] = spearman(got[key], want[key])
        row[f"{key} top10%"] = top_overlap(got[key], want[key])
    return row


WORST = {"logits": max, "circuits": max, "eap err": max, "ig err": max, "eap hooks": max}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    cols = ["logits", "eap err", "eap pearson", "eap spearman", "eap top10%",
            "ig err", "ig pearson", "ig spearman", "ig top10%", "circuits", "eap hooks"]
    print(f"worst over {args.seeds} seeds; err = max|x - x64| / max|x64|\n")
    print("| model | dtype | " + " | ".join(cols) + " |")
    print("|" + "---|" * (len(cols) + 2))
    for model_name in args.models:
        build = MODELS[model_name]
        rows: dict[str, list[dict[str, float]]] = {d: [] for d in DTYPES}
        for seed in range(args.seeds):
            pm64 = patchable_model(build(seed, torch.float64))
            want = measure(pm64, seed)
            for dname, dtype in DTYPES.items():
                got = measure(patchable_model(build(seed, dtype)), seed, want["eap"])
                assert got["score_dtypes"] == {torch.float32}, got["score_dtypes"]
                rows[dname].append(compare(got, want))
        for dname, per_seed in rows.items():
            worst = {c: WORST.get(c, min)(r[c] for r in per_seed) for c in cols}
            cells = [f"{worst[c]:.2e}" if c in WORST else f"{worst[c]:.4f}" for c in cols]
            print(f"| {model_name} | {dname} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
