"""The edgewise command line: discover, evaluate, report, demo, mib.

    edgewise discover --model toy-ioi --task toy_ioi --algo eap ig acdc --out runs/ioi
    (interrupted? the same command again resumes; add --fresh to start over)
    edgewise discover --task toy_ioi --algo ig acdc --ablation zero --param ig.steps=20 \
        --param acdc.tau_exps=-4,-3 --no-positions --out runs/ioi-zero
    edgewise evaluate runs/ioi
    edgewise report runs/ioi
    edgewise demo

Errors print one line, ``edgewise: error: ...``, naming the input and what to do, and
exit with 2 (a bad input: argument, file, folder) or 1 (the environment: a full disk,
a folder another run holds, a permission); an interruption (Ctrl-C, SIGTERM, SIGHUP)
exits with 128 + the signal's number after one line saying what was kept.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
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

# Importing this module must not import torch or TransformerLens (``edgewise --help``
# stays fast): everything that needs them is imported inside the functions using it.
_LAZY = {"DataChangedError": "edgewise.io.provenance", "ProvenanceError": "edgewise.io.provenance",
         "FolderInUseError": "edgewise.io.results_folder",
         "STATE_DIR": "edgewise.io.results_folder"}  # fmt: skip


def __getattr__(name: str) -> Any:
    """``edgewise.cli.DataChangedError`` and the like, imported when first asked for."""
    if name not in _LAZY:
        raise AttributeError(f"module 'edgewise.cli' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)


def write_json(path: Path, doc: Any) -> None:
    """:func:`edgewise.io.files.write_json` (whole or not at all)."""
    from edgewise.io.files import write_json as write

    write(path, doc)


def _algorithm_params(algo: str, task: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments ``discover`` passes to ``ALGORITHMS[algo]``
    (:func:`edgewise.cli_params.call_parameters`)."""
    from edgewise.cli_params import call_parameters

    return call_parameters(
        algo, task, quiet=args.quiet, max_memory=args.max_memory,
        scale=getattr(args, "scale", None), ig_endpoint=getattr(args, "ig_endpoint", None),
        grad_function=getattr(args, "grad_function", None),
        answer_function=getattr(args, "answer_function", None),
        ablation=getattr(args, "ablation", "patching"),
        params=getattr(args, "parsed_params", {}).get(algo))  # fmt: skip


def _check_ablation(args: argparse.Namespace, algos: list[str]) -> dict[str, Any] | None:
    """``--ablation``: checks every algorithm takes it (before anything loads); for
    ``optimal``, its fitting settings (saved with the scores, so a resumed run with
    others is caught), else ``None`` (the choice is each algorithm's ``ablation_type``)."""
    from edgewise.cli_params import check_ablation_choice

    ablation = getattr(args, "ablation", "patching")
    check_ablation_choice(ablation, algos)
    if ablation != "optimal":
        return None
    if args.oa_steps < 0 or not args.oa_lr > 0:
        raise ValueError(f"--oa-steps must be >= 0 and --oa-lr positive, got {args.oa_steps} "
                         f"and {args.oa_lr}")  # fmt: skip
    return {"kind": "optimal", "steps": args.oa_steps, "lr": args.oa_lr,
            "objective": args.oa_objective}


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


def _device_and_dtype(args: argparse.Namespace) -> tuple[str, str]:
    """``--device`` as it resolves on this machine (``auto``: cuda or cpu) and ``--dtype``'s
    name (float32 when not given), checked before anything loads."""
    from edgewise.runtime.resolve import resolve_device, resolve_dtype

    device = resolve_device(getattr(args, "device", None))
    dtype = str(resolve_dtype(getattr(args, "dtype", None))).removeprefix("torch.")
    return device, dtype


def _setup(model_name: str | None, task_name: str, batch_size: int, kind: str | None = None,
           device: str = "cpu", dtype: str | None = None,
           positions: bool | None = None) -> tuple[Any, Any, Any, Any]:  # fmt: skip
    """The task, the patchable model (``None``: the task's default) of ``kind`` on
    ``device`` in ``dtype``, and the loaders; ``positions``: one edge per token position
    (``None``: as the task says)."""
    from edgewise.benchmarks.tasks import get_task, load_model
    from edgewise.patching.wrap import patchable_model
    from edgewise.runtime.resolve import on_device

    model_name, task_name = _resolve_names(model_name, task_name)
    task = get_task(task_name)
    model = load_model(model_name, device=device, kind=kind, dtype=dtype)
    if positions is None:
        positions = task.token_positions
    import inspect

    if positions and "token_positions" in inspect.signature(task.dataloaders).parameters:
        loaders = task.dataloaders(model, batch_size, token_positions=True)
    else:
        loaders = task.dataloaders(model, batch_size)
    train, test = (on_device(loader, device) for loader in loaders)
    if positions and train.seq_len is None:
        raise ValueError(f"--positions needs prompts of one token length, and task {task_name!r} "
                         "has prompts of several: drop --positions")  # fmt: skip
    seq_len = train.seq_len if positions else None
    pm = patchable_model(model, slice_output=task.slice_output, seq_len=seq_len)  # type: ignore[arg-type]
    return task, pm, train, test


# ------------------------------------------------------------------ resuming discover
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


def _settings_differ(saved: dict[str, Any], expected: dict[str, Any]) -> list[Any]:
    """The keys of ``expected`` whose saved value differs or is not saved
    (:class:`edgewise.io.provenance.Difference`, in ``expected``'s order)."""
    from edgewise.io.provenance import differences

    if "dtype" in expected and isinstance(saved, dict) and "dtype" not in saved:
        saved = {**saved, "dtype": "float32"}  # saved before --dtype existed: float32 then
    return differences(saved, expected)


def _mismatch(path: Path, diffs: list[Any]) -> ValueError:
    """The error for a saved file of a run with other settings: names the first field
    that differs with both values (:func:`edgewise.io.provenance.mismatch_message`)."""
    from edgewise.io.provenance import ProvenanceError, mismatch_message

    return ProvenanceError(mismatch_message(
        str(path), diffs, "rerun with --fresh to start over, or use another --out"))


def _run_provenance(model_name: str, task_name: str, batch_size: int, pm: Any, train: Any,
                    test: Any, dtype: str | None = None) -> dict[str, Any]:  # fmt: skip
    """What produced this run's results (:data:`edgewise.io.provenance.RUN_FIELDS`): the
    model's name, kind and weights, the task, its batching and data, the graph, versions;
    and the model's ``dtype`` when given (after ``model_kind``: a resumed run in another
    dtype names it first). The device is not among them: it does not change a result
    beyond float rounding, so a run may resume on another device."""
    from edgewise.io.provenance import RUN_FIELDS, model_provenance

    fields = {"model": model_name, "task": task_name, "batch_size": batch_size,
              "seq_len": pm.seq_len, "data_sha256": _sha256_of_data(train, test),
              "graph_sha256": _sha256_of_edges(pm), **model_provenance(pm)}  # fmt: skip
    out: dict[str, Any] = {}
    for k in RUN_FIELDS:
        out[k] = fields[k]
        if k == "model_kind" and dtype is not None:
            out["dtype"] = dtype
    return out


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
    from edgewise.io.results_folder import STATE_DIR
    from edgewise.io.schema import check_resume_state

    r = _Resume(fingerprint)
    if fresh:
        return r
    state_path = out / STATE_DIR / f"{algo}.json"
    if state_path.exists():
        fix = "rerun with --fresh to start over"
        state = read_json(state_path, fix)
        check_resume_state(state, state_path, fix, pm.n_edges, pm.seq_len, algo)
        diffs = _settings_differ(state["fingerprint"], fingerprint)
        if diffs:
            raise _mismatch(state_path, diffs)
        r.started, r.seconds, r.result = True, state.get("seconds"), state.get("result")
    elif (out / STATE_DIR / f"{algo}.pt").exists():
        raise ValueError(f"{out / STATE_DIR / f'{algo}.pt'} has no {algo}.json saying which "
                         "settings it belongs to; rerun with --fresh to start over")
    scores_path = out / f"scores_{algo}.safetensors"
    if scores_path.exists():
        diffs = _settings_differ(load_prune_scores(scores_path)[1], fingerprint)
        if diffs:  # before the model's checks: name every field that differs
            raise _mismatch(scores_path, diffs)
        try:
            scores, meta = load_prune_scores(scores_path, pm)
        except FileFormatError:  # already says: recompute it with --fresh
            raise
        except ValueError as e:
            raise ValueError(f"{e}; rerun with --fresh to start over, or use another --out") from None
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
    from edgewise.io.provenance import ProvenanceError

    path = out / "results.json"
    if not path.exists():
        return {}
    previous = read_json(path, "delete it: rerunning its algorithms reuses their saved scores")
    check_results(previous, path)
    kept = {a: r for a, r in previous["algorithms"].items() if a not in algos}
    if kept:
        diffs = _settings_differ(previous.get("settings", {}), settings)
        if diffs:
            raise ProvenanceError(
                f"{path} holds results of {', '.join(kept)} computed with other settings "
                f"({'; '.join(d.describe() for d in diffs)}): rerun them too (--algo "
                f"{' '.join([*kept, *algos])} --fresh), or use another --out")
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
    from edgewise.io.results_folder import check_output_folder, writing
    from edgewise.prune_algos import ALGORITHMS

    algos = list(dict.fromkeys(args.algo))
    unknown = [a for a in algos if a not in ALGORITHMS]
    if unknown:
        from edgewise.runtime.resolve import did_you_mean

        named = ", ".join(f"{a!r}{did_you_mean(a, ALGORITHMS)}" for a in unknown)
        raise ValueError(f"unknown algorithm(s) {named}. Algorithms: {', '.join(ALGORITHMS)}")
    _check_scale_options(args, algos)
    from edgewise.cli_params import parse_params

    args.parsed_params = parse_params(getattr(args, "param", None), algos)  # before loading
    if getattr(args, "bootstrap", None) is not None and args.bootstrap < 1:
        raise ValueError(f"--bootstrap must be a number of resamples >= 1 (e.g. 100), got "
                         f"{args.bootstrap}")  # fmt: skip
    _check_ablation(args, algos)
    model_name, task_name = _resolve_names(args.model, args.task)
    _check_inputs(model_name, task_name)
    if get_task(task_name).official_edges is None:
        needy = [a for a in algos if ALGORITHMS[a].needs_official_edges]
        if needy:
            raise ValueError(f"{', '.join(needy)} needs the task's official circuit, and task "
                             f"{task_name!r} has none: drop it from --algo")  # fmt: skip
    device, dtype = _device_and_dtype(args)  # a missing GPU: before any work
    out = Path(args.out)
    check_output_folder(out, model_name, task_name, getattr(args, "allow_existing", False))
    setup = _setup(model_name, task_name, args.batch_size, getattr(args, "kind", None), device,
                   dtype, getattr(args, "positions", None))  # a failure leaves no folder  # fmt: skip
    with writing(out):
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


def _check_scale_options(args: argparse.Namespace, algos: list[str]) -> None:
    """``--scale``, ``--ig-endpoint``, ``--grad-function`` and ``--answer-function``
    must reach at least one requested algorithm."""
    from edgewise.cli_params import check_option_reaches
    from edgewise.prune_algos import ALGORITHMS

    for option, value, takes in (
        ("--scale", getattr(args, "scale", None), lambda a: a.takes_scale),
        ("--ig-endpoint", getattr(args, "ig_endpoint", None), lambda a: "endpoint" in a.defaults),
        ("--grad-function", getattr(args, "grad_function", None), lambda a: a.loss),
        ("--answer-function", getattr(args, "answer_function", None), lambda a: a.loss),
    ):
        check_option_reaches(option, value, algos, lambda n, t=takes: t(ALGORITHMS[n]))


def _discover_locked(
    args: argparse.Namespace, algos: list[str], model_name: str, task_name: str, out: Path,
    setup: tuple[Any, Any, Any, Any],
) -> dict[str, Any]:
    from edgewise.cli_params import effective_parameters
    from edgewise.io.files import save_mib_json, save_prune_scores
    from edgewise.io.results_folder import STATE_DIR, write_marker
    from edgewise.io.scale import SCALE_KEY, count_prompts, scale_metadata
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
    device, dtype = _device_and_dtype(args)
    common = _run_provenance(model_name, task_name, args.batch_size, pm, train, test, dtype)
    settings = dict(common)
    kept = _previous_results(out, algos, settings)
    settings["device"] = device  # recorded, not compared: a run may resume on another device
    results: dict[str, Any] = {"model": model_name, "task": task_name, "n_edges": pm.n_edges,
                               "seq_len": pm.seq_len, "settings": settings, "algorithms": kept}
    # for the report: each position's token text and the prompt counts
    results.update(seq_labels=getattr(train, "seq_labels", None),
                   n_prompts={"train": count_prompts(train), "test": count_prompts(test)})
    params: dict[str, dict[str, Any]] = {}
    resume: dict[str, _Resume] = {}
    ablation = _check_ablation(args, algos)
    fitted: dict[str, Any] = {}  # the optimal ablation values, fitted when first needed

    def values() -> dict[str, Any]:
        if ablation is None:
            return {}
        if "v" not in fitted:
            from edgewise.prune_algos.optimal_ablation import optimal_ablation_values

            fitted["v"] = optimal_ablation_values(
                pm, train, ablation["steps"], ablation["lr"], ablation["objective"],
                getattr(args, "grad_function", None) or task.grad_function,
                getattr(args, "answer_function", None) or task.answer_function)  # fmt: skip
        return {"ablation_values": fitted["v"]}

    for algo in algos:  # every check before any work: a mismatch fails at once
        params[algo] = _algorithm_params(algo, task, args)
        saved = effective_parameters(algo, params[algo])  # every parameter, defaults too
        if ablation is not None:
            saved["ablation"] = ablation
        fingerprint = json.loads(json.dumps(  # as it reads back from JSON (tuples -> lists)
            {**common, "algorithm": algo, "parameters": saved}, default=str))
        resume[algo] = _load_resume(out, algo, fingerprint, pm, fresh)
    if any(r.started or r.scores is not None for r in resume.values()):
        print("resuming: " + ", ".join(r.describe(a) for a, r in resume.items()),
              file=sys.stderr, flush=True)

    no_mib: list[str] = []
    finished: set[str] = set()
    for algo in algos:
        r = resume[algo]
        state_path, checkpoint = state_dir / f"{algo}.json", state_dir / f"{algo}.pt"
        scores, seconds = r.scores, r.seconds
        if scores is None:
            call = {**params[algo], **values()}
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
            meta = dict(r.fingerprint)  # everything that produced them (io/provenance.py)
            meta[SCALE_KEY] = scale_metadata(ALGORITHMS[algo].score_scale(params[algo]),
                                             count_prompts(train))  # fmt: skip
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
                _add_score_intervals(result, pm, task, train, algo, {**params[algo], **values()},
                                     n_boot)  # fmt: skip
            write_json(state_path, {"fingerprint": r.fingerprint, "seconds": seconds,
                                     "result": result})
        results["algorithms"][algo] = {**result, "parameters": r.fingerprint["parameters"],
                                       "seconds": seconds}
        finished.add(algo)
        try:
            save_mib_json(out / f"circuit_{algo}_mib.json", pm, scores,
                          [pm.edge(d["edge"], d["seq_idx"]) for d in result["top_edges"]],
                          provenance=r.fingerprint)
        except ValueError:  # the format cannot express this graph (token positions)
            if not no_mib:
                no_mib.append(algo)
                print("edgewise: note: no circuit_*_mib.json: MIB's format has no token "
                      "positions; score with --no-positions to have it", file=sys.stderr)
        # after each algorithm: an interrupted run leaves what is finished readable
        _set_unfinished(results, [a for a in algos if a not in finished], args)
        write_json(out / "results.json", results)
    return results


def _set_unfinished(results: dict[str, Any], missing: list[str], args: argparse.Namespace) -> None:
    """Record in ``results`` which requested algorithms are not finished yet and the
    command that finishes them (the same ``discover`` resumes), or that none are."""
    results.pop("unfinished", None)
    if missing:
        results["unfinished"] = {"algorithms": missing, "command": _command_line(args)}


def _command_line(args: argparse.Namespace) -> str:
    """The ``edgewise`` command that produced ``args`` (as typed, when known)."""
    import shlex

    argv = getattr(args, "argv", None)
    if argv is None:
        argv = ["discover", "--task", str(args.task), "--algo", *args.algo, "--out", str(args.out)]
        if getattr(args, "model", None):
            argv[1:1] = ["--model", str(args.model)]
    return shlex.join(["edgewise", *argv])


def unfinished_note(results: dict[str, Any]) -> str | None:
    """One line naming the algorithms an interrupted ``discover`` did not finish and how
    to finish them, or ``None`` when every requested one is done."""
    u = results.get("unfinished")
    if not isinstance(u, dict) or not u.get("algorithms"):
        return None
    names = ", ".join(map(str, u["algorithms"]))
    return (f"not finished: {names} (the run was interrupted); to finish, run the same "
            f"command again: {u.get('command') or 'edgewise discover ... --out DIR'}")


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


def check_results(results: Any, path: Path) -> None:
    """Raise :class:`edgewise.io.schema.FieldError` (a
    :class:`~edgewise.io.files.FileFormatError`) naming ``path``, the field's JSON path
    and the fix unless ``results`` is a whole, consistent ``results.json`` as ``edgewise
    discover`` writes it (:func:`edgewise.io.schema.check_results_doc`)."""
    from edgewise.io.schema import check_results_doc

    check_results_doc(results, path, "it is not a results.json that edgewise discover "
                                     "wrote; rerun discover (--fresh) or restore the file")


def _read_results(folder: Path) -> dict[str, Any]:
    from edgewise.io.files import read_json

    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder: give the --out folder of "
                                 "edgewise discover")
    path = folder / "results.json"
    results = read_json(path, "give the --out folder of a finished edgewise discover")
    check_results(results, path)
    return results


_RERUN = "or rerun edgewise discover with --fresh to recompute them"
_OTHER_RUN = f"it is not the scores file of the results in results.json: restore that one, {_RERUN}"
_FIXES = {  # what to do when a saved field differs from what evaluate has now
    "model": f"restore the folder's own model, {_RERUN}",
    "model_kind": "load the model as the kind it was (TransformerLens 3.x loads shipped "
                  f"models as HookedTransformer, 4.x as TransformerBridge), {_RERUN}",
    "weights_sha256": f"the model's weights changed since discover ran: restore them, {_RERUN}",
    "dtype": f"load the model in the dtype the scores were computed in, {_RERUN}",
    "task": f"restore the task, {_RERUN}",
    "batch_size": f"restore the batch size, {_RERUN}",
    "seq_len": f"restore the task's prompt length, {_RERUN}",
    "graph_sha256": f"the model's graph changed since discover ran: restore it, {_RERUN}",
    "edgewise_version": f"install the edgewise version that computed them, {_RERUN}",
    "transformer_lens_version": f"install the TransformerLens version that computed them, {_RERUN}",
}  # fmt: skip


def _check_evaluate_provenance(folder: Path, previous: dict[str, Any],
                               metas: dict[str, dict[str, Any]]) -> None:  # fmt: skip
    """Before loading a model: ``results.json`` records where its results came from,
    and every scores file comes from the same run (same fields, algorithm, parameters)."""
    from edgewise.io.provenance import RUN_FIELDS, ProvenanceError, check_provenance

    path = folder / "results.json"
    settings = previous.get("settings") or {}
    missing = [f for f in RUN_FIELDS if f not in settings]
    if missing:
        raise ProvenanceError(
            f"{path} records no {', '.join(missing)} (settings): it was written before edgewise "
            "recorded where results come from, so its scores cannot be checked against the "
            "model and data; rerun edgewise discover with --fresh to recompute them")
    for algo, meta in metas.items():
        entry = previous["algorithms"][algo]
        same_run = {**{f: settings[f] for f in RUN_FIELDS}, "algorithm": algo}
        if "parameters" in entry:
            same_run["parameters"] = entry["parameters"]
        check_provenance(meta, same_run, str(folder / f"scores_{algo}.safetensors"),
                         _OTHER_RUN, now_as="results.json has")


def _check_current(paths: dict[str, Path], metas: dict[str, dict[str, Any]],
                   now: dict[str, Any]) -> None:  # fmt: skip
    """The model, data and libraries at hand are those every scores file records."""
    from edgewise.io.provenance import (
        DataChangedError,
        ProvenanceError,
        differences,
        mismatch_message,
    )

    for algo, meta in metas.items():
        diffs = differences(meta, now)
        if not diffs:
            continue
        if diffs[0].field == "data_sha256":
            raise DataChangedError(
                f"{paths[algo]} was computed on other prompts than task {now['task']!r} "
                "gives now (their hash differs: the dataset changed since discover ran); "
                "restore that data, or rerun edgewise discover with --fresh")
        raise ProvenanceError(mismatch_message(str(paths[algo]), diffs, _FIXES[diffs[0].field]))


def _evaluate_device(args: argparse.Namespace, settings: dict[str, Any],
                     folder: Path) -> tuple[str, str, str | None]:  # fmt: skip
    """Where ``evaluate`` loads the model: ``--device``, in the dtype the scores were
    computed in (float32 when ``results.json`` records none), as the kind it was (hooked
    or bridge). ``--dtype`` naming another dtype is refused."""
    from edgewise.runtime.resolve import resolve_device

    saved = str(settings.get("dtype", "float32"))
    asked = getattr(args, "dtype", None)
    if asked is not None and asked != saved:
        raise ValueError(f"--dtype {asked}: the scores in {folder} were computed in {saved} "
                         f"(results.json's settings), and evaluate loads the model in that "
                         f"dtype; drop --dtype, or rerun edgewise discover --dtype {asked} "
                         "--fresh to score in it")  # fmt: skip
    kinds = {"HookedTransformer": "hooked", "TransformerBridge": "bridge"}
    return resolve_device(getattr(args, "device", None)), saved, kinds.get(
        str(settings.get("model_kind")))


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Re-evaluate the scores saved in a results folder, on the data they were computed
    from, refusing anything else (:mod:`edgewise.io.provenance`): every scores file must
    be the one of the results in ``results.json`` (same model, weights, task, data,
    batch size, graph, algorithm, parameters and versions), and the model, prompts and
    libraries loaded now must be those they record; a field that differs raises
    :class:`~edgewise.io.provenance.ProvenanceError` naming the file, the field, both
    values and the fix (:class:`DataChangedError` when it is the prompts' hash).
    ``results.json`` is rewritten only after every check passed. Only in a folder
    ``discover`` made, without links, holding its lock."""
    from edgewise.io.files import load_prune_scores
    from edgewise.io.results_folder import (
        OutputFolderError,
        check_links,
        check_writable,
        read_marker,
        writing,
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
    check_links(folder)
    check_writable(folder)
    with writing(folder):
        paths = {algo: folder / f"scores_{algo}.safetensors" for algo in previous["algorithms"]}
        metas = {algo: load_prune_scores(path)[1] for algo, path in paths.items()}
        _check_evaluate_provenance(folder, previous, metas)
        saved_batch = int(previous["settings"]["batch_size"])
        device, dtype, kind = _evaluate_device(args, previous["settings"], folder)
        task, pm, train, test = _setup(previous["model"], previous["task"], saved_batch, kind,
                                       device, dtype,
                                       previous.get("seq_len") is not None)  # as discover did  # fmt: skip
        now = _run_provenance(previous["model"], previous["task"], saved_batch, pm, train, test,
                              dtype if "dtype" in previous["settings"] else None)  # fmt: skip
        _check_current(paths, metas, now)
        if args.batch_size not in (None, saved_batch):
            from edgewise.runtime.resolve import on_device

            test = on_device(task.dataloaders(pm.wrapped_model, args.batch_size)[1], device)
        for algo, path in paths.items():
            scores, _ = load_prune_scores(path, pm)
            old = previous["algorithms"][algo]
            previous["algorithms"][algo] = evaluate_scores(pm, task, test, scores, algo,
                                                           args.quiet, args.max_memory)
            for key in ("parameters", "seconds"):  # how they were computed: unchanged
                if key in old:
                    previous["algorithms"][algo][key] = old[key]
            previous["algorithms"][algo].setdefault("seconds", None)
        write_json(folder / "results.json", previous)
    note = unfinished_note(previous)
    if note:
        print(f"edgewise: {note}", file=sys.stderr)
    return previous


def report(args: argparse.Namespace) -> Path:
    """Write ``report.html`` for a results folder (refusing to replace a ``report.html``
    in a folder edgewise did not make, and links), holding the folder's lock."""
    from edgewise.io.results_folder import (
        OutputFolderError,
        check_links,
        check_writable,
        read_marker,
        writing,
    )
    from edgewise.visualize import write_report

    folder = Path(args.dir)
    results = _read_results(folder)
    marker = read_marker(folder)
    target = folder / "report.html"
    if os.path.lexists(target) and marker is None:
        raise OutputFolderError(f"{target} exists and {folder} was not made by edgewise "
                                "discover (no .edgewise marker): move it away first")
    check_links(folder)
    _check_report_provenance(folder, results, marker)
    check_writable(folder)
    with writing(folder):
        path = write_report(results, target)
    note = unfinished_note(results)
    if note:
        print(f"edgewise: {note}", file=sys.stderr)
    return path


def _scores_metadata(path: Path) -> dict[str, Any] | None:
    """The metadata of a scores file's header (``None`` when it cannot be read: the
    report does not use the file, ``evaluate`` names what is wrong with it)."""
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["edgewise"])
    except Exception:
        return None
    return meta if isinstance(meta, dict) else None


def _check_report_provenance(folder: Path, results: dict[str, Any],
                             marker: dict[str, Any] | None) -> None:  # fmt: skip
    """The results drawn are this folder's: ``results.json`` names the marker's task and
    model, and every scores file beside it records the same run. Results that record no
    provenance (older edgewise) are drawn with a warning."""
    from edgewise.io.provenance import RUN_FIELDS, ProvenanceError, check_provenance

    path = folder / "results.json"
    if marker is not None and (marker.get("model"), marker.get("task")) != (results["model"],
                                                                             results["task"]):
        raise ProvenanceError(
            f"{path} holds results of task {results['task']!r} on model {results['model']!r}, "
            f"but {folder} holds task {marker['task']!r} on model {marker['model']!r} (its "
            ".edgewise marker): it was copied from another folder; put it back, or rerun "
            f"edgewise discover --out {folder}")
    settings = results.get("settings") or {}
    if any(f not in settings for f in RUN_FIELDS):
        print(f"edgewise: warning: {path} records no model weights, versions or data hash "
              "(written before edgewise recorded them): drawing it as it is; rerun edgewise "
              "discover --fresh to have them", file=sys.stderr)
    for algo, entry in results["algorithms"].items():
        meta = _scores_metadata(folder / f"scores_{algo}.safetensors")
        if meta is None:
            continue
        same_run = {**{f: settings[f] for f in RUN_FIELDS if f in settings}, "algorithm": algo}
        if "parameters" in entry:
            same_run["parameters"] = entry["parameters"]
        check_provenance(meta, same_run, str(folder / f"scores_{algo}.safetensors"),
                         _OTHER_RUN, now_as="results.json has")


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
    report.html, and each circuit as MIB graph JSON (``circuit_<algo>_mib.json``: the
    graph without token positions, which MIB's format holds)."""
    args.model, args.task, args.algo = None, "toy_ioi", ["eap", "ig", "acdc"]
    args.positions = False  # MIB's graph: one edge per pair of modules
    results = discover(args)
    args.dir = args.out
    path = report(args)
    print(summary_table(results))
    print(f"report: {path}")
    return results


class _Parser(argparse.ArgumentParser):
    """A parser whose errors are one line, ``edgewise: error: ...`` (exit 2), like the
    command's other errors, with a "did you mean" for a misspelled choice; its
    subcommands' parsers are of this class too. Descriptions and epilogs keep their
    line breaks."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        import re

        from edgewise.runtime.resolve import did_you_mean

        bad = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if bad:
            choices = re.findall(r"'([^']*)'", bad.group(2)) or bad.group(2).split(", ")
            message = message.replace(bad.group(0), bad.group(0) + did_you_mean(bad.group(1),
                                                                               choices))
        self.exit(2, f"edgewise: error: {message} (see {self.prog} --help)\n")


_COMMANDS = {
    "discover": "score edges, evaluate circuits, save results",
    "evaluate": "re-evaluate saved scores",
    "report": "write report.html for a results folder",
    "demo": "the whole loop on the shipped toy model",
    "mib": "the MIB circuit track: data, evaluation, submissions, memory (see edgewise mib "
           "--help)",
}  # fmt: skip
_EPILOG = """examples:
  edgewise demo
  edgewise discover --model toy-ioi --task toy_ioi --algo eap ig acdc --out runs/ioi
  edgewise discover --model gpt2 --device cuda --dtype bfloat16 --task DATA.json --out runs/g
  edgewise report runs/ioi
  edgewise mib demo
each command's options: edgewise COMMAND --help"""


def _command_of(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names (its first word that is not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Append its default to the help of every option of ``parser`` and its
    subcommands that has one (not a flag's False, not None: their help says what
    happens then)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                _show_defaults(child)
            continue
        default = action.default
        if (not action.option_strings or default in (None, False, argparse.SUPPRESS)
                or action.help == argparse.SUPPRESS):  # fmt: skip
            continue
        if action.help and "default" in action.help.lower():
            continue
        shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else default
        text = f"default: {shown}".replace("%", "%%")
        action.help = f"{action.help} ({text})" if action.help else text


def _algorithms_epilog() -> str:
    from edgewise.prune_algos import ALGORITHMS

    width = max(map(len, ALGORITHMS))
    lines = [f"  {name:<{width}}  {a.description}" for name, a in ALGORITHMS.items()]
    return "algorithms (--algo):\n" + "\n".join(lines)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command line's parser. ``argv``: the arguments it will parse; when they name
    no known command (``edgewise --help``, a misspelled command) only the command list
    is built, so nothing imports torch; ``None``: every command's options."""
    parser = _Parser(prog="edgewise", description=__doc__.split("\n")[0], epilog=_EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                title="commands")  # fmt: skip
    if argv is not None and _command_of(argv) not in _COMMANDS:
        for name, text in _COMMANDS.items():
            sub.add_parser(name, help=text)
        return parser

    from edgewise.checks import cli_int
    from edgewise.cli_params import add_choice_arguments
    from edgewise.io.results_folder import STATE_DIR
    from edgewise.runtime.memory import memory_arg
    from edgewise.runtime.resolve import add_device_arguments

    d = sub.add_parser("discover", help=_COMMANDS["discover"], epilog=_algorithms_epilog(),
                       description="Score every edge with each --algo, evaluate the circuits they "
                                   "give (faithfulness\ncurve, CPR, CMD, AUC) and save everything "
                                   "under --out; then: edgewise report DIR.")
    d.add_argument("--model", help="a shipped model (toy-ioi, tracr-reverse, "
                                   "tracr-xproportion), a local Hugging Face folder, a "
                                   "TransformerLens name or a Hugging Face hub name (e.g. "
                                   "gpt2; downloaded into the Hugging Face cache unless "
                                   "HF_HUB_OFFLINE is set). Default: the task's model")
    d.add_argument("--task", required=True, help="a task name or a dataset JSON file")
    d.add_argument("--algo", nargs="+", default=["eap"], metavar="ALGO",
                   help="one or more of the algorithms listed below")
    d.add_argument("--out", required=True, metavar="DIR",
                   help="results folder. Rerunning the same command resumes an interrupted "
                        "run: finished algorithms are reused, ACDC and exact patching continue "
                        "from their checkpoints in DIR/checkpoints; other settings are an error. "
                        "Results of other algorithms in DIR are kept; DIR holds one task and "
                        "model, and one run at a time")
    add_choice_arguments(d)
    d.add_argument("--scale", choices=["sum", "mean"], default=None,
                   help="reduction of gradient scores over prompts: sum (the sum over batches "
                        "of each batch's mean; the default of eap, ig, ig-layer, eap-frozen) or "
                        "mean (that sum divided by the number of prompts, MIB's; the default of "
                        "eap-ig-inputs, eap-ig-activations, clean-corrupted). Default: each "
                        "algorithm's own; see docs/mib.md")
    d.add_argument("--ig-endpoint", choices=["corrupt", "clean"], default=None,
                   help="eap-ig-inputs' points on the corrupt -> clean path: corrupt "
                        "(k = 0..m-1, MIB's; the default) or clean (k = 1..m)")
    d.add_argument("--bootstrap", type=cli_int(1), metavar="N", default=None,
                   help="also compute 95%% bootstrap intervals over N resamples of the prompts "
                        "(seed 0): of the top edges' scores (train prompts) and of the "
                        "faithfulness curve, CPR and CMD (test prompts); saved in results.json "
                        "and drawn as bands in the report")
    e = sub.add_parser("evaluate", help=_COMMANDS["evaluate"])
    e.add_argument("dir", help="the --out folder of edgewise discover")
    e.add_argument("--batch-size", type=cli_int(1), default=None,
                   help="default: the batch size the scores were computed with")
    r = sub.add_parser("report", help=_COMMANDS["report"])
    r.add_argument("dir", help="the --out folder of edgewise discover")
    m = sub.add_parser("demo", help=_COMMANDS["demo"])
    m.add_argument("--out", default="runs/demo", metavar="DIR", help="results folder")
    from edgewise.mib.cli import add_mib_parser

    add_mib_parser(sub, _COMMANDS["mib"])
    add_device_arguments(d)
    add_device_arguments(m)
    add_device_arguments(e, kind=False, dtype_help="the model's dtype: the one the scores were "
                         "computed in (results.json's settings); another is refused")
    for p in (d, m):
        p.add_argument("--allow-existing", action="store_true",
                       help="write into a non-empty folder edgewise did not make; its files "
                            "are left alone (none may have a name edgewise writes)")
        p.add_argument("--batch-size", type=cli_int(1), default=16, help="prompts per batch")
        p.add_argument("--fresh", action="store_true",
                       help="start the requested algorithms over instead of resuming: delete "
                            f"their scores and DIR/{STATE_DIR} files (other algorithms' results "
                            "stay), then compute them")
    for p in (d, e, m):
        p.add_argument("--max-memory", metavar="SIZE", type=memory_arg,
                       help="budget for each pass's patch buffers, e.g. 8GiB or auto (see "
                            "edgewise.runtime.memory); same scores, more passes")  # fmt: skip
    for p in (d, e, r, m):
        p.add_argument("--quiet", action="store_true",
                       help="no progress bars, no loading bars or warnings from transformers "
                            "and the Hugging Face hub; errors still show")  # fmt: skip
    _show_defaults(parser)
    return parser


class _Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is, as Ctrl-C raises KeyboardInterrupt."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


def _interrupt(signum: int, _frame: Any) -> None:
    raise _Interrupted(signum)


_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


def _after_interrupt(args: argparse.Namespace) -> str:
    """What an interrupted command left, for its one-line message."""
    if args.command in ("discover", "demo"):
        return f"run the same command again to resume from {args.out}"
    if args.command == "evaluate":
        return f"{Path(args.dir) / 'results.json'} is unchanged"
    if args.command == "report":
        return f"{Path(args.dir) / 'report.html'} is unchanged"
    if getattr(args, "mib_command", None) in ("export", "demo"):
        return (f"every file in {args.out} is whole (as before, or new); run the same command "
                "again to finish")
    return "nothing was written"


def _environment_error(e: BaseException) -> bool:
    """Whether ``e`` is about the machine rather than the input (exit status 1): an
    ``OSError`` (full disk, permissions), a folder another run holds, a device this
    machine lacks."""
    from edgewise.io.results_folder import FolderInUseError
    from edgewise.runtime.resolve import DeviceUnavailableError

    return isinstance(e, OSError | FolderInUseError | DeviceUnavailableError)


def _next_steps(folder: Path, report_written: bool = False) -> str:
    """The closing line of discover, evaluate and demo: where the results are and what
    to run or open next."""
    if report_written:
        return (f"results in {folder}/ (results.json, scores, circuits); open "
                f"{folder / 'report.html'} in a browser")
    return (f"results in {folder}/ (results.json, scores, circuits); next: edgewise report "
            f"{folder} (writes {folder / 'report.html'} to open in a browser)")


def _say(line: str) -> None:
    """Print ``line`` on stderr, unless stderr is gone (a closed pipe)."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _silence_closed_streams() -> None:
    """Point a stream whose reader has gone at /dev/null, so that Python's last flush
    at exit does not report the closed pipe."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            try:
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, stream.fileno())
                os.close(null)
            except (OSError, ValueError, AttributeError):  # not a real file (captured)
                pass


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status: 0 done, 2 a bad input, 1 the
    environment, 128 + the signal's number when interrupted (SIGINT 130, SIGTERM 143,
    SIGHUP 129: one line says what was kept; files are whole and the lock released).
    What the command prints goes to stdout once its work is done: a reader that has gone
    by then (``| head``) gives 0, quietly; a closed stderr during the work stops it
    quietly with 141, as SIGPIPE would."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser(argv).parse_args(argv)
    except SystemExit as e:  # a bad argument (2, the one-line error printed) or --help (0)
        return e.code if isinstance(e.code, int) else 2
    args.argv = list(sys.argv[1:] if argv is None else argv)  # to say how to resume
    # SIGTERM (a plain `kill`, a scheduler's preemption) and SIGHUP (a closed terminal)
    # unwind like Ctrl-C, so the time spent is recorded and no temporary file stays behind
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.getsignal(s) for s in _SIGNALS} if main_thread else {}
    for s in previous:
        if s != signal.SIGINT and previous[s] is not signal.SIG_IGN:  # nohup stays nohup
            signal.signal(s, _interrupt)
    # what is printed goes out once the work is done: a reader that has gone by then
    # (`| head`) lost nothing, and a closed pipe found earlier is stderr's
    stdout, printed, done = sys.stdout, io.StringIO(), False
    sys.stdout = printed
    try:
        from edgewise.runtime.resolve import quiet_libraries

        with quiet_libraries(getattr(args, "quiet", False)):
            if args.command == "discover":
                print(summary_table(discover(args)))
                _say(_next_steps(Path(args.out)))
            elif args.command == "evaluate":
                print(summary_table(evaluate(args)))
                _say(_next_steps(Path(args.dir)))
            elif args.command == "report":
                print(report(args))
            elif args.command == "mib":
                from edgewise.mib.cli import run_mib

                run_mib(args)
            else:
                demo(args)
                _say(_next_steps(Path(args.out), report_written=True))
        sys.stdout, done = stdout, True
        stdout.write(printed.getvalue())
        stdout.flush()  # a closed pipe shows here, while it can still be handled
    except BrokenPipeError:  # the reader went away (| head): nothing to tell it
        sys.stdout = stdout
        _silence_closed_streams()
        return 0 if done else 128 + 13
    except (ValueError, TypeError, FloatingPointError, ImportError, FileNotFoundError,
            NotADirectoryError, NotImplementedError) as e:  # what the user gave: arguments, files, a model  # fmt: skip
        _say(f"edgewise: error: {e}")
        return 2
    except Exception as e:  # the machine: full disk, permissions, a lock, no such GPU
        if not _environment_error(e):
            raise
        _say(f"edgewise: error: {e}")
        return 1
    except KeyboardInterrupt as e:
        for s in previous:  # a second signal must not cut this message
            signal.signal(s, signal.SIG_IGN)
        signum = getattr(e, "signum", signal.SIGINT)
        _say(f"edgewise: interrupted by {signal.Signals(signum).name}; {_after_interrupt(args)}")
        return 128 + signum
    finally:
        sys.stdout = stdout
        if not done:  # stopped early: what was printed still goes out
            with contextlib.suppress(OSError, ValueError):
                stdout.write(printed.getvalue())
                stdout.flush()
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
