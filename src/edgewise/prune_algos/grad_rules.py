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

On a ``TransformerBridge`` only ``"attention_pattern"`` is available (see
:func:`gradient_rules`). Not confirmed against a MIB leaderboard entry's code: RelP's full rule set (e.g. its rules
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

    ``"norm_scale"`` raises ``NotImplementedError`` on a ``TransformerBridge``: a detached
    ``hook_scale`` does not give the frozen-scale gradient through the blocks' norms there
    (checked against a hand-written forward on a GPT-2 bridge, TransformerLens 3.9; on a
    Llama bridge the final norm then passes no gradient at all). ``"attention_pattern"``
    works on both kinds."""
    rules = check_grad_rules(grad_rules)
    if not rules:
        yield model
        return
    adapter = model.adapter
    if "norm_scale" in rules and not adapter.is_hooked_transformer:
        raise NotImplementedError(
            "the gradient rule 'norm_scale' is implemented for HookedTransformer only: "
            f"{type(model.wrapped_model).__name__} (a TransformerBridge) does not carry a "
            "detached norm scale into the backward pass as TransformerLens does. Use a "
            "HookedTransformer (TransformerLens 3.x), or only grad_rules=('attention_pattern',)."
        )
    inner = model.wrapped_model
    with ExitStack() as stack:
        stack.enter_context(adapter.flags(**model.graph_flags))
        view = PatchableModel(
            inner, model.graph, adapter, model.out_slice, model.device,
            src_hooks(inner, adapter, model.graph, from_z=False),
            dest_hooks(inner, adapter, model.graph, projected=False),
        )  # fmt: skip
        stack.enter_context(view.hooks([(p, _detach) for p in grad_rule_points(view, rules)]))
        yield view
