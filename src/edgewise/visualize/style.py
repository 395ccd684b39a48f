"""Colours, node styles and number formatting shared by the SVG, HTML and matplotlib
drawings."""

from __future__ import annotations

import html
import math
from typing import Any

POSITIVE = "#2563eb"
NEGATIVE = "#dc2626"
NEUTRAL = "#9ca3af"
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f",
           "#ff9da7", "#e15759", "#bab0ac")
NODE_STYLE = {  # drawn kind -> (fill, stroke)
    "attn": ("#fef3c7", "#d97706"),
    "mlp": ("#dcfce7", "#16a34a"),
    "resid": ("#f3f4f6", "#4b5563"),
}


def sign_color(score: float) -> str:
    """Blue for a positive score, red for a negative one, grey for 0 or NaN."""
    if math.isnan(score) or score == 0:
        return NEUTRAL
    return POSITIVE if score > 0 else NEGATIVE


def fmt(x: Any, digits: int = 4) -> str:
    """A short human form of a number: ``—`` for ``None``, ``∞``, scientific notation
    for very large or small values."""
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


def as_score(x: Any) -> float:
    """``x`` as a float; NaN when it is not a number (a missing score)."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def esc(text: Any) -> str:
    """``text`` escaped for HTML text and attribute values."""
    return html.escape(str(text), quote=True)
