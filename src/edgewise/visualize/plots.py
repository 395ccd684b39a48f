"""matplotlib figures of a ``results.json`` dict, for notebooks and papers: faithfulness
(or metric) curves, one algorithm's circuit, and the overlap of the algorithms' circuits.

Each function returns a :class:`matplotlib.figure.Figure` on an Agg canvas (no pyplot
state; a notebook shows it when it is the cell's value) drawn from the same data, with
the same colours, as the HTML report of :func:`edgewise.visualize.write_report`.
:func:`save_figure` writes one as PNG, SVG or PDF. matplotlib (a dependency of edgewise)
is imported when a function is called.

The results come from ``edgewise discover`` (``json.load`` of ``OUT/results.json``) or
from Python: ``{"model": ..., "task": ..., "n_edges": pm.n_edges, "algorithms": {name:
evaluate_scores(pm, task, test, scores, name)}}`` (:func:`edgewise.evaluation.pipeline.evaluate_scores`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgewise.visualize.figure import circuit_figure
from edgewise.visualize.nodes import edges_from_records
from edgewise.visualize.overlap import circuit_overlap
from edgewise.visualize.report import _band, _finite_points
from edgewise.visualize.style import PALETTE

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["faithfulness_figure", "circuit_graph_figure", "overlap_figure", "save_figure",
           "algorithm_colors"]

_FORMATS = ("png", "svg", "pdf")


def _new_figure(width: float, height: float, dpi: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _algorithms(results: Mapping[str, Any]) -> Mapping[str, Mapping[str, Any]]:
    algos = results.get("algorithms") if isinstance(results, Mapping) else None
    if not isinstance(algos, Mapping):
        raise ValueError("results must be a results.json dict with an 'algorithms' mapping "
                         "(json.load the results.json of edgewise discover)")
    return algos


def algorithm_colors(results: Mapping[str, Any]) -> dict[str, str]:
    """Each algorithm's colour, as the report gives it (by its place in the results)."""
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(_algorithms(results))}


def faithfulness_figure(
    results: Mapping[str, Any], curve: str = "faithfulness", log_x: bool = True,
    algorithms: Sequence[str] | None = None, title: str | None = None,
    figsize: tuple[float, float] = (6.4, 4.0), dpi: float = 100,
) -> Figure:
    """Curves over circuit size, one line per algorithm (with its bootstrap band when the
    results have one).

    Args:
        results: a ``results.json`` dict.
        curve: ``"faithfulness"`` (the metric of the circuit relative to the full model,
            with reference lines at 0 and 1) or ``"measurements"`` (the task's metric).
        log_x: a logarithmic size axis that still shows size 0 (symlog, linear below 1).
        algorithms: which to draw; default all, in the results' order.
        title: the axes' title; default the task and model.

    Each line's data are the recorded ``[size, value]`` points with finite values,
    sorted by size: ``line.get_xydata()`` equals them.
    """
    if curve not in ("faithfulness", "measurements"):
        raise ValueError(f"curve must be 'faithfulness' or 'measurements', got {curve!r}")
    algos = _algorithms(results)
    colors = algorithm_colors(results)
    names = list(algos) if algorithms is None else list(algorithms)
    missing = [n for n in names if n not in algos]
    if missing:
        raise ValueError(f"no algorithm {missing[0]!r} in these results; they have "
                         f"{', '.join(map(repr, algos))}")
    fig = _new_figure(*figsize, dpi)
    ax = fig.add_subplot()
    for name in names:
        r = algos[name]
        points = sorted(_finite_points(r.get(curve)))
        if not points:
            continue
        if curve == "faithfulness":
            band, label = _band(r)
            if band:
                band = sorted(band)
                ax.fill_between([b[0] for b in band], [b[1] for b in band],
                                [b[2] for b in band], color=colors[name], alpha=0.18,
                                linewidth=0, label=f"{name}: {label}")  # fmt: skip
        ax.plot([p[0] for p in points], [p[1] for p in points], color=colors[name],
                marker="o" if len(points) <= 60 else None, markersize=3, lw=1.8,
                label=name, gid=f"curve:{name}")  # fmt: skip
    if curve == "faithfulness":
        for ref in (0.0, 1.0):
            ax.axhline(ref, color="#9ca3af", lw=1, ls="--", zorder=0)
        ax.set_ylabel("faithfulness (circuit / full model)")
    else:
        metrics = {str(algos[n].get("metric")) for n in names}
        metric = metrics.pop() if len(metrics) == 1 else "metric"
        ax.set_ylabel({"logit_diff": "logit difference", "mse": "−MSE"}.get(metric, metric))
    if log_x:
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlim(left=0)
    ax.set_xlabel("circuit size (edges)" + (", log scale" if log_x else ""))
    ax.set_title(title if title is not None else
                 f"{results.get('task', '?')} on {results.get('model', '?')}")  # fmt: skip
    ax.grid(True, color="#eef0f3")
    if ax.lines:
        ax.legend(fontsize=9, loc="best")
    return fig


def circuit_graph_figure(
    results: Mapping[str, Any], algorithm: str, k: int | None = None,
    title: str | None = None, dpi: float = 100,
) -> Figure:
    """One algorithm's circuit (its first ``k`` top edges; default all recorded) drawn as
    the report draws it: layers bottom to top, blue positive and red negative scores,
    width by ``|score|``, one column per token position labelled with the results'
    ``seq_labels`` when they have them.

    Every edge is a patch whose ``get_gid()`` is ``"edge:{name}@{position}"``; every
    node is one box."""
    algos = _algorithms(results)
    if algorithm not in algos:
        raise ValueError(f"no algorithm {algorithm!r} in these results; they have "
                         f"{', '.join(map(repr, algos))}")
    top = list(algos[algorithm].get("top_edges") or [])
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a whole number of edges >= 1, got {k!r}")
        top = top[:k]
    labels = results.get("seq_labels")
    labels = [str(s) for s in labels] if isinstance(labels, list) else None
    name = title if title is not None else f"{algorithm}: top {len(top)} edges"
    return circuit_figure(edges_from_records(top), name, dpi, seq_labels=labels)


def overlap_figure(
    results: Mapping[str, Any], k: int | None = None,
    algorithms: Sequence[str] | None = None, figsize: tuple[float, float] | None = None,
    dpi: float = 100,
) -> Figure:
    """The Jaccard index of each pair of algorithms' top-``k`` edge sets as a heatmap,
    each cell annotated with the edges the two share (:func:`circuit_overlap`'s data).
    The image's array equals ``circuit_overlap(results, k).jaccard``."""
    ov = circuit_overlap(results, k, algorithms)
    n = len(ov.names)
    size = figsize or (max(3.6, 1.1 * n + 2.2), max(3.0, 0.9 * n + 1.6))
    fig = _new_figure(*size, dpi)
    ax = fig.add_subplot()
    im = ax.imshow(ov.jaccard if n else [[0.0]], vmin=0.0, vmax=1.0, cmap="Blues")
    ax.set_xticks(range(n), ov.names, rotation=30, ha="right")
    ax.set_yticks(range(n), ov.names)
    for i in range(n):
        for j in range(n):
            v = ov.jaccard[i][j]
            ax.text(j, i, f"{v:.2f}\n{ov.shared[i][j]} shared", ha="center", va="center",
                    fontsize=8, color="white" if v > 0.6 else "#111827")  # fmt: skip
    ax.set_title(f"Overlap of the top {ov.k} edges (Jaccard)")
    fig.colorbar(im, ax=ax, shrink=0.8, label="Jaccard index")
    return fig


def save_figure(fig: Figure, path: str | Path, format: str | None = None,
                dpi: float | None = None) -> Path:
    """Save ``fig`` (on a white background) as PNG, SVG or PDF, chosen by ``format`` or the
    file's suffix, atomically (the file gets the mode a plain ``open(path, "w")``
    would); returns the path.

    Raises:
        ValueError: a format other than png, svg or pdf.
    """
    from edgewise.io.files import atomic_write

    fmt_ = (format or Path(path).suffix.lstrip(".")).lower()
    if fmt_ not in _FORMATS:
        raise ValueError(f"cannot save a figure as {fmt_ or 'a file without a suffix'!r} "
                         f"({path}): use a .png, .svg or .pdf name, or format='png'")
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt_, facecolor="white",
                                                      dpi=dpi or "figure"))
