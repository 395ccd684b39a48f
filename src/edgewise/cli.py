"""The ``edgewise`` command line: discover, evaluate, report, demo.

    edgewise discover --model toy-ioi --task toy_ioi --algo eap ig acdc --out runs/ioi
    (interrupted? the same command again resumes; add --fresh to start over)
    edgewise evaluate runs/ioi
    edgewise report runs/ioi
    edgewise demo
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _algorithm_params(
    algo: str, task: Any, quiet: bool, max_memory: str | None = None
) -> dict[str, Any]:
    import inspect

    from edgewise.prune_algos import ALGORITHMS

    accepts = inspect.signature(ALGORITHMS[algo].function).parameters
    params: dict[str, Any] = {"progress": not quiet} if "progress" in accepts else {}
    if max_memory is not None and "max_memory" in accepts:
        params["max_memory"] = max_memory
    if "grad_function" in accepts and "answer_function" in accepts:
        params.update(grad_function=task.grad_function, answer_function=task.answer_function)
    if algo == "acdc":
        params["faithfulness_target"] = "mse" if task.metric == "mse" else "kl_div"
    return params


def _measure(pm: Any, loader: Any, outs: Any, metric: str) -> list[tuple[int, float]]:
    from edgewise.metrics.answers import measure_answer_diff, measure_mse

    if metric == "mse":  # lower is better: faithfulness uses -mse
        return [(s, -v) for s, v in measure_mse(pm, loader, outs)]
    return measure_answer_diff(pm, loader, outs)


def evaluate_scores(
    pm: Any, task: Any, test: Any, scores: Any, algo: str, quiet: bool = False,
    max_memory: str | None = None,
) -> dict[str, Any]:
    """Circuits of several sizes from ``scores``: metric, faithfulness, CPR/CMD, and
    ROC/AUC against the task's official circuit when it has one."""
    from edgewise.circuits import circuit_edges, edge_counts_util, run_circuits
    from edgewise.metrics.faithfulness import cpr_cmd, faithfulness_curve, measure_roc

    sizes = edge_counts_util(pm.n_edges, None, scores)
    if len(sizes) > 40:  # keep evaluation quick: a log-spaced subset
        step = len(sizes) / 40
        sizes = sorted({sizes[int(i * step)] for i in range(40)} | {0, pm.n_edges})
    outs = run_circuits(pm, test, sizes, scores, progress=not quiet, max_memory=max_memory)
    measured = _measure(pm, test, outs, task.metric)
    result: dict[str, Any] = {"algorithm": algo, "metric": task.metric, "measurements": measured}
    try:
        result["faithfulness"] = faithfulness_curve(measured)
        result["cpr"], result["cmd"] = cpr_cmd(measured)
    except ValueError as e:
        result["faithfulness_error"] = str(e)
    if task.official_edges is not None:
        official = task.official_edges(pm)
        roc = measure_roc(pm, official, scores)
        result.update(auc=roc.auc, roc={"fpr": roc.fpr, "tpr": roc.tpr},
                      official_edges=sorted([e.name, e.seq_idx] for e in official))
    top = circuit_edges(pm, scores, min(20, pm.n_edges))
    result["top_edges"] = [
        {"edge": e.name, "seq_idx": e.seq_idx,
         "score": float(scores[e.dest.module_name][e.patch_idx])}
        for e in sorted(top, key=lambda e: -abs(float(scores[e.dest.module_name][e.patch_idx])))
    ]
    return result


def _setup(model_name: str | None, task_name: str, batch_size: int) -> tuple[Any, Any, Any, Any]:
    from edgewise.patching import patchable_model
    from edgewise.tasks import get_task, load_model

    task = get_task(task_name)
    model_name = model_name or task.model
    if not model_name:
        raise ValueError(f"task {task_name!r} has no default model: pass --model")
    model = load_model(model_name)
    train, test = task.dataloaders(model, batch_size)
    seq_len = train.seq_len if task.token_positions else None
    pm = patchable_model(model, slice_output=task.slice_output, seq_len=seq_len)  # type: ignore[arg-type]
    return task, pm, train, test


# ------------------------------------------------------------------ resuming discover
STATE_DIR = "checkpoints"  # resume state inside --out: <algo>.json and <algo>.pt
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
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        fp = state["fingerprint"]
        if "next_dest" in state:  # ACDC: destinations decided
            return f"{int(state['next_dest'])}/{int(fp['dests'])}"
        per_batch = -(-len(fp["edges"]) // int(fp["edges_per_pass"]))  # exact: chunks done
        return f"{int(state['done'])}/{per_batch * len(fp['batches'])}"
    except Exception:  # another algorithm's format: resuming still works, only unreported
        return "?"


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    from edgewise.io import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1)))


def _remove_stale_temporaries(*folders: Path) -> None:
    """Delete temporary files a killed run left (``atomic_write``'s ``.name.XXX.tmp``);
    finished files are only ever renamed into place."""
    for folder in folders:
        if folder.is_dir():
            for f in folder.iterdir():
                if f.is_file() and f.name.startswith(".") and f.name.endswith(".tmp"):
                    f.unlink()


def _load_resume(
    out: Path, algo: str, fingerprint: dict[str, Any], pm: Any, fresh: bool
) -> _Resume:
    """Check what ``out`` holds for ``algo`` against this run's settings."""
    from edgewise.io import load_prune_scores

    r = _Resume(fingerprint)
    if fresh:
        return r
    state_path = out / STATE_DIR / f"{algo}.json"
    if state_path.exists():
        state = json.loads(state_path.read_text())
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
        except ValueError as e:
            raise ValueError(f"{e}; rerun with --fresh to start over, or use another --out") from e
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


def discover(args: argparse.Namespace) -> dict[str, Any]:
    """Score edges with each algorithm, evaluate circuits, save everything under --out.

    A rerun with the same settings resumes: algorithms whose scores and evaluation were
    saved are reused, an interrupted ACDC or exact patching continues from its
    checkpoint in ``--out/checkpoints``; ``--fresh`` starts over."""
    import inspect

    from edgewise import __version__
    from edgewise.io import save_mib_json, save_prune_scores
    from edgewise.prune_algos import ALGORITHMS

    algos = list(dict.fromkeys(args.algo))
    unknown = [a for a in algos if a not in ALGORITHMS]
    if unknown:
        raise ValueError(f"unknown algorithm(s) {unknown}. Algorithms: {', '.join(ALGORITHMS)}")
    task, pm, train, test = _setup(args.model, args.task, args.batch_size)
    out = Path(args.out)
    state_dir = out / STATE_DIR
    fresh = getattr(args, "fresh", False)
    if fresh:
        shutil.rmtree(state_dir, ignore_errors=True)
        (out / "results.json").unlink(missing_ok=True)
        for algo in algos:
            for name in (f"scores_{algo}.safetensors", f"circuit_{algo}_mib.json"):
                (out / name).unlink(missing_ok=True)
    _remove_stale_temporaries(out, state_dir)
    results: dict[str, Any] = {"model": args.model or task.model, "task": task.name,
                               "n_edges": pm.n_edges, "seq_len": pm.seq_len, "algorithms": {}}
    common = {"model": results["model"], "task": task.name, "batch_size": args.batch_size,
              "data_sha256": _sha256_of_data(train, test), "graph_sha256": _sha256_of_edges(pm),
              "seq_len": pm.seq_len, "edgewise_version": __version__}
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
            if "checkpoint" in inspect.signature(ALGORITHMS[algo].function).parameters:
                call["checkpoint"] = str(checkpoint)
            before = r.seconds or 0.0
            _write_json(state_path, {"fingerprint": r.fingerprint, "seconds": before})
            official = task.official_edges(pm) if task.official_edges is not None else None
            start = time.perf_counter()
            try:
                scores = ALGORITHMS[algo](pm, train, official, **call)
            except BaseException:  # keep the time spent, then let the interruption through
                spent = before + time.perf_counter() - start
                _write_json(state_path, {"fingerprint": r.fingerprint, "seconds": spent})
                raise
            seconds = before + time.perf_counter() - start
            meta = {k: r.fingerprint[k] for k in ("model", "task", "algorithm", "parameters",
                                                  "batch_size", "data_sha256", "graph_sha256")}
            save_prune_scores(out / f"scores_{algo}.safetensors", scores, pm, meta)
            _write_json(state_path, {"fingerprint": r.fingerprint, "seconds": seconds})
            checkpoint.unlink(missing_ok=True)  # the scores file supersedes it
            r.result = None
        result = r.result
        if result is None:
            result = evaluate_scores(pm, task, test, scores, algo, args.quiet, args.max_memory)
            _write_json(state_path, {"fingerprint": r.fingerprint, "seconds": seconds,
                                     "result": result})
        results["algorithms"][algo] = {**result, "seconds": seconds}
        try:
            save_mib_json(out / f"circuit_{algo}_mib.json", pm, scores,
                          [pm.edge(d["edge"], d["seq_idx"]) for d in result["top_edges"]])
        except ValueError:  # the format cannot express this graph (e.g. token positions)
            pass
    _write_json(out / "results.json", results)
    return results


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Re-evaluate the scores saved in a results folder."""
    from edgewise.io import load_prune_scores

    folder = Path(args.dir)
    previous = json.loads((folder / "results.json").read_text())
    task, pm, _, test = _setup(previous["model"], previous["task"], args.batch_size)
    for algo in previous["algorithms"]:
        scores, _ = load_prune_scores(folder / f"scores_{algo}.safetensors", pm)
        seconds = previous["algorithms"][algo].get("seconds")
        previous["algorithms"][algo] = evaluate_scores(pm, task, test, scores, algo, args.quiet, args.max_memory)
        previous["algorithms"][algo]["seconds"] = seconds
    _write_json(folder / "results.json", previous)
    return previous


def report(args: argparse.Namespace) -> Path:
    from edgewise.visualize import write_report

    folder = Path(args.dir)
    return write_report(json.loads((folder / "results.json").read_text()), folder / "report.html")


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


def build_parser() -> argparse.ArgumentParser:
    from edgewise.prune_algos import ALGORITHMS

    parser = argparse.ArgumentParser(prog="edgewise", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("discover", help="score edges, evaluate circuits, save results")
    d.add_argument("--model", help="toy-ioi, tracr-reverse, a local HF directory, or a TL name")
    d.add_argument("--task", required=True, help="a task name or a dataset JSON file")
    d.add_argument("--algo", nargs="+", default=["eap"], help=f"any of {', '.join(ALGORITHMS)}")
    d.add_argument("--out", required=True, metavar="DIR",
                   help="results folder. Rerunning the same command resumes an interrupted "
                        "run: finished algorithms are reused, ACDC and exact patching continue "
                        f"from their checkpoints in DIR/{STATE_DIR}; other settings are an error")
    e = sub.add_parser("evaluate", help="re-evaluate saved scores")
    e.add_argument("dir")
    r = sub.add_parser("report", help="write report.html for a results folder")
    r.add_argument("dir")
    m = sub.add_parser("demo", help="the whole loop on the shipped toy model")
    m.add_argument("--out", default="runs/demo")
    for p in (d, e, m):
        p.add_argument("--batch-size", type=int, default=16)
    for p in (d, m):
        p.add_argument("--fresh", action="store_true",
                       help=f"start over instead of resuming: delete DIR/{STATE_DIR}, results.json "
                            "and the requested algorithms' scores, then compute everything")
    for p in (d, e, m):
        p.add_argument("--max-memory", metavar="SIZE",
                       help="budget for each pass's patch buffers, e.g. 8GiB or auto (see "
                            "edgewise.memory); same scores, more passes")  # fmt: skip
    for p in (d, e, r, m):
        p.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
        else:
            demo(args)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"edgewise: error: {e}", file=sys.stderr)
        return 2
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
