"""MIB submission files: export -> import round trips, and each rule broken gives its
named error."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from edgewise import patchable_model
from edgewise.io.files import mib_edge_name
from edgewise.mib.evaluate import mib_circuit
from edgewise.mib.submission import (
    MIB_MODEL_SHAPES,
    SUBMISSION_PERCENTAGES,
    CircuitSizeError,
    EdgeSetError,
    LayoutError,
    NonFiniteScoreError,
    SchemaError,
    circuit_file_name,
    export_circuits,
    export_importances,
    folder_name,
    import_submission,
    mib_graph_names,
    validate_file,
    validate_submission,
)
from edgewise.models import random_model

# a 12-layer model would be slow to build; 2 layers x 4 heads, validated without the
# check of cfg against the named MIB model's shape (check_shapes=False)


@pytest.fixture(scope="module")
def pm():
    return patchable_model(random_model(n_layers=2, n_heads=4, d_vocab=20))


def scores_for(pm, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(m.mask_shape, generator=gen) for n, m in pm.dest_modules.items()}


def test_graph_names_match_mibs_edge_counts_and_edgewise_names(pm):
    # the leaderboard evaluator's EDGE_COUNTS
    counts = {
        "gpt2": 32491,
        "qwen2.5": 179749,
        "gemma2": 74218,
        "llama3": 1592881,
        "interpbench": 1108,
    }
    for model, n in counts.items():
        assert len(mib_graph_names(*MIB_MODEL_SHAPES[model])[1]) == n
    nodes, names = mib_graph_names(2, 4)
    assert set(names) == {mib_edge_name(e) for e in pm.edges} and len(names) == pm.n_edges
    assert nodes[0] == "input" and nodes[-1] == "logits" and "m1" in nodes
    assert folder_name("arc_easy", "llama3") == "arc-easy_llama3"
    with pytest.raises(LayoutError, match="not a task/model pair"):
        folder_name("ioi", "gpt3")


@pytest.fixture(scope="module")
def submission(pm, tmp_path_factory):
    """ioi_gpt2 and mcqa_qwen2.5 with importances, ioi_qwen2.5 with 9 circuits."""
    root = tmp_path_factory.mktemp("sub")
    export_importances(root, pm, scores_for(pm, 0), "ioi", "gpt2")
    export_importances(root, pm, scores_for(pm, 1), "mcqa", "qwen2.5")
    export_circuits(root, pm, scores_for(pm, 2), "ioi", "qwen2.5")
    return root


def copy(submission, tmp_path):
    return shutil.copytree(submission, tmp_path / "copy")


def test_round_trip_importances_and_circuits(pm, submission):
    back = import_submission(submission / "ioi_gpt2", pm)
    for n, t in scores_for(pm, 0).items():
        torch.testing.assert_close(back[n], t)
    circuits = import_submission(submission / "ioi_qwen2.5", pm)
    want = [
        mib_circuit(pm, scores_for(pm, 2), int(p * pm.n_edges), True)
        for p in SUBMISSION_PERCENTAGES
    ]
    assert circuits == sorted(want, key=len)
    assert sorted(p.name for p in (submission / "ioi_qwen2.5").iterdir()) == sorted(
        circuit_file_name(p) for p in SUBMISSION_PERCENTAGES
    )
    assert validate_submission(submission, check_shapes=False) == {
        "ioi_gpt2": "importances",
        "ioi_qwen2.5": "circuits",
        "mcqa_qwen2.5": "importances",
    }


def test_abs_folders_for_both_rankings(pm, tmp_path):
    paths = export_circuits(tmp_path, pm, scores_for(pm), "ioi", "gpt2", absolute=None)
    assert len(paths) == 18
    signed = import_submission(tmp_path / "abs-False" / "ioi_gpt2", pm)
    assert signed[-1] == mib_circuit(pm, scores_for(pm), int(0.5 * pm.n_edges), False)
    export_importances(tmp_path / "abs-True", pm, scores_for(pm), "mcqa", "llama3")
    assert validate_submission(tmp_path, check_shapes=False) == {
        "abs-False/ioi_gpt2": "circuits",
        "abs-True/ioi_gpt2": "circuits",
        "abs-True/mcqa_llama3": "importances",
    }


def edit(path, change):
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def test_layout_errors(pm, submission, tmp_path):
    sub = copy(submission, tmp_path)
    with pytest.raises(LayoutError, match="not a folder"):
        validate_submission(sub / "nope")
    (sub / "ioi_gpt3").mkdir()
    with pytest.raises(LayoutError, match="'ioi_gpt3' is not <task>_<model>"):
        validate_submission(sub, check_shapes=False)
    (sub / "ioi_gpt3").rmdir()
    (sub / "notes.txt").write_text("hi")
    with pytest.raises(LayoutError, match="is a file"):
        validate_submission(sub, check_shapes=False)
    (sub / "notes.txt").unlink()
    (sub / "ioi_gpt2" / "readme.md").write_text("hi")
    with pytest.raises(LayoutError, match="only .json or .pt"):
        validate_submission(sub, check_shapes=False)
    (sub / "ioi_gpt2" / "readme.md").unlink()
    (sub / "ioi_qwen2.5" / circuit_file_name(0.5)).unlink()
    with pytest.raises(LayoutError, match="8 graph files: MIB expects 1"):
        validate_submission(sub, check_shapes=False)
    shutil.rmtree(sub / "ioi_qwen2.5")
    shutil.rmtree(sub / "mcqa_qwen2.5")
    with pytest.raises(LayoutError, match="at least 2 tasks and 2 models"):
        validate_submission(sub, check_shapes=False)
    # one task/model folder alone is checked without the counts
    assert validate_submission(sub / "ioi_gpt2", check_shapes=False) == {"ioi_gpt2": "importances"}
    with pytest.raises(LayoutError, match="never both"):
        export_circuits(sub, pm, scores_for(pm), "ioi", "gpt2")


def test_schema_errors(submission, tmp_path):
    sub = copy(submission, tmp_path)
    f = sub / "ioi_gpt2" / "importances.json"
    # cfg of another model than the folder names
    with pytest.raises(SchemaError, match="gpt2 has \\(12, 12, False\\)"):
        validate_submission(sub)
    edit(f, lambda d: d.pop("nodes"))
    with pytest.raises(SchemaError, match="lacks the keys"):
        validate_file(f)
    f.write_text('{"cfg": ')
    with pytest.raises(SchemaError, match="not valid JSON"):
        validate_file(f)
    shutil.copy(submission / "ioi_gpt2" / "importances.json", f)
    edit(f, lambda d: d["cfg"].update(n_heads="4"))
    with pytest.raises(SchemaError, match="n_heads"):
        validate_file(f)
    shutil.copy(submission / "ioi_gpt2" / "importances.json", f)
    edit(f, lambda d: d["edges"]["input->m0"].pop("in_graph"))
    with pytest.raises(SchemaError, match="'input->m0' must be"):
        validate_file(f)
    shutil.copy(submission / "ioi_gpt2" / "importances.json", f)
    edit(f, lambda d: d["edges"]["input->m0"].update(in_graph=1))
    with pytest.raises(SchemaError, match="not true or false"):
        validate_file(f)
    shutil.copy(submission / "ioi_gpt2" / "importances.json", f)
    edit(f, lambda d: d["nodes"].update({"m0": {}}))
    with pytest.raises(SchemaError, match="node 'm0' must be"):
        validate_file(f)
    shutil.copy(submission / "ioi_gpt2" / "importances.json", f)
    edit(f, lambda d: d["nodes"].update({"m7": {"in_graph": False}}))
    with pytest.raises(SchemaError, match="nodes \\['m7'\\] are not in"):
        validate_file(f)
    shutil.copy(submission / "ioi_gpt2" / "importances.json", f)
    edit(f, lambda d: d["edges"]["input->m0"].update(score="0.5"))
    with pytest.raises(SchemaError, match="not a number"):
        validate_file(f)


def test_edge_set_and_score_errors(submission, tmp_path):
    sub = copy(submission, tmp_path)
    f = sub / "ioi_gpt2" / "importances.json"
    edit(f, lambda d: d["edges"].pop("a0.h1->m0"))
    with pytest.raises(
        EdgeSetError, match="1 of the graph's 110 edges are missing \\(e.g. \\['a0.h1->m0'\\]\\)"
    ):
        validate_file(f)
    shutil.copy(submission / "ioi_gpt2" / "importances.json", f)
    edit(f, lambda d: d["edges"].update({"m1->m0": {"score": 1.0, "in_graph": False}}))
    with pytest.raises(EdgeSetError, match="not in it \\(e.g. \\['m1->m0'\\]\\)"):
        validate_file(f)
    for bad in ("NaN", "Infinity"):
        shutil.copy(submission / "ioi_gpt2" / "importances.json", f)
        f.write_text(
            f.read_text().replace(
                '"a0.h1->m0": {"score": ', f'"a0.h1->m0": {{"score": {bad}, "x": '
            )
        )
        with pytest.raises(NonFiniteScoreError, match="'a0.h1->m0' has score"):
            validate_file(f)


def test_circuit_size_error(pm, submission, tmp_path):
    sub = copy(submission, tmp_path)
    # the 2% circuit (at most 2 of 110 edges) gets a third edge... and more
    f = sub / "ioi_qwen2.5" / circuit_file_name(0.02)

    def grow(d):
        for name in list(d["edges"])[:30]:
            d["edges"][name]["in_graph"] = True

    edit(f, grow)
    with pytest.raises(CircuitSizeError, match="at most"):
        validate_submission(sub, check_shapes=False)


def test_pt_files_are_validated(pm, tmp_path):
    """EAP-IG's .pt layout: score matrices [n_forward, n_backward]."""
    cfg = {"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": False, "d_model": 16}
    n_fwd, n_bwd = 1 + 2 * 5, 2 * 13 + 1
    d = {
        "cfg": cfg,
        "src_nodes": [],
        "dst_nodes": [],
        "edges_scores": torch.randn(n_fwd, n_bwd),
        "edges_in_graph": torch.zeros(n_fwd, n_bwd, dtype=torch.bool),
        "nodes_in_graph": torch.zeros(n_fwd, dtype=torch.bool),
    }
    torch.save(d, tmp_path / "g.pt")
    doc = validate_file(tmp_path / "g.pt")
    # input (forward 0) -> m0 (backward 12)
    assert doc["edges"]["input->m0"]["score"] == pytest.approx(float(d["edges_scores"][0, 12]))
    d["edges_scores"][0, 12] = float("nan")
    torch.save(d, tmp_path / "g.pt")
    with pytest.raises(NonFiniteScoreError, match="input->m0"):
        validate_file(tmp_path / "g.pt")
    d["edges_scores"] = torch.zeros(3, 3)
    torch.save(d, tmp_path / "g.pt")
    with pytest.raises(SchemaError, match="shape"):
        validate_file(tmp_path / "g.pt")


def test_cli_export_and_validate(tmp_path, capsys):
    from edgewise.cli import main
    from edgewise.io.files import save_mib_json
    from edgewise.mib.evaluate import load_mib_setup

    pm, _ = load_mib_setup("toy-ioi", "toy_ioi", 16)
    scores = scores_for(pm, 5)
    src = save_mib_json(tmp_path / "s.json", pm, scores)
    out = tmp_path / "sub"
    for task, model in (("ioi", "gpt2"), ("mcqa", "qwen2.5")):
        assert (
            main(
                [
                    "mib",
                    "export",
                    str(src),
                    "--task",
                    "toy_ioi",
                    "--mib-task",
                    task,
                    "--mib-model",
                    model,
                    "--kind",
                    "both",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
    back = import_submission(out / "ioi_gpt2", pm)
    for n, t in scores.items():
        torch.testing.assert_close(back[n], t)
    assert len(import_submission(out / "circuits" / "mcqa_qwen2.5", pm)) == 9
    capsys.readouterr()
    # the toy model is not GPT-2's shape: validate names the mismatch
    assert main(["mib", "validate", str(out / "circuits")]) == 2
    assert "gpt2 has (12, 12, False)" in capsys.readouterr().err
    # the whole export folder: the importances and, in circuits/, the circuits
    assert main(["mib", "validate", str(out), "--no-shape-check"]) == 0
    printed = capsys.readouterr().out
    for folder in ("ioi_gpt2: importances", "mcqa_qwen2.5: importances",
                   "circuits/ioi_gpt2: circuits", "circuits/mcqa_qwen2.5: circuits"):  # fmt: skip
        assert folder in printed
