"""The scale of scores on the command line: ``discover`` records each scores file's scale
and prompt count, its ``--scale`` and ``--ig-endpoint`` reach the functions, and ``mib
export`` writes MIB's scale (the file's sum over batches divided by its prompts) unless
``--keep-scale``; a file that records no scale is refused and nothing is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import edgewise
from edgewise.cli import _setup, main
from edgewise.io.files import load_prune_scores, read_json, save_prune_scores, write_json
from edgewise.io.scale import SCALE_KEY, count_prompts
from edgewise.mib.evaluate import load_mib_setup
from edgewise.mib.submission import import_submission
from edgewise.prune_algos import eap_ig_inputs_prune_scores, mask_gradient_prune_scores


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``discover`` with the defaults (eap, eap-ig-inputs) and with ``--scale sum
    --ig-endpoint clean`` (eap-ig-inputs) on 40 of the toy IOI prompts as a dataset task
    (MIB's graph: no token positions), and the task's setup to recompute them."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("scale")
    shipped = read_json(Path(edgewise.__file__).parent / "datasets" / "toy_ioi.json")
    data = write_json(root / "ioi40.json", {"prompts": shipped["prompts"][:40]})
    task_args = ["--model", "toy-ioi", "--task", str(data)]
    default, chosen = root / "default", root / "chosen"
    assert main(["discover", *task_args, "--algo", "eap", "eap-ig-inputs", "--out", str(default),
                 "--quiet"]) == 0  # fmt: skip
    assert main(["discover", *task_args, "--algo", "eap-ig-inputs", "--scale", "sum",
                 "--ig-endpoint", "clean", "--out", str(chosen), "--quiet"]) == 0  # fmt: skip
    task, pm, train, _ = _setup("toy-ioi", str(data), 16)
    assert pm.seq_len is None and count_prompts(train) == 16  # 20 in batches of 16: 1 full
    return default, chosen, task, pm, train, task_args


def _saved(folder, algo):
    return load_prune_scores(folder / f"scores_{algo}.safetensors")


def test_discover_records_scale_and_prompts_and_its_options_reach_the_functions(runs):
    default, chosen, task, pm, train, _ = runs
    n = count_prompts(train)
    loss = {"grad_function": task.grad_function, "answer_function": task.answer_function}
    eap, meta = _saved(default, "eap")
    assert meta[SCALE_KEY] == {"scale": "sum", "n_prompts": n}
    want = mask_gradient_prune_scores(pm, train, None, mask_val=0.0, progress=False, **loss)
    assert all(torch.equal(eap[k], want[k].cpu()) for k in want)

    ig, meta = _saved(default, "eap-ig-inputs")
    assert meta[SCALE_KEY] == {"scale": "mean", "n_prompts": n}
    assert meta["parameters"]["endpoint"] == "corrupt" and meta["parameters"]["scale"] == "mean"
    want = eap_ig_inputs_prune_scores(pm, train, progress=False, **loss)
    assert all(torch.equal(ig[k], want[k].cpu()) for k in want)

    ig, meta = _saved(chosen, "eap-ig-inputs")
    assert meta[SCALE_KEY] == {"scale": "sum", "n_prompts": n}
    assert meta["parameters"]["endpoint"] == "clean" and meta["parameters"]["scale"] == "sum"
    want = eap_ig_inputs_prune_scores(pm, train, endpoint="clean", scale="sum", progress=False,
                                      **loss)  # fmt: skip
    assert all(torch.equal(ig[k], want[k].cpu()) for k in want)


def test_options_that_reach_no_algorithm_are_refused(tmp_path, capsys):
    out = tmp_path / "run"
    for option, value in (("--scale", "mean"), ("--ig-endpoint", "clean")):
        assert main(["discover", "--task", "toy_ioi", "--algo", "acdc", option, value,
                     "--out", str(out), "--quiet"]) == 2  # fmt: skip
        err = capsys.readouterr().err
        assert err.startswith("edgewise: error: ") and len(err.strip().splitlines()) == 1
        assert f"{option} applies to" in err and "none of --algo acdc takes it" in err
        assert not out.exists()
    # argparse's own refusal of a choice, one line
    assert main(["discover", "--task", "toy_ioi", "--scale", "avg", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'avg'" in err and len(err.strip().splitlines()) == 1


def _export(task_args, scores_file, out, *extra):
    return main(["mib", "export", str(scores_file), *task_args, "--mib-task", "ioi",
                 "--mib-model", "gpt2", "--out", str(out), *extra])  # fmt: skip


def test_mib_export_writes_mibs_scale(runs, tmp_path, capsys):
    default, chosen, *_, task_args = runs
    pm, _ = load_mib_setup(task_args[1], task_args[3], 16)
    for folder, algo in ((default, "eap"), (chosen, "eap-ig-inputs"), (default, "eap-ig-inputs")):
        scores, meta = _saved(folder, algo)
        n, scale = meta[SCALE_KEY]["n_prompts"], meta[SCALE_KEY]["scale"]
        path = folder / f"scores_{algo}.safetensors"
        out, kept = tmp_path / f"{folder.name}-{algo}", tmp_path / f"{folder.name}-{algo}-kept"
        assert _export(task_args, path, out) == 0
        note = capsys.readouterr().err
        back = import_submission(out / "ioi_gpt2", pm)
        want = {k: t / n for k, t in scores.items()} if scale == "sum" else scores
        assert all(torch.equal(back[k], want[k]) for k in want)
        if scale == "sum":
            assert f"divided by {n}" in note
        assert _export(task_args, path, kept, "--keep-scale") == 0
        back = import_submission(kept / "ioi_gpt2", pm)
        assert all(torch.equal(back[k], scores[k]) for k in scores)


def test_mib_export_refuses_a_file_without_a_recorded_scale(runs, tmp_path, capsys):
    default, *_, task_args = runs
    pm, _ = load_mib_setup(task_args[1], task_args[3], 16)
    scores, meta = _saved(default, "eap")
    old = {k: v for k, v in meta.items()
           if k not in (SCALE_KEY, "edges", "seq_len", "format", "edgewise_version")}  # fmt: skip
    path = save_prune_scores(tmp_path / "old.safetensors", scores, pm, old)
    before = path.read_bytes()
    out = tmp_path / "sub"
    assert _export(task_args, path, out) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (after any model-loading bar)
    assert err.startswith("edgewise: error: ")
    assert "does not record the scale" in err and "--keep-scale" in err and str(path) in err
    assert not out.exists() and path.read_bytes() == before
    assert _export(task_args, path, out, "--keep-scale") == 0
    back = import_submission(out / "ioi_gpt2", pm)
    assert all(torch.equal(back[k], scores[k]) for k in scores)
