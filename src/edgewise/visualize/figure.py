"""Circuit drawings with matplotlib: a :class:`~matplotlib.figure.Figure` on an Agg
canvas (no pyplot state, no display needed), and :func:`draw_circuit_png` for a
``results.json`` list of top edges. matplotlib is imported when a function is called."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgewise.visualize.layout import LEFT, PORT_H, PORTS, Layout, edge_path, layout
from edgewise.visualize.nodes import EdgeRef, edges_from_records
from edgewise.visualize.style import NODE_STYLE

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def circuit_figure(edges: Sequence[EdgeRef], title: str | None = None,
                   dpi: float = 150, seq_labels: Sequence[str] | None = None) -> Figure:
    """A matplotlib Figure (Agg canvas, no pyplot state) of the circuit of ``edges``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyBboxPatch, PathPatch, Rectangle
    from matplotlib.path import Path as MPath

    lay = layout(edges, seq_labels) if edges else Layout([], [], 300.0, 120.0, [], [])
    extra = 30.0 if title else 0.0
    scale = 1 / 100  # layout px -> inches
    fig = Figure(figsize=(max(lay.width, 300) * scale, (lay.height + extra) * scale), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, lay.height / (lay.height + extra)))
    ax.set_xlim(0, max(lay.width, 300))
    ax.set_ylim(lay.height, 0)
    ax.set_axis_off()
    pt = 72 * scale  # points per layout px
    if title:
        fig.text(0.5, 1 - 0.5 * extra / (lay.height + extra), title, ha="center", va="center",
                 fontsize=13 * pt, fontweight="bold")
    if not edges:
        ax.text(150, 60, "no edges", ha="center", va="center", fontsize=12 * pt, color="#6b7280")
    for y, label in lay.rows:
        ax.plot([LEFT - 8, lay.width - 6], [y, y], color="#eef1f5", lw=1 * pt, zorder=0)
        ax.text(8, y, label, ha="left", va="center", fontsize=11 * pt, color="#6b7280")
    for x, label in lay.columns:
        ax.text(x, 20, label, ha="center", va="center", fontsize=12 * pt, fontweight="bold",
                color="#374151")
    order = sorted(range(len(lay.edges)), key=lambda i: (lay.edges[i].width, -i))
    for z, i in enumerate(order):
        e = lay.edges[i]
        points = edge_path(e)
        path = MPath(points, [MPath.MOVETO] + [MPath.CURVE4] * (len(points) - 1))
        patch = PathPatch(path, fill=False, edgecolor=e.color, lw=e.width * pt, alpha=0.75,
                          capstyle="round", zorder=1 + z / (len(order) + 1))
        patch.set_gid(f"edge:{e.name}@{e.seq_idx}")
        ax.add_patch(patch)
    for n in lay.nodes:
        fill, stroke = NODE_STYLE[n.kind]
        ax.add_patch(FancyBboxPatch((n.x - n.w / 2, n.y - n.h / 2), n.w, n.h,
                                    boxstyle="round,pad=0,rounding_size=6", facecolor=fill,
                                    edgecolor=stroke, lw=1.3 * pt, zorder=3))
        ax.text(n.x, n.y, n.name, ha="center", va="center", fontsize=12 * pt, zorder=4)
        used = {lay.edges[i].port for i in n.edges if lay.edges[i].dest is n}
        for p in PORTS:
            if p not in n.ports:
                continue
            px, py = n.ports[p]
            ax.add_patch(Rectangle((px - 7, py - PORT_H), 14, PORT_H, zorder=3, lw=1 * pt,
                                   facecolor="#fde68a" if p in used else "#ffffff",
                                   edgecolor="#d97706" if p in used else "#d1d5db"))
            ax.text(px, py - PORT_H / 2, p, ha="center", va="center", fontsize=8 * pt, zorder=4)
    return fig


def draw_circuit_png(
    edges: Sequence[Mapping[str, Any]], path: str | Path, title: str | None = None,
    dpi: float = 200,
) -> Path:
    """Draw a circuit as a PNG (matplotlib, Agg backend) and return the path.

    Args:
        edges: ``[{"edge": "A0.1->A1.2.Q", "seq_idx": int | None, "score": float}, ...]``,
            like ``results["algorithms"][algo]["top_edges"]``.
        path: the PNG file to write (atomically).
        title: a title above the graph.
        dpi: resolution.
    """
    return save_png(circuit_figure(edges_from_records(edges), title, dpi), path)


def save_png(fig: Figure, path: str | Path) -> Path:
    """Save ``fig`` as a PNG on a white background, atomically
    (:func:`edgewise.io.files.atomic_write`: the file gets the mode a plain
    ``open(path, "w")`` would), and return the path."""
    from edgewise.io.files import atomic_write

    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", facecolor="white"))
