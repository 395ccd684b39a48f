"""AUC of EAP, integrated gradients and ACDC against the official circuits of the tracr
tasks and the toy IOI model, under resample and zero ablation.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/auc_table.py

Zero ablation is compared with the tracr zero-ablation circuits; the toy model has one
(resample) circuit, used for both.
"""

from __future__ import annotations

import argparse
import time

import torch

from edgewise import AblationType, measure_roc, patchable_model
from edgewise.benchmarks.tasks import TASKS, load_model
from edgewise.prune_algos import ALGORITHMS


def official(task_name: str, pm, ablation: str):
    if task_name.startswith("tracr_"):
        from edgewise.benchmarks.official.tracr import tracr_official_edges

        return tracr_official_edges(pm, task_name.removeprefix("tracr_"), ablation)
    return TASKS[task_name].official_edges(pm)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", nargs="+", default=["tracr_reverse", "tracr_xproportion", "toy_ioi"])
    parser.add_argument("--algos", nargs="+", default=["eap", "ig", "acdc"])
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"{'task':<18} {'ablation':<9} {'algorithm':<6} {'AUC':>6} {'seconds':>8}")
    for task_name in args.tasks:
        task = TASKS[task_name]
        model = load_model(task.model)
        train, _ = task.dataloaders(model, 16)
        seq_len = train.seq_len if task.token_positions else None
        pm = patchable_model(model, slice_output=task.slice_output, seq_len=seq_len)
        for ablation, atype in (("resample", AblationType.RESAMPLE), ("zero", AblationType.ZERO)):
            edges = official(task_name, pm, ablation)
            for algo in args.algos:
                params = {"progress": False}
                if algo in ("eap", "ig"):
                    params.update(grad_function=task.grad_function,
                                  answer_function=task.answer_function, ablation_type=atype)
                    if task.answer_function == "mse" and algo == "eap":
                        params["mask_val"] = 0.5  # the clean run minimises mse: gradient 0 at 0
                elif algo == "acdc":
                    if atype != AblationType.RESAMPLE:
                        continue  # ACDC here patches from the corrupt prompt only
                    params["faithfulness_target"] = "mse" if task.metric == "mse" else "kl_div"
                start = time.perf_counter()
                scores = ALGORITHMS[algo](pm, train, None, **params)
                auc = measure_roc(pm, edges, scores).auc
                print(f"{task_name:<18} {ablation:<9} {algo:<6} {auc:>6.3f} "
                      f"{time.perf_counter() - start:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
