"""The edgewise command line end to end on the shipped toy model, in a temporary folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgewise.cli import main
from edgewise.io import load_prune_scores


def test_discover_evaluate_report_round_trip(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["discover", "--task", "toy_ioi", "--algo", "eap", "ig", "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "toy_ioi" and results["n_edges"] == 1650
    assert results["n_prompts"] == {"train": 64, "test": 64}  # for the report's page
    assert results["seq_labels"][0] == "<|BOS|>" and results["seq_labels"][10] == "S2"
    for algo in ("eap", "ig"):
        r = results["algorithms"][algo]
        assert 0.5 < r["auc"] <= 1.0 and 0.0 < r["cpr"] <= 1.5
        sizes = [s for s, _ in r["measurements"]]
        assert sizes[0] == 0 and sizes[-1] == 1650
        scores, meta = load_prune_scores(out / f"scores_{algo}.safetensors")
        assert meta["algorithm"] == algo and meta["task"] == "toy_ioi"
        assert len(meta["edges"]) == 1650
    summary = capsys.readouterr().out
    assert "eap" in summary and "AUC" in summary

    before = results["algorithms"]["eap"]["measurements"]
    assert main(["evaluate", str(out), "--quiet"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["algorithms"]["eap"]["measurements"] == before  # deterministic

    assert main(["report", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert "<svg" in html and "https://" not in html
    assert "64</b> prompt pairs to score edges" in html and "10: S2</text>" in html


def test_unknown_names_list_the_valid_ones(tmp_path, capsys):
    assert main(["discover", "--task", "nope", "--out", str(tmp_path)]) == 2
    assert "toy_ioi" in capsys.readouterr().err
    assert main(["discover", "--task", "toy_ioi", "--algo", "magic", "--out", str(tmp_path)]) == 2
    assert "acdc" in capsys.readouterr().err
    assert main(["discover", "--task", "toy_copy", "--model", "no-such-model",
                 "--out", str(tmp_path)]) == 2
    assert "toy-ioi" in capsys.readouterr().err


def test_scores_are_identical_across_runs(tmp_path):
    for name in ("a", "b"):
        assert main(["discover", "--task", "toy_ioi", "--algo", "eap", "--out",
                     str(tmp_path / name), "--quiet"]) == 0
    a, _ = load_prune_scores(tmp_path / "a" / "scores_eap.safetensors")
    b, _ = load_prune_scores(tmp_path / "b" / "scores_eap.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ resuming discover
RESUME_ARGS = ["discover", "--task", "tracr_reverse", "--algo", "eap", "ig", "acdc", "--quiet"]


def _outputs(folder):
    """Everything discover writes, timings aside: file bytes, and results.json without
    ``seconds``."""
    files = {f.name: f.read_bytes() for f in folder.iterdir()
             if f.is_file() and f.name != "results.json"}
    results = json.loads((folder / "results.json").read_text())
    for r in results["algorithms"].values():
        r.pop("seconds")
    return files, results


def _assert_same_outputs(got, want):
    (got_files, got_results), (want_files, want_results) = _outputs(got), _outputs(want)
    assert sorted(got_files) == sorted(want_files)
    assert got_results == want_results  # metrics, edge lists, curves, AUC
    for name in want_files:
        if name.endswith(".safetensors"):
            a, meta_a = load_prune_scores(got / name)
            b, meta_b = load_prune_scores(want / name)
            assert meta_a == meta_b and a.keys() == b.keys()
            assert all(torch.equal(a[k], b[k]) for k in a)  # exactly equal
        assert got_files[name] == want_files[name], name  # byte for byte


def _counting(monkeypatch, algo, calls, fail=None):
    """Replace ``algo`` in the registry by a wrapper that counts calls (and raises
    ``fail`` instead of scoring, when given)."""
    import dataclasses
    import functools

    from edgewise.prune_algos import ALGORITHMS

    real = ALGORITHMS[algo].function

    @functools.wraps(real)
    def wrapper(*args, **kw):
        calls[algo] = calls.get(algo, 0) + 1
        if fail is not None:
            raise fail
        return real(*args, **kw)

    monkeypatch.setitem(ALGORITHMS, algo, dataclasses.replace(ALGORITHMS[algo], function=wrapper))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    assert main([*RESUME_ARGS, "--out", str(out)]) == 0
    return out


def test_resume_after_an_interruption_gives_identical_output(tmp_path, monkeypatch, capsys,
                                                             uninterrupted):
    out = tmp_path / "run"
    calls = {}
    _counting(monkeypatch, "eap", calls)
    with monkeypatch.context() as m:  # Ctrl-C as ig starts, after eap finished
        _counting(m, "ig", calls, fail=KeyboardInterrupt())
        assert main([*RESUME_ARGS, "--out", str(out)]) == 130
    assert "run the same command again" in capsys.readouterr().err
    assert (out / "scores_eap.safetensors").exists()
    partial = json.loads((out / "results.json").read_text())  # what is finished, readable
    assert list(partial["algorithms"]) == ["eap"]
    assert partial["unfinished"]["algorithms"] == ["ig", "acdc"]
    (out / ".results.json.x1y2.edgewise-tmp").write_text("{half")  # what a killed write leaves
    (out / ".notes.tmp").write_text("mine")  # a user's file: never touched
    _counting(monkeypatch, "ig", calls)

    assert main([*RESUME_ARGS, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "resuming: eap done, ig restarting, acdc not started" in err
    assert calls == {"eap": 1, "ig": 2}  # eap was not recomputed
    assert not list(out.glob("*.edgewise-tmp")) and (out / ".notes.tmp").read_text() == "mine"
    (out / ".notes.tmp").unlink()
    _assert_same_outputs(out, uninterrupted)
    assert sorted(f.name for f in (out / "checkpoints").iterdir()) == [
        "acdc.json", "eap.json", "ig.json"]  # ACDC's own checkpoint went with its scores

    # a finished folder is reused whole; other settings are refused; --fresh starts over
    assert main([*RESUME_ARGS, "--out", str(out)]) == 0
    assert "resuming: eap done, ig done, acdc done" in capsys.readouterr().err
    assert calls == {"eap": 1, "ig": 2}
    assert main([*RESUME_ARGS, "--batch-size", "8", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "batch_size: saved 16, now 8" in err and "--fresh" in err
    assert main([*RESUME_ARGS, "--out", str(out), "--fresh"]) == 0
    assert "resuming" not in capsys.readouterr().err
    assert calls == {"eap": 2, "ig": 3}
    _assert_same_outputs(out, uninterrupted)


def test_acdc_interrupted_midway_resumes_from_its_checkpoint(tmp_path, monkeypatch, capsys,
                                                            uninterrupted):
    import edgewise.prune_algos.acdc as acdc

    out = tmp_path / "run"
    saves = []
    real_save = acdc._save_checkpoint

    def save_then_die(path, state):  # killed right after the 5th destination's checkpoint
        real_save(path, state)
        saves.append(state["next_dest"])
        if len(saves) == 5:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(acdc, "_save_checkpoint", save_then_die)
        assert main([*RESUME_ARGS, "--out", str(out)]) == 130
    assert (out / "checkpoints" / "acdc.pt").exists()
    assert not (out / "scores_acdc.safetensors").exists()
    capsys.readouterr()

    calls = {}
    for algo in ("eap", "ig", "acdc"):
        _counting(monkeypatch, algo, calls)
    saves.clear()

    def counting_save(path, state):
        real_save(path, state)
        saves.append(state["next_dest"])

    monkeypatch.setattr(acdc, "_save_checkpoint", counting_save)
    assert main([*RESUME_ARGS, "--out", str(out)]) == 0
    assert "resuming: eap done, ig done, acdc from checkpoint step 5/17" in capsys.readouterr().err
    assert calls == {"acdc": 1}
    assert saves == list(range(6, 18))  # destinations 1-5 were not searched again
    _assert_same_outputs(out, uninterrupted)


def test_algorithms_declare_what_their_functions_take():
    """The registry's capability flags (which the command line reads instead of
    inspecting functions) match each function's signature."""
    import inspect

    from edgewise.prune_algos import ALGORITHMS

    for name, a in ALGORITHMS.items():
        takes = inspect.signature(a.function).parameters
        assert a.progress == ("progress" in takes), name
        assert a.max_memory == ("max_memory" in takes), name
        assert a.checkpoint == ("checkpoint" in takes), name
        assert a.loss == ("grad_function" in takes and "answer_function" in takes), name
        assert a.faithfulness == ("faithfulness_target" in takes), name
    assert [n for n, a in ALGORITHMS.items() if a.needs_official_edges] == ["ground-truth"]


def test_ground_truth_on_a_task_without_an_official_circuit_is_refused_first(tmp_path, capsys):
    from edgewise.cli import main

    data = tmp_path / "d.json"
    data.write_text((Path(__file__).parents[1] / "src/edgewise/datasets/toy_ioi.json").read_text())
    assert main(["discover", "--model", "toy-ioi", "--task", str(data), "--algo", "ground-truth",
                 "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "official circuit" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
