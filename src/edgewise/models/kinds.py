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

Arch = Literal["gpt2", "neox", "llama", "qwen2", "gemma2"]
ModelKind = Literal["hooked", "bridge"]
"""``"hooked"``: a TransformerLens ``HookedTransformer`` (TransformerLens 3.x only);
``"bridge"``: a ``TransformerBridge`` over a Hugging Face model (3.9 and 4.x)."""


def hooked_transformer_available() -> bool:
    """Whether this TransformerLens has ``HookedTransformer`` (3.x; 4.x removed it)."""
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_kind(kind: ModelKind | None) -> ModelKind:
    """``kind``, or the default: ``"hooked"`` where ``HookedTransformer`` exists (it is the
    faster model on a CPU), else ``"bridge"``. Raise if ``"hooked"`` is asked for on
    TransformerLens 4.x."""
    if kind is None:
        return "hooked" if hooked_transformer_available() else "bridge"
    if kind not in ("hooked", "bridge"):
        raise ValueError(f"kind must be 'hooked' or 'bridge', not {kind!r}")
    if kind == "hooked" and not hooked_transformer_available():
        raise ImportError(_NO_HOOKED)
    return kind


_NO_HOOKED = (
    "this TransformerLens has no HookedTransformer (it was removed in TransformerLens 4.0). "
    "Use kind='bridge' (a TransformerBridge), or install transformer-lens==3.9.0 for both."
)


def vocab_tokenizer(vocab: Sequence[str], bos: str, pad: str | None = None,
                    unk: str | None = None) -> Any:
    """A Hugging Face fast tokenizer over whitespace-separated words whose ids are their
    positions in ``vocab`` (which must hold ``bos``, and ``pad``/``unk`` if given, once
    each). Offline, deterministic."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    ids = {w: i for i, w in enumerate(vocab)}
    if len(ids) != len(vocab):
        raise ValueError("the vocabulary has duplicate words")
    for special in (bos, pad, unk):
        if special is not None and special not in ids:
            raise ValueError(f"the vocabulary lacks the special token {special!r}")
    tok = Tokenizer(models.WordLevel(vocab=ids, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # name_or_path and add_bos_token keep TransformerLens from reloading it from disk.
    specials = {"bos_token": bos, "pad_token": pad, "unk_token": unk}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, name_or_path="edgewise-word-tokenizer", add_bos_token=True,
        **{k: v for k, v in specials.items() if v is not None},
    )


def word_tokenizer(words: Sequence[str], bos: str = "<bos>", pad: str = "<pad>") -> Any:
    """A Hugging Face fast tokenizer over whitespace-separated ``words`` (ids in order:
    ``bos``, ``pad``, ``<unk>``, then ``words``). Offline, deterministic."""
    vocab = list(dict.fromkeys([bos, pad, "<unk>", *words]))
    return vocab_tokenizer(vocab, bos=bos, pad=pad, unk="<unk>")


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
    arch: Arch | None = None,
) -> Any:
    """A ``HookedTransformer`` with random weights (seeded) and the given shape
    (TransformerLens 3.x; see :func:`random_model` for one that works on 4.x too).

    ``arch`` (``"llama"``, ``"qwen2"`` or ``"gemma2"``): instead, TransformerLens' own
    conversion of :func:`random_hf_model` (``arch``, ``n_layers``, ``n_heads``, ``d_head``,
    ``d_vocab``, ``n_ctx``, ``n_kv_heads``, ``dtype``, ``seed``), so it computes what
    ``random_bridge`` with the same arguments computes; the other arguments must keep
    their defaults (the architecture fixes them)."""
    resolve_kind("hooked")
    if arch is not None:
        from edgewise.models.hooked_archs import hooked_from_hf

        fixed = {"attn_only": (attn_only, False), "parallel_attn_mlp": (parallel_attn_mlp, False),
                 "normalization_type": (normalization_type, "LN"),
                 "positional_embedding_type": (positional_embedding_type, "standard"),
                 "d_mlp": (d_mlp, None)}  # fmt: skip
        changed = [name for name, (value, default) in fixed.items() if value != default]
        if changed:
            raise ValueError(f"arch={arch!r} fixes {', '.join(changed)}; leave them at their "
                             "defaults or build with arch=None")
        hf = random_hf_model(arch, n_layers, n_heads, d_head, d_vocab, n_ctx, n_kv_heads, dtype, seed)
        return hooked_from_hf(arch, hf, dtype)
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
               n_ctx: int, n_kv_heads: int | None, activation: str = "gelu_new") -> Any:
    """A small config of ``arch`` that keeps the architecture's own head, norm and
    attention details (Llama 3's rope theta, Qwen 2.5's Q/K/V biases, Gemma 2's soft-capping,
    query scaling and four norms per block)."""
    import transformers as tf

    d_model = n_heads * d_head
    kv = n_kv_heads or n_heads
    init = {"initializer_range": 0.8 / d_model**0.5}  # TransformerLens' init scale, not 0.02
    if arch == "gpt2":
        return tf.GPT2Config(n_layer=n_layers, n_embd=d_model, n_head=n_heads,
                             vocab_size=d_vocab, n_positions=n_ctx, activation_function=activation, **init)
    if arch == "neox":
        return tf.GPTNeoXConfig(num_hidden_layers=n_layers, hidden_size=d_model,
                                num_attention_heads=n_heads, intermediate_size=4 * d_model,
                                vocab_size=d_vocab, max_position_embeddings=n_ctx,
                                use_parallel_residual=True, rotary_pct=0.25, **init)
    if arch == "llama":
        return tf.LlamaConfig(num_hidden_layers=n_layers, hidden_size=d_model,
                              num_attention_heads=n_heads, num_key_value_heads=kv,
                              intermediate_size=4 * d_model, vocab_size=d_vocab,
                              max_position_embeddings=n_ctx, head_dim=d_head, rope_theta=500000.0,
                              **init)
    if arch == "qwen2":
        return tf.Qwen2Config(num_hidden_layers=n_layers, hidden_size=d_model,
                              num_attention_heads=n_heads, num_key_value_heads=kv,
                              intermediate_size=4 * d_model, vocab_size=d_vocab,
                              max_position_embeddings=n_ctx, rope_theta=1000000.0,
                              tie_word_embeddings=True, **init)
    if arch == "gemma2":
        return tf.Gemma2Config(num_hidden_layers=n_layers, hidden_size=d_model,
                               num_attention_heads=n_heads, num_key_value_heads=kv, head_dim=d_head,
                               intermediate_size=4 * d_model, vocab_size=d_vocab,
                               max_position_embeddings=n_ctx, attn_logit_softcapping=50.0,
                               final_logit_softcapping=30.0, query_pre_attn_scalar=2 * d_head,
                               # a window shorter than the tests' prompts, so it matters;
                               # eager attention is the one that soft-caps the scores
                               sliding_window=GEMMA2_WINDOW, attn_implementation="eager", **init)
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")


GEMMA2_WINDOW = 4
"""The sliding window of the tiny Gemma 2 models (every other layer attends this far back)."""

ARCHS: tuple[str, ...] = ("gpt2", "neox", "llama", "qwen2", "gemma2")
"""Hugging Face architectures :func:`random_bridge` builds."""


def random_hf_model(arch: Arch = "gpt2", n_layers: int = 2, n_heads: int = 4, d_head: int = 4,
                    d_vocab: int = 50, n_ctx: int = 32, n_kv_heads: int | None = None,
                    dtype: torch.dtype = torch.float32, seed: int = 0) -> Any:
    """A random-weight (seeded) Hugging Face causal LM of ``arch`` and the given shape, in
    eval mode: what :func:`random_bridge` wraps and ``random_hooked_transformer(arch=...)``
    converts, so both kinds of model compute the same function for the same arguments."""
    import transformers as tf

    cfg = _hf_config(arch, n_layers, n_heads, d_head, d_vocab, n_ctx, n_kv_heads)
    torch.manual_seed(seed)
    cls = {"gpt2": tf.GPT2LMHeadModel, "neox": tf.GPTNeoXForCausalLM, "llama": tf.LlamaForCausalLM,
           "qwen2": tf.Qwen2ForCausalLM, "gemma2": tf.Gemma2ForCausalLM}
    hf = cls[arch](cfg).to(dtype)
    hf.eval()
    return hf


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
    attn_only: bool = False,
    normalization_type: str | None = "default",
) -> Any:
    """A ``TransformerBridge`` over a random-weight Hugging Face model of ``arch``.

    ``attn_only`` zeroes each MLP's parameters, so it outputs zero (and removes the MLP
    nodes from the graph); ``normalization_type=None`` swaps GPT-2's LayerNorms for identities.
    """
    from edgewise.models.convert import identity_norms, zero_mlps

    hf = random_hf_model(arch, n_layers, n_heads, d_head, d_vocab, n_ctx, n_kv_heads, dtype, seed)
    layers = hf.transformer.h if arch == "gpt2" else hf.base_model.layers
    if attn_only:
        zero_mlps(layers)
    if normalization_type is None:
        if arch != "gpt2":
            raise ValueError("normalization_type=None is built on 'gpt2' bridges only")
        for layer in layers:
            layer.ln_1, layer.ln_2 = torch.nn.Identity(), torch.nn.Identity()
        hf.transformer.ln_f = torch.nn.Identity()
    tok = word_tokenizer([f"w{i}" for i in range(d_vocab - 3)])
    bridge = load_hf_bridge(hf, tokenizer=tok, dtype=dtype)
    identity_norms(bridge)
    if attn_only:
        bridge.cfg.attn_only = True
    return bridge


def random_model(
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
    kind: ModelKind | None = None,
) -> Any:
    """A random-weight model of the given shape, of ``kind`` (default
    :func:`resolve_kind`): a ``HookedTransformer`` (:func:`random_hooked_transformer`), or
    a bridge over the Hugging Face architecture that has the shape's features: GPT-2
    (LayerNorm or none, learned positions), Llama (grouped-query attention, RMSNorm or
    rotary) or GPT-NeoX (parallel attention and MLP). The shape's other details then
    follow that architecture; ``d_mlp`` is 4 ``d_model`` on bridges."""
    if resolve_kind(kind) == "hooked":
        return random_hooked_transformer(
            n_layers=n_layers, n_heads=n_heads, d_head=d_head, d_vocab=d_vocab, n_ctx=n_ctx,
            n_kv_heads=n_kv_heads, attn_only=attn_only, parallel_attn_mlp=parallel_attn_mlp,
            normalization_type=normalization_type,
            positional_embedding_type=positional_embedding_type, d_mlp=d_mlp, dtype=dtype, seed=seed,
        )
    gqa = n_kv_heads not in (None, n_heads)
    if parallel_attn_mlp and gqa:
        raise ValueError("no bridge architecture here has both parallel blocks and grouped-query "
                         "attention; use kind='hooked' (TransformerLens 3.9)")
    if parallel_attn_mlp:
        arch: Arch = "neox"
    elif gqa or normalization_type in ("RMS", "RMSPre") or positional_embedding_type == "rotary":
        arch = "llama"
    else:
        arch = "gpt2"
    return random_bridge(arch, n_layers=n_layers, n_heads=n_heads, d_head=d_head, d_vocab=d_vocab,
                         n_ctx=n_ctx, n_kv_heads=n_kv_heads, dtype=dtype, seed=seed,
                         attn_only=attn_only,
                         normalization_type=None if normalization_type is None else "default")


def from_tl_weights(
    cfg: dict[str, Any],
    weights: dict[str, torch.Tensor],
    kind: ModelKind | None = None,
    tokenizer: Any = None,
    device: str | torch.device = "cpu",
) -> Any:
    """A model of ``kind`` from TransformerLens-format ``weights`` and config fields
    ``cfg`` (``dtype`` a ``torch.dtype`` or its name): a ``HookedTransformer``, or a bridge
    over the equivalent GPT-2 (:func:`edgewise.models.convert.hf_gpt2_from_tl`). Both compute the
    same outputs to float rounding."""
    fields = dict(cfg)
    dtype = fields.pop("dtype", weights["embed.W_E"].dtype)
    dtype = dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype).removeprefix("torch."))
    fields.pop("device", None)
    if resolve_kind(kind) == "hooked":
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        model = HookedTransformer(HookedTransformerConfig(**fields, dtype=dtype, device=str(device)))
        state = model.state_dict()
        unknown = sorted(set(weights) - set(state))
        missing = sorted({n for n, _ in model.named_parameters()} - set(weights))
        if unknown or missing:
            raise ValueError(f"the weights do not match the config (missing {missing[:4]}, "
                             f"unexpected {unknown[:4]})")
        state.update({k: v.to(dtype) for k, v in weights.items()})
        model.load_state_dict(state, strict=True)
        if tokenizer is not None:
            model.set_tokenizer(tokenizer)
        return model.to(device).eval()
    from edgewise.models.convert import finish_bridge, hf_gpt2_from_tl

    export = hf_gpt2_from_tl(fields, {k: v.to(dtype) for k, v in weights.items()})
    bridge = load_hf_bridge(export.model, tokenizer=tokenizer, dtype=dtype, device=str(device))
    return finish_bridge(bridge, export)


def load_hf_bridge(
    model: str | os.PathLike | Any,
    tokenizer: Any = None,
    dtype: torch.dtype = torch.float32,
    device: str | None = None,
) -> Any:
    """A ``TransformerBridge`` over a Hugging Face model: a loaded ``PreTrainedModel``,
    or a local directory holding a checkpoint (for example a downloaded GPT-2, Pythia
    or Llama); a loaded model gets a word-level tokenizer unless ``tokenizer`` is given,
    so nothing is looked up on a hub. A directory whose
    ``config.json`` or weight files are unreadable (truncated, not JSON, pickled Python
    objects) raises :class:`edgewise.io.files.FileFormatError` naming the file
    (:func:`edgewise.models.files.check_model_dir`) before anything loads."""
    from transformer_lens.model_bridge import TransformerBridge

    if isinstance(model, str | os.PathLike):
        path = os.fspath(model)
        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"{path} is not a local model directory; edgewise never downloads weights. "
                "Save the model with save_pretrained(DIR) and pass DIR."
            )
        from edgewise.models.files import check_model_dir

        check_model_dir(path)  # one line naming a bad config.json or weights file
        return TransformerBridge.boot_transformers(path, device=device, dtype=dtype, tokenizer=tokenizer)
    name = getattr(model.config, "_name_or_path", "") or "local-model"
    if tokenizer is None:  # never let the bridge look one up on a hub
        tokenizer = word_tokenizer([f"w{i}" for i in range(model.config.vocab_size - 3)])
    bridge = TransformerBridge.boot_transformers(
        name, hf_model=model, tokenizer=tokenizer, dtype=dtype, device=device
    )
    bridge.eval()
    return bridge


def load_pretrained(name: str, device: torch.device | str | None = None) -> Any:
    """A TransformerLens model by name, from weights already on this machine: a
    ``HookedTransformer`` where TransformerLens has it (3.x), else a ``TransformerBridge``."""
    if hooked_transformer_available():
        from transformer_lens import HookedTransformer

        return HookedTransformer.from_pretrained(name, device=device)
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(name, device=device)

