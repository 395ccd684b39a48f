"""matplotlib figures of a results dict, the circuits' overlap, and the report's
explanations (settings, definitions, token text, overlap, legends and log axes)."""

from __future__ import annotations

import html
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgewise import GraphSpec, build_graph
from edgewise.visualize import (
    circuit_graph_figure,
    circuit_overlap,
    faithfulness_figure,
    overlap_figure,
    save_figure,
)
from edgewise.visualize.plots import algorithm_colors
from edgewise.visualize.report import _render_report
from edgewise.visualize.svg import Series, line_chart

LABELS = ["<s>", "Mary", "gave", "John"]


def results(seq_len: int | None = 4) -> dict:
    """A results.json dict of three algorithms on a 2-layer, 4-head graph (real edge
    names), with settings, parameters, prompt counts and token text."""
    graph = build_graph(GraphSpec(n_layers=2, n_heads=4, n_kv_heads=4), seq_len=seq_len)
    edges = [(e.name, e.seq_idx) for e in graph.edges]
    rng = np.random.default_rng(0)
    n = graph.n_edges
    sizes = [0, 1, 3, 10, 30, 100, n]
    algos = {}
    for k, algo in enumerate(("eap", "ig", "acdc")):
        pick = rng.choice(len(edges), size=12, replace=False)
        scores = sorted(rng.normal(size=12), key=lambda s: -abs(s))
        if algo == "acdc":
            scores[0] = math.inf
        faith = [[s, 1 - math.exp(-s / (5 + 10 * k))] for s in sizes]
        faith[2][1] = math.nan  # a point that cannot be drawn
        algos[algo] = {
            "algorithm": algo, "metric": "logit_diff", "seconds": 1.0 + k,
            "measurements": [[s, 2 * f] for s, f in faith], "faithfulness": faith,
            "cpr": 0.8, "cmd": 0.2, "parameters": {"mask_val": 0.0, "steps": 10 + k},
            "top_edges": [{"edge": edges[i][0], "seq_idx": edges[i][1], "score": float(s)}
                          for i, s in zip(pick, scores)],
        }
    return {"model": "toy-ioi", "task": "toy_ioi", "n_edges": n, "seq_len": seq_len,
            "seq_labels": LABELS if seq_len else None, "n_prompts": {"train": 24, "test": 16},
            "settings": {"model": "toy-ioi", "model_kind": "TransformerBridge", "batch_size": 8,
                         "choices": {"ablation_scope": "edges", "tau": [0.1, 0.2]}},
            "algorithms": algos}


# --------------------------------------------------------------------------- figures


@pytest.mark.parametrize("curve", ["faithfulness", "measurements"])
def test_faithfulness_figure_draws_each_curves_recorded_points(curve):
    r = results()
    fig = faithfulness_figure(r, curve=curve)
    ax = fig.axes[0]
    lines = {ln.get_gid(): ln for ln in ax.lines if (ln.get_gid() or "").startswith("curve:")}
    assert set(lines) == {f"curve:{a}" for a in r["algorithms"]}
    colors = algorithm_colors(r)
    for algo, rec in r["algorithms"].items():
        want = sorted((s, v) for s, v in rec[curve] if math.isfinite(v))
        line = lines[f"curve:{algo}"]
        np.testing.assert_array_equal(line.get_xydata(), np.array(want))
        assert line.get_color() == colors[algo]
    assert ax.get_xscale() == "symlog"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(r["algorithms"])


def test_faithfulness_figure_band_and_choices():
    r = results()
    r["algorithms"]["eap"]["bootstrap"] = {
        "level": 0.9, "n_resamples": 50,
        "faithfulness": [[s, f - 0.1, f + 0.1] for s, f in r["algorithms"]["eap"]["faithfulness"]
                         if math.isfinite(f)]}  # fmt: skip
    fig = faithfulness_figure(r, algorithms=["eap"], log_x=False)
    ax = fig.axes[0]
    assert ax.get_xscale() == "linear"
    assert len(ax.collections) == 1  # the band
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].max() == pytest.approx(1 - math.exp(-r["n_edges"] / 5) + 0.1)
    with pytest.raises(ValueError, match="no algorithm 'sp' in these results; they have 'eap'"):
        faithfulness_figure(r, algorithms=["sp"])
    with pytest.raises(ValueError, match="curve must be 'faithfulness' or 'measurements'"):
        faithfulness_figure(r, curve="roc")
    with pytest.raises(ValueError, match="results must be a results.json dict"):
        faithfulness_figure({"model": "m"})


@pytest.mark.parametrize("seq_len", [4, None])
@pytest.mark.parametrize("k", [None, 1, 5])
def test_circuit_graph_figure_has_one_patch_per_edge_and_one_box_per_node(seq_len, k):
    from matplotlib.patches import FancyBboxPatch

    r = results(seq_len)
    top = r["algorithms"]["ig"]["top_edges"][:k]
    fig = circuit_graph_figure(r, "ig", k=k)
    ax = fig.axes[0]
    gids = [p.get_gid() for p in ax.patches if (p.get_gid() or "").startswith("edge:")]
    assert sorted(gids) == sorted(f"edge:{d['edge']}@{d['seq_idx']}" for d in top)
    # nodes, computed independently: each end of each edge without its .Q/.K/.V, at its position
    nodes = {(re.sub(r"\.[QKV]$", "", end), d["seq_idx"])
             for d in top for end in d["edge"].split("->")}
    boxes = [p for p in ax.patches if isinstance(p, FancyBboxPatch)]
    assert len(boxes) == len(nodes)
    texts = {t.get_text() for t in ax.texts}
    assert {name for name, _ in nodes} <= texts
    if seq_len:  # position columns are headed by their token text
        for pos in {d["seq_idx"] for d in top}:
            assert f"{pos}: {LABELS[pos]}" in texts
    assert fig.texts[0].get_text() == f"ig: top {len(top)} edges"


def test_circuit_graph_figure_refuses_bad_arguments():
    r = results()
    with pytest.raises(ValueError, match="no algorithm 'sp'"):
        circuit_graph_figure(r, "sp")
    with pytest.raises(ValueError, match="k must be a whole number of edges >= 1, got 0"):
        circuit_graph_figure(r, "eap", k=0)


edge_keys = st.tuples(st.sampled_from(["A0.0->A1.0.Q", "A0.1->MLP 1", "MLP 0->Resid End",
                                       "Resid Start->A0.1.V", "A1.2->Resid End"]),
                      st.one_of(st.none(), st.integers(0, 3)))  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(tops=st.lists(st.lists(edge_keys, unique=True, max_size=8), min_size=2, max_size=4),
       k=st.one_of(st.none(), st.integers(1, 9)))
def test_circuit_overlap_equals_set_arithmetic(tops, k):
    r = {"algorithms": {f"a{i}": {"top_edges": [{"edge": e, "seq_idx": p, "score": 1.0}
                                                for e, p in top]}
                        for i, top in enumerate(tops)}}  # fmt: skip
    ov = circuit_overlap(r, k)
    kk = min(len(t) for t in tops) if k is None else k
    sets = [set(t[:kk]) for t in tops]
    assert ov.k == kk and ov.sizes == [len(s) for s in sets]
    for i, a in enumerate(sets):
        for j, b in enumerate(sets):
            assert ov.shared[i][j] == len(a & b)
            assert ov.jaccard[i][j] == (len(a & b) / len(a | b) if a | b else 1.0)
    assert set(ov.common) == set.intersection(*sets)
    assert ov.common == [e for e in tops[0][:kk] if e in set.intersection(*sets)]


def test_overlap_figure_shows_the_jaccard_matrix():
    r = results()
    fig = overlap_figure(r, k=12)
    ov = circuit_overlap(r, 12)
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), np.array(ov.jaccard))
    cells = [t.get_text() for t in fig.axes[0].texts]
    assert cells[1] == f"{ov.jaccard[0][1]:.2f}\n{ov.shared[0][1]} shared"
    with pytest.raises(ValueError, match="k must be a whole number of edges >= 1, got -1"):
        circuit_overlap(r, -1)


def test_save_figure_writes_png_svg_pdf_and_refuses_other_formats(tmp_path):
    fig = faithfulness_figure(results())
    assert save_figure(fig, tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = save_figure(fig, tmp_path / "f.svg").read_text()
    assert "<svg" in svg and "eap" in svg
    assert save_figure(fig, tmp_path / "f.out", format="pdf").read_bytes()[:5] == b"%PDF-"
    with pytest.raises(ValueError, match=r"cannot save a figure as 'jpg' \(.*f.jpg\): use a "
                                         r"\.png, \.svg or \.pdf name"):  # fmt: skip
        save_figure(fig, tmp_path / "f.jpg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.out", "f.png", "f.svg"]


# --------------------------------------------------------------------------- the report


def text_of(page: str) -> str:
    """The page's visible text: tags, scripts and styles removed, entities decoded."""
    page = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))


def test_report_shows_settings_ablation_prompts_and_every_parameter():
    r = results()
    page = text_of(_render_report(r))
    assert "prompts 24 to score, 16 to evaluate" in page
    assert "24 prompt pairs to score edges" in page and "16 held-out pairs" in page
    assert "ablation resample (interchange) ablation" in page
    # every setting, also ones the report does not know, under its dotted key
    for key, value in (("batch_size", "8"), ("model_kind", "TransformerBridge"),
                       ("choices.ablation_scope", "edges"), ("choices.tau", "[0.1, 0.2]")):
        assert f"{key} {value}" in page
    for algo, rec in r["algorithms"].items():
        for key, value in rec["parameters"].items():
            assert f"{key} {value:g}" in page, (algo, key)


def test_report_names_optimal_ablation_when_an_algorithm_used_it():
    r = results()
    r["algorithms"]["eap"]["parameters"]["ablation"] = {"steps": 1000, "lr": 0.01}
    page = text_of(_render_report(r))
    assert "optimal ablation (MIB)" in page
    assert "circuits are evaluated with resample ablation" in page
    assert "ablation.steps 1000" in page


def test_report_defines_its_measures_on_the_page_and_acdcs_infinity():
    r = results()
    page = text_of(_render_report(r))
    for term in ("Faithfulness", "CPR ↑ circuit performance ratio: the area under the "
                 "faithfulness curve", "CMD ↓ circuit-model difference: the area under "
                 "|1 − faithfulness|", "AUC ↑ area under the ROC curve"):
        assert term in page
    assert "∞ (ACDC)" in page and "kept at every τ tried" in page
    r["algorithms"]["acdc"]["top_edges"][0]["score"] = 5.0
    assert "∞ (ACDC)" not in text_of(_render_report(r))


def test_report_writes_token_text_for_positions():
    r = results()
    page = _render_report(r)
    for d in r["algorithms"]["eap"]["top_edges"]:
        assert f"{d['seq_idx']} “{LABELS[d['seq_idx']]}”" in text_of(page)
    for p in {d["seq_idx"] for d in r["algorithms"]["eap"]["top_edges"]}:
        assert f'text-anchor="middle">{html.escape(f"{p}: {LABELS[p]}")}</text>' in page
    r.pop("seq_labels")
    assert "“" not in text_of(_render_report(r))


def test_report_overlap_table_matches_circuit_overlap():
    r = results()
    page = _render_report(r)
    ov = circuit_overlap(r)
    section = page[page.index('id="overlap"'):]
    cells = re.findall(r'data-shared="(\d+)">([0-9.]+)<br>', section)
    n = len(ov.names)
    assert [int(s) for s, _ in cells] == [ov.shared[i][j] for i in range(n) for j in range(n)]
    assert [float(j) for _, j in cells] == [round(ov.jaccard[i][j], 2)
                                            for i in range(n) for j in range(n)]
    assert f"Each algorithm's top {ov.k} edges" in text_of(section)
    one = {**r, "algorithms": {"eap": r["algorithms"]["eap"]}}
    assert 'id="overlap"' not in _render_report(one)


# --------------------------------------------------------------------------- charts


def test_chart_legend_is_never_clipped():
    long = "eap-ig-inputs / neuron"
    series = [Series(f"{long} {i}", "#000", [(1.0, 0.1), (10.0, 0.5)]) for i in range(5)]
    svg = line_chart(series, "size", "faithfulness", log_x=True)
    width, height = map(float, re.search(r'viewBox="0 0 (\d+) (\d+)"', svg).groups())
    for m in re.finditer(r'<text class="legend" x="([0-9.]+)" y="([0-9.]+)">([^<]+)</text>', svg):
        x, y, text = float(m[1]), float(m[2]), m[3]
        assert text.startswith(long)
        assert x + 7.2 * len(text) <= width and y <= height  # the whole text fits


def test_log_axis_has_zero_tick_only_for_data_at_zero_and_true_decades():
    def ticks(svg: str) -> dict[str, float]:
        return {m[2]: float(m[1]) for m in re.finditer(
            r'<text class="tick" x="([0-9.]+)" y="[0-9.]+" text-anchor="middle">([^<]+)</text>',
            svg)}  # fmt: skip

    mib = line_chart([Series("a", "#000", [(0.1, 0.0), (1.0, 0.5), (100.0, 1.0)])], "%", "f",
                     log_x=True)  # fmt: skip
    t = ticks(mib)
    assert "0" not in t and list(t) == ["0.1", "1", "10", "100"]
    steps = np.diff([t["0.1"], t["1"], t["10"], t["100"]])
    np.testing.assert_allclose(steps, steps[0], atol=0.11)  # one decade each
    edges = line_chart([Series("a", "#000", [(0.0, 0.0), (1.0, 0.3), (1000.0, 1.0)])], "n", "f",
                       log_x=True)  # fmt: skip
    t = ticks(edges)
    assert list(t) == ["0", "1", "10", "100", "1000"]
    np.testing.assert_allclose(np.diff(list(t.values())), t["1"] - t["0"], atol=0.11)
