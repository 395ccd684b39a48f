"""The command line's model, device and help: hub names through the Hugging Face cache,
--kind/--device/--dtype (validated before anything loads, recorded in results.json, a
dtype change refused on resume), lazy imports, help content, suggestions, the closing
line and --quiet."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgewise.cli import _COMMANDS, build_parser, main
from edgewise.io import load_prune_scores
from edgewise.prune_algos import ALGORITHMS
from edgewise.runtime.resolve import did_you_mean, quiet_libraries

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT / "src" / "edgewise" / "datasets"


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """``main(argv)``'s exit status, stdout and stderr."""
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def one_line_error(err: str, *fragments: str) -> None:
    assert err.startswith("edgewise: error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def python(code: str, env: dict[str, str] | None = None, timeout: int = 600) -> str:
    """Run ``code`` in a fresh interpreter with this checkout's sources first; its stdout."""
    env = {**(env if env is not None else os.environ), "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


# ---------------------------------------------------------------- help and imports
def test_the_top_help_and_a_misspelled_command_import_no_torch():
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    out = python(
        "import io, os, sys, contextlib\n"
        "from edgewise.cli import main\n"
        "f, g = io.StringIO(), io.StringIO()\n"
        "with contextlib.redirect_stdout(f), contextlib.redirect_stderr(g):\n"
        "    a = main(['--help']); b = main(['dicsover', '--task', 'x'])\n"
        "heavy = [m for m in ('torch', 'transformer_lens', 'transformers') if m in sys.modules]\n"
        "import edgewise.benchmarks.tasks, edgewise.models.kinds\n"
        "print(repr((a, b, heavy, os.environ.get('HF_HUB_OFFLINE'), "
        "os.environ.get('TRANSFORMERS_OFFLINE'), f.getvalue(), g.getvalue())))\n", env)
    help_rc, typo_rc, heavy, hub_offline, tf_offline, help_text, typo_err = eval(out)  # noqa: S307
    assert (help_rc, typo_rc, heavy) == (0, 2, [])
    assert (hub_offline, tf_offline) == (None, None)  # importing edgewise forces no offline mode
    for name in _COMMANDS:
        assert re.search(rf"^\s+{name}\s+\S", help_text, re.M), (name, help_text)
    assert "``" not in help_text
    one_line_error(typo_err, "invalid choice: 'dicsover'", "(did you mean 'discover'?)")


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found += _parsers(child)
    return found


def test_every_option_shows_its_default_and_no_help_has_rst_markup():
    parsers = _parsers(build_parser())
    assert len(parsers) == 1 + 4 + 1 + 5  # edgewise, its commands, mib and its commands
    for p in parsers:
        text = p.format_help()
        assert "``" not in text, p.prog
        for action in p._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                assert "default" in (action.help or "").lower(), (p.prog, action.option_strings)
    device_users = [p.prog for p in parsers if any("--device" in a.option_strings for a in p._actions)]
    assert sorted(device_users) == sorted(
        f"edgewise {c}" for c in ("discover", "evaluate", "demo", "mib evaluate", "mib export",
                                  "mib memory", "mib demo"))  # fmt: skip


def test_discover_help_lists_every_algorithm_with_its_description():
    discover = next(p for p in _parsers(build_parser()) if p.prog == "edgewise discover")
    text = discover.format_help()
    for name, algo in ALGORITHMS.items():
        assert algo.description, name
        assert re.search(rf"^  {re.escape(name)} +{re.escape(algo.description)}$", text, re.M), name


@settings(max_examples=50, deadline=None)
@given(name=st.sampled_from(sorted(ALGORITHMS)), upper=st.lists(st.booleans(), min_size=20, max_size=20))
def test_a_name_in_any_case_is_suggested_as_itself(name, upper):
    typed = "".join(c.upper() if u else c for c, u in zip(name, upper))
    assert did_you_mean(typed, ALGORITHMS) == f" (did you mean {name!r}?)"


def test_nothing_close_suggests_nothing():
    assert did_you_mean("zzzzzzzz", ALGORITHMS) == ""


@pytest.mark.parametrize(("argv", "fragments"), [
    (["discover", "--task", "toy_ioi", "--algo", "EAP", "--out", "OUT"],
     ["unknown algorithm(s) 'EAP' (did you mean 'eap'?)"]),
    (["discover", "--task", "toy_iio", "--out", "OUT"],
     ["unknown task 'toy_iio' (did you mean 'toy_ioi'?)"]),
    (["discover", "--task", "toy_ioi", "--dtype", "float31", "--out", "OUT"],
     ["invalid choice: 'float31'", "(did you mean 'float32'?)"]),
    (["mib", "evalute"], ["invalid choice: 'evalute'", "(did you mean 'evaluate'?)"]),
    (["discover", "--task", "MISSING/prompts.json", "--out", "OUT"],
     ["task 'MISSING/prompts.json': no such file"]),
    (["discover", "--task", "toy_ioi", "--model", "MISSING/model/", "--out", "OUT"],
     ["model 'MISSING/model/': no such folder", "save_pretrained"]),
    (["discover", "--task", "toy_ioi", "--model", "MISSING/deep/model", "--out", "OUT"],
     ["no such folder"]),
    (["discover", "--task", "toy_ioi", "--device", "gpu", "--out", "OUT"],
     ["'gpu' is not a device", "cuda:N"]),
])  # fmt: skip
def test_a_bad_name_is_one_line_before_anything_loads(tmp_path, capsys, argv, fragments):
    argv = [a.replace("OUT", str(tmp_path / "out")).replace("MISSING", str(tmp_path / "none"))
            for a in argv]  # fmt: skip
    rc, _, err = run(argv, capsys)
    assert rc == 2
    one_line_error(err, *[f.replace("MISSING", str(tmp_path / "none")) for f in fragments])
    assert "unknown task" not in err or "toy_iio" in err
    assert "Repo id" not in err
    assert not (tmp_path / "out").exists()


def test_a_missing_gpu_is_refused_before_the_folder(tmp_path, capsys):
    out = tmp_path / "out"
    if not torch.cuda.is_available():
        rc, _, err = run(["discover", "--task", "toy_ioi", "--device", "cuda", "--out", str(out)],
                         capsys)  # fmt: skip
        assert rc == 1
        one_line_error(err, "--device cuda: CUDA is not available here", "use --device cpu")
    else:
        count = torch.cuda.device_count()
        rc, _, err = run(["discover", "--task", "toy_ioi", "--device", f"cuda:{count}", "--out",
                          str(out)], capsys)  # fmt: skip
        assert rc == 1
        one_line_error(err, f"this machine has {count} CUDA GPU(s)", "--device cpu")
    assert not out.exists()


# ------------------------------------------------------------ a run on the toy model
@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> Path:
    """Eight of the shipped toy IOI prompts: four to score on, four to evaluate."""
    prompts = json.loads((DATASETS / "toy_ioi.json").read_text())["prompts"][:8]
    path = tmp_path_factory.mktemp("data") / "ioi8.json"
    path.write_text(json.dumps({"prompts": prompts}))
    return path


def _discover(data: Path, out: Path, *extra: str) -> list[str]:
    return ["discover", "--model", "toy-ioi", "--task", str(data), "--algo", "eap",
            "--batch-size", "4", "--out", str(out), "--quiet", *extra]  # fmt: skip


def test_device_and_dtype_are_recorded_and_a_dtype_change_is_refused(tmp_path, capsys, toy_data):
    out32, out64 = tmp_path / "f32", tmp_path / "f64"
    rc, stdout, err = run(_discover(toy_data, out32), capsys)
    assert rc == 0, err
    # --quiet: the closing line is all that stderr shows
    assert err == (f"results in {out32}/ (results.json, scores, circuits); next: edgewise "
                   f"report {out32} (writes {out32 / 'report.html'} to open in a browser)\n")
    assert "eap" in stdout
    settings32 = json.loads((out32 / "results.json").read_text())["settings"]
    assert (settings32["dtype"], settings32["device"]) == ("float32", "cpu")
    saved = {p.name: p.read_bytes() for p in out32.iterdir() if p.is_file()}

    rc, _, err = run(_discover(toy_data, out32, "--dtype", "float64"), capsys)
    assert rc == 2
    one_line_error(err, "dtype: saved 'float32', now 'float64'", "--fresh")
    assert {p.name: p.read_bytes() for p in out32.iterdir() if p.is_file()} == saved

    rc, _, err = run(["evaluate", str(out32), "--dtype", "float64"], capsys)
    assert rc == 2
    one_line_error(err, "--dtype float64: the scores in", "were computed in float32", "drop --dtype")

    # another device is no mismatch: auto (cuda where there is one) resumes the saved run
    rc, _, err = run(_discover(toy_data, out32, "--device", "auto"), capsys)
    assert rc == 0 and err.startswith("resuming: eap done"), err
    assert (out32 / "scores_eap.safetensors").read_bytes() == saved["scores_eap.safetensors"]

    rc, _, err = run(_discover(toy_data, out64, "--dtype", "float64"), capsys)
    assert rc == 0, err
    assert json.loads((out64 / "results.json").read_text())["settings"]["dtype"] == "float64"
    s32, _ = load_prune_scores(out32 / "scores_eap.safetensors")
    s64, _ = load_prune_scores(out64 / "scores_eap.safetensors")
    assert s32.keys() == s64.keys()
    for name in s32:
        torch.testing.assert_close(s64[name].double(), s32[name].double(), rtol=1e-3, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
def test_discover_on_cuda_gives_the_cpu_scores(tmp_path, capsys, toy_data):
    cpu, gpu, half = tmp_path / "cpu", tmp_path / "gpu", tmp_path / "bf16"
    assert run(_discover(toy_data, cpu), capsys)[0] == 0
    assert run(_discover(toy_data, gpu, "--device", "cuda"), capsys)[0] == 0
    rc, _, err = run(_discover(toy_data, half, "--device", "cuda:0", "--dtype", "bfloat16"), capsys)
    assert rc == 0, err
    settings_gpu = json.loads((gpu / "results.json").read_text())["settings"]
    settings_half = json.loads((half / "results.json").read_text())["settings"]
    assert (settings_gpu["device"], settings_gpu["dtype"]) == ("cuda", "float32")
    assert (settings_half["device"], settings_half["dtype"]) == ("cuda:0", "bfloat16")
    a, _ = load_prune_scores(cpu / "scores_eap.safetensors")
    b, _ = load_prune_scores(gpu / "scores_eap.safetensors")
    c, _ = load_prune_scores(half / "scores_eap.safetensors")
    for name in a:
        torch.testing.assert_close(b[name].cpu(), a[name], rtol=1e-3, atol=1e-5)
        assert torch.isfinite(c[name].float()).all()


# ------------------------------------------------------------------------- --quiet
def test_quiet_silences_transformers_the_hub_and_warnings_and_restores_them(capfd):
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as tf_logging

    level, bars = tf_logging.get_verbosity(), are_progress_bars_disabled()
    with quiet_libraries(True):
        tf_logging.get_logger("transformers").warning("loud transformers warning")
        warnings.warn("loud python warning", UserWarning, stacklevel=1)
        assert are_progress_bars_disabled() and not tf_logging.is_progress_bar_enabled()
    assert "loud" not in "".join(capfd.readouterr())
    assert (tf_logging.get_verbosity(), are_progress_bars_disabled()) == (level, bars)
    with quiet_libraries(False), pytest.warns(UserWarning, match="still shown"):
        warnings.warn("still shown", UserWarning, stacklevel=1)


# ------------------------------------------------------- a hub name, without network
def _hub_cache(home: Path) -> Path:
    """A Hugging Face cache under ``home`` holding a tiny random GPT-2 (with a word-level
    tokenizer) as the hub repository ``gpt2``; returns its snapshot folder."""
    from edgewise.models.kinds import random_hf_model, word_tokenizer

    repo = home / "hub" / "models--gpt2"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    hf = random_hf_model("gpt2", n_layers=2, n_heads=4, d_head=4, d_vocab=50, n_ctx=32, seed=3)
    hf.config.n_ctx = 32  # as the real gpt2's config.json has it (TransformerLens 3 reads it)
    with quiet_libraries(True):
        hf.save_pretrained(snapshot)
        word_tokenizer([f"w{i}" for i in range(47)]).save_pretrained(snapshot)
    return snapshot


def test_a_hub_name_loads_from_the_hugging_face_cache(tmp_path):
    from edgewise.io.provenance import model_provenance
    from edgewise.models.kinds import hooked_transformer_available, load_hf_bridge
    from edgewise.patching.wrap import patchable_model

    snapshot = _hub_cache(tmp_path / "hf")
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"prompts": [
        {"clean": [0, 5 + i, 7, 9], "corrupt": [0, 20 + i, 7, 9], "answers": [5 + i],
         "wrong_answers": [20 + i]} for i in range(8)]}))  # fmt: skip
    kinds = ["hooked", "bridge"] if hooked_transformer_available() else ["bridge"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")  # offline: set here, by the test
    argv = [["discover", "--model", "gpt2", "--kind", k, "--task", str(data), "--algo", "random",
             "--batch-size", "4", "--out", str(tmp_path / k), "--quiet"] for k in kinds]  # fmt: skip
    rcs = python("import json, sys\nfrom edgewise.cli import main\n"
                 f"print(json.dumps([main(a) for a in {argv!r}]))", env)
    assert json.loads(rcs.splitlines()[-1]) == [0] * len(kinds)

    with quiet_libraries(True):
        pm = patchable_model(load_hf_bridge(snapshot), slice_output="last_seq", seq_len=None)
    expected = model_provenance(pm)
    for k in kinds:
        results = json.loads((tmp_path / k / "results.json").read_text())
        assert results["model"] == "gpt2" and results["n_edges"] == pm.n_edges
        kind_name = {"hooked": "HookedTransformer", "bridge": "TransformerBridge"}[k]
        assert results["settings"]["model_kind"] == kind_name
    bridge = json.loads((tmp_path / "bridge" / "results.json").read_text())["settings"]
    assert bridge["weights_sha256"] == expected["weights_sha256"]  # the cached checkpoint's


# ------------------------------------------------------------------------- mib
def test_mib_memory_plans_for_the_dtype_and_device_asked(capsys):
    import dataclasses

    from edgewise.mib.models import MIB_MODELS, bridge_copy_bytes

    argv = ["mib", "memory", "--dtype", "float64", "--device", "cpu", "--max-memory", "80GiB"]
    args = build_parser(argv).parse_args(argv)
    plans = args.mib_run(args)
    assert plans and all(
        p.weights == bridge_copy_bytes(dataclasses.replace(MIB_MODELS[p.model], dtype=torch.float64))
        + MIB_MODELS[p.model].n_params * 8 for p in plans)  # fmt: skip
    assert "device: cpu, budget 80.0 GiB" in capsys.readouterr().out
    argv = ["mib", "memory"]  # each model's MIB dtype: gpt2 float32, the others bfloat16
    args = build_parser(argv).parse_args(argv)
    for p in args.mib_run(args):
        m = MIB_MODELS[p.model]
        assert p.weights == m.n_params * (4 if p.model == "gpt2" else 2) + bridge_copy_bytes(m)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("argv", [
    ["mib", "evaluate", "scores.json", "--task", "toy_ioi", "--device", "cuda"],
    ["mib", "memory", "--device", "cuda:1"],
    ["mib", "demo", "--out", "OUT", "--device", "cuda"],
])  # fmt: skip
def test_mib_commands_refuse_a_missing_gpu_before_loading(tmp_path, capsys, argv):
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in argv]
    rc, _, err = run(argv, capsys)
    assert rc == 1
    one_line_error(err, "CUDA is not available here", "--device cpu")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- edgewise.load_model
@pytest.mark.parametrize("kind", ["hooked", "bridge"])
def test_load_model_in_float64_computes_the_float32_function(kind):
    import edgewise
    from edgewise.models.kinds import hooked_transformer_available

    if kind == "hooked" and not hooked_transformer_available():
        with pytest.raises(ImportError, match="no HookedTransformer"):
            edgewise.load_model("toy-ioi", kind=kind)
        return
    with quiet_libraries(True):
        m32 = edgewise.load_model("toy-ioi", kind=kind)
        m64 = edgewise.load_model("toy-ioi", kind=kind, dtype="float64")
    assert {p.dtype for p in m32.parameters()} == {torch.float32}
    assert {p.dtype for p in m64.parameters()} == {torch.float64}
    tokens = torch.tensor([json.loads((DATASETS / "toy_ioi.json").read_text())["prompts"][0]["clean"]])
    with torch.no_grad():
        torch.testing.assert_close(m64(tokens), m32(tokens).double(), rtol=1e-4, atol=1e-4)
