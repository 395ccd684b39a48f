"""Cost of patching: unpatched forward passes against one fully patched forward pass, and
``run_circuits`` with 6 circuit sizes, on a random-weight GPT-2-small-shaped model.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_patch.py [--device cuda] [--repeats 5]

Rows (one batch, ``--batch`` prompts x ``--seq`` tokens, all under ``torch.inference_mode``):

(a) plain forward: the model with every TransformerLens hook flag off (no
    ``use_attn_result``, ``use_split_qkv_input``, ``use_hook_mlp_in``).
(b) flags-on forward: the same model unpatched, with the flags ``patchable_model`` set.
(c) patched forward: ``run_patched`` with every mask 1 (every edge patched) and resample
    patches (the corrupt prompts' source outputs).
src_outs: the corrupt forward that computes those patches (``model.src_outs``).
run_circuits: 6 circuit sizes on the batch (includes its own ``src_outs``).
forward, only FLAG: unpatched forward with just that one flag on (where (b)'s cost comes
    from; skip with ``--no-flag-breakdown``).
"""

from __future__ import annotations

import argparse

import torch

from edgewise import patchable_model, run_circuits

from common import (
    CpuMonitor,
    Task,
    add_common_args,
    device_loader,
    gpt2_small,
    hook_flags,
    machine_line,
    median,
    mem_str,
    param_mib,
    print_table,
    prompt_loader,
    run_tasks,
    setup_torch,
)

TASKS = ("plain", "flags_on", "patched", "src_outs", "circuits")
SINGLE_FLAGS = ("use_attn_result", "use_split_qkv_input", "use_hook_mlp_in")
LABELS = {
    "plain": "(a) plain forward, flags off",
    "flags_on": "(b) forward, flags on",
    "patched": "(c) run_patched, all masks 1",
    "src_outs": "src_outs (corrupt fwd)",
    "circuits": "run_circuits, 6 sizes",
    **{f"only_{f}": f"forward, only {f}" for f in SINGLE_FLAGS},
}


def build(args: argparse.Namespace, device: torch.device) -> dict:
    model = gpt2_small(device, kind=args.kind)
    batches = device_loader(prompt_loader(args.batch, args.seq), device)
    batch = batches[0]
    pm = patchable_model(model)  # factorized, separate Q/K/V, output at the last position
    patches = pm.src_outs(batch.corrupt)
    ones = pm.new_masks(1.0)
    gen = torch.Generator().manual_seed(0)
    scores = {n: torch.randn(m.mask_shape, generator=gen).to(device)
              for n, m in pm.dest_modules.items()}
    n = pm.n_edges
    sizes = [0, 10, 100, 1000, 10000, n]

    def plain():
        with hook_flags(model, on=False), torch.inference_mode():
            return model(batch.clean)

    def flags_on():
        with torch.inference_mode():
            return model(batch.clean)

    def patched():
        with torch.inference_mode():
            return pm.run_patched(batch.clean, ones, patches)

    def src_outs():
        return pm.src_outs(batch.corrupt)

    def circuits():
        return run_circuits(pm, batches, sizes, scores, progress=False)

    def only(flag: str):
        def run():
            with hook_flags(model, [flag]), torch.inference_mode():
                return model(batch.clean)

        return run

    fns = dict(plain=plain, flags_on=flags_on, patched=patched, src_outs=src_outs,
               circuits=circuits, **{f"only_{f}": only(f) for f in SINGLE_FLAGS})
    return dict(model=model, pm=pm, fns=fns, sizes=sizes, patches=patches)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_common_args(p)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=16)
    p.add_argument("--circuit-repeats", type=int, default=2, help="timed run_circuits calls")
    p.add_argument("--no-flag-breakdown", action="store_true",
                   help="skip the forward passes with one hook flag on at a time")
    args = p.parse_args()
    device = setup_torch(args)
    ctx = build(args, device)
    fns, pm = ctx["fns"], ctx["pm"]
    print(f"bench_patch | {machine_line(device)}")
    print(f"model: random GPT-2-small shape (12L x 12H, d_model 768, d_mlp 3072, vocab 50257), "
          f"{param_mib(pm):.0f} MiB of parameters | graph: {pm.n_edges} edges, "
          f"{len(pm.srcs)} sources | batch {args.batch} x {args.seq} tokens")

    # the first passes of a fresh process are several times slower: warm up first
    for _ in range(2):
        fns["plain"]()
        fns["flags_on"]()
    names = list(TASKS) + ([] if args.no_flag_breakdown else [f"only_{f}" for f in SINGLE_FLAGS])
    tasks = [Task(n, fns[n], repeats=args.repeats if n != "circuits" else args.circuit_repeats)
             for n in names]
    with CpuMonitor() as cpu:
        run_tasks(tasks, device, measure_memory=not args.no_mem)
    t = {task.name: task for task in tasks}

    a, b = median(t["plain"].times), median(t["flags_on"].times)
    rows = []
    for task in tasks:
        m = median(task.times)
        rows.append([LABELS[task.name], m * 1000, min(task.times) * 1000, len(task.times),
                     m / a, m / b, mem_str(task)])
    print_table(["measurement", "median ms", "min ms", "runs", "/ (a)", "/ (b)", "peak MiB"],
                rows, title=f"batch {args.batch} x {args.seq} (ratios of medians)")
    c = median(t["patched"].times)
    amin, bmin, cmin = (min(t[n].times) for n in ("plain", "flags_on", "patched"))
    print(f"\n(c)/(a) fully patched vs plain forward    : {c / a:.2f}x (mins: {cmin / amin:.2f}x)"
          "  target <= 1.5x")
    print(f"(c)/(b) fully patched vs flags-on forward : {c / b:.2f}x (mins: {cmin / bmin:.2f}x)")
    print(f"(b)/(a) cost of the hook flags alone      : {b / a:.2f}x (mins: {bmin / amin:.2f}x)")
    r = median(t["circuits"].times)
    n_pass = len(ctx["sizes"]) + 1
    print(f"run_circuits, sizes {ctx['sizes']}:")
    print(f"  / one plain forward (a)    : {r / a:.2f}x  ({r / n_pass / a:.2f}x per pass; it runs "
          f"{n_pass - 1} patched forwards + 1 src_outs)")
    print(f"  / one flags-on forward (b) : {r / b:.2f}x  ({r / n_pass / b:.2f}x per pass)")
    if not args.no_mem:
        print(f"peak MiB: each call's own peak above the memory in use before it "
              f"({t['plain'].mem['how']}); the patch buffer [n_srcs, batch, seq, d_model] is "
              f"{ctx['patches'].numel() * ctx['patches'].element_size() / 2**20:.1f} MiB")
    print(cpu.line())


if __name__ == "__main__":
    main()
