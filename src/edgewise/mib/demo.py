"""``edgewise mib demo``: the whole MIB circuit-track loop, offline, on the shipped toy
IOI model and the shipped made-up MIB-format IOI examples.

1. discovery prompts: the ``train`` split, evaluation prompts: the ``validation`` split
   (:func:`~edgewise.mib.data.load_mib_task`, MIB's defaults);
2. edge scores by EAP and EAP-IG on inputs; node and neuron scores by those two methods
   and EAP-IG on activations
   (:func:`~edgewise.prune_algos.node_attribution.node_attribution_scores`), every one
   with MIB's conventions (docs/mib.md): averaged over prompts, EAP-IG's points, the MLP
   gradient at the MLP's input;
3. MIB submission files for each edge method (importances, and the 9 circuits ranked
   by signed and by ``abs`` score), validated and read back;
4. CPR and CMD exactly as MIB computes them, at edge, node and neuron level, with
   bootstrap intervals over the evaluation prompts (:mod:`edgewise.mib.intervals`);
5. ``mib_results.json`` and the page ``mib_report.html``;
6. a summary table on stdout.

The toy model is not one of MIB's models: its files go in MIB's ``ioi_gpt2`` folder
(the toy model is a GPT-2-style model) and are validated without comparing their shape
to GPT-2 small's, and with one task and one model (a real submission needs two of
each). The folder follows ``edgewise discover``'s rules
(:mod:`edgewise.io.results_folder`): a marker, a lock, foreign non-empty folders refused
unless ``allow_existing``, atomic writes with the umask's modes, no links followed, and
only edgewise's own names (``mib_results.json``, ``mib_report.html``,
``mib_submission/``) written.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgewise.checks import cli_int
from edgewise.mib.intervals import MibIntervals
from edgewise.runtime.memory import memory_arg

__all__ = [
    "DEMO_MODEL",
    "DEMO_TASK",
    "MibDemo",
    "format_summary",
    "run_mib_demo",
]

DEMO_MODEL = "toy-ioi"
DEMO_TASK = "mib-ioi"
"""The marker's model and task: a folder of ``edgewise mib demo`` holds nothing else."""
MIB_TASK, MIB_MODEL = "ioi", "gpt2"
RESULTS_FILE = "mib_results.json"
REPORT_FILE = "mib_report.html"
SUBMISSION_DIR = "mib_submission"
EDGE_METHODS = ("eap", "eap-ig-inputs")
NODE_METHODS = ("eap", "eap-ig-inputs", "eap-ig-activations")
BATCH_SIZE = 16
NOTE = (
    "Made-up MIB-format IOI examples on the shipped toy model: the numbers show the "
    "pipeline, not MIB results. CPR: area under the faithfulness of the signed top-n "
    "circuits; CMD: area under |1 - faithfulness| of the |score| top-n circuits; "
    "trapezoids over MIB's ten fractions (0.1% ... 100%). Intervals: percentile bootstrap "
    "over the evaluation prompts (few prompts here, so the intervals are coarse)."
)


@dataclass
class MibDemo:
    """What :func:`run_mib_demo` computed and wrote.

    Attributes:
        rows: ``(method, interval)`` per scored level, edges first.
        edge_scores: edge method -> its scores (destination module -> mask shape).
        node_scores: ``(method, "node" | "neuron")`` -> node scores.
        paths: what was written: ``results``, ``report``, and per edge method
            ``<method>/importances`` and ``<method>/circuits`` (submission roots).
        results: the ``mib_results.json`` document.
        model: the patchable toy model (MIB's graph, no token positions).
        eval_loader: the evaluation prompts (the ``validation`` split).
    """

    rows: list[tuple[str, MibIntervals]]
    edge_scores: dict[str, dict[str, torch.Tensor]]
    node_scores: dict[tuple[str, str], dict[str, torch.Tensor]]
    paths: dict[str, Path]
    results: dict[str, Any] = field(default_factory=dict)
    model: Any = None
    eval_loader: Any = None


def _loader(dataset: Any) -> Any:
    from edgewise.data import PromptDataLoader

    return PromptDataLoader(dataset, batch_size=BATCH_SIZE, drop_last=False,
                            name="the MIB IOI examples")  # fmt: skip


def _export(out: Path, pm: Any, method: str, scores: Any) -> dict[str, Any]:
    """Write and validate one edge method's submission folders; return their paths."""
    from edgewise.mib.submission import export_circuits, export_importances, validate_submission

    root = out / SUBMISSION_DIR / method
    imp, circ = root / "importances", root / "circuits"
    export_importances(imp, pm, scores, MIB_TASK, MIB_MODEL)
    export_circuits(circ, pm, scores, MIB_TASK, MIB_MODEL, absolute=None)
    entry: dict[str, Any] = {"importances": imp, "circuits": circ}
    for kind, folder in (("importances", imp), ("circuits", circ)):
        found = validate_submission(folder, min_tasks=1, min_models=1, check_shapes=False)
        entry[f"{kind}_valid"] = ", ".join(f"{k}: {v}" for k, v in found.items())
    return entry


def run_mib_demo(
    out: str | Path,
    n_resamples: int = 100,
    progress: bool = False,
    allow_existing: bool = False,
    seed: int = 0,
    device: str = "cpu",
    dtype: str | None = None,
    max_memory: str | int | None = None,
) -> MibDemo:
    """Run the MIB loop (see the module docstring) and write its files into ``out``.

    Args:
        out: the results folder (created if missing).
        n_resamples: bootstrap resamples of the evaluation prompts (>= 1).
        progress: show progress bars.
        allow_existing: write into a non-empty folder edgewise did not make (its files
            are left alone; none may have a name edgewise writes).
        seed: the resamples' seed.
        device: where the model runs: cpu, cuda, cuda:N or auto
            (:func:`edgewise.runtime.resolve.resolve_device`).
        dtype: the model's dtype, one of float32 (``None``), float64, bfloat16, float16.
        max_memory: a budget for each pass's patch buffers of the edge scoring and
            evaluation (``"8GiB"``, ``"auto"``; :mod:`edgewise.runtime.memory`).

    Returns:
        A :class:`MibDemo` with the scores, the intervals and the paths written.

    Raises:
        OutputFolderError: ``out`` is a file, another run's folder, or someone else's.
        FolderInUseError: another run holds the folder's lock.
        ValueError: ``n_resamples`` below 1.
    """
    from edgewise.checks import require_int
    from edgewise.io.results_folder import check_output_folder, writing
    from edgewise.runtime.resolve import resolve_device, resolve_dtype

    n_resamples = require_int(n_resamples, "n_resamples (--bootstrap)", 1)
    device, torch_dtype = resolve_device(device), resolve_dtype(dtype)  # before any work
    folder = Path(out)
    check_output_folder(folder, DEMO_MODEL, DEMO_TASK, allow_existing)
    with writing(folder):  # the lock; links refused, a killed run's temporaries removed
        return _run_locked(folder, n_resamples, progress, seed, device, torch_dtype, max_memory)


def _run_locked(folder: Path, n_resamples: int, progress: bool, seed: int, device: str = "cpu",
                dtype: Any = None, max_memory: str | int | None = None) -> MibDemo:  # fmt: skip
    from edgewise import __version__
    from edgewise.benchmarks.toy_models import load
    from edgewise.io.files import write_json
    from edgewise.io.results_folder import write_marker
    from edgewise.mib.data import load_mib_task
    from edgewise.mib.intervals import (
        mib_bootstrap,
        mib_evaluate_nodes_per_prompt,
        mib_evaluate_per_prompt,
    )
    from edgewise.mib.report import write_mib_report
    from edgewise.patching.wrap import patchable_model
    from edgewise.prune_algos import ALGORITHMS
    from edgewise.prune_algos.node_attribution import node_attribution_scores

    start = time.perf_counter()
    write_marker(folder, DEMO_MODEL, DEMO_TASK)
    model = load(DEMO_MODEL, device=device, **({} if dtype is None else {"dtype": dtype}))
    pm = patchable_model(model, slice_output="last_seq", seq_len=None)
    train_ds = load_mib_task(MIB_TASK, None, model.tokenizer, split="train", device=device)
    eval_ds = load_mib_task(MIB_TASK, None, model.tokenizer, split="validation", device=device)
    train, test = _loader(train_ds), _loader(eval_ds)

    # MIB's scale for every method, also those whose registry default is auto-circuit's sum
    budget = {"max_memory": max_memory} if max_memory is not None else {}
    edge_scores = {m: ALGORITHMS[m](pm, train, None, progress=progress, scale="mean",
                                    **(budget if ALGORITHMS[m].max_memory else {}))
                   for m in EDGE_METHODS}  # fmt: skip
    node_scores = {
        (m, lvl): node_attribution_scores(pm, train, m, lvl, progress=progress)
        for m in NODE_METHODS
        for lvl in ("node", "neuron")
    }
    paths: dict[str, Path] = {}
    submission: dict[str, Any] = {}
    for m, scores in edge_scores.items():
        entry = _export(folder, pm, m, scores)
        submission[m] = {k: str(v) for k, v in entry.items()}
        paths[f"{m}/importances"], paths[f"{m}/circuits"] = entry["importances"], entry["circuits"]

    rows: list[tuple[str, MibIntervals]] = []
    for m, scores in edge_scores.items():
        _, measured = mib_evaluate_per_prompt(pm, test, scores, progress=progress, **budget)
        rows.append((m, mib_bootstrap(measured, n_resamples, seed=seed)))
    for (m, _lvl), scores in node_scores.items():
        measured = mib_evaluate_nodes_per_prompt(pm, test, scores, progress=progress)
        rows.append((m, mib_bootstrap(measured, n_resamples, seed=seed)))

    results: dict[str, Any] = {
        "written_by": "edgewise mib demo", "edgewise_version": __version__,
        "model": DEMO_MODEL, "task": f"MIB {MIB_TASK} (shipped made-up examples)",
        "mib_folder": f"{MIB_TASK}_{MIB_MODEL}", "n_edges": pm.n_edges,
        "n_train": len(train_ds), "n_eval": len(eval_ds), "note": NOTE,
        "device": device, "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "rows": [{"method": m, **iv.to_json()} for m, iv in rows],
        "submission": submission,
        "seconds": round(time.perf_counter() - start, 3),
    }  # fmt: skip
    paths["results"] = write_json(folder / RESULTS_FILE, results)
    paths["report"] = write_mib_report(results, folder / REPORT_FILE)
    return MibDemo(rows, edge_scores, node_scores, paths, results, pm, test)


def format_summary(demo: MibDemo) -> str:
    """The table ``edgewise mib demo`` prints: method, level, CPR [lo, hi], CMD [lo, hi]
    (4 decimals), then the paths written."""
    from edgewise.mib.report import interval_text

    level = demo.rows[0][1].level_ci if demo.rows else 0.95
    lines = [
        f"{'method':<18} {'level':<7} {'CPR [' + f'{100 * level:g}% interval]':<28} "
        f"{'CMD [' + f'{100 * level:g}% interval]':<28}"
    ]
    for method, iv in demo.rows:
        lines.append(
            f"{method:<18} {iv.level:<7} {interval_text(iv.cpr):<28} {interval_text(iv.cmd):<28}"
        )
    lines.append("")
    for name, path in demo.paths.items():
        lines.append(f"{name}: {path}")
    return "\n".join(line.rstrip() for line in lines)


def run_demo_command(args: argparse.Namespace) -> MibDemo:
    """``edgewise mib demo``: run the loop, print the summary table and the paths."""
    demo = run_mib_demo(args.out, args.bootstrap, progress=not args.quiet,
                        allow_existing=args.allow_existing, device=args.device,
                        dtype=args.dtype, max_memory=args.max_memory)  # fmt: skip
    print(format_summary(demo))
    return demo


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``edgewise mib demo``."""
    p = sub.add_parser(
        "demo",
        help="the whole MIB loop offline on the shipped toy IOI model: scores, submission "
        "files, CPR/CMD with bootstrap intervals, a report page",
    )
    p.add_argument("--out", default="runs/mib-demo", metavar="DIR", help="results folder")
    p.add_argument(
        "--bootstrap",
        type=cli_int(1),
        default=100,
        metavar="N",
        help="bootstrap resamples of the evaluation prompts (default 100)",
    )
    p.add_argument(
        "--allow-existing",
        action="store_true",
        help="write into a non-empty folder edgewise did not make; its files are "
        "left alone (none may have a name edgewise writes)",
    )
    from edgewise.runtime.resolve import add_device_arguments

    add_device_arguments(p, kind=False)
    p.add_argument("--max-memory", metavar="SIZE", default=None, type=memory_arg,
                   help="budget for each pass's patch buffers, e.g. 8GiB or auto; same "
                        "scores, more passes")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(mib_run=run_demo_command)
