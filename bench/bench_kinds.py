"""Both model kinds side by side, in one run: the rows that say whether a
``TransformerBridge`` (what ``pip install edgewise`` gets with TransformerLens 4) is as
fast as a ``HookedTransformer`` (TransformerLens 3.x).

    HF_HUB_OFFLINE=1 python bench/bench_kinds.py \\
        --tl3-python .venv/bin/python --tl4-python .venv-tl4/bin/python

Each row runs in its own process (one interpreter per TransformerLens version), one
after another, so the rows share the machine's state as far as a single run allows:

EAP / floor: ``bench_eap.py --kind K`` on GPT-2 small's shape at ``--eap-sizes``
    (EAP's median time over the plain forward + backward floor's, hook flags off).
ACDC ms/edge: ``bench_acdc.py --kind K`` (4 layers, d_model 256, batch 16 x 16, one
    tau; the default speculation), wall milliseconds per edge.
demo: ``edgewise demo --quiet`` on the shipped toy model, wall seconds, on each
    TransformerLens version (a HookedTransformer on 3.x, a bridge on 4.x).

``--quick`` runs every row at a small size (to check the script, not to measure). Rows
whose interpreter is missing are left out with a note. Timings on a shared machine are
contended: rerun on a quiet one before quoting them.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _run(python: str, args: list[str], env: dict[str, str]) -> tuple[str, float]:
    """stdout of ``python args`` and its wall seconds; exits naming the command on failure."""
    t0 = time.perf_counter()
    res = subprocess.run([python, *args], capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-5:]
        sys.exit(f"bench_kinds: {' '.join([python, *args])} failed:\n" + "\n".join(tail))
    return res.stdout, wall


def _version(python: str, env: dict[str, str]) -> str:
    out, _ = _run(python, ["-c", "from importlib.metadata import version; print(version('transformer_lens'))"], env)
    return out.strip().splitlines()[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tl3-python", default=os.path.join(ROOT, ".venv", "bin", "python"),
                   help="interpreter with TransformerLens 3.x (HookedTransformer rows)")
    p.add_argument("--tl4-python", default=os.path.join(ROOT, ".venv-tl4", "bin", "python"),
                   help="interpreter with TransformerLens 4.x (bridge rows)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eap-sizes", default="8x16,32x32")
    p.add_argument("--skip", nargs="*", default=[], choices=("eap", "acdc", "demo"))
    p.add_argument("--quick", action="store_true", help="small sizes: checks the script only")
    args = p.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": os.path.join(ROOT, "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    pythons = {k: v for k, v in (("3", args.tl3_python), ("4", args.tl4_python)) if os.path.exists(v)}
    for k, v in (("3", args.tl3_python), ("4", args.tl4_python)):
        if k not in pythons:
            print(f"note: no interpreter at {v}; its rows are left out")
    versions = {k: _version(v, env) for k, v in pythons.items()}
    # (label, interpreter key, kind): HookedTransformer only on 3.x
    runs = [("HookedTransformer, TL " + versions["3"], "3", "hooked")] if "3" in pythons else []
    runs += [(f"TransformerBridge, TL {versions[k]}", k, "bridge") for k in ("3", "4") if k in pythons]
    rows: list[tuple[str, str, str]] = []

    if "eap" not in args.skip:
        sizes = "2x4" if args.quick else args.eap_sizes
        for label, k, kind in runs:
            out, _ = _run(pythons[k], [os.path.join(HERE, "bench_eap.py"), "--kind", kind, "--sizes", sizes,
                                       "--ig-sizes", "", "--threads", str(args.threads), "--no-mem",
                                       "--repeats", "1" if args.quick else "5"], env)  # fmt: skip
            summary = next((ln for ln in out.splitlines() if ln.startswith("summary:")), "")
            for size, ratio in re.findall(r"(\d+x\d+): EAP/floor ([\d.]+)x", summary):
                rows.append((f"EAP / floor, {size}", label, f"{float(ratio):.2f}x"))
    if "acdc" not in args.skip:
        shape = ["--batch", "2", "--seq", "4", "--layers", "1", "--vocab", "50"] if args.quick else []
        for label, k, kind in runs:
            out, _ = _run(pythons[k], [os.path.join(HERE, "bench_acdc.py"), "--kind", kind, "--skip-plain",
                                       "--speculation", "auto", "--threads", str(args.threads), *shape], env)  # fmt: skip
            line = next(ln for ln in out.splitlines() if ln.startswith("fast, speculation auto"))
            ms = float(line.split()[4])
            rows.append(("ACDC ms/edge (speculation auto)", label, f"{ms:.2f}"))
    if "demo" not in args.skip and not args.quick:
        for k, python in pythons.items():
            with tempfile.TemporaryDirectory() as tmp:
                _, wall = _run(python, ["-c", "from edgewise.cli import main; main()", "demo", "--out",
                                        os.path.join(tmp, "demo"), "--quiet"], env)  # fmt: skip
            kind = "HookedTransformer" if k == "3" else "TransformerBridge"
            rows.append(("edgewise demo, wall s", f"{kind}, TL {versions[k]}", f"{wall:.1f}"))

    width = max([len(r[0]) for r in rows] + [4])
    kwidth = max([len(r[1]) for r in rows] + [4])
    print(f"bench_kinds | threads {args.threads} | {os.cpu_count()} cores{' | QUICK (not a measurement)' if args.quick else ''}")
    print(f"{'row':<{width}}  {'model kind':<{kwidth}}  value")
    for name, kind, value in rows:
        print(f"{name:<{width}}  {kind:<{kwidth}}  {value}")


if __name__ == "__main__":
    main()
