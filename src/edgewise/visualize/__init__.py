"""Pictures of circuits: an offline HTML report, PNG figures, and live-model drawings.

* :func:`write_report` turns the ``results.json`` dict of ``edgewise discover`` into one
  self-contained HTML page (inline SVG, inline CSS, a little vanilla JS; nothing is
  fetched): the circuit of each algorithm as a layered graph, faithfulness and metric
  curves, ROC curves, top-edge tables and a summary.
* :func:`draw_circuit_png` draws a list of top edges as a PNG with matplotlib (Agg).
* :func:`draw_seq_graph` draws the circuit of a live :class:`PatchableModel` from its
  prune scores (usable as ACDC's ``draw_seq_graph_ref``).

Circuits are drawn bottom to top: ``Resid Start`` in the lowest row, then per layer its
attention heads and its MLP, ``Resid End`` in the top row. Edges enter a head at its
``Q``/``K``/``V`` port; blue edges have positive scores, red negative ones, and width
grows with ``|score|``. Edges at token positions are drawn in one column per position.

HTML and the layout need only the standard library; the PNG functions import matplotlib
when called.
"""

from __future__ import annotations

import html
import json
import math
import re
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from edgewise.patching.model import PatchableModel

__all__ = ["write_report", "draw_circuit_png", "draw_seq_graph"]

POSITIVE = "#2563eb"
NEGATIVE = "#dc2626"
NEUTRAL = "#9ca3af"
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f",
           "#ff9da7", "#e15759", "#bab0ac")
_NODE_STYLE = {  # kind -> (fill, stroke)
    "attn": ("#fef3c7", "#d97706"),
    "mlp": ("#dcfce7", "#16a34a"),
    "resid": ("#f3f4f6", "#4b5563"),
}


# --------------------------------------------------------------------------- layout


@dataclass
class _Node:
    name: str
    pos: int | None
    rank: float
    order: int
    kind: str
    w: float = 0.0
    h: float = 26.0
    x: float = 0.0  # centre
    y: float = 0.0  # centre (y grows downwards)
    ports: dict[str, tuple[float, float]] = field(default_factory=dict)  # port -> attach point
    edges: list[int] = field(default_factory=list)


@dataclass
class _DrawnEdge:
    name: str
    seq_idx: int | None
    score: float
    src: _Node
    dest: _Node
    port: str | None
    start: tuple[float, float] = (0.0, 0.0)
    end: tuple[float, float] = (0.0, 0.0)
    via: list[tuple[float, float]] = field(default_factory=list)  # detours around nodes
    width: float = 1.0

    @property
    def color(self) -> str:
        return _sign_color(self.score)

    @property
    def label(self) -> str:
        pos = "" if self.seq_idx is None else f" @{self.seq_idx}"
        return f"{self.name}{pos}  score {_fmt(self.score)}"


@dataclass
class _Layout:
    nodes: list[_Node]
    edges: list[_DrawnEdge]
    width: float
    height: float
    rows: list[tuple[float, str]]  # (y, label)
    columns: list[tuple[float, str]]  # (x, label)


_ROW_H = 92.0
_GAP = 20.0
_COL_GAP = 40.0
_LEFT = 84.0
_TOP = 44.0
_BOTTOM = 12.0
_PORT_H = 11.0
_PORTS = ("Q", "K", "V")


def _sign_color(score: float) -> str:
    if math.isnan(score) or score == 0:
        return NEUTRAL
    return POSITIVE if score > 0 else NEGATIVE


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "—"
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.{max(digits - 2, 1)}e}"
    return f"{x:.{digits}g}" if abs(x) >= 1 else f"{x:.{digits - 1}f}".rstrip("0").rstrip(".")


def _parse_node(name: str) -> tuple[float, int, str, str]:
    """``(rank, order within its row, kind, row label)`` of a node name."""
    if name == "Resid Start":
        return 0.0, 0, "resid", "embed"
    if name == "Resid End":
        return math.inf, 0, "resid", "output"
    m = re.fullmatch(r"A(\d+)\.(\d+)", name)
    if m:
        b = int(m.group(1))
        return 4.0 * b + 1, int(m.group(2)), "attn", f"L{b} attn"
    for pattern, offset, kind, label in ((r"Resid Mid (\d+)", 2, "resid", "L{} mid"),
                                         (r"MLP (\d+)", 3, "mlp", "L{} MLP"),
                                         (r"Resid Post (\d+)", 4, "resid", "L{} post")):
        m = re.fullmatch(pattern, name)
        if m:
            b = int(m.group(1))
            return 4.0 * b + offset, 0, kind, label.format(b)
    digits = re.findall(r"\d+", name)  # an unknown name: place it by its first number
    b = int(digits[0]) if digits else 0
    return 4.0 * b + 2.5, 0, "resid", name


def _split_edge(name: str) -> tuple[str, str, str | None]:
    """``(source node, destination node, port)`` of an edge name like ``A0.1->A1.2.Q``."""
    src, sep, dest = name.partition("->")
    if not sep:
        raise ValueError(f"edge name {name!r} has no '->'")
    m = re.fullmatch(r"(A\d+\.\d+)\.([QKV])", dest.strip())
    if m:
        return src.strip(), m.group(1), m.group(2)
    return src.strip(), dest.strip(), None


def _score(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _layout(edges: Sequence[Mapping[str, Any]], seq_labels: Sequence[str] | None = None) -> _Layout:
    """Positions of nodes and edges for top edges ``[{"edge", "seq_idx", "score"}, ...]``."""
    nodes: dict[tuple[str, int | None], _Node] = {}

    def node(name: str, pos: int | None) -> _Node:
        key = (name, pos)
        if key not in nodes:
            rank, order, kind, _ = _parse_node(name)
            label_w = 7.0 * len(name) + 18
            nodes[key] = _Node(name, pos, rank, order, kind, w=max(54.0, label_w))
        return nodes[key]

    drawn: list[_DrawnEdge] = []
    for d in edges:
        src, dest, port = _split_edge(str(d["edge"]))
        pos = d.get("seq_idx")
        pos = None if pos is None else int(pos)
        drawn.append(_DrawnEdge(str(d["edge"]), pos, _score(d.get("score")), node(src, pos),
                                node(dest, pos), port))
    qkv = any(e.port is not None for e in drawn)
    if qkv:
        for n in nodes.values():
            if n.kind == "attn":
                n.w = max(n.w, 66.0)

    ranks = sorted({n.rank for n in nodes.values()})
    row_of = {r: i for i, r in enumerate(ranks)}
    n_rows = max(len(ranks), 1)
    positions = sorted({n.pos for n in nodes.values()}, key=lambda p: -1 if p is None else p)
    has_pos = any(p is not None for p in positions)
    top = _TOP if has_pos else 20.0

    def row_y(rank: float) -> float:
        return top + (n_rows - 1 - row_of[rank]) * _ROW_H + 20

    columns: list[tuple[float, str]] = []
    x0 = _LEFT
    for p in positions:
        by_row: dict[float, list[_Node]] = {}
        for n in nodes.values():
            if n.pos == p:
                by_row.setdefault(n.rank, []).append(n)
        col_w = max(sum(n.w for n in row) + _GAP * (len(row) - 1) for row in by_row.values())
        for rank, row in by_row.items():
            row.sort(key=lambda n: (n.order, n.name))
            x = x0 + (col_w - sum(n.w for n in row) - _GAP * (len(row) - 1)) / 2
            for n in row:
                n.x, n.y = x + n.w / 2, row_y(rank)
                x += n.w + _GAP
        if has_pos:
            label = "all positions" if p is None else f"position {p}"
            if p is not None and seq_labels is not None and p < len(seq_labels):
                label = f"{p}: {seq_labels[p]}"
            columns.append((x0 + col_w / 2, label))
        x0 += col_w + _COL_GAP
    width = x0 - _COL_GAP + 36
    height = top + (n_rows - 1) * _ROW_H + 40 + _PORT_H + _BOTTOM

    labels = {}
    for n in nodes.values():
        labels.setdefault(n.rank, _parse_node(n.name)[3])
    rows = [(row_y(r), labels[r]) for r in ranks]

    for n in nodes.values():
        if qkv and n.kind == "attn":
            for i, p in enumerate(_PORTS):
                n.ports[p] = (n.x - n.w / 2 + n.w * (i + 1) / 4, n.y + n.h / 2 + _PORT_H)
        n.ports[""] = (n.x, n.y + n.h / 2)

    # spread the edges leaving / entering one point, ordered by the other end's x
    finite = [abs(e.score) for e in drawn if math.isfinite(e.score)]
    biggest = max(finite, default=0.0)
    outgoing: dict[int, list[_DrawnEdge]] = {}
    incoming: dict[tuple[int, str], list[_DrawnEdge]] = {}
    for i, e in enumerate(drawn):
        outgoing.setdefault(id(e.src), []).append(e)
        port = e.port if e.port in e.dest.ports else ""
        incoming.setdefault((id(e.dest), port), []).append(e)
        e.src.edges.append(i)
        e.dest.edges.append(i)
        a = abs(e.score)
        if math.isnan(a):
            e.width = 1.0
        elif math.isinf(a) or biggest == 0:
            e.width = 6.0
        else:
            e.width = 1.0 + 5.0 * a / biggest
    for group in outgoing.values():
        group.sort(key=lambda e: (e.dest.x, e.dest.y))
        spread = min(group[0].src.w / 2 - 8, 3.0 * (len(group) - 1))
        for j, e in enumerate(group):
            dx = 0.0 if len(group) == 1 else -spread + 2 * spread * j / (len(group) - 1)
            e.start = (e.src.x + dx, e.src.y - e.src.h / 2)
    for (_, port), group in incoming.items():
        group.sort(key=lambda e: (e.src.x, -e.src.y))
        x, y = group[0].dest.ports[port]
        half = 4.0 if port else group[0].dest.w / 2 - 8
        spread = min(half, 3.0 * (len(group) - 1))
        for j, e in enumerate(group):
            dx = 0.0 if len(group) == 1 else -spread + 2 * spread * j / (len(group) - 1)
            e.end = (x + dx, y)
    rows_by_col: dict[int | None, dict[float, list[_Node]]] = {}
    for n in nodes.values():
        rows_by_col.setdefault(n.pos, {}).setdefault(n.y, []).append(n)
    for col in rows_by_col.values():
        for row in col.values():
            row.sort(key=lambda n: n.x)
    for e in drawn:
        _route(e, rows_by_col[e.src.pos])
    return _Layout(list(nodes.values()), drawn, width, height, rows, columns)


def _segment(a: tuple[float, float], b: tuple[float, float]) -> tuple[tuple[float, float], ...]:
    """Control points of a cubic from ``a`` up to ``b``, leaving and arriving vertically."""
    bend = max(abs(a[1] - b[1]) * 0.5, 12.0)
    return (a[0], a[1] - bend), (b[0], b[1] + bend), b


def _x_at(a: tuple[float, float], b: tuple[float, float], y: float) -> float:
    """The x where the segment from ``a`` to ``b`` crosses height ``y`` (clamped)."""
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = (a, *_segment(a, b))
    lo, hi = 0.0, 1.0
    for _ in range(40):  # y decreases along the segment
        t = (lo + hi) / 2
        u = 1 - t
        yt = u**3 * y0 + 3 * u * u * t * y1 + 3 * u * t * t * y2 + t**3 * y3
        lo, hi = (t, hi) if yt > y else (lo, t)
    t = (lo + hi) / 2
    u = 1 - t
    return u**3 * x0 + 3 * u * u * t * x1 + 3 * u * t * t * x2 + t**3 * x3


def _route(e: _DrawnEdge, rows: Mapping[float, list[_Node]]) -> None:
    """Add waypoints so that an edge skipping rows passes beside, not through, the nodes
    in between."""
    here = e.start
    for y in sorted(rows, reverse=True):
        if not e.dest.y < y < e.src.y:
            continue
        row = rows[y]
        for i, n in enumerate(row):
            top, bottom = n.y - n.h / 2 - 3, n.y + n.h / 2 + (_PORT_H if "Q" in n.ports else 0) + 3
            ys = [bottom + (top - bottom) * k / 8 for k in range(9)]
            if not any(abs(_x_at(here, e.end, yy) - n.x) < n.w / 2 + 10 for yy in ys):
                continue
            left = ((row[i - 1].x + row[i - 1].w / 2 + n.x - n.w / 2) / 2 if i > 0
                    else n.x - n.w / 2 - 20)
            right = ((row[i + 1].x - row[i + 1].w / 2 + n.x + n.w / 2) / 2 if i + 1 < len(row)
                     else n.x + n.w / 2 + 20)
            x = _x_at(here, e.end, n.y)
            side = left if abs(x - left) < abs(x - right) else right
            if abs(x - left) == abs(x - right):
                side = left if e.end[0] < n.x else right
            here = (side, n.y)
            e.via.append(here)
            break


def _edge_path(e: _DrawnEdge) -> list[tuple[float, float]]:
    """A poly-Bezier from the source's top to the destination: the start point, then
    three control points per cubic segment."""
    points = [e.start]
    for a, b in zip([e.start, *e.via], [*e.via, e.end]):
        points += _segment(a, b)
    return points


def _svg_path(points: Sequence[tuple[float, float]]) -> str:
    d = [f"M{points[0][0]:.1f},{points[0][1]:.1f}"]
    for i in range(1, len(points), 3):
        d.append("C" + " ".join(f"{x:.1f},{y:.1f}" for x, y in points[i : i + 3]))
    return " ".join(d)


# --------------------------------------------------------------------------- SVG


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _circuit_svg(edges: Sequence[Mapping[str, Any]], prefix: str) -> str:
    """An inline SVG of the circuit. Edges get ids ``{prefix}-e{i}`` (``i``: their index
    in ``edges``) so the page's table can highlight them."""
    if not edges:
        return '<p class="muted">No edges to draw.</p>'
    lay = _layout(edges)
    w, h = math.ceil(lay.width), math.ceil(lay.height)
    zoom = max(1.0, min(1.5, 720 / h))  # small circuits are drawn larger
    out = [f'<svg class="circuit" data-prefix="{prefix}" viewBox="0 0 {w} {h}" width="{w}" '
           f'height="{h}" style="width:min(100%,{w * zoom:.0f}px)" role="img" '
           'aria-label="circuit graph">']
    for y, label in lay.rows:
        out.append(f'<line class="row" x1="{_LEFT - 8}" x2="{w - 6}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text class="rowlabel" x="8" y="{y + 4:.1f}">{_e(label)}</text>')
    for x, label in lay.columns:
        out.append(f'<text class="collabel" x="{x:.1f}" y="22" text-anchor="middle">'
                   f'{_e(label)}</text>')
    order = sorted(range(len(lay.edges)), key=lambda i: (lay.edges[i].width, -i))
    out.append('<g class="edges">')
    for i in order:
        e = lay.edges[i]
        out.append(
            f'<path id="{prefix}-e{i}" class="edge" d="{_svg_path(_edge_path(e))}" '
            f'stroke="{e.color}" '
            f'stroke-width="{e.width:.2f}"><title>{_e(e.label)}</title></path>')
    out.append("</g><g class=\"nodes\">")
    for n in lay.nodes:
        fill, stroke = _NODE_STYLE[n.kind]
        ids = " ".join(f"{prefix}-e{i}" for i in n.edges)
        pos = "" if n.pos is None else f" @{n.pos}"
        n_in = sum(1 for i in n.edges if lay.edges[i].dest is n)
        title = f"{n.name}{pos}: {n_in} edges in, {len(n.edges) - n_in} out"
        out.append(f'<g class="node" data-edges="{ids}"><title>{_e(title)}</title>')
        out.append(f'<rect x="{n.x - n.w / 2:.1f}" y="{n.y - n.h / 2:.1f}" width="{n.w:.1f}" '
                   f'height="{n.h:.1f}" rx="6" fill="{fill}" stroke="{stroke}"/>')
        out.append(f'<text x="{n.x:.1f}" y="{n.y + 4.5:.1f}" text-anchor="middle">'
                   f'{_e(n.name)}</text>')
        used = {lay.edges[i].port for i in n.edges if lay.edges[i].dest is n}
        for p in _PORTS:
            if p not in n.ports:
                continue
            px, py = n.ports[p]
            cls = "port used" if p in used else "port"
            out.append(f'<rect class="{cls}" x="{px - 7:.1f}" y="{py - _PORT_H:.1f}" width="14" '
                       f'height="{_PORT_H}" rx="2"/><text class="portlabel" x="{px:.1f}" '
                       f'y="{py - 2.5:.1f}" text-anchor="middle">{p}</text>')
        out.append("</g>")
    out.append("</g></svg>")
    return "".join(out)


def _nice_step(span: float, n: int = 5) -> float:
    raw = max(span, 1e-12) / n
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag * (1 + 1e-9):
            return m * mag
    return 10 * mag


def _linear_ticks(lo: float, hi: float, n: int = 5) -> tuple[float, float, list[float]]:
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    step = _nice_step(hi - lo, n)
    lo, hi = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    ticks = [lo + i * step for i in range(round((hi - lo) / step) + 1)]
    return lo, hi, [0.0 if abs(t) < step * 1e-9 else t for t in ticks]


def _tick_label(t: float) -> str:
    if t != 0 and (abs(t) >= 1e4 and float(t).is_integer()):
        for div, suffix in ((1e6, "M"), (1e3, "k")):
            if abs(t) >= div:
                return f"{t / div:g}{suffix}"
    return f"{t:.6g}"


@dataclass
class _Series:
    name: str
    color: str
    points: list[tuple[float, float]]
    legend: str = ""


def _thin(points: list[tuple[float, float]], tol: float) -> list[tuple[float, float]]:
    """Drop points closer than ``tol`` (in both coordinates) to the last kept one."""
    if len(points) <= 200:
        return points
    kept = [points[0]]
    for p in points[1:-1]:
        if abs(p[0] - kept[-1][0]) > tol or abs(p[1] - kept[-1][1]) > tol:
            kept.append(p)
    kept.append(points[-1])
    return kept


def _line_chart(
    series: list[_Series],
    x_label: str,
    y_label: str,
    log_x: bool = False,
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    ref_y: Iterable[float] = (),
    diagonal: bool = False,
    step: bool = False,
    css: str = "",
) -> str:
    """An SVG line chart with axes, grid and a legend on the right."""
    W, H = 600, 330
    left, right, top, bottom = 58, 170, 14, 46
    pw, ph = W - left - right, H - top - bottom
    pts = [p for s in series for p in s.points]
    xs = [x for x, _ in pts] or [0.0, 1.0]
    ys = [y for _, y in pts] or [0.0, 1.0]
    fx = (lambda x: math.log10(1 + max(x, 0.0))) if log_x else (lambda x: x)
    if x_range is not None:
        x_lo, x_hi = x_range
        x_ticks = _linear_ticks(x_lo, x_hi)[2] if not log_x else []
    elif log_x:
        x_lo, x_hi = 0.0, max(max(xs), 1.0)
        x_ticks = []
    else:
        x_lo, x_hi, x_ticks = _linear_ticks(min(xs), max(xs))
    if log_x:
        x_ticks = [0.0] + [10.0**k for k in range(0, int(math.log10(x_hi)) + 1)]
    y_lo, y_hi = y_range if y_range is not None else (min(ys), max(ys))
    y_lo, y_hi = min([y_lo, *ref_y]), max([y_hi, *ref_y])
    y_lo, y_hi, y_ticks = _linear_ticks(y_lo, y_hi)
    tx_lo, tx_hi = fx(x_lo), fx(x_hi)
    tx_hi = tx_hi if tx_hi > tx_lo else tx_lo + 1

    def X(x: float) -> float:
        return left + (fx(x) - tx_lo) / (tx_hi - tx_lo) * pw

    def Y(y: float) -> float:
        return top + (y_hi - y) / (y_hi - y_lo) * ph

    out = [f'<svg class="chart {css}" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
           f'aria-label="{_e(y_label)} vs {_e(x_label)}">']
    out.append(f'<rect class="plot" x="{left}" y="{top}" width="{pw}" height="{ph}"/>')
    if log_x:  # minor grid lines at 2..9 x 10^k
        for k in range(0, int(math.log10(max(x_hi, 1))) + 1):
            for m in range(2, 10):
                v = m * 10.0**k
                if v < x_hi:
                    out.append(f'<line class="grid minor" x1="{X(v):.1f}" x2="{X(v):.1f}" '
                               f'y1="{top}" y2="{top + ph}"/>')
    for t in x_ticks:
        if not x_lo <= t <= x_hi:
            continue
        out.append(f'<line class="grid" x1="{X(t):.1f}" x2="{X(t):.1f}" y1="{top}" '
                   f'y2="{top + ph}"/><text class="tick" x="{X(t):.1f}" y="{top + ph + 16}" '
                   f'text-anchor="middle">{_tick_label(t)}</text>')
    for t in y_ticks:
        out.append(f'<line class="grid" x1="{left}" x2="{left + pw}" y1="{Y(t):.1f}" '
                   f'y2="{Y(t):.1f}"/><text class="tick" x="{left - 6}" y="{Y(t) + 4:.1f}" '
                   f'text-anchor="end">{_tick_label(t)}</text>')
    for r in ref_y:
        out.append(f'<line class="ref" x1="{left}" x2="{left + pw}" y1="{Y(r):.1f}" '
                   f'y2="{Y(r):.1f}"/>')
    if diagonal:
        out.append(f'<line class="ref" x1="{X(x_lo):.1f}" y1="{Y(y_lo):.1f}" x2="{X(x_hi):.1f}" '
                   f'y2="{Y(y_hi):.1f}"/>')
    out.append(f'<rect class="frame" x="{left}" y="{top}" width="{pw}" height="{ph}"/>')
    out.append(f'<text class="axis" x="{left + pw / 2:.1f}" y="{H - 8}" text-anchor="middle">'
               f'{_e(x_label)}</text><text class="axis" transform="translate(14 '
               f'{top + ph / 2:.1f}) rotate(-90)" text-anchor="middle">{_e(y_label)}</text>')
    tol = (tx_hi - tx_lo) / 1000
    for s in series:
        p = sorted(s.points) if not step else s.points
        p = _thin(p, tol)
        if not p:
            continue
        d = " ".join(f"{'M' if i == 0 else 'L'}{X(x):.1f},{Y(y):.1f}" for i, (x, y) in enumerate(p))
        out.append(f'<path class="series" d="{d}" stroke="{s.color}"><title>{_e(s.legend or s.name)}'
                   f'</title></path>')
        if len(p) <= 60:
            for x, y in p:
                out.append(f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="2.6" fill="{s.color}">'
                           f'<title>{_e(s.name)}: {_e(x_label)} {_fmt(x)}, {_e(y_label)} '
                           f'{_fmt(y)}</title></circle>')
    for i, s in enumerate(series):
        ly = top + 10 + 20 * i
        out.append(f'<line x1="{left + pw + 14}" x2="{left + pw + 34}" y1="{ly}" y2="{ly}" '
                   f'stroke="{s.color}" stroke-width="3"/><text class="legend" '
                   f'x="{left + pw + 40}" y="{ly + 4}">{_e(s.legend or s.name)}</text>')
    out.append("</svg>")
    return "".join(out)


# --------------------------------------------------------------------------- HTML

_CSS = """
:root{--fg:#111827;--muted:#6b7280;--line:#e5e7eb;--bg:#f6f7f9;--accent:#1d4ed8}
*{box-sizing:border-box}
body{margin:0;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,
 sans-serif;color:var(--fg);background:var(--bg)}
header{background:#0f172a;color:#f8fafc;padding:18px 32px 16px}
header h1{margin:0 0 6px;font-size:21px;font-weight:650;letter-spacing:.2px}
header .meta{display:flex;flex-wrap:wrap;gap:6px 22px;color:#cbd5e1;font-size:13.5px}
header .meta b{color:#f8fafc;font-weight:600}
main{max-width:1280px;margin:0 auto;padding:20px 32px 48px}
.card{background:#fff;border:1px solid var(--line);border-radius:10px;padding:16px 20px;
 margin:0 0 20px;box-shadow:0 1px 2px rgba(15,23,42,.05)}
h2{font-size:16px;margin:0 0 10px;font-weight:650}
.muted{color:var(--muted)}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:6px 10px;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}
th{font-weight:600;color:#374151;background:#f9fafb;font-size:13px}
td.num,th.num{text-align:right}
td.best{font-weight:700}
.swatch{display:inline-block;width:11px;height:11px;border-radius:3px;margin-right:7px;
 vertical-align:-1px}
.tabs{display:flex;flex-wrap:wrap;gap:6px;margin:0 0 14px;border-bottom:1px solid var(--line)}
.tabs button{font:inherit;border:1px solid transparent;border-bottom:none;background:none;
 padding:7px 14px;border-radius:8px 8px 0 0;cursor:pointer;color:#374151;margin-bottom:-1px}
.tabs button[aria-selected=true]{background:#fff;border-color:var(--line);color:var(--fg);
 font-weight:650}
.tabs button:hover{background:#f3f4f6}
.js .panel[hidden]{display:none}
.panel h3{font-size:15px;margin:4px 0 8px}
.graphbox{overflow-x:auto;border:1px solid var(--line);border-radius:8px;background:#fff;
 padding:6px}
svg{display:block}
svg.circuit{max-width:100%;height:auto;margin:0 auto}
svg.circuit text{font-size:12px;fill:#111827}
svg.circuit .rowlabel{fill:#6b7280;font-size:11.5px}
svg.circuit .collabel{fill:#374151;font-size:12px;font-weight:600}
svg.circuit .row{stroke:#f1f5f9;stroke-width:1}
svg.circuit .edge{fill:none;stroke-opacity:.72;stroke-linecap:round;transition:opacity .12s}
svg.circuit .edge:hover,svg.circuit .edge.hl{stroke-opacity:1}
svg.circuit.has-hl .edge:not(.hl){opacity:.12}
svg.circuit .node{cursor:default}
svg.circuit .node rect{stroke-width:1.3}
svg.circuit .port{fill:#fff;stroke:#d1d5db;stroke-width:1}
svg.circuit .port.used{fill:#fde68a;stroke:#d97706}
svg.circuit .portlabel{font-size:8px;fill:#374151;pointer-events:none}
.legendrow{display:flex;flex-wrap:wrap;gap:4px 18px;margin:8px 2px 12px;color:#4b5563;
 font-size:12.5px;align-items:center}
.legendrow i{display:inline-block;width:24px;height:0;border-top:3px solid;margin-right:6px;
 vertical-align:3px}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:14px 24px}
.charts figure{margin:0}
.charts figcaption{font-weight:600;margin:0 0 4px;display:flex;justify-content:space-between;
 align-items:center}
.charts svg{width:100%;height:auto}
.chart text{font-size:12px;fill:#374151}
.chart .tick{font-size:11px;fill:#6b7280}
.chart .axis{font-size:12.5px;fill:#111827}
.chart .legend{font-size:12px;fill:#111827}
.chart .plot{fill:#fff}
.chart .frame{fill:none;stroke:#9ca3af}
.chart .grid{stroke:#eef0f3}
.chart .grid.minor{stroke:#f6f7f9}
.chart .ref{stroke:#9ca3af;stroke-dasharray:4 4}
.chart .series{fill:none;stroke-width:2.2;stroke-linejoin:round}
.js .chart.xlin{display:none}
.js.show-lin .chart.xlog{display:none}
.js.show-lin .chart.xlin{display:block}
.toggle{font:inherit;font-size:12px;font-weight:500;border:1px solid var(--line);background:#fff;
 border-radius:6px;padding:2px 8px;cursor:pointer;display:none}
.js .toggle{display:inline-block}
.scorebar{display:inline-block;height:8px;border-radius:2px;vertical-align:0;margin-right:6px}
td.edge{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
tr.edge-row:hover td{background:#f0f5ff}
.yes{color:#15803d;font-weight:700}
.note{font-size:12.5px;color:var(--muted);margin:6px 0 0}
footer{color:var(--muted);font-size:12px;text-align:center;padding:0 0 24px}
"""

# Records errors into the page (the browser test reads them back), then wires up the
# algorithm tabs, the log/linear toggle and edge highlighting. No external resources.
_JS_HEAD = """
(function(){var errs=[];function rec(m){errs.push(String(m));
document.documentElement.setAttribute('data-js-errors',errs.join(' | '));}
window.addEventListener('error',function(e){rec(e.message||'error');});
window.addEventListener('unhandledrejection',function(e){rec('unhandled rejection: '+e.reason);});
var ce=console.error;console.error=function(){rec(Array.prototype.join.call(arguments,' '));
if(ce)ce.apply(console,arguments);};})();
"""

_JS_BODY = """
(function(){
var root=document.documentElement;root.classList.add('js');
var tabs=document.querySelectorAll('.tabs button');
function show(id){
  tabs.forEach(function(b){b.setAttribute('aria-selected',String(b.dataset.panel===id));});
  document.querySelectorAll('.panel').forEach(function(p){p.hidden=p.id!==id;});
}
tabs.forEach(function(b){b.addEventListener('click',function(){show(b.dataset.panel);
  var p=document.getElementById(b.dataset.panel);
  if(p&&history.replaceState)history.replaceState(null,'','#'+encodeURIComponent(p.dataset.algorithm));});});
var want=decodeURIComponent((location.hash||'').slice(1)),first=tabs.length?tabs[0].dataset.panel:null;
document.querySelectorAll('.panel').forEach(function(p){if(p.dataset.algorithm===want)first=p.id;});
if(first){show(first);}
document.querySelectorAll('.toggle').forEach(function(t){t.addEventListener('click',function(){
  var lin=root.classList.toggle('show-lin');
  document.querySelectorAll('.toggle').forEach(function(u){
    u.textContent=lin?'x: linear':'x: log';});});});
function hl(svg,ids,on){if(!svg)return;svg.classList.toggle('has-hl',on);
  ids.forEach(function(id){var e=document.getElementById(id);if(e)e.classList.toggle('hl',on);});}
document.querySelectorAll('svg.circuit .node').forEach(function(n){
  var ids=(n.getAttribute('data-edges')||'').split(' ').filter(Boolean);
  var svg=n.closest('svg');
  n.addEventListener('mouseenter',function(){hl(svg,ids,true);});
  n.addEventListener('mouseleave',function(){hl(svg,ids,false);});});
document.querySelectorAll('tr.edge-row').forEach(function(r){
  var id=r.getAttribute('data-edge');var e=document.getElementById(id);
  var svg=e?e.closest('svg'):null;
  r.addEventListener('mouseenter',function(){hl(svg,[id],true);});
  r.addEventListener('mouseleave',function(){hl(svg,[id],false);});});
var g=document.querySelector('.panel:not([hidden]) svg.circuit');
if(g){var b=g.getBoundingClientRect();root.setAttribute('data-graph-box',
  [b.left+window.scrollX,b.top+window.scrollY,b.width,b.height].map(Math.round).join(','));}
root.setAttribute('data-ready','1');
})();
"""


def _finite_points(points: Any) -> list[tuple[float, float]]:
    out = []
    for p in points or []:
        try:
            x, y = float(p[0]), float(p[1])
        except (TypeError, ValueError, IndexError):
            continue
        if math.isfinite(x) and math.isfinite(y):
            out.append((x, y))
    return out


def _num(r: Mapping[str, Any], key: str) -> float | None:
    v = r.get(key)
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def _summary_table(algos: Mapping[str, Mapping[str, Any]], colors: Mapping[str, str]) -> str:
    keys = [("cpr", max), ("cmd", min), ("auc", max)]
    best: dict[str, float] = {}
    for key, pick in keys:
        vals = [v for r in algos.values() if (v := _num(r, key)) is not None]
        if len(vals) > 1:
            best[key] = pick(vals)
    rows = []
    for name, r in algos.items():
        cells = [f'<td><span class="swatch" style="background:{colors[name]}"></span>'
                 f"{_e(name)}</td><td>{_e(r.get('metric', '—'))}</td>"]
        sec = _num(r, "seconds")
        cells.append(f'<td class="num">{"—" if sec is None else f"{sec:.1f} s"}</td>')
        for key, _ in keys:
            v = _num(r, key)
            cls = "num best" if v is not None and best.get(key) == v else "num"
            cells.append(f'<td class="{cls}">{"—" if v is None else f"{v:.3f}"}</td>')
        cells.append(f'<td class="num">{len(r.get("top_edges") or [])}</td>')
        note = r.get("faithfulness_error")
        cells.append(f'<td class="muted">{_e(note) if note else ""}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return ('<table><thead><tr><th>algorithm</th><th>metric</th><th class="num">seconds</th>'
            '<th class="num" title="circuit performance ratio: area under the faithfulness '
            'curve (higher is better)">CPR ↑</th><th class="num" title="circuit-model '
            'difference: area under |1 - faithfulness| (lower is better)">CMD ↓</th>'
            '<th class="num" title="area under the ROC curve against the official circuit">'
            'AUC ↑</th><th class="num">top edges</th><th></th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table>")


def _edge_table(r: Mapping[str, Any], prefix: str) -> str:
    top = list(r.get("top_edges") or [])
    if not top:
        return '<p class="muted">No top edges recorded.</p>'
    official = {(str(o[0]), None if o[1] is None else int(o[1]))
                for o in r.get("official_edges") or [] if len(o) >= 2}
    has_official = bool(r.get("official_edges"))
    has_pos = any(d.get("seq_idx") is not None for d in top)
    finite = [abs(_score(d.get("score"))) for d in top if math.isfinite(_score(d.get("score")))]
    biggest = max(finite, default=0.0) or 1.0
    head = ['<th class="num">#</th><th>edge</th>']
    if has_pos:
        head.append('<th class="num">position</th>')
    head.append('<th class="num">score</th>')
    if has_official:
        head.append("<th>in official circuit</th>")
    rows = []
    for i, d in enumerate(top):
        s = _score(d.get("score"))
        a = abs(s)
        frac = 1.0 if math.isinf(a) else 0.0 if math.isnan(a) else a / biggest
        bar = (f'<span class="scorebar" style="width:{4 + 56 * frac:.0f}px;'
               f'background:{_sign_color(s)}"></span>')
        cells = [f'<td class="num">{i + 1}</td><td class="edge">{_e(d.get("edge"))}</td>']
        if has_pos:
            pos = d.get("seq_idx")
            cells.append(f'<td class="num">{"all" if pos is None else int(pos)}</td>')
        cells.append(f'<td class="num">{bar}{_fmt(s)}</td>')
        if has_official:
            key = (str(d.get("edge")), None if d.get("seq_idx") is None else int(d["seq_idx"]))
            cells.append('<td class="yes">✓</td>' if key in official else "<td></td>")
        rows.append(f'<tr class="edge-row" data-edge="{prefix}-e{i}">' + "".join(cells) + "</tr>")
    return ("<table><thead><tr>" + "".join(head) + "</tr></thead><tbody>" + "".join(rows)
            + "</tbody></table>")


def _curves(algos: Mapping[str, Mapping[str, Any]], colors: Mapping[str, str],
            n_edges: int | None) -> str:
    faith = [_Series(n, colors[n], _finite_points(r.get("faithfulness"))) for n, r in algos.items()]
    faith = [s for s in faith if s.points]
    meas = [_Series(n, colors[n], _finite_points(r.get("measurements"))) for n, r in algos.items()]
    meas = [s for s in meas if s.points]
    metrics = {str(r.get("metric")) for r in algos.values()}
    metric = metrics.pop() if len(metrics) == 1 else "metric"
    y_label = {"logit_diff": "logit difference", "mse": "−MSE"}.get(metric, metric)
    xs = [x for s in meas + faith for x, _ in s.points]
    x_max = float(n_edges) if n_edges else max(xs, default=1.0)
    figs = []
    toggle = '<button class="toggle" type="button">x: log</button>'
    for title, series, label, ref in (("Faithfulness vs circuit size", faith,
                                       "faithfulness", (0.0, 1.0)),
                                      (f"{y_label[0].upper()}{y_label[1:]} vs circuit size", meas,
                                       y_label, ())):
        if not series:
            continue
        charts = "".join(
            _line_chart(series, "circuit size (edges)", label, log_x=log, css=css,
                        x_range=None if log else (0.0, x_max), ref_y=ref)
            for log, css in ((True, "xlog"), (False, "xlin")))
        figs.append(f"<figure><figcaption><span>{_e(title)}</span>{toggle}</figcaption>"
                    f"{charts}</figure>")
    roc = []
    for n, r in algos.items():
        fpr, tpr = (r.get("roc") or {}).get("fpr"), (r.get("roc") or {}).get("tpr")
        if fpr and tpr:
            auc = _num(r, "auc")
            legend = n if auc is None else f"{n} (AUC {auc:.3f})"
            roc.append(_Series(n, colors[n], _finite_points(zip(fpr, tpr)), legend))
    if roc:
        n_off = max(len(r.get("official_edges") or []) for r in algos.values())
        note = f" ({n_off} official edges)" if n_off else ""
        figs.append(f"<figure><figcaption><span>ROC vs the official circuit{note}</span>"
                    "</figcaption>"
                    + _line_chart(roc, "false positive rate", "true positive rate",
                                  x_range=(0.0, 1.0), y_range=(0.0, 1.0), diagonal=True,
                                  step=True) + "</figure>")
    if not figs:
        return '<p class="muted">No curves recorded.</p>'
    extra = "" if roc else ('<p class="note">No ROC curves: this task has no official circuit '
                            "to compare against.</p>")
    return f'<div class="charts">{"".join(figs)}</div>{extra}'


def _json_for_html(obj: Any) -> str:
    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return str(x)
        if isinstance(x, Mapping):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    text = json.dumps(clean(obj), separators=(",", ":"), default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _render_report(results: Mapping[str, Any]) -> str:
    """The HTML text of :func:`write_report`."""
    algos: dict[str, Mapping[str, Any]] = dict(results.get("algorithms") or {})
    colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(algos)}
    model, task = results.get("model", "?"), results.get("task", "?")
    n_edges = results.get("n_edges")
    seq_len = results.get("seq_len")
    meta = [f"model <b>{_e(model)}</b>", f"task <b>{_e(task)}</b>",
            f"edges <b>{_e(n_edges if n_edges is not None else '?')}</b>",
            f"token positions <b>{_e(seq_len) if seq_len is not None else 'no'}</b>",
            f"algorithms <b>{len(algos)}</b>"]
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>edgewise: {_e(task)} on {_e(model)}</title>",
        f"<style>{_CSS}</style><script>{_JS_HEAD}</script></head><body>",
        f'<header><h1>Circuit report — {_e(task)}</h1><div class="meta">'
        + "".join(f"<span>{m}</span>" for m in meta) + "</div></header><main>",
    ]
    if not algos:
        parts.append('<section class="card"><p class="muted">No algorithms in these results.'
                     "</p></section>")
    else:
        parts.append('<section class="card"><h2>Summary</h2>'
                     + _summary_table(algos, colors) + "</section>")
        tabs, panels = [], []
        for i, (name, r) in enumerate(algos.items()):
            pid, prefix = f"panel-{i}", f"c{i}"
            top = list(r.get("top_edges") or [])
            tabs.append(f'<button type="button" role="tab" data-panel="{pid}" '
                        f'aria-selected="{"true" if i == 0 else "false"}"><span class="swatch" '
                        f'style="background:{colors[name]}"></span>{_e(name)}</button>')
            has_pos = any(d.get("seq_idx") is not None for d in top)
            legend = ('<div class="legendrow"><span><i style="border-color:' + POSITIVE
                      + '"></i>positive score</span><span><i style="border-color:' + NEGATIVE
                      + '"></i>negative score</span><span>width ∝ |score|</span>'
                      "<span>edges flow upwards, from Resid Start to Resid End</span>"
                      + ("<span>Q / K / V: the head's query, key, value input</span>"
                         if any(_split_edge(str(d["edge"]))[2] for d in top) else "")
                      + ("<span>one column per token position</span>" if has_pos else "")
                      + "<span>hover a node or a table row to highlight its edges</span></div>")
            panels.append(
                f'<section class="panel" id="{pid}" role="tabpanel" data-algorithm="{_e(name)}">'
                f"<h3>{_e(name)}: top {len(top)} edges</h3>"
                f'<div class="graphbox">{_circuit_svg(top, prefix)}</div>{legend}'
                f"{_edge_table(r, prefix)}</section>")
        parts.append('<section class="card"><h2>Circuits</h2><div class="tabs" role="tablist">'
                     + "".join(tabs) + "</div>" + "".join(panels) + "</section>")
        parts.append('<section class="card"><h2>Curves</h2>'
                     + _curves(algos, colors, n_edges if isinstance(n_edges, int) else None)
                     + "</section>")
    parts.append("</main><footer>Generated by edgewise. Self-contained: works offline. The raw "
                 "results are embedded in the element #results-data.</footer>")
    parts.append('<script type="application/json" id="results-data">'
                 + _json_for_html(results) + "</script>")
    parts.append(f"<script>{_JS_BODY}</script></body></html>\n")
    return "".join(parts)


def write_report(results: Mapping[str, Any], path: str | Path) -> Path:
    """Write an HTML report of ``results`` (the ``results.json`` dict of ``edgewise
    discover``) to ``path``, atomically, and return the path.

    The page is one self-contained file (inline SVG, CSS and JS; no network) with a
    summary (model, task, edge count, per-algorithm seconds / CPR / CMD / AUC), each
    algorithm's circuit as a layered graph with its top-edge table (tabs switch
    algorithm), faithfulness and metric curves over circuit size, and ROC curves
    against the official circuit when the results have them. Results without
    ``model``, ``task`` and an ``algorithms`` mapping raise
    :class:`edgewise.io.files.FileFormatError`; other keys may be missing (drawn as absent).
    """
    from edgewise.io.files import FileFormatError

    if not isinstance(results, Mapping):
        raise FileFormatError(f"results must be a mapping like results.json, got "
                              f"{type(results).__name__}")
    missing = [k for k in ("model", "task", "algorithms") if k not in results]
    if missing or not isinstance(results["algorithms"], Mapping):
        raise FileFormatError(f"results lack {', '.join(map(repr, missing)) or 'an algorithms mapping'}"
                              ": pass the results.json of edgewise discover")
    text = _render_report(results)
    return _write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _write(path: str | Path, write: Callable[[str], Any]) -> Path:
    """Write through a temp file in the same folder, then ``os.replace`` it onto ``path``
    (:func:`edgewise.io.files.atomic_write`: the file gets the mode a plain ``open(..., "w")``
    would, so the umask decides who can read it)."""
    from edgewise.io.files import atomic_write

    return atomic_write(path, write)


# --------------------------------------------------------------------------- matplotlib


def _circuit_figure(edges: Sequence[Mapping[str, Any]], title: str | None = None,
                    dpi: float = 150, seq_labels: Sequence[str] | None = None) -> Figure:
    """A matplotlib Figure (Agg canvas, no pyplot state) of the circuit of ``edges``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyBboxPatch, PathPatch, Rectangle
    from matplotlib.path import Path as MPath

    lay = _layout(edges, seq_labels) if edges else _Layout([], [], 300.0, 120.0, [], [])
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
        ax.plot([_LEFT - 8, lay.width - 6], [y, y], color="#eef1f5", lw=1 * pt, zorder=0)
        ax.text(8, y, label, ha="left", va="center", fontsize=11 * pt, color="#6b7280")
    for x, label in lay.columns:
        ax.text(x, 20, label, ha="center", va="center", fontsize=12 * pt, fontweight="bold",
                color="#374151")
    order = sorted(range(len(lay.edges)), key=lambda i: (lay.edges[i].width, -i))
    for z, i in enumerate(order):
        e = lay.edges[i]
        points = _edge_path(e)
        path = MPath(points, [MPath.MOVETO] + [MPath.CURVE4] * (len(points) - 1))
        patch = PathPatch(path, fill=False, edgecolor=e.color, lw=e.width * pt, alpha=0.75,
                          capstyle="round", zorder=1 + z / (len(order) + 1))
        patch.set_gid(f"edge:{e.name}@{e.seq_idx}")
        ax.add_patch(patch)
    for n in lay.nodes:
        fill, stroke = _NODE_STYLE[n.kind]
        ax.add_patch(FancyBboxPatch((n.x - n.w / 2, n.y - n.h / 2), n.w, n.h,
                                    boxstyle="round,pad=0,rounding_size=6", facecolor=fill,
                                    edgecolor=stroke, lw=1.3 * pt, zorder=3))
        ax.text(n.x, n.y, n.name, ha="center", va="center", fontsize=12 * pt, zorder=4)
        used = {lay.edges[i].port for i in n.edges if lay.edges[i].dest is n}
        for p in _PORTS:
            if p not in n.ports:
                continue
            px, py = n.ports[p]
            ax.add_patch(Rectangle((px - 7, py - _PORT_H), 14, _PORT_H, zorder=3, lw=1 * pt,
                                   facecolor="#fde68a" if p in used else "#ffffff",
                                   edgecolor="#d97706" if p in used else "#d1d5db"))
            ax.text(px, py - _PORT_H / 2, p, ha="center", va="center", fontsize=8 * pt, zorder=4)
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
    fig = _circuit_figure(edges, title, dpi)
    return _write(path, lambda tmp: fig.savefig(tmp, format="png", facecolor="white"))


_EDGE_INDEX: weakref.WeakKeyDictionary[Any, dict[tuple[str, tuple[int, ...]], Any]] = (
    weakref.WeakKeyDictionary())


def _selected_edges(model: PatchableModel, prune_scores: Mapping[str, Any],
                    threshold: float | None, top_k: int | None) -> list[dict[str, Any]]:
    import torch

    index = _EDGE_INDEX.get(model)
    if index is None:
        index = {(e.dest.module_name, tuple(e.patch_idx)): e for e in model.edges}
        _EDGE_INDEX[model] = index
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
        e = index.get((module, flat))
        if e is None:
            continue
        out.append({"edge": e.name, "seq_idx": e.seq_idx, "score": s})
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
    fig = _circuit_figure(edges, title, dpi, seq_labels)
    if path is not None:
        _write(path, lambda tmp: fig.savefig(tmp, format="png", facecolor="white"))
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
