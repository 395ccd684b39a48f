"""Where a saved result came from, and the refusal to use it with anything else.

Every result ``edgewise discover`` saves (``scores_<algo>.safetensors``'s metadata,
``results.json``'s ``settings``, the resume state in ``checkpoints/``, the
``"edgewise"`` key of ``circuit_<algo>_mib.json``) records what produced it:

=========================== ==========================================================
``model``                   the name or (absolute) path it was loaded by
``model_kind``              the TransformerLens class: ``HookedTransformer`` or
                            ``TransformerBridge``
``weights_sha256``          :func:`weights_sha256`: a hash of every parameter's bytes
``task``, ``data_sha256``   the task, and a hash of every prompt's tokens and answers
``batch_size``, ``seq_len`` how the prompts were batched; token positions (or ``None``)
``graph_sha256``            a hash of the edge list (names and positions, in order)
``algorithm``,              the scoring algorithm and every argument that can change
``parameters``              its result (scores files; ``results.json`` per algorithm)
``edgewise_version``,       the library versions that computed it
``transformer_lens_version``
=========================== ==========================================================

Reading a result back for further work compares these fields with what is at hand
(:func:`check_provenance`) and raises :class:`ProvenanceError`, naming the file, the
first field that differs, both values and the fix. Where each check happens:

- ``edgewise evaluate``: every field of ``results.json`` and of each scores file,
  against the model, data and versions it loads now; ``edgewise report``: the folder's
  scores files against ``results.json`` (the same run?); ``edgewise discover``
  resuming: the saved state and scores against this run's settings.
- :func:`edgewise.io.files.load_prune_scores` and :func:`~edgewise.io.files.load_mib_json`
  given a model (and so ``edgewise mib evaluate`` / ``mib export``): the model's
  identity (``model_kind``, ``weights_sha256``). The task may differ there on purpose
  (MIB scores on its train split and evaluates on another).

Files without these fields (written by edgewise before it recorded them, or saved
without a model): the command line refuses them (``discover`` resuming, ``evaluate``),
saying to rerun ``edgewise discover --fresh``, since it would otherwise rewrite results
it cannot trace; ``edgewise report`` draws such a ``results.json`` with a warning (it
only shows what the file says); ``load_prune_scores(path, model)`` loads a scores file
without them with a :class:`ProvenanceWarning` (scores a user saved without a model carry
none); a MIB graph JSON without the ``"edgewise"`` key (MIB's own files, EAP-IG's) loads
silently.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

MODEL_FIELDS: tuple[str, ...] = ("model_kind", "weights_sha256")
"""What identifies a model: checked whenever saved scores meet a model."""

VERSION_FIELDS: tuple[str, ...] = ("edgewise_version", "transformer_lens_version")

RUN_FIELDS: tuple[str, ...] = (
    "model", "model_kind", "weights_sha256", "task", "batch_size", "seq_len", "data_sha256",
    "graph_sha256", "edgewise_version", "transformer_lens_version",
)  # fmt: skip
"""Everything a saved run records (``results.json``'s ``settings``), in the order a
difference is reported."""

_CACHE_ATTR = "_edgewise_weights_sha256"


class ProvenanceError(ValueError):
    """A saved result was produced by another model, data, settings or library version
    than the one it is used with. The message names the file, the field, both values
    and what to do."""


class DataChangedError(ProvenanceError):
    """Saved scores were computed on other prompts than the task gives now."""


class ProvenanceWarning(UserWarning):
    """A saved result records no provenance, so it cannot be checked against the model
    it is used with."""


def _inner(model: nn.Module) -> nn.Module:
    """The TransformerLens model: a ``PatchableModel``'s wrapped model, else ``model``."""
    return getattr(model, "wrapped_model", model)


def _tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    inner = _inner(model)
    return sorted(inner.named_parameters(), key=lambda kv: kv[0])


def _cache_key(params: list[tuple[str, torch.Tensor]]) -> tuple[Any, ...] | None:
    """What changes when a parameter does: its identity, storage, version counter (in-place
    updates such as an optimizer step bump it), dtype and shape; ``None`` if unreadable."""
    try:
        return tuple((n, id(p), p.data_ptr(), p._version, p.dtype, tuple(p.shape), str(p.device))
                     for n, p in params)  # fmt: skip
    except (RuntimeError, AttributeError):  # e.g. inference tensors have no version counter
        return None


def _sha256_of_tensor(p: torch.Tensor) -> str:
    """The sha256 of a tensor's bytes (row-major, on the CPU)."""
    with torch.no_grad():
        t = p.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous().reshape(-1)
        return hashlib.sha256(t.view(torch.uint8).numpy()).hexdigest()  # hashed in place


def weights_sha256(model: nn.Module) -> str:
    """A sha256 fingerprint of a model's parameters.

    Every parameter of the TransformerLens model (a :class:`~edgewise.PatchableModel`'s
    wrapped model), in name order, gives a line of its name, dtype, shape and the sha256
    of its bytes (row-major, on the CPU, one tensor at a time); the fingerprint is the
    sha256 of those lines. It is deterministic (same weights, same hex string, in every
    process, on every device) and changes when any parameter's value, dtype, shape or
    name does. Buffers (attention masks, rotary tables) follow from the config and are
    not hashed.

    The result is cached on the model until a parameter changes (in place or replaced),
    so a run computes it once. Cost: one sha256 pass over the parameters' bytes: 0.47 s
    for a model of GPT-2 small's shape (622 MiB of float32) on this project's 2-core CPU
    machine, 2 to 6 ms when cached (``bench/bench_weights_hash.py``); a model on a GPU
    adds one copy of each tensor to the CPU.

    Args:
        model: a ``HookedTransformer``, ``TransformerBridge`` or ``PatchableModel``.

    Returns:
        64 hex digits.
    """
    params = _tensors(model)
    key = _cache_key(params)
    cached = _inner(model).__dict__.get(_CACHE_ATTR)
    if key is not None and cached is not None and cached[0] == key:
        return str(cached[1])
    h = hashlib.sha256()
    for name, p in params:
        h.update(f"{name};{p.dtype};{tuple(p.shape)};{_sha256_of_tensor(p)}\n".encode())
    digest = h.hexdigest()
    if key is not None:
        _inner(model).__dict__[_CACHE_ATTR] = (key, digest)
    return digest


def model_kind(model: nn.Module) -> str:
    """The TransformerLens class of ``model`` (a ``PatchableModel``'s wrapped model):
    ``"HookedTransformer"`` or ``"TransformerBridge"``."""
    return type(_inner(model)).__name__


def library_versions() -> dict[str, str]:
    """``{"edgewise_version", "transformer_lens_version"}`` of this process."""
    from importlib import metadata

    from edgewise import __version__

    try:
        tl = metadata.version("transformer_lens")
    except metadata.PackageNotFoundError:
        tl = "unknown"
    return {"edgewise_version": __version__, "transformer_lens_version": tl}


def model_provenance(model: nn.Module) -> dict[str, str]:
    """The fields that identify ``model`` and the libraries running it:
    ``model_kind``, ``weights_sha256``, ``edgewise_version``, ``transformer_lens_version``."""
    return {"model_kind": model_kind(model), "weights_sha256": weights_sha256(model),
            **library_versions()}  # fmt: skip


@dataclass(frozen=True)
class Difference:
    """One recorded field that differs: its name, the saved value (``None``: not
    recorded) and the value now."""

    field: str
    saved: Any
    now: Any
    recorded: bool = True

    def describe(self, saved_as: str = "saved", now_as: str = "now") -> str:
        """``"weights_sha256: saved '1f2e…', now '9a0b…'"``."""
        was = _show(self.saved) if self.recorded else "nothing (not recorded)"
        return f"{self.field}: {saved_as} {was}, {now_as} {_show(self.now)}"


def _show(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return repr(value[:12] + "…")  # a sha256: its first 12 digits tell two apart
    text = repr(value)
    return text if len(text) <= 160 else text[:157] + "..."


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def differences(
    saved: Mapping[str, Any], now: Mapping[str, Any], fields: Iterable[str] | None = None
) -> list[Difference]:
    """The fields (default: every key of ``now``, in its order) whose saved value differs
    from ``now``'s; a field ``saved`` lacks counts as different (``recorded=False``)."""
    out = []
    for f in now if fields is None else fields:
        if f not in now:
            continue
        if f not in saved:
            out.append(Difference(f, None, now[f], recorded=False))
        elif not _same(saved[f], now[f]):
            out.append(Difference(f, saved[f], now[f]))
    return out


def mismatch_message(
    what: str, diffs: list[Difference], fix: str, saved_as: str = "saved", now_as: str = "now"
) -> str:
    """``"<what> ... <first difference> (also differ: a, b); <fix>"``: one line."""
    first = diffs[0]
    others = [d.field for d in diffs[1:]]
    also = f" (also different: {', '.join(others)})" if others else ""
    if not first.recorded:
        lead = (f"{what} records no {first.field} (written before edgewise recorded where "
                f"results come from, or saved without it); {now_as} {_show(first.now)}")  # fmt: skip
    else:
        lead = f"{what} was produced with other settings: {first.describe(saved_as, now_as)}"
    return f"{lead}{also}; {fix}"


def check_provenance(
    saved: Mapping[str, Any],
    now: Mapping[str, Any],
    what: str,
    fix: str,
    fields: Iterable[str] | None = None,
    error: type[ValueError] = ProvenanceError,
    saved_as: str = "saved",
    now_as: str = "now",
) -> None:
    """Raise ``error`` (default :class:`ProvenanceError`) when a field of ``now`` (or of
    ``fields``) has another value in ``saved`` or is missing there.

    Args:
        saved: the fields a file recorded.
        now: what is at hand: field -> value.
        what: the file, as the message starts (``"runs/ioi/scores_eap.safetensors"``).
        fix: what the user can do, appended to the message.
        fields: the fields to compare (default: every key of ``now``).
        error: the exception class raised.
        saved_as, now_as: how the message calls the two values (``"saved"``, ``"now"``).
    """
    diffs = differences(saved, now, fields)
    if diffs:
        raise error(mismatch_message(what, diffs, fix, saved_as, now_as))


def check_model_identity(saved: Mapping[str, Any], model: nn.Module, what: str) -> None:
    """Refuse (:class:`ProvenanceError`) saved scores whose ``model_kind`` or
    ``weights_sha256`` differ from ``model``'s; warn (:class:`ProvenanceWarning`) when
    they record neither, and accept them."""
    if not any(f in saved for f in MODEL_FIELDS):
        warnings.warn(f"{what} records no model identity (model_kind, weights_sha256): it "
                      "cannot be checked against this model; recompute it with edgewise "
                      "to have it checked", ProvenanceWarning, stacklevel=4)  # fmt: skip
        return
    now = {"model_kind": model_kind(model), "weights_sha256": weights_sha256(model)}
    check_provenance(saved, now, what,
                     "use the model these scores were computed on, or compute the scores "
                     "again on this model")  # fmt: skip


__all__ = [
    "MODEL_FIELDS", "RUN_FIELDS", "VERSION_FIELDS", "DataChangedError", "Difference",
    "ProvenanceError",
    "ProvenanceWarning", "check_model_identity", "check_provenance", "differences",
    "library_versions", "mismatch_message", "model_kind", "model_provenance",
    "weights_sha256",
]  # fmt: skip
