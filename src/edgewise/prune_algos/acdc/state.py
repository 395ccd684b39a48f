"""ACDC checkpoints: the search state after each destination, written atomically, and
its restoration (refused when the run's arguments, model or data differ)."""

from __future__ import annotations

import os
from typing import Any

import torch

from edgewise.io.files import FileFormatError, atomic_write
from edgewise.prune_algos.acdc.search import _Group

_CHECKPOINT_VERSION = 1


def _save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` atomically (:func:`edgewise.io.files.atomic_write`)."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _state(
    fingerprint: dict[str, Any], next_dest: int, groups: list[_Group], n_forwards: int
) -> dict[str, Any]:
    return {
        "fingerprint": fingerprint,
        "next_dest": next_dest,
        "n_forwards": n_forwards,
        "groups": [
            {
                "taus": list(g.taus),
                "prev": g.prev,
                "masks": {n: m.detach().bool().cpu() for n, m in g.masks.items()},
            }
            for g in groups
        ],
    }


def _restore(
    state: dict[str, Any],
    path: str,
    fingerprint: dict[str, Any],
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[int, list[_Group], int]:
    """The next destination, the groups and the forward count of a saved state; a state
    from other arguments raises ``ValueError``."""
    if not isinstance(state, dict):
        raise FileFormatError(f"the ACDC checkpoint {path} holds a {type(state).__name__}, not "
                              "edgewise's saved search; delete it (or pass --fresh) to start over")
    if state.get("fingerprint") != fingerprint:
        raise ValueError(
            f"the ACDC checkpoint {path} was written by a run with other arguments, model, data or "
            f"number of processes ({state.get('fingerprint')} != {fingerprint}); delete it or pass "
            "another path"
        )
    try:
        groups = [
            _Group(
                tuple(float(t) for t in g["taus"]),
                {n: m.to(device=device, dtype=dtype) for n, m in g["masks"].items()},
                float(g["prev"]),
            )
            for g in state["groups"]
        ]
        return int(state["next_dest"]), groups, int(state["n_forwards"])
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
        raise FileFormatError(f"the ACDC checkpoint {path} lacks part of the saved search "
                              f"({type(e).__name__}: {str(e)[:80]}); delete it (or pass --fresh) "
                              "to start over") from None
