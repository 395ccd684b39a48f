"""Passes that start mid-model on a TransformerBridge (its own block modules, called with
the inputs its Hugging Face model gives them) equal the full patched pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgewise import patchable_model
from edgewise.models import random_bridge
from edgewise.models.bridge_blocks import (
    BlockInputsUnknown,
    record_block_inputs,
    repeat_block_inputs,
    run_blocks_from,
)
from edgewise.patching import engine

from reference import reference_patched_logits

VOCAB = 20
N_LAYERS = 3


def _masks(pm, gen, start):
    """Random binary masks, 0 on every destination before block ``start``."""
    return {n: (torch.rand(m.mask_shape, generator=gen) < 0.5).double() * float(m.block >= start)
            for n, m in pm.dest_modules.items()}  # fmt: skip


@pytest.mark.parametrize(
    ("arch", "seq"),
    [("gpt2", False), ("gpt2", True), ("llama", False), ("llama", True), ("qwen2", False),
     ("neox", False), ("gemma2", True)],
)  # fmt: skip
def test_a_bridge_pass_from_every_start_block_equals_the_reference(arch, seq):
    """Every start block, one module's masks per copy (2 copies), the rest shared: the
    pass from the clean residual stream gives the reference patcher's logits (float64,
    1e-12).
    Llama, Qwen 2, Gemma 2: rotary embeddings and grouped-query attention (2 key/value
    heads of 4); Gemma 2 also a sliding window (4) shorter than the prompts, so its
    blocks get different attention masks; GPT-NeoX: parallel attention and MLP. Clean
    and corrupt prompts share a 2-token prefix, which the passes skip (each attention
    given the prefix's clean keys and values), except in one case where the first
    tokens differ."""
    model = random_bridge(arch, n_layers=N_LAYERS, d_vocab=VOCAB, dtype=torch.float64,
                          n_kv_heads=2 if arch in ("llama", "qwen2", "gemma2") else None)  # fmt: skip
    pm = patchable_model(model, seq_len=5 if seq else None)
    assert pm.adapter.runs_partial_forwards and pm.adapter.runs_prefix_skip
    gen = torch.Generator().manual_seed(5)
    clean = torch.randint(3, VOCAB, (3, 5), generator=gen)
    corrupt = torch.randint(3, VOCAB, (3, 5), generator=gen)
    corrupt[:, :2] = clean[:, :2]
    if arch == "gpt2" and seq:  # one pass with no shared prefix: nothing skipped
        corrupt[0, 0] = (clean[0, 0] + 1 - 3) % (VOCAB - 3) + 3
    patch = pm.src_outs(corrupt)
    with torch.inference_mode():
        full = pm(clean)[pm.out_slice]
    run = engine.clean_run(pm, clean, patch, full)
    assert run.partial and run.skip == (0 if arch == "gpt2" and seq else 2)
    assert sorted(run.past) == list(range(N_LAYERS)) if run.skip else not run.past
    for start in range(N_LAYERS):
        masks = _masks(pm, gen, start)
        module = next(n for n, m in pm.dest_modules.items() if m.block == start)
        cand = torch.stack([_masks(pm, gen, 0)[module] for _ in range(2)])
        got = engine.patched_outputs(pm, clean.repeat(2, 1), {**masks, module: cand}, patch,
                                     clean=run, start=start).view(2, *full.shape)  # fmt: skip
        for j in range(2):
            want = reference_patched_logits(pm, clean, {**masks, module: cand[j]}, patch)
            torch.testing.assert_close(got[j], want[pm.out_slice], atol=1e-12, rtol=0)


def test_bridge_block_inputs_run_the_unpatched_model_from_any_block():
    """With no patch at all, the last block's output from each block's recorded input
    residual is the full model's (final norm and unembedding included), also for two
    stacked copies, and also when the pass computes only the positions after a prefix
    of 1..5 tokens (each attention given the prefix's recorded keys and values)."""
    model = random_bridge(
        "llama", n_layers=N_LAYERS, d_vocab=VOCAB, dtype=torch.float64, n_kv_heads=2
    )
    pm = patchable_model(model)
    tokens = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(3))
    resid: dict[int, torch.Tensor] = {}
    handles = [b.register_forward_pre_hook(lambda _m, a, i=i: resid.setdefault(i, a[0].clone()))
               for i, b in enumerate(model.blocks)]  # fmt: skip
    with torch.inference_mode():
        with pm.adapter.recording_keys_values() as kv:
            want = model(tokens)
        for h in handles:
            h.remove()
        assert sorted(kv) == list(range(N_LAYERS))
        assert all(k.shape == v.shape == (2, 2, 6, 4) for k, v in kv.values())  # 2 K/V heads
        inputs = record_block_inputs(model, tokens)
        assert inputs["blocks.0.use_cache"] is False and all(not k.endswith(".cache") or v is None
                                                              for k, v in inputs.items())  # fmt: skip
        twice = repeat_block_inputs(inputs, 2)
        for b in range(N_LAYERS):
            out = pm.adapter.forward_from(b, resid[b], (slice(None),), **inputs)
            torch.testing.assert_close(out, want, atol=1e-12, rtol=0)
            out2 = pm.adapter.forward_from(b, resid[b].repeat(2, 1, 1), (slice(None), -1), **twice)
            torch.testing.assert_close(out2, want[:, -1].repeat(2, 1), atol=1e-12, rtol=0)
            for skip in range(1, 6):
                cut = pm.adapter.cut_start_kwargs(inputs, skip, 6)
                assert cut is not None
                past = [None] * b + [(k[..., :skip, :], v[..., :skip, :]) for k, v in
                                     (kv[i] for i in range(b, N_LAYERS))]  # fmt: skip
                out3 = pm.adapter.forward_from(b, resid[b][:, skip:], (slice(None),), past=past, **cut)
                torch.testing.assert_close(out3, want[:, skip:], atol=1e-12, rtol=0)


def test_a_bidirectional_bridge_computes_every_position():
    """A bridge whose attention is not causal takes no prefix: forward_from refuses
    ``past`` with an error naming the model class, and the clean run skips nothing
    although clean and corrupt prompts share a prefix."""
    model = random_bridge("gpt2", n_layers=2, d_vocab=VOCAB, dtype=torch.float64)
    for block in model.blocks:
        object.__setattr__(block.attn, "is_causal", False)
    pm = patchable_model(model)
    assert pm.adapter.runs_partial_forwards and not pm.adapter.runs_prefix_skip
    gen = torch.Generator().manual_seed(2)
    clean = torch.randint(3, VOCAB, (2, 5), generator=gen)
    corrupt = torch.cat([clean[:, :3], torch.randint(3, VOCAB, (2, 2), generator=gen)], dim=1)
    run = engine.clean_run(pm, clean, pm.src_outs(corrupt))
    assert run.partial and run.skip == 0 and not run.past
    with pytest.raises(ValueError, match=r"^TransformerBridge cannot skip a prefix \(past=\)"):
        pm.adapter.forward_from(1, run.resid[1], (slice(None),), past=[None, None], **run.kwargs)


class _Scale(nn.Module):
    def forward(
        self, hidden: torch.Tensor, scale: torch.Tensor | None = None, **kwargs
    ) -> torch.Tensor:
        return hidden * scale + kwargs.get("shift", 0.0)


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.original_component = _Scale()

    def forward(self, *args, **kwargs):
        return (self.original_component(*args, **kwargs),)


class _Toy(nn.Module):
    """Two "blocks": h -> h * s0 + 1 (scale per prompt), then h * s1 (one scale for all)."""

    def __init__(self, call_last: bool = True, first: str = "tensor"):
        super().__init__()
        self.blocks = nn.ModuleList([_Block(), _Block()])
        self.call_last, self.first = call_last, first

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = tokens.double()[..., None]
        s0 = torch.arange(1.0, 1.0 + len(tokens), dtype=torch.float64)[:, None, None]
        if self.first == "tensor":
            h = self.blocks[0](h, s0, shift=1.0)[0]
        else:
            h = self.blocks[0](hidden=None, scale=s0)[0]
        if self.call_last:
            h = self.blocks[1](
                h, scale=torch.tensor([[[3.0]]], dtype=torch.float64), cache=object()
            )[0]
        return h


def test_block_inputs_are_recorded_by_name_and_replayed_from_any_block():
    """A hand-computable two-block model: the inputs each block gets besides the residual
    stream are recorded by name (a cache dropped), repeated over stacked copies where
    they have a batch dim, and replayed from either block; a model that does not call its
    last block, or calls a block without the residual stream first, is refused."""
    toy, tokens = _Toy(), torch.tensor([[1, 2], [3, 4]])
    inputs = record_block_inputs(toy, tokens)
    assert set(inputs) == {"blocks.0.scale", "blocks.0.shift", "blocks.1.scale", "blocks.1.cache"}
    assert inputs["blocks.1.cache"] is None and inputs["blocks.0.shift"] == 1.0
    resid = torch.tensor([[[1.0], [2.0]], [[5.0], [7.0]]], dtype=torch.float64)  # [2, 2, 1]
    want0 = (resid * torch.tensor([1.0, 2.0], dtype=torch.float64)[:, None, None] + 1) * 3
    torch.testing.assert_close(run_blocks_from(toy, 0, resid, inputs), want0)
    torch.testing.assert_close(run_blocks_from(toy, 1, resid, inputs), resid * 3)
    twice = repeat_block_inputs(inputs, 2)
    assert twice["blocks.0.scale"].shape == (4, 1, 1) and twice["blocks.1.scale"].shape == (1, 1, 1)
    torch.testing.assert_close(
        run_blocks_from(toy, 0, resid.repeat(2, 1, 1), twice), want0.repeat(2, 1, 1)
    )
    with pytest.raises(BlockInputsUnknown, match="last block"):
        record_block_inputs(_Toy(call_last=False), tokens)
    with pytest.raises(BlockInputsUnknown, match="residual stream first"):
        record_block_inputs(_Toy(first="none"), tokens)
    with pytest.raises(BlockInputsUnknown, match="no bridge blocks"):
        record_block_inputs(nn.Linear(2, 2), tokens)
