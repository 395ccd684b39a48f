"""``HookedTransformer`` versions of the Hugging Face architectures :func:`random_bridge`
builds beyond GPT-2 and GPT-NeoX (whose shapes ``HookedTransformerConfig`` expresses
directly): Llama, Qwen 2 and Gemma 2, so the same architectures are tested on both model
kinds. TransformerLens 3.x only; nothing is downloaded.

The config comes from TransformerLens' own conversion (``convert_hf_model_config``) of a
tiny Hugging Face config, the weights from its own weight conversion of a random-weight
Hugging Face model of that config: the ``HookedTransformer`` computes what the Hugging
Face model (and a bridge over it) computes. Gemma 2's TransformerLens config is written
per checkpoint name, not read from a Hugging Face config, so the ``google/gemma-2-2b``
entry gives its architecture (soft-capping, norms after attention and MLP, alternating
sliding-window layers) and the tiny config its shape.
"""

from __future__ import annotations

import math
import tempfile
from typing import Any

import torch

_HF_CLASSES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "neox": "GPTNeoXForCausalLM",
    "gpt2": "GPT2LMHeadModel",
}


def tl_config_dict(arch: str, hf_cfg: Any) -> dict[str, Any]:
    """TransformerLens' ``HookedTransformerConfig`` fields for the Hugging Face config
    ``hf_cfg`` of ``arch`` (``llama``, ``qwen2`` or ``gemma2``)."""
    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    if arch not in _HF_CLASSES:
        raise ValueError(
            f"no HookedTransformer conversion for architecture {arch!r} here; choose "
            f"one of {', '.join(_HF_CLASSES)} (or build gpt2/neox shapes directly)"
        )
    if arch == "gpt2":  # TransformerLens 3.9 cannot read a transformers 5 GPT-2 config
        return dict(d_model=hf_cfg.n_embd, d_head=hf_cfg.n_embd // hf_cfg.n_head,
                    n_heads=hf_cfg.n_head, d_mlp=hf_cfg.n_inner or 4 * hf_cfg.n_embd,
                    n_layers=hf_cfg.n_layer, n_ctx=hf_cfg.n_positions, eps=hf_cfg.layer_norm_epsilon,
                    d_vocab=hf_cfg.vocab_size, act_fn=hf_cfg.activation_function,
                    use_attn_scale=True, use_local_attn=False, scale_attn_by_inverse_layer_idx=False,
                    normalization_type="LN", original_architecture="GPT2LMHeadModel",
                    tokenizer_name=None)  # fmt: skip
    if arch == "gemma2":
        fields = convert_hf_model_config("google/gemma-2-2b")  # name-based: reads no file
        n = int(hf_cfg.num_hidden_layers)
        fields.update(
            d_model=hf_cfg.hidden_size,
            d_head=hf_cfg.head_dim,
            n_heads=hf_cfg.num_attention_heads,
            n_key_value_heads=hf_cfg.num_key_value_heads,
            d_mlp=hf_cfg.intermediate_size,
            n_layers=n,
            n_ctx=hf_cfg.max_position_embeddings,
            d_vocab=hf_cfg.vocab_size,
            eps=hf_cfg.rms_norm_eps,
            window_size=hf_cfg.sliding_window,
            attn_types=(["local", "global"] * n)[:n],
            attn_scores_soft_cap=hf_cfg.attn_logit_softcapping,
            output_logits_soft_cap=hf_cfg.final_logit_softcapping,
            # Gemma 2 scales queries by query_pre_attn_scalar ** -0.5, not d_head ** -0.5
            attn_scale=math.sqrt(hf_cfg.query_pre_attn_scalar),
            initializer_range=hf_cfg.initializer_range,
            tokenizer_name=None,
        )
        return fields
    hf_cfg.architectures = [_HF_CLASSES[arch]]
    # a directory name without "llama"/"gemma" keeps the conversion from guessing by name
    with tempfile.TemporaryDirectory(prefix="edgewise-cfg-") as folder:
        hf_cfg.save_pretrained(folder)
        fields = convert_hf_model_config(folder)
    fields["tokenizer_name"] = None
    return fields


def hooked_from_hf(arch: str, hf_model: Any, dtype: torch.dtype = torch.float32) -> Any:
    """A ``HookedTransformer`` computing what the Hugging Face model ``hf_model`` of
    ``arch`` computes (no weight processing: layer norms unfolded, weights uncentred)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained import weight_conversions as wc

    fields = tl_config_dict(arch, hf_model.config)
    fields.pop("quantization_method", None)
    fields = {k: v for k, v in fields.items() if k != "tokenizer_name"}
    cfg = HookedTransformerConfig(**fields, dtype=dtype, device="cpu")
    convert = {
        "llama": wc.convert_llama_weights,
        "qwen2": wc.convert_qwen2_weights,
        "gemma2": wc.convert_gemma_weights,
        "neox": wc.convert_neox_weights,
        "gpt2": wc.convert_gpt2_weights,
    }[arch]
    state = convert(hf_model, cfg)
    model = HookedTransformer(cfg)
    model.load_and_process_state_dict(
        state,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    return model.eval()
