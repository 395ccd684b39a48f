"""The official circuit of the shipped ``toy-ioi`` model (:func:`edgewise.benchmarks.toy_models.load`).

The circuit was chosen by exact patching experiments (``scripts/analyse_toy_ioi.py``,
written up in ``docs/toy_ioi.md``), for resample ablation from the ABC-corrupt prompts
of the shipped ``toy_ioi`` dataset and the IO-minus-S logit difference at the last
position. Positions (15-token prompts, BOS at 0): ``N1`` = 2, ``N2`` = 4 (the two names;
one is IO, the other S1), ``S2`` = 10 (the repeated subject) and ``end`` = 14.

Mechanism, in short:

* **Name bag at the end.** All four layer-0 heads attend from ``end`` to both names
  about equally (key and value inputs ``Resid Start->A0.h.K/V`` at ``N1`` and ``N2``)
  and write the unordered pair {IO, S} into the end position, where ``MLP 0`` and
  ``MLP 1`` read it (``A0.h->MLP 0/1 @end``).
* **Subject at S2.** ``MLP 0`` at ``S2`` turns the S2 token (``Resid Start->MLP 0
  @S2``), helped by the layer-0 heads at ``S2`` (whose queries read the S2 token), into a
  representation of the subject.
* **Subject mover.** ``A1.0`` (about 0.93 of its attention from ``end``), ``A1.2`` and
  ``A1.1`` attend from ``end`` to ``S2`` and copy that representation
  (``MLP 0->A1.h.V @S2``) to the end position.
* **Name bag minus subject.** ``MLP 1`` at ``end`` combines the name bag with the
  subject and writes IO up / S down (``MLP 1->Resid End``); ``A1.0`` also writes S down
  directly (``A1.0->Resid End``).

Edge list: an exact sweep over the edges at N1, N2, S2 and end (every other position
ablated), from the output backwards, kept each edge whose ablation alone cost at least
0.5% of the full model's logit difference on 256 selection prompts. It keeps 62 of the
graph's 1650 edges and recovers about 87% of the full model's logit difference on 256
held-out test prompts (``run_circuits``, ``TREE_PATCH``, resample ablation; see the
docs for the exact figures).
"""

from __future__ import annotations

from edgewise.benchmarks.official import edges_by_name
from edgewise.benchmarks.toy_models import TOY_IOI_SEQ_LEN
from edgewise.patching.model import PatchableModel
from edgewise.types import Edge

__all__ = ["TOY_IOI_OFFICIAL_EDGES", "TOY_IOI_SEQ_LEN", "toy_ioi_official_edges"]

"""Token length of the toy-IOI prompts (BOS included)."""

TOY_IOI_OFFICIAL_EDGES: tuple[tuple[str, int], ...] = (
    # N1 (position 2)
    ('Resid Start->A0.0.K', 2),
    ('Resid Start->A0.1.K', 2),
    ('Resid Start->A0.2.K', 2),
    ('Resid Start->A0.3.K', 2),
    ('Resid Start->A0.0.V', 2),
    ('Resid Start->A0.1.V', 2),
    ('Resid Start->A0.2.V', 2),
    ('Resid Start->A0.3.V', 2),
    # N2 (position 4)
    ('Resid Start->A0.0.K', 4),
    ('Resid Start->A0.1.K', 4),
    ('Resid Start->A0.2.K', 4),
    ('Resid Start->A0.3.K', 4),
    ('Resid Start->A0.0.V', 4),
    ('Resid Start->A0.1.V', 4),
    ('Resid Start->A0.2.V', 4),
    ('Resid Start->A0.3.V', 4),
    ('Resid Start->MLP 0', 4),
    ('A0.3->MLP 0', 4),
    ('MLP 0->A1.1.K', 4),
    ('MLP 0->A1.3.V', 4),
    # S2 (position 10)
    ('Resid Start->A0.0.Q', 10),
    ('Resid Start->A0.1.Q', 10),
    ('Resid Start->A0.2.Q', 10),
    ('Resid Start->A0.3.Q', 10),
    ('Resid Start->MLP 0', 10),
    ('A0.0->MLP 0', 10),
    ('A0.1->MLP 0', 10),
    ('A0.2->MLP 0', 10),
    ('A0.3->MLP 0', 10),
    ('Resid Start->A1.0.K', 10),
    ('MLP 0->A1.0.K', 10),
    ('MLP 0->A1.1.K', 10),
    ('MLP 0->A1.2.K', 10),
    ('Resid Start->A1.0.V', 10),
    ('A0.1->A1.0.V', 10),
    ('A0.3->A1.0.V', 10),
    ('MLP 0->A1.0.V', 10),
    ('MLP 0->A1.1.V', 10),
    ('Resid Start->A1.2.V', 10),
    ('MLP 0->A1.2.V', 10),
    # end (position 14)
    ('A0.0->MLP 0', 14),
    ('A0.1->MLP 0', 14),
    ('A0.2->MLP 0', 14),
    ('A0.3->MLP 0', 14),
    ('MLP 0->A1.1.Q', 14),
    ('MLP 0->A1.1.V', 14),
    ('MLP 0->A1.2.V', 14),
    ('MLP 0->A1.3.V', 14),
    ('A0.0->MLP 1', 14),
    ('A0.1->MLP 1', 14),
    ('A0.2->MLP 1', 14),
    ('A0.3->MLP 1', 14),
    ('MLP 0->MLP 1', 14),
    ('A1.0->MLP 1', 14),
    ('A1.1->MLP 1', 14),
    ('A1.2->MLP 1', 14),
    ('A1.3->MLP 1', 14),
    ('MLP 0->Resid End', 14),
    ('A1.0->Resid End', 14),
    ('A1.1->Resid End', 14),
    ('A1.2->Resid End', 14),
    ('MLP 1->Resid End', 14),
)
"""The official circuit as (edge name, token position) pairs."""


def toy_ioi_official_edges(model: PatchableModel) -> set[Edge]:
    """The official circuit's edges in ``model``'s graph.

    Args:
        model: the patchable toy-IOI model, built with
            ``patchable_model(load("toy-ioi"), seq_len=15)`` (factorized, separate Q/K/V
            inputs: the defaults). Without token positions (``seq_len=None``) the
            position-free projection is returned: every edge name that occurs at some
            position (a coarser circuit, not the documented one).

    Returns:
        A set of :class:`~edgewise.types.Edge` (62 edges with token positions).

    Raises:
        ValueError: the graph is not the toy-IOI model's (wrong shape, wrong
            ``seq_len``, not factorized with separate Q/K/V), or lacks an official edge.
    """
    cfg = model.cfg
    shape = (cfg.n_layers, cfg.n_heads, bool(getattr(cfg, "attn_only", False)))
    if shape != (2, 4, False):
        raise ValueError(
            "this is not the toy-ioi model (2 layers, 4 heads, with MLPs); got "
            f"n_layers={cfg.n_layers}, n_heads={cfg.n_heads}, attn_only={shape[2]}"
        )
    if not model.factorized or not model.separate_qkv:
        raise ValueError(
            "the toy-ioi official circuit needs a factorized graph with separate Q/K/V inputs "
            "(patchable_model(model, seq_len=15), the defaults otherwise)"
        )
    if model.seq_len is None:
        wanted = [(name, None) for name in dict.fromkeys(n for n, _ in TOY_IOI_OFFICIAL_EDGES)]
    elif model.seq_len != TOY_IOI_SEQ_LEN:
        raise ValueError(
            f"the toy-ioi official circuit's token positions assume {TOY_IOI_SEQ_LEN}-token "
            f"prompts, but the model's graph has seq_len={model.seq_len}; build it with "
            f"patchable_model(model, seq_len={TOY_IOI_SEQ_LEN})"
        )
    else:
        wanted = list(TOY_IOI_OFFICIAL_EDGES)
    return edges_by_name(model, wanted, "toy-ioi")
