"""Saved scores and MIB graph JSON round trips; atomic writes."""

from __future__ import annotations

import json

import pytest
import torch

from edgewise import patchable_model
from edgewise.io import (
    atomic_write,
    load_mib_json,
    load_prune_scores,
    mib_edge_name,
    save_mib_json,
    save_prune_scores,
)
from edgewise.models import random_model


@pytest.fixture(scope="module")
def pm():
    return patchable_model(random_model(n_layers=2, d_vocab=20))


def scores_for(pm, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(m.mask_shape, generator=gen) for n, m in pm.dest_modules.items()}


def test_prune_scores_round_trip_with_metadata(pm, tmp_path):
    scores = scores_for(pm)
    meta = {"model": "random-2l", "task": "toy", "algorithm": "eap", "parameters": {"mask_val": 0.0}}
    path = save_prune_scores(tmp_path / "s.safetensors", scores, pm, meta)
    loaded, got_meta = load_prune_scores(path, pm)
    for n in scores:
        assert torch.equal(loaded[n], scores[n])
    assert got_meta["algorithm"] == "eap" and got_meta["parameters"] == {"mask_val": 0.0}
    assert got_meta["edges"][0] == [pm.edges[0].name, None] and len(got_meta["edges"]) == pm.n_edges
    assert "edgewise_version" in got_meta
    other = patchable_model(random_model(n_layers=1, d_vocab=20))
    with pytest.raises(ValueError, match="different graph"):
        load_prune_scores(path, other)


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")

    def crash(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_mib_json_round_trip(pm, tmp_path):
    scores = scores_for(pm, 1)
    circuit = set(pm.edges[::9])
    path = save_mib_json(tmp_path / "g.json", pm, scores, circuit)
    doc = json.loads(path.read_text())
    assert "a0.h1->a1.h2<q>" in doc["edges"] and "input->m0" in doc["edges"]
    assert "m1->logits" in doc["edges"] and len(doc["edges"]) == pm.n_edges
    assert doc["cfg"]["n_layers"] == 2
    back, back_circuit = load_mib_json(path, pm)
    assert back_circuit == circuit
    for n in scores:
        torch.testing.assert_close(back[n], scores[n])
    assert mib_edge_name(pm.edge("A0.1->A1.2.Q")) == "a0.h1->a1.h2<q>"


def test_mib_format_refuses_what_it_cannot_express(tmp_path):
    pm = patchable_model(random_model(n_layers=1, d_vocab=20), seq_len=4)
    with pytest.raises(ValueError, match="token-position"):
        save_mib_json(tmp_path / "g.json", pm, scores_for(pm))
