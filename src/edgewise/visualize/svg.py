"""Inline SVG for the HTML report: the circuit graph and line charts (axes, grid,
legend). Standard library only."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from edgewise.visualize.layout import LEFT, PORT_H, PORTS, edge_path, layout
from edgewise.visualize.nodes import EdgeRef
from edgewise.visualize.style import NODE_STYLE, esc, fmt

# --------------------------------------------------------------------------- circuit

MIN_SCALE = 0.8  # a circuit is never drawn smaller than this fraction of its layout size


def svg_path(points: Sequence[tuple[float, float]]) -> str:
    """The SVG path data of a poly-Bezier (start point, then three points per cubic)."""
    d = [f"M{points[0][0]:.1f},{points[0][1]:.1f}"]
    for i in range(1, len(points), 3):
        d.append("C" + " ".join(f"{x:.1f},{y:.1f}" for x, y in points[i : i + 3]))
    return " ".join(d)


def circuit_svg(edges: Sequence[EdgeRef], prefix: str,
                seq_labels: Sequence[str] | None = None) -> str:
    """An inline SVG of the circuit. Edges get ids ``{prefix}-e{i}`` (``i``: their index
    in ``edges``) so the page's table can highlight them; ``seq_labels`` (token text per
    position) head the position columns.

    The drawing shrinks to the page's width but never below 80% of its natural size (a
    wide circuit scrolls sideways in its box instead), so its 12 px labels stay at least
    9.6 px on a narrow (800 px) window."""
    if not edges:
        return '<p class="muted">No edges to draw.</p>'
    lay = layout(edges, seq_labels)
    w, h = math.ceil(lay.width), math.ceil(lay.height)
    zoom = max(1.0, min(1.5, 720 / h))  # small circuits are drawn larger
    out = [f'<svg class="circuit" data-prefix="{prefix}" viewBox="0 0 {w} {h}" width="{w}" '
           f'height="{h}" style="width:max(min(100%,{w * zoom:.0f}px),{MIN_SCALE * w:.0f}px)" '
           'role="img" aria-label="circuit graph">']
    for y, label in lay.rows:
        out.append(f'<line class="row" x1="{LEFT - 8}" x2="{w - 6}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text class="rowlabel" x="8" y="{y + 4:.1f}">{esc(label)}</text>')
    for x, label in lay.columns:
        out.append(f'<text class="collabel" x="{x:.1f}" y="22" text-anchor="middle">'
                   f'{esc(label)}</text>')
    order = sorted(range(len(lay.edges)), key=lambda i: (lay.edges[i].width, -i))
    out.append('<g class="edges">')
    for i in order:
        e = lay.edges[i]
        out.append(
            f'<path id="{prefix}-e{i}" class="edge" d="{svg_path(edge_path(e))}" '
            f'stroke="{e.color}" '
            f'stroke-width="{e.width:.2f}"><title>{esc(e.label)}</title></path>')
    out.append("</g><g class=\"nodes\">")
    for n in lay.nodes:
        fill, stroke = NODE_STYLE[n.kind]
        ids = " ".join(f"{prefix}-e{i}" for i in n.edges)
        pos = "" if n.pos is None else f" @{n.pos}"
        n_in = sum(1 for i in n.edges if lay.edges[i].dest is n)
        title = f"{n.name}{pos}: {n_in} edges in, {len(n.edges) - n_in} out"
        out.append(f'<g class="node" data-edges="{ids}"><title>{esc(title)}</title>')
        out.append(f'<rect x="{n.x - n.w / 2:.1f}" y="{n.y - n.h / 2:.1f}" width="{n.w:.1f}" '
                   f'height="{n.h:.1f}" rx="6" fill="{fill}" stroke="{stroke}"/>')
        out.append(f'<text x="{n.x:.1f}" y="{n.y + 4.5:.1f}" text-anchor="middle">'
                   f'{esc(n.name)}</text>')
        used = {lay.edges[i].port for i in n.edges if lay.edges[i].dest is n}
        for p in PORTS:
            if p not in n.ports:
                continue
            px, py = n.ports[p]
            cls = "port used" if p in used else "port"
            out.append(f'<rect class="{cls}" x="{px - 7:.1f}" y="{py - PORT_H:.1f}" width="14" '
                       f'height="{PORT_H}" rx="2"/><text class="portlabel" x="{px:.1f}" '
                       f'y="{py - 2.5:.1f}" text-anchor="middle">{p}</text>')
        out.append("</g>")
    out.append("</g></svg>")
    return "".join(out)


# --------------------------------------------------------------------------- charts


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


LEGEND_ROW = 20  # px per legend row
LEGEND_CHAR = 7.2  # px per character of a 12 px legend label (a generous average)


def _legend_rows(series: Sequence[Series], width: float) -> list[list[tuple[float, Series]]]:
    """The legend's entries placed left to right in rows of at most ``width`` px:
    ``[[(x offset, series), ...], ...]``. Each entry is a 20 px line, a gap and its whole
    text (never cut)."""
    rows: list[list[tuple[float, Series]]] = []
    x = width
    for s in series:
        w = 26 + LEGEND_CHAR * len(s.legend or s.name) + 18
        if not rows or x + w > width:
            rows.append([])
            x = 0.0
        rows[-1].append((x, s))
        x += w
    return rows


def _log_axis(
    xs: Sequence[float], x_range: tuple[float, float] | None
) -> tuple[Callable[[float], float], float, float, list[float], list[float]]:
    """A logarithmic x axis: ``(transform, x_lo, x_hi, ticks, minor grid values)``.

    Ticks are powers of ten, at their true logarithmic places. Data without a point at or
    below 0 get a plain log axis from the decade below their smallest ``x``; data with a
    0 get a "0" tick one decade-width left of the smallest decade tick, the stretch
    between the two linear (a symlog axis), so no point is drawn at a false place."""
    lo_data = min(xs) if x_range is None else min(x_range[0], min(xs))
    hi = max(xs) if x_range is None else x_range[1]
    positive = [x for x in xs if x > 0]
    first = math.floor(math.log10(min(positive))) if positive else 0
    hi = max(hi, 10.0**first)
    last = math.ceil(math.log10(hi) - 1e-9)
    lin = 10.0**first
    zero = lo_data <= 0

    def fx(x: float) -> float:
        if x >= lin:
            return math.log10(x) - first + (1.0 if zero else 0.0)
        return max(x, 0.0) / lin if zero else math.log10(max(x, 1e-300)) - first

    ticks = ([0.0] if zero else []) + [10.0**k for k in range(first, last + 1)]
    minor = [m * 10.0**k for k in range(first, last) for m in range(2, 10) if m * 10.0**k < hi]
    return fx, (0.0 if zero else lin), hi, ticks, minor


@dataclass
class Series:
    """One line of a chart: its name, colour, points, legend text (default: name) and an
    optional band ``(x, lower, upper)`` drawn shaded around the line (an interval)."""

    name: str
    color: str
    points: list[tuple[float, float]]
    legend: str = ""
    band: list[tuple[float, float, float]] = field(default_factory=list)
    band_label: str = "interval"


def band_path(
    band: Sequence[tuple[float, float, float]],
    X: Callable[[float], float],
    Y: Callable[[float], float],
) -> str:
    """SVG path data of the closed region between a band's upper and lower bounds: the
    upper bound left to right, then the lower bound right to left."""
    pts = sorted(band)
    upper = [(X(x), Y(hi)) for x, _, hi in pts]
    lower = [(X(x), Y(lo)) for x, lo, _ in reversed(pts)]
    return " ".join(f"{'M' if i == 0 else 'L'}{x:.1f},{y:.1f}"
                    for i, (x, y) in enumerate(upper + lower)) + " Z"  # fmt: skip


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


def line_chart(
    series: list[Series],
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
    W, plot_h = 600, 284
    left, right, top, bottom = 58, 14, 14, 46
    legend = _legend_rows(series, W - left)
    H = top + plot_h + bottom + LEGEND_ROW * len(legend)
    pw, ph = W - left - right, plot_h
    pts = [p for s in series for p in s.points]
    xs = [x for x, _ in pts] or [0.0, 1.0]
    ys = [y for _, y in pts] or [0.0, 1.0]
    ys += [y for s in series for _, lo, hi in s.band for y in (lo, hi)]
    fx: Callable[[float], float] = float
    minor: list[float] = []
    if log_x:
        fx, x_lo, x_hi, x_ticks, minor = _log_axis(xs, x_range)
    elif x_range is not None:
        x_lo, x_hi = x_range
        x_ticks = _linear_ticks(x_lo, x_hi)[2]
    else:
        x_lo, x_hi, x_ticks = _linear_ticks(min(xs), max(xs))
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
           f'aria-label="{esc(y_label)} vs {esc(x_label)}">']
    out.append(f'<rect class="plot" x="{left}" y="{top}" width="{pw}" height="{ph}"/>')
    if log_x:  # minor grid lines at 2..9 x 10^k
        for v in minor:
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
    out.append(f'<text class="axis" x="{left + pw / 2:.1f}" y="{top + ph + 36}" text-anchor="middle">'
               f'{esc(x_label)}</text><text class="axis" transform="translate(14 '
               f'{top + ph / 2:.1f}) rotate(-90)" text-anchor="middle">{esc(y_label)}</text>')
    tol = (tx_hi - tx_lo) / 1000
    for s in series:  # bands first, under every line
        if len(s.band) >= 2:
            out.append(f'<path class="band" d="{band_path(s.band, X, Y)}" fill="{s.color}" '
                       f'fill-opacity="0.18" stroke="none"><title>{esc(s.legend or s.name)}: '
                       f'{esc(s.band_label)}</title></path>')
    for s in series:
        p = sorted(s.points) if not step else s.points
        p = _thin(p, tol)
        if not p:
            continue
        d = " ".join(f"{'M' if i == 0 else 'L'}{X(x):.1f},{Y(y):.1f}" for i, (x, y) in enumerate(p))
        out.append(f'<path class="series" d="{d}" stroke="{s.color}"><title>{esc(s.legend or s.name)}'
                   f'</title></path>')
        if len(p) <= 60:
            for x, y in p:
                out.append(f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="2.6" fill="{s.color}">'
                           f'<title>{esc(s.name)}: {esc(x_label)} {fmt(x)}, {esc(y_label)} '
                           f'{fmt(y)}</title></circle>')
    for row, entries in enumerate(legend):  # below the x axis's label, never clipped
        ly = top + ph + bottom + 6 + LEGEND_ROW * row
        for lx, s in entries:
            x0 = left + lx
            out.append(f'<line x1="{x0}" x2="{x0 + 20}" y1="{ly}" y2="{ly}" '
                       f'stroke="{s.color}" stroke-width="3"/><text class="legend" '
                       f'x="{x0 + 26}" y="{ly + 4}">{esc(s.legend or s.name)}</text>')
    out.append("</svg>")
    return "".join(out)
