"""Files for a submission to MIB's circuit-localization leaderboard: export, import back,
and validate against MIB's rules.

MIB's rules, as read in ``hannamw/MIB-circuit-track`` (``README.md``, "Submitting to the
MIB Leaderboard"; ``MIB_circuit_track/utils.py``; EAP-IG's ``Graph.from_json``) and in the
leaderboard's evaluator ``mttk/MIB-circuit-track-autoeval`` (``eval_submissions.py``,
``run_evaluation.py``, ``MIB_circuit_track/evaluation.py``):

* **Layout.** One folder per task and model, named ``<task>_<model>`` with the task's
  underscores written as hyphens: ``ioi_gpt2``, ``arc-easy_llama3``. Valid pairs are
  MIB's ``COL_MAPPING`` (:data:`MIB_TASK_MODELS`). The evaluator also accepts these
  folders inside ``abs-True`` / ``abs-False`` folders, evaluating each only with that
  choice of ``absolute`` (CMD / CPR). At least 2 models and at least 2 tasks.
* **Contents of a folder.** Either one ``.json`` / ``.pt`` file of importance scores
  (every edge scored), or 9 files of circuits (``in_graph`` marks membership). The
  evaluator counts files: one means scores, two or more means circuits (it reads up to 9).
* **Circuit sizes.** The 9 circuits hold no more than 0.1%, 0.2%, 0.5%, 1%, 2%, 5%, 10%,
  20% and 50% of the edges (the README lists a tenth value, 0, but asks for 9 files; the
  evaluator appends the full model as the tenth point). Circuits are matched to sizes by
  sorting them by edge count.
* **The JSON schema** (EAP-IG's ``Graph.from_json``): ``cfg`` (``n_layers``, ``n_heads``,
  ``parallel_attn_mlp``, ``d_model``), ``nodes`` (name -> ``{"in_graph": bool}``), ``edges``
  (name -> ``{"score": number, "in_graph": bool}``; the loader reads both keys of every
  edge, circuit files included). Edge names are ``input->a0.h1<q>``, ``a0.h1->m0``,
  ``m11->logits``. The loader gives edges absent from the file a score of 0; edgewise's
  validation is stricter and requires every edge, with a finite score.

* **Scale.** MIB's scores are its attribution code's: the sum over batches of each
  batch's mean divided by the number of prompts (``docs/mib.md``). ``edgewise mib export``
  converts an edgewise scores file summed over batches to that scale with the prompt
  count the file records (:func:`to_mib_scale`; ``--keep-scale`` writes it as it is). The
  functions below write the scores they are given.

Not confirmed (the leaderboard's own format checker is not public): which file names it
accepts (the evaluator reads any ``.json``/``.pt``; edgewise writes ``importances.json`` as
MIB's scripts do, and ``edges_<percent>pct.json`` for circuits), and node- or neuron-level
files (not exported here; validation checks edge-level files).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from edgewise.checks import cli_int
from edgewise.io.files import (
    FileFormatError,
    load_mib_json,
    read_json,
    save_mib_json,
    torch_file_error,
)
from edgewise.mib.evaluate import MIB_PERCENTAGES, mib_circuit
from edgewise.patching.model import PatchableModel
from edgewise.types import Edge, PruneScores

MIB_TASK_MODELS: tuple[str, ...] = (
    "ioi_gpt2", "ioi_qwen2.5", "ioi_gemma2", "ioi_llama3", "ioi_interpbench",
    "mcqa_qwen2.5", "mcqa_gemma2", "mcqa_llama3",
    "arithmetic-addition_llama3", "arithmetic-subtraction_llama3",
    "arc-easy_gemma2", "arc-easy_llama3", "arc-challenge_llama3",
)  # fmt: skip
"""The ``<task>_<model>`` folder names MIB evaluates (its ``COL_MAPPING``)."""

MIB_MODEL_SHAPES: dict[str, tuple[int, int, bool]] = {
    "gpt2": (12, 12, False),
    "qwen2.5": (24, 14, False),
    "gemma2": (26, 8, False),
    "llama3": (32, 32, False),
    "interpbench": (6, 4, False),  # inferred: the only shape with the evaluator's 1,108 edges
}
"""``(n_layers, n_heads, parallel_attn_mlp)`` of MIB's models (their edge counts match the
evaluator's ``EDGE_COUNTS``)."""

SUBMISSION_PERCENTAGES: tuple[float, ...] = MIB_PERCENTAGES[:-1]
"""The 9 sizes of a circuit submission: at most 0.1%, ..., 50% of the edges."""

IMPORTANCES_FILE = "importances.json"


class SubmissionError(ValueError):
    """A submission breaks one of MIB's rules; the message names the file and the fix."""


class LayoutError(SubmissionError):
    """Folder names, file counts or file kinds are not MIB's layout."""


class SchemaError(SubmissionError):
    """A file is not MIB's graph JSON: missing keys, wrong types."""


class EdgeSetError(SubmissionError):
    """A file lacks some of the graph's edges, or names edges the graph has not."""


class NonFiniteScoreError(SubmissionError):
    """A score is NaN or infinite."""


class CircuitSizeError(SubmissionError):
    """The circuits' sizes do not fit MIB's 9 size limits."""


def folder_name(task: str, model_name: str) -> str:
    """MIB's folder for a task and model: ``folder_name("arc_easy", "llama3") ==
    "arc-easy_llama3"``; unknown pairs raise :class:`LayoutError`."""
    name = f"{task.replace('_', '-')}_{model_name}"
    if name not in MIB_TASK_MODELS:
        raise LayoutError(
            f"{name!r} is not a task/model pair MIB evaluates; use one of {MIB_TASK_MODELS}"
        )
    return name


def mib_graph_names(
    n_layers: int, n_heads: int, parallel_attn_mlp: bool = False
) -> tuple[list[str], list[str]]:
    """The node and edge names of MIB's graph for a model shape, in EAP-IG's order
    (``Graph.from_model``): nodes ``input, a0.h0, ..., m0, a1.h0, ..., logits``; an edge
    from every earlier node to each head's q/k/v input, to each MLP and to the logits."""
    nodes, edges = ["input"], []
    stream = ["input"]
    for layer in range(n_layers):
        heads = [f"a{layer}.h{h}" for h in range(n_heads)]
        mlp = f"m{layer}"
        edges += [f"{s}->{h}<{x}>" for s in stream for h in heads for x in "qkv"]
        if not parallel_attn_mlp:
            stream = stream + heads
        edges += [f"{s}->{mlp}" for s in stream]
        stream = stream + ([] if not parallel_attn_mlp else heads) + [mlp]
        nodes += heads + [mlp]
    edges += [f"{s}->logits" for s in stream]
    return nodes + ["logits"], edges


# ------------------------------------------------------------------------------ export
def export_importances(
    folder: str | os.PathLike,
    model: PatchableModel,
    prune_scores: PruneScores,
    task: str,
    model_name: str,
) -> Path:
    """Write ``<folder>/<task>_<model>/importances.json``: every edge's score in MIB's graph
    JSON (no edge marked in the graph). Returns the file's path."""
    out = Path(folder) / folder_name(task, model_name)
    _refuse_mixed(out, IMPORTANCES_FILE)
    return save_mib_json(out / IMPORTANCES_FILE, model, prune_scores)


def circuit_file_name(percent: float) -> str:
    """``edges_0.1pct.json`` for the circuit of at most 0.1% of the edges."""
    return f"edges_{percent * 100:g}pct.json"


def export_circuits(
    folder: str | os.PathLike,
    model: PatchableModel,
    prune_scores: PruneScores,
    task: str,
    model_name: str,
    absolute: bool | None = True,
) -> list[Path]:
    """Write MIB's 9 circuits for ``prune_scores`` into ``<folder>/<task>_<model>/``: at
    each of :data:`SUBMISSION_PERCENTAGES`, the circuit MIB's own evaluation would take
    (``int(p * n_edges)`` top edges by ``abs`` score with ``absolute``, by signed score
    without, then pruned), scores kept. ``absolute=None`` writes both, under ``abs-True``
    (for CMD) and ``abs-False`` (for CPR), the layout MIB's evaluator reads per choice."""
    if absolute is None:
        return [
            p
            for a in (True, False)
            for p in export_circuits(
                Path(folder) / f"abs-{a}", model, prune_scores, task, model_name, a
            )
        ]
    out = Path(folder) / folder_name(task, model_name)
    paths = []
    for p in SUBMISSION_PERCENTAGES:
        _refuse_mixed(out, circuit_file_name(p))
        circuit = mib_circuit(model, prune_scores, int(p * model.n_edges), absolute)
        paths.append(save_mib_json(out / circuit_file_name(p), model, prune_scores, circuit))
    return paths


def _refuse_mixed(out: Path, name: str) -> None:
    """Refuse to write into a folder that holds other graph files (the evaluator counts
    files to tell scores from circuits)."""
    if out.is_dir():
        circuit = name.startswith("edges_")  # circuit files may sit with each other only
        others = sorted(
            p.name
            for p in out.iterdir()
            if p.suffix in (".json", ".pt")
            and p.name != name
            and (not circuit or not p.name.startswith("edges_"))
        )
        if others:
            raise LayoutError(
                f"{out} already holds {others}: a folder holds one scores file or 9 "
                "circuit files, never both; export into an empty folder"
            )


# ------------------------------------------------------------------------------ import
def import_submission(
    path: str | os.PathLike, model: PatchableModel
) -> PruneScores | list[set[Edge]]:
    """Read one ``<task>_<model>`` folder back: the scores of its one file, or the 9
    circuits (edges marked ``in_graph``) sorted by size."""
    folder = Path(path)
    files = _graph_files(folder)
    if len(files) == 1:
        return load_mib_json(files[0], model)[0]
    return sorted((load_mib_json(f, model)[1] for f in files), key=len)


def _graph_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise LayoutError(
            f"{folder} is not a folder: a submission has one folder per task and model"
        )
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    odd = [p.name for p in files if p.suffix not in (".json", ".pt")]
    if odd:
        raise LayoutError(
            f"{folder} holds {odd}: only .json or .pt graph files go in a task/model folder"
        )
    if len(files) not in (1, len(SUBMISSION_PERCENTAGES)):
        raise LayoutError(
            f"{folder} holds {len(files)} graph files: MIB expects 1 (importance scores) "
            f"or {len(SUBMISSION_PERCENTAGES)} (circuits of at most "
            f"{', '.join(f'{p * 100:g}%' for p in SUBMISSION_PERCENTAGES)} of the edges)"
        )
    return files


# ---------------------------------------------------------------------------- validate
def _load_graph_doc(path: Path) -> dict[str, Any]:
    """A graph file as ``{"cfg", "edges": {name: {"score", "in_graph"}}}``; ``.pt`` files
    (EAP-IG's ``to_pt``: score and membership matrices) are turned into the same form."""
    if path.suffix == ".json":
        try:
            doc = read_json(path)
        except FileFormatError as e:
            raise SchemaError(str(e)) from None
        if not isinstance(doc, dict) or not {"cfg", "nodes", "edges"} <= set(doc):
            raise SchemaError(
                f"{path} lacks the keys 'cfg', 'nodes' and 'edges' of MIB's graph JSON"
            )
        return doc
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        fix = "export it again (EAP-IG's Graph.to_pt, or MIB's graph JSON)"
        raise SchemaError(str(torch_file_error(path, e, fix))) from None
    need = ["cfg", "src_nodes", "dst_nodes", "edges_scores", "edges_in_graph", "nodes_in_graph"]
    if not isinstance(d, dict) or not set(need) <= set(d):
        raise SchemaError(f"{path} lacks the keys {need} of EAP-IG's .pt graph format")
    cfg = d["cfg"]
    if not isinstance(cfg, dict):
        raise SchemaError(f"{path}: 'cfg' must be a dict")
    _check_cfg(path, cfg)
    n_fwd, n_bwd = (
        1 + cfg["n_layers"] * (cfg["n_heads"] + 1),
        cfg["n_layers"] * (3 * cfg["n_heads"] + 1) + 1,
    )
    for key in ("edges_scores", "edges_in_graph"):
        if not isinstance(d[key], torch.Tensor) or tuple(d[key].shape) != (n_fwd, n_bwd):
            raise SchemaError(f"{path}: '{key}' must be a tensor of shape {(n_fwd, n_bwd)}")
    nodes, names = mib_graph_names(cfg["n_layers"], cfg["n_heads"], bool(cfg["parallel_attn_mlp"]))
    fwd = {n: i for i, n in enumerate(nodes[:-1])}
    bwd: dict[str, int] = {}  # EAP-IG's backward index of each destination
    for layer in range(cfg["n_layers"]):
        for i, x in enumerate("qkv"):
            for h in range(cfg["n_heads"]):
                bwd[f"a{layer}.h{h}<{x}>"] = (
                    layer * (3 * cfg["n_heads"] + 1) + i * cfg["n_heads"] + h
                )
        bwd[f"m{layer}"] = layer * (3 * cfg["n_heads"] + 1) + 3 * cfg["n_heads"]
    bwd["logits"] = n_bwd - 1
    edges = {}
    for name in names:
        src, dst = name.split("->")
        ij = (fwd[src], bwd[dst])
        edges[name] = {
            "score": float(d["edges_scores"][ij]),
            "in_graph": bool(d["edges_in_graph"][ij]),
        }
    return {"cfg": cfg, "nodes": {}, "edges": edges}


def _check_cfg(path: Path, cfg: Any) -> None:
    keys = {"n_layers": int, "n_heads": int, "parallel_attn_mlp": bool, "d_model": int}
    for k, t in keys.items():
        v = cfg.get(k) if isinstance(cfg, dict) else None
        if not isinstance(v, t) or (t is int and isinstance(v, bool)):
            raise SchemaError(f"{path}: cfg[{k!r}] must be {t.__name__}, got {v!r}")


def validate_file(
    path: str | os.PathLike, model_name: str | None = None, scores: bool = True
) -> dict[str, Any]:
    """Check one graph file against MIB's schema: keys and types, the shape in ``cfg``
    against ``model_name``'s (when MIB lists it), every edge of that shape present and no
    other, each with ``in_graph`` (bool) and a finite ``score``. Returns the document
    (``.pt`` files converted to the JSON form).

    Raises:
        SchemaError, EdgeSetError, NonFiniteScoreError: naming the file and the edge."""
    path = Path(path)
    doc = _load_graph_doc(path)
    cfg, entries = doc["cfg"], doc["edges"]
    _check_cfg(path, cfg)
    if not isinstance(entries, dict) or not isinstance(doc["nodes"], dict):
        raise SchemaError(f"{path}: 'nodes' and 'edges' must map names to objects")
    shape = (cfg["n_layers"], cfg["n_heads"], cfg["parallel_attn_mlp"])
    expected = MIB_MODEL_SHAPES.get(model_name or "")
    if expected is not None and shape != expected:
        raise SchemaError(
            f"{path}: cfg has n_layers, n_heads, parallel_attn_mlp = {shape}, but "
            f"{model_name} has {expected}: was it made for another model?"
        )
    node_names, names = mib_graph_names(*shape)
    unknown_nodes = sorted(set(doc["nodes"]) - set(node_names))
    if unknown_nodes:
        raise SchemaError(f"{path}: nodes {unknown_nodes[:3]} are not in MIB's graph of this shape")
    for name, entry in doc["nodes"].items():  # MIB's loader reads in_graph of every node listed
        if name != "logits" and not (
            isinstance(entry, dict) and isinstance(entry.get("in_graph"), bool)
        ):
            raise SchemaError(
                f'{path}: node {name!r} must be {{"in_graph": <bool>}}, got {entry!r}'
            )
    missing = [n for n in names if n not in entries]
    extra = sorted(set(entries) - set(names))
    if missing or extra:
        raise EdgeSetError(
            f"{path}: {len(missing)} of the graph's {len(names)} edges are missing "
            f"(e.g. {missing[:3]}) and {len(extra)} are not in it (e.g. {extra[:3]}); "
            "write every edge of MIB's graph, named as input->a0.h1<q>, a0.h1->m0, m0->logits"
        )
    for name in names:
        entry = entries[name]
        if not isinstance(entry, dict) or "in_graph" not in entry or "score" not in entry:
            raise SchemaError(
                f'{path}: edge {name!r} must be {{"score": <number>, "in_graph": <bool>}} '
                f"(MIB's loader reads both), got {entry!r}"
            )
        if not isinstance(entry["in_graph"], bool):
            raise SchemaError(
                f"{path}: edge {name!r} has in_graph {entry['in_graph']!r}, not true or false"
            )
        s = entry["score"]
        if isinstance(s, bool) or not isinstance(s, (int, float)):
            raise SchemaError(f"{path}: edge {name!r} has score {s!r}, not a number")
        if scores and not math.isfinite(s):
            raise NonFiniteScoreError(
                f"{path}: edge {name!r} has score {s}: scores must be finite numbers "
                "(NaN cannot be ranked; replace infinities by large finite values)"
            )
    return doc


def validate_task_model(folder: str | os.PathLike, model_name: str | None = None) -> str:
    """Check one ``<task>_<model>`` folder: one scores file, or 9 circuits whose sorted
    sizes fit MIB's limits (the ``i``-th smallest at most ``SUBMISSION_PERCENTAGES[i]`` of
    the edges). Returns ``"importances"`` or ``"circuits"``."""
    folder = Path(folder)
    files = _graph_files(folder)
    if len(files) == 1:
        validate_file(files[0], model_name)
        return "importances"
    sizes = []
    for f in files:
        doc = validate_file(f, model_name, scores=False)
        sizes.append((sum(e["in_graph"] for e in doc["edges"].values()), f.name, len(doc["edges"])))
    sizes.sort()
    for (count, name, n_edges), p in zip(sizes, SUBMISSION_PERCENTAGES):
        if count > p * n_edges:
            raise CircuitSizeError(
                f"{folder}: sorted by size, circuit {name} ({count} of {n_edges} edges, "
                f"{100 * count / n_edges:.3g}%) is the one for at most {p * 100:g}% "
                f"(= {int(p * n_edges)} edges); MIB needs circuits of at most "
                f"{', '.join(f'{q * 100:g}%' for q in SUBMISSION_PERCENTAGES)}"
            )
    return "circuits"


def validate_submission(
    path: str | os.PathLike, min_tasks: int = 2, min_models: int = 2, check_shapes: bool = True
) -> dict[str, str]:
    """Check a submission folder against MIB's rules (see the module docstring): folders
    named ``<task>_<model>`` for pairs MIB evaluates (optionally inside ``abs-True`` /
    ``abs-False``), each valid (:func:`validate_task_model`), covering at least
    ``min_tasks`` tasks and ``min_models`` models. ``path`` may also be one
    ``<task>_<model>`` folder (then the counts are not checked); a ``circuits/`` or
    ``importances/`` folder in it is checked as a submission of its own (``edgewise mib
    export --kind both`` writes circuits there). ``check_shapes=False``
    skips comparing each file's ``cfg`` with the named MIB model's shape (for files made
    for other models, e.g. in tests).

    Returns:
        folder (relative to ``path``) -> ``"importances"`` or ``"circuits"``.

    Raises:
        LayoutError, SchemaError, EdgeSetError, NonFiniteScoreError, CircuitSizeError."""

    def model_of(name: str) -> str | None:
        return name.split("_", 1)[1] if check_shapes else None

    root = Path(path)
    if not root.is_dir():
        raise LayoutError(
            f"{root} is not a folder: a submission is a folder of <task>_<model> folders"
        )
    if root.name in MIB_TASK_MODELS:
        return {root.name: validate_task_model(root, model_of(root.name))}
    found: dict[str, str] = {}
    for sub in sorted(p for p in root.iterdir() if not p.name.startswith(".")):
        if sub.is_dir() and sub.name in ("importances", "circuits"):  # export --kind both
            inner_found = validate_submission(sub, min_tasks, min_models, check_shapes)
            found.update((f"{sub.name}/{rel}", kind) for rel, kind in inner_found.items())
            continue
        if sub.is_dir() and sub.name in ("abs-True", "abs-False"):
            inner = sorted(p for p in sub.iterdir() if not p.name.startswith("."))
        else:
            inner = [sub]
        for folder in inner:
            rel = folder.relative_to(root).as_posix()
            if not folder.is_dir():
                raise LayoutError(
                    f"{folder} is a file: files go inside <task>_<model> folders "
                    f"(e.g. ioi_gpt2/{IMPORTANCES_FILE})"
                )
            if folder.name not in MIB_TASK_MODELS:
                raise LayoutError(
                    f"{folder}: {folder.name!r} is not <task>_<model> for a pair MIB "
                    f"evaluates; use one of {MIB_TASK_MODELS} (task underscores as hyphens)"
                )
            found[rel] = validate_task_model(folder, model_of(folder.name))
    names = {Path(r).name for r in found}
    tasks = {n.split("_", 1)[0] for n in names}
    models = {n.split("_", 1)[1] for n in names}
    if len(tasks) < min_tasks or len(models) < min_models:
        raise LayoutError(
            f"{root} covers tasks {sorted(tasks)} and models {sorted(models)}: MIB "
            f"requires at least {min_tasks} tasks and {min_models} models"
        )
    return found


# ------------------------------------------------------------------- the command line
def _export_targets(out: Path, pair: str, kind: str, absolute: bool | None) -> list[tuple[Path, str]]:
    """The ``(task/model folder, file name)`` pairs ``edgewise mib export`` writes."""
    targets = []
    if kind in ("importances", "both"):
        targets.append((out / pair, IMPORTANCES_FILE))
    if kind in ("circuits", "both"):
        root = out / "circuits" if kind == "both" else out
        roots = [root] if absolute is not None else [root / "abs-True", root / "abs-False"]
        targets += [(r / pair, circuit_file_name(p)) for r in roots for p in SUBMISSION_PERCENTAGES]
    return targets


def to_mib_scale(path: str | os.PathLike, prune_scores: PruneScores) -> tuple[PruneScores, str]:
    """``prune_scores``, read from the scores file ``path``, in MIB's scale (the sum over
    batches divided by the number of prompts, :mod:`edgewise.io.scale`), and a line
    saying what was done. An edgewise scores file records its scale and prompt count
    (``edgewise discover`` writes them): ``"sum"`` is divided by the count, ``"mean"``
    and scores that are not reductions over prompts (``None``: ACDC, learned masks,
    baselines) are kept. A MIB graph JSON (``.json``) is taken to be in MIB's scale.

    Raises:
        ValueError: the file records no scale (written before edgewise recorded it)."""
    from edgewise.io.files import load_prune_scores
    from edgewise.io.scale import rescale_scores, saved_scale

    path = Path(path)
    if path.suffix == ".json":
        return prune_scores, f"{path}: a MIB graph JSON, its scores written as they are"
    _, meta = load_prune_scores(path)
    record = saved_scale(meta, path)
    if record is None:
        raise ValueError(
            f"{path} does not record the scale of its scores (it was written before edgewise "
            "recorded it), so MIB's scale (an average over prompts) cannot be computed: "
            "recompute it with edgewise discover --fresh, or pass --keep-scale to export "
            "its numbers as they are"
        )
    scale, n_prompts = record
    if scale != "sum":
        return prune_scores, f"{path}: scale {scale}, written as it is"
    converted = rescale_scores(prune_scores, "sum", "mean", n_prompts)
    return converted, (f"{path}: scores summed over {n_prompts} prompts, divided by "
                       f"{n_prompts} (MIB's scale; --keep-scale keeps the sum)")  # fmt: skip


def run_export(args: argparse.Namespace) -> list[Path]:
    """``edgewise mib export``: a scores file -> MIB's importances (and/or circuits), in
    MIB's scale unless ``--keep-scale``.

    ``--out`` follows the folder rules of every edgewise command
    (:mod:`edgewise.io.results_folder`): it is marked as holding MIB submission files
    (``kind`` ``mib-submission``; several exports of other tasks and models may go
    there, one at a time under its lock), a non-empty folder without the marker is
    refused unless ``--allow-existing`` (then none of the entries this export writes may
    be there), links are refused, and every file is written atomically."""
    import sys

    from edgewise.io.results_folder import (
        MIB_SUBMISSION,
        check_output_folder,
        write_marker,
        writing,
    )
    from edgewise.mib.evaluate import load_mib_setup, load_scores_file

    out = Path(args.out)
    pair = folder_name(args.mib_task or args.task, args.mib_model)
    absolute = {"true": True, "false": False, "both": None}[args.absolute]
    targets = _export_targets(out, pair, args.kind, absolute)
    top = {folder.relative_to(out).parts[0] for folder, _ in targets}
    check_output_folder(out, None, None, args.allow_existing, MIB_SUBMISSION, top.__contains__)
    for folder, name in targets:  # a mixed folder is refused before anything is written
        _refuse_mixed(folder, name)
    pm, _ = load_mib_setup(args.model, args.task, 16, device=args.device, dtype=args.dtype)
    scores = load_scores_file(args.scores_file, pm)
    if not args.keep_scale:
        scores, note = to_mib_scale(args.scores_file, scores)
        print(note, file=sys.stderr)
    mib_task = args.mib_task or args.task
    paths = []
    with writing(out, top.__contains__):
        write_marker(out, None, None, MIB_SUBMISSION)
        if args.kind in ("importances", "both"):
            paths.append(export_importances(out, pm, scores, mib_task, args.mib_model))
        if args.kind in ("circuits", "both"):
            root = out / "circuits" if args.kind == "both" else out
            paths += export_circuits(root, pm, scores, mib_task, args.mib_model, absolute)
    for p in paths:
        print(p)
    return paths


def run_validate(args: argparse.Namespace) -> dict[str, str]:
    """``edgewise mib validate``: check a submission folder, print what each folder holds."""
    found = validate_submission(args.path, args.min_tasks, args.min_models, not args.no_shape_check)
    for folder, kind in found.items():
        print(f"{folder}: {kind}")
    print(f"valid: {len(found)} task/model folder(s)")
    return found


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``edgewise mib export`` and ``edgewise mib validate``."""
    e = sub.add_parser("export", help="write MIB submission files from a scores file")
    e.add_argument("scores_file", help="a MIB graph JSON (.json) or an edgewise scores file")
    e.add_argument("--model", default=None, help="the model to load (default: the task's)")
    e.add_argument("--task", required=True, help="the edgewise task (for the model's graph)")
    e.add_argument(
        "--mib-task", default=None, help="MIB's task name for the folder (default: --task)"
    )
    e.add_argument("--mib-model", required=True, help="MIB's model name for the folder, e.g. gpt2")
    from edgewise.runtime.resolve import add_device_arguments

    add_device_arguments(e, kind=False, dtype_help="the model's dtype (only its graph is used)")
    e.add_argument("--kind", choices=["importances", "circuits", "both"], default="importances")
    e.add_argument(
        "--absolute",
        choices=["true", "false", "both"],
        default="true",
        help="circuits: rank by |score| (true), signed score (false), or both folders",
    )
    e.add_argument("--out", required=True, metavar="DIR",
                   help="the submission folder (marked as edgewise's; one export at a time)")
    e.add_argument("--allow-existing", action="store_true",
                   help="write into a non-empty folder edgewise did not make; its files are "
                        "left alone (none may be a folder this export writes)")
    e.add_argument(
        "--keep-scale",
        action="store_true",
        help="write the file's scores as they are; by default an edgewise scores file "
        "summed over batches (eap, ig, ...) is divided by its recorded number of prompts, "
        "MIB's scale (docs/mib.md)",
    )
    e.set_defaults(mib_run=run_export)
    v = sub.add_parser("validate", help="check a submission folder against MIB's rules")
    v.add_argument("path")
    v.add_argument("--min-tasks", type=cli_int(1), default=2)
    v.add_argument("--min-models", type=cli_int(1), default=2)
    v.add_argument("--no-shape-check", action="store_true",
                   help="do not compare each file's model shape with the named MIB model's "
                        "(files made with another model, e.g. the demo's toy model)")
    v.set_defaults(mib_run=run_validate)


__all__: Sequence[str] = (
    "CircuitSizeError", "EdgeSetError", "LayoutError", "MIB_MODEL_SHAPES", "MIB_TASK_MODELS",
    "NonFiniteScoreError", "SUBMISSION_PERCENTAGES", "SchemaError", "SubmissionError",
    "circuit_file_name", "export_circuits", "export_importances", "folder_name",
    "import_submission", "mib_graph_names", "to_mib_scale", "validate_file",
    "validate_submission", "validate_task_model",
)  # fmt: skip
