"""Edge attribution patching (EAP) and integrated gradients against the floor, on a
random-weight GPT-2-small-shaped model (32,491 edges).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_eap.py [--device cuda] [--profile]

Rows per batch shape (``--sizes``, default ``8x16,32x32``: prompts x tokens), one batch:

floor, flags off: the plain model (hook flags off): the corrupt prompts' forward (no
    grad), the clean prompts' forward with grad, and one backward of the logit-difference
    loss to the residual stream (activation gradients through every layer; no weight
    gradients, as EAP computes none either).
floor, flags on: the same with the flags ``patchable_model`` switched on (for a
    HookedTransformer only ``use_hook_mlp_in``: head outputs come from ``hook_z`` and
    Q/K/V are patched after the projection, see ``edgewise.patching.sites``).
EAP: ``mask_gradient_prune_scores(model, loader, None, "logit", "avg_diff", mask_val=0.0)``.
IG(5): the same with ``integrated_grad_samples=5`` (6 forward + backward passes).

``--profile`` adds a phase breakdown of one EAP call (patches, patched forward, backward)
and torch.profiler's top 15 operators by self CPU time.
"""

from __future__ import annotations

import argparse
import time

import torch

from edgewise import batch_src_ablations, mask_gradient_prune_scores, patchable_model
from edgewise.prune_algos.loss import answer_loss, grad_values

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
    sync,
)

LABELS = {
    "floor_off": "floor, flags off",
    "floor_on": "floor, flags on",
    "eap": "EAP (mask_val=0)",
    "ig5": "IG, 5 samples",
}


def make_fns(model, pm, batches, device):
    batch = batches[0]
    resid0 = pm.adapter.hook_point("blocks.0.hook_resid_pre")

    def floor(on: bool):
        def run():
            with hook_flags(model, on):
                with torch.inference_mode():
                    model(batch.corrupt)
                store = {}
                handle = resid0.register_forward_hook(lambda _m, _i, o: store.setdefault("x", o))
                try:
                    logits = pm.outputs(batch.clean)  # the unembedding at the output only, as EAP
                finally:
                    handle.remove()
                loss = answer_loss(grad_values(logits, "logit"), batch, "avg_diff")
                torch.autograd.grad(loss, [store["x"]])

        return run

    def eap():
        return mask_gradient_prune_scores(pm, batches, None, "logit", "avg_diff",
                                          mask_val=0.0, progress=False)

    def ig5():
        return mask_gradient_prune_scores(pm, batches, None, "logit", "avg_diff",
                                          integrated_grad_samples=5, progress=False)

    return {"floor_off": floor(False), "floor_on": floor(True), "eap": eap, "ig5": ig5}


def phases(pm, batches, device, eap, repeats: int = 2) -> list[list]:
    """EAP's loop split into its phases (the same calls as mask_gradient_prune_scores),
    each run alternating with a whole EAP call so both see the same conditions."""
    batch = batches[0]
    out: dict[str, list[float]] = {"patches (src_outs of corrupt)": [],
                                   "patched forward (grad on)": [],
                                   "loss + backward (autograd.grad)": [],
                                   "sum of the phases": [], "whole EAP call": []}
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        eap()
        sync(device)
        whole = time.perf_counter() - t0
        t0 = time.perf_counter()
        patches = batch_src_ablations(pm, batches)
        sync(device)
        t1 = time.perf_counter()
        masks = pm.new_masks(0.0, requires_grad=True)
        with pm.patch(masks, patches[batch.key]):
            logits = pm(batch.clean)[pm.out_slice]
        sync(device)
        t2 = time.perf_counter()
        loss = answer_loss(grad_values(logits, "logit"), batch, "avg_diff")
        torch.autograd.grad(loss, list(masks.values()))
        sync(device)
        t3 = time.perf_counter()
        for k, v in zip(out, (t1 - t0, t2 - t1, t3 - t2, t3 - t0, whole)):
            out[k].append(v)
    return [[k, median(v) * 1000] for k, v in out.items()]


def _profile(fn, device):
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts, record_shapes=True) as prof:
        fn()
    return prof


def _self_ms(prof, device, by_shape: bool) -> dict[str, tuple[float, int]]:
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    out = {}
    for ev in prof.key_averages(group_by_input_shape=by_shape):
        key = ev.key + (f" {ev.input_shapes}"[:90] if by_shape else "")
        out[key] = (getattr(ev, attr, 0.0) / 1000, ev.count)
    return out


def profile_eap(eap, floor, device) -> None:
    """torch.profiler on one EAP call: top 15 operators by self time, and the operators
    (by input shape) that make up the time beyond the floor (flags off)."""
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    p_eap = _profile(eap, device)
    print(p_eap.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=40))
    p_floor = _profile(floor, device)
    for by_shape in (False, True):
        e, f = _self_ms(p_eap, device, by_shape), _self_ms(p_floor, device, by_shape)
        extra = sorted(((e[k][0] - f.get(k, (0.0, 0))[0], k) for k in e), reverse=True)[:15]
        rows = [[k, e[k][0], e[k][1], f.get(k, (0.0, 0))[0], f.get(k, (0.0, 0))[1], d]
                for d, k in extra]
        title = ("time beyond the floor (flags off), by operator" if not by_shape
                 else "time beyond the floor (flags off), by operator and input shapes")
        print_table(["operator", "EAP ms", "calls", "floor ms", "calls", "extra ms"], rows,
                    title=title)
    te = sum(v[0] for v in _self_ms(p_eap, device, False).values())
    tf = sum(v[0] for v in _self_ms(p_floor, device, False).values())
    print(f"profiled self time: EAP {te:.0f} ms, floor {tf:.0f} ms, extra {te - tf:.0f} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_common_args(p)
    p.set_defaults(repeats=3)
    p.add_argument("--sizes", default="8x16,32x32", help="batch shapes, BATCHxSEQ,...")
    p.add_argument("--ig-sizes", default="8x16", help="shapes that also run IG(5) ('' for none)")
    p.add_argument("--large-repeats", type=int, default=1,
                   help="timed runs at shapes above 256 tokens (no warm-up call there)")
    p.add_argument("--profile", action="store_true", help="profile one EAP call (first shape)")
    args = p.parse_args()
    device = setup_torch(args)
    model = gpt2_small(device, kind=args.kind)
    pm = patchable_model(model)
    sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",") if s]
    ig_sizes = {tuple(int(x) for x in s.split("x")) for s in args.ig_sizes.split(",") if s}
    print(f"bench_eap | {machine_line(device)}")
    print(f"model: random GPT-2-small shape, {param_mib(pm):.0f} MiB of parameters | graph: "
          f"{pm.n_edges} edges, {len(pm.srcs)} sources | loss: logit difference (avg_diff)")

    summary = []
    profiled = False
    for b, s in sizes:
        batches = device_loader(prompt_loader(b, s), device)
        fns = make_fns(model, pm, batches, device)
        large = b * s > 256
        # warm-up of the libraries and of this shape's first passes
        for _ in range(1 if large else 2):
            fns["floor_off"]()
        reps, warm = (args.large_repeats, 0) if large else (args.repeats, 1)
        tasks = [Task("floor_off", fns["floor_off"], reps, warm),
                 Task("floor_on", fns["floor_on"], reps, warm),
                 Task("eap", fns["eap"], reps, warm)]
        if (b, s) in ig_sizes:
            tasks.append(Task("ig5", fns["ig5"], 1 if large else max(1, reps // 2), 0))
        with CpuMonitor() as cpu:
            run_tasks(tasks, device, measure_memory=not args.no_mem)
        t = {task.name: task for task in tasks}
        f_off, f_on = median(t["floor_off"].times), median(t["floor_on"].times)
        rows = []
        for task in tasks:
            m = median(task.times)
            rows.append([LABELS[task.name], m * 1000, min(task.times) * 1000, len(task.times),
                         m / f_off, m / f_on, mem_str(task)])
        buf = len(pm.srcs) * b * s * model.cfg.d_model * 4 / 2**20
        print_table(["measurement", "median ms", "min ms", "runs", "/ floor off", "/ floor on",
                     "peak MiB"], rows,
                    title=f"batch {b} x {s} tokens (ratios of medians; one patch buffer "
                          f"[{len(pm.srcs)}, {b}, {s}, {model.cfg.d_model}] = {buf:.0f} MiB)")
        e = median(t["eap"].times)
        line = f"EAP / floor (flags off) = {e / f_off:.2f}x (target <= 1.2x); " \
               f"EAP / floor (flags on) = {e / f_on:.2f}x"
        if "ig5" in t:
            line += f"; IG(5) / floor (flags off) = {median(t['ig5'].times) / f_off:.2f}x"
        print(line)
        print(cpu.line())
        summary.append((b, s, e / f_off))

        if args.profile and not profiled:
            profiled = True
            print(f"\nEAP phases, batch {b} x {s} (median of 2):")
            print_table(["phase", "ms"], phases(pm, batches, device, fns["eap"]))
            print(f"\ntorch.profiler, one EAP call, batch {b} x {s}, top 15 by self time:")
            profile_eap(fns["eap"], fns["floor_off"], device)
    print("\nsummary: " + "; ".join(f"{b}x{s}: EAP/floor {r:.2f}x" for b, s, r in summary))


if __name__ == "__main__":
    main()
