"""Plumbing shared by the two sides of the MIB parity harness (standard library only:
the reference side runs in its own environment without edgewise).

Each side writes one JSON document ``{"side", "notes", "values": {key: value}}``. A step
that raises is recorded as ``{"error": "Type: message", "where": "file:line"}`` under
its key, and the side carries on with the next step.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[2]
TOY_DIR = ROOT / "src" / "edgewise" / "weights" / "toy_ioi"

TASK, MODEL_NAME = "ioi", "gpt2"  # the toy model is GPT-2 shaped: MIB's ioi_gpt2 folder
PERCENTAGES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
EDGE_METHODS = ("EAP", "EAP-IG-inputs", "EAP-IG-activations", "clean-corrupted")
NODE_METHODS = ("EAP", "EAP-IG-inputs", "EAP-IG-activations")
LEVELS = ("node", "neuron")
EVAL_METHOD = "EAP-IG-inputs"  # whose scores the node/neuron evaluations use


class Side:
    """Collects one side's values; :meth:`step` runs a function and stores its result
    (or its exception) under a key."""

    def __init__(self, side: str):
        self.doc: dict[str, Any] = {"side": side, "notes": [], "values": {}}
        self.t0 = time.time()

    def note(self, text: str) -> None:
        self.doc["notes"].append(text)

    def put(self, key: str, value: Any) -> None:
        self.doc["values"][key] = value

    def step(self, key: str, fn: Callable[[], Any]) -> Any:
        try:
            value = fn()
        except Exception as e:  # recorded, so the other steps still run
            tb = traceback.extract_tb(e.__traceback__)
            here = str(Path(__file__).resolve().parent)
            call = next((f"{Path(f.filename).name}:{f.lineno}" for f in reversed(tb)
                         if f.filename.startswith(here)), "")  # fmt: skip
            where = f"{call}, raised at {Path(tb[-1].filename).name}:{tb[-1].lineno}"
            self.put(key, {"error": f"{type(e).__name__}: {e}"[:600], "where": where})
            print(f"[{self.doc['side']}] {key}: {type(e).__name__}: {e}"[:400], file=sys.stderr)
            return None
        self.put(key, value)
        return value

    def write(self, path: Path) -> None:
        self.doc["seconds"] = round(time.time() - self.t0, 1)
        path.write_text(json.dumps(self.doc, indent=1, allow_nan=True))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
