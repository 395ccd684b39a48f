"""Run every parity workflow under auto-circuit 1.0.1 (.venv-ac) and under edgewise
(.venv), and compare their named numbers.

    python parity/compare.py [--ac-python P] [--ew-python P] [--only w1,w3] [--rtol 1e-6]

A number passes when |a - b| <= rtol * max(|a|, |b|) + atol (atol 1e-12: values that
are zero up to float64 rounding). Vectors (per-edge scores, metric curves) are compared
entry by entry and reported as one row with their largest difference; a vector whose
keys differ fails. Texts (edge names, edge counts, shapes) must be equal.

auto-circuit iterates some sets (ACDC's edges, subnetwork probing's masks), whose order
changes with PYTHONHASHSEED and from process to process. Workflow 2 is therefore run on
the auto-circuit side twice, under PYTHONHASHSEED 0 and 1; a row on which auto-circuit
disagrees with itself is marked ORDER (order-dependent, not a failure).

Results go to stdout and to parity/results/ (raw JSON per side, results.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKFLOWS = sorted(p.stem for p in (HERE / "workflows").glob("w*_*.py"))
BEGIN, END = "=====PARITY-JSON-BEGIN=====", "=====PARITY-JSON-END====="
ATOL = 1e-12


def run(python: str, lib: str, wf: str, seed: str, outdir: Path, timeout: int) -> dict:
    env = dict(os.environ, LIB=lib, PYTHONHASHSEED=seed, HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", TQDM_DISABLE="1",
               PYTHONWARNINGS="ignore")
    # the toy model gains nothing from threads, and they crawl on a shared 2-core machine
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    t0 = time.time()
    try:
        p = subprocess.run([python, str(HERE / "workflows" / f"{wf}.py")], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=timeout)
        stdout, stderr, rc = p.stdout, p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        stdout, stderr, rc = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "timeout", -9
    (outdir / f"{wf}.{lib}.seed{seed}.log").write_text(stderr[-20000:])
    if BEGIN not in stdout:
        return {"crashed": True, "rc": rc, "tail": stderr[-1500:], "seconds": time.time() - t0}
    data = json.loads(stdout.split(BEGIN, 1)[1].split(END, 1)[0])
    data["wall_seconds"] = round(time.time() - t0, 1)
    (outdir / f"{wf}.{lib}.seed{seed}.json").write_text(json.dumps(data, indent=1))
    return data


def rel(a: float | None, b: float | None) -> tuple[bool, float]:
    if a is None or b is None:
        return a is b, 0.0 if a is b else float("inf")
    if a == b:  # includes equal infinities
        return True, 0.0
    d = abs(a - b)
    scale = max(abs(a), abs(b))
    r = d / scale if scale else float("inf")
    return d <= RTOL * scale + ATOL, r


def compare(ac: dict, ew: dict, ac2: dict | None) -> list[dict]:
    rows = []
    for kind in ("numbers", "vectors", "texts"):
        keys = sorted(set(ac.get(kind, {})) | set(ew.get(kind, {})))
        for k in keys:
            a, b = ac.get(kind, {}).get(k, "<absent>"), ew.get(kind, {}).get(k, "<absent>")
            row = {"kind": kind, "key": k}
            if a == "<absent>" or b == "<absent>":
                row.update(status="MISSING-" + ("AC" if a == "<absent>" else "EW"),
                           ac=_short(a), ew=_short(b), rel=None)
            elif kind == "numbers":
                ok, r = rel(a, b)
                row.update(status="pass" if ok else "FAIL", ac=a, ew=b, rel=r)
            elif kind == "texts":
                row.update(status="pass" if a == b else "FAIL", ac=_short(a), ew=_short(b), rel=None)
            else:
                if set(a) != set(b):
                    only_a, only_b = sorted(set(a) - set(b))[:3], sorted(set(b) - set(a))[:3]
                    row.update(status="FAIL", ac=f"{len(a)} keys, only here {only_a}",
                               ew=f"{len(b)} keys, only here {only_b}", rel=None)
                else:
                    worst, worst_k, ok_all = 0.0, None, True
                    for kk in a:
                        ok, r = rel(a[kk], b[kk])
                        ok_all &= ok
                        if (not ok and (worst_k is None or r > worst)) or (ok_all and r > worst):
                            worst, worst_k = r, kk
                    row.update(status="pass" if ok_all else "FAIL", rel=worst,
                               ac=f"{len(a)} entries; worst {worst_k}: {a.get(worst_k)}",
                               ew=f"{b.get(worst_k)}")
            if ac2 is not None and k in ac2.get(kind, {}):
                a2 = ac2.get(kind, {}).get(k)
                if a2 != a:
                    row["status"] = "ORDER" if row["status"] != "pass" else "pass(order-dep)"
                    row["note"] = "auto-circuit differs between its own two runs"
            rows.append(row)
    return rows


def _short(x, n=160) -> str:
    s = str(x)
    return s if len(s) <= n else s[: n - 3] + "..."


def main() -> int:
    global RTOL
    ap = argparse.ArgumentParser()
    ap.add_argument("--ac-python", default=str(ROOT / ".venv-ac" / "bin" / "python"))
    ap.add_argument("--ew-python", default=str(ROOT / ".venv" / "bin" / "python"))
    ap.add_argument("--only", default="")
    ap.add_argument("--rtol", type=float, default=1e-6)
    ap.add_argument("--timeout", type=int, default=900)
    args = ap.parse_args()
    RTOL = args.rtol
    outdir = HERE / "results"
    outdir.mkdir(exist_ok=True)
    wfs = [w for w in WORKFLOWS if not args.only or any(w.startswith(o) for o in args.only.split(","))]

    md = ["# Parity results", "", f"rtol {RTOL:g}, atol {ATOL:g}; float64 toy-IOI model.", ""]
    summary = []
    for wf in wfs:
        print(f"== {wf}", flush=True)
        ac = run(args.ac_python, "auto_circuit", wf, "0", outdir, args.timeout)
        ew = run(args.ew_python, "edgewise", wf, "0", outdir, args.timeout)
        ac2 = run(args.ac_python, "auto_circuit", wf, "1", outdir, args.timeout) if wf.startswith("w2") else None
        md += [f"## {wf}", ""]
        if ac.get("crashed") or ew.get("crashed"):
            for side, d in (("auto_circuit", ac), ("edgewise", ew)):
                if d.get("crashed"):
                    msg = f"{side} crashed (rc {d['rc']}): {d['tail'][-600:]}"
                    print("  " + msg)
                    md += ["```", msg, "```", ""]
            summary.append((wf, 0, 0, 0, "crashed"))
            continue
        rows = compare(ac, ew, ac2)
        n_pass = sum(r["status"].startswith("pass") for r in rows)
        n_fail = sum(r["status"] in ("FAIL",) or r["status"].startswith("MISSING") for r in rows)
        n_order = sum(r["status"] == "ORDER" for r in rows)
        summary.append((wf, n_pass, n_fail, n_order, ""))
        md += ["| status | kind | name | auto-circuit | edgewise | rel. diff |", "|---|---|---|---|---|---|"]
        for r in rows:
            rd = "" if r["rel"] is None else f"{r['rel']:.2e}"
            line = f"  {r['status']:<15} {r['kind'][:3]} {r['key']:<70} ac={_short(r['ac'], 70)} ew={_short(r['ew'], 70)} rel={rd}"
            if not r["status"].startswith("pass"):
                print(line)
            md.append(f"| {r['status']} | {r['kind']} | {_md(r['key'])} | {_md(_short(r['ac'], 90))} | "
                      f"{_md(_short(r['ew'], 90))} | {rd} |")
        md.append("")
        for side, d in (("auto_circuit", ac), ("edgewise", ew)):
            for step, err in d.get("errors", {}).items():
                line = f"{side} step '{step}': {err['type']}: {_short(err['message'], 200)} [call: {err['call']}] ({err['deepest']})"
                print("  ERROR " + line)
                md.append(f"- ERROR {_md(line)}")
            for m in d.get("missing_names", []):
                line = f"{side}: name {m['name']}: {m['kind']}"
                print("  NAME  " + line)
                md.append(f"- NAME {_md(line)}")
            for n in d.get("notes", []):
                md.append(f"- note ({side}): {_md(n)}")
        md.append("")
        print(f"  -> {n_pass} pass, {n_fail} fail, {n_order} order-dependent "
              f"(ac {ac.get('wall_seconds')}s, ew {ew.get('wall_seconds')}s)", flush=True)
        vers = {"auto_circuit": ac.get("versions"), "edgewise": ew.get("versions")}
        md.insert(4, f"versions: `{json.dumps(vers)}`  ")
    md += ["## Summary", "", "| workflow | pass | fail | order-dependent | |", "|---|---|---|---|---|"]
    md += [f"| {w} | {p} | {f} | {o} | {c} |" for w, p, f, o, c in summary]
    (outdir / "results.md").write_text("\n".join(md) + "\n")
    print("\n== summary")
    for w, p, f, o, c in summary:
        print(f"  {w:<28} pass {p:>4}  fail {f:>4}  order {o:>3} {c}")
    print(f"(details: {outdir / 'results.md'})")
    return 0


def _md(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


RTOL = 1e-6
if __name__ == "__main__":
    sys.exit(main())
