"""``edgewise mib demo``: it runs end to end into a folder; its submission validates and
reads back to the scores it computed; its CPR/CMD are ``mib_evaluate``'s (edges) and a
direct node-ablation computation's (nodes); its intervals are MIB's evaluation rerun on
resampled prompts; the page holds the bands and the table; reruns and foreign folders
leave the user's files alone."""

from __future__ import annotations

import re

import pytest
import torch

from edgewise.cli import main
from edgewise.evaluation.bootstrap import percentile_interval, resample_indices, resampled_loader
from edgewise.evaluation.node_circuits import node_circuit, node_circuit_patch
from edgewise.io.files import read_json
from edgewise.metrics.answers import batch_answer_diffs, last_position
from edgewise.mib.demo import (
    DEMO_MODEL,
    DEMO_TASK,
    REPORT_FILE,
    RESULTS_FILE,
    SUBMISSION_DIR,
    format_summary,
    run_mib_demo,
)
from edgewise.mib.evaluate import MIB_PERCENTAGES, mib_area, mib_circuit, mib_evaluate
from edgewise.mib.intervals import MibMeasurements, mib_bootstrap
from edgewise.mib.submission import (
    SUBMISSION_PERCENTAGES,
    import_submission,
    validate_submission,
)
from edgewise.runtime.ablation import batch_ablation
from edgewise.types import AblationType

N_BOOT = 20


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("mib-demo") / "run"
    return out, run_mib_demo(out, N_BOOT)


def test_writes_its_files_and_marks_the_folder(run):
    out, demo = run
    assert read_json(out / ".edgewise")["task"] == DEMO_TASK
    assert read_json(out / ".edgewise")["model"] == DEMO_MODEL
    assert not (out / ".edgewise-lock").exists()  # released
    top = {p.name for p in out.iterdir()}
    assert top == {".edgewise", RESULTS_FILE, REPORT_FILE, SUBMISSION_DIR}
    assert [(m, iv.level) for m, iv in demo.rows] == [
        ("eap", "edge"), ("eap-ig-inputs", "edge"), ("eap", "node"), ("eap", "neuron"),
        ("eap-ig-inputs", "node"), ("eap-ig-inputs", "neuron"),
        ("eap-ig-activations", "node"), ("eap-ig-activations", "neuron"),
    ]  # fmt: skip
    saved = read_json(out / RESULTS_FILE)
    assert [r["cpr"] for r in saved["rows"]] == [list(iv.cpr) for _, iv in demo.rows]


def test_scores_are_mibs_numbers(run):
    """Every method's scores in MIB's scale (EAP: auto-circuit's sum over batches divided
    by the prompts), with MIB's EAP-IG points and node-level MLP gradient (the functions'
    defaults, pinned in tests/prune_algos)."""
    from edgewise.io.scale import count_prompts
    from edgewise.mib.data import load_mib_task
    from edgewise.mib.demo import _loader
    from edgewise.prune_algos import eap_ig_inputs_prune_scores, mask_gradient_prune_scores
    from edgewise.prune_algos.node_attribution import node_attribution_scores

    _, demo = run
    pm = demo.model
    train = _loader(load_mib_task("ioi", None, pm.wrapped_model.tokenizer, split="train"))
    n = count_prompts(train)
    eap = mask_gradient_prune_scores(pm, train, None, "logit", "avg_diff", mask_val=0.0,
                                     progress=False)  # fmt: skip
    assert all(torch.equal(demo.edge_scores["eap"][k], eap[k] / n) for k in eap)
    ig = eap_ig_inputs_prune_scores(pm, train, progress=False)
    assert all(torch.equal(demo.edge_scores["eap-ig-inputs"][k], ig[k]) for k in ig)
    acts = node_attribution_scores(pm, train, "eap-ig-activations", "node", progress=False)
    got = demo.node_scores[("eap-ig-activations", "node")]
    assert all(torch.equal(got[k], acts[k]) for k in acts)


def test_submission_validates_and_reads_back_to_the_scores(run):
    out, demo = run
    pm = demo.model
    for method, scores in demo.edge_scores.items():
        imp = out / SUBMISSION_DIR / method / "importances"
        circ = out / SUBMISSION_DIR / method / "circuits"
        assert validate_submission(imp, 1, 1, check_shapes=False) == {"ioi_gpt2": "importances"}
        assert validate_submission(circ, 1, 1, check_shapes=False) == {
            "abs-False/ioi_gpt2": "circuits", "abs-True/ioi_gpt2": "circuits",
        }  # fmt: skip
        back = import_submission(imp / "ioi_gpt2", pm)
        assert set(back) == set(scores)
        for name, t in scores.items():
            assert torch.equal(back[name].double(), t.double()), name
        for absolute in (True, False):
            got = import_submission(circ / f"abs-{absolute}" / "ioi_gpt2", pm)
            want = [
                mib_circuit(pm, scores, int(p * pm.n_edges), absolute)
                for p in SUBMISSION_PERCENTAGES
            ]
            assert got == sorted(want, key=len)


def test_edge_cpr_cmd_are_mib_evaluate_and_printed(run):
    _, demo = run
    text = format_summary(demo)
    edge_rows = [(m, iv) for m, iv in demo.rows if iv.level == "edge"]
    for method, iv in edge_rows:
        r = mib_evaluate(demo.model, demo.eval_loader, demo.edge_scores[method])
        assert iv.cpr[0] == pytest.approx(r.cpr, abs=1e-12)
        assert iv.cmd[0] == pytest.approx(r.cmd, abs=1e-12)
        assert iv.curve_cpr == pytest.approx(r.curve_cpr, abs=1e-12)
        assert iv.curve_cmd == pytest.approx(r.curve_cmd, abs=1e-12)
        assert iv.sizes == r.sizes
        line = next(ln for ln in text.splitlines() if ln.split()[:2] == [method, "edge"])
        assert f"{r.cpr:.4f} [{iv.cpr[1]:.4f}, {iv.cpr[2]:.4f}]" in line
        assert f"{r.cmd:.4f} [{iv.cmd[1]:.4f}, {iv.cmd[2]:.4f}]" in line


def _direct_node_faithfulness(pm, loader, scores, absolute):
    """MIB's node-level curve computed here: each circuit's masks applied in one patched
    pass per batch, the mean logit difference over prompts, normalised."""

    def mean_diff(masks):
        vals = []
        with torch.inference_mode():
            for b in loader:
                patch = batch_ablation(pm, b, AblationType.RESAMPLE, "corrupt")
                out = pm.run_patched(b.clean, masks, patch)
                vals.append(batch_answer_diffs(last_position(out).double(), b))
        return torch.cat(vals).mean().item()

    n_nodes = len(pm.srcs)
    zeros = {n: torch.zeros(m.mask_shape) for n, m in pm.dest_modules.items()}
    ones = {n: torch.ones(m.mask_shape) for n, m in pm.dest_modules.items()}
    full, empty = mean_diff(zeros), mean_diff(ones)
    curve = []
    for p in MIB_PERCENTAGES:
        masks, dims = node_circuit_patch(pm, node_circuit(pm, scores, int(p * n_nodes), absolute))
        assert dims is None
        curve.append((mean_diff(masks) - empty) / (full - empty))
    return curve


def test_node_cpr_cmd_equal_a_direct_computation(run):
    _, demo = run
    iv = next(iv for m, iv in demo.rows if m == "eap" and iv.level == "node")
    scores = demo.node_scores[("eap", "node")]
    signed = _direct_node_faithfulness(demo.model, demo.eval_loader, scores, False)
    by_abs = _direct_node_faithfulness(demo.model, demo.eval_loader, scores, True)
    assert iv.curve_cpr == pytest.approx(signed, abs=1e-5)
    assert iv.curve_cmd == pytest.approx(by_abs, abs=1e-5)
    assert iv.cpr[0] == pytest.approx(mib_area(signed)[0], abs=1e-5)
    assert iv.cmd[0] == pytest.approx(mib_area(by_abs)[1], abs=1e-5)
    assert iv.sizes == [int(p * len(demo.model.srcs)) for p in MIB_PERCENTAGES]


def test_intervals_are_mib_evaluate_on_resampled_prompts(run):
    """Each resample's CPR/CMD is mib_evaluate on a loader of the resampled prompts; the
    interval is the 2.5% / 97.5% percentile of those."""
    _, demo = run
    iv = next(iv for m, iv in demo.rows if m == "eap" and iv.level == "edge")
    loader, scores = demo.eval_loader, demo.edge_scores["eap"]
    n = sum(b.clean.shape[0] for b in loader)
    areas = []
    for idx in resample_indices(n, N_BOOT, seed=0):
        r = mib_evaluate(demo.model, resampled_loader(loader, idx), scores)
        areas.append([r.cpr, r.cmd])
    lo, hi = percentile_interval(torch.tensor(areas, dtype=torch.float64), 0.95)
    assert iv.cpr[1:] == pytest.approx((lo[0].item(), hi[0].item()), abs=1e-9)
    assert iv.cmd[1:] == pytest.approx((lo[1].item(), hi[1].item()), abs=1e-9)


def test_report_holds_the_bands_and_the_table(run):
    out, demo = run
    page = (out / REPORT_FILE).read_text(encoding="utf-8")
    n_edge = sum(iv.level == "edge" for _, iv in demo.rows)
    n_node = len(demo.rows) - n_edge
    # one shaded band per series: edges and nodes/neurons, each in a CPR and a CMD chart
    assert page.count('class="band"') == 2 * n_edge + 2 * n_node
    assert page.count('class="mib-row"') == len(demo.rows)
    cells = re.findall(r'<td class="num ci">([^<]*)</td>', page)
    for _, iv in demo.rows:
        assert f"{iv.cpr[0]:.4f} [{iv.cpr[1]:.4f}, {iv.cpr[2]:.4f}]" in cells
        assert f"{iv.cmd[0]:.4f} [{iv.cmd[1]:.4f}, {iv.cmd[2]:.4f}]" in cells
    assert "http://" not in page and "https://" not in page  # nothing fetched


def test_bootstrap_of_identical_prompts_collapses_and_bad_resamples_are_named():
    ones = torch.ones(3, dtype=torch.float64)
    curve = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0]
    m = MibMeasurements("edge", list(range(10)), 10, [c * ones for c in curve],
                        [c * ones for c in curve], 0 * ones, ones)  # fmt: skip
    iv = mib_bootstrap(m, 7)
    cpr, cmd = mib_area(curve)
    assert iv.cpr == pytest.approx((cpr, cpr, cpr)) and iv.cmd == pytest.approx((cmd, cmd, cmd))
    assert [lo for lo, _ in iv.band_cpr] == pytest.approx(curve)
    flat = MibMeasurements("edge", list(range(10)), 10, [ones] * 10, [ones] * 10, ones,
                           torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64))  # fmt: skip
    with pytest.raises(ValueError, match="resample"):
        mib_bootstrap(flat, 50)  # some resample draws only the prompts where full == empty
    with pytest.raises(ValueError, match="n_resamples"):
        mib_bootstrap(m, 0)


def test_rerun_keeps_the_users_files_and_prints_the_same_table(run, capsys):
    out, demo = run
    mine = out / "notes.txt"
    mine.write_text("the user's")
    deeper = out / SUBMISSION_DIR / "README.txt"
    deeper.write_text("also the user's")
    before = (
        out / SUBMISSION_DIR / "eap" / "importances" / "ioi_gpt2" / "importances.json"
    ).read_bytes()
    assert main(["mib", "demo", "--out", str(out), "--bootstrap", str(N_BOOT), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert format_summary(demo) in printed  # deterministic: the same numbers and paths
    assert mine.read_text() == "the user's" and deeper.read_text() == "also the user's"
    after = (
        out / SUBMISSION_DIR / "eap" / "importances" / "ioi_gpt2" / "importances.json"
    ).read_bytes()
    assert after == before


def test_refuses_foreign_folders_before_any_work(tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.csv").write_text("x")
    assert main(["mib", "demo", "--out", str(foreign), "--quiet"]) == 2
    assert "--allow-existing" in capsys.readouterr().err
    clash = tmp_path / "clash"
    clash.mkdir()
    (clash / REPORT_FILE).write_text("someone's page")
    assert main(["mib", "demo", "--out", str(clash), "--allow-existing", "--quiet"]) == 2
    assert REPORT_FILE in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / ".edgewise").write_text(
        '{"written_by": "edgewise", "model": "toy-ioi", "task": "toy_ioi"}'
    )
    assert main(["mib", "demo", "--out", str(other), "--quiet"]) == 2
    assert "toy_ioi" in capsys.readouterr().err
    assert main(["mib", "demo", "--out", str(tmp_path / "new"), "--bootstrap", "0"]) == 2
    assert "--bootstrap: must be a whole number >= 1, got '0'" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in foreign.iterdir()) == ["data.csv"]
    assert (clash / REPORT_FILE).read_text() == "someone's page"
    assert not (tmp_path / "new").exists()
