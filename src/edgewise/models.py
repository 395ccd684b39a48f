"""Building models: random-weight TransformerLens models of any shape, bridges over
Hugging Face architectures (GPT-2, GPT-NeoX/Pythia, Llama/Qwen-style GQA), and a tiny
word-level tokenizer. Nothing here downloads anything.

The same bridge code loads real pretrained checkpoints from a local directory
(:func:`load_hf_bridge`); the tests exercise it on random weights of the same
architectures.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

Arch = Literal["gpt2", "neox", "llama"]


def word_tokenizer(words: Sequence[str], bos: str = "<bos>", pad: str = "<pad>") -> Any:
    """A Hugging Face fast tokenizer over whitespace-separated ``words`` (ids in order:
    ``bos``, ``pad``, ``<unk>``, then ``words``). Offline, deterministic."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for w in [bos, pad, "<unk>", *words]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # name_or_path and add_bos_token keep TransformerLens from reloading it from disk.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, pad_token=pad, unk_token="<unk>",
        name_or_path="edgewise-word-tokenizer", add_bos_token=True,
    )


def random_hooked_transformer(
    n_layers: int = 2,
    n_heads: int = 4,
    d_head: int = 4,
    d_vocab: int = 50,
    n_ctx: int = 32,
    n_kv_heads: int | None = None,
    attn_only: bool = False,
    parallel_attn_mlp: bool = False,
    normalization_type: str | None = "LN",
    positional_embedding_type: str = "standard",
    d_mlp: int | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Any:
    """A ``HookedTransformer`` with random weights (seeded) and the given shape."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    d_model = n_heads * d_head
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=None if attn_only else (d_mlp or 4 * d_model),
        d_vocab=d_vocab,
        n_ctx=n_ctx,
        act_fn=None if attn_only else "gelu",
        attn_only=attn_only,
        parallel_attn_mlp=parallel_attn_mlp,
        n_key_value_heads=n_kv_heads,
        normalization_type=normalization_type,
        positional_embedding_type=positional_embedding_type,
        rotary_dim=d_head if positional_embedding_type == "rotary" else None,
        seed=seed,
        dtype=dtype,
        device="cpu",
    )
    model = HookedTransformer(cfg)
    model.eval()
    return model


def _hf_config(arch: Arch, n_layers: int, n_heads: int, d_head: int, d_vocab: int,
               n_ctx: int, n_kv_heads: int | None) -> Any:
    import transformers as tf

    d_model = n_heads * d_head
    if arch == "gpt2":
        return tf.GPT2Config(n_layer=n_layers, n_embd=d_model, n_head=n_heads,
                             vocab_size=d_vocab, n_positions=n_ctx)
    if arch == "neox":
        return tf.GPTNeoXConfig(num_hidden_layers=n_layers, hidden_size=d_model,
                                num_attention_heads=n_heads, intermediate_size=4 * d_model,
                                vocab_size=d_vocab, max_position_embeddings=n_ctx,
                                use_parallel_residual=True)
    if arch == "llama":
        return tf.LlamaConfig(num_hidden_layers=n_layers, hidden_size=d_model,
                              num_attention_heads=n_heads, num_key_value_heads=n_kv_heads or n_heads,
                              intermediate_size=4 * d_model, vocab_size=d_vocab,
                              max_position_embeddings=n_ctx, head_dim=d_head)
    raise ValueError(f"unknown architecture {arch!r}; choose 'gpt2', 'neox' or 'llama'")


def random_bridge(
    arch: Arch = "gpt2",
    n_layers: int = 2,
    n_heads: int = 4,
    d_head: int = 4,
    d_vocab: int = 50,
    n_ctx: int = 32,
    n_kv_heads: int | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Any:
    """A ``TransformerBridge`` over a random-weight Hugging Face model of ``arch``."""
    import transformers as tf

    cfg = _hf_config(arch, n_layers, n_heads, d_head, d_vocab, n_ctx, n_kv_heads)
    torch.manual_seed(seed)
    cls = {"gpt2": tf.GPT2LMHeadModel, "neox": tf.GPTNeoXForCausalLM, "llama": tf.LlamaForCausalLM}
    hf = cls[arch](cfg).to(dtype)
    hf.eval()
    tok = word_tokenizer([f"w{i}" for i in range(d_vocab - 3)])
    return load_hf_bridge(hf, tokenizer=tok, dtype=dtype)


def load_hf_bridge(
    model: str | os.PathLike | Any,
    tokenizer: Any = None,
    dtype: torch.dtype = torch.float32,
    device: str | None = None,
) -> Any:
    """A ``TransformerBridge`` over a Hugging Face model: a loaded ``PreTrainedModel``,
    or a local directory holding a checkpoint (for example a downloaded GPT-2, Pythia
    or Llama). Never reaches a hub: ``HF_HUB_OFFLINE`` is set."""
    from transformer_lens.model_bridge import TransformerBridge

    if isinstance(model, str | os.PathLike):
        path = os.fspath(model)
        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"{path} is not a local model directory; edgewise never downloads weights. "
                "Save the model with save_pretrained(DIR) and pass DIR."
            )
        return TransformerBridge.boot_transformers(path, device=device, dtype=dtype, tokenizer=tokenizer)
    name = getattr(model.config, "_name_or_path", "") or "local-model"
    bridge = TransformerBridge.boot_transformers(
        name, hf_model=model, tokenizer=tokenizer, dtype=dtype, device=device
    )
    bridge.eval()
    return bridge
