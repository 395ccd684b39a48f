"""Gradient corrections for the gradient-based scores: parts of the model treated as
constants in the backward pass, while the forward pass is unchanged.

- ``"norm_scale"``: every LayerNorm / RMSNorm's scale ``sigma(x) = sqrt(mean(x^2) + eps)``
  (after centring, for LayerNorm) is detached, so the norm's backward is the linear map
  ``u -> gamma * u / sigma`` (centred for LayerNorm). This is the "LN-rule" of
  layer-wise relevance propagation for transformers (Ali et al. 2022, "XAI for
  Transformers"), one of the rules relevance patching (RelP, Jafari et al. 2025) builds on.
- ``"attention_pattern"``: every attention pattern ``softmax(QK^T / sqrt(d) + mask)`` is
  detached, so no gradient flows through the softmax into the queries and keys: the
  attention layer's backward is that of the linear map ``v -> pattern @ v`` (the
  "AH-rule" of the same paper). Query and key destinations then score 0.

The rules are applied as forward hooks at TransformerLens' ``hook_scale`` and
``attn.hook_pattern`` that return the detached tensor. Patching Q/K/V after the projection
(:mod:`edgewise.patching.sites`) computes ``ln1``'s backward by hand, so with a rule the
passes run on a view of the model that patches Q/K/V at TransformerLens' own per-head
input hooks, where ``ln1`` runs as TransformerLens computes it (slower, same forward).

On a ``TransformerBridge`` the norms are not all TransformerLens' own: the Hugging Face
model runs its norm modules (TransformerLens' per-head Q/K/V inputs call the raw ``ln1``),
and a detached ``hook_scale`` reaches only some of them. There ``"norm_scale"`` is a forward
hook on every norm, the bridge's and the raw module it wraps, that returns
``y.detach() + L(x - x.detach())``: the norm's own output ``y`` (the added term is exactly
zero), with the backward of ``L(u) = gamma * c(u) / sigma(x)``, ``c`` the centring for
LayerNorm and the identity for RMSNorm, ``gamma`` the gain (``1 + w`` where the model
stores an offset, as Gemma does) and ``sigma(x)`` detached. Not confirmed against a MIB leaderboard entry's code: RelP's full rule set (e.g. its rules
for the MLP nonlinearity and gated products) is not implemented here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, Literal

import torch
from torch import nn

from edgewise.patching.model import PatchableModel
from edgewise.patching.sites import dest_hooks, src_hooks

GradRule = Literal["norm_scale", "attention_pattern"]
GRAD_RULES: tuple[str, ...] = ("norm_scale", "attention_pattern")
_SUFFIX = {"norm_scale": "hook_scale", "attention_pattern": "attn.hook_pattern"}


def check_grad_rules(grad_rules: Iterable[str] | str | None) -> tuple[str, ...]:
    """The rules as a sorted tuple of unique names; a ``ValueError`` naming the allowed
    ones for anything else. A single string is one rule; ``None`` is none."""
    if grad_rules is None:
        return ()
    rules = (grad_rules,) if isinstance(grad_rules, str) else tuple(grad_rules)
    bad = [r for r in rules if r not in GRAD_RULES]
    if bad:
        raise ValueError(
            f"unknown gradient rule(s) {bad}: grad_rules takes any of {', '.join(GRAD_RULES)} "
            "(e.g. grad_rules=('norm_scale', 'attention_pattern'))"
        )
    return tuple(sorted(set(rules)))


def grad_rule_points(model: PatchableModel, grad_rules: Iterable[str]) -> list[str]:
    """The hook names the rules detach at: every ``...hook_scale`` of a norm (each
    block's norms and the final one) and/or every ``blocks.{l}.attn.hook_pattern``,
    one name per hook module (aliases dropped). Raises if a rule finds no hook."""
    points: list[str] = []
    for rule in check_grad_rules(grad_rules):
        seen: set[int] = set()
        found = []
        for name, module in model.adapter.hook_dict.items():
            if name.endswith(_SUFFIX[rule]) and id(module) not in seen:
                seen.add(id(module))
                found.append(name)
        if not found:
            raise ValueError(
                f"gradient rule {rule!r} needs hooks ending in {_SUFFIX[rule]!r}, and "
                f"{type(model.wrapped_model).__name__} has none"
                + (
                    " (a model without normalisation needs no norm_scale rule)"
                    if rule == "norm_scale"
                    else ""
                )
            )
        points += found
    return points


def _detach(_m: nn.Module, _i: Any, out: torch.Tensor) -> torch.Tensor:
    return out.detach()


@contextmanager
def gradient_rules(
    model: PatchableModel, grad_rules: Iterable[str] | str | None
) -> Iterator[PatchableModel]:
    """Within this context, the model to run gradient passes on: ``model`` itself without
    rules; with rules, a view of it (same graph, masks and weights) whose Q/K/V inputs are
    patched at TransformerLens' per-head hooks, with the rules' detaching hooks on.

    Both rules work on both model kinds; on a ``TransformerBridge`` ``"norm_scale"`` hooks
    the norm modules themselves (:func:`bridge_norm_hooks`), as a detached ``hook_scale``
    does not reach the norms the Hugging Face model and the per-head Q/K/V inputs run."""
    rules = check_grad_rules(grad_rules)
    if not rules:
        yield model
        return
    adapter = model.adapter
    inner = model.wrapped_model
    on_modules = "norm_scale" in rules and not adapter.is_hooked_transformer
    hook_rules = tuple(r for r in rules if not (on_modules and r == "norm_scale"))
    with ExitStack() as stack:
        stack.enter_context(adapter.flags(**model.graph_flags))
        view = PatchableModel(
            inner, model.graph, adapter, model.out_slice, model.device,
            src_hooks(inner, adapter, model.graph, from_z=False),
            dest_hooks(inner, adapter, model.graph, projected=False),
        )  # fmt: skip
        if hook_rules:
            points = grad_rule_points(view, hook_rules)
            stack.enter_context(view.hooks([(p, _detach) for p in points]))
        if on_modules:
            for handle in bridge_norm_hooks(inner):
                stack.callback(handle.remove)
        yield view


def _norm_modules(model: nn.Module) -> list[tuple[str, nn.Module, nn.Module]]:
    """``(name, bridge norm, raw norm)`` for every TransformerLens normalisation bridge in
    ``model`` (a module with a ``hook_scale`` hook point wrapping a Hugging Face norm)."""
    found = []
    for name, module in model.named_modules():
        raw = getattr(module, "original_component", None)
        if isinstance(getattr(module, "hook_scale", None), nn.Module) and isinstance(raw, nn.Module):
            found.append((name, module, raw))
    return found


def _norm_convention(bridge: nn.Module, raw: nn.Module) -> tuple[bool, bool, float]:
    """``(centred, offset_gain, eps)`` of a bridge norm: LayerNorm centres, RMSNorm does
    not; an offset gain is ``1 + w`` (Gemma)."""
    rms = bool(getattr(bridge, "uses_rms_norm", "RMS" in type(raw).__name__))
    offset = getattr(bridge, "uses_weight_offset", None)
    if offset is None:  # TransformerLens 3.x bridges
        offset = rms and bool(getattr(getattr(bridge, "config", None), "rmsnorm_uses_offset", False))
    eps = getattr(raw, "eps", None)
    if eps is None:
        eps = getattr(raw, "variance_epsilon", None)
    if eps is None:
        eps = getattr(getattr(bridge, "config", None), "eps", 1e-5)
    return not rms, bool(offset), float(eps)


def bridge_norm_hooks(model: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
    """Forward hooks giving every norm of the ``TransformerBridge`` ``model`` the
    frozen-scale backward (``"norm_scale"``), both on the bridge's norm module and on the
    Hugging Face module it wraps (which TransformerLens' per-head Q/K/V inputs call
    directly); a norm's output ``[..., d_model]`` is unchanged. Returns the handles
    (remove them to undo). Raises ``ValueError`` for a model without norms."""
    norms = _norm_modules(model)
    if not norms:
        raise ValueError(
            f"gradient rule 'norm_scale' needs normalisation layers, and "
            f"{type(model).__name__} has none (a model without normalisation needs no "
            "norm_scale rule)"
        )
    handles = []
    for _name, bridge, raw in norms:
        centred, offset, eps = _norm_convention(bridge, raw)
        hook = _frozen_scale_hook(raw, centred, offset, eps)
        handles.append(bridge.register_forward_hook(hook))
        handles.append(raw.register_forward_hook(hook))
    return handles


def _frozen_scale_hook(raw: nn.Module, centred: bool, offset: bool, eps: float):
    def hook(_m: nn.Module, args: tuple, out: Any) -> Any:
        if not args or not isinstance(args[0], torch.Tensor) or not isinstance(out, torch.Tensor):
            return None
        x = args[0]
        if not (x.requires_grad and torch.is_grad_enabled()):
            return None
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
        c = xf - xf.mean(-1, keepdim=True) if centred else xf
        sigma = (c.detach().pow(2).mean(-1, keepdim=True) + eps).sqrt()
        u = xf - xf.detach()  # exactly zero, with the identity as its gradient
        du = (u - u.mean(-1, keepdim=True) if centred else u) / sigma
        weight = getattr(raw, "weight", None)
        if isinstance(weight, torch.Tensor):
            du = du * ((1.0 + weight) if offset else weight).to(du.dtype)
        return out.detach() + du.to(out.dtype)

    return hook
