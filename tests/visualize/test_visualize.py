"""The HTML report, the PNG circuit drawings, and a real headless-Chromium check."""

from __future__ import annotations

import math
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from edgewise import GraphSpec, build_graph, patchable_model
from edgewise.models import random_model
from edgewise.visualize import draw_circuit_png, draw_seq_graph, write_report

CHROMIUM = "/usr/bin/chromium"


def make_results(seq_len: int | None = 4) -> dict:
    """A results.json dict like ``edgewise discover`` writes, for a 2-layer, 4-head model
    (edge names come from the real graph)."""
    graph = build_graph(GraphSpec(n_layers=2, n_heads=4, n_kv_heads=4), seq_len=seq_len)
    names = {(e.name, e.seq_idx) for e in graph.edges}
    last = None if seq_len is None else seq_len - 1
    prev = None if seq_len is None else seq_len - 2
    picks = {
        "eap": [("A1.2->Resid End", last, 2.31), ("A0.1->A1.2.V", last, 1.12),
                ("A0.1->A1.2.K", prev, -0.84), ("Resid Start->A0.1.Q", prev, 0.57),
                ("MLP 0->A1.2.Q", last, -0.33), ("Resid Start->MLP 0", last, 0.21),
                ("A1.3->Resid End", last, -0.12), ("Resid Start->Resid End", last, 0.05)],
        "acdc": [("A1.2->Resid End", last, math.inf), ("A0.1->A1.2.V", last, 3.0),
                 ("Resid Start->A0.1.V", prev, 2.0), ("MLP 1->Resid End", last, -1.0),
                 ("A0.3->MLP 1", last, 0.5)],
    }
    n = graph.n_edges
    sizes = sorted({0, 1, 2, 5, 10, 20, 50, 100, 200, 500, n})
    algorithms = {}
    for k, (algo, edges) in enumerate(picks.items()):
        for name, pos, _ in edges:
            assert (name, pos) in names, (name, pos)
        faith = [[s, 1 - math.exp(-s / (15 + 20 * k))] for s in sizes]
        fpr = [0.0, 0.05, 0.1, 0.3, 0.6, 1.0]
        tpr = [0.0, 0.5 - 0.1 * k, 0.7, 0.85, 0.95, 1.0]
        algorithms[algo] = {
            "algorithm": algo, "metric": "logit_diff", "seconds": 1.7 + 10 * k,
            "measurements": [[s, -0.4 + 3.2 * f] for s, f in faith],
            "faithfulness": faith, "cpr": 0.81 - 0.1 * k, "cmd": 0.2 + 0.1 * k,
            "auc": 0.87 - 0.07 * k, "roc": {"fpr": fpr, "tpr": tpr},
            "official_edges": [["A1.2->Resid End", last], ["A0.1->A1.2.V", last]],
            "top_edges": [{"edge": e, "seq_idx": p, "score": s} for e, p, s in edges],
        }
    return {"model": "toy-ioi", "task": "toy_ioi", "n_edges": n, "seq_len": seq_len,
            "algorithms": algorithms}


@pytest.mark.parametrize("seq_len", [4, None])
def test_report_is_self_contained_with_a_graph_per_algorithm(tmp_path, seq_len):
    results = make_results(seq_len)
    path = write_report(results, tmp_path / "report.html")
    umask = os.umask(0)
    os.umask(umask)
    assert path == tmp_path / "report.html" and path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temp file left
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"""(src|href)\s*=\s*["']?[^"'#\s>]""", text), "external resource"
    assert "<link" not in text and "@import" not in text and "url(" not in text
    assert text.count('<svg class="circuit"') == len(results["algorithms"])
    for algo, r in results["algorithms"].items():
        assert f'data-algorithm="{algo}"' in text
        for d in r["top_edges"]:
            assert d["edge"].replace(">", "&gt;") in text
    if seq_len is not None:
        assert "position 3" in text and "@2" in text
    for field in ("toy-ioi", "toy_ioi", str(results["n_edges"]), "0.810", "0.300", "0.870",
                  "AUC 0.800", "11.7 s", "Faithfulness vs circuit size", "ROC"):
        assert field in text, field


def test_report_survives_sparse_and_odd_results(tmp_path):
    results = {"model": "m", "task": "t", "n_edges": 10, "seq_len": None, "algorithms": {
        "bare": {"algorithm": "bare", "metric": "mse", "seconds": None,
                 "measurements": [[0, -2.0], [10, -2.0]], "faithfulness_error": "undefined",
                 "top_edges": [{"edge": "A0.0->Resid End", "seq_idx": None, "score": math.nan},
                               {"edge": "Resid Start->A0.0", "seq_idx": None, "score": 0.0}]},
        "empty": {"algorithm": "empty", "metric": "mse", "top_edges": []}}}
    text = write_report(results, tmp_path / "sub" / "r.html").read_text()
    assert text.count('<svg class="circuit"') == 1 and "No edges to draw" in text
    assert "no official circuit" in text
    assert "NaN" not in text.split('id="results-data">')[1].split("</script>")[0]
    assert "No algorithms" in write_report({"model": "m", "task": "t", "algorithms": {}},
                                           tmp_path / "e.html").read_text()


def load_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB")).astype(np.int16)


def near(img: np.ndarray, color: tuple[int, int, int], tol: int = 60) -> int:
    return int((np.abs(img - np.array(color)).sum(-1) < tol).sum())


def blueish(img: np.ndarray) -> int:
    """Pixels of positive edges (blue, possibly translucent over white)."""
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    return int(((b - r > 70) & (b - g > 40)).sum())


def reddish(img: np.ndarray) -> int:
    """Pixels of negative edges (red; not the amber of head nodes, where g >> b)."""
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    return int(((r - g > 70) & (np.abs(g - b) < 30)).sum())


def test_draw_circuit_png_is_a_nonuniform_image(tmp_path):
    edges = make_results()["algorithms"]["eap"]["top_edges"]
    path = draw_circuit_png(edges, tmp_path / "circuit.png", title="eap")
    img = load_png(path)
    assert img.shape[0] > 200 and img.shape[1] > 300
    assert img.std() > 10
    assert (img.sum(-1) < 3 * 240).mean() > 0.02  # a fair share of non-white pixels
    assert blueish(img) > 200 and reddish(img) > 100  # both edge colours


@pytest.fixture(scope="module")
def pm():
    return patchable_model(random_model(n_layers=2, d_vocab=20))


def drawn_edges(fig) -> list[str]:
    return [p.get_gid() for ax in fig.axes for p in ax.patches
            if (p.get_gid() or "").startswith("edge:")]


def test_draw_seq_graph_draws_the_selected_edges(pm, tmp_path):
    from matplotlib.figure import Figure

    gen = torch.Generator().manual_seed(0)
    scores = {n: torch.randn(m.mask_shape, generator=gen) for n, m in pm.dest_modules.items()}
    flat = torch.cat([s.flatten() for s in scores.values()])
    fig = draw_seq_graph(pm, scores, top_k=7)
    assert isinstance(fig, Figure) and len(drawn_edges(fig)) == 7
    biggest = max(pm.edges, key=lambda e: abs(float(scores[e.dest.module_name][e.patch_idx])))
    assert f"edge:{biggest.name}@None" in drawn_edges(fig)
    n_above = int((flat.abs() >= 1.5).sum())
    assert len(drawn_edges(draw_seq_graph(pm, scores, threshold=1.5, top_k=None))) == n_above
    assert len(drawn_edges(draw_seq_graph(pm, scores, threshold=1.5, top_k=3))) == 3
    # ACDC's circuit scores: 1 in the circuit, 0 out; zeros are never drawn
    circuit = {n: torch.zeros(m.mask_shape) for n, m in pm.dest_modules.items()}
    chosen = [pm.edges[i] for i in (0, 5, 40, len(pm.edges) - 1)]
    for e in chosen:
        circuit[e.dest.module_name][e.patch_idx] = 1.0
    fig = draw_seq_graph(pm, circuit, path=tmp_path / "acdc.png")
    assert sorted(drawn_edges(fig)) == sorted(f"edge:{e.name}@None" for e in chosen)
    assert load_png(tmp_path / "acdc.png").std() > 5
    empty = {n: torch.zeros(m.mask_shape) for n, m in pm.dest_modules.items()}
    assert drawn_edges(draw_seq_graph(pm, empty)) == []


def test_draw_seq_graph_with_token_positions():
    pm_seq = patchable_model(random_model(n_layers=2, d_vocab=20), seq_len=3)
    scores = {n: torch.zeros(m.mask_shape) for n, m in pm_seq.dest_modules.items()}
    a, b = pm_seq.edge("A0.1->A1.2.Q", 1), pm_seq.edge("MLP 1->Resid End", 2)
    scores[a.dest.module_name][a.patch_idx] = -2.0
    scores[b.dest.module_name][b.patch_idx] = 0.5
    fig = draw_seq_graph(pm_seq, scores)
    assert sorted(drawn_edges(fig)) == ["edge:A0.1->A1.2.Q@1", "edge:MLP 1->Resid End@2"]
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"position 1", "position 2", "Q"} <= texts


def chromium(tmp_path: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / ('profile-' + name)}", "--hide-scrollbars",
             "--force-device-scale-factor=1", "--window-size=1280,1800",
             "--enable-logging=stderr", "--v=0"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(not Path(CHROMIUM).exists(),
                    reason=f"{CHROMIUM} is missing: install Chromium to run the browser test")
def test_report_renders_in_headless_chromium(tmp_path):
    report = write_report(make_results(), tmp_path / "report.html")
    url = report.resolve().as_uri() + "#acdc"  # the URL's fragment picks the algorithm tab

    dom = chromium(tmp_path, "dom", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console  # nothing logged: no uncaught errors, no console.error
    head = dom.stdout[: dom.stdout.index("<head")]
    assert 'data-ready="1"' in head, "the page's script did not run to the end"
    assert "data-js-errors" not in head, head
    box = re.search(r'data-graph-box="(\d+),(\d+),(\d+),(\d+)"', head)
    assert box, head
    x, y, w, h = map(int, box.groups())
    assert re.search(r'<section class="panel" id="panel-0"[^>]* hidden', dom.stdout)
    assert not re.search(r'<section class="panel" id="panel-1"[^>]* hidden', dom.stdout)
    assert w > 300 and h > 300

    shot = tmp_path / "shot.png"
    run = chromium(tmp_path, "shot", f"--screenshot={shot}", url)
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    img = load_png(shot)
    assert img.shape[:2] == (1800, 1280) and img.std() > 10
    assert y + h <= img.shape[0], "the graph is below the fold"
    graph = img[y : y + h, x : x + w]
    assert (graph.sum(-1) < 3 * 235).mean() > 0.03  # not blank
    assert blueish(graph) > 200 and reddish(graph) > 100  # edges of both signs drawn
    assert near(graph, (0xFE, 0xF3, 0xC7), 12) > 500  # attention-head nodes drawn


def test_draw_seq_graph_takes_auto_circuits_keywords(tmp_path):
    """score_threshold draws every edge at least that important, seq_labels name the
    position columns, file_path saves, and no scores means the model's patch masks."""
    pm_seq = patchable_model(random_model(n_layers=2, d_vocab=20), seq_len=3)
    gen = torch.Generator().manual_seed(1)
    scores = {n: torch.randn(m.mask_shape, generator=gen) for n, m in pm_seq.dest_modules.items()}
    n_above = int(sum((s.abs() >= 1.0).sum() for s in scores.values()))
    fig = draw_seq_graph(pm_seq, scores, score_threshold=1.0, seq_labels=["<bos>", "Mary", "to"],
                         file_path=tmp_path / "g.png", display_ipython=False)
    assert len(drawn_edges(fig)) == n_above > 50  # no top-k limit
    assert {"1: Mary", "2: to"} <= {t.get_text() for t in fig.axes[0].texts}
    assert load_png(tmp_path / "g.png").std() > 5
    e = pm_seq.edges[7]
    pm_seq.patch_masks[e.dest.module_name][e.patch_idx] = 1.0
    assert drawn_edges(draw_seq_graph(pm_seq)) == [f"edge:{e.name}@{e.seq_idx}"]
