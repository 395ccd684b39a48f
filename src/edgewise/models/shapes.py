"""Random-weight models at the exact shapes of the field's models: GPT-2 small,
Pythia-1.4B, Qwen2.5-0.5B, Gemma-2-2B and Llama-3.1-8B.

Each shape is its public Hugging Face ``config.json``, typed in here by hand (nothing is
downloaded): the width, heads, key/value heads, head size, MLP, vocabulary, norms,
rotary embedding, soft-capping, tied embeddings and biases. :func:`random_shape_model`
builds the Hugging Face model of that config with seeded random weights and returns a
``TransformerBridge`` over it (TransformerLens 3.9 and 4.x) or a ``HookedTransformer``
(TransformerLens 3.9) computing the same function.

The weights are allocated once, directly in the target dtype, and drawn in row chunks
of at most :data:`DRAW_CHUNK` values, so building Llama-3.1-8B's shape in bfloat16 needs
its 16 GB of weights and about 256 MiB more, never a float32 copy. The draws are those
of one ``normal_`` per parameter in float32 (torch fills a tensor in order, so row chunks
of a multiple of 16 values draw the same numbers), then rounded to the dtype: a bfloat16
model is its float32 twin rounded.

For tests, ``n_layers`` keeps only the first layers and ``scale`` divides the head size,
d_model, the MLP width and the vocabulary, keeping every architectural detail (head counts,
grouped-query ratio, norms, biases, rotary fraction, soft-capping, tied embeddings).

Shapes (``name``: Hugging Face id, parameters):

- ``gpt2``: ``gpt2``, 124,439,808: 12 layers, d_model 768, 12 heads of 64, d_mlp 3072,
  vocabulary 50257, 1024 learned positions, LayerNorm (eps 1e-5), ``gelu_new``, biases
  everywhere, tied embeddings.
- ``pythia-1.4b``: ``EleutherAI/pythia-1.4b``, 1,414,647,808: 24 layers, d_model 2048,
  16 heads of 128, d_mlp 8192, vocabulary 50304, LayerNorm (eps 1e-5), GELU, parallel
  attention and MLP, rotary on 25% of each head (base 10000), biases everywhere, untied.
- ``qwen2.5``: ``Qwen/Qwen2.5-0.5B``, 494,032,768 (see :mod:`edgewise.mib.random_models`).
- ``gemma2``: ``google/gemma-2-2b``, 2,614,341,888: 26 layers, d_model 2304, 8 query and
  4 key/value heads of 256, d_mlp 9216 (GeGLU, ``gelu_pytorch_tanh``), vocabulary
  256000, RMSNorm (eps 1e-6, weight ``1 + w``) before and after attention and MLP,
  rope theta 10000, attention scores soft-capped at 50 and logits at 30, queries scaled
  by ``256 ** -0.5``, a 4096-token window on every other layer, tied embeddings.
- ``llama3``: ``meta-llama/Llama-3.1-8B``, 8,030,261,248: 32 layers, d_model 4096, 32
  query and 8 key/value heads of 128, d_mlp 14336 (SwiGLU), vocabulary 128256, RMSNorm
  (eps 1e-5), rope theta 500000 with Llama 3's scaling (factor 8, low/high frequency
  factors 1 and 4, original context 8192), no biases, untied.
"""

from __future__ import annotations

from typing import Any

import torch

from edgewise.mib.models import MIB_MODELS, MIBModel
from edgewise.models.kinds import ModelKind, resolve_kind

PYTHIA_1_4B = MIBModel(
    "pythia-1.4b", "EleutherAI/pythia-1.4b", "neox", 24, 2048, 16, 16, 128, 8192, 50304,
    tied=False, layer_norm=True, gated_mlp=False, qkv_bias=True, out_bias=True, mlp_bias=True,
    dtype=torch.float32, parallel=True,
)  # fmt: skip

SHAPES: dict[str, MIBModel] = {
    "gpt2": MIB_MODELS["gpt2"],
    "pythia-1.4b": PYTHIA_1_4B,
    "qwen2.5": MIB_MODELS["qwen2.5"],
    "gemma2": MIB_MODELS["gemma2"],
    "llama3": MIB_MODELS["llama3"],
}
"""The shapes :func:`random_shape_model` builds, by short name. ``dtype`` is the one the
field runs each in (MIB: float32 for GPT-2, bfloat16 for the others; Pythia float32)."""

DRAW_CHUNK = 2**26
"""The most values drawn at once (a float32 temporary of 256 MiB)."""

_INIT_STD = 0.02  # every config's initializer_range


def _check(name: str, n_layers: int | None, scale: int) -> MIBModel:
    if name not in SHAPES:
        raise ValueError(f"no random-weight shape {name!r}; available: {', '.join(SHAPES)}")
    m = SHAPES[name]
    if n_layers is not None and (isinstance(n_layers, bool) or not isinstance(n_layers, int)
                                 or not 1 <= n_layers <= m.n_layers):  # fmt: skip
        raise ValueError(f"n_layers must be an integer from 1 to {m.n_layers} for {name}, "
                         f"got {n_layers!r}")  # fmt: skip
    rotary = 4 if name == "pythia-1.4b" else 2  # Pythia rotates a quarter of each head
    if (isinstance(scale, bool) or not isinstance(scale, int) or scale < 1
            or m.d_head % scale or (m.d_head // scale) % rotary or m.d_mlp % scale
            or m.d_model % scale):  # fmt: skip
        raise ValueError(
            f"scale must be a positive integer dividing {name}'s head size {m.d_head} (leaving "
            f"a multiple of {rotary}), MLP width {m.d_mlp} and width {m.d_model}, got "
            f"{scale!r}; try 1, 2, 4, 8 or 16"
        )
    return m


def shape_hf_config(name: str, n_layers: int | None = None, scale: int = 1) -> Any:
    """The Hugging Face config of shape ``name`` (module docstring), with ``n_layers``
    layers and the head size, d_model, MLP width and vocabulary divided by ``scale`` (the
    vocabulary kept at 64 or more). Raises ``ValueError`` naming the bad argument."""
    m = _check(name, n_layers, scale)
    import transformers as tf

    layers = m.n_layers if n_layers is None else n_layers
    d_head, d_mlp = m.d_head // scale, m.d_mlp // scale
    d_model, vocab = m.d_model // scale, max(64, m.d_vocab // scale)
    common = {"vocab_size": vocab, "initializer_range": _INIT_STD, "tie_word_embeddings": m.tied}
    if name == "gpt2":
        return tf.GPT2Config(n_layer=layers, n_embd=d_model, n_head=m.n_heads, n_inner=d_mlp,
                             n_positions=m.n_positions, activation_function="gelu_new",
                             layer_norm_epsilon=1e-5, bos_token_id=min(50256, vocab - 1),
                             eos_token_id=min(50256, vocab - 1), **common)  # fmt: skip
    if name == "pythia-1.4b":
        return tf.GPTNeoXConfig(num_hidden_layers=layers, hidden_size=d_model,
                                num_attention_heads=m.n_heads, intermediate_size=d_mlp,
                                max_position_embeddings=2048, rotary_pct=0.25,
                                rotary_emb_base=10000, use_parallel_residual=True,
                                layer_norm_eps=1e-5, hidden_act="gelu", attention_bias=True,
                                **common)  # fmt: skip
    if name == "qwen2.5":
        return tf.Qwen2Config(hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=layers,
                              num_attention_heads=m.n_heads, num_key_value_heads=m.n_kv_heads,
                              max_position_embeddings=32768, rope_theta=1000000.0,
                              rms_norm_eps=1e-6, hidden_act="silu", use_sliding_window=False,
                              max_window_layers=layers, **common)  # fmt: skip
    if name == "gemma2":
        return tf.Gemma2Config(hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=layers,
                               num_attention_heads=m.n_heads, num_key_value_heads=m.n_kv_heads,
                               head_dim=d_head, hidden_activation="gelu_pytorch_tanh",
                               max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=10000.0,
                               attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                               query_pre_attn_scalar=d_head, sliding_window=4096,
                               attn_implementation="eager", **common)  # fmt: skip
    return tf.LlamaConfig(hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=layers,
                          num_attention_heads=m.n_heads, num_key_value_heads=m.n_kv_heads,
                          head_dim=d_head, max_position_embeddings=131072, rms_norm_eps=1e-5,
                          rope_theta=500000.0, hidden_act="silu", attention_bias=False,
                          mlp_bias=False, rope_scaling={
                              "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                          **common)  # fmt: skip


_HF_CLASS = {"gpt2": "GPT2LMHeadModel", "pythia-1.4b": "GPTNeoXForCausalLM",
             "qwen2.5": "Qwen2ForCausalLM", "gemma2": "Gemma2ForCausalLM",
             "llama3": "LlamaForCausalLM"}  # fmt: skip


def draw_normal_(p: torch.Tensor, std: float, gen: torch.Generator, chunk: int | None = None) -> None:
    """Fill ``p`` (any floating dtype) in place with the values one float32
    ``normal_(0, std)`` of its shape would draw from ``gen``, rounded to its dtype, drawing
    at most about ``chunk`` (default :data:`DRAW_CHUNK`) values at a time (whole rows, a multiple of 16 of them, the last
    part at least 16 values, so the numbers drawn are the same)."""
    chunk = DRAW_CHUNK if chunk is None else chunk
    flat = p.view(p.shape[0], -1) if p.dim() > 1 else p.view(-1, 1)
    width = flat.shape[1]
    rows = max(16, (max(1, chunk // width) // 16) * 16)
    starts = list(range(0, flat.shape[0], rows))
    if len(starts) > 1 and (flat.shape[0] - starts[-1]) * width < 16:
        starts.pop()  # torch draws a tail of under 16 values differently: join it to the last
    for lo, hi in zip(starts, [*starts[1:], flat.shape[0]], strict=True):
        part = flat[lo:hi]
        if p.dtype == torch.float32:
            part.normal_(0.0, std, generator=gen)
        else:
            part.copy_(torch.empty(part.shape, dtype=torch.float32).normal_(0.0, std, generator=gen))


def _norm_params(hf: Any) -> dict[int, float]:
    """id -> fill value of every norm parameter: weights 1 (Gemma's ``1 + w``: 0), biases 0."""
    one = 0.0 if type(hf).__name__.startswith("Gemma") else 1.0
    fill = {}
    for module in hf.modules():
        if "Norm" in type(module).__name__:
            for pname, p in module.named_parameters(recurse=False):
                fill[id(p)] = one if pname == "weight" else 0.0
    return fill


def random_shape_hf_model(name: str, n_layers: int | None = None, scale: int = 1, seed: int = 0,
                          dtype: torch.dtype | None = None) -> Any:  # fmt: skip
    """The Hugging Face causal LM of :func:`shape_hf_config` in eval mode and ``dtype``
    (default: the shape's, :data:`SHAPES`), weights allocated once in ``dtype``: every
    matrix, embedding and non-norm bias ``N(0, 0.02^2)`` drawn from ``seed`` (module
    docstring), norm weights 1 (Gemma: 0, as its norms scale by ``1 + w``), norm biases 0.

    Memory: the parameters in ``dtype`` (``SHAPES[name].n_params`` times its size at full
    scale) plus at most :data:`DRAW_CHUNK` float32 values while drawing."""
    import transformers as tf

    from edgewise.mib.random_models import _no_init

    dtype = SHAPES[name].dtype if dtype is None and name in SHAPES else dtype
    cfg = shape_hf_config(name, n_layers, scale)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # allocate once, in dtype (what from_pretrained does)
    try:
        with _no_init():
            hf = getattr(tf, _HF_CLASS[name])(cfg)
    finally:
        torch.set_default_dtype(before)
    hf.tie_weights()
    gen = torch.Generator().manual_seed(seed)
    norms = _norm_params(hf)
    with torch.no_grad():
        for _, p in hf.named_parameters():  # tied embeddings listed once
            if id(p) in norms:
                p.fill_(norms[id(p)])
            else:
                draw_normal_(p, _INIT_STD, gen)
    hf.eval()
    return hf


def _hooked(name: str, hf: Any, dtype: torch.dtype) -> Any:
    """A ``HookedTransformer`` computing what ``hf`` computes (TransformerLens 3.9)."""
    from edgewise.models.hooked_archs import hooked_from_hf

    arch = {"gpt2": "gpt2", "pythia-1.4b": "neox", "qwen2.5": "qwen2", "gemma2": "gemma2",
            "llama3": "llama"}[name]  # fmt: skip
    return hooked_from_hf(arch, hf, dtype)


def random_shape_model(name: str, kind: ModelKind | None = "bridge", n_layers: int | None = None,
                       scale: int = 1, seed: int = 0, dtype: torch.dtype | None = None) -> Any:  # fmt: skip
    """A random-weight model at shape ``name`` (:data:`SHAPES`: ``gpt2``,
    ``pythia-1.4b``, ``qwen2.5``, ``gemma2``, ``llama3``): a ``TransformerBridge``
    (``kind="bridge"``, the default) or a ``HookedTransformer`` (``"hooked"``,
    TransformerLens 3.9; ``None``: the faster kind available) over
    :func:`random_shape_hf_model` (``n_layers``, ``scale``, ``seed``, ``dtype``), with a
    word-level tokenizer over the whole vocabulary. Both kinds compute the same function.

    ``patchable_model(model, ungroup_kv=True)`` gives MIB's graph (each query head its
    own K and V input). Memory: the weights (twice, briefly, for ``"hooked"``: the
    conversion copies them)."""
    from edgewise.models.kinds import load_hf_bridge, word_tokenizer

    kind = resolve_kind(kind)
    hf = random_shape_hf_model(name, n_layers, scale, seed, dtype)
    dtype = next(hf.parameters()).dtype
    if kind == "hooked":
        return _hooked(name, hf, dtype)
    tok = word_tokenizer([f"w{i}" for i in range(hf.config.vocab_size - 3)])
    return load_hf_bridge(hf, tokenizer=tok, dtype=dtype)


__all__ = ["DRAW_CHUNK", "PYTHIA_1_4B", "SHAPES", "draw_normal_", "random_shape_hf_model",
           "random_shape_model", "shape_hf_config"]  # fmt: skip
