"""A random-weight model at Qwen2.5-0.5B's real shape (24 layers, d_model 896, 14 query
and 2 key/value heads of 64, d_mlp 4864, vocabulary 151,936, tied embeddings, Q/K/V
biases; 494M parameters) through MIB's pipeline on the default install's model class, a
TransformerBridge: MIB's graph with grouped-query attention ungrouped (179,749 edges),
EAP scores, importances and 9 circuits in MIB's layout, validated with the shape check.

    HF_HUB_OFFLINE=1 .venv-tl4/bin/python bench/bench_mib_qwen.py [--batch 2 --seq 6] [--out DIR]

Prints the wall time of each stage and the process's peak resident memory (``ru_maxrss``,
everything: weights, tokenizer, passes, JSON files) after each. ``--layers N`` builds
only the first N layers (a quick look; the shape check then fails, as it should).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402


def peak_gib() -> float:
    """Peak resident set of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=2, help="prompts (one batch)")
    p.add_argument("--seq", type=int, default=6, help="tokens per prompt")
    p.add_argument("--layers", type=int, default=None, help="build only this many layers")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="folder for the MIB files (default: a temp dir)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    import transformer_lens  # noqa: F401

    from edgewise import (
        PromptDataLoader,
        PromptDataset,
        edge_attribution_patching_prune_scores,
        patchable_model,
    )
    from edgewise.mib.random_models import random_mib_bridge
    from edgewise.mib.submission import export_circuits, export_importances, validate_submission

    rows = []

    def stage(name: str, start: float) -> float:
        now = time.perf_counter()
        rows.append((name, now - start, peak_gib()))
        print(f"{name:<44}{now - start:>9.1f} s   peak RSS {peak_gib():6.2f} GiB", flush=True)
        return now

    t = stage("imports", t0)
    model = random_mib_bridge("qwen2.5", n_layers=args.layers)
    model.to(args.device)
    n_params = sum(q.numel() for q in model.original_model.parameters())
    t = stage(f"random bridge ({n_params:,} parameters)", t)
    pm = patchable_model(model, ungroup_kv=True, slice_output="last_seq")
    t = stage(f"patchable_model, ungrouped ({pm.n_edges:,} edges)", t)

    gen = torch.Generator().manual_seed(0)
    vocab = int(model.cfg.d_vocab)
    clean = torch.randint(3, vocab, (args.batch, args.seq), generator=gen)
    corrupt = clean.clone()
    corrupt[:, -2:] = torch.randint(3, vocab, (args.batch, 2), generator=gen)
    answers = torch.randint(3, vocab, (args.batch, 1), generator=gen)
    wrong = torch.randint(3, vocab, (args.batch, 1), generator=gen)
    loader = PromptDataLoader(PromptDataset(clean, corrupt, answers, wrong),
                              seq_len=None, diverge_idx=0, batch_size=args.batch)  # fmt: skip
    scores = edge_attribution_patching_prune_scores(pm, loader, progress=False)
    t = stage(f"EAP, {args.batch} prompts x {args.seq} tokens", t)

    out = args.out or tempfile.mkdtemp(prefix="mib-qwen-")
    export_importances(out, pm, scores, "ioi", "qwen2.5")
    t = stage("importances.json", t)
    export_circuits(os.path.join(out, "circuits"), pm, scores, "ioi", "qwen2.5")
    t = stage("9 circuits", t)
    try:
        found = validate_submission(out, min_tasks=1, min_models=1, check_shapes=True)
    except ValueError as e:
        print(f"validate_submission (shape check on): {e}")
        return 1
    stage("validate_submission (shape check on)", t)
    print(f"valid: {found}; files in {out}")
    print(f"total {time.perf_counter() - t0:.1f} s, peak RSS {peak_gib():.2f} GiB, "
          f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
