"""Saved results: prune scores as safetensors with JSON metadata, and circuits in the
MIB / EAP-IG graph JSON format.

Every write is atomic (:func:`atomic_write`): a temporary file in the same folder, then
``os.replace``, so a crash never leaves a half-written file; the file gets the mode a
plain ``open(path, "w")`` would give it. Every read names the file when it is not what it
should be: :class:`FileFormatError` (truncated, not JSON, wrong keys or types) and
:class:`ChecksumError` (a scores file changed after it was written)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import pickle
import re
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from edgewise.types import Edge, Node, PruneScores

if TYPE_CHECKING:
    from edgewise.patching.model import PatchableModel

FORMAT_VERSION = 2  # 2: the header holds a sha256 of the metadata and the tensors
TEMP_SUFFIX = ".edgewise-tmp"  # atomic_write's temporaries: ".<name>.<random>.edgewise-tmp"


class FileFormatError(ValueError):
    """A file (or document) is not what it should be: truncated, not valid JSON or
    safetensors, or missing keys. The message names the file and what to do."""


class ChecksumError(FileFormatError):
    """A scores file's bytes differ from those written: it was changed or damaged."""


class DiskFullError(OSError):
    """No space left on the device while writing a file (named in the message)."""

    def __str__(self) -> str:
        return str(self.strerror)


def is_edgewise_temporary(name: str) -> bool:
    """Whether ``name`` is a temporary file :func:`atomic_write` creates (and a killed
    process may leave behind); no other file has this pattern of name."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


_DEFERRED_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                          if hasattr(signal, name))


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP back while the block runs: a Python handler of
    theirs (Ctrl-C's ``KeyboardInterrupt``, the command line's) runs as the block ends.
    For short steps that must not be cut in half: creating a temporary file and noting
    its name, removing it, taking or releasing a lock. Python runs signal handlers only
    in the main thread, so elsewhere the block simply runs; a signal without a Python
    handler (the OS default: the process ends) is not held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    held: dict[int, Callable[..., Any]] = {}
    for s in _DEFERRED_SIGNALS:
        handler = signal.getsignal(s)
        if callable(handler):
            held[s] = handler
            signal.signal(s, lambda signum, _frame: pending.append(signum))
    try:
        yield
    finally:
        for s, handler in held.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(pending):
            held[s](s, None)  # e.g. raises KeyboardInterrupt, now that the step is whole


def _umask() -> int:
    """The process's umask, read without changing it where the OS allows."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (briefly process-wide)
    os.umask(mask)
    return mask


def _new_file_mode(path: Path) -> int:
    """The mode ``open(path, "w")`` leaves: an existing file keeps its own, a new one
    gets ``0o666 & ~umask``."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _is_disk_full(e: BaseException, folder: Path) -> bool:
    """Whether ``e``, raised while writing into ``folder``, means the disk is full."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    if "No space left on device" in text or "StorageFull" in text:  # safetensors, torch
        return True
    if type(e) is RuntimeError:  # torch.save says only "file write failed": look
        try:
            return shutil.disk_usage(folder).free < 2**20
        except OSError:
            return False
    return False


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)``, then move the file to ``path`` in one step.

    The temporary file (``.<name>.<random>.edgewise-tmp``, next to ``path``) is removed
    if anything fails, an interruption (Ctrl-C, SIGTERM) included: it is created and
    removed with signals deferred (:func:`signals_deferred`), so no signal falls between
    making it and knowing its name. The result has the mode ``open(path, "w")`` would give: an
    existing file's mode, else ``0o666`` less the umask. A full disk raises
    :class:`DiskFullError` naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _new_file_mode(path)
    tmp: str | None = None
    try:
        with signals_deferred():  # an interruption comes after ``tmp`` names the file
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                       suffix=TEMP_SUFFIX)
            os.close(fd)
        write(tmp)
        os.chmod(tmp, mode)  # mkstemp made it 0600
        with open(tmp, "rb+") as f:  # on disk before it takes the final name
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with signals_deferred(), contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        if isinstance(e, Exception) and _is_disk_full(e, path.parent):
            raise DiskFullError(
                errno.ENOSPC, f"no space left on the device while writing {path}: free some "
                "space (or write elsewhere), then run the same command again", str(path)
            ) from None
        raise
    return path


def read_json(path: str | os.PathLike, fix: str = "") -> Any:
    """``json.load`` of ``path``; a missing, unreadable, truncated or invalid file raises
    :class:`FileFormatError` (``FileNotFoundError`` when missing) naming ``path``, with
    ``fix`` (what the user can do) appended."""
    fix = f"; {fix}" if fix else ""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist{fix}") from None
    except UnicodeDecodeError as e:
        raise FileFormatError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}){fix}") from None
    if not text.strip():
        raise FileFormatError(f"{path} is empty (an interrupted copy?){fix}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise FileFormatError(f"{path} is not valid JSON ({e.msg} at line {e.lineno} column "
                              f"{e.colno}; truncated?){fix}") from None


def write_json(path: str | os.PathLike, doc: Any) -> Path:
    """Write ``doc`` as indented JSON to ``path`` with :func:`atomic_write`."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1)))


def pickled_global(err: BaseException) -> str | None:
    """The Python object (e.g. ``__main__.Config``) whose unpickling made
    ``torch.load(..., weights_only=True)`` raise ``err``; ``None`` when ``err`` says
    something else (a truncated or damaged file)."""
    if not isinstance(err, pickle.UnpicklingError) and "Weights only load failed" not in str(err):
        return None
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    return found.group(1) if found else None


def torch_file_error(path: str | os.PathLike, err: BaseException, fix: str) -> FileFormatError:
    """A one-line :class:`FileFormatError` for a torch file (``.pt``, ``.bin``) that
    ``torch.load(..., weights_only=True)`` refused with ``err``: either it pickles Python
    objects besides tensors (edgewise never unpickles those: unpickling can run any
    code), or it is truncated or damaged. The message names ``path`` and ``fix``, never
    torch's own advice to turn the safe loader off."""
    text = str(err)
    found = pickled_global(err)
    if found is not None:
        return FileFormatError(
            f"{path} holds pickled Python objects besides tensors (e.g. {found}), which "
            f"edgewise does not load: unpickling can run any code; {fix}")  # fmt: skip
    first = text.strip().splitlines()[0][:100] if text.strip() else type(err).__name__
    return FileFormatError(f"{path} cannot be read: it is truncated or damaged "
                           f"({type(err).__name__}: {first}); {fix}")  # fmt: skip


def load_checkpoint(path: str | os.PathLike, fix: str = "delete it to start over") -> Any:
    """``torch.load`` (``weights_only``) of a checkpoint; one that cannot be read raises
    :class:`FileFormatError` naming ``path`` and ``fix`` (:func:`torch_file_error`)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise torch_file_error(f"the checkpoint {path}", e, fix) from None


def _sha256_of_scores(meta_json: str, tensors: Mapping[str, torch.Tensor]) -> str:
    """A hash of the metadata text and every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256(meta_json.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous().reshape(-1)
        h.update(f"|{name};{t.dtype};{tuple(tensors[name].shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_prune_scores(
    path: str | os.PathLike,
    prune_scores: PruneScores,
    model: PatchableModel | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write scores to a safetensors file. The header holds ``metadata`` (model, task,
    algorithm, parameters, ...) as JSON, the library version, a sha256 of the metadata
    and tensors (checked on load) and, when ``model`` is given, every edge's name and
    position in ``model.edges`` order and the model's identity and library versions
    (:func:`edgewise.io.provenance.model_provenance`: ``model_kind``,
    ``weights_sha256``, ``transformer_lens_version``; ``metadata`` may give them)."""
    from safetensors.torch import save_file

    from edgewise import __version__

    meta: dict[str, Any] = {"format": FORMAT_VERSION, "edgewise_version": __version__}
    meta.update(metadata or {})
    if model is not None:
        meta["edges"] = [[e.name, e.seq_idx] for e in model.edges]
        meta["seq_len"] = model.seq_len
        _add_model_provenance(meta, model)
    tensors = {name: t.detach().cpu().contiguous() for name, t in prune_scores.items()}
    meta["sha256"] = _sha256_of_scores(json.dumps(meta), tensors)  # one header key: the
    header = {"edgewise": json.dumps(meta)}  # order of several is not fixed, bytes would vary
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def load_prune_scores(
    path: str | os.PathLike, model: PatchableModel | None = None
) -> tuple[PruneScores, dict[str, Any]]:
    """Read scores and their metadata. With ``model``, check they fit its graph and
    were computed on it.

    Raises :class:`FileFormatError` naming ``path`` when it is empty, truncated, not a
    safetensors file or not edgewise's, :class:`ChecksumError` when its bytes
    changed after it was written (files of format 1 carry no checksum), and
    :class:`edgewise.io.provenance.ProvenanceError` when the file records another
    model (its ``model_kind`` or ``weights_sha256`` differ from ``model``'s; a file that
    records neither loads with a :class:`~edgewise.io.provenance.ProvenanceWarning`)."""
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            header = f.metadata() or {}
            scores = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except FileNotFoundError:
        raise FileNotFoundError(f"no scores file {path}") from None
    except Exception as e:  # safetensors' own error type for every malformed file
        size = os.path.getsize(path) if os.path.exists(path) else 0
        what = "empty" if size == 0 else f"not a readable safetensors file ({size} bytes: {e})"
        raise FileFormatError(f"{path} is {what}; it was truncated or damaged after it was "
                              "written: recompute it (edgewise discover --fresh)") from None
    if "edgewise" not in header:
        raise FileFormatError(f"{path} is not an edgewise scores file (no 'edgewise' metadata)")
    damaged = (f"{path} was changed or damaged after it was written (its checksum does not "
               "match): recompute it (edgewise discover --fresh)")
    try:
        meta = json.loads(header["edgewise"])
    except json.JSONDecodeError:
        raise ChecksumError(damaged) from None
    if not isinstance(meta, dict):
        raise ChecksumError(damaged)
    saved_sha256 = meta.pop("sha256", None)
    if meta.get("format", 1) >= 2 and saved_sha256 != _sha256_of_scores(json.dumps(meta), scores):
        raise ChecksumError(damaged)
    if model is not None:
        saved = meta.get("edges")
        if saved is not None and saved != [[e.name, e.seq_idx] for e in model.edges]:
            raise ValueError(f"{path} was saved for a different graph than this model's")
        for name, mod in model.dest_modules.items():
            if name not in scores or tuple(scores[name].shape) != mod.mask_shape:
                raise ValueError(f"{path}: scores for {name} are missing or the wrong shape")
        _check_model_provenance(meta, model, path)
        scores = {name: t.to(model.device) for name, t in scores.items()}
    return scores, meta


# ---------------------------------------------------------- provenance (io/provenance.py)
def _add_model_provenance(meta: dict[str, Any], model: Any) -> None:
    """Record ``model``'s identity and the library versions in ``meta`` (keys it lacks)."""
    from edgewise.io.provenance import model_provenance

    for key, value in model_provenance(model).items():
        meta.setdefault(key, value)


def _check_model_provenance(meta: Mapping[str, Any], model: Any, path: Any) -> None:
    """Refuse scores recorded for another model than ``model`` (see io/provenance.py)."""
    from edgewise.io.provenance import check_model_identity

    check_model_identity(meta, model, str(path))


# ---------------------------------------------------------------------- MIB / EAP-IG
def _mib_node(node: Node) -> str:
    """MIB's name of a node: ``input``, ``logits``, ``a{block}.h{head}``, ``m{block}``."""
    if node.kind == "embed":
        return "input"
    if node.kind == "resid":
        return "logits"
    if node.kind == "mlp":
        return f"m{node.block}"
    return f"a{node.block}.h{node.head_idx}"


def mib_edge_name(edge: Edge) -> str:
    """``"A0.1->A1.2.Q"`` -> ``"a0.h1->a1.h2<q>"`` (the EAP-IG / MIB spelling)."""
    qkv = f"<{edge.dest.qkv}>" if edge.dest.qkv else ""
    return f"{_mib_node(edge.src)}->{_mib_node(edge.dest)}{qkv}"


def _check_mib_compatible(model: PatchableModel) -> None:
    spec = model.adapter.spec
    problems = []
    if model.seq_len is not None:
        problems.append("token-position edges (build the model with seq_len=None; on the "
                        "command line: edgewise discover --no-positions)")
    if not (model.factorized and model.separate_qkv):
        problems.append("a graph other than the factorized one with separate Q/K/V")
    if any(m.qkv in ("k", "v") and m.n_heads != spec.n_heads for m in model.dest_modules.values()):
        problems.append(
            "grouped-query attention with K/V destinations per key/value head (MIB gives each "
            "query head its own K/V input: wrap the model with "
            "patchable_model(model, ungroup_kv=True))"
        )
    if spec.attn_only:
        problems.append("an attention-only model (the format always has MLP nodes)")
    if problems:
        raise ValueError("the MIB / EAP-IG graph format cannot express " + "; ".join(problems))


def save_mib_json(
    path: str | os.PathLike,
    model: PatchableModel,
    prune_scores: PruneScores,
    circuit: Iterable[Edge] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write scores (and which edges are in ``circuit``; default none) in the MIB /
    EAP-IG graph JSON format: ``{"cfg", "nodes": {name: {"in_graph"}}, "edges":
    {name: {"score", "in_graph"}}}``. A node is in the graph when an edge touches it.

    ``provenance`` (what produced the scores, :mod:`edgewise.io.provenance`; the model's
    identity is added) goes under a top-level ``"edgewise"`` key. MIB's and EAP-IG's
    loaders (``Graph.from_json``; the leaderboard evaluator's ``load_graph_from_json``)
    read only ``cfg``, ``nodes`` and ``edges`` and ignore it; without ``provenance`` the
    file holds exactly those three keys (as MIB submission files do)."""
    _check_mib_compatible(model)
    inside = set(circuit or ())
    spec = model.adapter.spec
    edges = {}
    nodes = {_mib_node(s): False for s in model.srcs}
    nodes["logits"] = True
    for e in model.edges:
        score = float(prune_scores[e.dest.module_name][e.patch_idx])
        edges[mib_edge_name(e)] = {"score": score, "in_graph": e in inside}
        if e in inside:
            nodes[_mib_node(e.src)] = True
            nodes[_mib_node(e.dest)] = True
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
    if provenance is not None:
        doc["edgewise"] = dict(provenance)
        _add_model_provenance(doc["edgewise"], model)

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(doc, f)

    return atomic_write(path, write)


def load_mib_json(
    path: str | os.PathLike, model: PatchableModel, missing_score: float | None = None
) -> tuple[PruneScores, set[Edge]]:
    """Read a MIB / EAP-IG graph JSON: the scores and the edges marked ``in_graph``.

    Every edge of ``model``'s graph must be in the file with a number (``Infinity`` is
    allowed, ``NaN`` is not) as ``score``; pass ``missing_score`` to give absent edges
    that score instead (they are then not in the circuit). A file that breaks any of
    this raises :class:`FileFormatError` naming the file and the first bad edge. A file
    whose ``"edgewise"`` key (see :func:`save_mib_json`) records another model raises
    :class:`edgewise.io.provenance.ProvenanceError`; files without the key (MIB's,
    EAP-IG's) load unchecked."""
    _check_mib_compatible(model)
    doc = read_json(path)
    if not isinstance(doc, dict) or not {"cfg", "edges"} <= set(doc):
        raise FileFormatError(f"{path} lacks the 'cfg' and 'edges' keys of the MIB graph format")
    if "edgewise" in doc:
        from edgewise.io.schema import check_mib_provenance

        _check_model_provenance(check_mib_provenance(doc["edgewise"], path), model, path)
    cfg, entries = doc["cfg"], doc["edges"]
    if not isinstance(cfg, dict):
        raise FileFormatError(f"{path}: 'cfg' must be an object, got {type(cfg).__name__}")
    if not isinstance(entries, dict):
        raise FileFormatError(f"{path}: 'edges' must be an object mapping edge names to "
                              f'{{"score", "in_graph"}}, got {type(entries).__name__}')
    spec = model.adapter.spec
    if (cfg.get("n_layers"), cfg.get("n_heads")) != (spec.n_layers, spec.n_heads):
        raise FileFormatError(
            f"{path} is for {cfg.get('n_layers')} layers x {cfg.get('n_heads')} "
            f"heads, the model has {spec.n_layers} x {spec.n_heads}"
        )
    by_name = {mib_edge_name(e): e for e in model.edges}
    unknown = sorted(set(entries) - set(by_name))
    if unknown:
        raise FileFormatError(f"{path} has edges this graph lacks: {unknown[:3]}")
    absent = [name for name in by_name if name not in entries]
    if absent and missing_score is None:
        raise FileFormatError(
            f"{path} scores {len(entries)} of the graph's {len(by_name)} edges (missing e.g. "
            f"{absent[:3]}); pass missing_score=... to load_mib_json to score the rest"
        )
    scores = {n: torch.full(m.mask_shape, float(missing_score or 0.0))
              for n, m in model.dest_modules.items()}
    circuit = set()
    for name, entry in entries.items():
        score = entry.get("score") if isinstance(entry, dict) else None
        if isinstance(score, bool) or not isinstance(score, (int, float)) or math.isnan(score):
            raise FileFormatError(f'{path}: edge {name!r} needs {{"score": <number>}}, got '
                                  f"{entry!r} (NaN is not a score)")
        in_graph = entry.get("in_graph", False)
        if not isinstance(in_graph, bool):
            raise FileFormatError(f"{path}: edge {name!r} has in_graph {in_graph!r}, not "
                                  "true or false")
        e = by_name[name]
        scores[e.dest.module_name][e.patch_idx] = float(score)
        if in_graph:
            circuit.add(e)
    return scores, circuit
