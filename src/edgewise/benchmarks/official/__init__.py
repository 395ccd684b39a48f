"""Official (hand-identified) circuits of known tasks, as sets of edges.

Modules:
    tracr: the tracr ``reverse`` and ``xproportion`` circuits
        (:func:`edgewise.benchmarks.official.tracr.tracr_reverse_official_edges`,
        :func:`edgewise.benchmarks.official.tracr.tracr_xproportion_official_edges`).
    toy_ioi: the documented circuit of the shipped toy IOI model
        (:func:`edgewise.benchmarks.official.toy_ioi.toy_ioi_official_edges`, see
        ``docs/toy_ioi.md``).
    papers: published circuits of real models, as data: IOI and greater-than on GPT-2
        small, docstring on attn-only-4l
        (:func:`edgewise.benchmarks.official.papers.ioi_official_edges`,
        :func:`~edgewise.benchmarks.official.papers.greaterthan_official_edges`,
        :func:`~edgewise.benchmarks.official.papers.docstring_official_edges`).
"""

from __future__ import annotations

from collections.abc import Iterable

from edgewise.patching.model import PatchableModel
from edgewise.types import Edge


def edges_by_name(model: PatchableModel, named: Iterable[tuple[str, int | None]],
                  circuit: str) -> set[Edge]:  # fmt: skip
    """The edges ``(name, position)`` of ``model``'s graph; a clear error naming the
    missing ones (``circuit`` names the circuit in it)."""
    edges, missing = set(), []
    for name, pos in named:
        try:
            edges.add(model.edge(name, pos))
        except KeyError:
            missing.append((name, pos))
    if missing:
        raise ValueError(f"the model's graph lacks {len(missing)} edge(s) of the {circuit} "
                         f"circuit, e.g. {missing[:3]}; is it the right model?")
    return edges
