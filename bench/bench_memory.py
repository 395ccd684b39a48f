"""Peak memory and time of EAP with and without a memory budget (prompt slices, source
blocks) on a random 12-layer, d_model 1024 model (16 heads of 64, d_mlp 4096, GPT-2's
vocabulary: 205 sources, 55,963 edges).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_memory.py [--device cuda] [--batch 2 --seq 256]

Rows: EAP (``mask_val=0``) with ``max_memory`` None, then budgets that force one prompt
per pass, and source blocks of about 1/2 and 1/4 of the sources (one prompt per pass).
Times are medians of interleaved runs in this process. Each row's peak memory is taken
in a fresh process of its own, after a small warm-up call: on CUDA
``max_memory_allocated`` above what was allocated before; on the CPU the RSS high-water
mark above the RSS before, with glibc told to map every allocation above 64 KiB on its
own (``MALLOC_MMAP_THRESHOLD_=65536``) so that freed tensors leave the resident set at
once and the high-water mark is the peak of live memory, not of heap fragments. The
scores of every row are checked against the unbounded row.
``--pythia`` uses a Pythia-1.4B-shaped model (24 layers, d_model 2048, 16 heads, rotary,
parallel attention/MLP; for a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

from edgewise import mask_gradient_prune_scores, patchable_model
from edgewise.runtime.memory import human, narrowest_block, pass_bytes, plan_passes

from common import (
    CpuMonitor,
    Task,
    add_common_args,
    device_loader,
    machine_line,
    median,
    param_mib,
    peak_memory,
    print_table,
    prompt_loader,
    run_tasks,
    setup_torch,
)


def wide_model(device: torch.device, pythia: bool) -> torch.nn.Module:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    if pythia:
        shape = dict(n_layers=24, d_model=2048, n_heads=16, d_head=128, d_mlp=8192,
                     d_vocab=50304, positional_embedding_type="rotary", rotary_dim=32,
                     parallel_attn_mlp=True, act_fn="gelu")  # fmt: skip
    else:
        shape = dict(n_layers=12, d_model=1024, n_heads=16, d_head=64, d_mlp=4096,
                     d_vocab=50257, positional_embedding_type="standard", act_fn="gelu_new")  # fmt: skip
    cfg = HookedTransformerConfig(**shape, n_ctx=2048, normalization_type="LN", seed=0,
                                  device=str(device))  # fmt: skip
    return HookedTransformer(cfg).eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_common_args(p)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--pythia", action="store_true", help="Pythia-1.4B shape instead")
    p.add_argument("--peak-of", help=argparse.SUPPRESS)  # internal: one row's peak, as JSON
    args = p.parse_args()
    device = setup_torch(args)
    model = wide_model(device, args.pythia)
    pm = patchable_model(model)
    loader = device_loader(prompt_loader(args.batch, args.seq, vocab=model.cfg.d_vocab), device)
    n = len(pm.srcs)
    one = pass_bytes(pm, 1, args.seq, n)
    budgets = {
        "no limit": None,
        "1 prompt/pass": one,
        "source blocks ~1/2": pass_bytes(pm, 1, args.seq, n // 2),
        "source blocks ~1/4": pass_bytes(pm, 1, args.seq, max(narrowest_block(pm), n // 4)),
    }
    results: dict[str, dict] = {}
    if args.peak_of is not None:  # a fresh process: warm up small, then measure one row
        budget = budgets[args.peak_of]
        small = device_loader(prompt_loader(1, 8, vocab=model.cfg.d_vocab), device)
        mask_gradient_prune_scores(pm, small, None, "logit", "avg_diff", mask_val=0.0,
                                   progress=False)  # fmt: skip
        pm.free_buffers()
        mem = peak_memory(lambda: mask_gradient_prune_scores(
            pm, loader, None, "logit", "avg_diff", mask_val=0.0, progress=False,
            max_memory=budget), device)  # fmt: skip
        print(json.dumps(mem))
        return

    def eap(name: str, budget: int | None):
        def run():
            pm.free_buffers()  # each row allocates its own buffers
            results[name] = mask_gradient_prune_scores(
                pm, loader, None, "logit", "avg_diff", mask_val=0.0, progress=False,
                max_memory=budget,
            )  # fmt: skip

        return run

    print(f"bench_memory | {machine_line(device)}")
    print(f"model: random {'Pythia-1.4B' if args.pythia else '12-layer d_model 1024'} shape, "
          f"{param_mib(model):.0f} MiB of parameters | graph: {pm.n_edges} edges, {n} sources | "
          f"batch {args.batch} x {args.seq} tokens")  # fmt: skip
    tasks = [Task(name, eap(name, b), repeats=args.repeats, warmup=1) for name, b in budgets.items()]
    with CpuMonitor() as mon:
        run_tasks(tasks, device, measure_memory=False)
    for task in tasks if not args.no_mem else []:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
        cmd = [sys.executable, __file__, "--peak-of", task.name, "--device", args.device,
               "--threads", str(args.threads), "--batch", str(args.batch), "--seq", str(args.seq)]
        cmd += ["--pythia"] if args.pythia else []
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        task.mem = json.loads(out.strip().splitlines()[-1])
    want = results["no limit"]
    scale = max(float(v.abs().max()) for v in want.values())
    rows, base = [], median(tasks[0].times)
    for task, (name, budget) in zip(tasks, budgets.items()):
        plan = plan_passes(pm, args.batch, args.seq, budget, blocks_ok=True)
        err = max(float((results[name][k] - want[k]).abs().max()) for k in want) / scale
        need = pass_bytes(pm, plan.chunk, args.seq, plan.widest)
        rows.append([name, "-" if budget is None else human(budget), plan.describe().split(", max")[0],
                     human(need), median(task.times) * 1000, median(task.times) / base,
                     "-" if task.mem is None else f"{task.mem['peak_mib']:.0f}", f"{err:.1e}"])  # fmt: skip
    print_table(["row", "max_memory", "plan", "buffers", "median ms", "time / no limit",
                 "peak MiB", "max |score diff| / max |score|"], rows,
                title="EAP (mask_val=0), same scores in every row")  # fmt: skip
    print(mon.line())


if __name__ == "__main__":
    main()
