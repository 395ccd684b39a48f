"""The tutorial notebook runs from top to bottom on the shipped toy model, offline.

Its code cells are executed in order in one namespace, as a kernel would (no Jupyter
needed): a cell's last expression is its displayed value. Cells tagged ``needs-network``
(a model from the hub) are compiled, not run."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path
from typing import Any

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "tutorial.ipynb"
SKIP_TAG = "needs-network"


def code_cells(nb: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """``(source, tags)`` of each code cell, in order."""
    return [("".join(c["source"]), list(c.get("metadata", {}).get("tags", [])))
            for c in nb["cells"] if c["cell_type"] == "code"]  # fmt: skip


def run_cell(source: str, namespace: dict[str, Any], name: str) -> Any:
    """Run a cell; return the value of its last line when that is an expression (what a
    notebook displays), else ``None``."""
    tree = ast.parse(source, name)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, name, "exec"), namespace)
    if last is None:
        return None
    return eval(compile(ast.Expression(last.value), name, "eval"), namespace)


def test_notebook_is_a_valid_v4_notebook_without_outputs():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    assert nb["nbformat"] == 4 and nb["metadata"]["kernelspec"]["language"] == "python"
    ids = [c["id"] for c in nb["cells"]]
    assert len(set(ids)) == len(ids)
    for c in nb["cells"]:
        assert c["cell_type"] in ("markdown", "code")
        if c["cell_type"] == "code":
            assert c["outputs"] == [] and c["execution_count"] is None  # stored clean
    # the offline-only cell is the hub one, and it says why it does not run here
    skipped = [s for s, tags in code_cells(nb) if SKIP_TAG in tags]
    assert len(skipped) == 1 and 'boot_transformers("gpt2")' in skipped[0]


def test_tutorial_runs_offline_on_the_toy_model(monkeypatch, tmp_path):
    from matplotlib.figure import Figure

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook writes under tempfile's dir
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    namespace: dict[str, Any] = {"__name__": "__main__"}
    shown = []
    for i, (source, tags) in enumerate(code_cells(nb)):
        name = f"{NOTEBOOK.name}[code cell {i}]"
        if SKIP_TAG in tags:
            compile(source, name, "exec")
            continue
        shown.append(run_cell(source, namespace, name))
    figures = [v for v in shown if isinstance(v, Figure)]
    assert len(figures) == 3  # faithfulness curves, the circuit, the overlap
    results, work = namespace["results"], namespace["work"]
    assert work.parent == tmp_path
    assert set(results["algorithms"]) == {"eap", "eap-ig", "acdc"}
    for r in results["algorithms"].values():
        assert math.isfinite(r["cpr"]) and math.isfinite(r["cmd"])
    # what the notebook saved
    assert (work / "faithfulness.png").read_bytes()[:4] == b"\x89PNG"
    assert "<svg" in (work / "faithfulness.svg").read_text()
    assert "Overlap of the circuits" in (work / "report.html").read_text()
    mib = json.loads((work / "mib" / "ioi_gpt2" / "importances.json").read_text())
    assert len(mib["edges"]) == namespace["pm"].n_edges
    # the dataset file it wrote loads back with its labels; its first figure is the curves
    assert namespace["train"].seq_labels[1:] == namespace["labels"]
    curves = figures[0].axes[0]
    assert {ln.get_gid() for ln in curves.lines} >= {"curve:eap", "curve:eap-ig", "curve:acdc"}


@pytest.mark.parametrize(("source", "shown"), [("1 + 1", 2), ("x = 2\nx * 3", 6),
                                               ("x = 2", None), ("", None)])
def test_run_cell_returns_the_displayed_value(source, shown):
    namespace: dict[str, Any] = {}
    assert run_cell(source, namespace, "cell") == shown
    assert namespace.get("x", 2) == 2
