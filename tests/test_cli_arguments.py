"""Command-line arguments checked before anything is loaded or created: nonsense numbers
and sizes are refused while the arguments are parsed, an unknown model, a model folder
with a bad config.json or weights file and a bad dataset file before the model loads;
each is one line ``edgewise: error: ...`` naming the argument or file, exit code 2, no
output folder made, and the user's files left byte for byte as they were."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgewise.cli import main
from edgewise.models import random_hf_model

HYPO = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def run(argv, capsys) -> tuple[int, str]:
    """``main(argv)``'s exit code (a parser error exits through ``SystemExit``) and stderr."""
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def one_line_error(err: str, *fragments: str) -> None:
    assert err.startswith("edgewise: error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


_not_positive = st.one_of(
    st.integers(max_value=0).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(alphabet="abcxyz.-+ ", min_size=1, max_size=5).filter(lambda t: not t.strip().lstrip("+").isdigit()),
)


@HYPO
@given(value=_not_positive, flag=st.sampled_from(["--batch-size", "--bootstrap"]))
def test_discover_refuses_numbers_below_one_before_making_the_folder(tmp_path, capsys, value, flag):
    out = tmp_path / "out"
    rc, err = run(["discover", "--task", "toy_ioi", "--out", str(out), f"{flag}={value}"], capsys)
    assert rc == 2
    one_line_error(err, f"argument {flag}: must be a whole number >= 1, got {value!r}",
                   "edgewise discover --help")  # fmt: skip
    assert not out.exists()


_not_a_size = st.one_of(
    st.sampled_from(["lots", "0", "0GiB", "0.0000001KB", "-5GiB", "12 parsecs", "", "GiB", "1e9"]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=6).filter(lambda t: t != "auto"),
)


@HYPO
@given(size=_not_a_size)
def test_max_memory_that_is_not_a_size_is_refused_while_parsing(tmp_path, capsys, size):
    out = tmp_path / "out"
    rc, err = run(["discover", "--task", "toy_ioi", "--out", str(out), f"--max-memory={size}"], capsys)
    assert rc == 2
    one_line_error(err, f"argument --max-memory: {size!r} is not a memory size: give a size")
    assert "None" not in err  # a Python value, not something to type
    assert not out.exists()
    rc, err = run(["mib", "memory", f"--max-memory={size}"], capsys)
    assert rc == 2 and "argument --max-memory" in err


@HYPO
@given(value=_not_positive, flag=st.sampled_from(["--batch-size", "--seq-len"]))
def test_mib_memory_refuses_nonsense_sizes(capsys, value, flag):
    rc, err = run(["mib", "memory", f"{flag}={value}"], capsys)
    assert rc == 2
    one_line_error(err, f"argument {flag}: must be a whole number >= 1")


@pytest.mark.parametrize("argv", [
    ["evaluate", "DIR", "--batch-size", "0"],
    ["mib", "evaluate", "x.json", "--task", "ioi", "--batch-size", "-2"],
    ["mib", "validate", "DIR", "--min-tasks", "0"],
    ["mib", "demo", "--bootstrap", "0"],
])  # fmt: skip
def test_other_commands_refuse_numbers_below_one(tmp_path, capsys, argv):
    rc, err = run([a.replace("DIR", str(tmp_path / "d")) for a in argv], capsys)
    assert rc == 2
    one_line_error(err, "must be a whole number >= 1")
    assert not (tmp_path / "d").exists()


def test_an_unknown_model_is_refused_before_the_folder(tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = run(["discover", "--task", "toy_ioi", "--model", "no-such-model/at-all", "--out", str(out)],
                  capsys)  # fmt: skip
    assert rc == 2
    one_line_error(err, "cannot load model 'no-such-model/at-all'", "toy-ioi", "HF_HUB_OFFLINE is set",
                   "hf download no-such-model/at-all")
    assert not out.exists()
    rc, err = run(["discover", "--task", "toy_ioi", "--model", "tracr-sort", "--out", str(out)], capsys)
    assert rc == 2 and "tracr-reverse" in err and not out.exists()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random GPT-2 saved with save_pretrained (config.json, model.safetensors)."""
    folder = tmp_path_factory.mktemp("hf") / "gpt2-random"
    random_hf_model(n_layers=1, n_heads=2, d_head=4).save_pretrained(folder)
    return folder


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize(("damage", "fragment"), [
    (lambda d: (d / "config.json").write_text('{"model_type": "gpt2",'), "config.json is not valid JSON"),
    (lambda d: (d / "config.json").write_text("[1, 2]"), 'config.json has no "model_type"'),
    (lambda d: (d / "config.json").unlink(), "has no config.json"),
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-64]),
     "model.safetensors is truncated"),
])  # fmt: skip
def test_a_bad_model_folder_is_exit_2_before_anything_loads(tmp_path, capsys, model_dir, damage, fragment):
    folder = _copy(model_dir, tmp_path / "model")
    damage(folder)
    before = {f.name: f.read_bytes() for f in folder.iterdir()}
    out = tmp_path / "out"
    rc, err = run(["discover", "--task", "toy_ioi", "--model", str(folder), "--out", str(out)], capsys)
    assert rc == 2
    one_line_error(err, str(folder), fragment)
    assert "weights_only" not in err
    assert not out.exists()
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == before


def test_a_bad_dataset_file_is_refused_before_the_model_loads(tmp_path, capsys):
    data = tmp_path / "task.json"
    data.write_text(json.dumps({"prompts": [{"clean": [3, 4], "corrupt": [3, 5], "answers": [1],
                                             "wrong_answer": [2]}]}))  # fmt: skip
    before = data.read_bytes()
    out = tmp_path / "out"
    rc, err = run(["discover", "--task", str(data), "--model", "no-such-model", "--out", str(out)], capsys)
    assert rc == 2 and "no-such-model" in err  # the model is checked first
    rc, err = run(["discover", "--task", str(data), "--model", "toy-ioi", "--out", str(out)], capsys)
    assert rc == 2
    one_line_error(err, f"{data}: prompt 0: unknown key 'wrong_answer' (did you mean 'wrong_answers'?)")
    assert not out.exists() and data.read_bytes() == before


def test_a_failure_while_loading_leaves_no_folder(tmp_path, capsys, monkeypatch):
    """Whatever fails while the model and data load (here: the toy model), the output
    folder is not made yet."""
    import edgewise.benchmarks.tasks as tasks

    def broken(name, device="cpu", **options):
        raise ValueError(f"cannot load model {name!r}: broken on purpose")

    monkeypatch.setattr(tasks, "load_model", broken)
    out = tmp_path / "out"
    rc, err = run(["discover", "--task", "toy_ioi", "--out", str(out)], capsys)
    assert rc == 2 and "broken on purpose" in err and not out.exists()
