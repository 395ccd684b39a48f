"""Checks of user-given arguments that raise errors naming the argument and the fix.

Each check is cheap (no forward pass, no copy of a tensor) and runs once per call of a
public function, before any work is done.
"""

from __future__ import annotations

import argparse
import math
import numbers
import warnings
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def require_int(value: Any, name: str, minimum: int | None = None) -> int:
    """``value`` as an ``int``: a ``TypeError`` naming ``name`` for anything that is not
    a whole number (``2.5``, ``"3"``, ``True``), a ``ValueError`` below ``minimum``.
    An integral float such as ``10.0`` is accepted."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if not isinstance(value, numbers.Integral):
        if not (math.isfinite(value) and float(value).is_integer()):
            raise TypeError(f"{name} must be a whole number (an int), got {value!r}")
        value = int(value)
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def require_real(
    value: Any,
    name: str,
    low: float | None = None,
    high: float | None = None,
    *,
    open_low: bool = False,
    open_high: bool = False,
    meaning: str = "",
) -> float:
    """``value`` as a finite ``float``: a ``TypeError`` naming ``name`` for a non-number,
    a ``ValueError`` for NaN or infinity, or a value outside ``[low, high]`` (an open
    end with ``open_low`` / ``open_high``); ``meaning`` (e.g. ``"0: clean, 1: ablated"``)
    is added to the range error."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    below = low is not None and (value <= low if open_low else value < low)
    above = high is not None and (value >= high if open_high else value > high)
    if below or above:
        lo = "(-inf" if low is None else f"{'(' if open_low else '['}{low:g}"
        hi = "inf)" if high is None else f"{high:g}{')' if open_high else ']'}"
        why = f" ({meaning})" if meaning else ""
        raise ValueError(f"{name} must be in {lo}, {hi}{why}, got {value:g}")
    return value


def require_device(device: Any, name: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` that exists here: a ``ValueError`` naming it when
    it is not a device name, or when this machine or this torch build lacks it (for
    example ``"cuda"`` without a GPU). Allocates an empty tensor there to find out."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"{name}={device!r} is not a device: {err}; use e.g. 'cpu', 'cuda' or 'cuda:0'"
        ) from None
    try:
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError) as err:
        gpu = "a GPU is available" if torch.cuda.is_available() else "no GPU is available"
        raise ValueError(
            f"{name}={device!r} is not available on this machine ({gpu}; torch says: "
            f"{str(err).strip()}); use {name}='cpu' or a device that exists here"
        ) from None
    return dev


_warned_train_mode: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def _active_dropout(modules: Iterable[nn.Module]) -> bool:
    """Whether any of ``modules`` drops out at random: a dropout layer with ``p > 0``,
    or an attention module with a positive ``*dropout*`` rate it passes to its kernel."""
    for m in modules:
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            return True
        if any("dropout" in k and isinstance(v, float) and v > 0 for k, v in vars(m).items()):
            return True
    return False


def _all_modules(module: nn.Module) -> list[nn.Module]:
    """``module`` and every module below it, found through ``_modules`` and through
    module attributes (a bridge keeps its Hugging Face model as a plain attribute, and
    overrides ``modules()``), each once."""
    seen: dict[int, nn.Module] = {}
    stack = [module]
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen[id(m)] = m
        stack.extend(c for c in m._modules.values() if c is not None)
        stack.extend(v for v in vars(m).values() if isinstance(v, nn.Module))
    return list(seen.values())


@contextmanager
def eval_mode(model: Any, who: str) -> Iterator[None]:
    """Run ``model`` (a ``PatchableModel`` or any ``nn.Module``) in eval mode inside the
    block and give every submodule its own training flag back afterwards. When the model
    was training with dropout on, warn once per model: its scores would otherwise be
    random (a different result on every call)."""
    module = model if isinstance(model, nn.Module) else getattr(model, "wrapped_model", None)
    if not isinstance(module, nn.Module):
        yield
        return
    training = [m for m in _all_modules(module) if m.training]
    if not training:
        yield
        return
    user_model = getattr(model, "wrapped_model", module)
    if _active_dropout(training) and user_model not in _warned_train_mode:
        _warned_train_mode.add(user_model)
        warnings.warn(
            f"{who}: {type(user_model).__name__} is in training mode with dropout on, which "
            "would make every score and circuit output random. edgewise runs it in eval "
            "mode (dropout off) inside its scoring, evaluation and wrapping functions and "
            "restores training mode when each returns; call model.eval() first to silence "
            "this warning.",
            UserWarning,
            stacklevel=4,
        )
    for m in training:
        m.training = False
    try:
        yield
    finally:
        for m in training:
            m.training = True


def cli_int(minimum: int) -> Any:
    """An ``argparse`` ``type`` for a whole number ``>= minimum``: anything else (``0``
    batches, a negative length, ``2.5``, ``abc``) is refused while the arguments are
    parsed, before anything is loaded or created."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}, got {text!r}")
        return value

    parse.__name__ = f"int >= {minimum}"
    return parse

