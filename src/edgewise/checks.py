"""Checks of user-given arguments that raise errors naming the argument and the fix.

Each check is cheap (no forward pass, no copy of a tensor) and runs once per call of a
public function, before any work is done.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch


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


def require_real(value: Any, name: str) -> float:
    """``value`` as a finite ``float``: a ``TypeError`` naming ``name`` for a non-number,
    a ``ValueError`` for NaN or infinity."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


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
