"""Exact patching experiments that establish the mechanism and the official circuit of
the shipped ``toy-ioi`` model (see ``docs/toy_ioi.md``).

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/analyse_toy_ioi.py

Every number comes from real forward passes with activations patched (resample
ablation: a patched edge carries its source's output on the ABC-corrupt prompt), never
from gradients. The report is printed as Markdown:

1. behaviour: accuracy and IO-S logit difference on fresh prompts of every split;
2. attention of every head from the end and S2 positions to the names;
3. direct logit attribution at the end position (exact decomposition of the logit
   difference into source outputs, with the final LayerNorm scale of each prompt);
4. node x position patching: each source's output at one position patched alone;
5. single-edge patching: each edge at the name / S2 / end positions patched alone;
6. S2-flip path patching: the S2 name replaced by the IO name (so the answer flips),
   patched into chosen edges only, to show which edges carry the subject's identity;
7. the circuit sweep (reverse topological order, as ACDC, but exact): starting from
   every edge at positions N1, N2, S2 and end (all other positions ablated), each edge
   is ablated in turn and stays ablated when the logit difference on the selection split
   falls by less than ``--tau`` of the full model's; the result is compared with the
   shipped official edges;
8. faithfulness of the official circuit with :func:`edgewise.run_circuits`
   (``TREE_PATCH``, resample ablation) on the held-out test split, per prompt order, and
   on fresh prompts of training names and templates.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Iterable, Mapping

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from edgewise import (  # noqa: E402
    AblationType,
    PatchType,
    measure_correct_ans_percent,
    measure_logit_diff_percent,
    patchable_model,
    run_circuits,
)
from edgewise.benchmarks.official.toy_ioi import (  # noqa: E402
    TOY_IOI_OFFICIAL_EDGES,
    toy_ioi_official_edges,
)
from edgewise.benchmarks.toy_models import (  # noqa: E402
    TOY_IOI_SEQ_LABELS,
    TOY_IOI_SEQ_LEN,
    TOY_IOI_WORD_IDXS,
    encode,
    load,
    sample_toy_ioi_prompts,
    toy_ioi_abc_corrupt,
    toy_ioi_dataloaders,
    toy_ioi_vocab,
)
from edgewise.data import PromptDataLoader, PromptDataset  # noqa: E402
from edgewise.patching import PatchableModel  # noqa: E402
from edgewise.types import Edge, PruneScores  # noqa: E402

N1, N2, S2, END = (TOY_IOI_WORD_IDXS[k] for k in ("N1", "N2", "S2", "end"))
POSITIONS = (N1, N2, S2, END)


# ------------------------------------------------------------------------------ helpers


def batch_ld(logits: torch.Tensor, answers: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """IO-S logit difference per prompt at the last position: logits ``[b, seq, vocab]``,
    answers/wrong ``[b, 1]`` -> ``[b]``."""
    last = logits[:, -1]
    return (last.gather(1, answers) - last.gather(1, wrong))[:, 0]


class Patcher:
    """Exact resample patching on fixed batches: ``mean_ld(masks)`` runs every batch's
    clean prompts with ``masks`` patching from the batch's ``patch`` source outputs
    (default: the corrupt prompts')."""

    def __init__(self, pm: PatchableModel, loader: PromptDataLoader,
                 patch_tokens: Mapping[int, torch.Tensor] | None = None) -> None:
        self.pm = pm
        self.batches = list(loader)
        self.patches = [
            pm.src_outs(patch_tokens[b.key] if patch_tokens is not None else b.corrupt)
            for b in self.batches
        ]
        self.n = sum(b.clean.shape[0] for b in self.batches)

    @torch.inference_mode()
    def lds(self, masks: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Per-prompt logit differences ``[n]``."""
        out = [
            batch_ld(self.pm.run_patched(b.clean, masks, p), b.answers, b.wrong_answers)
            for b, p in zip(self.batches, self.patches)
        ]
        return torch.cat(out)

    def mean_ld(self, masks: Mapping[str, torch.Tensor]) -> float:
        return self.lds(masks).double().mean().item()

    @torch.inference_mode()
    def mean_ld_each(self, edge_sets: list[list[Edge]], chunk: int = 16) -> list[float]:
        """Mean logit difference with each edge set patched alone (``chunk`` sets per
        forward pass, stacked as mask copies)."""
        out: list[float] = []
        for i in range(0, len(edge_sets), chunk):
            sets = edge_sets[i : i + chunk]
            masks = [self.pm.masks_from_edges(s) for s in sets]
            stacked = {n: torch.stack([m[n] for m in masks]) for n in masks[0]}
            total = torch.zeros(len(sets), dtype=torch.float64)
            for b, p in zip(self.batches, self.patches):
                logits = self.pm.run_patched(b.clean.repeat(len(sets), 1), stacked, p)
                ld = batch_ld(logits, b.answers.repeat(len(sets), 1),
                              b.wrong_answers.repeat(len(sets), 1))
                total += ld.view(len(sets), -1).double().sum(1)
            out += (total / self.n).tolist()
        return out


def scores_for(pm: PatchableModel, edges: Iterable[Edge]) -> PruneScores:
    """Prune scores that are 1 on ``edges`` and 0 elsewhere."""
    return pm.masks_from_edges(set(edges), value=1.0, rest=0.0)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def loader_from_prompts(prompts, seed: int, batch_size: int = 128) -> PromptDataLoader:
    """A loader of clean/ABC-corrupt pairs for ``ToyIOIPrompt`` s."""
    vocab = toy_ioi_vocab()
    index = {w: i for i, w in enumerate(vocab)}
    rng = random.Random(seed)
    ds = PromptDataset(
        [encode(p.words, vocab) for p in prompts],
        [encode(toy_ioi_abc_corrupt(p, rng), vocab) for p in prompts],
        [[index[p.io]] for p in prompts], [[index[p.s]] for p in prompts],
        seq_labels=TOY_IOI_SEQ_LABELS, word_idxs=TOY_IOI_WORD_IDXS,
    )
    return PromptDataLoader(ds, seq_len=TOY_IOI_SEQ_LEN, batch_size=batch_size)


def subset_loader(loader: PromptDataLoader, keep) -> PromptDataLoader:
    """The prompts of ``loader`` for which ``keep(clean [seq], answer int)`` holds."""
    pairs = [(c, k, a, w) for b in loader for c, k, a, w in
             zip(b.clean, b.corrupt, b.answers, b.wrong_answers) if keep(c, int(a[0]))]
    ds = PromptDataset([p[0] for p in pairs], [p[1] for p in pairs], [p[2] for p in pairs],
                       [p[3] for p in pairs])
    return PromptDataLoader(ds, seq_len=TOY_IOI_SEQ_LEN, batch_size=len(pairs))


def faithfulness(pm: PatchableModel, loader: PromptDataLoader, edges: set[Edge]) -> dict[str, float]:
    """The circuit's mean logit difference as % of the full model's (TREE_PATCH,
    resample ablation), the same normalised by the empty circuit, and its accuracy."""
    outs = run_circuits(pm, loader, [0, len(edges), pm.n_edges], scores_for(pm, edges),
                        patch_type=PatchType.TREE_PATCH, ablation_type=AblationType.RESAMPLE,
                        progress=False)
    pct = dict(measure_logit_diff_percent(pm, loader, outs))
    acc = dict(measure_correct_ans_percent(pm, loader, outs))
    k = len(edges)
    return {
        "edges": k, "ld_percent": pct[k], "empty_percent": pct[0],
        "normalised_percent": 100 * (pct[k] - pct[0]) / (pct[pm.n_edges] - pct[0]),
        "accuracy": acc[k], "full_accuracy": acc[pm.n_edges], "empty_accuracy": acc[0],
    }


def sweep(pm: PatchableModel, patcher: Patcher, tau: float, full: float) -> set[Edge]:
    """Exact ACDC-style sweep over the edges at the name, S2 and end positions (all other
    edges ablated throughout): destinations from the output backwards, positions from
    last to first, sources from last to first; an edge stays ablated when ablating it
    lowers the mean logit difference by less than ``tau * full``."""
    circuit = {e for e in pm.edges if e.seq_idx in POSITIONS}
    masks = pm.masks_from_edges(circuit, value=0.0, rest=1.0)
    current = patcher.mean_ld(masks)
    for e in sorted(circuit, key=lambda e: (-e.dest.dest_idx, -e.seq_idx, -e.src.src_idx)):
        masks[e.dest.module_name][e.patch_idx] = 1.0
        new = patcher.mean_ld(masks)
        if current - new < tau * full:
            circuit.discard(e)
            current = new
        else:
            masks[e.dest.module_name][e.patch_idx] = 0.0
    return circuit


# ------------------------------------------------------------------------------ report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tau", type=float, default=0.005,
                        help="sweep threshold, a fraction of the full logit difference")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()

    model = load("toy-ioi")
    pm = patchable_model(model, seq_len=TOY_IOI_SEQ_LEN)
    select, test = toy_ioi_dataloaders(pm, batch_size=128, train_test_size=(256, 256))
    labels = list(TOY_IOI_SEQ_LABELS)
    vocab = toy_ioi_vocab()
    print(f"# toy-ioi analysis\n\ngraph: {len(pm.srcs)} sources, {len(pm.dests)} destinations, "
          f"{pm.n_edges} edges ({pm.n_edges // TOY_IOI_SEQ_LEN} per position x "
          f"{TOY_IOI_SEQ_LEN} positions)\n")

    # 1. behaviour ------------------------------------------------------------------
    rows = []
    for i, split in enumerate(("train", "heldout_pairs", "heldout_templates", "heldout")):
        prompts = sample_toy_ioi_prompts(2000, split, seed=10_000 + i)  # type: ignore[arg-type]
        index = {w: j for j, w in enumerate(vocab)}
        tokens = torch.tensor([encode(p.words, vocab) for p in prompts])
        io = torch.tensor([[index[p.io]] for p in prompts])
        s = torch.tensor([[index[p.s]] for p in prompts])
        with torch.inference_mode():
            logits = model(tokens)
        ld = batch_ld(logits, io, s)
        abba = torch.tensor([p.order == "ABBA" for p in prompts])
        rows.append([split, f"{100 * (ld > 0).float().mean():.2f}%",
                     f"{100 * (logits[:, -1].argmax(-1) == io[:, 0]).float().mean():.2f}%",
                     f"{ld.mean():.2f}", f"{ld.min():.2f}",
                     f"{ld[abba].mean():.2f} / {ld[~abba].mean():.2f}"])
    print("## 1. Behaviour (2000 fresh prompts per split)\n")
    print(table(["split", "IO > S", "top-1 = IO", "mean LD", "min LD", "LD ABBA / BABA"], rows))

    sel = Patcher(pm, select)
    full = sel.mean_ld(pm.new_masks(0.0))
    ablated = sel.mean_ld(pm.new_masks(1.0))
    print(f"\nselection split (256 pairs): full-model LD {full:.3f}, every edge ablated "
          f"(= the corrupt run) {ablated:.3f}\n")

    # 2. attention ---------------------------------------------------------------------
    clean = torch.cat([b.clean for b in sel.batches])
    answers = torch.cat([b.answers for b in sel.batches])[:, 0]
    abba = clean[:, N1] == answers
    io_pos = torch.where(abba, N1, N2)[:, None]
    s1_pos = torch.where(abba, N2, N1)[:, None]
    with torch.inference_mode():
        _, cache = model.run_with_cache(clean)
    rows = []
    for layer in range(model.cfg.n_layers):
        for h in range(model.cfg.n_heads):
            pat = cache[f"blocks.{layer}.attn.hook_pattern"][:, h]  # [b, query, key]
            cells = [f"A{layer}.{h}"]
            for q in (END, S2):
                row = pat[:, q]
                top = int(row.mean(0).argmax())
                cells += [f"{row.gather(1, io_pos).mean():.2f}", f"{row.gather(1, s1_pos).mean():.2f}",
                          f"{row[:, S2].mean():.2f}" if q == END else f"{row[:, S2].mean():.2f} (self)",
                          f"{labels[top]} {row[:, top].mean():.2f}"]
            rows.append(cells)
    print("## 2. Attention (mean over the selection split)\n")
    print(table(["head", "end->IO", "end->S1", "end->S2", "end: top key",
                 "S2->IO", "S2->S1", "S2->S2", "S2: top key"], rows))

    # 3. direct logit attribution at the end position --------------------------------
    wrong = torch.cat([b.wrong_answers for b in sel.batches])[:, 0]
    with torch.inference_mode():
        direction = (model.W_U[:, answers] - model.W_U[:, wrong]).T  # [b, d_model]
        scale = cache["ln_final.hook_scale"][:, END]  # [b, 1]
        outs = pm.src_outs(clean)[:, :, END]  # [n_srcs, b, d_model]
        rows = []
        total = torch.zeros(clean.shape[0])
        for i, src in enumerate(pm.srcs):
            centred = outs[i] - outs[i].mean(-1, keepdim=True)
            dla = ((centred / scale) * model.ln_final.w * direction).sum(-1)  # [b]
            total += dla
            rows.append([src.name, f"{dla.mean():.2f}"])
        bias = (model.ln_final.b * direction).sum(-1) + model.b_U[answers] - model.b_U[wrong]
        rows.append(["biases (ln_final.b, b_U)", f"{bias.mean():.2f}"])
        rows.append(["sum (= the model's LD)", f"{(total + bias).mean():.2f}"])
    print("\n## 3. Direct logit attribution to LD at the end position\n")
    print(table(["source", "direct LD"], rows))

    # 4. node x position patching ----------------------------------------------------
    sets, keys = [], []
    for src in pm.srcs:
        for p in range(TOY_IOI_SEQ_LEN):
            es = [e for e in pm.edge_dict[p] if e.src == src]
            if es:
                sets.append(es)
                keys.append((src.name, p))
    vals = dict(zip(keys, sel.mean_ld_each(sets)))
    rows = [[src.name] + [f"{100 * (full - vals[(src.name, p)]) / full:.1f}"
                          if (src.name, p) in vals else "" for p in range(TOY_IOI_SEQ_LEN)]
            for src in pm.srcs]
    print("\n## 4. Node x position patching: % of LD lost when a source's output at one "
          "position is resampled\n")
    print(table(["source"] + labels, rows))
    at_positions = [e for e in pm.edges if e.seq_idx in POSITIONS]
    kept = sel.mean_ld(pm.masks_from_edges(at_positions, value=0.0, rest=1.0))
    print(f"\nevery edge at N1, N2, S2, end kept, all others resampled: {100 * kept / full:.1f}% "
          "of the LD")

    # 5. single edges ----------------------------------------------------------------
    edges = [e for e in pm.edges if e.seq_idx in POSITIONS]
    single = dict(zip(edges, sel.mean_ld_each([[e] for e in edges])))
    ranked = sorted(edges, key=lambda e: single[e])
    print(f"\n## 5. Single-edge patching ({len(edges)} edges at N1, N2, S2, end): the 40 "
          "largest drops\n")
    print(table(["edge", "position", "% of LD lost"],
                [[e.name, labels[e.seq_idx], f"{100 * (full - single[e]) / full:.1f}"]
                 for e in ranked[:40]]))

    # 6. S2-flip path patching -------------------------------------------------------
    flips = {}
    for b in select:
        flipped = b.clean.clone()
        flipped[:, S2] = b.answers[:, 0]  # "... , Mary gave ..." : the answer becomes S
        flips[b.key] = flipped
    flip = Patcher(pm, select, flips)
    groups: dict[str, list[Edge]] = {
        "every edge at S2": list(pm.edge_dict[S2]),
        "every edge into A1.*.V at S2": [e for e in pm.edge_dict[S2]
                                         if e.dest.layer == 3 and e.dest.qkv == "v"],
        "every edge into A1.0.V at S2": [e for e in pm.edge_dict[S2] if e.dest.name == "A1.0.V"],
        "every edge into A1.*.K at S2": [e for e in pm.edge_dict[S2]
                                         if e.dest.layer == 3 and e.dest.qkv == "k"],
        "MLP 0 -> A1.{0,1,2}.V at S2": [pm.edge(f"MLP 0->A1.{h}.V", S2) for h in range(3)],
        "Resid Start -> MLP 0 at S2": [pm.edge("Resid Start->MLP 0", S2)],
        "every edge into A0.*.Q at S2": [e for e in pm.edge_dict[S2]
                                         if e.dest.layer == 1 and e.dest.qkv == "q"],
    }
    flip_vals = flip.mean_ld_each(list(groups.values()))
    print("\n## 6. S2-flip path patching: edges patched from the prompt whose S2 is the IO "
          f"name (the full flip gives LD {-full:.2f} on the flipped answer)\n")
    print(table(["patched edges", "n edges", "LD (IO - S)", "% of the flip"],
                [[name, str(len(es)), f"{v:.2f}", f"{100 * (full - v) / (2 * full):.1f}"]
                 for (name, es), v in zip(groups.items(), flip_vals)]))

    # 7. sweep -----------------------------------------------------------------------
    found = sweep(pm, sel, args.tau, full)
    official = toy_ioi_official_edges(pm)
    print(f"\n## 7. Exact sweep (tau = {args.tau}): {len(found)} edges; official circuit: "
          f"{len(official)} edges; same set: {found == official}\n")
    if found != official:
        print("found, not official:", sorted((e.name, e.seq_idx) for e in found - official))
        print("official, not found:", sorted((e.name, e.seq_idx) for e in official - found))
    outside = max((e for e in single if e not in official), key=lambda e: full - single[e])
    inside = min((e for e in single if e in official), key=lambda e: full - single[e])
    print(f"largest single-edge effect outside the official circuit: {outside!r} "
          f"{100 * (full - single[outside]) / full:.2f}%; smallest inside: {inside!r} "
          f"{100 * (full - single[inside]) / full:.2f}%; distinct edge names: "
          f"{len({e.name for e in official})}\n")
    print("Sweep result as data (edge name, seq_idx):\n")
    print("(\n" + "".join(f"    ({e.name!r}, {e.seq_idx}),\n" for e in
                          sorted(found, key=lambda e: (e.seq_idx, e.dest.dest_idx, e.src.src_idx)))
          + ")")

    # 8. faithfulness ----------------------------------------------------------------
    print("\n## 8. Faithfulness of the official circuit (run_circuits, TREE_PATCH, resample)\n")
    orders = {
        "test split (256 held-out pairs)": test,
        "selection split (256)": select,
        "test split, ABBA only": subset_loader(test, lambda c, a: int(c[N1]) == a),
        "test split, BABA only": subset_loader(test, lambda c, a: int(c[N2]) == a),
        "512 fresh prompts, training names and templates": loader_from_prompts(
            sample_toy_ioi_prompts(512, "train", seed=30_000), seed=30_001),
    }
    rows = []
    for name, loader in orders.items():
        f = faithfulness(pm, loader, official)
        rows.append([name, f"{f['ld_percent']:.1f}%", f"{f['normalised_percent']:.1f}%",
                     f"{f['empty_percent']:.1f}%", f"{f['accuracy']:.1f}%"])
    print(table(["prompts", "circuit LD / full LD", "normalised by empty circuit",
                 "empty circuit LD / full LD", "circuit accuracy (IO > S)"], rows))
    print(f"\nofficial circuit: {len(official)} of {pm.n_edges} edges "
          f"({100 * len(official) / pm.n_edges:.1f}%), {len(TOY_IOI_OFFICIAL_EDGES)} listed")
    print(f"\n(analysis took {time.time() - start:.0f}s)")


if __name__ == "__main__":
    main()
