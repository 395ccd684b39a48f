"""The HTML report of ``edgewise discover``'s results: one self-contained page (inline
SVG, CSS and a little vanilla JS; nothing is fetched) with a summary table, each
algorithm's circuit and top-edge table, and faithfulness, metric and ROC curves.
Standard library only."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgewise.visualize.assets import CSS, JS_BODY, JS_HEAD
from edgewise.visualize.explain import (
    ablation_text,
    definitions_section,
    overlap_section,
    settings_section,
)
from edgewise.visualize.nodes import edges_from_records
from edgewise.visualize.style import NEGATIVE, PALETTE, POSITIVE, as_score, esc, fmt, sign_color
from edgewise.visualize.svg import Series, circuit_svg, line_chart


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


def _band(r: Mapping[str, Any]) -> tuple[list[tuple[float, float, float]], str]:
    """The bootstrap band of the faithfulness curve (``[size, lower, upper]`` rows under
    ``r["bootstrap"]["faithfulness"]``) and its label; no band without one."""
    boot = r.get("bootstrap")
    if not isinstance(boot, Mapping):
        return [], ""
    rows = []
    for row in boot.get("faithfulness") or []:
        try:
            x, lo, hi = (float(v) for v in row)
        except (TypeError, ValueError):
            continue
        if all(math.isfinite(v) for v in (x, lo, hi)):
            rows.append((x, lo, hi))
    level = _num(boot, "level")
    n = boot.get("n_resamples")
    label = (f"{100 * level:g}% " if level is not None else "") + "bootstrap interval" + (
        f" ({n} resamples of the prompts)" if isinstance(n, int) else "")
    return rows, label


def _interval_note(r: Mapping[str, Any], key: str) -> str:
    """``[lower, upper]`` of ``r["bootstrap"][key]`` under a summary cell, if any."""
    boot = r.get("bootstrap")
    pair = boot.get(key) if isinstance(boot, Mapping) else None
    if not isinstance(pair, list | tuple) or len(pair) != 2:
        return ""
    lo, hi = _num({"v": pair[0]}, "v"), _num({"v": pair[1]}, "v")
    if lo is None or hi is None:
        return ""
    level = _num(boot, "level")  # type: ignore[arg-type]
    title = f"{100 * level:g}% bootstrap interval" if level is not None else "bootstrap interval"
    return f'<br><small class="muted ci" title="{title}">[{lo:.3f}, {hi:.3f}]</small>'


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
                 f"{esc(name)}</td><td>{esc(r.get('metric', '—'))}</td>"]
        sec = _num(r, "seconds")
        cells.append(f'<td class="num">{"—" if sec is None else f"{sec:.1f} s"}</td>')
        for key, _ in keys:
            v = _num(r, key)
            cls = "num best" if v is not None and best.get(key) == v else "num"
            note = _interval_note(r, key) if v is not None else ""
            cells.append(f'<td class="{cls}">{"—" if v is None else f"{v:.3f}"}{note}</td>')
        cells.append(f'<td class="num">{len(r.get("top_edges") or [])}</td>')
        note = r.get("faithfulness_error")
        cells.append(f'<td class="muted">{esc(note) if note else ""}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return ('<table><thead><tr><th>algorithm</th><th>metric</th><th class="num">seconds</th>'
            '<th class="num" title="circuit performance ratio: area under the faithfulness '
            'curve (higher is better)">CPR ↑</th><th class="num" title="circuit-model '
            'difference: area under |1 - faithfulness| (lower is better)">CMD ↓</th>'
            '<th class="num" title="area under the ROC curve against the official circuit">'
            'AUC ↑</th><th class="num">top edges</th><th></th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table>")


def _seq_labels(results: Mapping[str, Any]) -> list[str] | None:
    """The token text of each position (``results["seq_labels"]``), if recorded."""
    labels = results.get("seq_labels")
    return [str(x) for x in labels] if isinstance(labels, list | tuple) else None


def _position(pos: Any, labels: list[str] | None) -> str:
    """A token position with its text: ``"10 “PLACE”"``, ``"all"`` for ``None``."""
    if pos is None:
        return "all"
    p = int(pos)
    return f"{p} “{labels[p]}”" if labels is not None and 0 <= p < len(labels) else str(p)


def _edge_table(r: Mapping[str, Any], prefix: str, labels: list[str] | None = None) -> str:
    top = list(r.get("top_edges") or [])
    if not top:
        return '<p class="muted">No top edges recorded.</p>'
    official = {(str(o[0]), None if o[1] is None else int(o[1]))
                for o in r.get("official_edges") or [] if len(o) >= 2}
    has_official = bool(r.get("official_edges"))
    has_pos = any(d.get("seq_idx") is not None for d in top)
    finite = [abs(as_score(d.get("score"))) for d in top if math.isfinite(as_score(d.get("score")))]
    biggest = max(finite, default=0.0) or 1.0
    head = ['<th class="num">#</th><th>edge</th>']
    if has_pos:
        head.append('<th class="num">position</th>')
    head.append('<th class="num">score</th>')
    has_ci = any(isinstance(d.get("ci"), list | tuple) for d in top)
    if has_ci:
        level = _num((r.get("bootstrap") or {}).get("scores") or {}, "level")
        head.append(f'<th class="num" title="bootstrap interval over resampled prompts">'
                    f'{"" if level is None else f"{100 * level:g}% "}interval</th>')  # fmt: skip
    if has_official:
        head.append("<th>in official circuit</th>")
    rows = []
    for i, d in enumerate(top):
        s = as_score(d.get("score"))
        a = abs(s)
        frac = 1.0 if math.isinf(a) else 0.0 if math.isnan(a) else a / biggest
        bar = (f'<span class="scorebar" style="width:{4 + 56 * frac:.0f}px;'
               f'background:{sign_color(s)}"></span>')
        cells = [f'<td class="num">{i + 1}</td><td class="edge">{esc(d.get("edge"))}</td>']
        if has_pos:
            pos = d.get("seq_idx")
            cells.append(f'<td class="num">{esc(_position(pos, labels))}</td>')
        cells.append(f'<td class="num">{bar}{fmt(s)}</td>')
        if has_ci:
            ci = d.get("ci")
            ok = isinstance(ci, list | tuple) and len(ci) == 2
            text = f"[{fmt(as_score(ci[0]))}, {fmt(as_score(ci[1]))}]" if ok else "—"  # type: ignore[index]
            cells.append(f'<td class="num ci">{text}</td>')
        if has_official:
            key = (str(d.get("edge")), None if d.get("seq_idx") is None else int(d["seq_idx"]))
            cells.append('<td class="yes">✓</td>' if key in official else "<td></td>")
        rows.append(f'<tr class="edge-row" data-edge="{prefix}-e{i}">' + "".join(cells) + "</tr>")
    return ("<table><thead><tr>" + "".join(head) + "</tr></thead><tbody>" + "".join(rows)
            + "</tbody></table>")


def _curves(algos: Mapping[str, Mapping[str, Any]], colors: Mapping[str, str],
            n_edges: int | None) -> str:
    faith = [Series(n, colors[n], _finite_points(r.get("faithfulness")), "", *_band(r))
             for n, r in algos.items()]  # fmt: skip
    faith = [s for s in faith if s.points]
    meas = [Series(n, colors[n], _finite_points(r.get("measurements"))) for n, r in algos.items()]
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
            line_chart(series, "circuit size (edges)", label, log_x=log, css=css,
                        x_range=None if log else (0.0, x_max), ref_y=ref)
            for log, css in ((True, "xlog"), (False, "xlin")))
        figs.append(f"<figure><figcaption><span>{esc(title)}</span>{toggle}</figcaption>"
                    f"{charts}</figure>")
    roc = []
    for n, r in algos.items():
        fpr, tpr = (r.get("roc") or {}).get("fpr"), (r.get("roc") or {}).get("tpr")
        if fpr and tpr:
            auc = _num(r, "auc")
            legend = n if auc is None else f"{n} (AUC {auc:.3f})"
            roc.append(Series(n, colors[n], _finite_points(zip(fpr, tpr)), legend))
    if roc:
        n_off = max(len(r.get("official_edges") or []) for r in algos.values())
        note = f" ({n_off} official edges)" if n_off else ""
        figs.append(f"<figure><figcaption><span>ROC vs the official circuit{note}</span>"
                    "</figcaption>"
                    + line_chart(roc, "false positive rate", "true positive rate",
                                  x_range=(0.0, 1.0), y_range=(0.0, 1.0), diagonal=True,
                                  step=True) + "</figure>")
    if not figs:
        return '<p class="muted">No curves recorded.</p>'
    extra = "" if roc else ('<p class="note">No ROC curves: this task has no official circuit '
                            "to compare against.</p>")
    return f'<div class="charts">{"".join(figs)}</div>{extra}'


def _unfinished(results: Mapping[str, Any]) -> str:
    """A note naming requested algorithms an interrupted run did not finish."""
    u = results.get("unfinished")
    if not isinstance(u, Mapping) or not u.get("algorithms"):
        return ""
    names = ", ".join(str(a) for a in u["algorithms"])
    command = u.get("command") or "the same edgewise discover command"
    return (f'<section class="card" id="unfinished"><p class="note">Not finished: '
            f"<b>{esc(names)}</b> (the run was interrupted). To finish, run the same command "
            f"again; it resumes: <code>{esc(command)}</code></p></section>")


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
    meta = [f"model <b>{esc(model)}</b>", f"task <b>{esc(task)}</b>",
            f"edges <b>{esc(n_edges if n_edges is not None else '?')}</b>",
            f"token positions <b>{esc(seq_len) if seq_len is not None else 'no'}</b>",
            f"algorithms <b>{len(algos)}</b>"]
    n_prompts = results.get("n_prompts")
    if isinstance(n_prompts, Mapping) and "train" in n_prompts and "test" in n_prompts:
        meta.append(f"prompts <b>{esc(n_prompts['train'])}</b> to score, "
                    f"<b>{esc(n_prompts['test'])}</b> to evaluate")
    meta.append(f"ablation <b>{esc(ablation_text(results).split(':')[0])}</b>")
    labels = _seq_labels(results)
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>edgewise: {esc(task)} on {esc(model)}</title>",
        f"<style>{CSS}</style><script>{JS_HEAD}</script></head><body>",
        f'<header><h1>Circuit report — {esc(task)}</h1><div class="meta">'
        + "".join(f"<span>{m}</span>" for m in meta) + "</div></header><main>",
        _unfinished(results),
    ]
    if not algos:
        parts.append('<section class="card"><p class="muted">No algorithms in these results.'
                     "</p></section>")
    else:
        parts.append('<section class="card"><h2>Summary</h2>'
                     + _summary_table(algos, colors) + "</section>")
        parts.append(settings_section(results))
        parts.append(definitions_section(results))
        tabs, panels = [], []
        for i, (name, r) in enumerate(algos.items()):
            pid, prefix = f"panel-{i}", f"c{i}"
            top = list(r.get("top_edges") or [])
            edges = edges_from_records(top)
            tabs.append(f'<button type="button" role="tab" data-panel="{pid}" '
                        f'aria-selected="{"true" if i == 0 else "false"}"><span class="swatch" '
                        f'style="background:{colors[name]}"></span>{esc(name)}</button>')
            has_pos = any(d.get("seq_idx") is not None for d in top)
            legend = ('<div class="legendrow"><span><i style="border-color:' + POSITIVE
                      + '"></i>positive score</span><span><i style="border-color:' + NEGATIVE
                      + '"></i>negative score</span><span>width ∝ |score|</span>'
                      "<span>edges flow upwards, from Resid Start to Resid End</span>"
                      + ("<span>Q / K / V: the head's query, key, value input</span>"
                         if any(e.port for e in edges) else "")
                      + ("<span>one column per token position, headed by its token</span>"
                         if has_pos else "")
                      + "<span>hover a node or a table row to highlight its edges</span></div>")
            panels.append(
                f'<section class="panel" id="{pid}" role="tabpanel" data-algorithm="{esc(name)}">'
                f"<h3>{esc(name)}: top {len(top)} edges</h3>"
                f'<div class="graphbox">{circuit_svg(edges, prefix, labels)}</div>{legend}'
                f"{_edge_table(r, prefix, labels)}</section>")
        parts.append('<section class="card"><h2>Circuits</h2><div class="tabs" role="tablist">'
                     + "".join(tabs) + "</div>" + "".join(panels) + "</section>")
        parts.append('<section class="card"><h2>Curves</h2>'
                     + _curves(algos, colors, n_edges if isinstance(n_edges, int) else None)
                     + "</section>")
        parts.append(overlap_section(results))
    parts.append("</main><footer>Generated by edgewise. Self-contained: works offline. The raw "
                 "results are embedded in the element #results-data.</footer>")
    parts.append('<script type="application/json" id="results-data">'
                 + _json_for_html(results) + "</script>")
    parts.append(f"<script>{JS_BODY}</script></body></html>\n")
    return "".join(parts)


def write_report(results: Mapping[str, Any], path: str | Path) -> Path:
    """Write an HTML report of ``results`` (the ``results.json`` dict of ``edgewise
    discover``) to ``path``, atomically, and return the path.

    The page is one self-contained file (inline SVG, CSS and JS; no network) with a
    summary (model, task, edge count, prompt counts, ablation, per-algorithm seconds /
    CPR / CMD / AUC), the settings of the run and of each algorithm, definitions of the
    page's measures, each
    algorithm's circuit as a layered graph with its top-edge table (tabs switch
    algorithm), faithfulness and metric curves over circuit size, and ROC curves
    against the official circuit when the results have them, and the overlap of the
    algorithms' top edges. Token positions are headed by their token text when the
    results have ``seq_labels``. Results without
    ``model``, ``task`` and an ``algorithms`` mapping raise
    :class:`edgewise.io.files.FileFormatError`; other keys may be missing (drawn as absent).
    """
    from edgewise.io.files import FileFormatError, atomic_write

    if not isinstance(results, Mapping):
        raise FileFormatError(f"results must be a mapping like results.json, got "
                              f"{type(results).__name__}")
    missing = [k for k in ("model", "task", "algorithms") if k not in results]
    if missing or not isinstance(results["algorithms"], Mapping):
        raise FileFormatError(f"results lack {', '.join(map(repr, missing)) or 'an algorithms mapping'}"
                              ": pass the results.json of edgewise discover")
    text = _render_report(results)
    # atomic: a temp file in the same folder, then os.replace; the file gets the mode a
    # plain open(path, "w") would, so the umask decides who can read it
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
