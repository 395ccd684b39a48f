"""How much the circuits of several algorithms agree: the edges their top-k share and the
Jaccard index of each pair of top-k sets, from a ``results.json`` dict. Standard library
only; the report's overlap table and :func:`edgewise.visualize.plots.overlap_figure` both
draw this."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

EdgeKey = tuple[str, "int | None"]


def top_k_edges(record: Mapping[str, Any], k: int | None = None) -> list[EdgeKey]:
    """The first ``k`` edges (all when ``k`` is ``None``) of one algorithm's
    ``top_edges``, as ``(edge name, token position or None)`` in the recorded order
    (largest ``|score|`` first)."""
    top = list(record.get("top_edges") or [])
    if k is not None:
        top = top[:k]
    return [(str(d["edge"]), None if d.get("seq_idx") is None else int(d["seq_idx"]))
            for d in top]  # fmt: skip


@dataclass(frozen=True)
class Overlap:
    """The overlap of the algorithms' top-k circuits.

    Attributes:
        names: the algorithms, in the results' order (``n`` of them).
        k: the number of top edges compared per algorithm.
        sizes: ``[n]``, the edges each algorithm contributes (``k``, or fewer when it
            recorded fewer).
        shared: ``[n][n]``, ``shared[i][j]`` = the number of edges in both top-k sets
            (``shared[i][i] = sizes[i]``).
        jaccard: ``[n][n]``, ``|A ∩ B| / |A ∪ B|`` of the two top-k sets (1.0 for two
            empty sets).
        common: the edges in every algorithm's top-k, in the first algorithm's order.
    """

    names: list[str]
    k: int
    sizes: list[int]
    shared: list[list[int]]
    jaccard: list[list[float]]
    common: list[EdgeKey]


def circuit_overlap(results: Mapping[str, Any], k: int | None = None,
                    algorithms: Sequence[str] | None = None) -> Overlap:
    """The overlap of the top-``k`` edges of the algorithms in ``results`` (a
    ``results.json`` dict: ``results["algorithms"][name]["top_edges"]``).

    Args:
        results: the results of ``edgewise discover`` (or a dict of the same shape).
        k: edges per algorithm; default the fewest any algorithm recorded.
        algorithms: the algorithms to compare; default all, in the results' order.

    Raises:
        ValueError: ``k`` below 1, or an algorithm not in ``results``.
    """
    algos: Mapping[str, Any] = results.get("algorithms") or {}
    names = list(algos) if algorithms is None else list(algorithms)
    unknown = [n for n in names if n not in algos]
    if unknown:
        raise ValueError(f"no algorithm {unknown[0]!r} in these results; they have "
                         f"{', '.join(map(repr, algos)) or 'none'}")  # fmt: skip
    if k is None:
        k = min((len(algos[n].get("top_edges") or []) for n in names), default=0)
    elif isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a whole number of edges >= 1, got {k!r}")
    lists = [top_k_edges(algos[n], k) for n in names]
    sets = [set(x) for x in lists]
    shared = [[len(a & b) for b in sets] for a in sets]
    jaccard = [[len(a & b) / len(a | b) if a | b else 1.0 for b in sets] for a in sets]
    every = set.intersection(*sets) if sets else set()
    common = [e for e in lists[0] if e in every] if lists else []
    return Overlap(names, k, [len(s) for s in sets], shared, jaccard, common)
