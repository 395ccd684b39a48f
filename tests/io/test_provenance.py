"""Every saved result records what produced it (model name and kind, a fingerprint of
the weights, task and data hash, batching, graph, algorithm and parameters, library
versions) and is refused when used with anything else: through the API (the exact error
class, naming the field and both values) and the command line (one ``edgewise: error:``
line, exit 2), with the user's files byte-identical after the refusal.

"Another model" is the shipped toy model with one weight changed: the same graph, the
same name, other numbers."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgewise import patchable_model
from edgewise.cli import DataChangedError, main
from edgewise.io import load_mib_json, load_prune_scores, save_mib_json, save_prune_scores
from edgewise.io.provenance import (
    RUN_FIELDS,
    ProvenanceError,
    ProvenanceWarning,
    model_provenance,
    weights_sha256,
)
from edgewise.io.schema import FieldError
from edgewise.models import random_model

from folders import ROOT, RUN, api, cli_error, dataset, snapshot
from util import hooked_only

pytestmark = pytest.mark.usefixtures("few_circuit_sizes")


# ------------------------------------------------------------------ helpers
def refused(argv: list[str], error: type[Exception], pattern: str, folder: Path, capsys) -> str:
    """``argv`` raises ``error`` matching ``pattern`` through the API and fails with one
    line (exit 2) on the command line; nothing under ``folder`` changes. Returns the line."""
    before = snapshot(folder)
    with pytest.raises(error, match=pattern) as e:
        api(argv)
    assert type(e.value) is error
    line = cli_error(argv, capsys)
    assert str(e.value) in line
    assert snapshot(folder) == before
    return line


def perturb(monkeypatch) -> None:
    """Every model loaded by name from now on has one weight changed by 0.01."""
    import edgewise.benchmarks.tasks as tasks

    real = tasks.load_model

    def load(name, device="cpu", **options):
        model = real(name, device, **options)
        with torch.no_grad():
            next(model.parameters()).view(-1)[0] += 0.01
        return model

    monkeypatch.setattr(tasks, "load_model", load)


def short(sha: str) -> str:
    return f"'{sha[:12]}…'"


@pytest.fixture(scope="module")
def other_model(tmp_path_factory, few_circuit_sizes, data) -> Path:
    """The same command on the toy model with one weight changed."""
    out = tmp_path_factory.mktemp("other_model") / "run"
    with pytest.MonkeyPatch.context() as m:
        perturb(m)
        assert main(["discover", "--task", str(data), "--algo", "eap", *RUN, "--out",
                     str(out)]) == 0  # fmt: skip
    return out


# ------------------------------------------------------------- the weights fingerprint
@pytest.fixture(scope="module")
def tiny():
    return random_model(n_layers=2, d_vocab=20, seed=0)


def test_the_fingerprint_is_sha256_of_every_parameter_in_name_order(tiny):
    lines = []
    for name, p in sorted(tiny.named_parameters()):
        data = p.detach().contiguous().numpy().tobytes()
        lines.append(f"{name};{p.dtype};{tuple(p.shape)};{hashlib.sha256(data).hexdigest()}\n")
    assert weights_sha256(tiny) == hashlib.sha256("".join(lines).encode()).hexdigest()
    assert weights_sha256(patchable_model(tiny)) == weights_sha256(tiny)  # wrapped: the same
    same = random_model(n_layers=2, d_vocab=20, seed=0)
    assert weights_sha256(same) == weights_sha256(tiny)
    assert weights_sha256(random_model(n_layers=2, d_vocab=20, seed=1)) != weights_sha256(tiny)
    wider = random_model(n_layers=2, d_vocab=20, seed=0, dtype=torch.float64)
    assert weights_sha256(wider) != weights_sha256(tiny)  # same values, other dtype


@settings(max_examples=40)
@given(st.data())
def test_any_changed_weight_changes_the_fingerprint_and_back(tiny, data):
    params = sorted(tiny.named_parameters())
    name, p = data.draw(st.sampled_from(params), label="parameter")
    i = data.draw(st.integers(0, p.numel() - 1), label="element")
    delta = data.draw(st.sampled_from([1e-6, -0.5, 3.0]), label="delta")
    at = tuple(int(j) for j in torch.unravel_index(torch.tensor(i), p.shape))  # any strides
    before = weights_sha256(tiny)
    with torch.no_grad():
        old = p[at].item()
        p[at] += delta  # in place: the cached fingerprint must not be reused
    try:
        assert weights_sha256(tiny) != before, name
    finally:
        with torch.no_grad():
            p[at] = old
    assert weights_sha256(tiny) == before


def test_the_fingerprint_is_the_same_in_another_process(tiny):
    code = ("from edgewise.models import random_model; from edgewise.io.provenance import "
            "weights_sha256; print(weights_sha256(random_model(n_layers=2, d_vocab=20, seed=0)))")
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.split()[-1]  # fmt: skip
    assert got == weights_sha256(tiny)


# ------------------------------------------------------------- scores files, the API
@pytest.fixture(scope="module")
def two():
    """Two models with the same graph and other weights."""
    return (patchable_model(random_model(n_layers=2, d_vocab=20, seed=0)),
            patchable_model(random_model(n_layers=2, d_vocab=20, seed=1)))


def scores_for(pm, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(m.mask_shape, generator=gen) for n, m in pm.dest_modules.items()}


def test_load_prune_scores_refuses_scores_of_another_model(two, tmp_path):
    a, b = two
    assert [e.name for e in a.edges] == [e.name for e in b.edges]
    scores = scores_for(a)
    path = save_prune_scores(tmp_path / "s.safetensors", scores, a, {"algorithm": "eap"})
    _, meta = load_prune_scores(path)
    assert {k: meta[k] for k in model_provenance(a)} == model_provenance(a)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # recorded and equal: no warning
        back, _ = load_prune_scores(path, a)
    assert all(torch.equal(back[k], scores[k]) for k in scores)
    with pytest.raises(ProvenanceError) as e:
        load_prune_scores(path, b)
    msg = str(e.value)
    assert msg.startswith(f"{path} was produced with other settings: weights_sha256: saved "
                          f"{short(weights_sha256(a))}, now {short(weights_sha256(b))}")
    assert msg.endswith("use the model these scores were computed on, or compute the scores "
                        "again on this model")

    p = next(a.wrapped_model.parameters())
    old = p.view(-1)[0].item()
    with torch.no_grad():
        p.view(-1)[0] += 1.0  # the same model, trained further after saving
    try:
        with pytest.raises(ProvenanceError, match="weights_sha256"):
            load_prune_scores(path, a)
    finally:
        with torch.no_grad():
            p.view(-1)[0] = old
    load_prune_scores(path, a)


def test_scores_without_provenance_load_with_a_warning(two, tmp_path):
    a, _ = two
    scores = scores_for(a)
    path = save_prune_scores(tmp_path / "s.safetensors", scores)  # no model: no identity
    with pytest.warns(ProvenanceWarning, match=r"s\.safetensors records no model identity"):
        back, _ = load_prune_scores(path, a)
    assert all(torch.equal(back[k], scores[k]) for k in scores)


@hooked_only("a HookedTransformer's recorded model_kind against a bridge's")
def test_the_model_kind_is_part_of_its_identity(tmp_path):
    hooked = patchable_model(random_model(n_layers=1, d_vocab=20, kind="hooked"))
    bridge = patchable_model(random_model(n_layers=1, d_vocab=20, kind="bridge"))
    assert [e.name for e in hooked.edges] == [e.name for e in bridge.edges]
    path = save_prune_scores(tmp_path / "s.safetensors", scores_for(hooked), hooked)
    with pytest.raises(ProvenanceError, match="model_kind: saved 'HookedTransformer', now "
                                              "'TransformerBridge' \\(also different: "
                                              "weights_sha256\\)"):
        load_prune_scores(path, bridge)


def test_mib_json_records_provenance_outside_mibs_keys(two, tmp_path):
    from edgewise.mib.submission import validate_file

    a, b = two
    scores = scores_for(a)
    plain = save_mib_json(tmp_path / "plain.json", a, scores)
    assert set(json.loads(plain.read_text())) == {"cfg", "nodes", "edges"}  # MIB's own files
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # another tool's file: nothing to check, no warning
        load_mib_json(plain, b)

    path = save_mib_json(tmp_path / "g.json", a, scores, set(a.edges[:3]),
                         provenance={"algorithm": "eap", "task": "toy"})
    doc = json.loads(path.read_text())
    assert doc["edgewise"] == {"algorithm": "eap", "task": "toy", **model_provenance(a)}
    assert set(doc) == {"cfg", "nodes", "edges", "edgewise"}
    assert doc["cfg"] == json.loads(plain.read_text())["cfg"]
    validate_file(path)  # still valid for MIB: its loader reads cfg, nodes and edges only
    back, circuit = load_mib_json(path, a)
    assert circuit == set(a.edges[:3])
    with pytest.raises(ProvenanceError, match=r"g\.json was produced with other settings: "
                                              r"weights_sha256"):
        load_mib_json(path, b)
    doc["edgewise"] = {"weights_sha256": [1]}
    path.write_text(json.dumps(doc))
    with pytest.raises(FieldError, match=r"g\.json: field edgewise\.weights_sha256 must be a "
                                         r"sha256") as e:
        load_mib_json(path, a)
    assert e.value.field == "edgewise.weights_sha256"


# ------------------------------------------------------------- the command line
def test_discover_records_provenance_everywhere(finished, data):
    results = json.loads((finished / "results.json").read_text())
    settings_ = results["settings"]
    fields = [*RUN_FIELDS[:2], "dtype", *RUN_FIELDS[2:]]  # the dtype after model_kind
    assert list(settings_) == [*fields, "device"]  # the device is recorded, not compared
    assert (settings_["dtype"], settings_["device"]) == ("float32", "cpu")
    settings_ = {k: settings_[k] for k in fields}
    assert settings_["model"] == "toy-ioi" and settings_["task"] == str(data)
    assert settings_["batch_size"] == 4 and settings_["seq_len"] is None
    from edgewise.benchmarks.tasks import load_model

    model = load_model("toy-ioi")
    assert {k: settings_[k] for k in model_provenance(model)} == model_provenance(model)
    params = results["algorithms"]["eap"]["parameters"]
    assert params["grad_function"] == "logit" and params["answer_function"] == "avg_diff"
    _, meta = load_prune_scores(finished / "scores_eap.safetensors")
    assert {k: meta[k] for k in fields} == settings_
    assert meta["algorithm"] == "eap" and meta["parameters"] == params
    state = json.loads((finished / "checkpoints" / "eap.json").read_text())
    assert {k: state["fingerprint"][k] for k in fields} == settings_
    mib = json.loads((finished / "circuit_eap_mib.json").read_text())
    assert {k: mib["edgewise"][k] for k in fields} == settings_


def test_evaluate_and_report_refuse_scores_of_another_model(run, other_model, data, capsys):
    """The tester's case: a scores file computed on another model with the same graph and
    prompts, dropped into a results folder."""
    a = json.loads((run / "results.json").read_text())["settings"]["weights_sha256"]
    b = json.loads((other_model / "results.json").read_text())["settings"]["weights_sha256"]
    assert a != b
    shutil.copy(other_model / "scores_eap.safetensors", run / "scores_eap.safetensors")
    says = (rf"scores_eap\.safetensors was produced with other settings: weights_sha256: saved "
            rf"{short(b)}, results\.json has {short(a)}; it is not the scores file of the "
            r"results in results\.json: restore that one, or rerun edgewise discover with --fresh")
    refused(["evaluate", str(run), "--quiet"], ProvenanceError, says, run, capsys)
    refused(["report", str(run)], ProvenanceError, says, run, capsys)
    assert not (run / "report.html").exists()
    # resuming discover in that folder: the scores are not this run's either
    refused(["discover", "--task", str(data), "--algo", "eap", *RUN, "--out", str(run)],
            ProvenanceError, r"scores_eap\.safetensors was produced with other settings: "
            rf"weights_sha256: saved {short(b)}, now {short(a)}.*--fresh", run, capsys)


def test_mib_commands_refuse_scores_of_another_model(other_model, tmp_path, capsys):
    """MIB's commands check the model only: their prompts are MIB's (the shipped toy IOI
    task here), not those the scores were computed on."""
    from edgewise.benchmarks.tasks import load_model

    a = weights_sha256(load_model("toy-ioi"))
    b = json.loads((other_model / "results.json").read_text())["settings"]["weights_sha256"]
    says = rf"weights_sha256: saved {short(b)}, now {short(a)}"
    for scores in ("scores_eap.safetensors", "circuit_eap_mib.json"):
        path = str(other_model / scores)
        refused(["mib", "evaluate", path, "--model", "toy-ioi", "--task", "toy_ioi", "--quiet"],
                ProvenanceError, says, other_model, capsys)
        out = tmp_path / "export"
        refused(["mib", "export", path, "--model", "toy-ioi", "--task", "toy_ioi",
                 "--mib-model", "gpt2", "--mib-task", "ioi", "--out", str(out)],
                ProvenanceError, says, other_model, capsys)
        assert not out.exists()


def test_evaluate_refuses_when_the_weights_changed_since_discover(run, monkeypatch, capsys):
    a = json.loads((run / "results.json").read_text())["settings"]["weights_sha256"]
    perturb(monkeypatch)
    refused(["evaluate", str(run), "--quiet"], ProvenanceError,
            rf"scores_eap\.safetensors was produced with other settings: weights_sha256: saved "
            rf"{short(a)}, now '[0-9a-f]{{12}}…'; the model's weights changed since discover ran"
            r": restore them, or rerun edgewise discover with --fresh", run, capsys)


def test_evaluate_refuses_scores_of_other_prompts(run, data, tmp_path, capsys):
    """Scores of the same task file with other prompts in it (the file was edited between
    two runs): the data hash tells them apart."""
    saved = data.read_text()
    other = tmp_path / "other"
    try:
        dataset(data, reverse=True)
        assert main(["discover", "--task", str(data), "--algo", "eap", *RUN, "--out",
                     str(other)]) == 0  # fmt: skip
    finally:
        data.write_text(saved)
    shutil.copy(other / "scores_eap.safetensors", run / "scores_eap.safetensors")
    refused(["evaluate", str(run), "--quiet"], ProvenanceError,
            r"scores_eap\.safetensors was produced with other settings: data_sha256: saved "
            r"'[0-9a-f]{12}…', results\.json has '[0-9a-f]{12}…'", run, capsys)


@pytest.mark.parametrize(("field", "value", "shown"), [
    ("batch_size", 2, "batch_size: saved 2, results.json has 4"),
    ("parameters", "avg_val", "parameters: saved {"),
    ("algorithm", "ig", "algorithm: saved 'ig', results.json has 'eap'"),
    ("model", "tracr-reverse", "model: saved 'tracr-reverse', results.json has 'toy-ioi'"),
])
def test_evaluate_refuses_scores_of_other_settings(run, field, value, shown, capsys):
    """A scores file rewritten (through edgewise's own writer, so its checksum holds) with
    one recorded setting changed."""
    path = run / "scores_eap.safetensors"
    scores, meta = load_prune_scores(path)
    if field == "parameters":
        meta["parameters"] = {**meta["parameters"], "answer_function": value}
    else:
        meta[field] = value
    save_prune_scores(path, scores, None, meta)
    line = refused(["evaluate", str(run), "--quiet"], ProvenanceError, "was produced with "
                   "other settings", run, capsys)  # fmt: skip
    assert f"scores_eap.safetensors was produced with other settings: {shown}" in line


def test_another_version_is_refused(run, data, monkeypatch, capsys):
    import edgewise
    import edgewise.io.provenance as provenance

    saved = re.escape(edgewise.__version__)
    with monkeypatch.context() as m:
        m.setattr(edgewise, "__version__", "9.9.9")
        refused(["evaluate", str(run), "--quiet"], ProvenanceError,
                rf"edgewise_version: saved '{saved}', now '9\.9\.9'; install the edgewise "
                r"version that computed them, or rerun edgewise discover with --fresh",
                run, capsys)
        refused(["discover", "--task", str(data), "--algo", "eap", *RUN, "--out", str(run)],
                ProvenanceError, r"checkpoints/eap\.json was produced with other settings: "
                rf"edgewise_version: saved '{saved}', now '9\.9\.9'.*--fresh", run, capsys)
    real = provenance.library_versions
    monkeypatch.setattr(provenance, "library_versions",
                        lambda: {**real(), "transformer_lens_version": "0.0.1"})
    refused(["evaluate", str(run), "--quiet"], ProvenanceError,
            r"transformer_lens_version: saved '[^']+', now '0\.0\.1'; install the "
            r"TransformerLens version", run, capsys)


def test_results_written_before_provenance(run, data, capsys):
    """Older results (no weights, kind or versions recorded): evaluate and resuming refuse
    with the fix; report draws them with a warning."""
    new = ("model_kind", "weights_sha256", "edgewise_version", "transformer_lens_version")
    results = json.loads((run / "results.json").read_text())
    for k in new:
        del results["settings"][k]
    del results["algorithms"]["eap"]["parameters"]
    (run / "results.json").write_text(json.dumps(results))
    state_path = run / "checkpoints" / "eap.json"
    state = json.loads(state_path.read_text())
    for k in new:
        del state["fingerprint"][k]
    state_path.write_text(json.dumps(state))
    refused(["evaluate", str(run), "--quiet"], ProvenanceError,
            r"results\.json records no model_kind, weights_sha256, edgewise_version, "
            r"transformer_lens_version \(settings\).*rerun edgewise discover with --fresh",
            run, capsys)
    refused(["discover", "--task", str(data), "--algo", "eap", *RUN, "--out", str(run)],
            ProvenanceError, r"checkpoints/eap\.json records no model_kind \(written before "
            r"edgewise recorded where results come from.*now '(HookedTransformer|"
            r"TransformerBridge)' \(also different: weights_sha256, edgewise_version, "
            r"transformer_lens_version\); rerun with --fresh", run, capsys)
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("edgewise: warning: ") and "results.json records no model weights" in err
    assert (run / "report.html").exists()


def test_report_refuses_results_json_of_another_folder(run, capsys):
    """A results.json edited (consistently) to name another task: the folder's marker
    says which task it holds."""
    results = json.loads((run / "results.json").read_text())
    results["task"] = results["settings"]["task"] = "toy_ioi"
    (run / "results.json").write_text(json.dumps(results))
    refused(["report", str(run)], ProvenanceError,
            r"results\.json holds results of task 'toy_ioi' on model 'toy-ioi', but .* holds "
            r"task '.*prompts\.json' on model 'toy-ioi' \(its \.edgewise marker\)", run, capsys)
    assert not (run / "report.html").exists()


def test_a_data_change_is_still_a_data_changed_error(run, data, capsys):
    saved = data.read_text()
    try:
        dataset(data, reverse=True)
        refused(["evaluate", str(run), "--quiet"], DataChangedError,
                r"scores_eap\.safetensors was computed on other prompts.*hash differs.*--fresh",
                run, capsys)
    finally:
        data.write_text(saved)
