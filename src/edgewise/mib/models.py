"""The four MIB models' shapes, and the memory edge attribution patching (EAP) needs for
each model and task: ``edgewise mib memory``.

Shapes are the public Hugging Face configs (``config.json`` of ``gpt2``,
``Qwen/Qwen2.5-0.5B``, ``google/gemma-2-2b``, ``meta-llama/Llama-3.1-8B``), written
here by hand (nothing is downloaded). MIB loads GPT-2 in float32 and the others in
bfloat16 (``run_attribution.py``), and pairs models with tasks as its results table does
(``MIB_circuit_track/utils.py``: ``COL_MAPPING``).

Bytes of one EAP pass over ``p`` prompts of ``s`` tokens:

- **weights**: every parameter once (tied embeddings once), exact for the config;
- **patch buffers**: :func:`edgewise.runtime.memory.pass_bytes` on the model's graph
  (two ``[n_srcs, p, s, d_model]`` buffers and a block's float32 gradient rows), exact for
  edgewise's buffers;
- **activations**: what autograd keeps for the backward pass of a patched pass whose
  parameters require no gradient (``param_grads=False``: a linear layer then keeps its
  weight, not its input), counted with ``torch.autograd.graph.saved_tensors_hooks`` on
  bridges of each shape and tested per layer in ``tests/mib/test_mib_models.py``. Per
  token and layer: with LayerNorm (GPT-2, GPT-NeoX) ``3 d_model`` (GPT-2; ``1`` in
  GPT-NeoX's parallel block) ``+ 6 H d_head + H s`` in the model's dtype; with a
  Hugging Face RMSNorm, which normalises in float32 (Qwen 2, Llama, Gemma 2), ``2 d_model``
  (Gemma 2's four norms: ``4``) float32 inputs, ``3 H d_head`` and ``H s`` in the
  model's dtype and ``2 H s`` float32 scores; plus :data:`MLP_TENSORS` ``d_mlp``; plus,
  where Q/K/V cannot be patched after the projection (Gemma 2's post-attention norm;
  grouped K/V, which MIB ungroups), the norm's input of every query, key and value head's
  patched row (``3 H d_model``, float32 under an RMSNorm). Per layer, ungrouped K/V also
  keep their per-head weights (``2 H d_model d_head``). Per prompt, the float32 logits
  with their log-softmax at the one output position (``2 d_vocab``; the unembedding runs
  there only, :meth:`PatchableModel.outputs`). Measured on bridges at the real shapes
  (``bench/bench_shapes.py``): within 15%;
- **bridge copies**: a ``TransformerBridge`` over GPT-2 or GPT-NeoX splits the fused Q/K/V
  projection into separate Q, K and V weights, a second copy of ``3 d_model^2 + 3 d_model``
  per layer (:func:`bridge_copy_bytes`);

Prompt lengths: MIB's code states none, and the real data and tokenizers are not here,
so :data:`ASSUMED_SEQ_LEN` are *assumptions* (order of magnitude from the tasks' prompt
shapes); pass ``--seq-len`` for measured ones.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import lru_cache
from types import SimpleNamespace
from typing import Any

import torch

from edgewise.checks import cli_int, require_int
from edgewise.graph.build import Graph, GraphSpec, build_graph
from edgewise.runtime.memory import human, memory_arg, parse_memory, pass_bytes

__all__ = [
    "ASSUMED_SEQ_LEN",
    "MIB_MODELS",
    "MIB_PAIRS",
    "MIBModel",
    "MemoryPlan",
    "MLP_TENSORS",
    "activation_bytes",
    "bridge_copy_bytes",
    "eap_memory",
    "patched_row_bytes",
    "run_memory",
]


@dataclass(frozen=True)
class MIBModel:
    """One model's shape (Hugging Face config names in comments).

    Attributes:
        name: MIB's short name; hf_name: the Hugging Face id; arch: edgewise's
            :data:`~edgewise.models.kinds.Arch`.
        n_layers, d_model, n_heads, n_kv_heads, d_head, d_mlp, d_vocab: the shape.
        n_positions: learned position embeddings (GPT-2), else 0 (rotary).
        tied: the unembedding is the embedding.
        layer_norm: LayerNorm with bias (GPT-2) rather than RMSNorm.
        norms_per_block: 2, or 4 for Gemma 2 (pre and post norms).
        gated_mlp: gate and up projections (SwiGLU/GeGLU).
        qkv_bias, out_bias, mlp_bias: which projections have biases.
        dtype: MIB's dtype.
        parallel: attention and MLP read the same residual (GPT-NeoX/Pythia).
    """

    name: str
    hf_name: str
    arch: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_positions: int = 0
    tied: bool = True
    layer_norm: bool = False
    norms_per_block: int = 2
    gated_mlp: bool = True
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    dtype: torch.dtype = torch.bfloat16
    parallel: bool = False

    @property
    def n_params(self) -> int:
        """Parameters, each once."""
        d, q, kv = self.d_model, self.n_heads * self.d_head, self.n_kv_heads * self.d_head
        attn = d * q + 2 * d * kv + q * d
        attn += (q + 2 * kv) * self.qkv_bias + d * self.out_bias
        mlp = (3 if self.gated_mlp else 2) * d * self.d_mlp
        mlp += (self.d_mlp + d) * self.mlp_bias
        norm = d * (2 if self.layer_norm else 1)
        block = attn + mlp + self.norms_per_block * norm
        embed = self.d_vocab * d * (1 if self.tied else 2) + self.n_positions * d
        return embed + self.n_layers * block + norm

    @property
    def spec(self) -> GraphSpec:
        """MIB's graph: with grouped-query attention every query head still has its own
        K and V input (TransformerLens' ``ungroup_grouped_query_attention``, as MIB and
        ``edgewise mib`` load the models)."""
        return GraphSpec(self.n_layers, self.n_heads, self.n_heads,
                         parallel_attn_mlp=self.parallel)  # fmt: skip

    @property
    def qkv_projected(self) -> bool:
        """Whether edgewise patches Q/K/V after the projection (no per-head copies of the
        residual stream) as MIB loads the model: blocks without a norm after their
        attention (not Gemma 2) and one key/value head per query head (grouped K/V are
        ungrouped for MIB's graph, and each query head's K/V input is then patched
        before the projection)."""
        return self.norms_per_block == 2 and self.n_kv_heads == self.n_heads

    @property
    def item(self) -> int:
        return torch.empty(0, dtype=self.dtype).element_size()


MIB_MODELS: dict[str, MIBModel] = {
    m.name: m
    for m in (
        MIBModel("gpt2", "gpt2", "gpt2", 12, 768, 12, 12, 64, 3072, 50257, n_positions=1024,
                 layer_norm=True, gated_mlp=False, qkv_bias=True, out_bias=True,
                 mlp_bias=True, dtype=torch.float32),
        MIBModel("qwen2.5", "Qwen/Qwen2.5-0.5B", "qwen2", 24, 896, 14, 2, 64, 4864, 151936,
                 qkv_bias=True),
        MIBModel("gemma2", "google/gemma-2-2b", "gemma2", 26, 2304, 8, 4, 256, 9216, 256000,
                 norms_per_block=4),
        MIBModel("llama3", "meta-llama/Llama-3.1-8B", "llama", 32, 4096, 32, 8, 128, 14336,
                 128256, tied=False),
    )
}  # fmt: skip
"""MIB's models by MIB's short name."""

MIB_PAIRS: tuple[tuple[str, str], ...] = (
    ("ioi", "gpt2"), ("ioi", "qwen2.5"), ("ioi", "gemma2"), ("ioi", "llama3"),
    ("mcqa", "qwen2.5"), ("mcqa", "gemma2"), ("mcqa", "llama3"),
    ("arithmetic_addition", "llama3"), ("arithmetic_subtraction", "llama3"),
    ("arc_easy", "gemma2"), ("arc_easy", "llama3"), ("arc_challenge", "llama3"),
)  # fmt: skip
"""The (task, model) pairs of MIB's results table."""

ASSUMED_SEQ_LEN: dict[str, int] = {
    "ioi": 24, "mcqa": 64, "arithmetic_addition": 16, "arithmetic_subtraction": 16,
    "arc_easy": 128, "arc_challenge": 160,
}  # fmt: skip
"""Assumed (not measured) prompt lengths per task, BOS included; see the module docstring."""


MLP_TENSORS: dict[str, int] = {"gpt2": 4, "neox": 1}
"""``[d_mlp]`` tensors autograd keeps per token in the MLP, by architecture: GPT-2's tanh
GELU, written out in Python, keeps four, GPT-NeoX's GELU one, the gated MLPs of Qwen 2,
Gemma 2 and Llama three (gate, up, activation)."""


def patched_row_bytes(model: MIBModel) -> int:
    """Bytes per token and ``d_model`` that autograd keeps for one patched Q/K/V row: the
    norm's input, float32 under a Hugging Face RMSNorm."""
    return model.item if model.layer_norm else max(model.item, 4)


def activation_bytes(model: MIBModel, prompts: int, seq: int) -> int:
    """The bytes autograd keeps for one backward pass of EAP (module docstring), for
    ``prompts`` prompts of ``seq`` tokens read at their last position."""
    d, hd, hs, item = model.d_model, model.n_heads * model.d_head, model.n_heads * seq, model.item
    if model.layer_norm:
        per_token = ((1 if model.parallel else 3) * d + 6 * hd + hs) * item
    else:
        per_token = (4 if model.norms_per_block == 4 else 2) * d * 4 + (3 * hd + hs) * item + 2 * hs * 4
    per_token += MLP_TENSORS.get(model.arch, 3) * model.d_mlp * item
    if not model.qkv_projected:
        per_token += 3 * model.n_heads * d * patched_row_bytes(model)
    ungrouped = model.n_kv_heads < model.n_heads  # MIB's per-head K/V weights, kept per layer
    kv_weights = 2 * model.n_heads * d * model.d_head * item * ungrouped
    return model.n_layers * (prompts * seq * per_token + kv_weights) + prompts * 2 * model.d_vocab * 4


def bridge_copy_bytes(model: MIBModel) -> int:
    """Bytes a ``TransformerBridge`` holds beyond the Hugging Face weights: the fused Q/K/V
    projection of GPT-2 and GPT-NeoX (Pythia) split into separate copies (0 for the
    architectures with separate projections)."""
    if model.arch not in ("gpt2", "neox"):
        return 0
    return model.n_layers * (3 * model.d_model**2 + 3 * model.d_model) * model.item


@lru_cache(maxsize=8)
def _graph(spec: GraphSpec) -> Graph:
    return build_graph(spec)


def _shape(graph: Graph, d_model: int, dtype: torch.dtype) -> Any:
    """What :func:`pass_bytes` reads of a patchable model, without the model."""
    return SimpleNamespace(
        cfg=SimpleNamespace(d_model=d_model),
        wrapped_model=SimpleNamespace(parameters=lambda: iter([torch.empty(0, dtype=dtype)])),
        graph=graph,
    )


def _src_blocks(graph: Graph, max_srcs: int) -> list[tuple[int, int]]:
    from edgewise.patching.model import PatchableModel

    return PatchableModel.src_blocks(SimpleNamespace(graph=graph), max_srcs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class MemoryPlan:
    """The bytes of one model x task and how a batch fits a budget.

    Attributes:
        weights, activations, buffers: bytes for the whole batch in one pass (weights
            with the bridge's copies, :func:`bridge_copy_bytes`).
        chunk: prompts per pass (0: does not fit); blocks: source blocks per pass.
    """

    task: str
    model: str
    seq: int
    batch: int
    n_srcs: int
    n_edges: int
    weights: int
    activations: int
    buffers: int
    chunk: int
    blocks: int

    @property
    def total(self) -> int:
        return self.weights + self.activations + self.buffers


def eap_memory(model: MIBModel, task: str, seq: int, batch: int, budget: int | None) -> MemoryPlan:
    """The bytes EAP needs for ``batch`` prompts of ``seq`` tokens, and the plan that
    fits ``budget`` bytes as :func:`edgewise.runtime.memory.plan_passes` chooses it (all
    prompts in one pass, else fewer prompts per pass, else one prompt and source blocks),
    counting weights and activations against the budget too."""
    seq, batch = require_int(seq, "seq", 1), require_int(batch, "batch", 1)
    graph = _graph(model.spec)
    shape = _shape(graph, model.d_model, model.dtype)
    n = len(graph.srcs)
    weights = model.n_params * model.item + bridge_copy_bytes(model)

    def total(prompts: int, n_srcs: int) -> int:
        return (
            weights
            + activation_bytes(model, prompts, seq)
            + pass_bytes(shape, prompts, seq, n_srcs)
        )

    chunk, blocks = batch, 1
    if budget is not None and total(batch, n) > budget:
        per_prompt = total(2, n) - total(1, n)  # the rest is per pass: weights, K/V copies
        chunk = max(0, min(batch, (budget - total(1, n) + per_prompt) // per_prompt))
        if chunk == 0:
            per_src = total(1, 1) - total(1, 0)
            max_srcs = (budget - total(1, 0)) // per_src
            widest = max(m.src_hi - m.src_lo for m in graph.src_modules)
            if max_srcs >= widest:
                chunk, blocks = 1, len(_src_blocks(graph, int(max_srcs)))
    return MemoryPlan(task, model.name, seq, batch, n, graph.n_edges, weights,
                      activation_bytes(model, batch, seq), pass_bytes(shape, batch, seq, n),
                      chunk, blocks)  # fmt: skip


def _describe(plan: MemoryPlan, budget: int | None) -> str:
    if budget is None or plan.total <= budget:
        return "fits" if budget is not None else "-"
    if plan.chunk == 0:
        return "does not fit"
    if plan.blocks > 1:
        return f"1 prompt/pass, {plan.blocks} source blocks"
    return f"{plan.chunk} prompts/pass"


def run_memory(args: argparse.Namespace) -> list[MemoryPlan]:
    """``edgewise mib memory``: print the table; return its rows. The plan is for
    ``--device`` (``--max-memory auto``: half its free memory) and ``--dtype`` (default:
    each model's MIB dtype)."""
    import dataclasses

    from edgewise.runtime.resolve import resolve_device, resolve_dtype

    device = resolve_device(getattr(args, "device", None))
    budget = parse_memory(args.max_memory, torch.device(device))
    dtype = resolve_dtype(args.dtype) if getattr(args, "dtype", None) else None
    pairs = MIB_PAIRS if not args.all else tuple(
        (t, m) for t in ASSUMED_SEQ_LEN for m in MIB_MODELS
    )  # fmt: skip
    plans = []
    for task, name in pairs:
        seq = args.seq_len or ASSUMED_SEQ_LEN[task]
        model = MIB_MODELS[name] if dtype is None else dataclasses.replace(MIB_MODELS[name],
                                                                           dtype=dtype)
        plans.append(eap_memory(model, task, seq, args.batch_size, budget))
    head = (f"{'task':<24}{'model':<9}{'seq':>5}{'edges':>10}{'weights':>11}"
            f"{'activations':>13}{'buffers':>11}{'total':>11}  plan")  # fmt: skip
    print(head)
    for p in plans:
        print(f"{p.task:<24}{p.model:<9}{p.seq:>5}{p.n_edges:>10}{human(p.weights):>11}"
              f"{human(p.activations):>13}{human(p.buffers):>11}{human(p.total):>11}  "
              f"{_describe(p, budget)}")  # fmt: skip
    print(f"device: {device}" + (f", budget {human(budget)}" if budget is not None else ""))
    if not args.seq_len:
        print(
            "seq: assumed prompt lengths, not measured (pass --seq-len); activations "
            "are an estimate"
        )
    return plans


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``edgewise mib memory``."""
    p = sub.add_parser("memory", help="bytes EAP needs per MIB model and task")
    p.add_argument("--max-memory", default=None, type=memory_arg, help="a budget such as 80GiB")
    p.add_argument("--batch-size", type=cli_int(1), default=20, help="prompts per batch (MIB: 20)")
    p.add_argument("--seq-len", type=cli_int(1), default=None, help="prompt length for every task")
    p.add_argument("--all", action="store_true", help="every model x task, not MIB's pairs")
    from edgewise.runtime.resolve import add_device_arguments

    add_device_arguments(p, kind=False, dtype_help="the models' dtype (default: each model's "
                         "MIB dtype, bfloat16 but float32 for gpt2)")
    p.set_defaults(mib_run=run_memory)
