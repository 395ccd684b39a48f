"""Patching: where each source is read and each destination patched (``sites``), the
plan-and-run engine that patches every edge in one forward pass and gives every mask's
gradient in one backward pass (``engine``, ``autograd``, ``buffers``), and the
:class:`PatchableModel` that wraps a model with its graph (``model``)."""

from edgewise.patching.model import PatchableModel
from edgewise.patching.wrap import patchable_model

__all__ = ["PatchableModel", "patchable_model"]
