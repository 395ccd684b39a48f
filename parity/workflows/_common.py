"""Shared plumbing for the parity workflows (not part of any workflow's body).

Each workflow script runs in one of two environments, chosen by ``LIB`` (environment
variable, or the script's first argument):

* ``LIB=auto_circuit``: the names come from auto-circuit 1.0.1's own modules (``.venv-ac``).
* ``LIB=edgewise``: the *same names* come from ``edgewise`` (``.venv``).

:func:`bind_names` performs the import block. A name that edgewise lacks becomes a
:class:`Missing` placeholder, so the step that uses it fails (and is recorded) while the
rest of the workflow still runs. A name found only in an edgewise submodule is bound but
noted, because ``from edgewise import NAME`` would fail for a user.

:class:`Recorder` collects named numbers and writes one JSON document to stdout between
two marker lines (``compare.py`` reads it).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS_DIR = ROOT / "src" / "edgewise" / "weights" / "toy_ioi"
DATASET_PATH = ROOT / "src" / "edgewise" / "datasets" / "toy_ioi.json"

LIB = os.environ.get("LIB") or (sys.argv[1] if len(sys.argv) > 1 else "auto_circuit")
if LIB not in ("auto_circuit", "edgewise"):
    raise SystemExit(f"LIB must be auto_circuit or edgewise, not {LIB!r}")

BEGIN, END = "=====PARITY-JSON-BEGIN=====", "=====PARITY-JSON-END====="

# edgewise submodules searched when a name is not exported by ``edgewise`` itself
_EDGEWISE_SUBMODULES = (
    "edgewise.compat", "edgewise.visualize", "edgewise.benchmarks.tasks", "edgewise.evaluation.circuits",
    "edgewise.patching.model", "edgewise.types", "edgewise.data", "edgewise.runtime.ablation",
    "edgewise.prune_algos", "edgewise.metrics.answers", "edgewise.metrics.faithfulness",
)


class MissingName(Exception):
    """A name the port needs is not importable from edgewise."""


class Missing:
    """Stands in for a name that could not be imported; fails when used."""

    def __init__(self, name: str, where: str):
        self._name, self._where = name, where

    def _fail(self, *_: Any, **__: Any) -> Any:
        raise MissingName(f"cannot import name {self._name!r} from {self._where!r}")

    __call__ = _fail

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            raise AttributeError(attr)
        self._fail()

    def __getitem__(self, key: Any) -> Any:
        self._fail()


class Recorder:
    def __init__(self, workflow: str):
        self.workflow = workflow
        self.out: dict[str, Any] = {
            "workflow": workflow, "lib": LIB, "numbers": {}, "texts": {}, "vectors": {},
            "errors": {}, "missing_names": [], "notes": [], "steps": {}, "versions": {},
        }
        for dist in ("torch", "transformer-lens", "auto-circuit", "edgewise"):
            with contextlib.suppress(Exception):
                import importlib.metadata as md

                self.out["versions"][dist] = md.version(dist)
        self.out["env"] = {"PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED")}

    # ---- values
    def num(self, key: str, value: Any) -> None:
        self.out["numbers"][key] = _to_float(value)

    def text(self, key: str, value: Any) -> None:
        self.out["texts"][key] = str(value)

    def vec(self, key: str, values: dict[str, Any]) -> None:
        self.out["vectors"][key] = {str(k): _to_float(v) for k, v in values.items()}

    def note(self, msg: str) -> None:
        self.out["notes"].append(msg)

    def measurements(self, key: str, points: Any) -> None:
        """auto-circuit ``Measurements``: a list of (edge count, value)."""
        pts = sorted((int(x), _to_float(y)) for x, y in points)
        self.vec(key, {f"n={x}": y for x, y in pts})
        self.text(key + ".edge_counts", [x for x, _ in pts])

    def scores(self, key: str, model: Any, prune_scores: Any, top: int = 10) -> None:
        """Summary of a PruneScores dict, read edge by edge through each edge's
        ``dest.module_name`` and ``patch_idx`` (both libraries' Edge fields)."""
        per_edge = {}
        for e in model.edges:
            name = e.name if getattr(e, "seq_idx", None) is None else f"{e.name}@{e.seq_idx}"
            per_edge[name] = float(prune_scores[e.dest.module_name][e.patch_idx])
        vals = list(per_edge.values())
        self.num(key + ".n_edges", len(vals))
        self.num(key + ".sum", math.fsum(vals))
        self.num(key + ".abs_sum", math.fsum(abs(v) for v in vals))
        self.num(key + ".max", max(vals))
        self.num(key + ".min", min(vals))
        self.num(key + ".n_nonzero", sum(v != 0 for v in vals))
        ranked = sorted(per_edge.items(), key=lambda kv: (-abs(kv[1]), kv[0]))[:top]
        self.text(key + ".top10_names", [k for k, _ in ranked])
        self.vec(key + ".top10", dict(ranked))
        self.vec(key + ".all_edges", per_edge)

    # ---- steps
    @contextlib.contextmanager
    def step(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
            self.out["steps"][name] = "ok"
        except Exception as exc:  # recorded, never fatal
            tb = traceback.extract_tb(exc.__traceback__)
            here = [f for f in tb if "parity/workflows" in f.filename]
            where = here[-1] if here else tb[-1]
            self.out["steps"][name] = "error"
            self.out["errors"][name] = {
                "type": type(exc).__name__,
                "message": str(exc)[:600],
                "call": (where.line or "").strip(),
                "line": where.lineno,
                "deepest": f"{Path(tb[-1].filename).name}:{tb[-1].lineno}",
            }
        finally:
            self.out.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 3)

    def dump(self) -> None:
        sys.stdout.write("\n" + BEGIN + "\n" + json.dumps(self.out, indent=1) + "\n" + END + "\n")
        sys.stdout.flush()


def _to_float(v: Any) -> float | None:
    if v is None:
        return None
    if hasattr(v, "item"):
        v = v.item()
    return float(v)


def bind_names(ac_imports: dict[str, list[str]], rec: Recorder, namespace: dict) -> None:
    """The import block. ``ac_imports`` maps an auto-circuit module to the names a notebook
    imports from it. Under ``LIB=auto_circuit`` they are imported from those modules;
    under ``LIB=edgewise`` every one of the same names is imported ``from edgewise``."""
    names = [n for ns in ac_imports.values() for n in ns]
    if LIB == "auto_circuit":
        _ac_float64_shim(rec)
        for mod, ns in ac_imports.items():
            m = importlib.import_module(mod)
            for n in ns:
                namespace[n] = getattr(m, n)
        return
    ew = importlib.import_module("edgewise")
    for n in names:
        if hasattr(ew, n):
            namespace[n] = getattr(ew, n)
            continue
        found = None
        for sub in _EDGEWISE_SUBMODULES:
            with contextlib.suppress(Exception):
                m = importlib.import_module(sub)
                if hasattr(m, n):
                    found = (sub, getattr(m, n))
                    break
        if found:
            namespace[n] = found[1]
            rec.out["missing_names"].append(
                {"name": n, "kind": "not exported by edgewise (found in " + found[0] + ")"})
        else:
            namespace[n] = Missing(n, "edgewise")
            rec.out["missing_names"].append({"name": n, "kind": "not in edgewise"})


def toy_model() -> Any:
    """The shipped toy-IOI HookedTransformer in float64, configured the way auto-circuit's
    ``load_tl_model`` leaves a model (split QKV inputs, attention results, MLP-in hooks,
    eval mode, frozen weights). Stands in for ``load_tl_model("gpt2", device)``, which
    would download weights. Built the same way under TransformerLens 2.x and 3.9."""
    import torch
    import transformer_lens as tl
    from safetensors.torch import load_file

    fields = json.loads((WEIGHTS_DIR / "config.json").read_text())
    fields["dtype"] = torch.float64
    model = tl.HookedTransformer(tl.HookedTransformerConfig(**fields))
    state = {k: v.to(torch.float64) for k, v in load_file(str(WEIGHTS_DIR / "model.safetensors")).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.endswith(("IGNORE", ".mask"))]
    if bad or unexpected:
        raise RuntimeError(f"weights do not match the config: missing {bad}, unexpected {unexpected}")
    model.cfg.use_attn_result = True
    model.cfg.use_attn_in = True
    model.cfg.use_split_qkv_input = True
    model.cfg.use_hook_mlp_in = True
    model.eval()
    for p in model.parameters():
        p.requires_grad = False
    return model


_SHIMMED = False


def _ac_float64_shim(rec: Recorder) -> None:
    """auto-circuit 1.0.1's ``run_circuits`` writes its 0/1 masks with ``.float()``
    (``auto_circuit/prune.py``, the EDGE_PATCH and TREE_PATCH branches), so a float64 model
    fails with "expected scalar type Double but found Float". The harness casts a
    destination's mask to the dtype of the activations it multiplies, just before use.
    The masks there are exactly 0 or 1, so no value changes. Nothing else is altered."""
    global _SHIMMED
    rec.note("auto_circuit: float64 shim on PatchWrapperImpl.forward (run_circuits writes float32 masks)")
    if _SHIMMED:
        return
    import torch
    from auto_circuit.utils.patch_wrapper import PatchWrapperImpl

    original = PatchWrapperImpl.forward

    def forward(self, *args, **kwargs):
        mask = getattr(self, "patch_mask", None)
        if getattr(self, "is_dest", False) and mask is not None and args and hasattr(args[0], "dtype"):
            if mask.dtype != args[0].dtype and args[0].is_floating_point():
                # outside inference mode: a mask made in run_circuits' inference pass would
                # otherwise be an inference tensor, which later mask training cannot use
                with torch.inference_mode(False):
                    mask.data = mask.data.to(args[0].dtype)
        return original(self, *args, **kwargs)

    PatchWrapperImpl.forward = forward
    # subnetwork_probing_prune_scores calls t.optim.adam.Adam; torch 2.13's torch.optim
    # deletes its submodule attributes after importing them, so that lookup fails.
    import importlib as _il

    if not hasattr(torch.optim, "adam"):
        torch.optim.adam = _il.import_module("torch.optim.adam")
        rec.note("auto_circuit: set torch.optim.adam (t.optim.adam.Adam fails on torch 2.13)")
    _SHIMMED = True
