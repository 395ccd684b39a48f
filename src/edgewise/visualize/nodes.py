"""What a drawn node is: its kind, block, head and Q/K/V input.

A live model's graph says this in its fields (:func:`graph_node_refs`, from
:class:`~edgewise.graph.build.SrcModule` / :class:`~edgewise.graph.build.DestModule` and
the nodes' ``head_idx`` / ``qkv`` / ``layer``). Edges read back from a ``results.json``
file are only names; :func:`node_from_name` is the one place that reads a node name, and
:func:`edges_from_records` the one place that splits an edge name at ``->``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from edgewise.visualize.style import as_score

if TYPE_CHECKING:
    from edgewise.graph.build import Graph
    from edgewise.types import QKV, Node

NodeKind = Literal["embed", "attn", "mlp", "resid_mid", "resid_post", "resid_end", "unknown"]


@dataclass(frozen=True)
class NodeRef:
    """A node as the drawings see it.

    Attributes:
        kind: ``"embed"`` (Resid Start), ``"attn"`` (a head), ``"mlp"``, the residual
            stream after a block's attention (``"resid_mid"``), after the whole block
            (``"resid_post"``) or at the output (``"resid_end"``); ``"unknown"`` for a name
            the visualiser does not know.
        block: the transformer block (``None`` for Resid Start and Resid End; for an
            unknown name, the first number in it, if any).
        head: the head index of an attention node.
        qkv: ``"q"``, ``"k"`` or ``"v"`` when the node is one of a head's separate inputs.
        name: an unknown node's name (its label); ``None`` otherwise.
    """

    kind: NodeKind
    block: int | None = None
    head: int | None = None
    qkv: QKV | None = None
    name: str | None = None

    @property
    def box(self) -> NodeRef:
        """The node drawn as a box: a head's Q/K/V inputs are ports of the head's box."""
        return replace(self, qkv=None) if self.qkv is not None else self

    @property
    def label(self) -> str:
        """The name written on the box (the graph's name, without ``.Q``/``.K``/``.V``)."""
        b = self.block
        return {
            "embed": "Resid Start",
            "attn": f"A{b}.{self.head}",
            "mlp": f"MLP {b}",
            "resid_mid": f"Resid Mid {b}",
            "resid_post": f"Resid Post {b}",
            "resid_end": "Resid End",
        }.get(self.kind, self.name or "")


@dataclass(frozen=True)
class EdgeRef:
    """An edge to draw: its name, token position (``None``: all), score and ends."""

    name: str
    seq_idx: int | None
    score: float
    src: NodeRef
    dest: NodeRef

    @property
    def port(self) -> str | None:
        """``"Q"``, ``"K"`` or ``"V"`` when the edge enters one of a head's inputs."""
        return None if self.dest.qkv is None else self.dest.qkv.upper()


_HEAD = re.compile(r"A(\d+)\.(\d+)(?:\.([QKV]))?")
_PER_BLOCK = re.compile(r"(Resid Mid|MLP|Resid Post) (\d+)")
_PER_BLOCK_KIND: dict[str, NodeKind] = {"Resid Mid": "resid_mid", "MLP": "mlp",
                                        "Resid Post": "resid_post"}


def node_from_name(name: str) -> NodeRef:
    """The node named ``name`` in the graph's naming (``"Resid Start"``, ``"A1.2"``,
    ``"A1.2.Q"``, ``"MLP 0"``, ``"Resid Mid 0"``, ``"Resid Post 0"``, ``"Resid End"``).

    Only for names read back from a file; with a model at hand use
    :func:`graph_node_refs`. Any other name is ``"unknown"``, placed by its first number.
    """
    name = name.strip()
    if name == "Resid Start":
        return NodeRef("embed")
    if name == "Resid End":
        return NodeRef("resid_end")
    m = _HEAD.fullmatch(name)
    if m:
        qkv = m.group(3).lower() if m.group(3) else None
        return NodeRef("attn", int(m.group(1)), int(m.group(2)), qkv)
    m = _PER_BLOCK.fullmatch(name)
    if m:
        return NodeRef(_PER_BLOCK_KIND[m.group(1)], int(m.group(2)))
    digits = re.search(r"\d+", name)
    return NodeRef("unknown", int(digits.group()) if digits else None, name=name)


def edges_from_records(records: Iterable[Mapping[str, Any]]) -> list[EdgeRef]:
    """Edges of ``[{"edge": "A0.1->A1.2.Q", "seq_idx": int | None, "score": float}, ...]``
    (``results["algorithms"][algo]["top_edges"]``). A name without ``->`` is a
    ``ValueError``; a missing or non-numeric score is NaN."""
    out = []
    for d in records:
        name = str(d["edge"])
        src, sep, dest = name.partition("->")
        if not sep:
            raise ValueError(f"edge name {name!r} has no '->'")
        pos = d.get("seq_idx")
        out.append(EdgeRef(name, None if pos is None else int(pos), as_score(d.get("score")),
                           node_from_name(src), node_from_name(dest)))
    return out


def graph_node_refs(graph: Graph) -> dict[Node, NodeRef]:
    """Every source and destination node of ``graph``, read from the graph's fields.

    Kind and block come from the node's :class:`~edgewise.graph.build.SrcModule` or
    :class:`~edgewise.graph.build.DestModule`, the head from ``head_idx``, the input from
    ``qkv``. A residual-stream destination (residual graph, or Resid End) is placed by
    its topological ``layer``: above every source it is Resid End, above every source of
    its block that block's Resid Post, else the block's Resid Mid (after its attention).
    """
    src_mods = {m.module_name: m for m in graph.src_modules}
    dest_mods = {m.module_name: m for m in graph.dest_modules}
    refs: dict[Node, NodeRef] = {}
    block_top: dict[int, int] = {}  # block -> the highest layer of its sources
    for s in graph.srcs:
        sm = src_mods[s.module_name]
        refs[s] = NodeRef(sm.kind, sm.block, s.head_idx)
        if sm.block is not None:
            block_top[sm.block] = max(block_top.get(sm.block, s.layer), s.layer)
    top = max((s.layer for s in graph.srcs), default=0)
    for d in graph.dests:
        dm = dest_mods[d.module_name]
        if dm.kind != "resid":
            refs[d] = NodeRef(dm.kind, dm.block, d.head_idx, d.qkv)
        elif d.layer > top:
            refs[d] = NodeRef("resid_end")
        elif d.layer > block_top.get(dm.block, d.layer):
            refs[d] = NodeRef("resid_post", dm.block)
        else:
            refs[d] = NodeRef("resid_mid", dm.block)
    return refs
