"""ACDC cost: milliseconds per tested edge, plain sequential search against the fast path,
on identical output.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_acdc.py [--device cuda] [--threads 2]

Model: a random-weight ``HookedTransformer`` with 4 layers, d_model 256 (8 heads of 32),
d_mlp 1024, ``--vocab`` tokens (default 5000); factorized graph with separate Q/K/V
(1,519 edges), output at the last position. Data: one batch of ``--batch`` x ``--seq``
random tokens (default 16 x 16); the corrupt prompts differ in the last two positions
(``--corrupt start``: the first two).
One threshold ``--tau`` (default: 1e-3 of the loss with every edge ablated, rounded down
to base * 10**exp with an integer base), KL divergence.

``--task toy-ioi``: instead, the demo's ACDC: the shipped toy IOI model and its task as
the command line sets them up (batch ``--batch``, the registry's 20 taus).

Rows, each in its own process (so its peak memory is its own):

- plain: ``method="plain"``: one full patched forward (``run_patched``) per tested edge;
- fast, speculation k: ``method="fast"``: forwards start at the destination's block,
  unembedding only the output position, k candidate edges per forward pass;
- fast, speculation auto: the default, ``speculation=None`` (k measured at setup and
  chosen before every pass from the accept rate);
- fast, speculation 1-alone: k = 1 and one search state per pass, as before 0.1.0-dev.6
  (since then the next candidates of every tau group share one stacked pass).

ms/edge is wall time of the whole ``acdc_prune_scores`` call (including its one-off clean
and corrupt forwards) divided by the number of edges tested (n_edges x number of taus);
cpu ms/edge the same with the process's CPU time (steadier on a shared machine; with
``--threads 1`` it equals wall time on an idle one).
Every row's scores must equal the plain row's, or the script exits with an error.

``--busy N`` starts N processes that only spin (a Python loop each) for the whole run and
stops them at the end: the rows then measure ACDC on a loaded machine, e.g.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_acdc.py --busy 2 --layers 2 --batch 4 \
        --seq 8 --vocab 500 --corrupt start --speculation auto 1

(plain, the default and speculation 1 on the same load; the load column is the 1-minute
load average after each row; rows run one after another, so compare them only where the
load column is alike).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from edgewise import PromptDataLoader, PromptDataset, patchable_model  # noqa: E402
from edgewise.models import random_model  # noqa: E402
from edgewise.prune_algos.acdc import acdc_prune_scores  # noqa: E402


def build(args: argparse.Namespace):
    device = torch.device(args.device)
    if args.task == "toy-ioi":
        from edgewise.cli import _setup

        _, pm, train, _ = _setup("toy-ioi", "toy_ioi", args.batch)  # as `edgewise demo` does
        return pm, train
    model = random_model(n_layers=args.layers, n_heads=8, d_head=32, d_vocab=args.vocab,
                         n_ctx=max(32, args.seq), seed=0, kind=args.kind).to(device)
    pm = patchable_model(model)
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen)
    corrupt = clean.clone()
    where = slice(-2, None) if args.corrupt == "end" else slice(0, 2)
    corrupt[:, where] = torch.randint(0, args.vocab, (args.batch, 2), generator=gen)
    answers = torch.randint(0, args.vocab, (args.batch, 1), generator=gen)
    ds = PromptDataset(clean, corrupt, list(answers), list(answers))
    loader = PromptDataLoader(ds, seq_len=None, diverge_idx=0, batch_size=args.batch)
    return pm, loader


def tau_grid(pm, loader, tau: float | None) -> tuple[list[int], list[int]]:
    """(exps, bases) for one tau: given, or about 1e-3 of the all-ablated loss."""
    if tau is None:
        batch = next(iter(loader))
        device = pm.device
        patch = pm.src_outs(batch.corrupt.to(device))
        with torch.inference_mode():
            full = pm(batch.clean.to(device))[pm.out_slice].double()
            out = pm.run_patched(batch.clean.to(device), pm.new_masks(1.0), patch)[pm.out_slice]
        lp, lq = full.log_softmax(-1), out.double().log_softmax(-1)
        tau = float((lp.exp() * (lp - lq)).sum(-1).mean()) * 1e-3
    exp = math.floor(math.log10(tau))
    base = max(1, int(tau / 10.0**exp))
    return [exp], [base]


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    pm, loader = build(args)
    if args.task == "toy-ioi":
        from edgewise.prune_algos import ALGORITHMS

        exps, bases = ALGORITHMS["acdc"].defaults["tao_exps"], ALGORITHMS["acdc"].defaults["tao_bases"]
    else:
        exps, bases = tau_grid(pm, loader, args.tau)
    if args.worker == "plain":
        kw = {"method": "plain"}
    elif args.worker == "1-alone":  # speculation 1 with one tau state per pass (before 0.1.0-dev.6)
        from edgewise.prune_algos import acdc

        acdc._FastEvaluator._max_copies = lambda self: 1
        kw = {"speculation": 1}
    else:
        kw = {"speculation": None if args.worker == "auto" else int(args.worker)}
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0, c0 = time.perf_counter(), time.process_time()
    scores = acdc_prune_scores(pm, loader, None, exps, bases, "kl_div", progress=False, **kw)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if args.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
        peak_kind = "GPU max_memory_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
        peak_kind = "process max RSS"
    torch.save({n: s.cpu() for n, s in scores.items()}, args.out)
    n_tested = pm.n_edges * len(exps) * len(bases)
    flat = torch.cat([s.flatten() for s in scores.values()])
    print(json.dumps({
        "row": args.worker, "wall_s": wall, "ms_per_edge": 1e3 * wall / n_tested,
        "cpu_ms_per_edge": 1e3 * cpu / n_tested,
        "n_edges": pm.n_edges, "tau": bases[0] * 10.0 ** exps[0],
        "kept": int(torch.isinf(flat).sum()), "peak_mib": peak, "peak_kind": peak_kind,
    }))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--corrupt", choices=("end", "start"), default="end",
                   help="where the corrupt prompts differ: the last two positions (default; "
                        "passes then compute only those) or the first two (every position)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=16)
    p.add_argument("--vocab", type=int, default=5000)
    p.add_argument("--layers", type=int, default=4, help="number of layers (default 4)")
    p.add_argument("--kind", choices=("hooked", "bridge"), default=None,
                   help="HookedTransformer (TransformerLens 3.x) or TransformerBridge")
    p.add_argument("--tau", type=float, default=None)
    p.add_argument("--speculation", nargs="+", default=["1", "8", "auto"],
                   help="k values, 'auto' (the measured default) and/or '1-alone' (k = 1 and "
                        "one tau state per pass: no stacked tau groups)")
    p.add_argument("--task", choices=("random", "toy-ioi"), default="random")
    p.add_argument("--skip-plain", action="store_true", help="fast rows only (no equality check)")
    p.add_argument("--busy", type=int, default=0, metavar="N",
                   help="start N busy processes (a Python loop each) for the whole run, to "
                        "measure the rows on a loaded machine (e.g. --busy 2 on 2 cores)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        worker(args)
        return

    rows = ([] if args.skip_plain else ["plain"]) + [str(k) for k in args.speculation]
    if any(r not in ("plain", "auto", "1-alone") and not r.isdigit() for r in rows):
        sys.exit("--speculation takes positive integers, 'auto' and '1-alone'")
    results = []
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        run_rows(args, rows, results)
    finally:
        for proc in busy:  # only the processes started here
            proc.terminate()
            proc.wait()
    report(args, results)


def run_rows(args: argparse.Namespace, rows: list[str], results: list) -> None:
    """Each row in its own process; every row's scores must equal the first row's."""
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            out = os.path.join(tmp, f"{row}.pt")
            cmd = [sys.executable, __file__, "--worker", row, "--out", out, "--device", args.device,
                   "--threads", str(args.threads), "--batch", str(args.batch), "--seq",
                   str(args.seq), "--vocab", str(args.vocab), "--layers", str(args.layers),
                   "--task", args.task, "--corrupt", args.corrupt]
            if args.kind is not None:
                cmd += ["--kind", args.kind]
            if args.tau is not None:
                cmd += ["--tau", repr(args.tau)]
            res = subprocess.run(cmd, check=True, capture_output=True, text=True)
            row = json.loads(res.stdout.strip().splitlines()[-1])
            row["load"] = os.getloadavg()[0]
            results.append((row, out))
        ref = torch.load(results[0][1])
        for r, out in results[1:]:
            got = torch.load(out)
            if any(not torch.equal(got[n], ref[n]) for n in ref):
                sys.exit(f"row {r['row']} gives different scores from row {results[0][0]['row']}")


def report(args: argparse.Namespace, results: list) -> None:
    first = results[0][0]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, device {args.device}, threads {args.threads}")
    kind = "TransformerBridge (GPT-2)" if args.kind == "bridge" else args.kind or "default kind"
    if args.task == "toy-ioi":
        print(f"model: toy IOI ({kind}); {first['n_edges']} edges; batch {args.batch}; "
              f"the registry's 20 taus (kl_div); {first['kept']} edges kept by every tau")
    else:
        print(f"model: {kind}, {args.layers} layers, d_model 256, 8 heads x 32, d_vocab "
              f"{args.vocab}; {first['n_edges']} edges; batch {args.batch} x {args.seq} "
              f"tokens; one tau = {first['tau']:.3g} (kl_div); {first['kept']} edges kept")
    base = first["ms_per_edge"]
    cbase = first["cpu_ms_per_edge"]
    if args.busy:
        print(f"load: {args.busy} busy processes started by this script (and whatever else runs "
              "on the machine); the load column is the 1-minute load average after each row")
    print(f"{'row':<22}{'wall s':>9}{'ms/edge':>10}{'speed-up':>10}{'cpu ms/edge':>13}"
          f"{'speed-up':>10}{'peak MiB':>10}{'load':>7}")
    for r, _ in results:
        name = "plain sequential" if r["row"] == "plain" else f"fast, speculation {r['row']}"
        print(f"{name:<22}{r['wall_s']:>9.2f}{r['ms_per_edge']:>10.2f}"
              f"{base / r['ms_per_edge']:>9.1f}x{r['cpu_ms_per_edge']:>13.2f}"
              f"{cbase / r['cpu_ms_per_edge']:>9.1f}x{r['peak_mib']:>10.0f}{r['load']:>7.1f}")
    print(f"peak memory: {first['peak_kind']}; scores identical across rows: "
          f"{'yes' if len(results) > 1 else 'n/a'}")


if __name__ == "__main__":
    main()
