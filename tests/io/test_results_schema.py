"""Hand-edited or damaged files edgewise reads back are checked whole before use:
``results.json``, the resume state ``checkpoints/<algo>.json`` and the folder marker.
Random mutations of a valid ``results.json`` (deleted keys, wrong types, wrong lengths,
NaN, nested junk) raise :class:`FieldError` naming the mutated field by its JSON path,
never a raw traceback or a report drawn from a wrong file, and leave the user's file
byte-identical.

The valid files come from real runs: the shipped toy IOI task (token positions, an
official circuit, so ROC and AUC) with bootstrap intervals, and an 8-prompt toy IOI
dataset (no positions)."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgewise.cli import main
from edgewise.io.results_folder import MARKER
from edgewise.io.schema import FieldError, check_marker, check_results_doc, check_resume_state, join

from folders import ROOT, api

FIX = "rerun discover"
pytestmark = pytest.mark.usefixtures("few_circuit_sizes")


def one_error_line(err: str, error: Exception) -> None:
    """``err`` (stderr) ends with the one line ``edgewise: error: <error>``: no traceback,
    no other error (model loading's progress bars may come before it)."""
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if "error" in line.lower()] == [
        f"edgewise: error: {error}"]
    assert err.endswith(f"edgewise: error: {error}\n")


@pytest.fixture(scope="module")
def positional(tmp_path_factory, few_circuit_sizes) -> Path:
    out = tmp_path_factory.mktemp("positional") / "run"
    assert main(["discover", "--task", "toy_ioi", "--algo", "eap", "--bootstrap", "3",
                 "--batch-size", "32", "--quiet", "--out", str(out)]) == 0  # fmt: skip
    return out


@pytest.fixture(scope="module")
def toy(tmp_path_factory, few_circuit_sizes) -> Path:
    data = tmp_path_factory.mktemp("data") / "prompts.json"
    doc = json.loads((ROOT / "src/edgewise/datasets/toy_ioi.json").read_text())
    doc["prompts"] = doc["prompts"][:8]
    data.write_text(json.dumps(doc))
    out = tmp_path_factory.mktemp("toy") / "run"
    assert main(["discover", "--task", str(data), "--model", "toy-ioi", "--algo", "eap",
                 "random", "--batch-size", "4", "--quiet", "--out", str(out)]) == 0  # fmt: skip
    return out


def results_of(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "results.json").read_text())


def test_what_discover_writes_passes_whole(positional, toy):
    t = results_of(positional)
    r = t["algorithms"]["eap"]
    assert t["seq_len"] is not None and {"roc", "auc", "official_edges", "bootstrap"} <= set(r)
    assert all(isinstance(e["seq_idx"], int) for e in r["top_edges"])
    assert "ci" in r["top_edges"][0] and "scores" in r["bootstrap"]
    for folder in (positional, toy):
        doc = results_of(folder)
        assert check_results_doc(doc, "results.json", FIX) == doc
        for algo in doc["algorithms"]:
            state = json.loads((folder / "checkpoints" / f"{algo}.json").read_text())
            check_resume_state(state, "s.json", FIX, doc["n_edges"], doc["seq_len"], algo)
        check_marker(json.loads((folder / MARKER).read_text()), MARKER, FIX)


# ------------------------------------------------------------------ mutations
def walk(v: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """Every (path, value) below the root; algorithms' parameters are free-form JSON and
    left out."""
    out = []
    items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
    for k, x in items:
        if k == "parameters":
            continue
        out.append(((*path, k), x))
        out.extend(walk(x, (*path, k)))
    return out


def jpath(path: tuple) -> str:
    s = ""
    for k in path:
        s = join(s, k)
    return s


def get(doc: Any, path: tuple) -> Any:
    for k in path:
        doc = doc[k]
    return doc


def required(path: tuple, doc: dict[str, Any]) -> bool:
    """Keys ``results.json`` must have at ``path`` (the test's own list)."""
    n = len(path)
    if n == 1:
        return path[0] in ("model", "task", "n_edges", "algorithms")
    if n == 3 and path[0] == "algorithms":
        return path[2] in ("metric", "measurements", "top_edges")
    if n == 4 and path[2] == "roc":
        return path[3] in ("fpr", "tpr")
    if n == 5 and path[2] == "top_edges":
        return path[4] in ("edge", "score") or (path[4] == "seq_idx" and doc["seq_len"] is not None)
    return False


def length_bound(path: tuple, doc: dict[str, Any]) -> list[str] | None:
    """For a list whose length is fixed or must match another list's: the JSON paths an
    error about its changed length may name; ``None`` for a list of free length."""
    last, parent = path[-1], path[-2] if len(path) > 1 else None
    if last == "ci" or (parent == "bootstrap" and last in ("cpr", "cmd")):
        return [jpath(path)]
    if parent in ("measurements", "faithfulness", "official_edges") and isinstance(last, int):
        return [jpath(path)]
    if last in ("fpr", "tpr"):
        return [jpath(path), jpath((*path[:-1], "tpr"))]
    if last == "faithfulness":
        return [jpath(path)]
    if last == "measurements":
        algo = get(doc, path[:-1])
        partners = [jpath((*path[:-1], "faithfulness"))] if "faithfulness" in algo else []
        if "faithfulness" in algo.get("bootstrap", {}):
            partners.append(jpath((*path[:-1], "bootstrap", "faithfulness")))
        return [jpath(path), *partners] if partners else None
    return None


JUNK_LEAF = st.sampled_from([None, "junk", math.nan, True])
JUNK = st.recursive(JUNK_LEAF, lambda kids: st.lists(kids, min_size=1, max_size=3) | st.dictionaries(
    st.sampled_from(["junk", "x1", "zz"]), kids, min_size=1, max_size=2), max_leaves=6)
CONTAINER_JUNK = JUNK.filter(lambda v: isinstance(v, list | dict))
ALL_OPTIONAL = ("settings", "bootstrap", "scores")  # objects a junk object leaves valid


def mutations(doc: dict[str, Any]) -> dict[str, list[tuple]]:
    nodes = walk(doc)
    return {
        "delete": [p for p, _ in nodes if required(p, doc)],
        "retype": [p for p, _ in nodes],
        "nan": [p for p, v in nodes if isinstance(v, int | float) and not isinstance(v, bool)],
        "length": [p for p, v in nodes if isinstance(v, list) and length_bound(p, doc)],
        "junk": [p for p, _ in nodes],
    }


@st.composite
def mutated(draw, docs: list[dict[str, Any]]) -> tuple[dict[str, Any], str, list[str]]:
    """A mutated copy of one of ``docs``, the mutation, and the JSON paths its error may
    name (the field itself, or one under it, or the list its length must match)."""
    base = draw(st.sampled_from(docs), label="doc")
    kinds = mutations(base)
    kind = draw(st.sampled_from(sorted(k for k, v in kinds.items() if v)), label="kind")
    path = draw(st.sampled_from(kinds[kind]), label="path")
    doc = copy.deepcopy(base)
    parent, key = get(doc, path[:-1]), path[-1]
    value = parent[key]
    if kind == "delete":
        del parent[key]
    elif kind == "retype":
        if isinstance(value, dict):
            parent[key] = [1]
        elif isinstance(value, list):
            parent[key] = {"junk": 1}
        elif isinstance(value, str):
            parent[key] = 12345
        else:
            parent[key] = "junk"
    elif kind == "nan":
        parent[key] = math.nan
    elif kind == "length":
        if draw(st.booleans(), label="drop"):
            value.pop()
        else:
            value.append(copy.deepcopy(value[-1]))
        return doc, f"{kind} {jpath(path)}", length_bound(path, base)  # type: ignore[return-value]
    else:
        junk = draw(CONTAINER_JUNK if key not in ALL_OPTIONAL else JUNK.filter(
            lambda v: isinstance(v, list)), label="junk")
        parent[key] = junk
    return doc, f"{kind} {jpath(path)}", [jpath(path)]


def names_one_of(field: str, allowed: list[str]) -> bool:
    """``field`` is one of ``allowed`` or lies under one (``a.b[2]`` under ``a.b``)."""
    return any(field == a or field.startswith(a + ".") or field.startswith(a + "[")
               for a in allowed)  # fmt: skip


@pytest.fixture(scope="module")
def docs(positional, toy) -> list[dict[str, Any]]:
    return [results_of(positional), results_of(toy)]


@settings(max_examples=400)
@given(st.data())
def test_every_mutation_is_named_by_its_json_path(docs, data):
    doc, what, allowed = data.draw(mutated(docs))
    with pytest.raises(FieldError) as e:
        check_results_doc(doc, "runs/x/results.json", FIX)
    assert names_one_of(e.value.field, allowed), (what, str(e.value))
    msg = str(e.value)
    assert msg.startswith("runs/x/results.json: ") and msg.endswith(f"; {FIX}")
    missing = e.value.field.rsplit(".", 1)[-1]
    assert f"field {e.value.field} " in msg or (" lacks " in msg and f"'{missing}'" in msg), msg


@pytest.fixture(scope="module")
def folder(tmp_path_factory, toy) -> Path:
    out = tmp_path_factory.mktemp("mutated") / "run"
    shutil.copytree(toy, out)
    return out


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())  # capsys is read out before each command: one fixture serves every example
def test_commands_refuse_a_mutated_results_json_and_leave_it_alone(folder, docs, capsys, data):
    doc, what, allowed = data.draw(mutated(docs[1:]))  # the toy folder's own results
    path = folder / "results.json"
    text = json.dumps(doc)  # NaN written as JSON's NaN token, as Python reads it back
    path.write_text(text)
    (folder / "report.html").unlink(missing_ok=True)
    command = data.draw(st.sampled_from(["report", "evaluate"]), label="command")
    with pytest.raises(FieldError) as e:
        api([command, str(folder), "--quiet"])
    assert names_one_of(e.value.field, allowed), (what, str(e.value))
    capsys.readouterr()
    assert main([command, str(folder), "--quiet"]) == 2
    one_error_line(capsys.readouterr().err, e.value)
    assert path.read_text() == text and not (folder / "report.html").exists()


# ------------------------------------------------------------------ worked examples
@pytest.mark.parametrize(("edit", "field", "says"), [
    (lambda d: d["algorithms"]["eap"]["top_edges"][0].update(seq_idx=d["seq_len"]),
     "algorithms.eap.top_edges[0].seq_idx", "is 15, out of range (must be from 0 to 14)"),
    (lambda d: d["algorithms"]["eap"]["faithfulness"][1].__setitem__(0, 1),
     "algorithms.eap.faithfulness[1][0]", "is size 1, but algorithms.eap.measurements has size"),
    (lambda d: d["algorithms"]["eap"]["roc"]["tpr"].__setitem__(slice(1, 3), [1.0, 0.5]),
     "algorithms.eap.roc.tpr[2]", "is 0.5, below the previous 1.0: a ROC curve never decreases"),
    (lambda d: d["algorithms"]["eap"]["top_edges"][0].update(ci=[2.0, 1.0]),
     "algorithms.eap.top_edges[0].ci", "is [2.0, 1.0]: its lower end exceeds its upper end"),
    (lambda d: d["algorithms"]["eap"]["top_edges"].append(d["algorithms"]["eap"]["top_edges"][0]),
     "algorithms.eap.top_edges[20]", "repeats the edge"),
    (lambda d: d["algorithms"]["eap"]["bootstrap"].update(level=1.0),
     "algorithms.eap.bootstrap.level", "is 1.0: a confidence level lies strictly between"),
    (lambda d: d["settings"].update(model="tracr-reverse"),
     "settings.model", "is 'tracr-reverse', but model is 'toy-ioi': they must agree"),
    (lambda d: d["algorithms"]["eap"].update(algorithm="ig"),
     "algorithms.eap.algorithm", "is 'ig', but these are the results of 'eap'"),
    (lambda d: d["algorithms"]["eap"]["top_edges"][0].update(edge="A0.0->nowhere"),
     "algorithms.eap.top_edges[0].edge", "must be an edge name like 'A0.1->A1.2.Q'"),
    (lambda d: d["algorithms"]["eap"].update(auc=1.5),
     "algorithms.eap.auc", "is 1.5, out of range (must be within [0.0, 1.0])"),
])
def test_worked_examples(positional, edit, field, says):
    doc = results_of(positional)
    assert doc["seq_len"] == 15 and len(doc["algorithms"]["eap"]["top_edges"]) == 20
    assert doc["algorithms"]["eap"]["measurements"][1][0] > 1
    edit(doc)
    with pytest.raises(FieldError) as e:
        check_results_doc(doc, "results.json", FIX)
    assert e.value.field == field and f"field {field} {says}" in str(e.value), str(e.value)


def _copy(src: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(src, out)
    return out


@pytest.mark.parametrize(("edit", "field"), [
    (lambda s: s.update(fingerprint=[]), "fingerprint"),
    (lambda s: s["fingerprint"].update(weights_sha256="abc"), "fingerprint.weights_sha256"),
    (lambda s: s.update(seconds=-1.0), "seconds"),
    (lambda s: s.pop("seconds"), "seconds"),
    (lambda s: s["result"]["measurements"][0].__setitem__(1, math.nan),
     "result.measurements[0][1]"),
    (lambda s: s["result"].update(bootstrap=[]), "result.bootstrap"),
])
def test_a_damaged_resume_state_is_named(toy, tmp_path, edit, field, capsys):
    run = _copy(toy, tmp_path)
    path = run / "checkpoints" / "eap.json"
    state = json.loads(path.read_text())
    edit(state)
    path.write_text(json.dumps(state))
    results = json.loads((run / "results.json").read_text())
    argv = ["discover", "--task", results["task"], "--model", "toy-ioi", "--algo", "eap",
            "--batch-size", "4", "--quiet", "--out", str(run)]  # fmt: skip
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(FieldError) as e:
        api(argv)
    assert e.value.field == field and str(e.value).endswith("; rerun with --fresh to start over")
    capsys.readouterr()
    assert main(argv) == 2
    one_error_line(capsys.readouterr().err, e.value)
    assert {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(("edit", "field"), [
    (lambda m: m.update(model=["toy-ioi"]), "model"),
    (lambda m: m.pop("task"), "task"),
    (lambda m: m.update(created_by_version=1), "created_by_version"),
])
def test_a_damaged_marker_is_named(toy, tmp_path, edit, field, capsys):
    run = _copy(toy, tmp_path)
    marker = json.loads((run / MARKER).read_text())
    edit(marker)
    (run / MARKER).write_text(json.dumps(marker))
    for command in ("report", "evaluate"):
        with pytest.raises(FieldError) as e:
            api([command, str(run), "--quiet"])
        assert e.value.field == field and "marks" in str(e.value)
        capsys.readouterr()
        assert main([command, str(run), "--quiet"]) == 2
        one_error_line(capsys.readouterr().err, e.value)
    assert not (run / "report.html").exists()


# ------------------------------------------------------------------ torch checkpoints
@pytest.mark.parametrize("algo", ["acdc", "exact"])
def test_a_checkpoint_missing_part_of_its_state_is_named(tmp_path, algo):
    """An ACDC or exact-patching checkpoint whose settings match but whose saved state is
    incomplete (or not a dict at all) is a FileFormatError naming it, not a KeyError."""
    import torch

    from edgewise import patchable_model
    from edgewise.io import FileFormatError
    from edgewise.models import random_model
    from edgewise.prune_algos import acdc_prune_scores, exact_patching_prune_scores

    from util import random_loader

    pm = patchable_model(random_model(n_layers=1, d_vocab=20))
    path = tmp_path / f"{algo}.pt"

    def score():
        if algo == "acdc":
            return acdc_prune_scores(pm, random_loader(vocab=20), None, [-2], [1], progress=False,
                                     checkpoint=path)  # fmt: skip
        return exact_patching_prune_scores(pm, random_loader(vocab=20), progress=False,
                                           checkpoint=path)  # fmt: skip

    first = score()
    state = torch.load(path, weights_only=True)
    assert all(torch.equal(first[k], score()[k]) for k in first)  # a whole checkpoint resumes
    if algo == "acdc":
        state["groups"] = [{"taus": [0.01]}]  # no masks
    else:
        state["scores"] = {}
    for damaged in (state, [1, 2, 3]):
        torch.save(damaged, path)
        with pytest.raises(FileFormatError, match=rf"checkpoint {path} .*delete it \(or pass "
                                                  r"--fresh\)"):
            score()
