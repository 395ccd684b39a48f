"""``PatchableModel.outputs``: the output metrics read, with the unembedding run at the
output positions only, equals the full logits' selection (patched or not, padded or not)
on every architecture, and the unembedding really sees only those positions."""

from __future__ import annotations

import pytest
import torch

from edgewise import patchable_model
from edgewise.data.batches import select_output
from edgewise.models.shapes import random_shape_model

from util import hooked_case

SHAPES = ["gpt2", "pythia-1.4b", "qwen2.5", "gemma2", "llama3"]
# a HookedTransformer's unembedding is one module whatever the architecture: two suffice
CASES = [(s, "bridge") for s in SHAPES] + [
    pytest.param(s, "hooked", marks=hooked_case) for s in ("gpt2", "qwen2.5")]


def _unembed_inputs(pm):
    seen: list[tuple[int, ...]] = []
    handle = pm.wrapped_model.unembed.register_forward_hook(  # sees the inputs as cut
        lambda _m, args, _out: seen.append(tuple(args[0].shape)))
    return seen, handle


@pytest.mark.parametrize(("shape", "kind"), CASES)
def test_outputs_equal_the_full_logits_selection_and_unembed_only_the_output_positions(shape, kind):
    model = random_shape_model(shape, kind, n_layers=1, scale=16, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, int(model.cfg.d_vocab), (3, 7), generator=gen)
    lengths = torch.tensor([7, 4, 5])
    for slice_output, want_positions in (("last_seq", 1), ("not_first_seq", 6), (None, 7)):
        pm = patchable_model(model, slice_output=slice_output)
        masks = {n: (torch.rand(m.mask_shape, generator=gen) < 0.5).to(pm.dtype)
                 for n, m in pm.dest_modules.items()}  # fmt: skip
        patch = pm.src_outs(torch.randint(0, int(model.cfg.d_vocab), (3, 7), generator=gen))
        cases = [(None, False), (None, True)]
        if slice_output == "last_seq":
            cases += [(lengths, False), (lengths, True)]
        for lens, patched in cases:
            with pm.patch(masks, patch) if patched else torch.no_grad():
                want = select_output(pm(tokens), pm.out_slice, lens)
            seen, handle = _unembed_inputs(pm)
            try:
                with pm.patch(masks, patch) if patched else torch.no_grad():
                    got = pm.outputs(tokens, lens)
            finally:
                handle.remove()
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
            assert seen == [(3, want_positions, int(model.cfg.d_model))]


def test_outputs_refuse_padded_prompts_unless_the_last_position_is_read():
    model = random_shape_model("gpt2", "bridge", n_layers=1, scale=16, dtype=torch.float64)
    pm, last = patchable_model(model, slice_output="not_first_seq"), patchable_model(model)
    tokens = torch.randint(0, int(model.cfg.d_vocab), (2, 5))
    seen, handle = _unembed_inputs(pm)
    with pytest.raises(ValueError, match="slice_output='last_seq'"):
        pm.outputs(tokens, torch.tensor([5, 3]))
    with pytest.raises(ValueError, match="one length per prompt"):
        last.outputs(tokens, torch.tensor([5, 3, 2]))
    handle.remove()
    assert seen == []  # refused before any pass


def test_gradients_through_the_cut_unembedding_equal_the_full_ones():
    model = random_shape_model("qwen2.5", "bridge", n_layers=2, scale=16, dtype=torch.float64)
    pm = patchable_model(model)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, int(model.cfg.d_vocab), (2, 6), generator=gen)
    patch = pm.src_outs(torch.randint(0, int(model.cfg.d_vocab), (2, 6), generator=gen))
    grads = []
    for cut in (False, True):
        masks = pm.new_masks(0.0, requires_grad=True)
        with pm.patch(masks, patch, param_grads=False):
            out = pm.outputs(tokens) if cut else pm(tokens)[pm.out_slice]
        out[:, 3].sum().backward()
        grads.append(torch.cat([m.grad.flatten() for m in masks.values()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", [pytest.param("hooked", marks=hooked_case), "bridge"])
def test_mask_only_passes_compute_no_weight_gradient_and_leave_parameters_as_they_were(kind):
    """``param_grads=False``: the backward pass gives the masks their gradients and no
    parameter one (the embedding and unembedding gradients alone are GBs at real
    shapes); afterwards every parameter requires a gradient again, and a pass with
    ``param_grads=True`` gives them theirs."""
    model = random_shape_model("gpt2", kind, n_layers=1, scale=16, dtype=torch.float64)
    pm = patchable_model(model)
    gen = torch.Generator().manual_seed(2)
    tokens, corrupt = torch.randint(0, int(model.cfg.d_vocab), (2, 2, 5), generator=gen)
    patch = pm.src_outs(corrupt)
    params = list(model.parameters())
    assert all(p.requires_grad for p in params)
    for param_grads in (False, True):
        masks = pm.new_masks(0.0, requires_grad=True)
        with pm.patch(masks, patch, param_grads=param_grads):
            assert all(p.requires_grad == param_grads for p in params)
            out = pm.outputs(tokens)
        out.sum().backward()
        assert all(p.requires_grad for p in params)
        assert all(m.grad is not None for m in masks.values())
        got = [p.grad is not None for p in params]
        # (a bridge also holds GPT-2's fused Q/K/V weights, which its split copies replace)
        assert any(got) if param_grads else not any(got)
        model.zero_grad(set_to_none=True)
