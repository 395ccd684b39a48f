"""Every command that writes (discover, evaluate, report, demo, mib demo, mib export)
keeps the folder rules: a marker, a lock, ``--allow-existing``, only its own names, no
link followed, a killed run's temporaries removed; and no command ends in a traceback
when interrupted by a signal, when its lock file is odd, or when its reader goes away.

Each refusal is checked through the API (the exact error class and message) and the
command line (exit status, one ``edgewise: error:`` line), with every file of the user's
hashed before and after. Signals are sent at a known point: a function of the command is
replaced by one that signals the process itself (or, in a subprocess, waits until the
test has sent the signal; ``run_paused.py``)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from edgewise.cli import main
from edgewise.io import atomic_write, save_mib_json
from edgewise.io.results_folder import (
    LOCK,
    MARKER,
    FolderInUseError,
    OutputFolderError,
    folder_lock,
)

from folders import ROOT, RUN, api

pytestmark = pytest.mark.usefixtures("few_circuit_sizes")

PAUSED = Path(__file__).with_name("run_paused.py")
HOST = socket.gethostname()


def tree(folder: Path) -> dict[str, str]:
    """Every entry under ``folder``, links not followed: file -> sha256 of its bytes,
    folder -> ``/``, link -> ``-> target``."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root) / name
            rel = p.relative_to(folder).as_posix()
            if p.is_symlink():
                found[rel] = "-> " + os.readlink(p)
            elif p.is_dir():
                found[rel] = "/"
            else:
                found[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def files(folder: Path) -> dict[str, str]:
    return {k: v for k, v in tree(folder).items() if v != "/"}


def temporaries(folder: Path) -> list[str]:
    return sorted(k for k in tree(folder) if Path(k).name.endswith(".edgewise-tmp"))


def cli(argv: list[str], capsys, rc: int) -> str:
    """Run the command line; assert it ended with ``rc`` and one clear last line on
    stderr and no traceback; return that line."""
    capsys.readouterr()
    assert main(argv) == rc
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("edgewise: ")]
    assert len(lines) == 1 and err.rstrip().endswith(lines[0]), err
    return lines[0]


def export_argv(src: Path, out: Path, *extra: str, pair: tuple[str, str] = ("ioi", "gpt2"),
                kind: str = "importances") -> list[str]:  # fmt: skip
    return ["mib", "export", str(src), "--model", "toy-ioi", "--task", "toy_ioi", "--mib-task",
            pair[0], "--mib-model", pair[1], "--kind", kind, "--out", str(out), *extra]


@pytest.fixture(scope="module")
def scores_json(tmp_path_factory) -> Path:
    """MIB graph JSON of random scores for the toy model's graph."""
    from edgewise.mib.evaluate import load_mib_setup

    pm, _ = load_mib_setup("toy-ioi", "toy_ioi", 16)
    gen = torch.Generator().manual_seed(0)
    scores = {n: torch.randn(m.mask_shape, generator=gen) for n, m in pm.dest_modules.items()}
    return save_mib_json(tmp_path_factory.mktemp("scores") / "scores.json", pm, scores)


@pytest.fixture(scope="module")
def exported_once(tmp_path_factory, scores_json) -> Path:
    out = tmp_path_factory.mktemp("exported") / "sub"
    assert main(export_argv(scores_json, out)) == 0
    return out


@pytest.fixture
def exported(tmp_path, exported_once) -> Path:
    out = tmp_path / "sub"
    shutil.copytree(exported_once, out, symlinks=True)
    return out


# ------------------------------------------------------------------ mib export's folder
def test_export_refuses_a_folder_it_did_not_make_and_keeps_its_files(tmp_path, scores_json,
                                                                     capsys):
    out = tmp_path / "sub"
    (out / "ioi_gpt2").mkdir(parents=True)
    (out / "ioi_gpt2" / "importances.json").write_text('{"my": "scores"}')
    (out / "notes.txt").write_text("notes")
    before = tree(out)
    argv = export_argv(scores_json, out)
    with pytest.raises(OutputFolderError, match=re.escape(
            f"{out} already holds files edgewise did not write (ioi_gpt2, notes.txt); use an "
            "empty or new folder, or pass --allow-existing")):
        api(argv)
    assert "--allow-existing" in cli(argv, capsys, 2)
    with pytest.raises(OutputFolderError, match=re.escape(
            f"{out} holds ioi_gpt2, not written by edgewise (no .edgewise marker); edgewise "
            "would replace them: move them away or use another --out")):
        api([*argv, "--allow-existing"])
    cli([*argv, "--allow-existing"], capsys, 2)
    assert tree(out) == before

    # another task/model folder may go next to the user's files when asked
    other = export_argv(scores_json, out, pair=("mcqa", "qwen2.5"))
    assert main([*other, "--allow-existing"]) == 0
    after = tree(out)
    assert {k: after[k] for k in before} == before
    assert {k.split("/")[0] for k in set(after) - set(before)} == {MARKER, "mcqa_qwen2.5"}
    assert json.loads((out / MARKER).read_text())["kind"] == "mib-submission"
    assert main(other) == 0  # edgewise's folder now: its own file replaced, same bytes
    assert tree(out) == after


def test_export_and_discover_never_share_a_folder(run, exported, scores_json, data, capsys):
    before_run, before_sub = tree(run), tree(exported)
    argv = export_argv(scores_json, run)
    with pytest.raises(OutputFolderError, match=re.escape(
            f"{run} holds results of task {str(data)!r} on model 'toy-ioi'; this run writes MIB "
            "submission files (edgewise mib export). A folder holds one kind of edgewise files: "
            "use another --out")):
        api(argv)
    cli(argv, capsys, 2)
    found = ["discover", "--task", str(data), "--algo", "eap", *RUN, "--out", str(exported)]
    with pytest.raises(OutputFolderError, match=re.escape(
            f"{exported} holds MIB submission files (edgewise mib export); this run writes "
            f"results of task {str(data)!r} on model 'toy-ioi'")):
        api(found)
    cli(found, capsys, 2)
    assert tree(run) == before_run and tree(exported) == before_sub


@pytest.mark.parametrize(("umask", "mode"), [(0o077, 0o600), (0o022, 0o644)])
def test_export_writes_only_its_names_with_the_umasks_modes(tmp_path, scores_json, umask,
                                                            mode):
    out = tmp_path / "sub"
    old = os.umask(umask)
    try:
        assert main(export_argv(scores_json, out, kind="both")) == 0
    finally:
        os.umask(old)
    written = files(out)
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "circuits", "ioi_gpt2"]
    assert len(written) == 1 + 1 + 9
    assert {(out / k).stat().st_mode & 0o777 for k in written} == {mode}


# ------------------------------------------------------------------ links
def _link_case(case: str, tmp_path: Path, run: Path, exported: Path, data: Path,
               scores_json: Path) -> tuple[list[str], Path, Path, str]:  # fmt: skip
    """Set up ``case``: (argv, the output folder, the link, what it should be)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("eap.json", "eap.pt", "results.json", "importances.json", "page.html"):
        (elsewhere / name).write_text(f"the user's {name}")
    discover_argv = ["discover", "--task", str(data), "--algo", "eap", *RUN, "--out", str(run)]
    if case in ("discover --fresh", "demo"):
        folder = run
        if case == "demo":
            folder = tmp_path / "demo"
            folder.mkdir()
            (folder / MARKER).write_text(json.dumps(
                {"written_by": "edgewise", "model": "toy-ioi", "task": "toy_ioi"}))
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
        (folder / "checkpoints").symlink_to(elsewhere)
        argv = ([*discover_argv, "--fresh"] if case != "demo" else
                ["demo", "--out", str(folder), "--quiet"])
        return argv, folder, folder / "checkpoints", "folder"
    if case == "evaluate":
        (run / "results.json").replace(elsewhere / "results.json")
        (run / "results.json").symlink_to(elsewhere / "results.json")
        return ["evaluate", str(run), "--quiet"], run, run / "results.json", "file"
    if case == "report":
        (run / "report.html").symlink_to(elsewhere / "page.html")
        return ["report", str(run)], run, run / "report.html", "file"
    if case == "report (lock)":
        (run / LOCK).symlink_to(elsewhere / "eap.json")
        return ["report", str(run)], run, run / LOCK, "file"
    if case == "mib export":
        shutil.rmtree(exported / "ioi_gpt2")
        (exported / "ioi_gpt2").symlink_to(elsewhere)
        return export_argv(scores_json, exported), exported, exported / "ioi_gpt2", "folder"
    if case == "mib export (inside)":
        link = exported / "ioi_gpt2" / "importances.json"
        link.unlink()
        link.symlink_to(elsewhere / "importances.json")
        return export_argv(scores_json, exported), exported, link, "file"
    assert case == "mib demo"
    folder = tmp_path / "mib-demo"
    folder.mkdir()
    (folder / MARKER).write_text(json.dumps(
        {"written_by": "edgewise", "model": "toy-ioi", "task": "mib-ioi"}))
    (folder / "mib_submission").symlink_to(elsewhere)
    return (["mib", "demo", "--out", str(folder), "--quiet"], folder, folder / "mib_submission",
            "folder")  # fmt: skip


@pytest.mark.parametrize("case", ["discover --fresh", "demo", "evaluate", "report",
                                  "report (lock)", "mib export", "mib export (inside)",
                                  "mib demo"])  # fmt: skip
def test_no_command_writes_or_deletes_through_a_link(case, tmp_path, run, exported, data,
                                                     scores_json, capsys):
    argv, folder, link, kind = _link_case(case, tmp_path, run, exported, data, scores_json)
    before, outside = tree(folder), tree(tmp_path / "elsewhere")
    message = re.escape(f"{link} is a symbolic link (to {os.readlink(link)}): edgewise never "
                        "writes, replaces or deletes through a link, which could reach files "
                        f"outside {folder}. Replace it with a real {kind}, or remove the link")
    with pytest.raises(OutputFolderError, match=message):
        api(argv)
    assert re.search(message, cli(argv, capsys, 2))
    assert tree(folder) == before
    assert tree(tmp_path / "elsewhere") == outside


# ------------------------------------------------------------------ odd lock files
@pytest.mark.parametrize("pid", [99999999999999999999, 2**31, -1, 0, "1234", 1.5, True, None])
def test_a_lock_naming_an_impossible_pid_is_refused_by_name(pid, run, capsys):
    lock = {"host": HOST, "started": "2026-01-01 10:00:00"}
    if pid is not None:
        lock["pid"] = pid
    (run / LOCK).write_text(json.dumps(lock))
    before = tree(run)
    message = re.escape(
        f"{run / LOCK} is not a lock edgewise wrote: it names pid {pid!r}, which no process "
        "can have (edited or damaged). edgewise does not take over a lock it cannot tell the "
        f"owner of: if no edgewise run is using {run}, delete {run / LOCK} and run again")
    with pytest.raises(FolderInUseError, match=message):
        with folder_lock(run):
            pass
    assert re.fullmatch("edgewise: error: " + message, cli(["report", str(run)], capsys, 1))
    assert tree(run) == before


def test_a_lock_left_by_an_earlier_process_with_this_pid_is_taken_over(tmp_path):
    """A container restarted gives its new process the old one's pid: that lock is stale."""
    old = {"pid": os.getpid(), "host": HOST, "started": "2026-01-01 10:00:00"}
    (tmp_path / LOCK).write_text(json.dumps(old))
    with folder_lock(tmp_path):
        mine = json.loads((tmp_path / LOCK).read_text())
        assert mine["pid"] == os.getpid() and mine["started"] != old["started"]
        with pytest.raises(FolderInUseError, match=f"pid {os.getpid()} on host"):
            with folder_lock(tmp_path):  # held by this process now: refused
                pass
    assert sorted(os.listdir(tmp_path)) == []


def test_taking_over_a_stale_lock_never_removes_a_fresh_one(tmp_path):
    """Two runs that both found the same stale lock: the one that comes second finds a
    fresh lock instead, puts it back and gives up."""
    from edgewise.io.results_folder import _take_over

    path = tmp_path / LOCK
    stale = {"pid": 2**31 - 2, "host": HOST, "started": "2026-01-01 10:00:00"}
    fresh = {"pid": 1, "host": HOST, "started": "2026-01-02 10:00:00"}
    mine = {"pid": os.getpid(), "host": HOST, "started": "now"}
    path.write_text(json.dumps(fresh))
    assert _take_over(path, stale, mine) is False
    assert json.loads(path.read_text()) == fresh
    path.write_text(json.dumps(stale))
    assert _take_over(path, stale, mine) is True
    assert json.loads(path.read_text()) == mine
    assert sorted(os.listdir(tmp_path)) == [LOCK]


# ------------------------------------------------------------------ one run per folder
@pytest.mark.parametrize("command", ["discover", "evaluate", "report", "demo", "mib export",
                                     "mib demo"])  # fmt: skip
def test_every_writing_command_refuses_a_folder_in_use(command, run, exported, data,
                                                       scores_json, capsys):
    folder = exported if command == "mib export" else run
    argv = {
        "discover": ["discover", "--task", str(data), "--algo", "eap", *RUN, "--out", str(run)],
        "evaluate": ["evaluate", str(run), "--quiet"],
        "report": ["report", str(run)],
        "demo": ["demo", "--out", str(run), "--quiet"],
        "mib export": export_argv(scores_json, exported),
        "mib demo": ["mib", "demo", "--out", str(run), "--quiet"],
    }[command]
    if command in ("demo", "mib demo"):  # a folder of its own task and model
        task = "toy_ioi" if command == "demo" else "mib-ioi"
        (run / MARKER).write_text(json.dumps(
            {"written_by": "edgewise", "model": "toy-ioi", "task": task}))
    with folder_lock(folder):  # held by another run (here: this process)
        before = tree(folder)
        line = cli(argv, capsys, 1)
        assert line.startswith(f"edgewise: error: {folder} is in use by another edgewise run "
                               f"(pid {os.getpid()} on host {HOST}, started ")
        assert tree(folder) == before


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 180
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the command ended ({proc.returncode}) before reaching the point: "
                        f"{proc.stderr.read().decode()[-2000:]}")
        assert time.monotonic() < deadline, "the command never reached the point"
        time.sleep(0.05)


def paused(target: str, match: str, argv: list[str], tmp_path: Path) -> tuple[subprocess.Popen, Path, Path]:
    """Start ``edgewise ARGV`` in a subprocess that waits when ``target`` is called with
    ``match`` in its arguments; return it once it waits, with its ready and go files."""
    ready, go = tmp_path / "ready", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, str(PAUSED), target, match, str(ready), str(go),
                             *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for(ready, proc)
    assert int(ready.read_text()) == proc.pid
    return proc, ready, go


def test_two_exports_at_once_one_succeeds_the_other_says_the_folder_is_in_use(
        tmp_path, scores_json, capsys):
    """The first export waits while it holds the folder; the second comes then. The
    first's reader has gone meanwhile (``| head -0``): it still ends quietly with 0."""
    out = tmp_path / "sub"
    argv = export_argv(scores_json, out)
    first, _, go = paused("edgewise.mib.submission:export_importances", "", argv, tmp_path)
    first.stdout.close()  # before anything is printed: all it prints goes to a closed pipe
    try:
        with pytest.raises(FolderInUseError, match=re.escape(
                f"{out} is in use by another edgewise run (pid {first.pid} on host {HOST}")):
            api(argv)
        line = cli(argv, capsys, 1)
        assert f"pid {first.pid}" in line and f"delete {out / LOCK}" in line
        assert sorted(os.listdir(out)) == [MARKER, LOCK]  # the first's; the second wrote none
    finally:
        go.touch()
        err = first.stderr.read().decode()
        first.wait(timeout=180)
    assert first.returncode == 0, err[-2000:]
    # the model's loading bar may be there (TransformerLens 4), no word of the pipe
    assert not re.search(r"Traceback|[Bb]roken pipe|Errno|edgewise: ", err), err
    assert sorted(tree(out)) == [MARKER, "ioi_gpt2", "ioi_gpt2/importances.json"]
    assert (out / "ioi_gpt2" / "importances.json").read_bytes() == scores_json.read_bytes()


# ------------------------------------------------------------------ signals
def test_sigterm_mid_export_keeps_every_file_whole_and_releases_the_lock(tmp_path, exported,
                                                                         scores_json):
    """A real SIGTERM to a separate process, as it is about to give a circuit file its
    name (importances.json was already replaced, by the same bytes)."""
    folder = exported
    (folder / "notes.txt").write_text("the user's")
    argv, match = export_argv(scores_json, exported, kind="both"), "edges_"
    after = f"every file in {exported} is whole (as before, or new); run the same " \
            "command again to finish"
    before = files(folder)
    proc, _, _ = paused("os:replace", match, argv, tmp_path)  # its temporary file is written
    assert temporaries(folder)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    err = stderr.decode()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and str(folder) not in stdout.decode()  # no paths: not done
    assert err.rstrip().splitlines()[-1] == f"edgewise: interrupted by SIGTERM; {after}"
    assert files(folder) == before  # no half file, no temporary, no lock
    assert main(argv) == 0  # the same command again finishes it
    assert len(files(folder / "circuits" / "ioi_gpt2")) == 9


@pytest.mark.parametrize(("command", "signum", "at"), [
    ("discover", signal.SIGINT, "results.json"),
    ("evaluate", signal.SIGTERM, "results.json"),
    ("report", signal.SIGHUP, "report.html"),
    ("demo", signal.SIGTERM, MARKER),
    ("mib export", signal.SIGINT, "importances.json"),
    ("mib demo", signal.SIGHUP, MARKER),
])  # fmt: skip
def test_every_command_stops_on_a_signal_with_one_line(command, signum, at, tmp_path, run,
                                                        exported, data, scores_json,
                                                        monkeypatch, capsys):
    """The signal arrives as a file is about to take its name: nothing changes."""
    folder = {"mib export": exported, "demo": tmp_path / "new",
              "mib demo": tmp_path / "new"}.get(command, run)  # fmt: skip
    argv = {
        "discover": ["discover", "--task", str(data), "--algo", "eap", *RUN, "--out", str(run)],
        "evaluate": ["evaluate", str(run), "--quiet"],
        "report": ["report", str(run)],
        "demo": ["demo", "--out", str(folder), "--quiet"],
        "mib export": export_argv(scores_json, exported),
        "mib demo": ["mib", "demo", "--out", str(folder), "--quiet"],
    }[command]
    if command == "report":
        assert main(argv) == 0  # a report to keep
    before = tree(folder) if folder.exists() else {}
    real = os.replace

    def signal_instead(src, dst, *args, **kw):
        if Path(dst).name == at:
            os.kill(os.getpid(), signum)
            time.sleep(30)  # the handler raises before this ends
            pytest.fail("the signal did not stop the command")
        return real(src, dst, *args, **kw)

    monkeypatch.setattr(os, "replace", signal_instead)
    # the signal as a terminal delivers it: a suite started under nohup or in a
    # non-interactive shell's background inherits SIGHUP/SIGINT ignored, which the command
    # line honours (nohup stays nohup)
    inherited = signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT
                              else signal.SIG_DFL)  # fmt: skip
    try:
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        line = cli(argv, capsys, 128 + signum)
        assert line.startswith(f"edgewise: interrupted by {signal.Signals(signum).name}; ")
        assert tree(folder) == before
        assert {s: signal.getsignal(s) for s in handlers} == handlers  # restored
    finally:
        signal.signal(signum, inherited)


def test_a_signal_while_a_temporary_is_created_leaves_none(tmp_path, monkeypatch):
    """The moment between creating a temporary file and knowing its name, and between
    taking the lock and holding it, cannot be cut by a signal."""
    import tempfile

    import edgewise.io.results_folder as rf
    from edgewise.cli import _interrupt

    real_mkstemp, real_create = tempfile.mkstemp, rf._create_lock

    def mkstemp_then_signal(*args, **kw):
        made = real_mkstemp(*args, **kw)
        os.kill(os.getpid(), signal.SIGTERM)
        return made

    def lock_then_signal(*args, **kw):
        taken = real_create(*args, **kw)
        os.kill(os.getpid(), signal.SIGTERM)
        return taken

    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with monkeypatch.context() as m:
            m.setattr(tempfile, "mkstemp", mkstemp_then_signal)
            with pytest.raises(KeyboardInterrupt):
                atomic_write(tmp_path / "a.json", lambda tmp: Path(tmp).write_text("{}"))
        assert os.listdir(tmp_path) == []
        with monkeypatch.context() as m:
            m.setattr(rf, "_create_lock", lock_then_signal)
            with pytest.raises(KeyboardInterrupt):
                with folder_lock(tmp_path):
                    pytest.fail("the signal came after the block began")
        assert os.listdir(tmp_path) == []
    finally:
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------ temporaries
@pytest.mark.parametrize("command", ["report", "evaluate", "mib export", "mib demo"])
def test_every_command_removes_a_killed_runs_temporaries(command, tmp_path, run, exported,
                                                         scores_json, monkeypatch):
    folder = {"mib export": exported, "mib demo": tmp_path / "killed"}.get(command, run)
    inner = folder / {"mib export": "ioi_gpt2", "mib demo": "mib_submission/eap"}.get(
        command, "checkpoints")
    inner.mkdir(parents=True, exist_ok=True)
    killed = [folder / ".edgewise.k1l1ed.edgewise-tmp", inner / ".x.json.k1l1ed.edgewise-tmp",
              folder / ".write-test.k1l1ed.edgewise-tmp"]  # fmt: skip
    for path in killed:
        path.write_bytes(b"")
    mine = {folder / ".notes.tmp": "draft", folder / "notes.edgewise-tmp": "not a temporary"}
    for path, text in mine.items():
        path.write_text(text)
    if command == "mib demo":  # the folder's rules, not the demo's work
        import edgewise.mib.demo
        from edgewise.mib.demo import run_mib_demo

        (folder / MARKER).write_text(json.dumps(
            {"written_by": "edgewise", "model": "toy-ioi", "task": "mib-ioi"}))
        monkeypatch.setattr(edgewise.mib.demo, "_run_locked", lambda *args: "ran")
        assert run_mib_demo(folder) == "ran"
    else:
        argv = {"report": ["report", str(run)], "evaluate": ["evaluate", str(run), "--quiet"],
                "mib export": export_argv(scores_json, exported)}[command]  # fmt: skip
        assert main(argv) == 0
    assert not any(p.exists() for p in killed)
    assert all(p.read_text() == text for p, text in mine.items())


def test_a_folder_holding_only_a_killed_runs_temporaries_is_not_someone_elses(tmp_path,
                                                                             scores_json):
    """Killed before its marker took its name, a run left only a temporary: the same
    command again is not refused for a folder edgewise did not make."""
    out = tmp_path / "sub"
    out.mkdir()
    (out / ".edgewise.k1l1ed.edgewise-tmp").write_bytes(b"")
    assert main(export_argv(scores_json, out)) == 0
    assert sorted(tree(out)) == [MARKER, "ioi_gpt2", "ioi_gpt2/importances.json"]


# ------------------------------------------------------------------ closed pipes
def test_a_reader_gone_during_the_work_stops_it_quietly(run, monkeypatch, capsys):
    """stderr closed mid-work (``2>&1 | head``): the work stops as SIGPIPE would stop
    it (141), files whole and the lock released, nothing claimed."""
    import edgewise.visualize

    def closed(*args, **kw):
        raise BrokenPipeError(32, "Broken pipe")

    before = tree(run)
    monkeypatch.setattr(edgewise.visualize, "write_report", closed)
    assert main(["report", str(run)]) == 128 + 13
    assert capsys.readouterr().out == ""
    assert tree(run) == before


def test_a_lock_from_another_host_is_refused_and_left_as_it_is(run, capsys):
    """Whether another machine's process still runs cannot be checked from here."""
    held = {"pid": 4242, "host": "another-host", "started": "then"}
    (run / LOCK).write_text(json.dumps(held))
    before = tree(run)
    line = cli(["evaluate", str(run), "--quiet"], capsys, 1)
    assert f"(pid 4242 on host another-host, started then): wait for it to end, or, if that " \
           f"run is gone, delete {run / LOCK}" in line
    assert tree(run) == before
