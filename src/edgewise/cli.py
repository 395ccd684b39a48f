"""The ``edgewise`` command line: discover, evaluate, report, demo.

    edgewise discover --model toy-ioi --task toy_ioi --algo eap ig acdc --out runs/ioi
    edgewise evaluate runs/ioi
    edgewise report runs/ioi
    edgewise demo
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _algorithm_params(algo: str, task: Any, quiet: bool) -> dict[str, Any]:
    import inspect

    from edgewise.prune_algos import ALGORITHMS

    accepts = inspect.signature(ALGORITHMS[algo].function).parameters
    params: dict[str, Any] = {"progress": not quiet} if "progress" in accepts else {}
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
    pm: Any, task: Any, test: Any, scores: Any, algo: str, quiet: bool = False
) -> dict[str, Any]:
    """Circuits of several sizes from ``scores``: metric, faithfulness, CPR/CMD, and
    ROC/AUC against the task's official circuit when it has one."""
    from edgewise.circuits import circuit_edges, edge_counts_util, run_circuits
    from edgewise.metrics.faithfulness import cpr_cmd, faithfulness_curve, measure_roc

    sizes = edge_counts_util(pm.n_edges, None, scores)
    if len(sizes) > 40:  # keep evaluation quick: a log-spaced subset
        step = len(sizes) / 40
        sizes = sorted({sizes[int(i * step)] for i in range(40)} | {0, pm.n_edges})
    outs = run_circuits(pm, test, sizes, scores, progress=not quiet)
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


def discover(args: argparse.Namespace) -> dict[str, Any]:
    """Score edges with each algorithm, evaluate circuits, save everything under --out."""
    from edgewise.io import atomic_write, save_mib_json, save_prune_scores
    from edgewise.prune_algos import ALGORITHMS

    unknown = [a for a in args.algo if a not in ALGORITHMS]
    if unknown:
        raise ValueError(f"unknown algorithm(s) {unknown}. Algorithms: {', '.join(ALGORITHMS)}")
    task, pm, train, test = _setup(args.model, args.task, args.batch_size)
    out = Path(args.out)
    results: dict[str, Any] = {"model": args.model or task.model, "task": task.name,
                               "n_edges": pm.n_edges, "seq_len": pm.seq_len, "algorithms": {}}
    for algo in args.algo:
        params = _algorithm_params(algo, task, args.quiet)
        start = time.perf_counter()
        official = task.official_edges(pm) if task.official_edges is not None else None
        scores = ALGORITHMS[algo](pm, train, official, **params)
        seconds = time.perf_counter() - start
        meta = {"model": results["model"], "task": task.name, "algorithm": algo,
                "parameters": {**ALGORITHMS[algo].defaults, **params}}
        save_prune_scores(out / f"scores_{algo}.safetensors", scores, pm, meta)
        result = evaluate_scores(pm, task, test, scores, algo, args.quiet)
        result["seconds"] = seconds
        results["algorithms"][algo] = result
        try:
            save_mib_json(out / f"circuit_{algo}_mib.json", pm, scores,
                          [pm.edge(d["edge"], d["seq_idx"]) for d in result["top_edges"]])
        except ValueError:  # the format cannot express this graph (e.g. token positions)
            pass
    atomic_write(out / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=1)))
    return results


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Re-evaluate the scores saved in a results folder."""
    from edgewise.io import atomic_write, load_prune_scores

    folder = Path(args.dir)
    previous = json.loads((folder / "results.json").read_text())
    task, pm, _, test = _setup(previous["model"], previous["task"], args.batch_size)
    for algo in previous["algorithms"]:
        scores, _ = load_prune_scores(folder / f"scores_{algo}.safetensors", pm)
        seconds = previous["algorithms"][algo].get("seconds")
        previous["algorithms"][algo] = evaluate_scores(pm, task, test, scores, algo, args.quiet)
        previous["algorithms"][algo]["seconds"] = seconds
    atomic_write(folder / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(previous, indent=1)))
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
    d.add_argument("--out", required=True)
    e = sub.add_parser("evaluate", help="re-evaluate saved scores")
    e.add_argument("dir")
    r = sub.add_parser("report", help="write report.html for a results folder")
    r.add_argument("dir")
    m = sub.add_parser("demo", help="the whole loop on the shipped toy model")
    m.add_argument("--out", default="runs/demo")
    for p in (d, e, m):
        p.add_argument("--batch-size", type=int, default=16)
    for p in (d, e, r, m):
        p.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
