"""ACDC per tau, edgewise against the public auto-circuit 1.0.1, on the same model and data.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_acdc_vs_auto_circuit.py [--layers 4]

Needs auto-circuit in its own environment (``.venv-ac``, as ``make parity`` builds it;
never in the test environment). The script runs each library in its own process (the
same code, the names bound from ``edgewise`` or ``auto_circuit`` as in ``parity/``):

- model: a ``HookedTransformer`` with ``--layers`` layers, d_model 256 (8 heads of 32),
  d_mlp 1024, d_vocab 5000, float32, initialised as TransformerLens does but from one
  seeded generator in sorted name order (so both TransformerLens versions hold the same
  weights);
  factorized graph, separate Q/K/V, output at the last position;
- data: one batch of ``--batch`` x ``--seq`` random tokens; the corrupt prompts differ
  in the last two positions (``--corrupt start``: the first two, so that no position
  before the corruption can be skipped);
- one tau (1e-3 of the KL divergence with every edge ablated, rounded down to
  base * 10**exp), KL divergence; each library's default ACDC otherwise.

It prints each library's wall time and ms per tested edge, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(lib: str, args: argparse.Namespace):
    import torch
    import transformer_lens as tl

    if lib == "edgewise":
        from edgewise import PromptDataLoader, PromptDataset, acdc_prune_scores, patchable_model
    else:
        from auto_circuit.data import PromptDataLoader, PromptDataset
        from auto_circuit.prune_algos.ACDC import acdc_prune_scores
        from auto_circuit.utils.graph_utils import patchable_model
    torch.set_num_threads(args.threads)
    cfg = tl.HookedTransformerConfig(
        n_layers=args.layers, d_model=256, n_heads=8, d_head=32, d_mlp=1024, d_vocab=args.vocab,
        n_ctx=max(32, args.seq), act_fn="gelu", normalization_type="LN", dtype=torch.float32,
    )
    model = tl.HookedTransformer(cfg)
    gen = torch.Generator().manual_seed(0)
    state = model.state_dict()
    with torch.no_grad():  # TransformerLens' own scheme: N(0, 0.8 / sqrt(d_model)) matrices,
        for name in sorted(state):  # zero biases, LayerNorm weight 1 and bias 0
            t, leaf = state[name], name.rsplit(".", 1)[-1]
            if not t.is_floating_point() or leaf in ("IGNORE", "mask"):
                continue
            if leaf.startswith("W"):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.8 / math.sqrt(256))
            else:
                t.fill_(1.0 if leaf == "w" else 0.0)
    model.load_state_dict(state)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if lib == "auto_circuit":  # the hook flags auto-circuit's load_tl_model switches on
        model.cfg.use_attn_result = True
        model.cfg.use_split_qkv_input = True
        model.cfg.use_hook_mlp_in = True
    gen = torch.Generator().manual_seed(1)
    clean = torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen)
    corrupt = clean.clone()
    where = slice(-2, None) if args.corrupt == "end" else slice(0, 2)
    corrupt[:, where] = torch.randint(0, args.vocab, (args.batch, 2), generator=gen)
    answers = [a for a in torch.randint(0, args.vocab, (args.batch, 1), generator=gen)]
    wrong = [a for a in torch.randint(0, args.vocab, (args.batch, 1), generator=gen)]
    loader = PromptDataLoader(PromptDataset(list(clean), list(corrupt), answers, wrong),
                              seq_len=None, diverge_idx=0, batch_size=args.batch)  # fmt: skip
    pm = patchable_model(model, factorized=True, slice_output="last_seq", separate_qkv=True,
                         device=torch.device("cpu"))  # fmt: skip
    return pm, loader, acdc_prune_scores


def worker(lib: str, args: argparse.Namespace) -> None:
    pm, loader, acdc_prune_scores = build(lib, args)
    exp, base = args.tau
    t0 = time.perf_counter()
    scores = acdc_prune_scores(pm, loader, None, [exp], [base], "kl_div")
    wall = time.perf_counter() - t0
    kept = sum(int((s == float("inf")).sum()) for s in scores.values())
    print(json.dumps({"lib": lib, "wall_s": wall, "n_edges": len(pm.edges), "kept": kept}))


def tau_for(args: argparse.Namespace) -> tuple[int, int]:
    """1e-3 of the loss with every edge ablated, computed with edgewise."""
    import torch

    pm, loader, _ = build("edgewise", args)
    batch = next(iter(loader))
    with torch.inference_mode():
        full = pm(batch.clean)[pm.out_slice].double()
        out = pm.run_patched(batch.clean, pm.new_masks(1.0), pm.src_outs(batch.corrupt))[pm.out_slice]
    lp, lq = full.log_softmax(-1), out.double().log_softmax(-1)
    tau = float((lp.exp() * (lp - lq)).sum(-1).mean()) * 1e-3
    exp = math.floor(math.log10(tau))
    return exp, max(1, int(tau / 10.0**exp))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=16)
    p.add_argument("--vocab", type=int, default=5000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--corrupt", choices=("end", "start"), default="end",
                   help="where the corrupt prompts differ: the last two positions (default; "
                        "passes then compute only those) or the first two (every position)")
    p.add_argument("--ac-python", default=str(ROOT / ".venv-ac" / "bin" / "python"))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--tau", type=int, nargs=2, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        worker(args.worker, args)
        return
    if not os.path.exists(args.ac_python):
        sys.exit(f"no auto-circuit environment at {args.ac_python} (build it with `make parity`)")
    exp, base = tau_for(args)
    common = ["--layers", str(args.layers), "--batch", str(args.batch), "--seq", str(args.seq),
              "--vocab", str(args.vocab), "--threads", str(args.threads), "--tau", str(exp), str(base),
              "--corrupt", args.corrupt]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}
    rows = {}
    for lib, python in (("edgewise", sys.executable), ("auto_circuit", args.ac_python)):
        res = subprocess.run([python, __file__, "--worker", lib, *common], env=env, check=True,
                             capture_output=True, text=True, cwd=ROOT)  # fmt: skip
        rows[lib] = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"model: {args.layers} layers, d_model 256, 8 heads x 32, d_vocab {args.vocab}; "
          f"{rows['edgewise']['n_edges']} edges; batch {args.batch} x {args.seq}, corrupt at the {args.corrupt}; one tau = "
          f"{base}e{exp} (kl_div); threads {args.threads}")
    for lib, r in rows.items():
        print(f"{lib:<13} wall {r['wall_s']:8.2f} s  {1e3 * r['wall_s'] / r['n_edges']:7.2f} ms/edge"
              f"  edges kept {r['kept']}")
    print(f"auto-circuit / edgewise: {rows['auto_circuit']['wall_s'] / rows['edgewise']['wall_s']:.2f}x")


if __name__ == "__main__":
    main()
