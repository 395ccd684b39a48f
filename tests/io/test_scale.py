"""The two scales of scores and their record in a scores file's metadata, by hand."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from edgewise.io.scale import (
    SCALE_KEY,
    apply_scale,
    check_scale,
    rescale_scores,
    saved_scale,
    scale_metadata,
)


def test_rescale_by_hand():
    summed = {"a": torch.tensor([3.0, -6.0]), "b": torch.tensor([[1.5]])}
    mean = rescale_scores(summed, "sum", "mean", 3)
    assert torch.equal(mean["a"], torch.tensor([1.0, -2.0]))
    assert torch.equal(mean["b"], torch.tensor([[0.5]]))
    back = rescale_scores(mean, "mean", "sum", 3)
    assert all(torch.equal(back[k], summed[k]) for k in summed)
    assert rescale_scores(summed, "sum", "sum", 3)["a"] is summed["a"]  # nothing to do
    assert torch.equal(apply_scale(summed, "mean", 3)["a"], mean["a"])
    assert apply_scale(summed, "sum", 3)["a"] is summed["a"]


@given(n=st.integers(1, 10_000), values=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=8))
def test_mean_is_the_sum_divided_by_n(n, values):
    t = torch.tensor(values, dtype=torch.float64)
    assert torch.equal(rescale_scores({"x": t}, "sum", "mean", n)["x"], t / n)


@pytest.mark.parametrize("n", [0, -1, True, 2.0, "3"])
def test_bad_prompt_counts_are_named(n):
    with pytest.raises(ValueError, match="n_prompts must be a positive int"):
        rescale_scores({"x": torch.ones(1)}, "sum", "mean", n)


def test_bad_scales_are_named():
    with pytest.raises(ValueError, match=r"scale must be 'sum' .* or 'mean' .*got 'avg'"):
        check_scale("avg")
    with pytest.raises(ValueError, match="got 'median'"):
        rescale_scores({}, "sum", "median", 2)
    with pytest.raises(ValueError, match="got 'total'"):
        scale_metadata("total", 2)


def test_metadata_record_round_trips_and_bad_records_name_the_file():
    meta = {SCALE_KEY: scale_metadata("sum", 64)}
    assert meta[SCALE_KEY] == {"scale": "sum", "n_prompts": 64}
    assert saved_scale(meta, "f.safetensors") == ("sum", 64)
    assert saved_scale({SCALE_KEY: scale_metadata(None, 5)}, "f") == (None, 5)
    assert saved_scale({}, "f") is None  # written before the record existed
    for bad in ({"scale": "avg", "n_prompts": 4}, {"scale": "sum", "n_prompts": 0},
                {"scale": "sum"}, "sum", {"scale": "mean", "n_prompts": True}):  # fmt: skip
        with pytest.raises(ValueError, match=r"old\.safetensors records the score scale"):
            saved_scale({SCALE_KEY: bad}, "old.safetensors")
