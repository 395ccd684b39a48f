"""edgewise's EAP against TransformerLens 4's own edge attribution patching
(``transformer_lens.tools.analysis.attribution_patching.attribution_patch`` with
``EdgeAttributionConfig(granularity="edge")``) on the same random GPT-2 bridge and prompts.

    HF_HUB_OFFLINE=1 .venv-tl4/bin/python bench/bench_tl4_eap.py [--layers 4] [--heads 8]
        [--d-head 32] [--batch 8] [--seq 16] [--repeats 3] [--threads 2]

TransformerLens 4.x only (3.x refuses edge granularity). Rows, timed alternately in one
process (median of ``--repeats`` after a warm-up):

- TransformerLens ``attribution_patch``: per position, one prompt at a time (a clean
  forward, a corrupt forward and its backward per prompt), edge scores in a dict keyed
  by ``(writer Node, reader Node)``;
- edgewise EAP per position: ``edge_attribution_patching_prune_scores`` on a graph with
  one edge per position (``patchable_model(model, seq_len=seq)``), the whole batch in one
  pass, the clean and corrupt prompts swapped (TransformerLens' denoising convention);
- edgewise EAP, positions summed: the usual graph (auto-circuit's EAP).

Before timing, the per-position scores are checked equal after the mapping of
``docs/transformer_lens_eap.md`` (``edgewise = -TransformerLens`` with the prompts
swapped; float64 weights): the script prints the largest difference and exits with an
error above 1e-9 of the largest score. The ratio column is each row's time over
TransformerLens'.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from importlib.metadata import version

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from edgewise import PromptDataLoader, PromptDataset, patchable_model  # noqa: E402
from edgewise.models import random_bridge  # noqa: E402
from edgewise.prune_algos import edge_attribution_patching_prune_scores  # noqa: E402

from common import machine_line, print_table  # noqa: E402


def tl_node(ap, n, position: int):
    """The TransformerLens ``Node`` of an edgewise source or destination at ``position``."""
    if getattr(n, "kind", None) == "embed":
        return ap.Node("embed", position)
    if hasattr(n, "src_idx"):
        if n.kind == "attn":
            return ap.Node("attn_head_out", position, n.block, n.head_idx)
        return ap.Node("mlp_out", position, n.block)
    if n.kind == "attn":
        return ap.Node(f"{n.qkv}_input", position, n.block, n.head_idx)
    if n.kind == "mlp":
        return ap.Node("mlp_in", position, n.block)
    return ap.Node("logits", position, n.block)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--d-head", type=int, default=32)
    p.add_argument("--vocab", type=int, default=5000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    args = p.parse_args()
    if int(version("transformer-lens").split(".")[0]) < 4:
        raise SystemExit("bench_tl4_eap.py: error: needs TransformerLens 4.x (attribution_patch "
                         f"with granularity='edge'); this is {version('transformer-lens')}")
    from transformer_lens.tools.analysis import attribution_patching as ap

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    model = random_bridge("gpt2", n_layers=args.layers, n_heads=args.heads, d_head=args.d_head,
                          d_vocab=args.vocab, n_ctx=max(32, args.seq), dtype=dtype, seed=0)
    gen = torch.Generator().manual_seed(1)
    n, seq = args.batch, args.seq
    clean = torch.randint(0, args.vocab, (n, seq), generator=gen)
    corrupt = clean.clone()
    corrupt[:, -2:] = torch.randint(0, args.vocab, (n, 2), generator=gen)
    answer = torch.randint(0, args.vocab, (n,), generator=gen)
    wrong = torch.randint(0, args.vocab, (n,), generator=gen)
    config = ap.EdgeAttributionConfig(granularity="edge")

    def theirs() -> dict:
        scores: dict = {}
        for i in range(n):  # one call per prompt, each with its own answer
            def metric(lg, i=i):
                return lg[0, -1, answer[i]] - lg[0, -1, wrong[i]]

            r = ap.attribution_patch(model, clean[i : i + 1], corrupt[i : i + 1], metric, config)
            for edge, s in r.edge_scores.items():
                scores[edge] = scores.get(edge, 0.0) + s / n
        return scores

    ds = PromptDataset(corrupt, clean, [a[None] for a in answer], [w[None] for w in wrong])
    per_pos = PromptDataLoader(ds, seq_len=seq, diverge_idx=0, batch_size=n)
    summed = PromptDataLoader(ds, seq_len=None, diverge_idx=0, batch_size=n)
    pm_pos = patchable_model(model, seq_len=seq)
    pm_sum = patchable_model(model)

    def ours_pos():
        return edge_attribution_patching_prune_scores(pm_pos, per_pos, progress=False)

    def ours_sum():
        return edge_attribution_patching_prune_scores(pm_sum, summed, progress=False)

    want = theirs()
    got = ours_pos()
    mapped = {(tl_node(ap, e.src, e.seq_idx), tl_node(ap, e.dest, e.seq_idx)):
              -float(e.prune_score(got)) for e in pm_pos.edges}  # fmt: skip
    if set(mapped) != set(want):
        raise SystemExit(f"bench_tl4_eap.py: error: the edge sets differ ({len(mapped)} edgewise, "
                         f"{len(want)} TransformerLens)")
    scale = max(abs(v) for v in want.values())
    worst = max(abs(mapped[e] - want[e]) for e in want)
    print(machine_line(torch.device("cpu")))
    print(f"{len(want)} per-position edges ({pm_sum.n_edges} summed), {n} x {seq} tokens, "
          f"{args.dtype}; largest |edgewise - TransformerLens| = {worst:.3g} "
          f"(largest score {scale:.3g})")
    if worst > 1e-9 * scale and args.dtype == "float64":
        raise SystemExit("bench_tl4_eap.py: error: the scores differ")

    fns = {"TransformerLens attribution_patch (edge)": theirs,
           "edgewise EAP, per position": ours_pos,
           "edgewise EAP, positions summed": ours_sum}  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.repeats):  # interleaved, so a load change hits every row alike
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times[next(iter(fns))])
    rows = [[name, f"{1e3 * statistics.median(ts):.0f} ({1e3 * min(ts):.0f})",
             f"{statistics.median(ts) / base:.3f}"] for name, ts in times.items()]  # fmt: skip
    print_table(["measurement", "median ms (min)", "/ TransformerLens"], rows)


if __name__ == "__main__":
    sys.exit(main())
