"""Train the shipped ``toy-ioi`` model and write its weights, config, vocabulary and the
clean/corrupt dataset into the package.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/train_toy_ioi.py

Deterministic: fixed seeds for the weights and for every training batch,
``torch.use_deterministic_algorithms(True)`` and a fixed number of CPU threads
(``--threads``, default 1: this tiny model trains fastest on one thread, and 2 threads
were 10-100x slower on a shared 2-core machine), so the same torch
build on the same CPU writes the same weights on every run (a different torch
version or CPU may change the last bits of the floating point sums).

The model is trained with next-token cross-entropy over the whole vocabulary **at the
final position only** (the answer after ``to``); the loss ignores all other positions.
Batches are drawn from the training split of :mod:`edgewise.benchmarks.toy_models` (training
name pairs and training templates, both orders ABBA/BABA). Accuracy is reported on
fresh prompts of every split; the held-out splits never occur in training.

Outputs (``--out``, default ``src/edgewise/weights/toy_ioi``): ``model.safetensors``
(float32 parameters), ``config.json`` (``HookedTransformerConfig`` fields),
``vocab.json`` (token strings in id order) and ``training.json`` (hyperparameters and
accuracies); and ``--dataset`` (default ``src/edgewise/datasets/toy_ioi.json``): 512
clean/ABC-corrupt prompt pairs from the held-out split.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

from edgewise.benchmarks.toy_models import (  # noqa: E402
    TOY_IOI_SEQ_LABELS,
    TOY_IOI_SEQ_LEN,
    TOY_IOI_WORD_IDXS,
    encode,
    sample_toy_ioi_prompts,
    toy_ioi_abc_corrupt,
    toy_ioi_vocab,
)
from edgewise.data import PromptDataset, save_dataset_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SPLITS = ("train", "heldout_pairs", "heldout_templates", "heldout")


def model_config(d_vocab: int, seed: int) -> dict[str, Any]:
    """The ``HookedTransformerConfig`` fields of the toy model (JSON-ready)."""
    return {
        "n_layers": 2,
        "d_model": 64,
        "n_heads": 4,
        "d_head": 16,
        "d_mlp": 256,
        "d_vocab": d_vocab,
        "n_ctx": TOY_IOI_SEQ_LEN,
        "act_fn": "gelu",
        "normalization_type": "LN",
        "positional_embedding_type": "standard",
        "attn_only": False,
        "default_prepend_bos": True,
        "model_name": "toy-ioi",
        "seed": seed,
        "dtype": "float32",
    }


def prompt_tensors(n: int, split: str, seed: int, vocab: list[str]) -> dict[str, torch.Tensor]:
    """``n`` prompts of ``split``: ``tokens [n, 15]``, ``io [n]``, ``s [n]`` token ids."""
    prompts = sample_toy_ioi_prompts(n, split, seed)  # type: ignore[arg-type]
    index = {w: i for i, w in enumerate(vocab)}
    return {
        "tokens": torch.tensor([encode(p.words, vocab) for p in prompts]),
        "io": torch.tensor([index[p.io] for p in prompts]),
        "s": torch.tensor([index[p.s] for p in prompts]),
    }


@torch.no_grad()
def evaluate(model: HookedTransformer, data: dict[str, torch.Tensor]) -> dict[str, float]:
    """Accuracy (IO logit > S logit), top-1 accuracy and mean IO-S logit difference at the
    last position."""
    logits = model(data["tokens"])[:, -1]  # [n, vocab]
    io = logits.gather(1, data["io"][:, None])[:, 0]
    s = logits.gather(1, data["s"][:, None])[:, 0]
    return {
        "acc_io_vs_s": (io > s).float().mean().item(),
        "top1": (logits.argmax(-1) == data["io"]).float().mean().item(),
        "logit_diff": (io - s).mean().item(),
    }


def build_dataset(n: int, seed: int, vocab: list[str]) -> PromptDataset:
    """``n`` clean/ABC-corrupt pairs from the held-out split (held-out names and
    templates): answers ``[IO]``, wrong answers ``[S]``."""
    prompts = sample_toy_ioi_prompts(n, "heldout", seed)
    rng = random.Random(seed + 1)
    index = {w: i for i, w in enumerate(vocab)}
    return PromptDataset(
        [encode(p.words, vocab) for p in prompts],
        [encode(toy_ioi_abc_corrupt(p, rng), vocab) for p in prompts],
        [[index[p.io]] for p in prompts],
        [[index[p.s]] for p in prompts],
        vocab_size=len(vocab),
        seq_labels=TOY_IOI_SEQ_LABELS,
        word_idxs=TOY_IOI_WORD_IDXS,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=ROOT / "src/edgewise/weights/toy_ioi")
    parser.add_argument("--dataset", type=Path, default=ROOT / "src/edgewise/datasets/toy_ioi.json")
    parser.add_argument("--n-dataset", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 is fastest for this tiny model on a busy machine; "
                        "the written weights are checked for this value)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    start = time.time()

    vocab = toy_ioi_vocab()
    cfg_fields = model_config(len(vocab), args.seed)
    model = HookedTransformer(HookedTransformerConfig(**{**cfg_fields, "dtype": torch.float32}))  # weights seeded by cfg.seed
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98),
                            weight_decay=args.weight_decay)
    warmup = 100
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: min(1.0, (step + 1) / warmup)
        * 0.5 * (1 + math.cos(math.pi * step / args.steps))
    )
    evals = {split: prompt_tensors(2000, split, 10_000 + i, vocab) for i, split in enumerate(SPLITS)}

    for step in range(args.steps):
        batch = prompt_tensors(args.batch_size, "train", args.seed * 1_000_003 + step, vocab)
        logits = model(batch["tokens"])[:, -1]  # [batch, vocab]
        loss = F.cross_entropy(logits, batch["io"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 250 == 0 or step == args.steps - 1:
            model.eval()
            ev = evaluate(model, evals["heldout"])
            model.train()
            print(f"step {step:5d} loss {loss.item():.4f} heldout acc {ev['acc_io_vs_s']:.4f} "
                  f"top1 {ev['top1']:.4f} logit diff {ev['logit_diff']:.2f} "
                  f"({time.time() - start:.0f}s)", flush=True)

    model.eval()
    results = {split: evaluate(model, data) for split, data in evals.items()}
    for split, r in results.items():
        print(f"{split:>18}: " + ", ".join(f"{k} {v:.4f}" for k, v in r.items()))

    args.out.mkdir(parents=True, exist_ok=True)
    params = {n: p.detach().contiguous().float() for n, p in model.named_parameters()}
    save_file(params, str(args.out / "model.safetensors"), metadata={"model": "toy-ioi"})
    os.chmod(args.out / "model.safetensors", 0o644)
    (args.out / "config.json").write_text(json.dumps(cfg_fields, indent=2) + "\n")
    (args.out / "vocab.json").write_text(json.dumps(vocab) + "\n")
    training = {
        "seed": args.seed, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
        "weight_decay": args.weight_decay, "warmup_steps": warmup, "schedule": "cosine",
        "optimizer": "AdamW(betas=(0.9, 0.98)), grad clip 1.0",
        "loss": "cross-entropy over the vocabulary at the final position only",
        "eval_prompts_per_split": 2000, "eval": results,
        "threads": args.threads, "torch": torch.__version__, "seconds": round(time.time() - start, 1),
    }
    (args.out / "training.json").write_text(json.dumps(training, indent=2) + "\n")
    dataset = build_dataset(args.n_dataset, seed=20_000, vocab=vocab)
    save_dataset_json(args.dataset, dataset)
    print(f"wrote {args.out} and {args.dataset} in {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
