"""Why ``use_attn_result`` is expensive: TransformerLens (3.9) computes every head's
attention output as ``(z[..., None] * W_O).sum(-2)``, which materializes a
``[batch, pos, n_heads, d_head, d_model]`` tensor in every layer. A batched matmul
gives the same ``[batch, pos, n_heads, d_model]`` result without it.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_attn_result.py [--device cuda]

Prints per-layer milliseconds (forward only, no grad; min of ``--repeats``) of the
TransformerLens expression, of ``einsum("bphd,hdm->bphm")`` and of the plain W_O
projection (flags off), for GPT-2 small's attention shapes.
"""

from __future__ import annotations

import argparse
import time

import torch

from common import add_common_args, machine_line, print_table, setup_torch, sync


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_common_args(p)
    p.add_argument("--sizes", default="8x16,32x32", help="batch shapes, BATCHxSEQ,...")
    args = p.parse_args()
    device = setup_torch(args)
    print(f"bench_attn_result | {machine_line(device)}")
    n_heads, d_head, d_model = 12, 64, 768
    w = torch.randn(n_heads, d_head, d_model, device=device)
    rows = []
    for size in args.sizes.split(","):
        b, s = (int(x) for x in size.split("x"))
        z = torch.randn(b, s, n_heads, d_head, device=device)
        fns = {
            "TL use_attn_result: (z*W_O).sum(-2)": lambda z=z: (z[..., None] * w).sum(-2),
            "einsum bphd,hdm->bphm": lambda z=z: torch.einsum("bphd,hdm->bphm", z, w),
            "flags off: z @ W_O (summed heads)":
                lambda z=z: z.flatten(-2) @ w.reshape(-1, d_model),
        }
        ref = fns["einsum bphd,hdm->bphm"]()
        assert torch.allclose(fns["TL use_attn_result: (z*W_O).sum(-2)"](), ref, atol=1e-3)
        temp = b * s * n_heads * d_head * d_model * 4 / 2**20
        for name, fn in fns.items():
            fn()
            ts = []
            for _ in range(args.repeats):
                sync(device)
                t0 = time.perf_counter()
                fn()
                sync(device)
                ts.append(time.perf_counter() - t0)
            rows.append([f"{b}x{s}", name, min(ts) * 1000,
                         f"{temp:.0f}" if name.startswith("TL") else "-"])
    print_table(["batch", "per-layer computation", "min ms", "temp MiB"], rows,
                title="one layer's attention output (x12 layers per forward pass)")


if __name__ == "__main__":
    main()
