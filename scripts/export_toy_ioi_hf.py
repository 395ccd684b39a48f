"""Write the shipped toy IOI model as a Hugging Face GPT-2 checkpoint beside its
TransformerLens-format weights (``src/edgewise/weights/toy_ioi/hf/``), so that
``TransformerBridge.boot_transformers(DIR)`` loads it on TransformerLens 4.x.

    python scripts/export_toy_ioi_hf.py

The unembedding bias is folded into the final LayerNorm's bias (``W_U`` has full column
rank), so the checkpoint is a plain GPT-2; ``tests/models/test_models.py`` checks that it gives
the ``HookedTransformer``'s logits.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from edgewise.benchmarks.toy_models import (  # noqa: E402
    HF_DIR,
    load_config,
    load_vocab,
    load_weights,
    toy_ioi_tokenizer,
)
from edgewise.models.convert import hf_gpt2_from_tl  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    out = ROOT / "src" / "edgewise" / "weights" / "toy_ioi" / HF_DIR
    export = hf_gpt2_from_tl(load_config("toy-ioi"), load_weights("toy-ioi"))
    if not export.plain:
        raise SystemExit(f"the toy IOI model does not convert to a plain GPT-2: {list(export.swaps)}")
    tok = toy_ioi_tokenizer(load_vocab("toy-ioi"))
    for cfg in (export.model.config, export.model.generation_config):
        cfg.bos_token_id = cfg.eos_token_id = tok.bos_token_id
        cfg.pad_token_id = tok.pad_token_id
    if out.exists():
        shutil.rmtree(out)
    export.model.save_pretrained(out)
    tok.save_pretrained(out)
    print(f"wrote {out}: {sorted(p.name for p in out.iterdir())}")


if __name__ == "__main__":
    main()
