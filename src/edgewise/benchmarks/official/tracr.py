"""The official circuits of the tracr ``reverse`` and ``xproportion`` models.

tracr compiles a RASP program into weights, so which edges the program uses is known
(see :mod:`edgewise.benchmarks.tracr_models`). Which of them a circuit must keep depends on what
ablated edges carry:

Resample ablation (auto-circuit's official circuits)
    Every prompt of the datasets has the same length, and the parts of the programs
    that only depend on positions and length (the ``length``/``opp_index`` computation
    of ``reverse``, the ``indices <= indices`` selector of ``xproportion``) are the same
    on the clean and the corrupt prompt, so only the path carrying the tokens matters:

    * reverse: ``Resid Start->A3.0.V``, ``A3.0->Resid End``;
    * xproportion: ``Resid Start->MLP 0`` (``tokens == "x"``), ``MLP 0->A1.0.V``,
      ``A1.0->Resid End`` (the numerical mean).

    With token positions, each edge is kept at positions 1..5 (every token after BOS;
    auto-circuit's positions for the 6-token prompts). Position 0 holds BOS on every
    prompt, so resampling it changes nothing.

Zero ablation (the ACDC paper's ground truth, found by ACDC with zero ablation)
    Zeroed inputs lose the computations that resampling keeps, so the whole program
    is needed (minus the query/key inputs of ``reverse``'s first head: zeroing both
    gives the uniform attention its all-true selector computes anyway):

    * reverse: ``Resid Start->A0.0.V``, ``A0.0->MLP 0``, ``Resid Start->MLP 0``
      (``length``, a selector width), ``MLP 0->MLP 1``, ``Resid Start->MLP 1``,
      ``MLP 1->MLP 2`` (``opp_index``), ``MLP 2->A3.0.Q``, ``Resid Start->A3.0.K``,
      ``Resid Start->A3.0.V``, ``A3.0->Resid End``;
    * xproportion: ``Resid Start->MLP 0``, ``MLP 0->A1.0.V``, ``Resid Start->A1.0.Q``,
      ``Resid Start->A1.0.K``, ``A1.0->Resid End``.

    The papers give no token positions for these; with token positions each edge is
    kept at every position (BOS included: the selector-width and mean aggregations
    read the BOS position).

The positions assume the 6-token prompts (``[BOS, t1..t5]``) of the shipped datasets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

from edgewise.patching.model import PatchableModel
from edgewise.types import Edge

__all__ = [
    "TRACR_OFFICIAL_EDGES",
    "tracr_official_edges",
    "tracr_reverse_official_edges",
    "tracr_xproportion_official_edges",
]

Ablation = Literal["resample", "zero"]
_SEQ_LEN = 6  # BOS + 5 tokens
_AFTER_BOS = tuple(range(1, _SEQ_LEN))
_ALL_POSITIONS = tuple(range(_SEQ_LEN))

TRACR_OFFICIAL_EDGES: dict[tuple[str, str], tuple[tuple[str, ...], tuple[int, ...]]] = {
    ("reverse", "resample"): (
        ("Resid Start->A3.0.V", "A3.0->Resid End"),
        _AFTER_BOS,
    ),
    ("reverse", "zero"): (
        (
            "Resid Start->A0.0.V",
            "A0.0->MLP 0",
            "Resid Start->MLP 0",
            "MLP 0->MLP 1",
            "Resid Start->MLP 1",
            "MLP 1->MLP 2",
            "MLP 2->A3.0.Q",
            "Resid Start->A3.0.K",
            "Resid Start->A3.0.V",
            "A3.0->Resid End",
        ),
        _ALL_POSITIONS,
    ),
    ("xproportion", "resample"): (
        ("Resid Start->MLP 0", "MLP 0->A1.0.V", "A1.0->Resid End"),
        _AFTER_BOS,
    ),
    ("xproportion", "zero"): (
        (
            "Resid Start->MLP 0",
            "MLP 0->A1.0.V",
            "Resid Start->A1.0.Q",
            "Resid Start->A1.0.K",
            "A1.0->Resid End",
        ),
        _ALL_POSITIONS,
    ),
}
"""(task, ablation) -> (edge names, token positions used when the graph has positions)."""

_N_LAYERS = {"reverse": 4, "xproportion": 2}


def _edges(
    model: PatchableModel, names: Iterable[str], positions: Sequence[int]
) -> set[Edge]:
    if model.seq_len is None:
        return {model.edge(name) for name in names}
    if model.seq_len != _SEQ_LEN:
        raise ValueError(
            f"the tracr official circuits' token positions assume prompts of {_SEQ_LEN} tokens "
            f"(BOS + 5), but the model's graph has seq_len={model.seq_len}"
        )
    return {model.edge(name, pos) for name in names for pos in positions}


def tracr_official_edges(
    model: PatchableModel,
    task: Literal["reverse", "xproportion"],
    ablation: Ablation = "resample",
) -> set[Edge]:
    """The official circuit of a tracr ``task`` under ``ablation``.

    Args:
        model: the patchable tracr model (from ``compile_tracr(task)``), factorized with
            separate Q/K/V inputs. When its graph has token positions (``seq_len=6``),
            the edges are returned at the positions described in this module's doc.
        task: ``"reverse"`` or ``"xproportion"``.
        ablation: ``"resample"`` or ``"zero"``.

    Returns:
        The circuit's edges.
    """
    if (task, ablation) not in TRACR_OFFICIAL_EDGES:
        raise ValueError(
            f"no official tracr circuit for task={task!r}, ablation={ablation!r}; tasks are "
            "'reverse' and 'xproportion', ablations 'resample' and 'zero'"
        )
    cfg = model.cfg
    if cfg.n_layers != _N_LAYERS[task] or cfg.n_heads != 1 or getattr(cfg, "attn_only", False):
        raise ValueError(
            f"this is not the tracr {task!r} model ({_N_LAYERS[task]} layers, 1 head, with "
            f"MLPs); got n_layers={cfg.n_layers}, n_heads={cfg.n_heads}"
        )
    if not model.factorized or not model.separate_qkv:
        raise ValueError("the official circuits need a factorized graph with separate Q/K/V inputs")
    names, positions = TRACR_OFFICIAL_EDGES[(task, ablation)]
    return _edges(model, names, positions)


def tracr_reverse_official_edges(model: PatchableModel, ablation: Ablation = "resample") -> set[Edge]:
    """The official circuit of the tracr ``reverse`` model (see the module doc)."""
    return tracr_official_edges(model, "reverse", ablation)


def tracr_xproportion_official_edges(
    model: PatchableModel, ablation: Ablation = "resample"
) -> set[Edge]:
    """The official circuit of the tracr ``xproportion`` model (see the module doc)."""
    return tracr_official_edges(model, "xproportion", ablation)
