"""A cost model (FLOPs and bytes) of edgewise's algorithms per model shape, and the
time it projects on a GPU from stated figures. A *projection*, never a measurement:
every number it gives is printed marked PROJECTION, with the figures it assumed.

Counts (``T`` = prompts x tokens of one batch, ``E`` edges, ``d`` d_model):

- a forward pass ``F``: ``2 T (params - embedding)`` for the matrices, ``4 T s H d_head``
  per layer for attention (scores and mixing), ``2 T d d_vocab`` for the unembedding;
- the patch products of one patched pass ``P = 2 E T d``: every edge's mask multiplies
  its source's ``patch - current`` at each token (edgewise's ``mask @ delta``);
- the floor: corrupt forward, clean forward, backward to the inputs: ``3 F``;
- EAP: the floor plus the patch products, forward and backward (the gradient to the
  masks and to ``delta``): ``3 F + 3 P``;
- EAP-IG on inputs, ``m`` steps: two plain forwards, then per step a patched forward and
  its backward: ``2 F + m (2 F + 3 P)``;
- ACDC, ``n_taus`` thresholds: every edge tested once per threshold, each test a forward
  from the edge's destination block (half the layers on average) with the output
  position alone unembedded: ``n_taus E (F_body / 2)``, ``F_body`` without the unembedding.

Bytes moved: the weights once per pass (three passes for EAP and the floor) and the two
patch buffers ``2 n_srcs T d`` (written once, read by every block's product, taken as
three times). Time = ``max(FLOPs / (peak x efficiency), bytes / (bandwidth x
efficiency)) + kernels x launch``, with ``kernels`` about 40 per layer per pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Gpu:
    """The figures a projection assumes (dense, no sparsity)."""

    name: str = "H100 SXM (assumed)"
    bf16_flops: float = 989e12  # tensor cores, dense
    fp32_flops: float = 67e12  # CUDA cores: torch's default, TF32 matmuls off
    bandwidth: float = 3.35e12  # HBM3, bytes/s
    flop_efficiency: float = 0.5
    byte_efficiency: float = 0.7
    launch_s: float = 6e-6  # per kernel, eager PyTorch
    memory: float = 80e9

    def describe(self) -> str:
        return (f"{self.name}: {self.bf16_flops / 1e12:.0f} TFLOP/s bf16, "
                f"{self.fp32_flops / 1e12:.0f} TFLOP/s fp32, {self.bandwidth / 1e12:.2f} TB/s, "
                f"{self.flop_efficiency:.0%} of peak FLOPs, {self.byte_efficiency:.0%} of "
                f"bandwidth, {self.launch_s * 1e6:.0f} us per kernel launch")  # fmt: skip


H100 = Gpu()


def forward_flops(m: Any, prompts: int, seq: int, unembed: bool = True) -> float:
    """FLOPs of one forward pass of shape ``m`` (an ``MIBModel``) over ``prompts x seq``."""
    tokens = prompts * seq
    embed = m.d_vocab * m.d_model + m.n_positions * m.d_model
    matrices = m.n_params - embed - (0 if m.tied else m.d_vocab * m.d_model)
    attn = 4 * tokens * seq * m.n_heads * m.d_head * m.n_layers
    out = 2 * tokens * m.d_model * m.d_vocab if unembed else 0
    return 2 * tokens * matrices + attn + out


def patch_flops(m: Any, n_edges: int, prompts: int, seq: int) -> float:
    return 2.0 * n_edges * prompts * seq * m.d_model


@dataclass(frozen=True)
class Cost:
    flops: float
    bytes: float
    passes: float

    def seconds(self, gpu: Gpu, layers: int, dtype: torch.dtype) -> float:
        peak = gpu.bf16_flops if dtype in (torch.bfloat16, torch.float16) else gpu.fp32_flops
        work = max(self.flops / (peak * gpu.flop_efficiency),
                   self.bytes / (gpu.bandwidth * gpu.byte_efficiency))  # fmt: skip
        return work + self.passes * 40 * layers * gpu.launch_s


def cost(algo: str, m: Any, n_edges: int, n_srcs: int, prompts: int, seq: int,
         steps: int = 5, n_taus: int = 20) -> Cost:  # fmt: skip
    """FLOPs, bytes and passes of ``algo`` (``floor``, ``eap``, ``eap-ig``, ``acdc``) on
    one batch of ``prompts x seq`` tokens (module docstring)."""
    f = forward_flops(m, prompts, seq)
    p = patch_flops(m, n_edges, prompts, seq)
    w = m.n_params * m.item
    buf = 3 * 2 * n_srcs * prompts * seq * m.d_model * m.item
    if algo == "floor":
        return Cost(3 * f, 3 * w, 3)
    if algo == "eap":
        return Cost(3 * f + 3 * p, 3 * w + buf, 3)
    if algo == "eap-ig":
        return Cost(2 * f + steps * (2 * f + 3 * p), (2 + 2 * steps) * w + steps * buf,
                    2 + 2 * steps)  # fmt: skip
    if algo == "acdc":
        body = forward_flops(m, prompts, seq, unembed=False)
        tests = n_taus * n_edges
        return Cost(tests * body / 2, tests * w / 2, tests / 2)
    raise ValueError(f"unknown algorithm {algo!r}; choose floor, eap, eap-ig or acdc")


def main() -> None:
    """PROJECTION table: every shape at MIB's IOI length, 20 prompts a batch."""
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from edgewise.graph.build import build_graph
    from edgewise.mib.models import ASSUMED_SEQ_LEN, eap_memory
    from edgewise.models.shapes import SHAPES

    seq, batch = ASSUMED_SEQ_LEN["ioi"], 20
    print(f"PROJECTION, {H100.describe()}; {batch} prompts x {seq} tokens (MIB IOI, assumed length)")
    print(f"{'model':<13}{'dtype':<10}{'edges':>10}{'EAP ms/prompt':>15}{'IG(5) ms/prompt':>17}"
          f"{'peak GiB (EAP)':>16}")  # fmt: skip
    for name, m in SHAPES.items():
        g = build_graph(m.spec)
        ms = [cost(a, m, g.n_edges, len(g.srcs), batch, seq).seconds(H100, m.n_layers, m.dtype)
              * 1e3 / batch for a in ("eap", "eap-ig")]  # fmt: skip
        peak = eap_memory(m, "ioi", seq, batch, None).total / 2**30
        print(f"{name:<13}{str(m.dtype).removeprefix('torch.'):<10}{g.n_edges:>10}{ms[0]:>15.2f}"
              f"{ms[1]:>17.2f}{peak:>16.1f}")  # fmt: skip


__all__ = ["H100", "Cost", "Gpu", "cost", "forward_flops", "patch_flops"]

if __name__ == "__main__":
    main()
