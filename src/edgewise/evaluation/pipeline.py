"""The evaluation of one algorithm's scores on a task, as ``edgewise discover`` and
``edgewise evaluate`` save it: circuits of up to 40 sizes, the task's metric per size,
faithfulness and CPR/CMD, and ROC/AUC against the official circuit when there is one."""

from __future__ import annotations

from typing import Any


def measure_task_metric(pm: Any, loader: Any, outs: Any, metric: str) -> list[tuple[int, float]]:
    """The task's metric per circuit size: logit difference, or minus the MSE (so that
    higher is better for both)."""
    from edgewise.metrics.answers import measure_answer_diff, measure_mse

    if metric == "mse":  # lower is better: faithfulness uses -mse
        return [(s, -v) for s, v in measure_mse(pm, loader, outs)]
    return measure_answer_diff(pm, loader, outs)


def evaluate_scores(
    pm: Any, task: Any, test: Any, scores: Any, algo: str, quiet: bool = False,
    max_memory: str | None = None, bootstrap: int | None = None,
) -> dict[str, Any]:
    """Circuits of several sizes from ``scores``: metric, faithfulness, CPR/CMD, and
    ROC/AUC against the task's official circuit when it has one. ``bootstrap=N`` adds
    ``result["bootstrap"]``: 95% intervals of the faithfulness curve, CPR and CMD over
    ``N`` resamples of the test prompts (seed 0; see
    :func:`edgewise.evaluation.bootstrap.bootstrap_faithfulness`)."""
    from edgewise.evaluation.circuits import circuit_edges, edge_counts_util, run_circuits
    from edgewise.metrics.faithfulness import cpr_cmd, faithfulness_curve, measure_roc

    # the empty circuit and the full model always: faithfulness is measured between them
    # (scores with two distinct values, e.g. a ground truth, give only two sizes otherwise)
    sizes = edge_counts_util(pm.n_edges, None, scores, zero_edges=True, all_edges=True)
    if len(sizes) > 40:  # keep evaluation quick: a log-spaced subset
        step = len(sizes) / 40
        sizes = sorted({sizes[int(i * step)] for i in range(40)} | {0, pm.n_edges})
    outs = run_circuits(pm, test, sizes, scores, progress=not quiet, max_memory=max_memory)
    measured = measure_task_metric(pm, test, outs, task.metric)
    result: dict[str, Any] = {"algorithm": algo, "metric": task.metric, "measurements": measured}
    try:
        result["faithfulness"] = faithfulness_curve(measured)
        result["cpr"], result["cmd"] = cpr_cmd(measured)
    except ValueError as e:
        result["faithfulness_error"] = str(e)
    if bootstrap and "cpr" in result:
        from edgewise.evaluation.bootstrap import bootstrap_faithfulness

        try:
            result["bootstrap"] = bootstrap_faithfulness(pm, test, outs, task.metric,
                                                         bootstrap).to_json()  # fmt: skip
        except ValueError as e:  # a resample whose faithfulness is undefined
            result["bootstrap_error"] = str(e)
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
