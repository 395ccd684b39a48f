"""Every GPU row of the benchmarks in one run (``bench/gpu.sh``, ``make bench-gpu``).

Rows (random weights at the real shapes, ``edgewise.models.shapes``; nothing downloaded):

1. GPT-2 small, EAP and the floor (corrupt forward, clean forward, backward), 8x16;
2. the same at 32x32;
3. GPT-2 small, the full 20-tau ACDC sweep (kl_div, the default taus), IOI-like prompts
   (16 x 16 tokens, the corrupt prompts differ at two name positions); goal < 60 s;
4. Pythia-1.4B, EAP at 16x64 tokens, float32: peak memory (goal < 20 GiB);
5. Llama-3.1-8B, EAP in bfloat16 at MIB's IOI length (24 tokens), 20 prompts a batch:
   seconds per 500 pairs (goal < 53 s);
6. auto-circuit side by side (``bench/bench_acdc_vs_auto_circuit.py``) where its
   environment ``.venv-ac`` exists.

Every row also prints the cost model's projection (``bench/cost_model.py``) for an
assumed H100, marked PROJECTION. With CUDA the rows are measured; without it they are
only projected, unless ``--dry-run``: then every row runs end to end on the CPU at tiny
sizes (1 layer, widths / 16, 2 prompts of 5 tokens, 1 ACDC tau), to prove the script works, and its numbers are
marked DRY RUN (meaningless as timings).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from cost_model import H100, cost  # noqa: E402

GOALS = {"acdc": 60.0, "pythia-peak": 20 * 2**30, "llama-500": 53.0}


def shape_and_graph(name: str, layers: int | None, scale: int) -> tuple[Any, int, int]:
    from bench_shapes import scaled_shape
    from edgewise.graph.build import build_graph

    m = scaled_shape(name, layers, scale)
    g = build_graph(m.spec)
    return m, g.n_edges, len(g.srcs)


def project(algo: str, name: str, prompts: int, seq: int, **kw: Any) -> float:
    m, n_edges, n_srcs = shape_and_graph(name, None, 1)
    return cost(algo, m, n_edges, n_srcs, prompts, seq, **kw).seconds(H100, m.n_layers, m.dtype)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Any, device: torch.device, repeats: int, warm: bool = True) -> float:
    if warm:
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


class Rows:
    def __init__(self, mode: str) -> None:
        self.mode = mode

    def line(self, row: str, measured: str | None, projection: str) -> None:
        what = f"{self.mode}: {measured}" if measured else f"not measured ({self.mode})"
        print(f"{row}\n    {what}\n    PROJECTION: {projection}", flush=True)


def build(name: str, device: torch.device, dry: bool) -> tuple[Any, Any]:
    from edgewise import patchable_model
    from edgewise.models.shapes import random_shape_model

    model = random_shape_model(name, "bridge", n_layers=1 if dry else None, scale=16 if dry else 1)
    model.to(device)
    return model, patchable_model(model, ungroup_kv=True, slice_output="last_seq")


def loader(model: Any, prompts: int, seq: int, device: torch.device) -> list[Any]:
    from bench_shapes import make_loader

    import common

    return common.device_loader(make_loader(int(model.cfg.d_vocab), prompts, seq), device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, end to end")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rows", default="1,2,3,4,5,6", help="which rows to run")
    args = p.parse_args(argv)
    rows = {int(r) for r in args.rows.split(",") if r}
    cuda = torch.cuda.is_available() and not args.dry_run
    device = torch.device("cuda" if cuda else "cpu")
    run = cuda or args.dry_run
    dry = args.dry_run
    mode = "DRY RUN (CPU, 1 layer, widths / 16: not a timing)" if dry else (
        f"MEASURED on {torch.cuda.get_device_name(0)}" if cuda else "no CUDA")
    out = Rows(mode)
    repeats = 1 if dry else args.repeats
    tiny = 5  # --dry-run: every prompt this long (seq) and 2 prompts a batch

    def size(prompts: int, seq: int) -> tuple[int, int]:
        return (2, tiny) if dry else (prompts, seq)
    print(f"torch {torch.__version__}; {mode}\nprojections assume {H100.describe()}\n")
    from bench_eap import make_fns
    from edgewise.prune_algos.acdc import acdc_prune_scores
    from edgewise.prune_algos.mask_gradient import mask_gradient_prune_scores

    gpt2 = build("gpt2", device, dry) if run and rows & {1, 2, 3} else None
    for i, (b, s) in ((1, (8, 16)), (2, (32, 32))):
        if i not in rows:
            continue
        proj = (f"EAP {project('eap', 'gpt2', b, s) * 1e3:.1f} ms, floor "
                f"{project('floor', 'gpt2', b, s) * 1e3:.1f} ms")  # fmt: skip
        got = None
        if gpt2 is not None:
            model, pm = gpt2
            fns = make_fns(model, pm, loader(model, *size(b, s), device), device)
            t_eap, t_floor = (timed(fns[k], device, repeats, not dry) for k in ("eap", "floor_off"))
            got = f"EAP {t_eap * 1e3:.1f} ms, floor {t_floor * 1e3:.1f} ms, EAP/floor {t_eap / t_floor:.2f}"
        out.line(f"[{i}] GPT-2 small, EAP vs floor, {b}x{s}", got, proj)
    if 3 in rows:
        proj = f"{project('acdc', 'gpt2', 16, 16):.0f} s (goal < {GOALS['acdc']:.0f} s)"
        got = None
        if gpt2 is not None:
            model, pm = gpt2
            batches = loader(model, *size(16, 16), device)
            taus = {"tao_exps": [-3], "tao_bases": [1]} if dry else {}  # default: 20 taus
            t = time.perf_counter()
            acdc_prune_scores(pm, batches, None, progress=False, **taus)
            sync(device)
            got = f"{time.perf_counter() - t:.1f} s for {1 if dry else 20} taus x {pm.n_edges} edges"
        out.line("[3] GPT-2 small, ACDC, 20 taus, IOI-like 16x16", got, proj)
    if 4 in rows:
        m, n_edges, _ = shape_and_graph("pythia-1.4b", None, 1)
        from edgewise.mib.models import eap_memory

        pred = eap_memory(m, "ioi", 64, 16, None).total
        proj = (f"peak {pred / 2**30:.1f} GiB (edgewise mib memory's model), "
                f"{project('eap', 'pythia-1.4b', 16, 64):.2f} s (goal < 20 GiB)")  # fmt: skip
        got = None
        if run:
            model, pm = build("pythia-1.4b", device, dry)
            batches = loader(model, *size(16, 64), device)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            mask_gradient_prune_scores(pm, batches, None, "logit", "avg_diff", mask_val=0.0,
                                       progress=False)  # fmt: skip
            sync(device)
            secs = time.perf_counter() - t
            peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
            got = f"peak {peak:.2f} GiB, {secs:.2f} s"
            del model, pm
        out.line("[4] Pythia-1.4B, EAP, 16x64, float32", got, proj)
    if 5 in rows:
        per = project("eap", "llama3", 20, 24) * 25
        proj = f"{per:.0f} s per 500 pairs (goal < {GOALS['llama-500']:.0f} s)"
        got = None
        if run:
            model, pm = build("llama3", device, dry)
            batches = loader(model, *size(20, 24), device)
            secs = timed(lambda: mask_gradient_prune_scores(
                pm, batches, None, "logit", "avg_diff", mask_val=0.0, progress=False,
                max_memory="auto" if cuda else None), device, repeats, not dry)  # fmt: skip
            n = 2 if dry else 20
            got = f"{secs * 500 / n:.1f} s per 500 pairs ({secs:.2f} s per batch of {n})"
            del model, pm
        out.line("[5] Llama-3.1-8B, EAP, bfloat16, 20x24 (MIB IOI)", got, proj)
    if 6 in rows:
        ac = HERE.parent / ".venv-ac" / "bin" / "python"
        if ac.exists() and run:
            cmd = [sys.executable, str(HERE / "bench_acdc_vs_auto_circuit.py")]
            if dry:
                cmd += ["--layers", "1", "--batch", "2", "--seq", "6"]
            res = subprocess.run(cmd, capture_output=True, text=True)
            print("[6] auto-circuit side by side (bench_acdc_vs_auto_circuit.py)")
            print("    " + "\n    ".join((res.stdout or res.stderr).strip().splitlines()[-6:]))
        else:
            print("[6] auto-circuit side by side: skipped (needs .venv-ac, `make parity` builds it"
                  + ("" if run else ", and CUDA or --dry-run") + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
