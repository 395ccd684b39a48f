"""Models edgewise runs on: which TransformerLens kind (``HookedTransformer`` or
``TransformerBridge``) a model is, random models of any shape for tests, and the adapter
that hides the kinds' differences from the rest of edgewise.

Modules: ``kinds`` (building and loading models), ``convert`` (TransformerLens weights to
an equivalent Hugging Face GPT-2), ``adapter`` (:class:`HookAdapter`), ``ungroup``
(grouped-query attention with one key/value input per query head on bridges).
"""

from edgewise.models.adapter import HookAdapter
from edgewise.models.kinds import (
    ARCHS,
    ModelKind,
    from_tl_weights,
    hooked_transformer_available,
    load_hf_bridge,
    load_pretrained,
    random_bridge,
    random_hf_model,
    random_hooked_transformer,
    random_model,
    resolve_kind,
    vocab_tokenizer,
    word_tokenizer,
)
from edgewise.models.ungroup import bridge_kv_ungrouped, set_bridge_ungrouped_kv

__all__ = [
    "ARCHS",
    "HookAdapter",
    "ModelKind",
    "bridge_kv_ungrouped",
    "from_tl_weights",
    "hooked_transformer_available",
    "load_hf_bridge",
    "load_pretrained",
    "random_bridge",
    "random_hf_model",
    "random_hooked_transformer",
    "random_model",
    "resolve_kind",
    "set_bridge_ungrouped_kv",
    "vocab_tokenizer",
    "word_tokenizer",
]
