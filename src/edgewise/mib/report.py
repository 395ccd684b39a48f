"""The HTML page of ``edgewise mib demo``: MIB's faithfulness curves with bootstrap bands
(edges; nodes and neurons), a CPR/CMD table with intervals, and the submission files.
One self-contained page (the report's CSS and SVG charts from :mod:`edgewise.visualize`;
nothing is fetched)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgewise.io.files import FileFormatError, atomic_write
from edgewise.visualize.assets import CSS, JS_BODY, JS_HEAD
from edgewise.visualize.style import PALETTE, esc
from edgewise.visualize.svg import Series, line_chart

__all__ = ["render_mib_report", "write_mib_report"]

_ROW_KEYS = ("method", "level", "sizes", "n_units", "percentages", "curve_cpr", "curve_cmd",
             "band_cpr", "band_cmd", "cpr", "cmd", "bootstrap")  # fmt: skip


def _check_results(results: Any) -> list[Mapping[str, Any]]:
    if not isinstance(results, Mapping) or not isinstance(results.get("rows"), list):
        raise FileFormatError(
            "MIB demo results must be a mapping with a 'rows' list (mib_results.json of "
            "edgewise mib demo)"
        )
    rows = results["rows"]
    for i, r in enumerate(rows):
        missing = [k for k in _ROW_KEYS if not isinstance(r, Mapping) or k not in r]
        if missing:
            raise FileFormatError(f"MIB demo results: row {i} lacks {missing}")
    return rows


def interval_text(triple: Sequence[float]) -> str:
    """``"0.1234 [0.1000, 0.1500]"`` from ``(point, lower, upper)``."""
    point, lo, hi = (float(v) for v in triple)
    return f"{point:.4f} [{lo:.4f}, {hi:.4f}]"


def _table(rows: Sequence[Mapping[str, Any]], colors: Mapping[str, str]) -> str:
    level = rows[0]["bootstrap"].get("level", 0.95) if rows else 0.95
    head = (
        '<tr><th>method</th><th>level</th><th class="num">units</th>'
        f'<th class="num" title="area under the faithfulness of the signed top-n circuits '
        f'(higher is better); {100 * level:g}% bootstrap interval over prompts">CPR ↑ '
        f"[{100 * level:g}% interval]</th>"
        f'<th class="num" title="area under |1 - faithfulness| of the |score| top-n '
        f'circuits (lower is better)">CMD ↓ [{100 * level:g}% interval]</th></tr>'
    )
    body = []
    for r in rows:
        name = f"{r['method']} / {r['level']}"
        body.append(
            f'<tr class="mib-row"><td><span class="swatch" style="background:{colors[name]}">'
            f"</span>{esc(r['method'])}</td><td>{esc(r['level'])}</td>"
            f'<td class="num">{int(r["n_units"])}</td>'
            f'<td class="num ci">{esc(interval_text(r["cpr"]))}</td>'
            f'<td class="num ci">{esc(interval_text(r["cmd"]))}</td></tr>'
        )
    return f"<table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"


def _series(r: Mapping[str, Any], color: str, which: str) -> Series:
    xs = [100.0 * float(p) for p in r["percentages"]]
    ys = [float(v) for v in r[f"curve_{which}"]]
    band = [(x, float(lo), float(hi)) for x, (lo, hi) in zip(xs, r[f"band_{which}"])]
    name = f"{r['method']} / {r['level']}"
    boot = r["bootstrap"]
    label = (f"{100 * float(boot.get('level', 0.95)):g}% bootstrap interval "
             f"({boot.get('n_resamples')} resamples of the prompts)")  # fmt: skip
    ok = all(math.isfinite(v) for v in ys)
    return Series(name, color, list(zip(xs, ys)) if ok else [], band=band, band_label=label)


def _charts(rows: Sequence[Mapping[str, Any]], colors: Mapping[str, str]) -> str:
    figs = []
    for title, wanted, unit in (
        ("Edges", ("edge",), "edges"),
        ("Nodes and neurons", ("node", "neuron"), "nodes / neurons"),
    ):
        picked = [r for r in rows if r["level"] in wanted]
        if not picked:
            continue
        for which, what in (("cpr", "signed ranking (CPR)"), ("cmd", "|score| ranking (CMD)")):
            series = [_series(r, colors[f"{r['method']} / {r['level']}"], which) for r in picked]
            chart = line_chart(series, f"circuit size (% of {unit})", "faithfulness",
                               log_x=True, ref_y=(0.0, 1.0), css=f"mib-{which}")  # fmt: skip
            figs.append(
                f"<figure><figcaption><span>{esc(title)}: faithfulness, {esc(what)}</span>"
                f"</figcaption>{chart}</figure>"
            )
    return f'<div class="charts">{"".join(figs)}</div>'


def _files(results: Mapping[str, Any]) -> str:
    sub = results.get("submission") or {}
    items = []
    for method, entry in sub.items():
        for kind in ("importances", "circuits"):
            folder = (entry or {}).get(kind)
            if folder:
                valid = (entry or {}).get(f"{kind}_valid")
                note = f" — validated: {esc(valid)}" if valid else ""
                items.append(
                    f"<li><b>{esc(method)}</b> {kind}: <code>{esc(folder)}</code>{note}</li>"
                )
    if not items:
        return ""
    return ('<section class="card"><h2>Submission files</h2><ul>' + "".join(items)
            + "</ul></section>")  # fmt: skip


def render_mib_report(results: Mapping[str, Any]) -> str:
    """The HTML text of :func:`write_mib_report`."""
    rows = _check_results(results)
    names = [f"{r['method']} / {r['level']}" for r in rows]
    colors = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}
    meta = [
        f"model <b>{esc(results.get('model', '?'))}</b>",
        f"task <b>{esc(results.get('task', '?'))}</b>",
        f"discovery prompts <b>{esc(results.get('n_train', '?'))}</b>",
        f"evaluation prompts <b>{esc(results.get('n_eval', '?'))}</b>",
        f"edges <b>{esc(results.get('n_edges', '?'))}</b>",
    ]
    note = esc(results.get("note", ""))
    return "".join([
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>edgewise: MIB circuit track, {esc(results.get('task', '?'))}</title>",
        f"<style>{CSS}</style><script>{JS_HEAD}</script></head><body>",
        "<header><h1>MIB circuit track — demo</h1><div class=\"meta\">"
        + "".join(f"<span>{m}</span>" for m in meta) + "</div></header><main>",
        f'<section class="card"><h2>CPR and CMD, as MIB computes them</h2>'
        f"{_table(rows, colors)}<p class=\"note\">{note}</p></section>",
        f'<section class="card"><h2>Faithfulness curves</h2>{_charts(rows, colors)}</section>',
        _files(results),
        "</main><footer>Generated by edgewise. Self-contained: works offline.</footer>",
        f"<script>{JS_BODY}</script></body></html>\n",
    ])  # fmt: skip


def write_mib_report(results: Mapping[str, Any], path: str | Path) -> Path:
    """Write the page of ``results`` (``mib_results.json`` of ``edgewise mib demo``) to
    ``path`` atomically (the umask decides its mode); returns the path.

    Raises:
        FileFormatError: results without a ``rows`` list of complete rows.
    """
    text = render_mib_report(results)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
