"""TransformerLens-format weights as a Hugging Face GPT-2, so a model that was built as a
``HookedTransformer`` (the shipped toy IOI model, tracr programs, hand-planted test
models) also runs as a ``TransformerBridge`` on TransformerLens 4.x, where
``HookedTransformer`` no longer exists.

The weights use TransformerLens' names and shapes (``embed.W_E [d_vocab, d_model]``,
``blocks.0.attn.W_Q [heads, d_model, d_head]``, ...) and the config the fields of a
``HookedTransformerConfig`` (a plain dict). The GPT-2 computes the same function:

- ``W_Q``/``W_K``/``W_V`` go into ``c_attn`` head-major, ``W_O`` into ``c_proj``.
- The attention scale TransformerLens uses (``attn_scale``, default ``sqrt(d_head)``) is
  folded into ``W_Q``/``b_Q``, since the bridge always scales by ``1/sqrt(head_dim)``.
- If ``n_heads * d_head != d_model`` (tracr), heads are padded with zero dimensions, and
  with no normalisation the residual stream may be padded with zero dimensions too.
- An unembedding bias is folded into ``ln_f``'s bias when ``W_U`` has full column rank
  (then the checkpoint is a plain GPT-2 that ``TransformerBridge.boot_transformers(DIR)``
  loads); otherwise, and when ``d_vocab_out != d_vocab``, ``lm_head`` becomes a biased
  ``Linear`` of the right size (a module swap: see :func:`hf_gpt2_from_tl`).
- ``normalization_type=None`` swaps ``ln_1``/``ln_2``/``ln_f`` for ``nn.Identity``;
  ``attn_only`` zeroes each ``mlp`` (:func:`zero_mlps`); bidirectional
  attention is set on the bridge (:func:`finish_bridge`).

The conversion is checked against the ``HookedTransformer`` on TransformerLens 3.9
(``tests/models/test_models.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

_ACT_FNS = {"gelu": "gelu", "gelu_new": "gelu_new", "relu": "relu", "silu": "silu",
            "gelu_fast": "gelu_fast", "quick_gelu": "quick_gelu", "solu_ln": None}


def zero_mlps(layers: Any) -> None:
    """Zero every parameter of each layer's ``mlp``, so it outputs exactly zero (its
    activation maps 0 to 0): the MLPs of an attention-only model, kept as modules so
    the bridge finds the components it wraps."""
    with torch.no_grad():
        for layer in layers:
            for p in layer.mlp.parameters():
                p.zero_()


@dataclass
class Gpt2Export:
    """A GPT-2 ``model`` equivalent to TransformerLens weights, and what differs from a
    plain GPT-2 checkpoint: ``swaps`` (module path -> replacement, already applied to
    ``model``), ``causal`` and ``attn_only`` (applied to a bridge by
    :func:`finish_bridge`)."""

    model: Any
    causal: bool = True
    attn_only: bool = False
    swaps: dict[str, nn.Module] = field(default_factory=dict)

    @property
    def plain(self) -> bool:
        """Whether ``model`` is an unmodified GPT-2 (its checkpoint loads on its own)."""
        return not self.swaps and self.causal and not self.attn_only


def _fold_unembed_bias(ln_b: Tensor, w_u: Tensor, b_u: Tensor) -> Tensor | None:
    """``beta`` with ``beta @ W_U = ln_b @ W_U + b_U`` (float64), or None if ``b_U`` is not
    in the row space of ``W_U`` to float32 rounding."""
    w64 = w_u.double()
    target = ln_b.double() @ w64 + b_u.double()
    beta = torch.linalg.lstsq(w64.T, target[:, None]).solution[:, 0]
    err = (beta @ w64 - target).abs().max()
    if err > 1e-6 * max(1.0, float(target.abs().max())):
        return None
    return beta


def hf_gpt2_from_tl(cfg: Mapping[str, Any], weights: Mapping[str, Tensor]) -> Gpt2Export:
    """A ``transformers.GPT2LMHeadModel`` computing what a ``HookedTransformer`` with
    config ``cfg`` (``HookedTransformerConfig`` fields) and state ``weights`` computes.

    Args:
        cfg: ``n_layers``, ``d_model``, ``n_heads``, ``d_head``, ``d_mlp``, ``d_vocab``,
            ``n_ctx``, ``act_fn``, ``normalization_type`` (``"LN"`` or None), and optionally
            ``d_vocab_out``, ``attn_only``, ``attention_dir``, ``attn_scale``, ``eps``.
        weights: TransformerLens parameter names to tensors.

    Returns:
        A :class:`Gpt2Export` (the model in eval mode, float32 or the weights' dtype).

    Raises:
        ValueError: a config GPT-2 cannot express (rotary or no positional embeddings,
            RMSNorm, grouped-query or parallel attention, padded heads with LayerNorm).
    """
    import transformers as tf

    L, d, H, dh = (int(cfg[k]) for k in ("n_layers", "d_model", "n_heads", "d_head"))
    norm = cfg.get("normalization_type", "LN")
    unsupported = {
        "positional_embedding_type": cfg.get("positional_embedding_type", "standard") != "standard",
        "normalization_type": norm not in ("LN", None),
        "n_key_value_heads": cfg.get("n_key_value_heads") not in (None, H),
        "parallel_attn_mlp": bool(cfg.get("parallel_attn_mlp", False)),
        "act_fn": not cfg.get("attn_only") and _ACT_FNS.get(cfg.get("act_fn") or "") is None,
    }
    bad = [f"{k}={cfg.get(k)!r}" for k, v in unsupported.items() if v]
    if bad:
        raise ValueError(
            f"a GPT-2 cannot express {', '.join(bad)}; build the bridge from a Hugging Face "
            "architecture that has it (edgewise.models.kinds.random_bridge: 'neox', 'llama', ...)."
        )
    dh2 = max(dh, math.ceil(d / H))  # padded head size
    d2 = H * dh2  # padded residual width
    if d2 != d and norm is not None:
        raise ValueError(
            f"n_heads * d_head = {H * dh} != d_model = {d} and the model has LayerNorm; "
            "GPT-2 needs n_heads * d_head == d_model, and zero-padding the residual changes "
            "LayerNorm's statistics."
        )
    dtype = weights["embed.W_E"].dtype
    d_vocab = int(cfg["d_vocab"])
    d_vocab_out = int(cfg.get("d_vocab_out") or d_vocab)
    if d_vocab_out < 0:
        d_vocab_out = d_vocab
    attn_only = bool(cfg.get("attn_only", False))
    d_mlp = int(cfg.get("d_mlp") or 4 * d)
    hf_cfg = tf.GPT2Config(
        n_layer=L, n_embd=d2, n_head=H, n_inner=d_mlp, vocab_size=d_vocab,
        n_positions=int(cfg["n_ctx"]), activation_function=_ACT_FNS.get(cfg.get("act_fn") or "", "gelu") or "gelu",
        layer_norm_epsilon=float(cfg.get("eps", 1e-5)), tie_word_embeddings=False,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
    )
    causal = cfg.get("attention_dir", "causal") == "causal"
    hf_cfg.is_causal = causal  # transformers then builds a bidirectional mask
    model = tf.GPT2LMHeadModel(hf_cfg).to(dtype).eval()

    def pad_rows(w: Tensor, n: int) -> Tensor:  # pad dim 0 to n
        return torch.cat([w, w.new_zeros(n - w.shape[0], *w.shape[1:])]) if n > w.shape[0] else w

    def pad_cols(w: Tensor, n: int) -> Tensor:  # pad last dim to n
        return torch.cat([w, w.new_zeros(*w.shape[:-1], n - w.shape[-1])], -1) if n > w.shape[-1] else w

    scale = float(cfg.get("attn_scale") or math.sqrt(dh)) if cfg.get("use_attn_scale", True) else 1.0
    q_fold = math.sqrt(dh2) / scale
    sd: dict[str, Tensor] = {
        "transformer.wte.weight": pad_cols(weights["embed.W_E"], d2),
        "transformer.wpe.weight": pad_cols(weights["pos_embed.W_pos"], d2),
    }
    for i in range(L):
        p, h = f"blocks.{i}.", f"transformer.h.{i}."
        qkv_w, qkv_b = [], []
        for x in "QKV":
            w = pad_cols(weights[f"{p}attn.W_{x}"], dh2)  # [H, d, dh2]
            w = pad_cols(w.transpose(1, 2), d2).transpose(1, 2)  # [H, d2, dh2]
            b = pad_cols(weights.get(f"{p}attn.b_{x}", w.new_zeros(H, dh)), dh2)
            if x == "Q":
                w, b = w * q_fold, b * q_fold
            qkv_w.append(w.permute(1, 0, 2).reshape(d2, H * dh2))
            qkv_b.append(b.reshape(H * dh2))
        sd[h + "attn.c_attn.weight"] = torch.cat(qkv_w, 1)
        sd[h + "attn.c_attn.bias"] = torch.cat(qkv_b)
        w_o = pad_cols(pad_cols(weights[f"{p}attn.W_O"].transpose(1, 2), dh2).transpose(1, 2), d2)
        sd[h + "attn.c_proj.weight"] = w_o.reshape(H * dh2, d2)
        sd[h + "attn.c_proj.bias"] = pad_cols(weights.get(f"{p}attn.b_O", w_o.new_zeros(d)), d2)
        if not attn_only:
            sd[h + "mlp.c_fc.weight"] = pad_rows(weights[f"{p}mlp.W_in"], d2)
            sd[h + "mlp.c_fc.bias"] = weights[f"{p}mlp.b_in"]
            sd[h + "mlp.c_proj.weight"] = pad_cols(weights[f"{p}mlp.W_out"], d2)
            sd[h + "mlp.c_proj.bias"] = pad_cols(weights[f"{p}mlp.b_out"], d2)
        if norm == "LN":
            for tl, hf in (("ln1", "ln_1"), ("ln2", "ln_2")):
                sd[f"{h}{hf}.weight"] = weights[f"{p}{tl}.w"]
                sd[f"{h}{hf}.bias"] = weights[f"{p}{tl}.b"]

    w_u = pad_rows(weights["unembed.W_U"], d2)  # [d2, d_vocab_out]
    b_u = weights.get("unembed.b_U", w_u.new_zeros(d_vocab_out))
    ln_b = weights.get("ln_final.b", w_u.new_zeros(d2)) if norm == "LN" else None
    custom_head = d_vocab_out != d_vocab
    if norm == "LN":
        sd["transformer.ln_f.weight"] = weights["ln_final.w"]
        beta = None if custom_head else _fold_unembed_bias(ln_b, w_u, b_u)
        if beta is None:
            custom_head = True
            sd["transformer.ln_f.bias"] = ln_b
        else:
            sd["transformer.ln_f.bias"] = beta.to(dtype)
    elif bool(b_u.abs().max() > 0):
        custom_head = True

    swaps: dict[str, nn.Module] = {}
    if custom_head:
        head = nn.Linear(d2, d_vocab_out, bias=True, dtype=dtype)
        with torch.no_grad():
            head.weight.copy_(w_u.T)
            head.bias.copy_(b_u)
        swaps["lm_head"] = head
    else:
        sd["lm_head.weight"] = w_u.T.contiguous()
    if norm is None:
        swaps.update({f"transformer.h.{i}.{n}": nn.Identity() for i in range(L) for n in ("ln_1", "ln_2")})
        swaps["transformer.ln_f"] = nn.Identity()

    own = model.state_dict()
    for k, v in sd.items():
        if own[k].shape != v.shape:
            raise ValueError(f"{k}: converted shape {tuple(v.shape)} != GPT-2's {tuple(own[k].shape)}")
    missing = [k for k in own if k not in sd and not any(k.startswith(s + ".") for s in swaps)
               and not (attn_only and ".mlp." in k)]
    if missing:
        raise ValueError(f"no TransformerLens weight for {missing[:4]}")
    model.load_state_dict({**own, **{k: v.to(dtype) for k, v in sd.items()}})
    for path, module in swaps.items():
        parent, _, leaf = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, module)
    if attn_only:
        zero_mlps(model.transformer.h)
    return Gpt2Export(model=model.eval(), causal=causal, attn_only=attn_only, swaps=swaps)


def identity_norms(bridge: Any) -> None:
    """Make the bridge's norm components whose Hugging Face module is ``nn.Identity`` pass
    their input through (the bridge's own Python LayerNorm would normalise it)."""
    for module in bridge.modules():
        if isinstance(getattr(module, "original_component", None), nn.Identity) and hasattr(
            module, "use_native_layernorm_autograd"
        ):
            module.use_native_layernorm_autograd = True


def finish_bridge(bridge: Any, export: Gpt2Export) -> Any:
    """Apply to a bridge over ``export.model`` what a GPT-2 config cannot say: identity
    norms, bidirectional attention, an attention-only graph, the output vocabulary."""
    identity_norms(bridge)
    if not export.causal:
        for block in bridge.blocks:
            # set on the bridge component itself: its __setattr__ would forward the
            # attribute to the wrapped Hugging Face module, which already has it
            object.__setattr__(block.attn, "is_causal", False)
    if export.attn_only:
        bridge.cfg.attn_only = True
    if any(isinstance(m, nn.Identity) for m in export.swaps.values()):
        bridge.cfg.normalization_type = None
    if "lm_head" in export.swaps:
        bridge.cfg.d_vocab_out = export.swaps["lm_head"].out_features
    return bridge
