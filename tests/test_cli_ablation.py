"""``--ablation optimal`` on the command line: ``edgewise discover`` scores with the
optimal ablation constants fitted on the train prompts (the saved scores equal the
direct call), records the fitting options so a resumed run with others is caught, and
refuses algorithms that cannot take fixed values before touching the folder;
``edgewise mib evaluate`` evaluates circuits with the constants."""

from __future__ import annotations

from functools import partial

import torch

from edgewise.cli import _setup, main
from edgewise.io import load_prune_scores
from edgewise.prune_algos import mask_gradient_prune_scores
from edgewise.prune_algos.optimal_ablation import optimal_ablation_values

OA = ["--ablation", "optimal", "--oa-steps", "2", "--oa-lr", "0.01"]


def test_discover_scores_with_the_fitted_constants(tmp_path, capsys, monkeypatch):
    import edgewise.cli

    def quick(pm, task, test, scores, algo, *args, **kwargs):  # evaluation is not tested here
        return {"algorithm": algo, "metric": task.metric, "measurements": [[0, 0.0]],
                "top_edges": []}

    monkeypatch.setattr(edgewise.cli, "evaluate_scores", quick)
    out = tmp_path / "run"
    base = ["discover", "--task", "toy_ioi", "--algo", "eap", "--out", str(out), "--quiet"]
    assert main([*base, *OA]) == 0
    saved, meta = load_prune_scores(out / "scores_eap.safetensors")
    assert meta["parameters"]["ablation"] == {"kind": "optimal", "steps": 2, "lr": 0.01,
                                              "objective": "lm"}  # fmt: skip
    task, pm, train, _ = _setup(None, "toy_ioi", 16)
    values = optimal_ablation_values(pm, train, 2, 0.01, "lm")
    want = mask_gradient_prune_scores(pm, train, None, task.grad_function, task.answer_function,
                                      mask_val=0.0, ablation_values=values, progress=False)
    patching = mask_gradient_prune_scores(pm, train, None, task.grad_function,
                                          task.answer_function, mask_val=0.0, progress=False)
    for name in want:
        torch.testing.assert_close(saved[name].double(), want[name].double(), atol=1e-6, rtol=0)
    assert any(not torch.allclose(want[n], patching[n]) for n in want)
    capsys.readouterr()
    assert main([*base, "--ablation", "optimal", "--oa-steps", "3", "--oa-lr", "0.01"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_discover_refuses_algorithms_without_fixed_values_first(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["discover", "--task", "toy_ioi", "--algo", "eap", "eap-ig-inputs", "clean-corrupted",
            "--out", str(out), "--quiet", *OA]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgewise: error: --ablation optimal: eap-ig-inputs, clean-corrupted "
                          "cannot patch with fixed values") and "eap-ig-activations" in err
    assert not out.exists()
    assert main(["discover", "--task", "toy_ioi", "--out", str(out), "--ablation", "optimal",
                 "--oa-lr", "0"]) == 2  # fmt: skip
    assert "--oa-lr positive" in capsys.readouterr().err and not out.exists()


def test_mib_evaluate_with_optimal_ablation(tmp_path, capsys):
    from edgewise.benchmarks.tasks import get_task
    from edgewise.io.files import save_mib_json
    from edgewise.mib.evaluate import format_result, load_mib_setup, measure_circuits, mib_evaluate

    pm, test = load_mib_setup("toy-ioi", "toy_ioi", 32)
    task = get_task("toy_ioi")
    train, _ = task.dataloaders(pm.wrapped_model, 32)
    gen = torch.Generator().manual_seed(0)
    scores = {n: torch.randn(m.mask_shape, generator=gen) for n, m in pm.dest_modules.items()}
    path = save_mib_json(tmp_path / "scores.json", pm, scores)
    values = optimal_ablation_values(pm, train, 2, 0.01, "lm")
    want = mib_evaluate(pm, test, scores, measure=partial(measure_circuits, ablation_values=values))
    # the empty circuit carries the constants, not the corrupt run
    assert want.empty != measure_circuits(pm, test, [set()])[1]
    capsys.readouterr()
    assert main(["mib", "evaluate", str(path), "--task", "toy_ioi", "--batch-size", "32",
                 "--quiet", *OA]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert out[out.index("CPR "):].strip() == format_result(want)
