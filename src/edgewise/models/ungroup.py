"""Grouped-query attention ungrouped on a ``TransformerBridge``: every query head gets its
own key and value input, as TransformerLens' ``ungroup_grouped_query_attention`` gives a
``HookedTransformer`` (and MIB loads its models).

With grouped-query attention, ``n_heads / n_kv_heads`` query heads share one key and one
value projection of the residual stream. Ungrouped, query head ``h`` reads the keys and
values of its own copy of the input through the projection of its key/value head
``h // groups`` (Hugging Face's ``repeat_kv`` order). Unpatched, the copies are equal and
the model computes what it computed grouped; patched, an edge into ``A{b}.{h}.K`` changes
the keys query head ``h`` attends with and no other head's.

A bridge's attention (TransformerLens 3.9 and 4.x alike) projects its ``hook_k_input``
copies head by head with the weight of its key LinearBridge, then repeats the key/value
heads ``num_key_value_groups`` times. Ungrouping therefore changes three things per
block, all undone by ``set_bridge_ungrouped_kv(model, False)``:

* the attention's config says ``n_key_value_heads = n_heads``, so ``hook_k_input`` /
  ``hook_v_input`` carry one copy per query head (and ``W_K``/``W_V`` read per query head);
* the key and value projections' ``weight`` and ``bias`` read as each key/value head's
  rows repeated ``groups`` times (:class:`RepeatedKVLinear`, computed from the unchanged
  parameters on every read: the state dict and parameters stay as they were, and
  gradients reach the real weights);
* the Hugging Face attention's ``num_key_value_groups`` is 1 (nothing left to repeat).

``set_bridge_ungrouped_kv`` checks on three tokens that the ungrouped model computes the
same logits as the grouped one, and undoes everything and raises if not.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

_STATE = "_edgewise_ungrouped_kv"
"""Attribute of an ungrouped attention bridge: what :func:`_restore` puts back."""


def repeat_kv_heads(w: torch.Tensor, groups: int, d_head: int) -> torch.Tensor:
    """A projection's ``weight`` ``[n_kv * d_head, d_model]`` (or ``bias``
    ``[n_kv * d_head]``) as ``[n_kv * groups * d_head, ...]``: each key/value head's
    ``d_head`` rows repeated ``groups`` times in place, so query head ``h`` gets key/value
    head ``h // groups`` (Hugging Face's ``repeat_kv`` order)."""
    return w.unflatten(0, (-1, d_head)).repeat_interleave(groups, 0).flatten(0, 1)


class RepeatedKVLinear(nn.Linear):
    """A key or value projection of an ungrouped attention (an ``nn.Linear`` whose class
    :func:`set_bridge_ungrouped_kv` swapped): ``weight`` and ``bias`` read as
    :func:`repeat_kv_heads` of the unchanged parameters, so its output has one head per
    query head. Its parameters, state dict and ``out_features`` stay the grouped ones."""

    _kv_groups: int
    _kv_d_head: int

    @property  # type: ignore[override]
    def weight(self) -> torch.Tensor:
        return repeat_kv_heads(self._parameters["weight"], self._kv_groups, self._kv_d_head)

    @property  # type: ignore[override]
    def bias(self) -> torch.Tensor | None:
        b = self._parameters.get("bias")
        return None if b is None else repeat_kv_heads(b, self._kv_groups, self._kv_d_head)


def _attention_blocks(model: nn.Module) -> list[tuple[int, nn.Module]]:
    return [(i, b.attn) for i, b in enumerate(getattr(model, "blocks", ())) if hasattr(b, "attn")]


def bridge_kv_ungrouped(model: nn.Module) -> bool:
    """Whether :func:`set_bridge_ungrouped_kv` has ungrouped ``model``'s attention."""
    return any(_STATE in vars(attn) for _, attn in _attention_blocks(model))


def _projection(attn: nn.Module, name: str) -> nn.Linear | None:
    """The plain ``nn.Linear`` behind the attention's ``k`` / ``v`` bridge (or the
    :class:`RepeatedKVLinear` it became), else None."""
    bridge = getattr(attn, "_modules", {}).get(name)
    lin = getattr(bridge, "original_component", None)
    return lin if type(lin) in (nn.Linear, RepeatedKVLinear) else None


def _plan(model: nn.Module, n_heads: int, n_kv: int) -> list[tuple[nn.Module, nn.Module, nn.Linear, nn.Linear, int]]:
    """Per block: the attention bridge, its Hugging Face attention, the key and value
    ``nn.Linear`` and ``d_head``; raise naming the first block that cannot be ungrouped."""
    groups = n_heads // n_kv
    plan = []
    blocks = _attention_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no blocks[i].attn to ungroup")
    for i, attn in blocks:
        hf = getattr(attn, "original_component", None)
        k, v = _projection(attn, "k"), _projection(attn, "v")
        d_head = getattr(hf, "head_dim", None)
        cfg = getattr(attn, "config", None)
        why = None
        if k is None or v is None:
            why = "its keys and values do not come from separate nn.Linear projections (k, v)"
        elif not isinstance(d_head, int) or k.out_features != n_kv * d_head or v.out_features != n_kv * d_head:
            why = (f"its key/value projections have {k.out_features}/{v.out_features} outputs, "
                   f"not n_key_value_heads * head_dim = {n_kv} * {d_head}")  # fmt: skip
        elif getattr(hf, "num_key_value_groups", None) != groups:
            why = f"its num_key_value_groups is {getattr(hf, 'num_key_value_groups', None)!r}, not {groups}"
        elif cfg is None or getattr(cfg, "n_key_value_heads", None) != n_kv:
            why = f"its config says n_key_value_heads={getattr(cfg, 'n_key_value_heads', None)!r}, not {n_kv}"
        if why is not None:
            raise ValueError(
                f"cannot give each query head its own key/value input on blocks.{i}.attn "
                f"({type(hf).__name__}): {why}. Ungrouping on a TransformerBridge works for "
                "attention with separate key and value projections repeated per query head "
                "(Llama, Qwen 2, Gemma 2, ...); use ungroup_kv=False (K/V destinations per "
                "key/value head) for this model."
            )
        plan.append((attn, hf, k, v, d_head))
    return plan


def _set_heads(conversion: Any, n_heads: int) -> Any:
    """A copy of a hook's head-splitting conversion (``ReshapeForAttentionHeads``) that
    splits ``n_heads`` heads; other conversions unchanged."""
    if conversion is None or not hasattr(conversion, "n_heads"):
        return conversion
    import copy

    new = copy.copy(conversion)
    new.n_heads = n_heads
    return new


def _ungroup(attn: nn.Module, hf: nn.Module, k: nn.Linear, v: nn.Linear, d_head: int,
             n_heads: int, n_kv: int) -> None:  # fmt: skip
    groups = n_heads // n_kv
    hooks = [getattr(getattr(attn, n, None), "hook_out", None) for n in ("k", "v")]
    state = {
        "n_kv": n_kv,
        "groups": groups,
        "conversions": [getattr(h, "hook_conversion", None) for h in hooks],
    }
    vars(attn)[_STATE] = state  # before any change: _restore undoes whatever was done
    for lin in (k, v):
        vars(lin).update(_kv_groups=groups, _kv_d_head=d_head)
        lin.__class__ = RepeatedKVLinear
    hf.num_key_value_groups = 1
    object.__setattr__(attn.config, "n_key_value_heads", n_heads)
    for hook, conv in zip(hooks, state["conversions"]):
        if hook is not None and conv is not None:
            hook.hook_conversion = _set_heads(conv, n_heads)


def _restore(attn: nn.Module) -> None:
    state = vars(attn).pop(_STATE, None)
    if state is None:
        return
    for name in ("k", "v"):
        lin = _projection(attn, name)
        if isinstance(lin, RepeatedKVLinear):
            lin.__class__ = nn.Linear
            for attr in ("_kv_groups", "_kv_d_head"):
                vars(lin).pop(attr, None)
    hf = getattr(attn, "original_component", None)
    if hf is not None:
        hf.num_key_value_groups = state["groups"]
    object.__setattr__(attn.config, "n_key_value_heads", state["n_kv"])
    for name, conv in zip(("k", "v"), state["conversions"]):
        hook = getattr(getattr(attn, name, None), "hook_out", None)
        if hook is not None and conv is not None:
            hook.hook_conversion = conv


def _set_flag(model: nn.Module, value: bool) -> None:
    object.__setattr__(model.cfg, "ungroup_grouped_query_attention", value)


def set_bridge_ungrouped_kv(model: nn.Module, ungroup: bool) -> None:
    """Ungroup (``True``) or regroup (``False``) the grouped-query attention of the
    ``TransformerBridge`` ``model`` in place, and set ``model.cfg.ungroup_grouped_query_attention``
    to match (which :class:`edgewise.graph.build.GraphSpec` reads: one K/V destination per
    query head). A model without grouped-query attention only gets the flag. Idempotent.

    Raises:
        ValueError: a block's attention is not one this module can ungroup (the message
            names it and says to use ``ungroup_kv=False``), or the ungrouped model's
            logits differ from the grouped model's (everything is undone first).
    """
    cfg = model.cfg
    n_heads = int(cfg.n_heads)
    n_kv = int(getattr(cfg, "n_key_value_heads", None) or n_heads)
    for _, attn in _attention_blocks(model):  # already ungrouped: the grouped count it kept
        n_kv = vars(attn).get(_STATE, {}).get("n_kv", n_kv)
    if n_kv == n_heads or n_heads % n_kv:
        _set_flag(model, bool(ungroup) and n_kv != n_heads)
        return
    if not ungroup:
        for _, attn in _attention_blocks(model):
            _restore(attn)
        _set_flag(model, False)
        return
    if bridge_kv_ungrouped(model):
        _set_flag(model, True)
        return
    plan = _plan(model, n_heads, n_kv)
    tokens = _probe_tokens(model)
    training = model.training
    model.eval()  # no dropout in the comparison
    try:
        with torch.no_grad():
            want = model(tokens)
            for attn, hf, k, v, d_head in plan:
                _ungroup(attn, hf, k, v, d_head, n_heads, n_kv)
            same = _close(model(tokens), want)
    except Exception:
        for attn, *_ in plan:
            _restore(attn)
        raise
    finally:
        model.train(training)
    if not same:
        for attn, *_ in plan:
            _restore(attn)
        raise ValueError(
            f"{type(model).__name__}: with each query head given its own key/value input the "
            "model's logits changed (they must not before any patch); this TransformerLens "
            "bridge computes attention in a way edgewise cannot ungroup. Use ungroup_kv=False."
        )
    _set_flag(model, True)


def _probe_tokens(model: nn.Module) -> torch.Tensor:
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    vocab = int(getattr(model.cfg, "d_vocab", 2) or 2)
    return torch.tensor([[1 % vocab, 2 % vocab, 0]], device=device)


def _close(got: Any, want: Any) -> bool:
    got = getattr(got, "logits", got)
    want = getattr(want, "logits", want)
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        return False
    finite = torch.isfinite(want)
    if not torch.equal(finite, torch.isfinite(got)):
        return False
    if not bool(finite.any()):
        return True
    scale = float(want[finite].abs().max())
    tol = math.sqrt(torch.finfo(want.dtype).eps) * (1.0 + scale) if want.dtype.is_floating_point else 0.0
    return bool(((got - want)[finite].abs() <= tol).all())
