"""The vocabulary of edgewise: nodes, edges, scores, ablations and patch types.

A *source* writes into the residual stream (the embedding, an attention head, an MLP);
a *destination* reads from it (a head's query/key/value input, an MLP input, the final
residual). An edge is a (source, destination) pair, optionally at one token position.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

import torch

BatchKey = int
"""Deterministic key of a batch (a hash of its clean and corrupt tokens)."""

PruneScores = dict[str, torch.Tensor]
"""Destination module name -> score tensor shaped like that destination's mask.
Importance of an edge is ``abs(score)``; larger is more important."""

NodeScores = dict[str, torch.Tensor]
"""Source module name -> node scores ``[n]`` (``n`` heads, or 1 for the embedding and an
MLP) or neuron scores ``[n, d_model]`` (a neuron is one d_model dimension of a node's
output, as in MIB)."""

NodeLevel = Literal["node", "neuron"]
"""The unit of a node-level circuit: whole sources, or dimensions of their outputs."""

CircuitOutputs = dict[int, dict[BatchKey, torch.Tensor]]
"""Actual circuit size (edge count) -> batch key -> model output at the output slice."""

Measurements = list[tuple[int, float]]
"""(circuit size, value) per circuit size, ascending."""


class AblationType(Enum):
    """What an ablated (patched) edge carries instead of the source's current output.

    Every function taking an ``ablation_type`` also takes its value or name as a string,
    in any case: ``"zero"``, ``"ZERO"`` and ``AblationType.ZERO`` are the same."""

    RESAMPLE = "resample"  # the source's output on the other prompt of the same pair
    ZERO = "zero"
    TOKENWISE_MEAN_CLEAN = "tokenwise_mean_clean"  # per-position mean over the clean set
    TOKENWISE_MEAN_CORRUPT = "tokenwise_mean_corrupt"
    TOKENWISE_MEAN_CLEAN_AND_CORRUPT = "tokenwise_mean_clean_and_corrupt"
    BATCH_TOKENWISE_MEAN = "batch_tokenwise_mean"  # per-position mean over the batch
    BATCH_ALL_TOK_MEAN = "batch_all_tok_mean"  # mean over the batch and all positions

    @classmethod
    def _missing_(cls, value: object) -> AblationType:
        """Accept a name or value as a string in any case: ``"zero"``, ``"ZERO"``,
        ``"Batch_All_Tok_Mean"``."""
        return _enum_from_str(cls, value, "ablation_type")

    @property
    def mean_over_dataset(self) -> bool:
        return self.value.startswith("tokenwise_mean")

    @property
    def mean_over_batch(self) -> bool:
        return self in (AblationType.BATCH_TOKENWISE_MEAN, AblationType.BATCH_ALL_TOK_MEAN)

    @property
    def clean_dataset(self) -> bool:
        return self in (AblationType.TOKENWISE_MEAN_CLEAN, AblationType.TOKENWISE_MEAN_CLEAN_AND_CORRUPT)

    @property
    def corrupt_dataset(self) -> bool:
        return self in (
            AblationType.TOKENWISE_MEAN_CORRUPT,
            AblationType.TOKENWISE_MEAN_CLEAN_AND_CORRUPT,
        )


class PatchType(Enum):
    """How a circuit is evaluated.

    ``TREE_PATCH`` runs the clean input and ablates every edge *not* in the circuit.
    ``EDGE_PATCH`` runs the corrupt input and restores the circuit's edges to their
    clean-run values (resample ablation only).
    """

    EDGE_PATCH = "edge_patch"
    TREE_PATCH = "tree_patch"

    @classmethod
    def _missing_(cls, value: object) -> PatchType:
        """Accept ``"tree_patch"``, ``"TREE_PATCH"``, ``"tree"`` or ``"edge"`` in any case."""
        if isinstance(value, str) and value.strip().lower() in ("tree", "edge"):
            value = f"{value.strip().lower()}_patch"
        return _enum_from_str(cls, value, "patch_type")


def _enum_from_str(cls: type[Enum], value: object, parameter: str) -> Any:
    """The member of ``cls`` whose name or value is ``value`` ignoring case, else a
    ``ValueError`` (not a string: a ``TypeError``) listing the valid choices."""
    choices = ", ".join(repr(m.value) for m in cls)  # type: ignore[var-annotated]
    if not isinstance(value, str):
        raise TypeError(
            f"{parameter} must be a {cls.__name__} or one of the strings {choices}, "
            f"got {value!r} ({type(value).__name__})"
        )
    key = value.strip().lower()
    for member in cls:  # type: ignore[var-annotated]
        if key in (member.value, member.name.lower()):
            return member
    raise ValueError(f"{parameter}={value!r} is not a {cls.__name__}; use one of {choices}")


QKV = Literal["q", "k", "v"]


@dataclass(frozen=True, order=True)
class Node:
    """A component of the model.

    Attributes:
        name: human name, e.g. ``"A1.2"``, ``"A1.2.Q"``, ``"MLP 0"``, ``"Resid End"``.
        module_name: the hook name whose tensor holds this node's activation.
        layer: topological layer; an edge exists from a source to a destination only
            when ``src.layer < dest.layer`` (factorized graph).
        head_idx: index along the hook's head dimension, or ``None``.
    """

    name: str
    module_name: str
    layer: int
    head_idx: int | None = None

    def __str__(self) -> str:
        return self.name

    @property
    def head_dim(self) -> int | None:
        """The head dimension of this node's hook tensor ``[batch, seq, head, d_model]``
        (2), or ``None`` for a node without heads (auto-circuit's ``Node.head_dim``)."""
        return None if self.head_idx is None else 2

    @property
    def weight(self) -> str | None:
        """The name of the weight this node reads or writes through (auto-circuit's
        ``Node.weight``, e.g. ``"blocks.0.attn.W_O"``), or ``None`` for residual-stream nodes."""
        return _node_weight(self)

    @property
    def weight_head_dim(self) -> int | None:
        """The head dimension of :attr:`weight` (0 for attention weights), else ``None``."""
        return None if self.head_idx is None else 0


def _node_weight(node: Node) -> str | None:
    kind, block = getattr(node, "kind", None), getattr(node, "block", None)
    if isinstance(node, SrcNode):
        if kind == "embed":
            return "embed.W_E"
        return f"blocks.{block}.attn.W_O" if kind == "attn" else f"blocks.{block}.mlp.W_out"
    if kind == "attn":
        qkv = getattr(node, "qkv", None)
        return f"blocks.{block}.attn.W_{'QKV' if qkv is None else qkv.upper()}"
    if kind == "mlp":
        return f"blocks.{block}.mlp.W_in"
    return "unembed.W_U" if node.name == "Resid End" else None


@dataclass(frozen=True, order=True)
class SrcNode(Node):
    """A node that writes into the residual stream. ``src_idx`` is its global position
    in topological order (the index along the first dim of source-output tensors);
    ``kind`` is ``"embed"`` (``block`` None), ``"attn"`` (a head) or ``"mlp"`` of ``block``."""

    src_idx: int = 0
    block: int | None = field(default=None, compare=False)
    kind: Literal["embed", "attn", "mlp"] = field(default="embed", compare=False)


@dataclass(frozen=True, order=True)
class DestNode(Node):
    """A node that reads from the residual stream.

    ``qkv`` is ``"q"``, ``"k"`` or ``"v"`` for separate query/key/value inputs.
    ``dest_idx`` is its position in topological order. ``kind`` is ``"attn"`` (a head's
    input), ``"mlp"`` or ``"resid"`` (the residual stream after ``block``).
    """

    qkv: QKV | None = None
    dest_idx: int = 0
    block: int = field(default=0, compare=False)
    kind: Literal["attn", "mlp", "resid"] = field(default="resid", compare=False)
    min_src_idx: int = field(default=0, compare=False)
    """The ``src_idx`` of this destination's first incoming source (0 in a factorized graph):
    an edge's last ``patch_idx`` entry is ``src.src_idx - dest.min_src_idx``."""


@dataclass(frozen=True)
class Edge:
    """An edge from ``src`` into ``dest``, at token position ``seq_idx`` (``None``: all
    positions).

    ``patch_idx`` is the index of this edge's entry in ``masks[dest.module_name]`` and in
    ``prune_scores[dest.module_name]``.
    """

    src: SrcNode
    dest: DestNode
    seq_idx: int | None
    patch_idx: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"{self.src.name}->{self.dest.name}"

    def __repr__(self) -> str:
        pos = "" if self.seq_idx is None else f"@{self.seq_idx}"
        return f"Edge({self.name}{pos})"

    def __str__(self) -> str:
        """The name, ``"A0.0->A1.0.K"``, as auto-circuit prints an edge (``repr`` adds
        the token position)."""
        return self.name

    def patch_mask(self, model: Any) -> Any:
        """The mask tensor of this edge's destination in ``model.patch_masks``
        (auto-circuit's ``Edge.patch_mask``; this edge's entry is ``[patch_idx]``)."""
        return model.patch_masks[self.dest.module_name]

    def prune_score(self, prune_scores: Mapping[str, Any]) -> Any:
        """This edge's score in ``prune_scores`` (a 0-d tensor)."""
        return prune_scores[self.dest.module_name][self.patch_idx]


class EdgeList(tuple):
    """The graph's edges in their fixed order (a tuple), with set algebra on the side:
    ``model.edges - official`` and ``model.edges & found`` give sets, as auto-circuit's
    set of edges does."""

    def __sub__(self, other: Iterable[Edge]) -> set[Edge]:  # type: ignore[override]
        return set(self) - set(other)

    def __and__(self, other: Iterable[Edge]) -> set[Edge]:
        return set(self) & set(other)

    def __or__(self, other: Iterable[Edge]) -> set[Edge]:
        return set(self) | set(other)

    def __rsub__(self, other: Iterable[Edge]) -> set[Edge]:
        return set(other) - set(self)

    __rand__ = __and__
    __ror__ = __or__

    def issubset(self, other: Iterable[Edge]) -> bool:
        return set(self) <= set(other)

    def issuperset(self, other: Iterable[Edge]) -> bool:
        return set(self) >= set(other)
