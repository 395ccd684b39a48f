"""The parts of the report that say how to read it: the run's settings (model, prompts,
ablation, each algorithm's parameters), what CPR, CMD, AUC and faithfulness mean, what
an infinite ACDC score means, and the overlap of the algorithms' circuits. Standard
library only; every function returns HTML text.

Settings are drawn generically: every key of ``results["settings"]`` and every mapping
an algorithm's record holds beside its curves and edges (its ``parameters``, or any
other key a newer ``results.json`` adds) is shown as a table, so nothing that produced
the numbers is hidden."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from edgewise.visualize.overlap import circuit_overlap
from edgewise.visualize.style import as_score, esc

# an algorithm record's keys that hold results, not settings (drawn elsewhere on the page)
_RESULT_KEYS = frozenset({
    "algorithm", "metric", "measurements", "faithfulness", "faithfulness_error", "cpr", "cmd",
    "auc", "roc", "official_edges", "top_edges", "seconds", "bootstrap", "bootstrap_error",
})  # fmt: skip

ABLATIONS = {
    "patching": "resample (interchange) ablation: an ablated edge carries its source's "
                "output on the prompt's corrupt counterpart",
    "optimal": "optimal ablation (MIB): an ablated edge carries one constant per source, "
               "fitted on the discovery prompts",
}  # fmt: skip


def _value(v: Any, limit: int = 12) -> str:
    """A setting's value as short text: lists shortened after ``limit`` items, long hex
    digests shortened."""
    if isinstance(v, list | tuple):
        items = [_value(x, limit) for x in v[:limit]]
        more = f", … ({len(v)} in all)" if len(v) > limit else ""
        return "[" + ", ".join(items) + more + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{k}: {_value(x, limit)}" for k, x in v.items()) + "}"
    if isinstance(v, float):
        return "∞" if v == math.inf else "−∞" if v == -math.inf else f"{v:g}"
    text = str(v)
    if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
        return text[:12] + "…"
    return text


def _rows(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """``(dotted key, value text)`` for every leaf of ``d``; nested mappings flattened."""
    out: list[tuple[str, str]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.extend(_rows(v, key + "."))
        else:
            out.append((key, _value(v)))
    return out


def _kv_table(rows: list[tuple[str, str]], cls: str) -> str:
    body = "".join(f'<tr><th scope="row">{esc(k)}</th><td>{esc(v)}</td></tr>' for k, v in rows)
    return f'<table class="kv {cls}"><tbody>{body}</tbody></table>'


def algorithm_settings(record: Mapping[str, Any]) -> dict[str, Any]:
    """Everything in one algorithm's record that is not a result: its ``parameters`` and
    any other settings key, merged (a ``parameters`` mapping is flattened into it)."""
    out: dict[str, Any] = {}
    for k, v in record.items():
        if k in _RESULT_KEYS:
            continue
        if k == "parameters" and isinstance(v, Mapping):
            out.update(v)
        else:
            out[k] = v
    return out


def ablation_text(results: Mapping[str, Any]) -> str:
    """What ablated edges carry in these results: the recorded ``ablation`` (top level or
    an algorithm's parameters), described; resample ablation when none is recorded (what
    ``edgewise discover`` does unless ``--ablation optimal``)."""
    kinds = set()
    top = results.get("ablation")
    if isinstance(top, str):
        kinds.add(top)
    for r in (results.get("algorithms") or {}).values():
        a = algorithm_settings(r).get("ablation") if isinstance(r, Mapping) else None
        if isinstance(a, Mapping):
            kinds.add("optimal")
        elif isinstance(a, str):
            kinds.add(a)
    kinds = kinds or {"patching"}
    parts = [ABLATIONS.get(k, k) for k in sorted(kinds)]
    evaluation = ("; circuits are evaluated with resample ablation" if "optimal" in kinds
                  else "")  # fmt: skip
    return "; ".join(parts) + evaluation


def settings_section(results: Mapping[str, Any]) -> str:
    """The "Settings" card: the run's model, prompts and ablation in words, then every
    recorded setting and each algorithm's parameters as tables."""
    settings = results.get("settings")
    settings = settings if isinstance(settings, Mapping) else {}
    n = results.get("n_prompts")
    n = n if isinstance(n, Mapping) else {}
    model = settings.get("model", results.get("model", "?"))
    kind = settings.get("model_kind") or settings.get("kind")
    prompts = []
    if "train" in n:
        prompts.append(f"<b>{esc(n['train'])}</b> prompt pairs to score edges")
    if "test" in n:
        prompts.append(f"<b>{esc(n['test'])}</b> held-out pairs to evaluate circuits")
    lead = [f"Model <b>{esc(model)}</b>" + (f" ({esc(kind)})" if kind else ""),
            f"task <b>{esc(results.get('task', '?'))}</b>"]
    if prompts:
        lead.append(", ".join(prompts))
    out = ['<section class="card" id="settings"><h2>Settings</h2>',
           f'<p>{"; ".join(lead)}.</p>',
           f"<p><b>Ablation</b>: {esc(ablation_text(results))}.</p>"]
    if settings:
        out.append("<h3>Run</h3>" + _kv_table(_rows(settings), "run-settings"))
    algos = results.get("algorithms") or {}
    per = []
    for name, r in algos.items():
        if not isinstance(r, Mapping):
            continue
        rows = _rows(algorithm_settings(r))
        per.append(f'<div class="algo-settings" data-algorithm="{esc(name)}"><h3>{esc(name)}'
                   "</h3>" + (_kv_table(rows, "params") if rows else
                              '<p class="muted">No parameters recorded.</p>') + "</div>")
    if per:
        out.append('<p class="muted">Each algorithm\'s parameters, defaults included, as its '
                   "scores were computed; <code>edgewise discover --param ALGO.NAME=VALUE</code> "
                   "sets one.</p>")
        out.append('<div class="settings-grid">' + "".join(per) + "</div>")
    out.append("</section>")
    return "".join(out)


def definitions_section(results: Mapping[str, Any]) -> str:
    """The "How to read this page" card: faithfulness, CPR, CMD, AUC, edge scores, and
    (when a top edge has an infinite score) what ∞ means for ACDC."""
    items = [
        ("Faithfulness", "of a circuit of size n: (m(circuit) − m(empty)) / (m(full model) − "
         "m(empty)), where m is the task's metric on the held-out prompts and every edge "
         "outside the circuit is ablated. 1 means the circuit does what the whole model "
         "does; 0 what the empty circuit does."),
        ("CPR ↑", "circuit performance ratio: the area under the faithfulness curve, with "
         "circuit size rescaled to [0, 1] by the largest size measured (trapezoids). Higher "
         "is better."),
        ("CMD ↓", "circuit-model difference: the area under |1 − faithfulness| on the same "
         "axis. 0 means every circuit matches the full model; lower is better."),
        ("AUC ↑", "area under the ROC curve of the edges ranked by score against the task's "
         "official circuit (true positive rate over false positive rate). 0.5 is a random "
         "ranking, 1 a perfect one; only tasks with an official circuit have it."),
        ("Score", "an edge's importance as the algorithm measures it; circuits of size n "
         "take the n edges of largest score. Blue edges have positive scores, red negative."),
    ]
    has_inf = any(
        math.isinf(as_score(d.get("score")))
        for r in (results.get("algorithms") or {}).values() if isinstance(r, Mapping)
        for d in r.get("top_edges") or [] if isinstance(d, Mapping)
    )  # fmt: skip
    if has_inf:
        items.append(("∞ (ACDC)", "ACDC scores an edge by the smallest threshold τ at which "
                      "it was pruned. An edge with score ∞ was kept at every τ tried: "
                      "ablating it always raised the loss by at least τ, so it is in "
                      "every circuit ACDC found. Edges tied at ∞ enter circuits together."))
    body = "".join(f"<dt>{esc(t)}</dt><dd>{esc(d)}</dd>" for t, d in items)
    return (f'<section class="card" id="definitions"><h2>How to read this page</h2>'
            f'<dl class="defs">{body}</dl></section>')


def overlap_section(results: Mapping[str, Any], k: int | None = None) -> str:
    """The "Overlap" card: for two or more algorithms, the Jaccard index and the shared
    edge count of each pair's top-k edge sets, and the edges every top-k holds."""
    algos = results.get("algorithms") or {}
    names = [n for n, r in algos.items() if isinstance(r, Mapping) and r.get("top_edges")]
    if len(names) < 2:
        return ""
    ov = circuit_overlap(results, k, names)
    head = "<th></th>" + "".join(f'<th class="num">{esc(n)}</th>' for n in ov.names)
    rows = []
    for i, a in enumerate(ov.names):
        cells = []
        for j in range(len(ov.names)):
            jac = ov.jaccard[i][j]
            shade = f"background:rgba(37,99,235,{0.08 + 0.5 * jac:.2f})"
            cells.append(f'<td class="num" style="{shade}" data-shared="{ov.shared[i][j]}">'
                         f"{jac:.2f}<br><small>{ov.shared[i][j]} shared</small></td>")
        rows.append(f'<tr><th scope="row">{esc(a)}</th>{"".join(cells)}</tr>')

    def name(e: tuple[str, int | None]) -> str:
        return e[0] if e[1] is None else f"{e[0]} @{e[1]}"

    common = ", ".join(f"<code>{esc(name(e))}</code>" for e in ov.common) or "none"
    return (f'<section class="card" id="overlap"><h2>Overlap of the circuits</h2>'
            f"<p>Each algorithm's top {ov.k} edges (by |score|). A cell gives the Jaccard "
            "index |A ∩ B| / |A ∪ B| of the two sets (1: the same circuit, 0: no edge in "
            "common) and the number of edges they share.</p>"
            f'<table class="overlap"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}'
            f"</tbody></table><p class=\"note\">In every algorithm's top {ov.k} "
            f"({len(ov.common)}): {common}</p></section>")
