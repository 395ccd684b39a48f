"""Random-weight models at the real shape of MIB's models, for checking that MIB's graph,
scores and submission files come out of edgewise at full size without the real weights.

:func:`mib_hf_config` writes a model's public Hugging Face config by hand (nothing is
downloaded); :func:`random_mib_bridge` builds the Hugging Face model of that config with
seeded random weights and wraps it in a ``TransformerBridge`` (the only model class of
TransformerLens 4, what ``pip install edgewise`` gives). Only the layer count may be
reduced (for fast tests); the width, heads, MLP, vocabulary, norms, rotary embedding,
tied embeddings and biases stay the model's.

Qwen2.5-0.5B (``Qwen/Qwen2.5-0.5B``, ``config.json``): 24 layers, ``hidden_size`` 896,
14 query heads and 2 key/value heads of 64 dims, ``intermediate_size`` 4864 (SwiGLU),
``vocab_size`` 151936, RMSNorm (``rms_norm_eps`` 1e-6), rotary embeddings
(``rope_theta`` 1e6, ``max_position_embeddings`` 32768, no sliding window), tied
embeddings, biases on the query, key and value projections only: 494,032,768 parameters.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from edgewise.mib.models import MIB_MODELS

RANDOM_MIB_MODELS: tuple[str, ...] = ("qwen2.5",)
"""The MIB models :func:`random_mib_bridge` builds."""


def mib_hf_config(name: str = "qwen2.5", n_layers: int | None = None) -> Any:
    """The Hugging Face config of MIB model ``name`` (its public ``config.json``), with
    ``n_layers`` layers if given. Raises ``ValueError`` for a model not in
    :data:`RANDOM_MIB_MODELS` or a layer count outside 1..the model's."""
    if name not in RANDOM_MIB_MODELS:
        raise ValueError(
            f"no random-weight builder for MIB model {name!r}; available: "
            f"{', '.join(RANDOM_MIB_MODELS)}"
        )
    m = MIB_MODELS[name]
    layers = m.n_layers if n_layers is None else n_layers
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= m.n_layers:
        raise ValueError(f"n_layers must be an integer from 1 to {m.n_layers} for {name}, got {n_layers!r}")
    import transformers as tf

    return tf.Qwen2Config(
        vocab_size=m.d_vocab, hidden_size=m.d_model, intermediate_size=m.d_mlp,
        num_hidden_layers=layers, num_attention_heads=m.n_heads, num_key_value_heads=m.n_kv_heads,
        max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=m.tied, hidden_act="silu", use_sliding_window=False,
        max_window_layers=layers, initializer_range=0.02,
    )  # fmt: skip


def _no_init() -> AbstractContextManager[Any]:
    """Transformers' context that skips its weight initialisation (the weights are drawn
    here instead, seeded, once)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        try:
            from transformers.modeling_utils import no_init_weights  # type: ignore[no-redef]
        except ImportError:  # pragma: no cover
            return nullcontext()
    return no_init_weights()


def random_mib_hf_model(name: str = "qwen2.5", n_layers: int | None = None, seed: int = 0,
                        dtype: torch.dtype = torch.float32) -> Any:  # fmt: skip
    """The Hugging Face causal LM of :func:`mib_hf_config` in eval mode, with weights drawn
    from ``seed``: every matrix, embedding and bias ``N(0, 0.02^2)`` (the config's
    ``initializer_range``; biases random too, so they matter), norm weights 1. The same
    ``seed`` gives the same weights in every process. Weights are allocated once, in
    ``dtype``, and drawn in chunks
    (:func:`edgewise.models.shapes.random_shape_hf_model`)."""
    mib_hf_config(name, n_layers)  # the checks and messages of this module
    from edgewise.models.shapes import random_shape_hf_model

    return random_shape_hf_model(name, n_layers, 1, seed, dtype)


def random_mib_bridge(name: str = "qwen2.5", n_layers: int | None = None, seed: int = 0,
                      dtype: torch.dtype = torch.float32) -> Any:  # fmt: skip
    """A ``TransformerBridge`` over :func:`random_mib_hf_model` (a word-level tokenizer
    over the whole vocabulary; nothing is downloaded). ``patchable_model(bridge,
    ungroup_kv=True)`` gives MIB's graph of the model (179,749 edges for Qwen2.5-0.5B).

    Memory: the weights (``MIBModel.n_params`` times the dtype's size; 1.98 GB for
    Qwen2.5-0.5B in float32) plus the tokenizer."""
    from edgewise.models.kinds import load_hf_bridge, word_tokenizer

    hf = random_mib_hf_model(name, n_layers, seed, dtype)
    tok = word_tokenizer([f"w{i}" for i in range(hf.config.vocab_size - 3)])
    return load_hf_bridge(hf, tokenizer=tok, dtype=dtype)


__all__ = ["RANDOM_MIB_MODELS", "mib_hf_config", "random_mib_bridge", "random_mib_hf_model"]
