"""TransformerLens 4's own edge attribution patching
(``transformer_lens.tools.analysis.attribution_patching``, ``granularity="edge"``) as a
peer: on the same random GPT-2 bridge and prompts its per-position edge scores equal
edgewise's EAP once the conventions are mapped (docs/transformer_lens_eap.md):
TransformerLens' clean prompt is edgewise's corrupt one and the reverse, its metric is
minus edgewise's loss, and it averages over prompts where edgewise sums the batch mean."""

from __future__ import annotations

from importlib.metadata import version

import pytest
import torch

from edgewise import PromptDataLoader, PromptDataset, patchable_model
from edgewise.models import random_bridge
from edgewise.prune_algos import edge_attribution_patching_prune_scores

from util import VOCAB

_TL_MAJOR = int(version("transformer-lens").split(".")[0])
pytestmark = pytest.mark.skipif(
    _TL_MAJOR < 4,
    reason="attribution_patch(granularity='edge') is TransformerLens 4.x API "
    "(3.x has no such module or refuses edge granularity)",
)
if _TL_MAJOR >= 4:
    from transformer_lens.tools.analysis import attribution_patching as ap


def tl_node(src_or_dest, position: int):
    """The TransformerLens ``Node`` of an edgewise source or destination at ``position``."""
    n = src_or_dest
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


def both_scores(seed: int, n_prompts: int, seq: int):
    """``(edgewise, TransformerLens)`` scores ``{(src Node, dest Node): float}`` of one
    random float64 GPT-2 bridge and ``n_prompts`` random prompt pairs."""
    model = random_bridge("gpt2", n_layers=2, d_vocab=VOCAB, dtype=torch.float64, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    clean = torch.randint(0, VOCAB, (n_prompts, seq), generator=gen)
    corrupt = torch.randint(0, VOCAB, (n_prompts, seq), generator=gen)
    answer = torch.randint(0, VOCAB, (n_prompts,), generator=gen)
    wrong = torch.randint(0, VOCAB, (n_prompts,), generator=gen)

    def metric(logits: torch.Tensor, i: int) -> torch.Tensor:
        return logits[0, -1, answer[i]] - logits[0, -1, wrong[i]]

    theirs = {}
    for i in range(n_prompts):  # one call per prompt: each its own answer
        r = ap.attribution_patch(model, clean[i : i + 1], corrupt[i : i + 1],
                                 lambda lg, i=i: metric(lg, i),
                                 ap.EdgeAttributionConfig(granularity="edge"))  # fmt: skip
        for edge, s in r.edge_scores.items():
            theirs[edge] = theirs.get(edge, 0.0) + s / n_prompts

    # edgewise: clean and corrupt swapped, one batch of every prompt, a graph per position
    ds = PromptDataset(corrupt, clean, [a[None] for a in answer], [w[None] for w in wrong])
    loader = PromptDataLoader(ds, seq_len=seq, diverge_idx=0, batch_size=n_prompts)
    pm = patchable_model(model, seq_len=seq)
    scores = edge_attribution_patching_prune_scores(pm, loader, progress=False)
    ours = {(tl_node(e.src, e.seq_idx), tl_node(e.dest, e.seq_idx)): -float(e.prune_score(scores))
            for e in pm.edges}  # fmt: skip
    return ours, theirs


@pytest.mark.parametrize(("seed", "n_prompts", "seq"), [(0, 1, 4), (1, 3, 5)])
def test_tl4_edge_scores_equal_edgewise_eap(seed, n_prompts, seq):
    ours, theirs = both_scores(seed, n_prompts, seq)
    # TransformerLens scores only a position's writers into the same position's readers;
    # edgewise's per-position graph has those edges and no others
    assert set(ours) == set(theirs)
    scale = max(abs(v) for v in theirs.values())
    assert scale > 1e-3
    worst = max(abs(ours[e] - theirs[e]) for e in theirs)
    assert worst <= 1e-12 * max(scale, 1.0)
