"""Where the nodes and edges of a circuit go.

Bottom to top: ``Resid Start`` in the lowest row, then per block its attention heads
(left to right by head), the residual stream after the attention, its MLP and the
residual stream after the block, ``Resid End`` in the top row; only rows with nodes are
drawn. Edges entering a head's separate input attach to its ``Q``/``K``/``V`` port.
Edges at token positions are laid out in one column per position. Edges are cubic
Bezier curves from the source's top to the destination's bottom, with waypoints beside
any node they would otherwise cross. Coordinates are pixels, ``y`` growing downwards.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from edgewise.visualize.nodes import EdgeRef, NodeRef
from edgewise.visualize.style import fmt, sign_color


@dataclass
class NodeBox:
    """A node's box: ``name`` is its label, ``pos`` its token position (``None``: all),
    ``rank`` its row (higher is drawn higher), ``order`` its place in the row, ``kind``
    its style (``"attn"``, ``"mlp"`` or ``"resid"``). ``edges`` are indices into
    :attr:`Layout.edges`; ``ports`` maps ``""`` (and ``"Q"``/``"K"``/``"V"`` for a head
    with separate inputs) to where edges attach below the box."""

    name: str
    pos: int | None
    rank: float
    order: int
    kind: str
    row_label: str = ""
    w: float = 0.0
    h: float = 26.0
    x: float = 0.0  # centre
    y: float = 0.0  # centre (y grows downwards)
    ports: dict[str, tuple[float, float]] = field(default_factory=dict)  # port -> attach point
    edges: list[int] = field(default_factory=list)


@dataclass
class DrawnEdge:
    """An edge as drawn: from ``start`` (the top of ``src``) through the ``via`` points
    to ``end`` (the bottom of ``dest``, at ``port`` when it enters a head's input)."""

    name: str
    seq_idx: int | None
    score: float
    src: NodeBox
    dest: NodeBox
    port: str | None
    start: tuple[float, float] = (0.0, 0.0)
    end: tuple[float, float] = (0.0, 0.0)
    via: list[tuple[float, float]] = field(default_factory=list)  # detours around nodes
    width: float = 1.0

    @property
    def color(self) -> str:
        """Blue for a positive score, red for a negative one."""
        return sign_color(self.score)

    @property
    def label(self) -> str:
        """The tooltip: name, position and score."""
        pos = "" if self.seq_idx is None else f" @{self.seq_idx}"
        return f"{self.name}{pos}  score {fmt(self.score)}"


@dataclass
class Layout:
    """A laid-out circuit: its size, row labels at their ``y`` and position columns'
    labels at their ``x``."""

    nodes: list[NodeBox]
    edges: list[DrawnEdge]
    width: float
    height: float
    rows: list[tuple[float, str]]  # (y, label)
    columns: list[tuple[float, str]]  # (x, label)


ROW_H = 92.0
GAP = 20.0
COL_GAP = 40.0
LEFT = 84.0
TOP = 44.0
BOTTOM = 12.0
PORT_H = 11.0
PORTS = ("Q", "K", "V")


def _place(ref: NodeRef) -> tuple[float, int, str, str]:
    """``(rank, order within its row, drawn kind, row label)`` of a node's box: ranks
    ``4 * block + 1..4`` for the heads, the stream after attention, the MLP and the
    stream after the block; Resid Start 0, Resid End last; an unknown node between the
    attention and the MLP of its block."""
    b = ref.block or 0
    if ref.kind == "embed":
        return 0.0, 0, "resid", "embed"
    if ref.kind == "resid_end":
        return math.inf, 0, "resid", "output"
    if ref.kind == "attn":
        return 4.0 * b + 1, ref.head or 0, "attn", f"L{b} attn"
    if ref.kind == "resid_mid":
        return 4.0 * b + 2, 0, "resid", f"L{b} mid"
    if ref.kind == "mlp":
        return 4.0 * b + 3, 0, "mlp", f"L{b} MLP"
    if ref.kind == "resid_post":
        return 4.0 * b + 4, 0, "resid", f"L{b} post"
    return 4.0 * b + 2.5, 0, "resid", ref.label


def layout(edges: Sequence[EdgeRef], seq_labels: Sequence[str] | None = None) -> Layout:
    """Positions of the nodes and edges of ``edges``; ``seq_labels`` name the position
    columns (``"{position}: {label}"``)."""
    nodes: dict[tuple[NodeRef, int | None], NodeBox] = {}

    def node(ref: NodeRef, pos: int | None) -> NodeBox:
        key = (ref.box, pos)
        if key not in nodes:
            rank, order, kind, row_label = _place(ref.box)
            name = ref.box.label
            label_w = 7.0 * len(name) + 18
            nodes[key] = NodeBox(name, pos, rank, order, kind, row_label, w=max(54.0, label_w))
        return nodes[key]

    drawn = [DrawnEdge(e.name, e.seq_idx, e.score, node(e.src, e.seq_idx),
                       node(e.dest, e.seq_idx), e.port) for e in edges]
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
    top = TOP if has_pos else 20.0

    def row_y(rank: float) -> float:
        return top + (n_rows - 1 - row_of[rank]) * ROW_H + 20

    columns: list[tuple[float, str]] = []
    x0 = LEFT
    for p in positions:
        by_row: dict[float, list[NodeBox]] = {}
        for n in nodes.values():
            if n.pos == p:
                by_row.setdefault(n.rank, []).append(n)
        col_w = max(sum(n.w for n in row) + GAP * (len(row) - 1) for row in by_row.values())
        for rank, row in by_row.items():
            row.sort(key=lambda n: (n.order, n.name))
            x = x0 + (col_w - sum(n.w for n in row) - GAP * (len(row) - 1)) / 2
            for n in row:
                n.x, n.y = x + n.w / 2, row_y(rank)
                x += n.w + GAP
        if has_pos:
            label = "all positions" if p is None else f"position {p}"
            if p is not None and seq_labels is not None and p < len(seq_labels):
                label = f"{p}: {seq_labels[p]}"
            columns.append((x0 + col_w / 2, label))
        x0 += col_w + COL_GAP
    width = x0 - COL_GAP + 36
    height = top + (n_rows - 1) * ROW_H + 40 + PORT_H + BOTTOM

    labels = {}
    for n in nodes.values():
        labels.setdefault(n.rank, n.row_label)
    rows = [(row_y(r), labels[r]) for r in ranks]

    for n in nodes.values():
        if qkv and n.kind == "attn":
            for i, p in enumerate(PORTS):
                n.ports[p] = (n.x - n.w / 2 + n.w * (i + 1) / 4, n.y + n.h / 2 + PORT_H)
        n.ports[""] = (n.x, n.y + n.h / 2)

    # spread the edges leaving / entering one point, ordered by the other end's x
    finite = [abs(e.score) for e in drawn if math.isfinite(e.score)]
    biggest = max(finite, default=0.0)
    outgoing: dict[int, list[DrawnEdge]] = {}
    incoming: dict[tuple[int, str], list[DrawnEdge]] = {}
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
    rows_by_col: dict[int | None, dict[float, list[NodeBox]]] = {}
    for n in nodes.values():
        rows_by_col.setdefault(n.pos, {}).setdefault(n.y, []).append(n)
    for col in rows_by_col.values():
        for row in col.values():
            row.sort(key=lambda n: n.x)
    for e in drawn:
        _route(e, rows_by_col[e.src.pos])
    return Layout(list(nodes.values()), drawn, width, height, rows, columns)


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


def _route(e: DrawnEdge, rows: Mapping[float, list[NodeBox]]) -> None:
    """Add waypoints so that an edge skipping rows passes beside, not through, the nodes
    in between."""
    here = e.start
    for y in sorted(rows, reverse=True):
        if not e.dest.y < y < e.src.y:
            continue
        row = rows[y]
        for i, n in enumerate(row):
            top, bottom = n.y - n.h / 2 - 3, n.y + n.h / 2 + (PORT_H if "Q" in n.ports else 0) + 3
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


def edge_path(e: DrawnEdge) -> list[tuple[float, float]]:
    """A poly-Bezier from the source's top to the destination: the start point, then
    three control points per cubic segment."""
    points = [e.start]
    for a, b in zip([e.start, *e.via], [*e.via, e.end]):
        points += _segment(a, b)
    return points
