"""Workflow 5, the experiment sweep: a task, the PruneAlgo and PruneMetric registries,
run_prune_algos, measure_prune_metrics, and the AUC of each curve. (After
auto-circuit's experiments/circuit_discovery.py.)

auto-circuit's Task builds its data from ``datasets/{_dataset_name}.json`` relative to
its install folder and must be registered in TASK_DICT for measure_prune_metrics; both
are done the auto-circuit way here. Where edgewise has no ``Task``, the harness records
that and continues with edgewise's documented stand-in (``ExperimentTask``) built from
the same loaders and graph that auto-circuit's Task builds, so the sweep is still
compared."""

import os
from pathlib import Path

import torch as t

from _common import DATASET_PATH, LIB, Recorder, bind_names, toy_model

rec = Recorder("w5_experiment_sweep")
bind_names({
    "auto_circuit.tasks": ["Task", "TASK_DICT"],
    "auto_circuit.types": ["AblationType", "PatchType"],
    "auto_circuit.prune_algos.prune_algos": [
        "PruneAlgo", "PRUNE_ALGO_DICT", "run_prune_algos", "LOGIT_DIFF_GRAD_PRUNE_ALGO",
        "EDGE_ATTR_PATCH_PRUNE_ALGO", "ACT_MAG_PRUNE_ALGO",
        "INTEGRATED_EDGE_GRADS_LOGIT_DIFF_PRUNE_ALGO", "INTEGRATED_EDGE_GRADS_PRUNE_ALGO",
        "LOGPROB_GRAD_PRUNE_ALGO",
    ],
    "auto_circuit.metrics.prune_metrics.prune_metrics": [
        "PruneMetric", "PRUNE_METRIC_DICT", "CLEAN_KL_DIV_METRIC", "ANSWER_PROB_METRIC",
        "CORRECT_ANSWER_PERCENT_METRIC", "LOGIT_DIFF_PERCENT_METRIC", "ANSWER_LOGIT_METRIC",
    ],
    "auto_circuit.metrics.prune_metrics.measure_prune_metrics": ["measure_prune_metrics"],
    "auto_circuit.metrics.area_under_curve": ["measurements_auc"],
    "auto_circuit.data": ["load_datasets_from_json"],
    "auto_circuit.utils.graph_utils": ["patchable_model"],
}, rec, globals())

# auto-circuit reads f"datasets/{_dataset_name}.json" under its install folder
if LIB == "auto_circuit":
    from auto_circuit.utils.misc import repo_path_to_abs_path

    base = Path(repo_path_to_abs_path("datasets"))
    base.mkdir(exist_ok=True)  # "datasets/.." must resolve
    dataset_name = os.path.relpath(DATASET_PATH.with_suffix(""), base)
else:
    dataset_name = str(DATASET_PATH.with_suffix(""))

# auto-circuit sets a loader's seq_len for token-id prompts even without
# return_seq_length, so its Task builds a token graph with token_circuit=False; edgewise
# does that only with token_circuit=True (docs/auto_circuit.md). Same graph on both sides:
token_circuit = LIB == "edgewise"
if token_circuit:
    rec.note("Task: edgewise side passes token_circuit=True (auto-circuit's False builds a token graph here)")
task = None
with rec.step("Task(...) + TASK_DICT"):
    task = Task(
        key="Toy IOI", name="Toy IOI", batch_size=16, batch_count=4, token_circuit=token_circuit,
        _model_def=toy_model(), _dataset_name=dataset_name,
    )
    TASK_DICT[task.key] = task
    rec.num("task.n_edges", len(task.model.edges))
    rec.text("task.model.seq_len", task.model.seq_len)

if task is None or not hasattr(task, "model"):
    rec.note("Task unavailable: using ExperimentTask built like auto-circuit's Task (not import-only)")
    from edgewise import ExperimentTask

    train_loader, test_loader = load_datasets_from_json(
        model=None, path=DATASET_PATH, device=t.device("cpu"), prepend_bos=False,
        batch_size=16, train_test_size=(64, 64), return_seq_length=False, pad=True,
    )
    # auto-circuit's Task passes seq_len=train_loader.seq_len, which is 15 for
    # pre-tokenized prompts even without return_seq_length
    model = patchable_model(toy_model(), factorized=True, slice_output="last_seq", seq_len=15,
                            separate_qkv=True, device=t.device("cpu"))
    task = ExperimentTask("Toy IOI", model, train_loader, test_loader, None)
    rec.num("task.n_edges", len(task.model.edges))

with rec.step("registries"):
    rec.text("algo.LOGIT_DIFF_GRAD.key", LOGIT_DIFF_GRAD_PRUNE_ALGO.key)
    rec.text("algo.LOGIT_DIFF_GRAD.short_name", LOGIT_DIFF_GRAD_PRUNE_ALGO.short_name)
    rec.text("algo.IEG.name", INTEGRATED_EDGE_GRADS_LOGIT_DIFF_PRUNE_ALGO.name)
    rec.text("algo.IEG.short_name", INTEGRATED_EDGE_GRADS_LOGIT_DIFF_PRUNE_ALGO.short_name)
    rec.text("algo.IEG_logit.name", INTEGRATED_EDGE_GRADS_PRUNE_ALGO.name)
    rec.text("algo.LOGPROB_GRAD.name", LOGPROB_GRAD_PRUNE_ALGO.name)
    rec.text("algo.dict_has_eap", LOGIT_DIFF_GRAD_PRUNE_ALGO.key in PRUNE_ALGO_DICT)
    rec.text("metric.keys", sorted(PRUNE_METRIC_DICT))
    for m in (CLEAN_KL_DIV_METRIC, ANSWER_PROB_METRIC, LOGIT_DIFF_PERCENT_METRIC):
        rec.text(f"metric.{m.key}.plot", [m.log_x, m.log_y, m.lower_better, m.y_min])

my_algo = None
with rec.step("PruneAlgo(custom)"):
    my_algo = PruneAlgo(key="My EAP", name="My EAP",
                        func=LOGIT_DIFF_GRAD_PRUNE_ALGO.func, _short_name="mine")
    PRUNE_ALGO_DICT[my_algo.key] = my_algo

# (the 1000-sample IEG (Logit Diff) entry takes minutes; the 50-sample one is swept)
algos = [LOGIT_DIFF_GRAD_PRUNE_ALGO, EDGE_ATTR_PATCH_PRUNE_ALGO, ACT_MAG_PRUNE_ALGO,
         INTEGRATED_EDGE_GRADS_PRUNE_ALGO, LOGPROB_GRAD_PRUNE_ALGO]
with rec.step("every swept algo is in PRUNE_ALGO_DICT"):
    rec.text("algo.in_dict", [a.key in PRUNE_ALGO_DICT for a in algos])
for a in algos:  # measure_prune_metrics looks each key up there
    PRUNE_ALGO_DICT.setdefault(a.key, a)

task_prune_scores = None
with rec.step("run_prune_algos"):
    task_prune_scores = run_prune_algos([task], algos)
    for algo_key, ps in task_prune_scores[task.key].items():
        rec.scores(f"algo[{algo_key}]", task.model, ps)

metrics = [CLEAN_KL_DIV_METRIC, ANSWER_PROB_METRIC, CORRECT_ANSWER_PERCENT_METRIC,
           LOGIT_DIFF_PERCENT_METRIC, ANSWER_LOGIT_METRIC]
with rec.step("measure_prune_metrics"):
    measurements = measure_prune_metrics(
        ablation_types=[AblationType.RESAMPLE, AblationType.TOKENWISE_MEAN_CORRUPT],
        metrics=metrics,
        task_prune_scores=task_prune_scores,
        patch_type=PatchType.TREE_PATCH,
        test_edge_counts=[0, 10, 100, 400, 1000, 1650],
    )
    for ablation, per_metric in measurements.items():
        for metric_key, per_task in per_metric.items():
            metric = PRUNE_METRIC_DICT[metric_key]
            for _task_key, per_algo in per_task.items():
                for algo_key, points in per_algo.items():
                    tag = f"{ablation.name}|{metric_key}|{algo_key}"
                    rec.measurements(tag, points)
                    if not metric.log_y:
                        rec.num("auc|" + tag, measurements_auc(points, metric.log_x, metric.log_y,
                                                             metric.y_min))
                    else:  # documented deliberate difference in edgewise
                        rec.num("auc_logy|" + tag, measurements_auc(points, metric.log_x,
                                                                 metric.log_y, metric.y_min))

rec.dump()
