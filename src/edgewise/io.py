"""Saved results: prune scores as safetensors with JSON metadata, and circuits in the
MIB / EAP-IG graph JSON format. Every write is atomic: a temporary file in the same
folder, then ``os.replace``, so a crash never leaves a half-written file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from edgewise.types import Edge, PruneScores

if TYPE_CHECKING:
    from edgewise.patching import PatchableModel

FORMAT_VERSION = 1


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)``, then move the file to ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # on disk before it takes the final name
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def save_prune_scores(
    path: str | os.PathLike,
    prune_scores: PruneScores,
    model: PatchableModel | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write scores to a safetensors file. The header holds ``metadata`` (model, task,
    algorithm, parameters, ...) as JSON, the library version and, when ``model`` is
    given, every edge's name and position in ``model.edges`` order."""
    from safetensors.torch import save_file

    from edgewise import __version__

    meta: dict[str, Any] = {"format": FORMAT_VERSION, "edgewise_version": __version__}
    meta.update(metadata or {})
    if model is not None:
        meta["edges"] = [[e.name, e.seq_idx] for e in model.edges]
        meta["seq_len"] = model.seq_len
    tensors = {name: t.detach().cpu().contiguous() for name, t in prune_scores.items()}
    header = {"edgewise": json.dumps(meta)}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def load_prune_scores(
    path: str | os.PathLike, model: PatchableModel | None = None
) -> tuple[PruneScores, dict[str, Any]]:
    """Read scores and their metadata. With ``model``, check they fit its graph."""
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="pt") as f:
        header = f.metadata() or {}
        scores = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    if "edgewise" not in header:
        raise ValueError(f"{path} is not an edgewise scores file (no 'edgewise' metadata)")
    meta = json.loads(header["edgewise"])
    if model is not None:
        saved = meta.get("edges")
        if saved is not None and saved != [[e.name, e.seq_idx] for e in model.edges]:
            raise ValueError(f"{path} was saved for a different graph than this model's")
        for name, mod in model.dest_modules.items():
            if name not in scores or tuple(scores[name].shape) != mod.mask_shape:
                raise ValueError(f"{path}: scores for {name} are missing or the wrong shape")
        scores = {name: t.to(model.device) for name, t in scores.items()}
    return scores, meta


# ---------------------------------------------------------------------- MIB / EAP-IG
def _mib_node(name: str) -> str:
    if name == "Resid Start":
        return "input"
    if name == "Resid End":
        return "logits"
    if name.startswith("MLP "):
        return f"m{name[4:]}"
    layer, head = name[1:].split(".")[:2]
    return f"a{layer}.h{head}"


def mib_edge_name(edge: Edge) -> str:
    """``"A0.1->A1.2.Q"`` -> ``"a0.h1->a1.h2<q>"`` (the EAP-IG / MIB spelling)."""
    qkv = f"<{edge.dest.qkv}>" if edge.dest.qkv else ""
    return f"{_mib_node(edge.src.name)}->{_mib_node(edge.dest.name)}{qkv}"


def _check_mib_compatible(model: PatchableModel) -> None:
    spec = model.adapter.spec
    problems = []
    if model.seq_len is not None:
        problems.append("token-position edges (build the model with seq_len=None)")
    if not (model.factorized and model.separate_qkv):
        problems.append("a graph other than the factorized one with separate Q/K/V")
    if spec.n_kv_heads != spec.n_heads:
        problems.append("grouped-query attention (K/V destinations per KV head)")
    if spec.attn_only:
        problems.append("an attention-only model (the format always has MLP nodes)")
    if problems:
        raise ValueError("the MIB / EAP-IG graph format cannot express " + "; ".join(problems))


def save_mib_json(
    path: str | os.PathLike,
    model: PatchableModel,
    prune_scores: PruneScores,
    circuit: Iterable[Edge] | None = None,
) -> Path:
    """Write scores (and which edges are in ``circuit``; default none) in the MIB /
    EAP-IG graph JSON format: ``{"cfg", "nodes": {name: {"in_graph"}}, "edges":
    {name: {"score", "in_graph"}}}``. A node is in the graph when an edge touches it."""
    _check_mib_compatible(model)
    inside = set(circuit or ())
    spec = model.adapter.spec
    edges = {}
    nodes = {_mib_node(s.name): False for s in model.srcs}
    nodes["logits"] = True
    for e in model.edges:
        score = float(prune_scores[e.dest.module_name][e.patch_idx])
        edges[mib_edge_name(e)] = {"score": score, "in_graph": e in inside}
        if e in inside:
            nodes[_mib_node(e.src.name)] = True
            nodes[_mib_node(e.dest.name)] = True
    doc = {
        "cfg": {
            "n_layers": spec.n_layers,
            "n_heads": spec.n_heads,
            "parallel_attn_mlp": spec.parallel_attn_mlp,
            "d_model": int(model.cfg.d_model),
        },
        "nodes": {name: {"in_graph": v} for name, v in nodes.items()},
        "edges": edges,
    }

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(doc, f)

    return atomic_write(path, write)


def load_mib_json(path: str | os.PathLike, model: PatchableModel) -> tuple[PruneScores, set[Edge]]:
    """Read a MIB / EAP-IG graph JSON: the scores and the edges marked ``in_graph``."""
    _check_mib_compatible(model)
    with open(path) as f:
        doc = json.load(f)
    if not {"cfg", "edges"} <= set(doc):
        raise ValueError(f"{path} lacks the 'cfg' and 'edges' keys of the MIB graph format")
    spec = model.adapter.spec
    if (doc["cfg"].get("n_layers"), doc["cfg"].get("n_heads")) != (spec.n_layers, spec.n_heads):
        raise ValueError(
            f"{path} is for {doc['cfg'].get('n_layers')} layers x {doc['cfg'].get('n_heads')} "
            f"heads, the model has {spec.n_layers} x {spec.n_heads}"
        )
    scores = {n: torch.zeros(m.mask_shape) for n, m in model.dest_modules.items()}
    circuit = set()
    by_name = {mib_edge_name(e): e for e in model.edges}
    unknown = sorted(set(doc["edges"]) - set(by_name))
    if unknown:
        raise ValueError(f"{path} has edges this graph lacks: {unknown[:3]}")
    for name, entry in doc["edges"].items():
        e = by_name[name]
        scores[e.dest.module_name][e.patch_idx] = float(entry.get("score", 0.0))
        if entry.get("in_graph"):
            circuit.add(e)
    return scores, circuit
