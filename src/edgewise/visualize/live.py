"""Drawing the circuit of a live :class:`~edgewise.patching.model.PatchableModel` from
its prune scores (:func:`draw_seq_graph`, usable as ACDC's ``draw_seq_graph_ref``). The
nodes are placed from the model's graph fields, not from their names."""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgewise.visualize.figure import circuit_figure, save_png
from edgewise.visualize.nodes import EdgeRef, NodeRef, graph_node_refs

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from edgewise.patching.model import PatchableModel
    from edgewise.types import Edge, Node


@dataclass(frozen=True)
class _ModelIndex:
    """A model's edges by ``(destination module, mask index)`` and its nodes' places."""

    edges: dict[tuple[str, tuple[int, ...]], Edge]
    nodes: dict[Node, NodeRef]


_INDEX: weakref.WeakKeyDictionary[Any, _ModelIndex] = weakref.WeakKeyDictionary()


def _model_index(model: PatchableModel) -> _ModelIndex:
    index = _INDEX.get(model)
    if index is None:
        index = _ModelIndex({(e.dest.module_name, tuple(e.patch_idx)): e for e in model.edges},
                            graph_node_refs(model.graph))
        _INDEX[model] = index
    return index


def _selected_edges(model: PatchableModel, prune_scores: Mapping[str, Any],
                    threshold: float | None, top_k: int | None) -> list[EdgeRef]:
    """The edges to draw, largest ``|score|`` first (see :func:`draw_seq_graph`)."""
    import torch

    index = _model_index(model)
    cands: list[tuple[float, int, tuple[int, ...], str, float]] = []
    order = {name: i for i, name in enumerate(model.dest_modules)}
    for module, scores in prune_scores.items():
        if module not in model.dest_modules:
            raise ValueError(f"prune_scores has a module {module!r} that the model lacks")
        t = torch.as_tensor(scores).detach().to("cpu", torch.float64)
        a = t.abs()
        keep = (a > 0) & ~torch.isnan(a)
        if threshold is not None:
            keep &= a >= threshold
        idx = keep.nonzero()
        if top_k is not None and len(idx) > top_k:
            vals = a[keep]
            best = torch.topk(vals, top_k).indices.sort().values
            idx = idx[best]
        for row in idx.tolist():
            flat = tuple(int(v) for v in row)
            s = float(t[flat])
            cands.append((-abs(s), order[module], flat, module, s))
    # largest |score| first; ties in the model's order (dest module, then mask index)
    cands.sort(key=lambda c: c[:3])
    if top_k is not None:
        cands = cands[:top_k]
    out = []
    for _, _, flat, module, s in cands:
        e = index.edges.get((module, flat))
        if e is None:
            continue
        out.append(EdgeRef(e.name, e.seq_idx, s, index.nodes[e.src], index.nodes[e.dest]))
    return out


def draw_seq_graph(
    model: PatchableModel,
    prune_scores: Mapping[str, Any] | None = None,
    threshold: float | None = None,
    top_k: int | None = 50,
    *,
    title: str | None = None,
    path: str | Path | None = None,
    dpi: float = 150,
    score_threshold: float | None = None,
    seq_labels: Sequence[str] | None = None,
    file_path: str | Path | None = None,
    display_ipython: bool = False,
    show_all_seq_pos: bool = False,
    layer_spacing: bool = False,
    orientation: str = "h",
) -> Figure:
    """Draw the circuit of ``model`` given by ``prune_scores`` and return the Figure.

    Draws the edges with the largest ``|score|``: those with ``|score| >= threshold``
    (when given), at most ``top_k`` of them (``None``: no limit). Edges scoring exactly 0
    or NaN are never drawn, so circuit scores such as ACDC's (1 in the circuit, 0 out)
    draw just the circuit. Usable as ACDC's ``draw_seq_graph_ref``. Each drawn edge is a
    patch with gid ``"edge:<name>@<seq_idx>"``.

    The Figure has an Agg canvas and is not registered with pyplot; show it in a
    notebook by evaluating it, or pass ``path`` to also save it as a PNG.

    auto-circuit's keywords work: ``prune_scores=None`` draws ``model.patch_masks``;
    ``score_threshold`` draws every edge at least that important (no ``top_k`` limit);
    ``seq_labels`` label the token-position columns; ``file_path`` is ``path``;
    ``display_ipython`` shows the figure in IPython. ``show_all_seq_pos``,
    ``layer_spacing`` and ``orientation`` are accepted; edgewise's layout already gives
    every layer its own row and draws only positions that have edges.
    """
    if prune_scores is None:
        prune_scores = model.patch_masks
    if score_threshold is not None:
        threshold, top_k = score_threshold, None
    path = path if path is not None else file_path
    edges = _selected_edges(model, prune_scores, threshold, top_k)
    if title is None:
        title = f"{len(edges)} edges"
    fig = circuit_figure(edges, title, dpi, seq_labels)
    if path is not None:
        save_png(fig, path)
    if display_ipython:
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            pass
        else:
            if get_ipython() is not None:
                display(fig)
    return fig
