"""Published circuits of real models (IOI and greater-than on GPT-2 small, docstring on
attn-only-4l), checked against the graphs of random-weight models of the same shapes."""

from __future__ import annotations

import pytest
import torch

from edgewise import patchable_model
from edgewise.benchmarks.official.papers import (
    DOCSTRING_OFFICIAL_EDGES,
    GREATERTHAN_GROUPS,
    IOI_HEAD_CLASSES,
    IOI_POSITIONS,
    docstring_official_edges,
    greaterthan_official_edges,
    ioi_official_edges,
    official_edge_names,
)
from edgewise.models import random_model


@pytest.fixture(scope="module")
def gpt2_shape():
    """A random model with GPT-2 small's layers and heads (narrow, so the test is quick:
    the graph depends only on layers and heads)."""
    return random_model(n_layers=12, n_heads=12, d_head=2, d_vocab=30, n_ctx=64)


@pytest.fixture(scope="module")
def attn_only_4l():
    """attn-only-4l's shape: 4 layers, 8 heads, no MLPs."""
    return random_model(n_layers=4, n_heads=8, d_head=2, d_vocab=30, n_ctx=64,
                                     attn_only=True)


def _layer(node: str) -> int:
    return -1 if node == "Resid Start" else 99 if node == "Resid End" else int(
        node.split()[-1] if node.startswith("MLP") else node[1:].split(".")[0])


def test_ioi_circuit_with_positions_has_every_class_at_its_position(gpt2_shape):
    pm = patchable_model(gpt2_shape, seq_len=15)
    edges = ioi_official_edges(pm)
    names = {(e.name, e.seq_idx) for e in edges}
    assert len(edges) == len(official_edge_names("ioi"))
    # every head of every class is in the circuit, as a sender or as a receiver
    heads = {f"A{lyr}.{h}" for hs in IOI_HEAD_CLASSES.values() for lyr, h in hs}
    touched = {e.src.name for e in edges} | {e.dest.name.rsplit(".", 1)[0] for e in edges}
    assert heads <= touched
    # the paper's flow: input -> previous token (query at S1+1) -> induction (keys at
    # S1+1) -> s-inhibition (keys at S2) -> name movers (queries at END) -> output at END
    end, s2, s1p = IOI_POSITIONS["END"], IOI_POSITIONS["S2"], IOI_POSITIONS["S1+1"]
    assert ("Resid Start->A2.2.Q", s1p) in names
    assert ("A2.2->A5.5.K", s1p) in names and ("A2.2->A5.5.K", end) not in names
    assert ("A5.5->A7.3.K", s2) in names and ("A0.1->A8.6.V", s2) in names
    assert ("A7.3->A9.9.Q", end) in names and ("A9.9->Resid End", end) in names
    # heads write to the output only at END, and only movers do
    outputs = {(e.src.name, e.seq_idx) for e in edges if e.dest.name == "Resid End"}
    movers = {f"A{lyr}.{h}" for c in ("name mover", "backup name mover", "negative name mover")
              for lyr, h in IOI_HEAD_CLASSES[c]}
    assert {p for _, p in outputs} == {end}
    assert {s for s, _ in outputs if s.startswith("A")} == movers
    # every edge goes forward through the layers
    assert all(e.src.layer < e.dest.layer for e in edges)


def test_ioi_without_positions_is_the_projection(gpt2_shape):
    with_pos = {e.name for e in ioi_official_edges(patchable_model(gpt2_shape, seq_len=15))}
    no_pos = ioi_official_edges(patchable_model(gpt2_shape))
    assert {e.name for e in no_pos} == with_pos
    assert all(e.seq_idx is None for e in no_pos)


def test_greaterthan_circuit_connects_its_groups(gpt2_shape):
    pm = patchable_model(gpt2_shape)
    edges = greaterthan_official_edges(pm)
    names = {e.name for e in edges}
    assert len(edges) == len(official_edge_names("greaterthan"))
    assert {"Resid Start->A0.1.Q", "A0.1->MLP 0", "MLP 3->A5.5.K", "A9.1->MLP 11",
            "MLP 8->MLP 11", "A9.1->Resid End", "MLP 11->Resid End", "MLP 0->A9.1.Q"} <= names
    mids = {f"A{lyr}.{h}" for lyr, h in GREATERTHAN_GROUPS["mid attns"]}
    # the output is read only from the mid heads and the late MLPs
    writers = {e.src.name for e in edges if e.dest.name == "Resid End"}
    assert writers == mids | {f"MLP {m}" for m in (8, 9, 10, 11)}
    assert all(_layer(e.src.name) <= _layer(e.dest.name.split(".")[0] if e.dest.name[0] == "A"
                                             else e.dest.name) for e in edges)
    with pytest.raises(ValueError, match="no positions"):
        greaterthan_official_edges(patchable_model(gpt2_shape, seq_len=15))


def test_docstring_circuit_matches_the_published_edge_counts(attn_only_4l):
    with_pos = docstring_official_edges(patchable_model(attn_only_4l, seq_len=41))
    no_pos = docstring_official_edges(patchable_model(attn_only_4l))
    # the manual graph: 31 edges at token positions (as published), 23 distinct edges
    assert (len(with_pos), len(no_pos)) == (31, 23) == (len(DOCSTRING_OFFICIAL_EDGES), 23)
    assert {e.seq_idx for e in with_pos if e.dest.name == "Resid End"} == {40}
    assert {e.src.name for e in with_pos if e.dest.name == "Resid End"} == {"A3.0", "A3.6"}


def test_wrong_shapes_and_graphs_are_refused(gpt2_shape, attn_only_4l):
    with pytest.raises(ValueError, match="12 layers, 12 heads"):
        ioi_official_edges(patchable_model(attn_only_4l))
    with pytest.raises(ValueError, match="4 layers, 8 heads"):
        docstring_official_edges(patchable_model(gpt2_shape))
    with pytest.raises(ValueError, match="seq_len=15"):
        ioi_official_edges(patchable_model(gpt2_shape, seq_len=12))
    with pytest.raises(ValueError, match="separate Q/K/V"):
        ioi_official_edges(patchable_model(gpt2_shape, separate_qkv=False))
    with pytest.raises(ValueError, match="unknown task"):
        official_edge_names("sports")


def test_official_circuit_reproduces_random_model_when_complete(attn_only_4l):
    """Patching works on these graphs: the docstring circuit with every other edge kept
    clean equals the clean model (edge-level sanity on the same random model)."""
    pm = patchable_model(attn_only_4l, seq_len=41)
    edges = docstring_official_edges(pm)
    gen = torch.Generator().manual_seed(0)
    clean, corrupt = (torch.randint(30, (2, 41), generator=gen) for _ in range(2))
    patch = pm.src_outs(corrupt)
    masks = pm.masks_from_edges(set(pm.edges) - edges)  # ablate everything else
    keep_all = pm.run_patched(clean, pm.new_masks(0.0), patch)
    torch.testing.assert_close(keep_all, pm(clean), atol=1e-5, rtol=0)
    ablated = pm.run_patched(clean, masks, patch)
    assert not torch.allclose(ablated, keep_all)  # the rest of the model matters here
