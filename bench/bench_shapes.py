"""EAP, EAP-IG on inputs (5 steps) and MIB's evaluation on random-weight models at the
field's real shapes (``edgewise.models.shapes``: GPT-2 small, Pythia-1.4B, Qwen2.5-0.5B,
Gemma-2-2B, Llama-3.1-8B) at MIB's prompt lengths: seconds per prompt and measured peak
memory against what ``edgewise mib memory`` predicts (``edgewise.mib.models.eap_memory``).

    HF_HUB_OFFLINE=1 .venv-tl4/bin/python bench/bench_shapes.py --models gpt2,qwen2.5
    HF_HUB_OFFLINE=1 .venv-tl4/bin/python bench/bench_shapes.py --models pythia-1.4b --batch 1
    HF_HUB_OFFLINE=1 .venv-tl4/bin/python bench/bench_shapes.py --models llama3 --batch 1 \\
        --algos eap --cap ''   # 16 GB of bfloat16 weights: 19.3 GiB peak; no address-space cap

Each (model, task) runs in its own process under ``prlimit --as=CAP`` (CPU; ``--cap``),
so one that does not fit fails alone. The child prints one JSON line per stage it
finishes; when it dies the table says how far it got and what the memory model says it
needs. Before building, a model whose predicted need (weights plus one prompt with the
smallest source block) exceeds the cap is not started (``--try-anyway`` starts it).

Peak memory: CPU, ``VmHWM`` after resetting it (``bench/common.py``) minus the resident
set before the call, plus the weights' bytes (the prediction counts them); CUDA,
``torch.cuda.max_memory_allocated`` (weights included). The memory model predicts EAP
(weights + activations + patch buffers); the table prints predicted / measured for EAP
and the measured peaks of EAP-IG and the evaluation beside it.

``--layers N`` and ``--scale K`` build smaller models of the same architectures (a dry
run; the prediction is then computed for that smaller shape).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

ALGOS = ("eap", "eap-ig", "mib-eval")


def scaled_shape(name: str, layers: int | None, scale: int) -> Any:
    """The ``MIBModel`` of shape ``name`` with ``layers`` layers and widths divided by
    ``scale`` (what ``random_shape_model`` builds with the same arguments)."""
    from edgewise.models.shapes import SHAPES

    m = SHAPES[name]
    return dataclasses.replace(
        m, n_layers=layers or m.n_layers, d_model=m.d_model // scale, d_head=m.d_head // scale,
        d_mlp=m.d_mlp // scale, d_vocab=max(64, m.d_vocab // scale),
        n_positions=m.n_positions,
    )  # fmt: skip


def tasks_of(name: str) -> list[str]:
    """MIB's tasks for the model (its results table); IOI for Pythia (not in MIB)."""
    from edgewise.mib.models import MIB_PAIRS

    return [t for t, m in MIB_PAIRS if m == name] or ["ioi"]


def prediction(shape: Any, task: str, seq: int, batch: int) -> dict[str, int]:
    """``eap_memory``'s bytes, and the least EAP can run in: one prompt, smallest block."""
    from edgewise.graph.build import build_graph
    from edgewise.mib.models import activation_bytes, eap_memory

    plan = eap_memory(shape, task, seq, batch, None)
    graph = build_graph(shape.spec)
    widest = max(m.src_hi - m.src_lo for m in graph.src_modules)
    one = eap_memory(shape, task, seq, 1, None)
    least = one.weights + activation_bytes(shape, 1, seq) + one.buffers * widest // len(graph.srcs)
    return {"weights": plan.weights, "activations": plan.activations, "buffers": plan.buffers,
            "total": plan.total, "least": int(least), "edges": plan.n_edges}  # fmt: skip


# ------------------------------------------------------------------ the child process
def emit(**row: Any) -> None:
    print(json.dumps(row), flush=True)


def make_loader(vocab: int, batch: int, seq: int, seed: int = 0) -> Any:
    """IOI-like pairs: clean and corrupt differ at two middle positions (the names)."""
    from edgewise import PromptDataLoader, PromptDataset

    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(3, vocab, (batch, seq), generator=gen)
    corrupt = clean.clone()
    for pos in (seq // 3, 2 * seq // 3):
        corrupt[:, pos] = torch.randint(3, vocab, (batch,), generator=gen)
    answers = torch.randint(3, vocab, (batch, 1), generator=gen)
    wrong = torch.randint(3, vocab, (batch, 1), generator=gen)
    return PromptDataLoader(PromptDataset(clean, corrupt, answers, wrong), seq_len=None,
                            diverge_idx=0, batch_size=batch)  # fmt: skip


def child(args: argparse.Namespace) -> int:
    from edgewise import eap_ig_inputs_prune_scores, mib_evaluate, patchable_model
    from edgewise.models.shapes import random_shape_model
    from edgewise.prune_algos.mask_gradient import mask_gradient_prune_scores

    import common

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    t = time.perf_counter()
    model = random_shape_model(args.models, "bridge", n_layers=args.layers, scale=args.scale,
                               dtype=dtype)  # fmt: skip
    model.to(device)
    weights = sum(p.numel() * p.element_size() for p in model.original_model.parameters())
    emit(stage="build", seconds=time.perf_counter() - t, weights=weights)
    t = time.perf_counter()
    pm = patchable_model(model, ungroup_kv=True, slice_output="last_seq")
    emit(stage="patchable_model", seconds=time.perf_counter() - t, edges=pm.n_edges)
    loader = common.device_loader(make_loader(int(model.cfg.d_vocab), args.batch, args.seq), device)
    scores = None

    def timed(name: str, fn: Any) -> Any:
        out: dict[str, Any] = {}
        t0 = time.perf_counter()
        mem = common.peak_memory(lambda: out.setdefault("r", fn()), device)
        secs = time.perf_counter() - t0
        peak = mem["peak_mib"] * 2**20 + (0 if device.type == "cuda" else weights)
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
        emit(stage=name, seconds=secs, per_prompt=secs / args.batch, peak=int(peak),
             how=mem["how"])  # fmt: skip
        return out["r"]

    if "eap" in args.algos:
        scores = timed("eap", lambda: mask_gradient_prune_scores(
            pm, loader, None, "logit", "avg_diff", mask_val=0.0, progress=False,
            max_memory=args.max_memory))  # fmt: skip
    if "eap-ig" in args.algos:
        scores = timed("eap-ig", lambda: eap_ig_inputs_prune_scores(
            pm, loader, integrated_grad_samples=5, progress=False))  # fmt: skip
    if "mib-eval" in args.algos:
        if scores is None:
            gen = torch.Generator().manual_seed(1)
            scores = {k: torch.randn(m.mask_shape, generator=gen).to(device)
                      for k, m in pm.dest_modules.items()}  # fmt: skip
        timed("mib-eval", lambda: mib_evaluate(pm, loader, scores, max_memory=args.max_memory))
    return 0


# ------------------------------------------------------------------ the parent process
def human(n: float) -> str:
    from edgewise.runtime.memory import human as h

    return h(n)


def run_one(args: argparse.Namespace, name: str, task: str, seq: int) -> dict[str, Any]:
    shape = scaled_shape(name, args.layers, args.scale)
    if args.dtype:
        shape = dataclasses.replace(shape, dtype=getattr(torch, args.dtype))
    pred = prediction(shape, task, seq, args.batch)
    row: dict[str, Any] = {"model": name, "task": task, "seq": seq, "batch": args.batch,
                           "dtype": str(shape.dtype).removeprefix("torch."), "pred": pred}  # fmt: skip
    cap = None
    if args.device == "cpu" and args.cap:
        from edgewise.runtime.memory import parse_memory

        cap = parse_memory(args.cap, torch.device("cpu"))
    if cap is not None and pred["least"] > cap and not args.try_anyway:
        row["stopped"] = (f"not started: needs at least {human(pred['least'])} (weights "
                          f"{human(pred['weights'])} + one prompt with the smallest source "
                          f"block), cap {human(cap)}; raise --cap or run on a larger machine")  # fmt: skip
        return row
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--models", name,
           "--seq", str(seq), "--batch", str(args.batch), "--algos", ",".join(args.algos),
           "--threads", str(args.threads), "--device", args.device, "--scale", str(args.scale)]  # fmt: skip
    for flag, value in (("--layers", args.layers), ("--dtype", args.dtype),
                        ("--max-memory", args.max_memory)):  # fmt: skip
        if value is not None:
            cmd += [flag, str(value)]
    if cap is not None and shutil.which("prlimit"):
        cmd = ["prlimit", f"--as={cap}", *cmd]
    stages = {}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith("{"):
                r = json.loads(line)
                stages[r.pop("stage")] = r
                print(f"  {name} {task}: {line.strip()}", flush=True)
        stderr = proc.stderr.read()  # type: ignore[union-attr]
    row["stages"] = stages
    if proc.returncode != 0:
        last = list(stages)[-1] if stages else "start"
        err = (stderr.strip().splitlines() or ["(no message)"])[-1][:200]
        row["stopped"] = (f"stopped after {last!r} (exit {proc.returncode}): {err}; the memory "
                          f"model says EAP needs {human(pred['total'])} in one pass, at least "
                          f"{human(pred['least'])} with source blocks")  # fmt: skip
    return row


def print_rows(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'model':<12}{'task':<10}{'dtype':<9}{'p x s':>7}{'edges':>10}{'build s':>9}"
          f"{'algo':>10}{'s/prompt':>10}{'peak':>11}{'predicted':>11}{'pred/meas':>10}")  # fmt: skip
    for r in rows:
        st = r.get("stages", {})
        head = (f"{r['model']:<12}{r['task']:<10}{r['dtype']:<9}{r['batch']:>3}x{r['seq']:<3}"
                f"{r['pred']['edges']:>10}{st.get('build', {}).get('seconds', float('nan')):>9.1f}")  # fmt: skip
        algos = [a for a in ALGOS if a in st]
        for i, a in enumerate(algos):
            s = st[a]
            pred = r["pred"]["total"] if a == "eap" else None
            ratio = f"{pred / s['peak']:.2f}" if pred else "-"
            print(f"{head if i == 0 else ' ' * len(head)}{a:>10}{s['per_prompt']:>10.2f}"
                  f"{human(s['peak']):>11}{human(pred) if pred else '-':>11}{ratio:>10}")  # fmt: skip
        if not algos:
            print(head)
        if "stopped" in r:
            print(f"    {r['stopped']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="gpt2,qwen2.5", help="comma list of shapes")
    p.add_argument("--tasks", default="ioi", help="comma list of MIB tasks, or 'mib' for the "
                   "model's MIB tasks (prompt lengths: edgewise.mib.models.ASSUMED_SEQ_LEN)")
    p.add_argument("--batch", type=int, default=4, help="prompts in the one batch (MIB: 20)")
    p.add_argument("--algos", default=",".join(ALGOS), help=f"comma list of {', '.join(ALGOS)}")
    p.add_argument("--layers", type=int, default=None, help="build only this many layers")
    p.add_argument("--scale", type=int, default=1, help="divide the widths by this")
    p.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: the shape's)")
    p.add_argument("--max-memory", default=None, help="EAP's --max-memory (source blocks)")
    p.add_argument("--cap", default="8GiB", help="prlimit --as for each child (CPU); '' for none")
    p.add_argument("--try-anyway", action="store_true", help="start even above the cap")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--seq", type=int, default=None, help="prompt length (default: the task's)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.algos = [a for a in args.algos.split(",") if a]
    if args.child:
        return child(args)
    from edgewise.mib.models import ASSUMED_SEQ_LEN

    rows = []
    for name in args.models.split(","):
        tasks = tasks_of(name) if args.tasks == "mib" else args.tasks.split(",")
        for task in tasks:
            seq = args.seq or ASSUMED_SEQ_LEN[task]
            rows.append(run_one(args, name, task, seq))
            print_rows(rows[-1:])
    print_rows(rows)
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, device "
          f"{args.device}; prompt lengths are MIB's assumed ones (edgewise mib memory)")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
