"""Nothing a user has is lost or silently wrong: results folders, saved files, and the
errors for damaged or foreign ones ("lost or overwritten data" and the file
inputs). Each case runs through the API (exact error class) and the command line (one
``edgewise: error:`` line, nonzero exit, no traceback).

The runs use the shipped toy IOI model on an 8-prompt dataset file with EAP, so the
whole file takes seconds."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgewise import patchable_model
from edgewise.cli import DataChangedError, main
from edgewise.io import (
    ChecksumError,
    DiskFullError,
    FileFormatError,
    atomic_write,
    load_mib_json,
    load_prune_scores,
    save_mib_json,
    save_prune_scores,
)
from edgewise.io.results_folder import LOCK, MARKER, FolderInUseError, OutputFolderError
from edgewise.models import random_model
from edgewise.visualize import write_report

from folders import ROOT, RUN, api, cli_error, dataset, snapshot

pytestmark = pytest.mark.usefixtures("few_circuit_sizes")


# ------------------------------------------------------------- 1. evaluate's data
def test_evaluate_from_another_directory_uses_the_saved_data(tmp_path, monkeypatch, capsys):
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    dataset(here / "prompts.json")
    dataset(elsewhere / "prompts.json", reverse=True)  # same name, other prompts
    monkeypatch.chdir(here)
    assert main(["discover", "--task", "prompts.json", "--algo", "eap", *RUN, "--out", "run"]) == 0
    out = here / "run"
    saved = json.loads((out / "results.json").read_text())
    assert saved["task"] == str(here / "prompts.json")  # absolute: found from anywhere

    monkeypatch.chdir(elsewhere)
    assert main(["evaluate", str(out), "--quiet"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["algorithms"]["eap"]["measurements"] == saved["algorithms"]["eap"]["measurements"]
    assert again["algorithms"]["eap"]["seconds"] == saved["algorithms"]["eap"]["seconds"]

    dataset(here / "prompts.json", reverse=True)  # the file changed since discover
    before = snapshot(out)
    with pytest.raises(DataChangedError, match=r"scores_eap\.safetensors.*other prompts.*--fresh"):
        api(["evaluate", str(out), "--quiet"])
    assert "hash differs" in cli_error(["evaluate", str(out), "--quiet"], capsys)
    assert snapshot(out) == before  # results.json untouched


def test_evaluate_checks_the_saved_batch_size_and_names_a_missing_dataset(run, capsys):
    saved = json.loads((run / "results.json").read_text())["algorithms"]["eap"]["measurements"]
    assert main(["evaluate", str(run), "--batch-size", "2", "--quiet"]) == 0  # hash at 4
    again = json.loads((run / "results.json").read_text())["algorithms"]["eap"]["measurements"]
    assert [s for s, _ in again] == [s for s, _ in saved]
    assert [v for _, v in again] == pytest.approx([v for _, v in saved], abs=1e-4)

    results = json.loads((run / "results.json").read_text())
    results["task"] = results["settings"]["task"] = str(run / "gone.json")
    (run / "results.json").write_text(json.dumps(results))
    with pytest.raises(FileNotFoundError, match=r"results\.json names the task .*gone\.json"):
        api(["evaluate", str(run)])
    cli_error(["evaluate", str(run)], capsys)


def test_evaluate_refuses_a_folder_discover_did_not_make(tmp_path, run, capsys):
    (run / MARKER).unlink()
    before = snapshot(run)
    with pytest.raises(OutputFolderError, match="no .edgewise marker"):
        api(["evaluate", str(run)])
    cli_error(["evaluate", str(run)], capsys)
    assert snapshot(run) == before


# ------------------------------------------------------------- 2. one folder, many runs
def test_other_algorithms_results_are_kept_and_fresh_touches_only_its_own(run, data, capsys):
    eap = json.loads((run / "results.json").read_text())["algorithms"]["eap"]
    assert main(["discover", "--task", str(data), "--algo", "random", *RUN, "--out", str(run)]) == 0
    results = json.loads((run / "results.json").read_text())
    assert list(results["algorithms"]) == ["eap", "random"]
    assert results["algorithms"]["eap"] == eap  # kept as it was, seconds included

    eap_scores = (run / "scores_eap.safetensors").read_bytes()
    assert main(["discover", "--task", str(data), "--algo", "random", "--fresh", *RUN,
                 "--out", str(run)]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["algorithms"]["eap"] == eap and isinstance(eap["seconds"], float)
    assert (run / "scores_eap.safetensors").read_bytes() == eap_scores
    assert (run / "checkpoints" / "eap.json").exists()

    capsys.readouterr()
    assert main(["discover", "--task", str(data), "--algo", "eap", "random", *RUN,
                 "--out", str(run)]) == 0
    assert "resuming: eap done, random done" in capsys.readouterr().err
    results = json.loads((run / "results.json").read_text())
    assert all(isinstance(r["seconds"], float) for r in results["algorithms"].values())


def test_one_folder_holds_one_task_and_model(run, data, capsys):
    before = snapshot(run)
    for argv, names in [
        (["--task", "toy_ioi", "--model", "toy-ioi"], ["'toy_ioi'", str(data)]),
        (["--task", str(data), "--model", "tracr-reverse"], ["'tracr-reverse'", "'toy-ioi'"]),
    ]:
        full = ["discover", *argv, "--algo", "random", "--quiet", "--out", str(run)]
        with pytest.raises(OutputFolderError, match="One folder holds one task and model") as e:
            api(full)
        assert all(name in str(e.value) for name in names)
        cli_error(full, capsys)
    # the same task and model with other settings cannot join the results already there
    other = ["discover", "--task", str(data), "--algo", "random", "--model", "toy-ioi",
             "--batch-size", "2", "--quiet", "--out", str(run)]
    with pytest.raises(ValueError, match=r"results\.json holds results of eap.*batch_size: saved 4"):
        api(other)
    assert snapshot(run) == before


# ------------------------------------------------------------- 3. folders edgewise did not make
def test_a_foreign_folder_is_refused_and_left_alone(tmp_path, data, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.json").write_text('{"my": "numbers"}')
    (out / "notes.txt").write_text("notes")
    (out / ".notes.tmp").write_text("draft")
    before = snapshot(out)
    argv = ["discover", "--task", str(data), "--algo", "eap", *RUN, "--out", str(out)]
    with pytest.raises(OutputFolderError, match="files edgewise did not write.*--allow-existing"):
        api(argv)
    cli_error(argv, capsys)
    with pytest.raises(OutputFolderError, match=r"holds results\.json, not written by edgewise"):
        api([*argv, "--allow-existing"])
    assert snapshot(out) == before

    (out / "results.json").unlink()  # nothing of edgewise's name left: allowed when asked
    assert main([*argv, "--allow-existing"]) == 0
    assert (out / "notes.txt").read_text() == "notes" and (out / ".notes.tmp").read_text() == "draft"
    assert (out / MARKER).exists() and not (out / LOCK).exists()
    assert main(argv) == 0  # now edgewise's folder: no flag needed to resume

    (out / ".results.json.abc123.edgewise-tmp").write_text("{half")  # a killed write's
    assert main([*argv, "--fresh"]) == 0
    assert not (out / ".results.json.abc123.edgewise-tmp").exists()
    assert (out / ".notes.tmp").read_text() == "draft"


def test_report_never_replaces_a_report_edgewise_did_not_write(run, capsys):
    (run / MARKER).unlink()
    (run / "report.html").write_text("my report")
    with pytest.raises(OutputFolderError, match=r"report\.html exists"):
        api(["report", str(run)])
    cli_error(["report", str(run)], capsys)
    assert (run / "report.html").read_text() == "my report"


# ------------------------------------------------------------- 4. the lock
def test_a_second_run_in_a_folder_refuses_and_names_the_first(run, data, monkeypatch, capsys):
    import dataclasses

    from edgewise.prune_algos import ALGORITHMS

    argv = ["discover", "--task", str(data), "--algo", "random", *RUN, "--out", str(run)]
    inner = {}
    real = ALGORITHMS["random"]

    def random_then_a_second_run(*args, **kw):  # while the first holds the folder
        with pytest.raises(FolderInUseError) as e:
            api(argv)
        inner["message"] = str(e.value)
        inner["rc"] = main(argv)
        return real.function(*args, **kw)

    monkeypatch.setitem(ALGORITHMS, "random",
                        dataclasses.replace(real, function=random_then_a_second_run))
    assert main(argv) == 0
    assert f"pid {os.getpid()} on host {socket.gethostname()}, started " in inner["message"]
    assert inner["rc"] == 1
    assert not (run / LOCK).exists()  # released at the end


def test_a_live_lock_refuses_and_a_stale_one_is_taken_over(run, data, capsys):
    argv = ["discover", "--task", str(data), "--algo", "eap", *RUN, "--out", str(run)]
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        held = {"pid": sleeper.pid, "host": socket.gethostname(), "started": "2026-01-01 10:00:00"}
        (run / LOCK).write_text(json.dumps(held))
        line = cli_error(argv, capsys, rc=1)
        assert f"pid {sleeper.pid}" in line and "2026-01-01 10:00:00" in line and "delete" in line
        assert json.loads((run / LOCK).read_text()) == held
    finally:
        sleeper.kill()
        sleeper.wait()
    assert main(argv) == 0  # its process is gone: the lock is stale
    assert not (run / LOCK).exists()


@pytest.mark.parametrize("hard_links", [True, False])
def test_the_lock_without_a_command(tmp_path, monkeypatch, hard_links):
    from edgewise.io.results_folder import folder_lock

    if not hard_links:  # some network file systems: exclusive create instead
        def no_link(*a, **k):
            raise OSError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_link)
    with folder_lock(tmp_path):
        held = json.loads((tmp_path / LOCK).read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        with pytest.raises(FolderInUseError, match=f"pid {os.getpid()}"):
            with folder_lock(tmp_path):
                pass
        assert (tmp_path / LOCK).exists()  # the refused one did not remove it
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    (tmp_path / LOCK).write_text("")  # unreadable: refused, never silently taken
    with pytest.raises(FolderInUseError, match="unreadable.*delete"):
        with folder_lock(tmp_path):
            pass


# ------------------------------------------------------------- 5. permissions
@pytest.mark.parametrize(("umask", "mode"), [(0o077, 0o600), (0o022, 0o644), (0o002, 0o664)])
def test_written_files_get_the_mode_open_would_give(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = atomic_write(tmp_path / "a.json", lambda tmp: Path(tmp).write_text("{}"))
        page = write_report({"model": "m", "task": "t", "algorithms": {}}, tmp_path / "r.html")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode
    assert page.stat().st_mode & 0o777 == mode
    os.chmod(path, 0o640)  # replacing a file keeps its mode, as open(path, "w") does
    atomic_write(path, lambda tmp: Path(tmp).write_text("[]"))
    assert path.stat().st_mode & 0o777 == 0o640


# ------------------------------------------------------------- 6. checksums
@pytest.fixture(scope="module")
def pm():
    return patchable_model(random_model(n_layers=2, d_vocab=20))


def scores_for(pm, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(m.mask_shape, generator=gen) for n, m in pm.dest_modules.items()}


def test_every_changed_byte_of_a_scores_file_is_caught(pm, tmp_path):
    path = save_prune_scores(tmp_path / "s.safetensors", scores_for(pm), pm, {"algorithm": "eap"})
    good = path.read_bytes()
    for offset in range(0, len(good), 3):
        bad = bytearray(good)
        bad[offset] ^= 0xFF
        path.write_bytes(bytes(bad))
        with pytest.raises(FileFormatError, match=str(path)):
            load_prune_scores(path, pm)


def test_damaged_truncated_and_empty_scores_files(run, capsys):
    path = run / "scores_eap.safetensors"
    good = path.read_bytes()
    path.write_bytes(good[:-8] + bytes(b ^ 0xFF for b in good[-8:]))  # overwritten tensor bytes
    with pytest.raises(ChecksumError, match=r"scores_eap\.safetensors was changed or damaged"):
        load_prune_scores(path)
    assert "--fresh" in cli_error(["evaluate", str(run)], capsys)
    for content, says in [(good[: len(good) // 2], "not a readable safetensors"), (b"", "empty")]:
        path.write_bytes(content)
        with pytest.raises(FileFormatError, match=f"scores_eap.safetensors is {says}"):
            load_prune_scores(path)
        assert says in cli_error(["evaluate", str(run)], capsys)


# ------------------------------------------------------------- 7. report on bad results
@pytest.mark.parametrize(("doc", "says"), [
    ({}, "lacks 'model', 'task', 'n_edges', 'algorithms'"),
    ([], "holds a list"),
    ({"model": "m", "task": "t", "n_edges": 3, "algorithms": {}}, "no algorithms' results"),
    ({"model": "m", "task": "t", "n_edges": 3, "algorithms": {"eap": {"metric": "x"}}},
     "field algorithms.eap lacks 'measurements', 'top_edges'"),
])
def test_report_on_results_missing_keys(tmp_path, doc, says, capsys):
    (tmp_path / "results.json").write_text(json.dumps(doc))
    with pytest.raises(FileFormatError, match=f"results.json.*{says}"):
        api(["report", str(tmp_path)])
    assert "rerun discover" in cli_error(["report", str(tmp_path)], capsys)
    assert not (tmp_path / "report.html").exists()


def test_write_report_refuses_results_without_model_task_or_algorithms(tmp_path):
    for doc, says in [({}, "'model', 'task', 'algorithms'"), ([], "got list"),
                      ({"model": "m", "task": "t", "algorithms": []}, "an algorithms mapping")]:
        with pytest.raises(FileFormatError, match=says):
            write_report(doc, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


# ------------------------------------------------------------- 8. clear errors
def test_out_pointing_at_a_file_fails_before_the_model_loads(tmp_path, data, monkeypatch, capsys):
    import edgewise.benchmarks.tasks

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(edgewise.benchmarks.tasks, "load_model", no_loading)
    (tmp_path / "file").write_text("mine")
    argv = ["discover", "--task", str(data), "--algo", "eap", *RUN, "--out", str(tmp_path / "file")]
    with pytest.raises(OutputFolderError, match="is a file, not a folder"):
        api(argv)
    cli_error(argv, capsys)
    assert (tmp_path / "file").read_text() == "mine"


def _unwritable(monkeypatch, folder: Path) -> None:
    """Make creating files in ``folder`` fail as in a read-only folder (tests run as root,
    for whom chmod does not)."""
    import tempfile

    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kw):
        if dir is not None and Path(dir) == folder:
            raise PermissionError(errno.EACCES, "Permission denied", str(folder))
        return real(*args, dir=dir, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_a_read_only_folder_is_refused_before_any_work(run, data, monkeypatch, capsys):
    import edgewise.benchmarks.tasks
    import edgewise.cli

    def no_work(*a, **k):
        raise AssertionError("work began")

    monkeypatch.setattr(edgewise.benchmarks.tasks, "load_model", no_work)
    monkeypatch.setattr(edgewise.cli, "evaluate_scores", no_work)
    _unwritable(monkeypatch, run)
    for argv in (["evaluate", str(run)], ["report", str(run)],
                 ["discover", "--task", str(data), "--algo", "random", *RUN, "--out", str(run)]):
        with pytest.raises(OutputFolderError, match=f"cannot write to {run} .*Permission denied"):
            api(argv)
        cli_error(argv, capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_chmod_read_only_folder_is_refused(run, capsys):
    run.chmod(0o555)
    try:
        assert "cannot write to" in cli_error(["evaluate", str(run)], capsys)
    finally:
        run.chmod(0o755)


def test_a_full_disk_is_one_clear_error(tmp_path, data, monkeypatch, capsys):
    import safetensors.torch

    def full(*args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "run"
    argv = ["discover", "--task", str(data), "--algo", "eap", *RUN, "--out", str(out)]
    with pytest.raises(DiskFullError, match=r"no space left .*scores_eap\.safetensors") as e:
        api(argv)
    assert e.value.__suppress_context__ and e.value.errno == errno.ENOSPC
    line = cli_error(argv, capsys, rc=1)
    assert "run the same command again" in line
    assert not list(out.rglob("*.edgewise-tmp")) and not (out / LOCK).exists()

    def torch_save(tmp):  # torch.save on a full disk gives no errno
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    usage = shutil.disk_usage(tmp_path)
    with monkeypatch.context() as m:
        m.setattr(shutil, "disk_usage", lambda _: usage._replace(free=0))
        with pytest.raises(DiskFullError, match="c.pt"):
            atomic_write(tmp_path / "c.pt", torch_save)
    with pytest.raises(RuntimeError, match="file write failed"):  # space left: as it was
        atomic_write(tmp_path / "c.pt", torch_save)

    monkeypatch.setattr(os, "fsync", full)  # any other write: the same error
    with pytest.raises(DiskFullError, match="x.json"):
        atomic_write(tmp_path / "x.json", lambda tmp: Path(tmp).write_text("{}"))
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "c.pt").exists()


def test_damaged_checkpoints_name_the_file_and_suggest_fresh(run, data, monkeypatch, capsys):
    import dataclasses
    import functools

    from edgewise.prune_algos import ALGORITHMS

    argv = ["discover", "--task", str(data), "--algo", "acdc", *RUN, "--out", str(run)]

    @functools.wraps(ALGORITHMS["acdc"].function)  # its signature: the recorded parameters
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:  # leaves checkpoints/acdc.json with this run's settings
        m.setitem(ALGORITHMS, "acdc", dataclasses.replace(ALGORITHMS["acdc"], function=interrupted))
        assert main(argv) == 130
    checkpoint = run / "checkpoints" / "acdc.pt"
    torch.save({"fingerprint": {"dests": 3}, "next_dest": 1}, checkpoint)
    whole = checkpoint.read_bytes()
    for content in (b"garbage", whole[: len(whole) // 2]):
        checkpoint.write_bytes(content)
        with pytest.raises(FileFormatError, match=r"checkpoints/acdc\.pt cannot be read.*--fresh"):
            api(argv)
        cli_error(argv, capsys)

    for name in ("acdc.json", "eap.json"):
        state = run / "checkpoints" / name
        state.write_text(state.read_text()[:40])
        algo = name.removesuffix(".json")
        argv = ["discover", "--task", str(data), "--algo", algo, *RUN, "--out", str(run)]
        with pytest.raises(FileFormatError, match=rf"checkpoints/{algo}\.json is not valid JSON"
                                                  r".*truncated.*--fresh"):
            api(argv)
        cli_error(argv, capsys)


@pytest.mark.parametrize("algo", ["acdc", "exact"])
def test_the_algorithms_name_a_damaged_checkpoint(pm, tmp_path, algo):
    from edgewise.prune_algos import acdc_prune_scores, exact_patching_prune_scores

    from util import random_loader

    path = tmp_path / f"{algo}.pt"
    path.write_bytes(b"\x80garbage")
    with pytest.raises(FileFormatError, match=f"checkpoint {path} cannot be read.*delete it"):
        if algo == "acdc":
            acdc_prune_scores(pm, random_loader(vocab=20), None, [-2], [1], progress=False,
                              checkpoint=path)
        else:
            exact_patching_prune_scores(pm, random_loader(vocab=20), progress=False,
                                        checkpoint=path)


def test_a_truncated_results_json_is_named(run, data, capsys):
    results = run / "results.json"
    results.write_text(results.read_text()[:100])
    for argv in (["evaluate", str(run)], ["report", str(run)],
                 ["discover", "--task", str(data), "--algo", "random", *RUN, "--out", str(run)]):
        with pytest.raises(FileFormatError, match=r"results\.json is not valid JSON"):
            api(argv)
        cli_error(argv, capsys)
    with pytest.raises(FileNotFoundError, match=r"results\.json does not exist"):
        api(["report", str(run / "checkpoints")])


# MIB graph JSON
@pytest.fixture
def mib(pm, tmp_path) -> Path:
    return save_mib_json(tmp_path / "g.json", pm, scores_for(pm, 1), set(pm.edges[::9]))


@pytest.mark.parametrize(("change", "says"), [
    (lambda d: d["edges"]["a0.h1->a1.h2<q>"].update(score="high"), "'a0.h1->a1.h2<q>' needs"),
    (lambda d: d["edges"]["a0.h1->a1.h2<q>"].update(score=None), "'a0.h1->a1.h2<q>' needs"),
    (lambda d: d["edges"]["a0.h1->a1.h2<q>"].update(score=math.nan), "NaN is not a score"),
    (lambda d: d["edges"]["a0.h1->a1.h2<q>"].pop("score"), "'a0.h1->a1.h2<q>' needs"),
    (lambda d: d["edges"]["a0.h1->a1.h2<q>"].update(in_graph="yes"), "in_graph 'yes'"),
    (lambda d: d.update(edges=list(d["edges"])), "'edges' must be an object"),
    (lambda d: d.update(cfg=[]), "'cfg' must be an object"),
    (lambda d: d.pop("edges"), "lacks the 'cfg' and 'edges' keys"),
])
def test_bad_mib_json_is_refused(pm, mib, change, says):
    doc = json.loads(mib.read_text())
    change(doc)
    mib.write_text(json.dumps(doc))
    with pytest.raises(FileFormatError, match=re.escape(str(mib)) + ".*" + re.escape(says)):
        load_mib_json(mib, pm)


def test_a_mib_json_missing_edges_loads_only_when_asked(pm, mib):
    doc = json.loads(mib.read_text())
    dropped = list(doc["edges"])[:10]
    for name in dropped:
        del doc["edges"][name]
    mib.write_text(json.dumps(doc))
    with pytest.raises(FileFormatError, match=f"scores {pm.n_edges - 10} of the graph's "
                                              f"{pm.n_edges} edges.*missing_score"):
        load_mib_json(mib, pm)
    scores, _ = load_mib_json(mib, pm, missing_score=-math.inf)
    assert sum(int(torch.isinf(t).sum()) for t in scores.values()) == 10


def test_a_truncated_mib_json_is_named(pm, mib):
    mib.write_text(mib.read_text()[:200])
    with pytest.raises(FileFormatError, match=f"{mib} is not valid JSON"):
        load_mib_json(mib, pm)
    mib.write_text("")
    with pytest.raises(FileFormatError, match=f"{mib} is empty"):
        load_mib_json(mib, pm)


# ------------------------------------------------ bad datasets through the command line
def _bad_datasets(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (a dataset file with one fault, a phrase the error must contain)."""
    good = json.loads((ROOT / "src/edgewise/datasets/toy_ioi.json").read_text())
    cases: dict[str, tuple[Path, str]] = {}

    def case(name: str, says: str, text: str | None = None, raw: bytes | None = None, **change):
        path = folder / f"{name}.json"
        if raw is not None:
            path.write_bytes(raw)
        else:
            doc = {**good, "prompts": good["prompts"][:8], **change}
            path.write_text(text if text is not None else json.dumps(doc))
        cases[name] = (path, says)

    case("not_utf8", "utf-8", raw=b'{"prompts": [{"clean": "caf\xe9"}]}')
    case("not_json", "invalid json", text='{"prompts": [')
    case("no_prompts", "no prompts", prompts=[])
    long = dict(good["prompts"][0], clean=[3] * 300, corrupt=[3] * 299 + [4])
    case("too_long", "context", prompts=[long] * 8)
    oov = dict(good["prompts"][0], answers=[[10**6]])
    case("answer_outside_vocab", "vocab", prompts=[oov] * 8)
    no_answer = dict(good["prompts"][0], answers=[])
    case("no_answers", "no answers", prompts=[no_answer] * 8)
    return cases


@pytest.mark.parametrize("name", ["not_utf8", "not_json", "no_prompts", "too_long",
                                  "answer_outside_vocab", "no_answers"])  # fmt: skip
def test_bad_datasets_are_one_line_errors_on_the_command_line(tmp_path, name, capsys):
    path, says = _bad_datasets(tmp_path)[name]
    out = tmp_path / "out"
    line = cli_error(["discover", "--task", str(path), "--algo", "eap", *RUN, "--out", str(out)], capsys)
    assert says in line.lower(), line
    assert not (out / "results.json").exists()
