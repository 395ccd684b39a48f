"""MIB parity: MIB's reference code and edgewise side by side on the same weights, prompts
and scores (parity/MIB.md).

    python parity/mib_compare.py --mib-ref DIR [--mib-python P] [--kind hooked|bridge]

``DIR`` holds ``EAP-IG/`` (hannamw/EAP-IG at the commit hannamw/MIB-circuit-track pins)
and ``MIB-circuit-track/``; nothing is downloaded. The reference runs in ``.venv-mib``
(``--mib-python``) with those two checkouts on its ``PYTHONPATH``; edgewise runs in the
interpreter running this script (or ``--ew-python``).

Three runs: ``ref_side.py run`` (scores, evaluations, MIB graph JSONs), ``ew_side.py``
(the same through edgewise's MIB entry points with their defaults; the evaluations take
the reference's scores from its JSON files; edgewise's submission files are written),
``ref_side.py read`` (MIB's loader reads edgewise's files). Then every quantity is
printed with both values, the difference and its tolerance.

Status: ``PASS``; ``FAIL`` (over tolerance); ``KNOWN`` (a difference parity/MIB.md names
as the reference's own bug, not counted); ``MISSING`` / ``ERROR`` (a side could not
compute it). Exit status 0 when nothing is FAIL, MISSING or ERROR, 1 otherwise, 2 when
the harness itself cannot run (no reference checkout, a side crashed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE / "mib"))

from common import (  # noqa: E402
    EDGE_METHODS,
    EVAL_METHOD,
    LEVELS,
    NODE_METHODS,
    PERCENTAGES,
    TOY_DIR,
    read_jsonl,
)

# tolerances per quantity and dtype: scores relative to the largest |score| of the
# reference; metrics (logit differences, faithfulness, CPR, CMD) relative to max(1, |a|, |b|)
TOLERANCES = {
    "float64": {"scores": 1e-10, "metrics": 1e-12},
    "float32": {"scores": 1e-5, "metrics": 1e-5},
}


# ------------------------------------------------------------------------------ inputs
def write_inputs(workdir: Path, lengths: str, seed: int = 0) -> None:
    """The prompts (edgewise's shipped MIB-format IOI rows; with ``lengths="mixed"`` each
    row also once without its first word, so batches hold prompts of two lengths) and
    a file of optimal-ablation values in MIB's pickle format (seeded random numbers:
    what is compared is how each side uses given values, not how they are trained)."""
    import torch

    (workdir / "data").mkdir(parents=True)
    src = ROOT / "src" / "edgewise" / "datasets" / "mib" / "ioi"
    for split in ("train", "validation"):
        rows = read_jsonl(src / f"{split}.jsonl")
        if lengths == "mixed":
            short = []
            for r in rows:
                r = json.loads(json.dumps(r))
                for v in r.values():
                    if isinstance(v, dict) and "prompt" in v:
                        v["prompt"] = v["prompt"].split(" ", 1)[1]
                r["prompt"] = r["prompt"].split(" ", 1)[1]
                short.append(r)
            rows = [x for pair in zip(rows, short) for x in pair]
        (workdir / "data" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = json.loads((TOY_DIR / "config.json").read_text())
    g = torch.Generator().manual_seed(seed)
    d, h = cfg["d_model"], cfg["n_heads"]
    values = {"hook_embed": 0.5 * torch.randn(d, generator=g)}
    for layer in range(cfg["n_layers"]):
        values[f"blocks.{layer}.attn.hook_result"] = 0.5 * torch.randn(h, d, generator=g)
        values[f"blocks.{layer}.hook_mlp_out"] = 0.5 * torch.randn(d, generator=g)
    with open(workdir / "optimal_ablations.pkl", "wb") as f:
        pickle.dump(values, f)


def run_side(cmd: list[str], env: dict[str, str], log: Path, timeout: int) -> float:
    t0 = time.time()
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    log.write_text(p.stdout[-20000:] + "\n--- stderr ---\n" + p.stderr[-40000:])
    if p.returncode != 0:
        tail = "\n".join(p.stderr.strip().splitlines()[-15:])
        raise SystemExit(f"edgewise: error: {' '.join(cmd[1:3])} failed (exit {p.returncode}); "
                         f"log: {log}\n{tail}")  # fmt: skip
    return time.time() - t0


# --------------------------------------------------------------------------- comparing
class Table:
    def __init__(self, tol: dict[str, float]):
        self.tol = tol
        self.rows: list[dict[str, str]] = []

    def add(self, status: str, quantity: str, ref: str, ew: str, diff: str, tol: str, note: str = "") -> None:
        self.rows.append(dict(status=status, quantity=quantity, ref=ref, ew=ew, diff=diff,
                              tol=tol, note=note))  # fmt: skip

    def missing(self, quantity: str, r: Any, e: Any) -> bool:
        """Add an ERROR/MISSING row when either side has no value; True if so."""
        for side, v in (("reference", r), ("edgewise", e)):
            if v is None or (isinstance(v, dict) and "error" in v):
                err = "not computed" if v is None else f"{v['error']} ({v.get('where', '')})"
                status = "MISSING" if side == "edgewise" else "ERROR"
                self.add(status, quantity, "-" if side == "edgewise" else "error",
                         "error" if side == "edgewise" else "-", "-", "-", f"{side}: {err}")  # fmt: skip
                return True
        return False

    # vectors of scores: relative to max |reference|
    def scores(self, quantity: str, r: Any, e: Any, known: str = "") -> None:
        if self.missing(quantity, r, e):
            return
        if isinstance(r, dict) and isinstance(e, dict):
            if set(r) != set(e):
                only = sorted(set(r) ^ set(e))[:3]
                self.add("FAIL", quantity, f"{len(r)} entries", f"{len(e)} entries", "keys differ",
                         "equal keys", f"e.g. {only}")  # fmt: skip
                return
            keys = sorted(r)
            a, b = [r[k] for k in keys], [e[k] for k in keys]
        else:
            keys = list(range(len(flat(r))))
            a, b = flat(r), flat(e)
            if len(a) != len(b):
                self.add("FAIL", quantity, f"{len(a)} values", f"{len(b)} values", "lengths differ", "-")
                return
        scale = max((abs(x) for x in a), default=0.0) or 1.0
        worst = max(range(len(a)), key=lambda i: abs(a[i] - b[i]))
        d = abs(a[worst] - b[worst]) / scale
        tol = self.tol["scores"]
        ok = d <= tol
        note = f"worst at {keys[worst]}"
        if not ok:
            dot = sum(x * y for x, y in zip(a, b))
            ratio = dot / sum(x * x for x in a) if any(a) else float("nan")
            note += f"; edgewise/ref least-squares ratio {ratio:.6g}"
        status = "PASS" if ok else ("KNOWN" if known else "FAIL")
        self.add(status, quantity, f"{a[worst]:.10g}", f"{b[worst]:.10g}",
                 f"{d:.2e} of max|ref| {scale:.3g}", f"{tol:g}", (known + "; " if known and not ok else "") + note)  # fmt: skip

    def metric(self, quantity: str, r: Any, e: Any, known: str = "") -> None:
        if self.missing(quantity, r, e):
            return
        a, b = flat(r), flat(e)
        if len(a) != len(b):
            self.add("FAIL", quantity, f"{len(a)} values", f"{len(b)} values", "lengths differ", "-")
            return
        tol = self.tol["metrics"]
        rel = [abs(x - y) / max(1.0, abs(x), abs(y)) for x, y in zip(a, b)]
        worst = max(range(len(a)), key=lambda i: rel[i]) if a else 0
        ok = all(x <= tol for x in rel) and all(math.isfinite(x) for x in a + b)

        def show(v: list[float]) -> str:
            return f"{v[worst]:.12g}" + (f" [{worst}]" if len(v) > 1 else "")

        status = "PASS" if ok else ("KNOWN" if known else "FAIL")
        self.add(status, quantity, show(a), show(b), f"{rel[worst]:.2e}", f"{tol:g}",
                 known if known and not ok else "")  # fmt: skip

    def exact(self, quantity: str, r: Any, e: Any, known: str = "", describe=None) -> None:
        if self.missing(quantity, r, e):
            return
        same = r == e
        status = "PASS" if same else ("KNOWN" if known else "FAIL")
        d = describe or (lambda x: short(x))
        self.add(status, quantity, d(r), d(e), "equal" if same else "differ", "exact",
                 "; ".join(x for x in (known if not same else "", "" if same else diff_note(r, e)) if x))

    def edge_sets(self, quantity: str, r: list[list[str]], e: list[list[str]],
                  scores: dict[str, float] | None = None, absolute: bool = False,
                  requested: list[int] | None = None, known: str = "") -> None:  # fmt: skip
        """Circuits (lists of edge names) compared one by one. A circuit that differs where
        the top-n cut falls between edges of equal ranking score is TIE: MIB's argsort
        leaves the order of ties unspecified."""
        if self.missing(quantity, r, e):
            return
        tied = tie_indices(scores, absolute, requested or [])
        bad, ties = [], []
        for i, (x, y) in enumerate(zip(r, e)):
            if set(x) == set(y):
                continue
            if i in tied:
                ties.append(i)
                continue
            bad.append(f"[{i}] {len(x)} vs {len(y)} edges, e.g. {sorted(set(x) ^ set(y))[:2]}")
        if len(r) != len(e):
            bad.append(f"{len(r)} vs {len(e)} circuits")

        def counts(v: list[list[str]]) -> str:
            return "sizes " + ",".join(str(len(c)) for c in v)

        status = ("KNOWN" if known else "FAIL") if bad else ("TIE" if ties else "PASS")
        note = "; ".join(x for x in (known if bad else "", f"ties at the cut in {ties}" if ties else "") if x)
        self.add(status, quantity, counts(r), counts(e), "; ".join(bad)[:300] or "equal", "exact", note)

    def print(self) -> None:
        widths = {k: max(len(k), *(len(row[k]) for row in self.rows)) for k in ("status", "quantity")}
        print(f"{'status':<{widths['status']}}  {'quantity':<{widths['quantity']}}  reference | edgewise | difference (tolerance) note")
        for row in self.rows:
            print(f"{row['status']:<{widths['status']}}  {row['quantity']:<{widths['quantity']}}  "
                  f"{row['ref']} | {row['ew']} | {row['diff']} ({row['tol']}) {row['note']}".rstrip())  # fmt: skip

    def markdown(self) -> str:
        lines = ["| status | quantity | reference | edgewise | difference | tolerance | note |",
                 "|---|---|---|---|---|---|---|"]  # fmt: skip
        for row in self.rows:
            cells = [row[k].replace("|", "\\|") for k in ("status", "quantity", "ref", "ew", "diff", "tol", "note")]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def flat(x: Any) -> list[float]:
    if isinstance(x, list | tuple):
        return [v for item in x for v in flat(item)]
    return [float(x)]


def f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def short(x: Any) -> str:
    s = json.dumps(x)
    return s if len(s) <= 60 else s[:57] + "..."


def diff_note(r: Any, e: Any) -> str:
    if isinstance(r, list) and isinstance(e, list):
        if len(r) != len(e):
            return f"lengths {len(r)} vs {len(e)}"
        i = next((i for i, (x, y) in enumerate(zip(r, e)) if x != y), None)
        return f"first difference at [{i}]: {short(r[i])} vs {short(e[i])}"
    return ""


def padding_side(rows: list[list[int]], pad: int | None) -> str:
    """'right', 'left' or 'none': where the pad ids of the shorter prompts sit."""
    if pad is None:
        return "none"
    sides = set()
    for row in rows:
        if row and row[-1] == pad:
            sides.add("right")
        if row and row[0] == pad:
            sides.add("left")
    return "/".join(sorted(sides)) or "none"


def strip(rows: list[list[int]], pad: int | None) -> list[list[int]]:
    return [[t for t in row if t != pad] for row in rows]


# ---------------------------------------------------------------------- the comparison
PRUNE_BUG = ("the pinned commit's Graph.prune stops when the nodes stop changing, before "
             "the edges do (fixed in EAP-IG 55a2be2); the fixed point matches, faithfulness "
             "is unaffected")  # fmt: skip
OA_BUG = ("MIB's load_ablations reads only head 0's optimal value of each layer and "
          "leaves the other heads at 0")  # fmt: skip


def compare(ref: dict, ew: dict, read: dict, t: Table) -> None:
    R, E, X = ref["values"], ew["values"], read["values"]

    # data
    for split in ("train", "validation"):
        r, e = R.get(f"data/{split}"), E.get(f"data/{split}")
        if t.missing(f"data/{split}", r, e):
            continue
        for part in ("clean", "corrupt"):
            t.exact(f"data/{split}/{part} tokens (unpadded)", strip(r[part], r["pad_id"]),
                    strip(e[part], r["pad_id"]), describe=lambda v: f"{len(v)} prompts")  # fmt: skip
        t.exact(f"data/{split}/padding side", padding_side(r["clean"], r["pad_id"]),
                padding_side(e["clean"], r["pad_id"]))  # fmt: skip
        t.exact(f"data/{split}/answers", r["answers"], e["answers"])
        t.exact(f"data/{split}/wrong answers", r["wrong_answers"], e["wrong_answers"])

    # edge scores
    for method in EDGE_METHODS:
        t.scores(f"edge scores/{method}", R.get(f"scores/edge/{method}"), E.get(f"scores/edge/{method}"))
    t.scores("edge scores/EAP/optimal ablation", R.get("scores/edge/EAP/optimal"),
             E.get("scores/edge/EAP/optimal"))  # fmt: skip
    t.scores("edge scores/EAP/optimal ablation, every head's value", R.get("scores/edge/EAP/optimal"),
             E.get("scores/edge/EAP/optimal-as-written"), known=OA_BUG)  # fmt: skip
    skip = R.get("scores/edge/EAP-IG-activations/optimal", {})
    t.add("SKIP", "edge scores/EAP-IG-activations/optimal ablation", "-", "-", "-", "-",
          skip.get("skipped", ""))  # fmt: skip

    # node and neuron scores
    for level in LEVELS:
        for method in NODE_METHODS:
            r = R.get(f"scores/{level}/{method}")
            t.scores(f"{level} scores/{method}", r.get("computed") if isinstance(r, dict) and "computed" in r else r,
                     E.get(f"scores/{level}/{method}"))  # fmt: skip

    # the reference's graph JSONs read by edgewise
    for method in EDGE_METHODS:
        r = R.get(f"scores/edge/{method}")
        stored = read_graph_scores(ref, method)
        if stored is not None:
            t.exact(f"JSON import/{method} (MIB's importances.json read by load_mib_json)",
                    stored, E.get(f"import/edge/{method}"), describe=lambda v: f"{len(v)} edges")  # fmt: skip

    # edge-level evaluation of the reference's scores
    for method in EDGE_METHODS:
        e = E.get(f"eval/edge/{method}")
        stored = read_graph_scores(ref, method)
        for absolute in (False, True):
            r = R.get(f"eval/edge/{method}/abs-{absolute}")
            q = f"eval/edge/{method}/{'CMD run (abs)' if absolute else 'CPR run (signed)'}"
            if t.missing(q, r, e):
                continue
            curve = e["curve_cmd" if absolute else "curve_cpr"]
            t.metric(f"{q}/faithfulness curve (10 points)", r["faithfulnesses"], curve)
            if absolute:
                t.metric(f"{q}/CMD", r["area_from_1"], e["cmd"])
            else:
                t.metric(f"{q}/CPR", r["area_under"], e["cpr"])
            t.metric(f"{q}/average faithfulness", r["average"],
                     e["average_cmd" if absolute else "average_cpr"])  # fmt: skip
            t.metric(f"{q}/full model logit diff per prompt", r["full"], e["per_prompt"]["full"])
            t.metric(f"{q}/empty circuit logit diff per prompt", r["empty"], e["per_prompt"]["empty"])
            t.metric(f"{q}/circuits' logit diffs per prompt", [c["per_prompt"] for c in r["circuits"]],
                     e["per_prompt"]["absolute" if absolute else "signed"])  # fmt: skip
            mine = e["circuits"][f"abs-{absolute}"]
            t.edge_sets(f"{q}/edge sets vs the prune loop's fixed point",
                        [c["fixed_point"] for c in r["circuits"]], mine, stored, absolute,
                        [int(p * len(stored or {})) for p in PERCENTAGES])  # fmt: skip
            pinned = [c["evaluated"] for c in r["circuits"]]
            same = all(set(a) == set(c["fixed_point"]) for a, c in zip(pinned, r["circuits"]))
            t.edge_sets(f"{q}/edge sets as the pinned commit evaluates them", pinned, mine, stored,
                        absolute, [int(p * len(stored or {})) for p in PERCENTAGES],
                        known="" if same else PRUNE_BUG)  # fmt: skip
            counts_e = [float(c) for c in e["edge_counts_cmd" if absolute else "edge_counts_cpr"]]
            fixed_counts = [float(len(c["fixed_point"])) for c in r["circuits"]]
            tied = tie_indices(stored, absolute, [int(p * len(stored or {})) for p in PERCENTAGES])
            untied = [i for i in range(len(counts_e)) if i not in tied]
            counts_r = [float(c) for c in r["weighted_edge_counts"]]
            if all(counts_r[i] == counts_e[i] for i in untied) and counts_r != counts_e:
                t.add("TIE", f"{q}/edge counts (MIB's weighted_edge_counts)", fmt_counts(counts_r),
                      fmt_counts(counts_e), "differ", "exact", f"only where the cut ties: {tied}")  # fmt: skip
            else:
                t.exact(f"{q}/edge counts (MIB's weighted_edge_counts)", counts_r, counts_e,
                        known=PRUNE_BUG if all(fixed_counts[i] == counts_e[i] for i in untied) else "",
                        describe=fmt_counts)  # fmt: skip

    # node- and neuron-level evaluation of the reference's node scores
    for level in LEVELS:
        e = E.get(f"eval/{level}/{EVAL_METHOD}")
        for absolute in (False, True):
            r = R.get(f"eval/{level}/{EVAL_METHOD}/abs-{absolute}")
            q = f"eval/{level}/{EVAL_METHOD}/{'CMD run (abs)' if absolute else 'CPR run (signed)'}"
            if t.missing(q, r, e):
                continue
            t.metric(f"{q}/faithfulness curve (10 points)", r["faithfulnesses"],
                     e["curve_cmd" if absolute else "curve_cpr"])  # fmt: skip
            if absolute:
                t.metric(f"{q}/CMD", r["area_from_1"], e["cmd"])
            else:
                t.metric(f"{q}/CPR", r["area_under"], e["cpr"])
            t.metric(f"{q}/full and empty logit diffs per prompt", [r["full"], r["empty"]],
                     [e["per_prompt"]["full"], e["per_prompt"]["empty"]])  # fmt: skip
            t.metric(f"{q}/circuits' logit diffs per prompt", [c["per_prompt"] for c in r["circuits"]],
                     e["per_prompt"]["absolute" if absolute else "signed"])  # fmt: skip
            t.metric(f"{q}/weighted edge counts", r["weighted_edge_counts"],
                     e[f"weighted_edge_counts/abs-{absolute}"])  # fmt: skip
            if level == "node":
                t.exact(f"{q}/kept nodes", [sorted(set(c["nodes"]) - {"logits"}) for c in r["circuits"]],
                        e[f"nodes/abs-{absolute}"], describe=lambda v: ",".join(str(len(c)) for c in v))  # fmt: skip

    # edgewise's submission files read by MIB's loader
    imp = X.get("read/importances")
    own = E.get(f"scores/edge/{EVAL_METHOD}")
    if not t.missing("JSON export/importances.json read by Graph.from_json", imp, own):
        # EAP-IG's Graph holds scores in float32: what it reads is the float32 rounding
        t.exact("JSON export/importances.json read by Graph.from_json: scores (float32 in MIB's Graph)",
                imp["scores"], {k: f32(v) for k, v in own.items()} if isinstance(own, dict) else own,
                describe=lambda v: f"{len(v)} edges")  # fmt: skip
        t.exact("JSON export/importances.json read by Graph.from_json: edges in graph",
                imp["in_graph"], [])  # fmt: skip
    for absolute in (False, True):
        c = X.get(f"read/circuits/abs-{absolute}")
        q = f"JSON export/9 circuits abs-{absolute} read by Graph.from_json"
        if t.missing(q, c, own):
            continue
        t.exact(f"{q}: files", len(c["files"]), 9)
        t.edge_sets(f"{q}: edge sets vs MIB's top-n + prune (fixed point)",
                    [o["fixed_point"] for o in c["own"]], c["read"], imp["scores"], absolute,
                    [int(p * len(imp["scores"])) for p in PERCENTAGES[:-1]])  # fmt: skip
        same = all(set(o["pinned"]) == set(o["fixed_point"]) for o in c["own"])
        t.edge_sets(f"{q}: edge sets vs the pinned commit's top-n + prune",
                    [o["pinned"] for o in c["own"]], c["read"], imp["scores"], absolute,
                    [int(p * len(imp["scores"])) for p in PERCENTAGES[:-1]],
                    known="" if same else PRUNE_BUG)  # fmt: skip
        nodes_of = [sorted({n.split("->")[0] for n in s} | {n.split("->")[1].split("<")[0] for n in s} - {"logits"})
                    for s in c["read"]]  # fmt: skip
        t.exact(f"{q}: nodes marked in_graph = nodes its edges touch", c["read_nodes"], nodes_of,
                describe=lambda v: ",".join(str(len(x)) for x in v))  # fmt: skip


def fmt_counts(v: list[float]) -> str:
    return ",".join(f"{c:g}" for c in v)


def tie_indices(scores: dict[str, float] | None, absolute: bool, requested: list[int]) -> list[int]:
    """The points whose top-n cut falls between edges of equal ranking score."""
    if not scores:
        return []
    keys = sorted((abs(v) if absolute else v for v in scores.values()), reverse=True)
    return [i for i, n in enumerate(requested) if 0 < n < len(keys) and keys[n - 1] == keys[n]]


def read_graph_scores(ref: dict, method: str) -> dict[str, float] | None:
    path = Path(ref["workdir"]) / f"ref_importances_{method}.json"
    if not path.exists():
        return None
    return {k: v["score"] for k, v in json.loads(path.read_text())["edges"].items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mib-ref", default=os.environ.get("MIB_REF"),
                   help="folder holding EAP-IG/ and MIB-circuit-track/ checkouts (or $MIB_REF)")  # fmt: skip
    p.add_argument("--mib-python", default=str(ROOT / ".venv-mib" / "bin" / "python"))
    p.add_argument("--ew-python", default=sys.executable)
    p.add_argument("--kind", default=None, choices=["hooked", "bridge"],
                   help="edgewise's model kind (default: hooked where TransformerLens has it)")  # fmt: skip
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    p.add_argument("--lengths", default="mixed", choices=["mixed", "equal"],
                   help="mixed: prompts of two lengths in each batch (MIB pads them right)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--ig-steps", type=int, default=5)
    p.add_argument("--workdir", type=Path, default=HERE / "results" / "mib")
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--compare-only", action="store_true",
                   help="compare the JSON documents already in --workdir without running anything")  # fmt: skip
    args = p.parse_args()

    ref_dir = Path(args.mib_ref) if args.mib_ref else None
    if ref_dir is None or not (ref_dir / "EAP-IG" / "src" / "eap" / "graph.py").is_file() \
            or not (ref_dir / "MIB-circuit-track" / "MIB_circuit_track" / "evaluation.py").is_file():  # fmt: skip
        print(f"edgewise: error: --mib-ref {ref_dir} must hold EAP-IG/src/eap and "
              "MIB-circuit-track/MIB_circuit_track checkouts (see parity/MIB.md)", file=sys.stderr)  # fmt: skip
        return 2
    if not Path(args.mib_python).is_file():
        print(f"edgewise: error: no reference interpreter {args.mib_python}; build .venv-mib "
              "with `make mib-parity MIB_REF=...` (parity/MIB.md)", file=sys.stderr)  # fmt: skip
        return 1
    work = args.workdir.resolve()
    secs = 0.0
    if not args.compare_only:
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        write_inputs(work, args.lengths)
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   HF_DATASETS_OFFLINE="1", TQDM_DISABLE="1", PYTHONWARNINGS="ignore",
                   OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # fmt: skip
        ref_env = dict(env, PYTHONPATH=os.pathsep.join(
            [str(ref_dir / "EAP-IG" / "src"), str(ref_dir / "MIB-circuit-track")]))  # fmt: skip
        ew_env = dict(env, PYTHONPATH=str(ROOT / "src"))
        common = ["--dtype", args.dtype, "--batch-size", str(args.batch_size)]
        side = str(HERE / "mib")
        secs += run_side([args.mib_python, f"{side}/ref_side.py", "run", str(work), *common,
                          "--ig-steps", str(args.ig_steps)], ref_env, work / "ref.log", args.timeout)  # fmt: skip
        secs += run_side([args.ew_python, f"{side}/ew_side.py", str(work), *common]
                         + (["--kind", args.kind] if args.kind else []), ew_env, work / "ew.log",
                         args.timeout)  # fmt: skip
        secs += run_side([args.mib_python, f"{side}/ref_side.py", "read", str(work)], ref_env,
                         work / "ref_read.log", args.timeout)  # fmt: skip
    ref = json.loads((work / "ref.json").read_text()) | {"workdir": str(work)}
    ew = json.loads((work / "ew.json").read_text())
    read = json.loads((work / "ref_read.json").read_text())
    if ew["values"].get("scores/edge/EAP-IG-inputs") and args.ig_steps != 5:
        print("note: edgewise's registry default is 5 IG steps; --ig-steps changes only the reference")
    table = Table(TOLERANCES[args.dtype])
    compare(ref, ew, read, table)
    header = (f"MIB parity: {args.dtype}, lengths {args.lengths}, batch size {args.batch_size}, "
              f"{args.ig_steps} IG steps; edgewise {ew['values'].get('meta/kind')} "
              f"(TransformerLens {ew['values'].get('meta/transformer_lens')}); "
              f"reference {ref['values'].get('meta/eap_file')}; {secs:.0f} s")  # fmt: skip
    print(header)
    for note in ref["notes"] + ew["notes"]:
        print(f"  note: {note}")
    table.print()
    counts = {s: sum(r["status"] == s for r in table.rows) for s in
              ("PASS", "TIE", "KNOWN", "SKIP", "FAIL", "MISSING", "ERROR")}  # fmt: skip
    print("  ".join(f"{k} {v}" for k, v in counts.items()))
    (work / "results.md").write_text(f"{header}\n\n{table.markdown()}\n")
    return 1 if counts["FAIL"] or counts["MISSING"] or counts["ERROR"] else 0


if __name__ == "__main__":
    sys.exit(main())
