"""auto-circuit's names for mask state, registries and experiments, as thin layers over
edgewise's explicit state, so that a notebook written for auto-circuit 1.0.1 runs after
changing its imports (``docs/auto_circuit.md``).

auto-circuit keeps one mask per destination inside the model and switches patching on
with context managers. Here the masks are one dict on the :class:`PatchableModel`
(``model.patch_masks``), read only by :func:`patch_mode`, which patches through
``model.patch(...)``. Nothing else in edgewise reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgewise.data import PromptDataLoader
from edgewise.evaluation.circuits import edge_counts_util, run_circuits
from edgewise.metrics.answers import (
    Measurements,
    measure_answer_diff,
    measure_answer_diff_percent,
    measure_answer_val,
    measure_correct_ans_percent,
    measure_kl_div,
)
from edgewise.patching.model import PatchableModel
from edgewise.types import AblationType, Edge, PatchType, PruneScores

# ------------------------------------------------------------------------- mask state


def _edges_named(model: PatchableModel, edges: Collection[str | Edge]) -> list[Edge]:
    names = {e for e in edges if isinstance(e, str)}
    found = [e for e in model.edges if e in edges or e.name in names] if names else list(edges)
    missing = names - {e.name for e in found}
    if missing:
        raise KeyError(f"no edges named {sorted(missing)[:4]} in this graph")
    return found  # type: ignore[return-value]


def set_all_masks(model: PatchableModel, val: float) -> None:
    """Set every edge's mask in ``model.patch_masks`` to ``val`` (1: patched)."""
    with torch.no_grad():
        for mask in model.patch_masks.values():
            mask.fill_(val)


@contextmanager
def patch_mode(
    model: PatchableModel,
    patch_src_outs: torch.Tensor,
    edges: Collection[str | Edge] | None = None,
    curr_src_outs: torch.Tensor | None = None,
) -> Iterator[None]:
    """Inside, calling ``model`` patches every edge by ``model.patch_masks`` from
    ``patch_src_outs`` ``[n_srcs, batch, seq, d_model]``. With ``edges`` (``Edge`` s or
    names), the masks are first set to 1 on those edges and 0 elsewhere; as in
    auto-circuit they stay so afterwards. ``curr_src_outs`` (auto-circuit's buffer for the
    current outputs) is accepted and not needed: edgewise reads them during the pass."""
    if edges is not None:
        set_all_masks(model, 0.0)
        with torch.no_grad():
            for e in _edges_named(model, edges):
                model.patch_masks[e.dest.module_name][e.patch_idx] = 1.0
    with model.patch(model.patch_masks, patch_src_outs):
        yield


@contextmanager
def train_mask_mode(model: PatchableModel, requires_grad: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Yield ``model.patch_masks`` with ``requires_grad`` set (for optimising them);
    they stop requiring grad on exit."""
    model.eval()
    for mask in model.patch_masks.values():
        mask.grad = None
        mask.detach_().requires_grad_(requires_grad)
    try:
        yield model.patch_masks
    finally:
        for mask in model.patch_masks.values():
            mask.requires_grad_(False)


# ------------------------------------------------------------------------- registries


@dataclass(frozen=True)
class PruneAlgo:
    """A named scoring function ``func(model, dataloader, official_edges) -> PruneScores``
    (auto-circuit's ``PruneAlgo``; equal when their keys are)."""

    key: str
    name: str
    func: Callable[..., PruneScores] = field(compare=False)
    _short_name: str | None = field(default=None, compare=False)

    @property
    def short_name(self) -> str:
        return self._short_name or self.name


@dataclass(frozen=True)
class PruneMetric:
    """A named metric ``metric_func(model, dataloader, circuit_outs) -> Measurements`` and
    how to plot it (auto-circuit's ``PruneMetric``)."""

    key: str
    name: str
    metric_func: Callable[..., Measurements] = field(compare=False)
    log_x: bool = False
    log_y: bool = False
    lower_better: bool = False
    y_axes_match: bool = False
    y_min: float | None = None


def _bind(fn: Callable[..., Any], **kw: Any) -> Callable[..., Any]:
    def bound(*args: Any, **more: Any) -> Any:
        return fn(*args, **kw, **more)

    bound.__name__ = getattr(fn, "__name__", "bound")
    return bound


def _algos() -> list[PruneAlgo]:
    from edgewise import prune_algos as pa

    grad = pa.mask_gradient_prune_scores
    sp, cp = pa.subnetwork_probing_prune_scores, pa.circuit_probing_prune_scores
    return [
        PruneAlgo("Official Circuit", "Ground Truth", pa.ground_truth_prune_scores, "GT"),
        PruneAlgo("Act Mag", "Activation Magnitude", pa.activation_magnitude_prune_scores, "Act Mag"),
        PruneAlgo("Random", "Random", pa.random_prune_scores),
        PruneAlgo("Edge Attribution Patching", "Edge Attribution Patching",
                  pa.edge_attribution_patching_prune_scores, "EAP"),
        PruneAlgo("ACDC", "ACDC", _bind(pa.acdc_prune_scores, tao_exps=list(range(-6, -2)), tao_bases=[1])),
        PruneAlgo("MSE ACDC", "MSE ACDC", _bind(pa.acdc_prune_scores, tao_exps=list(range(-10, 0)),
                                                tao_bases=[1], faithfulness_target="mse"), "ACDC (MSE)"),
        PruneAlgo("Integrated Edge Gradients (Logit Grad)", "Integrated Edge Gradients (Logit Grad)",
                  _bind(grad, grad_function="logit", answer_function="avg_val",
                        integrated_grad_samples=50), "IEG (Answer Logit)"),
        PruneAlgo("Integrated Edge Gradients (Logit Diff)", "Integrated Edge Gradients",
                  _bind(grad, grad_function="logit", answer_function="avg_diff",
                        integrated_grad_samples=1000), "IEG"),
        *(
            PruneAlgo(f"Edge Answer {what} Gradient At Clean", name,
                      _bind(grad, grad_function=gf, answer_function=af, mask_val=0.0), short)
            for what, name, gf, af, short in (
                ("Prob", "Prob Gradient", "prob", "avg_val", "EAP (Prob)"),
                ("Logit Exp", "Exp Logit Gradient", "logit_exp", "avg_val", "EAP (Answer Logit)"),
                ("Log Prob", "Logprob Gradient", "logprob", "avg_val", "EAP (Answer Logprob)"),
                ("Log Prob Diff", "Logprob Diff Gradient", "logprob", "avg_diff", "EAP (Logprob Diff)"),
                ("Logit Diff", "Edge Attribution Patching", "logit", "avg_diff", "EAP"),
                ("Logit MSE", "Edge Attribution Patching (MSE)", "logit", "mse", "EAP (MSE)"),
            )
        ),
        *(
            PruneAlgo(key, key, _bind(fn, learning_rate=0.1, epochs=epochs, regularize_lambda=lam,
                                      mask_fn="hard_concrete", **kw), short)
            for key, short, fn, epochs, lam, kw in (
                ("Subnetwork Edge Probing", "SEP", sp, 200, 0.5, {}),
                ("Circuit Probing", "CP", cp, 2000, 0.1, {"circuit_sizes": ["true_size", 1000]}),
                ("Subnetwork Tree Probing", "STP", sp, 2000, 0.5, {"tree_optimisation": True}),
                ("Tree Probing", "TP", cp, 200, 0.1,
                 {"circuit_sizes": [100, "true_size", 1000, 10000], "tree_optimisation": True}),
                ("MSE Subnetwork Tree Probing", "STP (MSE)", sp, 200, 0.5,
                 {"tree_optimisation": True, "faithfulness_target": "mse"}),
                ("MSE Tree Probing", "TP (MSE)", cp, 200, 0.1,
                 {"circuit_sizes": ["true_size"], "tree_optimisation": True, "faithfulness_target": "mse"}),
                ("Opposite Tree Probing", "OTP", cp, 100, 0.1,
                 {"circuit_sizes": ["true_size", 1000, 10000], "tree_optimisation": True,
                  "faithfulness_target": "wrong_answer"}),
            )
        ),
    ]


PRUNE_ALGOS: list[PruneAlgo] = _algos()
PRUNE_ALGO_DICT: dict[str, PruneAlgo] = {a.key: a for a in PRUNE_ALGOS}
(GROUND_TRUTH_PRUNE_ALGO, ACT_MAG_PRUNE_ALGO, RANDOM_PRUNE_ALGO, EDGE_ATTR_PATCH_PRUNE_ALGO,
 ACDC_PRUNE_ALGO, MSE_ACDC_PRUNE_ALGO, INTEGRATED_EDGE_GRADS_PRUNE_ALGO,
 INTEGRATED_EDGE_GRADS_LOGIT_DIFF_PRUNE_ALGO, PROB_GRAD_PRUNE_ALGO, LOGIT_EXP_GRAD_PRUNE_ALGO,
 LOGPROB_GRAD_PRUNE_ALGO, LOGPROB_DIFF_GRAD_PRUNE_ALGO, LOGIT_DIFF_GRAD_PRUNE_ALGO,
 LOGIT_MSE_GRAD_PRUNE_ALGO, SUBNETWORK_EDGE_PROBING_PRUNE_ALGO, CIRCUIT_PROBING_PRUNE_ALGO,
 SUBNETWORK_TREE_PROBING_PRUNE_ALGO, CIRCUIT_TREE_PROBING_PRUNE_ALGO,
 MSE_SUBNETWORK_TREE_PROBING_PRUNE_ALGO, MSE_CIRCUIT_TREE_PROBING_PRUNE_ALGO,
 OPPOSITE_TREE_PROBING_PRUNE_ALGO) = PRUNE_ALGOS  # fmt: skip


def _metrics() -> list[PruneMetric]:
    """auto-circuit's metrics: its keys, display names, plot settings and list order."""
    log = {"log_x": True}
    val, diff, pct = measure_answer_val, measure_answer_diff, measure_answer_diff_percent
    return [
        PruneMetric("Clean KL Div", "KL Divergence", _bind(measure_kl_div, compare_to_clean=True),
                    **log, log_y=True, lower_better=True, y_min=1e-2),
        PruneMetric("Corrupt KL Div", "KL Divergence", _bind(measure_kl_div, compare_to_clean=False),
                    **log, log_y=True, y_min=1e-6),
        PruneMetric("Answer Prob", "Answer Probability", _bind(val, prob_func="softmax"), **log),
        PruneMetric("Answer Logit", "Answer Logit", _bind(val, prob_func="logits"), **log),
        PruneMetric("Wrong Answer Logit", "Wrong Answer Logit",
                    _bind(val, prob_func="logits", wrong_answer=True), **log),
        PruneMetric("Answer Logprob", "Answer Log Probability", _bind(val, prob_func="log_softmax"),
                    **log, log_y=True, y_min=1e-6),
        PruneMetric("Logit Diff", "Logit Difference", _bind(diff, prob_func="logits"), **log),
        PruneMetric("Prob Diff", "Probability Difference", _bind(diff, prob_func="softmax"), **log),
        PruneMetric("Logprob Diff", "Log Probability Difference", _bind(diff, prob_func="log_softmax"),
                    **log, log_y=True, y_min=1e-6),
        PruneMetric("Logit Diff Percent", "Logit Difference Percent", _bind(pct, prob_func="logits"), **log),
        PruneMetric("Prob Diff Percent", "Probability Difference Percent", _bind(pct, prob_func="softmax"),
                    **log),
        PruneMetric("LogProb Diff Percent", "Log Probability Difference Percent",
                    _bind(pct, prob_func="log_softmax"), **log),
        PruneMetric("Correct Answer Percent", "Correct Answer Percent", measure_correct_ans_percent, **log),
        PruneMetric("Correct Answer Greater Than Incorrect Percent",
                    "Correct Answer Greater Than Incorrect Percent",
                    _bind(measure_correct_ans_percent, out_of_correct_and_incorrect_answers=True), **log),
    ]


PRUNE_METRICS: list[PruneMetric] = _metrics()
PRUNE_METRIC_DICT: dict[str, PruneMetric] = {m.key: m for m in PRUNE_METRICS}
(CLEAN_KL_DIV_METRIC, CORRUPT_KL_DIV_METRIC, ANSWER_PROB_METRIC, ANSWER_LOGIT_METRIC,
 WRONG_ANSWER_LOGIT_METRIC, ANSWER_LOGPROB_METRIC, LOGIT_DIFF_METRIC, PROB_DIFF_METRIC,
 LOGPROB_DIFF_METRIC, LOGIT_DIFF_PERCENT_METRIC, PROB_DIFF_PERCENT_METRIC,
 LOGPROB_DIFF_PERCENT_METRIC, CORRECT_ANSWER_PERCENT_METRIC,
 CORRECT_ANSWER_GREATER_THAN_INCORRECT_PERCENT_METRIC) = PRUNE_METRICS  # fmt: skip
LOBPROB_DIFF_PERCENT_METRIC = LOGPROB_DIFF_PERCENT_METRIC  # auto-circuit's spelling


# ------------------------------------------------------------------------- experiments


@dataclass
class ExperimentTask:
    """What :func:`run_prune_algos` needs of a task (auto-circuit's ``Task``): a key,
    a patchable model, train and test loaders and, if known, the official edges."""

    key: str
    model: PatchableModel
    train_loader: PromptDataLoader
    test_loader: PromptDataLoader
    true_edges: set[Edge] | None = None

    @property
    def true_edge_count(self) -> int | None:
        return None if self.true_edges is None else len(self.true_edges)


# auto-circuit's dataset names for the data edgewise ships
_DATASET_ALIASES = {
    "tracr/tracr_reverse_len_5_prompts": "tracr_reverse",
    "tracr/tracr_xproportion_len_5_prompts": "tracr_xproportion",
}


def _dataset_path(name: str) -> str:
    """A dataset JSON for auto-circuit's ``_dataset_name``: a file (``name`` or
    ``name.json``), or a dataset edgewise ships (by its name or auto-circuit's)."""
    from edgewise.data import _datasets_root, shipped_dataset_names

    for candidate in (name, f"{name}.json"):
        if Path(candidate).is_file():
            return candidate
    shipped = _DATASET_ALIASES.get(name, name)
    if shipped in shipped_dataset_names():
        return str(_datasets_root().joinpath(f"{shipped}.json"))
    raise ValueError(
        f"Task dataset {name!r}: no file {name}.json and no shipped dataset of that name. Give "
        f"_dataset_name as a path to the JSON (without .json); shipped: "
        f"{', '.join(shipped_dataset_names())}. auto-circuit's own datasets live in its source "
        "repository; copy the file you need and give its path."
    )


def _load_model_def(model_def: str, dtype: torch.dtype) -> Any:
    """auto-circuit's ``_model_def`` string: a tracr program (``"reverse"``,
    ``"xproportion"``), a local checkpoint folder, or a name :func:`edgewise.benchmarks.tasks.load_model`
    knows (shipped models; TransformerLens names whose weights are already on this machine)."""
    from edgewise.benchmarks.tasks import load_model

    if model_def in ("reverse", "xproportion"):
        from edgewise.benchmarks.tracr_models import compile_tracr

        model = compile_tracr(model_def)[0]  # type: ignore[arg-type]
    elif Path(model_def).is_dir():
        model = load_tl_model(model_def)
    else:
        model = load_model(model_def)
    return model.to(dtype) if dtype != torch.float32 else model


@dataclass
class Task:
    """auto-circuit's ``Task``: a model, prompt data and (maybe) an official circuit,
    built on first use of ``model``, ``train_loader``, ``test_loader`` or ``true_edges``.

    Fields as in auto-circuit: ``batch_size`` / ``batch_count`` (ints, or ``(train,
    test)`` tuples), ``token_circuit`` (one edge per token position), ``_model_def`` (a
    model, or a string: see :func:`_load_model_def`; nothing is downloaded),
    ``_dataset_name`` (a JSON path without ``.json``, or a shipped dataset),
    ``factorized``, ``separate_qkv``, ``_true_edge_func`` (called with the patchable model
    and, for token circuits, ``token_positions=True, word_idxs=, seq_start_idx=``),
    ``slice_output`` and ``dtype``. Sparse-autoencoder tasks (``autoencoder_*``) are not
    supported. Unlike auto-circuit, the graph has token positions only when
    ``token_circuit`` is true, and nothing is cached across tasks."""

    key: str
    name: str
    batch_size: int | tuple[int, int]
    batch_count: int | tuple[int, int]
    token_circuit: bool
    _model_def: str | torch.nn.Module
    _dataset_name: str
    factorized: bool = True
    separate_qkv: bool = True
    _true_edge_func: Callable[..., set[Edge]] | None = None
    slice_output: str = "last_seq"
    autoencoder_input: str | None = None
    autoencoder_max_latents: int | None = None
    autoencoder_pythia_size: str | None = None
    autoencoder_prune_with_corrupt: bool | None = None
    dtype: torch.dtype = torch.float32
    _built: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def init_task(self) -> None:
        """Load the model and data, wrap the model, find the official edges."""
        from edgewise.data import load_dataset_json, load_datasets_from_json
        from edgewise.patching.wrap import patchable_model

        if self.autoencoder_input is not None:
            raise ValueError(f"Task {self.key!r}: edgewise has no sparse-autoencoder models "
                             "(autoencoder_input); leave the autoencoder_* fields unset")  # fmt: skip
        model = self._model_def
        if isinstance(model, str):
            model = _load_model_def(model, self.dtype)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        device = next(model.parameters()).device
        pair = lambda v: v if isinstance(v, tuple) else (v, v)  # noqa: E731
        (bs_train, bs_test), (n_train, n_test) = pair(self.batch_size), pair(self.batch_count)
        path = _dataset_path(self._dataset_name)
        # auto-circuit tokenizes when the model has a tokenizer; token-id prompts (tracr's)
        # are used as they are (load_dataset_json names the file if it is not a dataset)
        first = load_dataset_json(path)["prompts"][0]
        text = isinstance(first, dict) and isinstance(first.get("clean"), str)
        has_tokenizer = text and getattr(model, "tokenizer", None) is not None
        train, test = load_datasets_from_json(
            model if has_tokenizer else None, path, device=device,
            prepend_bos=has_tokenizer, batch_size=self.batch_size,
            train_test_size=(bs_train * n_train, bs_test * n_test),
            return_seq_length=self.token_circuit, tail_divergence=has_tokenizer, pad=True,
        )
        pm = patchable_model(model, self.factorized, self.slice_output,  # type: ignore[arg-type]
                             train.seq_len if self.token_circuit else None, self.separate_qkv,
                             device, kv_caches=(train.kv_cache, test.kv_cache))  # fmt: skip
        true_edges = None
        if self._true_edge_func is not None:
            kw = ({"token_positions": True, "word_idxs": train.word_idxs, "seq_start_idx": train.diverge_idx}
                  if self.token_circuit else {})  # fmt: skip
            true_edges = self._true_edge_func(pm, **kw)
        self._built.update(model=pm, train_loader=train, test_loader=test, true_edges=true_edges)

    def _get(self, what: str) -> Any:
        if not self._built:
            self.init_task()
        return self._built[what]

    model = property(lambda self: self._get("model"), doc="The patchable model.")
    train_loader = property(lambda self: self._get("train_loader"), doc="Training prompts.")
    test_loader = property(lambda self: self._get("test_loader"), doc="Test prompts.")
    true_edges = property(lambda self: self._get("true_edges"), doc="The official circuit, or None.")

    @property
    def true_edge_count(self) -> int | None:
        return None if self.true_edges is None else len(self.true_edges)


def _tracr_true_edges(program: str) -> Callable[..., set[Edge]]:
    def true_edges(model: PatchableModel, **_: Any) -> set[Edge]:
        from edgewise.benchmarks.official.tracr import tracr_official_edges

        return tracr_official_edges(model, program)  # type: ignore[arg-type]

    return true_edges


def _toy_ioi_true_edges(model: PatchableModel, **_: Any) -> set[Edge]:
    from edgewise.benchmarks.official.toy_ioi import toy_ioi_official_edges

    return toy_ioi_official_edges(model)


# auto-circuit's tasks that run offline on what edgewise ships (its other tasks need
# hub models and auto-circuit's datasets), and edgewise's toy IOI task
TASKS: list[Task] = [
    Task("Tracr xproportion Token Circuit", "Tracr xproportion", 64, 8, True, "xproportion",
         "tracr/tracr_xproportion_len_5_prompts", _true_edge_func=_tracr_true_edges("xproportion"),
         slice_output="not_first_seq"),
    Task("Tracr reverse Token Circuit", "Tracr reverse", 11, 11, True, "reverse",
         "tracr/tracr_reverse_len_5_prompts", _true_edge_func=_tracr_true_edges("reverse"),
         slice_output="not_first_seq"),
    Task("Toy IOI Component Circuit", "Toy Indirect Object Identification", 64, 1, False, "toy-ioi",
         "toy_ioi", _true_edge_func=_toy_ioi_true_edges),
]
TASK_DICT: dict[str, Task] = {t.key: t for t in TASKS}
(TRACR_XPROPORTION_TOKEN_CIRCUIT_TASK, TRACR_REVERSE_TOKEN_CIRCUIT_TASK,
 TOY_IOI_COMPONENT_CIRCUIT_TASK) = TASKS  # fmt: skip


class TaskPruneScores(dict):
    """``{task key: {algorithm key: PruneScores}}``, remembering its tasks."""

    def __init__(self, tasks: Mapping[str, Any]):
        super().__init__()
        self.tasks = dict(tasks)


def run_prune_algos(tasks: Sequence[Any], prune_algos: Sequence[PruneAlgo]) -> TaskPruneScores:
    """Every algorithm's scores on every task (its train loader): ``{task.key:
    {algo.key: scores}}``."""
    out = TaskPruneScores({t.key: t for t in tasks})
    for task in tasks:
        out[task.key] = {a.key: a.func(task.model, task.train_loader, task.true_edges) for a in prune_algos}
    return out


def measure_prune_metrics(
    ablation_types: Sequence[AblationType],
    metrics: Sequence[PruneMetric],
    task_prune_scores: TaskPruneScores,
    patch_type: PatchType,
    reverse_clean_corrupt: bool = False,
    test_edge_counts: Sequence[int] | None = None,
) -> dict[AblationType, dict[str, dict[str, dict[str, Measurements]]]]:
    """``[ablation type][metric key][task key][algo key]`` -> measurements over circuit
    sizes on each task's test loader (sizes: ``test_edge_counts``, or
    :func:`edge_counts_util`'s default for the scores and the official circuit's size)."""
    out: dict = {}
    for ablation in ablation_types:
        per_metric: dict = {m.key: {} for m in metrics}
        for task_key, algo_scores in task_prune_scores.items():
            task = task_prune_scores.tasks[task_key]
            for algo_key, scores in algo_scores.items():
                counts = test_edge_counts if test_edge_counts is not None else edge_counts_util(
                    task.model.edges, None, scores, true_edge_count=task.true_edge_count)
                outs = run_circuits(task.model, task.test_loader, list(counts), scores,
                                    patch_type=patch_type, ablation_type=ablation,
                                    reverse_clean_corrupt=reverse_clean_corrupt, progress=False)
                for m in metrics:
                    per_metric[m.key].setdefault(task_key, {})[algo_key] = m.metric_func(
                        task.model, task.test_loader, outs)
        out[ablation] = per_metric
    return out


def load_tl_model(path: str, device: str | torch.device = "cpu") -> Any:
    """auto-circuit's loader, from a local Hugging Face checkpoint only (nothing is
    downloaded): a bridge in eval mode with every weight frozen, as auto-circuit leaves
    it (edgewise's scores do not depend on that)."""
    from edgewise.models.kinds import load_hf_bridge

    model = load_hf_bridge(path, device=str(device))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


__all__ = [
    "Task", "TASKS", "TASK_DICT", "TRACR_XPROPORTION_TOKEN_CIRCUIT_TASK", "TRACR_REVERSE_TOKEN_CIRCUIT_TASK",
    "TOY_IOI_COMPONENT_CIRCUIT_TASK", "ExperimentTask", "PruneAlgo", "PruneMetric", "TaskPruneScores", "PRUNE_ALGOS",
    "PRUNE_ALGO_DICT", "PRUNE_METRICS", "PRUNE_METRIC_DICT", "load_tl_model",
    "measure_prune_metrics", "patch_mode", "run_prune_algos", "set_all_masks", "train_mask_mode",
]
