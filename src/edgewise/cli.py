"""The ``edgewise`` command line: discover, evaluate, report, demo.

    edgewise discover --model toy-ioi --task toy_ioi --algo eap ig acdc --out runs/ioi
    (interrupted? the same command again resumes; add --fresh to start over)
    edgewise evaluate runs/ioi
    edgewise report runs/ioi
    edgewise demo

Errors print one line, ``edgewise: error: ...``, naming the input and what to do, and
exit with 2 (a bad input: argument, file, folder) or 1 (the environment: a full disk,
a folder another run holds, a permission); an interruption exits with 130.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from edgewise.evaluation.pipeline import evaluate_scores
from edgewise.io.files import write_json
from edgewise.io.results_folder import STATE_DIR, FolderInUseError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _algorithm_params(
    algo: str, task: Any, quiet: bool, max_memory: str | None = None
) -> dict[str, Any]:
    from edgewise.prune_algos import ALGORITHMS

    a = ALGORITHMS[algo]
    params: dict[str, Any] = {"progress": not quiet} if a.progress else {}
    if max_memory is not None and a.max_memory:
        params["max_memory"] = max_memory
    if a.loss:
        params.update(grad_function=task.grad_function, answer_function=task.answer_function)
    if a.faithfulness:
        params["faithfulness_target"] = "mse" if task.metric == "mse" else "kl_div"
    return params


def _resolve_names(model_name: str | None, task_name: str) -> tuple[str, str]:
    """The model and task names to use and save: a model directory or a dataset file
    becomes an absolute path, so ``evaluate`` finds the same one from any directory."""
    from edgewise.benchmarks.tasks import TASKS, get_task
    from edgewise.benchmarks.toy_models import available

    task = get_task(task_name)
    if task_name not in TASKS and Path(task_name).is_file():
        task_name = str(Path(task_name).resolve())
    model_name = model_name or task.model
    if not model_name:
        raise ValueError(f"task {task_name!r} has no default model: pass --model")
    if (model_name not in available() and not model_name.startswith("tracr-")
            and os.path.isdir(model_name)):
        model_name = str(Path(model_name).resolve())
    return model_name, task_name


def _setup(model_name: str | None, task_name: str, batch_size: int) -> tuple[Any, Any, Any, Any]:
    """The task, the patchable model (``None``: the task's default), and the loaders."""
    from edgewise.benchmarks.tasks import get_task, load_model
    from edgewise.patching.wrap import patchable_model

    model_name, task_name = _resolve_names(model_name, task_name)
    task = get_task(task_name)
    model = load_model(model_name)
    train, test = task.dataloaders(model, batch_size)
    seq_len = train.seq_len if task.token_positions else None
    pm = patchable_model(model, slice_output=task.slice_output, seq_len=seq_len)  # type: ignore[arg-type]
    return task, pm, train, test


# ------------------------------------------------------------------ resuming discover
_NOT_PARAMETERS = ("progress", "checkpoint", "max_memory")  # never change the result


def _sha256_of_edges(pm: Any) -> str:
    edges = json.dumps([[e.name, e.seq_idx] for e in pm.edges])
    return hashlib.sha256(edges.encode()).hexdigest()


def _sha256_of_data(*loaders: Any) -> str:
    """A hash of every batch's tokens and answers, so a rerun on other data is caught."""
    import torch

    h = hashlib.sha256()
    for loader in loaders:
        for batch in loader:
            for item in (batch.clean, batch.corrupt, batch.answers, batch.wrong_answers):
                for t in item if isinstance(item, list) else [item]:
                    t = t.detach().cpu().contiguous().reshape(-1)
                    h.update(f"{t.dtype}{tuple(t.shape)};".encode())
                    h.update(t.view(torch.uint8).numpy().tobytes())
        h.update(b"|")
    return h.hexdigest()


def _settings_differ(saved: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """The keys of ``expected`` whose saved value differs, described for an error."""
    diffs = []
    for key, want in expected.items():
        got = saved.get(key)
        if got == want:
            continue
        if key.endswith("sha256") or isinstance(want, dict):
            diffs.append(f"{key} differs")
        else:
            diffs.append(f"{key}: saved {got!r}, now {want!r}")
    return diffs


def _mismatch(path: Path, diffs: list[str]) -> ValueError:
    return ValueError(
        f"{path} was written by a run with other settings ({'; '.join(diffs)}); "
        "rerun with --fresh to start over, or use another --out"
    )


@dataclass
class _Resume:
    """What an earlier run of the same ``discover`` left for one algorithm."""

    fingerprint: dict[str, Any]
    scores: Any = None  # saved scores, when complete
    seconds: float | None = None  # scoring time spent so far (None: unknown)
    result: dict[str, Any] | None = None  # saved evaluation, when complete
    started: bool = False  # an earlier attempt began scoring
    checkpoint_step: str | None = None  # "N/M" when the algorithm left a checkpoint

    def describe(self, algo: str) -> str:
        if self.scores is not None:
            return f"{algo} done" if self.result is not None else f"{algo} scored, evaluating"
        if self.checkpoint_step is not None:
            return f"{algo} from checkpoint step {self.checkpoint_step}"
        return f"{algo} restarting" if self.started else f"{algo} not started"


def _checkpoint_step(path: Path) -> str:
    """How far an ACDC or exact-patching checkpoint got, as ``"N/M"`` (``"?"`` if unknown)."""
    from edgewise.io.files import load_checkpoint

    state = load_checkpoint(path, "rerun with --fresh to start over")
    try:
        fp = state["fingerprint"]
        if "next_dest" in state:  # ACDC: destinations decided
            return f"{int(state['next_dest'])}/{int(fp['dests'])}"
        per_batch = -(-len(fp["edges"]) // int(fp["edges_per_pass"]))  # exact: chunks done
        return f"{int(state['done'])}/{per_batch * len(fp['batches'])}"
    except Exception:  # another algorithm's format: resuming still works, only unreported
        return "?"


def _load_resume(
    out: Path, algo: str, fingerprint: dict[str, Any], pm: Any, fresh: bool
) -> _Resume:
    """Check what ``out`` holds for ``algo`` against this run's settings."""
    from edgewise.io.files import FileFormatError, load_prune_scores, read_json

    r = _Resume(fingerprint)
    if fresh:
        return r
    state_path = out / STATE_DIR / f"{algo}.json"
    if state_path.exists():
        state = read_json(state_path, "rerun with --fresh to start over")
        if not isinstance(state, dict):
            raise FileFormatError(f"{state_path} is not edgewise's resume state; rerun with "
                                  "--fresh to start over")
        diffs = _settings_differ(state.get("fingerprint", {}), fingerprint)
        if diffs:
            raise _mismatch(state_path, diffs)
        r.started, r.seconds, r.result = True, state.get("seconds"), state.get("result")
    elif (out / STATE_DIR / f"{algo}.pt").exists():
        raise ValueError(f"{out / STATE_DIR / f'{algo}.pt'} has no {algo}.json saying which "
                         "settings it belongs to; rerun with --fresh to start over")
    scores_path = out / f"scores_{algo}.safetensors"
    if scores_path.exists():
        try:
            scores, meta = load_prune_scores(scores_path, pm)
        except FileFormatError:  # already says: recompute it with --fresh
            raise
        except ValueError as e:
            raise ValueError(f"{e}; rerun with --fresh to start over, or use another --out") from None
        diffs = _settings_differ(meta, fingerprint)
        if diffs:
            raise _mismatch(scores_path, diffs)
        r.scores = scores
    else:
        r.result = None  # an evaluation without its scores file is not reused
    checkpoint = out / STATE_DIR / f"{algo}.pt"
    if r.scores is None and checkpoint.exists():
        r.checkpoint_step = _checkpoint_step(checkpoint)
    return r


def _previous_results(out: Path, algos: list[str], settings: dict[str, Any]) -> dict[str, Any]:
    """The results of algorithms not rerun now that ``out/results.json`` holds, checked
    to come from this run's settings (same data, graph and batch size)."""
    from edgewise.io.files import read_json

    path = out / "results.json"
    if not path.exists():
        return {}
    previous = read_json(path, "delete it: rerunning its algorithms reuses their saved scores")
    check_results(previous, path)
    kept = {a: r for a, r in previous["algorithms"].items() if a not in algos}
    if kept:
        diffs = _settings_differ(previous.get("settings", {}), settings)
        if diffs:
            raise ValueError(
                f"{path} holds results of {', '.join(kept)} computed with other settings "
                f"({'; '.join(diffs)}): rerun them too (--algo {' '.join([*kept, *algos])} "
                "--fresh), or use another --out")
    return kept


def discover(args: argparse.Namespace) -> dict[str, Any]:
    """Score edges with each algorithm, evaluate circuits, save everything under --out.

    A rerun with the same settings resumes: algorithms whose scores and evaluation were
    saved are reused, an interrupted ACDC or exact patching continues from its
    checkpoint in ``--out/checkpoints``; ``--fresh`` starts the requested algorithms
    over. Results of other algorithms already in ``--out`` are kept. Before any work,
    the folder is checked (:func:`edgewise.io.results_folder.check_output_folder`) and
    locked."""
    from edgewise.benchmarks.tasks import get_task
    from edgewise.io.results_folder import check_output_folder, folder_lock
    from edgewise.prune_algos import ALGORITHMS

    algos = list(dict.fromkeys(args.algo))
    unknown = [a for a in algos if a not in ALGORITHMS]
    if unknown:
        raise ValueError(f"unknown algorithm(s) {unknown}. Algorithms: {', '.join(ALGORITHMS)}")
    if getattr(args, "bootstrap", None) is not None and args.bootstrap < 1:
        raise ValueError(f"--bootstrap must be a number of resamples >= 1 (e.g. 100), got "
                         f"{args.bootstrap}")  # fmt: skip
    model_name, task_name = _resolve_names(args.model, args.task)
    _check_inputs(model_name, task_name)
    if get_task(task_name).official_edges is None:
        needy = [a for a in algos if ALGORITHMS[a].needs_official_edges]
        if needy:
            raise ValueError(f"{', '.join(needy)} needs the task's official circuit, and task "
                             f"{task_name!r} has none: drop it from --algo")  # fmt: skip
    out = Path(args.out)
    check_output_folder(out, model_name, task_name, getattr(args, "allow_existing", False))
    setup = _setup(model_name, task_name, args.batch_size)  # a failure leaves no folder
    with folder_lock(out):
        return _discover_locked(args, algos, model_name, task_name, out, setup)


def _check_inputs(model_name: str, task_name: str) -> None:
    """Check the model and a dataset task's file without loading a model, so a bad one
    is refused before anything is loaded or the output folder is made."""
    from edgewise.benchmarks.tasks import TASKS, check_model_name

    check_model_name(model_name)
    if task_name not in TASKS:  # a dataset file: its structure, keys and fields
        from edgewise.data.json_format import _validated_prompts
        from edgewise.data.loading import load_dataset_json

        contents = load_dataset_json(task_name)
        _validated_prompts(contents, [f"{task_name}: prompt {i}"
                                      for i in range(len(contents["prompts"]))], task_name)


def _discover_locked(
    args: argparse.Namespace, algos: list[str], model_name: str, task_name: str, out: Path,
    setup: tuple[Any, Any, Any, Any],
) -> dict[str, Any]:

    from edgewise import __version__
    from edgewise.io.files import save_mib_json, save_prune_scores
    from edgewise.io.results_folder import remove_stale_temporaries, write_marker
    from edgewise.prune_algos import ALGORITHMS

    task, pm, train, test = setup
    write_marker(out, model_name, task_name)
    state_dir = out / STATE_DIR
    fresh = getattr(args, "fresh", False)
    if fresh:  # only the requested algorithms' files: the others' results stay
        for algo in algos:
            for f in (state_dir / f"{algo}.json", state_dir / f"{algo}.pt",
                      out / f"scores_{algo}.safetensors", out / f"circuit_{algo}_mib.json"):
                f.unlink(missing_ok=True)
    remove_stale_temporaries(out, state_dir)
    common = {"model": model_name, "task": task_name, "batch_size": args.batch_size,
              "data_sha256": _sha256_of_data(train, test), "graph_sha256": _sha256_of_edges(pm),
              "seq_len": pm.seq_len, "edgewise_version": __version__}
    settings = {k: v for k, v in common.items() if k != "edgewise_version"}
    results: dict[str, Any] = {"model": model_name, "task": task_name, "n_edges": pm.n_edges,
                               "seq_len": pm.seq_len, "settings": settings,
                               "algorithms": _previous_results(out, algos, settings)}
    params: dict[str, dict[str, Any]] = {}
    resume: dict[str, _Resume] = {}
    for algo in algos:  # every check before any work: a mismatch fails at once
        params[algo] = _algorithm_params(algo, task, args.quiet, args.max_memory)
        saved = {k: v for k, v in {**ALGORITHMS[algo].defaults, **params[algo]}.items()
                 if k not in _NOT_PARAMETERS}
        fingerprint = json.loads(json.dumps(  # as it reads back from JSON (tuples -> lists)
            {**common, "algorithm": algo, "parameters": saved}, default=str))
        resume[algo] = _load_resume(out, algo, fingerprint, pm, fresh)
    if any(r.started or r.scores is not None for r in resume.values()):
        print("resuming: " + ", ".join(r.describe(a) for a, r in resume.items()),
              file=sys.stderr, flush=True)

    for algo in algos:
        r = resume[algo]
        state_path, checkpoint = state_dir / f"{algo}.json", state_dir / f"{algo}.pt"
        scores, seconds = r.scores, r.seconds
        if scores is None:
            call = dict(params[algo])
            if ALGORITHMS[algo].checkpoint:
                call["checkpoint"] = str(checkpoint)
            before = r.seconds or 0.0
            write_json(state_path, {"fingerprint": r.fingerprint, "seconds": before})
            official = task.official_edges(pm) if task.official_edges is not None else None
            start = time.perf_counter()
            try:
                scores = ALGORITHMS[algo](pm, train, official, **call)
            except BaseException:  # keep the time spent, then let the interruption through
                spent = before + time.perf_counter() - start
                try:
                    write_json(state_path, {"fingerprint": r.fingerprint, "seconds": spent})
                except OSError:  # e.g. the disk is full: the first error is the one to see
                    pass
                raise
            seconds = before + time.perf_counter() - start
            meta = {k: r.fingerprint[k] for k in ("model", "task", "algorithm", "parameters",
                                                  "batch_size", "data_sha256", "graph_sha256")}
            save_prune_scores(out / f"scores_{algo}.safetensors", scores, pm, meta)
            write_json(state_path, {"fingerprint": r.fingerprint, "seconds": seconds})
            checkpoint.unlink(missing_ok=True)  # the scores file supersedes it
            r.result = None
        result = r.result
        n_boot = getattr(args, "bootstrap", None)
        if result is not None and n_boot and not _has_bootstrap(result, n_boot):
            result = None  # evaluated before, without these intervals
        if result is None:
            result = evaluate_scores(pm, task, test, scores, algo, args.quiet, args.max_memory,
                                     bootstrap=n_boot)  # fmt: skip
            if n_boot:
                _add_score_intervals(result, pm, task, train, algo, params[algo], n_boot)
            write_json(state_path, {"fingerprint": r.fingerprint, "seconds": seconds,
                                     "result": result})
        results["algorithms"][algo] = {**result, "seconds": seconds}
        try:
            save_mib_json(out / f"circuit_{algo}_mib.json", pm, scores,
                          [pm.edge(d["edge"], d["seq_idx"]) for d in result["top_edges"]])
        except ValueError:  # the format cannot express this graph (e.g. token positions)
            pass
    write_json(out / "results.json", results)
    return results


def _has_bootstrap(result: dict[str, Any], n_resamples: int) -> bool:
    """Whether a saved evaluation holds score intervals from ``n_resamples`` resamples."""
    scores = (result.get("bootstrap") or {}).get("scores") or {}
    return scores.get("n_resamples") == n_resamples


def _add_score_intervals(result: dict[str, Any], pm: Any, task: Any, train: Any, algo: str,
                         params: dict[str, Any], n_resamples: int) -> None:
    """95% bootstrap intervals (seed 0) of the top edges' scores, into ``result``."""
    from edgewise.evaluation.bootstrap import add_score_intervals, bootstrap_scores

    official = task.official_edges(pm) if task.official_edges is not None else None
    quiet = {"progress": False} if "progress" in params else {}  # N runs: no bar each
    intervals = bootstrap_scores(pm, train, algo, n_resamples, official_edges=official,
                                 **{**params, **quiet})  # fmt: skip
    add_score_intervals(result, pm, intervals)


_RESULT_KEYS = ("model", "task", "n_edges", "algorithms")
_ALGORITHM_KEYS = ("metric", "measurements", "top_edges")


def check_results(results: Any, path: Path) -> None:
    """Raise :class:`edgewise.io.files.FileFormatError` naming ``path`` unless ``results`` has
    the keys ``edgewise discover`` writes to ``results.json``."""
    from edgewise.io.files import FileFormatError

    fix = "it is not a results.json that edgewise discover wrote; rerun discover"
    if not isinstance(results, dict):
        raise FileFormatError(f"{path} holds a {type(results).__name__}, not an object: {fix}")
    missing = [k for k in _RESULT_KEYS if k not in results]
    if missing:
        raise FileFormatError(f"{path} lacks {', '.join(map(repr, missing))}: {fix}")
    if not isinstance(results["algorithms"], dict) or not results["algorithms"]:
        raise FileFormatError(f"{path} has no algorithms' results: {fix}")
    for algo, r in results["algorithms"].items():
        lacking = [k for k in _ALGORITHM_KEYS if not isinstance(r, dict) or k not in r]
        if lacking:
            raise FileFormatError(f"{path}: the results of {algo!r} lack "
                                  f"{', '.join(map(repr, lacking))}: {fix}")


def _read_results(folder: Path) -> dict[str, Any]:
    from edgewise.io.files import read_json

    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder: give the --out folder of "
                                 "edgewise discover")
    path = folder / "results.json"
    results = read_json(path, "give the --out folder of a finished edgewise discover")
    check_results(results, path)
    return results


class DataChangedError(ValueError):
    """Saved scores were computed on other prompts than the task gives now."""


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Re-evaluate the scores saved in a results folder, on the data they were computed
    from: the prompts' hash saved with each scores file must match the data the task
    gives now at the batch size saved with them (else :class:`DataChangedError`)."""
    from edgewise.io.files import load_prune_scores
    from edgewise.io.results_folder import (
        OutputFolderError,
        check_writable,
        folder_lock,
        read_marker,
    )

    folder = Path(args.dir)
    previous = _read_results(folder)
    if read_marker(folder) is None:
        raise OutputFolderError(f"{folder} was not made by edgewise discover (no .edgewise "
                                "marker): evaluate only rewrites results.json in its own folders")
    for what in ("task", "model"):  # saved as absolute paths when they are files/folders
        name = str(previous[what])
        if os.path.isabs(name) and not os.path.exists(name):
            raise FileNotFoundError(f"{folder / 'results.json'} names the {what} {name}, which "
                                    "no longer exists: restore it, or rerun edgewise discover")
    check_writable(folder)
    with folder_lock(folder):
        paths = {algo: folder / f"scores_{algo}.safetensors" for algo in previous["algorithms"]}
        metas = {algo: load_prune_scores(path)[1] for algo, path in paths.items()}
        saved_batch = int(next(iter(metas.values())).get("batch_size") or 16)
        task, pm, train, test = _setup(previous["model"], previous["task"], saved_batch)
        data_sha256 = _sha256_of_data(train, test)
        for algo, meta in metas.items():
            if meta.get("data_sha256") != data_sha256:
                raise DataChangedError(
                    f"{paths[algo]} was computed on other prompts than task {previous['task']!r} "
                    "gives now (their hash differs: the dataset changed since discover ran); "
                    "restore that data, or rerun edgewise discover with --fresh")
        if args.batch_size not in (None, saved_batch):
            _, test = task.dataloaders(pm.wrapped_model, args.batch_size)
        for algo, path in paths.items():
            scores, _ = load_prune_scores(path, pm)
            seconds = previous["algorithms"][algo].get("seconds")
            previous["algorithms"][algo] = evaluate_scores(pm, task, test, scores, algo,
                                                           args.quiet, args.max_memory)
            previous["algorithms"][algo]["seconds"] = seconds
        write_json(folder / "results.json", previous)
    return previous


def report(args: argparse.Namespace) -> Path:
    """Write ``report.html`` for a results folder (refusing to replace a ``report.html``
    in a folder edgewise did not make)."""
    from edgewise.io.results_folder import OutputFolderError, check_writable, read_marker
    from edgewise.visualize import write_report

    folder = Path(args.dir)
    results = _read_results(folder)
    target = folder / "report.html"
    if target.exists() and read_marker(folder) is None:
        raise OutputFolderError(f"{target} exists and {folder} was not made by edgewise "
                                "discover (no .edgewise marker): move it away first")
    check_writable(folder)
    return write_report(results, target)


def summary_table(results: dict[str, Any]) -> str:
    lines = [f"{results['task']} on {results['model']}: {results['n_edges']} edges",
             f"{'algorithm':<10} {'seconds':>8} {'CPR':>6} {'CMD':>6} {'AUC':>6}"]
    for algo, r in results["algorithms"].items():
        def fmt(key: str, r: dict[str, Any] = r) -> str:
            return f"{r[key]:.3f}" if isinstance(r.get(key), float) else "-"

        seconds = r.get("seconds")
        lines.append(f"{algo:<10} {seconds if seconds is None else round(seconds, 1)!s:>8} "
                     f"{fmt('cpr'):>6} {fmt('cmd'):>6} {fmt('auc'):>6}")
    return "\n".join(lines)


def demo(args: argparse.Namespace) -> dict[str, Any]:
    """The whole loop on the shipped toy model: EAP, IG and ACDC, circuits, curves, AUC,
    report.html."""
    args.model, args.task, args.algo = None, "toy_ioi", ["eap", "ig", "acdc"]
    results = discover(args)
    args.dir = args.out
    path = report(args)
    print(summary_table(results))
    print(f"report: {path}")
    return results


class _Parser(argparse.ArgumentParser):
    """A parser whose errors are one line, ``edgewise: error: ...`` (exit 2), like the
    command's other errors; its subcommands' parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"edgewise: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from edgewise.checks import cli_int
    from edgewise.prune_algos import ALGORITHMS
    from edgewise.runtime.memory import memory_arg

    parser = _Parser(prog="edgewise", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("discover", help="score edges, evaluate circuits, save results")
    d.add_argument("--model", help="toy-ioi, tracr-reverse, a local HF directory, or a TL name")
    d.add_argument("--task", required=True, help="a task name or a dataset JSON file")
    d.add_argument("--algo", nargs="+", default=["eap"], help=f"any of {', '.join(ALGORITHMS)}")
    d.add_argument("--out", required=True, metavar="DIR",
                   help="results folder. Rerunning the same command resumes an interrupted "
                        "run: finished algorithms are reused, ACDC and exact patching continue "
                        "from their checkpoints in DIR/checkpoints; other settings are an error. "
                        "Results of other algorithms in DIR are kept; DIR holds one task and "
                        "model, and one run at a time")
    d.add_argument("--bootstrap", type=cli_int(1), metavar="N", default=None,
                   help="also compute 95%% bootstrap intervals over N resamples of the prompts "
                        "(seed 0): of the top edges' scores (train prompts) and of the "
                        "faithfulness curve, CPR and CMD (test prompts); saved in results.json "
                        "and drawn as bands in the report")
    e = sub.add_parser("evaluate", help="re-evaluate saved scores")
    e.add_argument("dir")
    e.add_argument("--batch-size", type=cli_int(1), default=None,
                   help="default: the batch size the scores were computed with")
    r = sub.add_parser("report", help="write report.html for a results folder")
    r.add_argument("dir")
    m = sub.add_parser("demo", help="the whole loop on the shipped toy model")
    m.add_argument("--out", default="runs/demo")
    from edgewise.mib.cli import add_mib_parser

    add_mib_parser(sub)
    for p in (d, m):
        p.add_argument("--allow-existing", action="store_true",
                       help="write into a non-empty folder edgewise did not make; its files "
                            "are left alone (none may have a name edgewise writes)")
        p.add_argument("--batch-size", type=cli_int(1), default=16)
        p.add_argument("--fresh", action="store_true",
                       help="start the requested algorithms over instead of resuming: delete "
                            f"their scores and DIR/{STATE_DIR} files (other algorithms' results "
                            "stay), then compute them")
    for p in (d, e, m):
        p.add_argument("--max-memory", metavar="SIZE", type=memory_arg,
                       help="budget for each pass's patch buffers, e.g. 8GiB or auto (see "
                            "edgewise.runtime.memory); same scores, more passes")  # fmt: skip
    for p in (d, e, r, m):
        p.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # a bad argument (2, the one-line error printed) or --help (0)
        return e.code if isinstance(e.code, int) else 2
    # SIGTERM (a plain `kill`, a scheduler's preemption) unwinds like Ctrl-C, so the time
    # spent is recorded and no temporary file stays behind
    catch_term = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if catch_term else None
    try:
        if args.command == "discover":
            print(summary_table(discover(args)))
        elif args.command == "evaluate":
            print(summary_table(evaluate(args)))
        elif args.command == "report":
            print(report(args))
        elif args.command == "mib":
            from edgewise.mib.cli import run_mib

            run_mib(args)
        else:
            demo(args)
    except (ValueError, TypeError, FloatingPointError, ImportError, FileNotFoundError,
            NotADirectoryError) as e:  # what the user gave: arguments, files, a model  # fmt: skip
        print(f"edgewise: error: {e}", file=sys.stderr)
        return 2
    except (OSError, FolderInUseError) as e:  # the machine: full disk, permissions, a lock
        print(f"edgewise: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.command not in ("discover", "demo"):
            raise
        print(f"edgewise: interrupted; run the same command again to resume from {args.out}",
              file=sys.stderr)
        return 130
    finally:
        if catch_term:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
