"""The shipped toy-IOI model, its dataset and its official circuit (docs/toy_ioi.md)."""

from __future__ import annotations

import pytest
import torch

from edgewise import (
    AblationType,
    PatchType,
    load_dataset_json,
    measure_logit_diff_percent,
    patchable_model,
    run_circuits,
)
from edgewise.benchmarks.official.toy_ioi import TOY_IOI_OFFICIAL_EDGES, toy_ioi_official_edges
from edgewise.benchmarks.toy_models import (
    NAMES,
    TOY_IOI_SEQ_LEN,
    TOY_IOI_WORD_IDXS,
    available,
    encode,
    load,
    sample_toy_ioi_prompts,
    toy_ioi_dataloaders,
    toy_ioi_vocab,
)

# Documented in docs/toy_ioi.md (scripts/analyse_toy_ioi.py prints both).
DOCUMENTED_HELDOUT_ACCURACY = 1.0  # IO logit > S logit on 2000 held-out prompts
DOCUMENTED_CIRCUIT_LD_PERCENT = 86.7  # official circuit, test split, TREE_PATCH, resample
N_OFFICIAL_EDGES = 62


@pytest.fixture(scope="module")
def model():
    return load("toy-ioi")


@pytest.fixture(scope="module")
def pm(model):
    return patchable_model(model, seq_len=TOY_IOI_SEQ_LEN)


def test_available_and_unknown_names():
    assert available() == ["toy-ioi"]
    with pytest.raises(ValueError, match="toy-ioi"):
        load("gpt-17")


def test_loaded_model_has_its_shape_and_tokenizer(model):
    cfg = model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp) == (2, 64, 4, 16, 256)
    assert cfg.normalization_type == "LN" and not cfg.attn_only
    assert cfg.d_vocab == len(toy_ioi_vocab())
    text = "When Mary and John went to the store , John gave a book to"
    tokens = model.to_tokens(text)
    assert tokens.tolist() == [encode(text.split())]
    assert model.to_str_tokens(text)[0] == "<bos>"
    logits = model(tokens)[0, -1]
    assert model.tokenizer.decode(int(logits.argmax())) == "Mary"


@pytest.mark.parametrize("split", ["heldout", "heldout_pairs", "heldout_templates"])
def test_heldout_accuracy_is_as_documented(model, split):
    seed = {"heldout_pairs": 10_001, "heldout_templates": 10_002, "heldout": 10_003}[split]
    prompts = sample_toy_ioi_prompts(2000, split, seed=seed)
    vocab = toy_ioi_vocab()
    tokens = torch.tensor([encode(p.words, vocab) for p in prompts])
    io = torch.tensor([vocab.index(p.io) for p in prompts])
    s = torch.tensor([vocab.index(p.s) for p in prompts])
    with torch.inference_mode():
        last = model(tokens)[:, -1]
    ld = last.gather(1, io[:, None])[:, 0] - last.gather(1, s[:, None])[:, 0]
    assert (ld > 0).float().mean().item() >= DOCUMENTED_HELDOUT_ACCURACY
    assert (last.argmax(-1) == io).float().mean().item() >= 0.99


def test_shipped_dataset_is_clean_abc_corrupt_pairs_of_one_length():
    data = load_dataset_json("toy_ioi")
    vocab = toy_ioi_vocab()
    names = {vocab.index(n) for n in NAMES}
    n1, n2, s2 = (TOY_IOI_WORD_IDXS[k] for k in ("N1", "N2", "S2"))
    assert len(data["prompts"]) == 512
    assert data["word_idxs"] == {**TOY_IOI_WORD_IDXS}
    assert len(data["seq_labels"]) == TOY_IOI_SEQ_LEN
    for p in data["prompts"]:
        clean, corrupt = p["clean"], p["corrupt"]
        assert len(clean) == len(corrupt) == TOY_IOI_SEQ_LEN
        (io,), (s,) = p["answers"], p["wrong_answers"]
        assert {clean[n1], clean[n2]} == {io, s} and clean[s2] == s
        abc = {corrupt[n1], corrupt[n2], corrupt[s2]}
        assert len(abc) == 3 and abc <= names and not abc & {io, s}
        same = [i for i in range(TOY_IOI_SEQ_LEN) if i not in (n1, n2, s2)]
        assert [clean[i] for i in same] == [corrupt[i] for i in same]


def test_dataloaders_have_token_positions(pm):
    train, test = toy_ioi_dataloaders(pm, batch_size=64, train_test_size=(128, 128))
    assert train.seq_len == test.seq_len == TOY_IOI_SEQ_LEN
    assert train.word_idxs["S2"] == TOY_IOI_WORD_IDXS["S2"]
    batch = next(iter(test))
    assert batch.clean.shape == (64, TOY_IOI_SEQ_LEN) and batch.answers.shape == (64, 1)


def test_official_edges_exist_in_the_graph(pm, model):
    edges = toy_ioi_official_edges(pm)
    assert len(edges) == len(TOY_IOI_OFFICIAL_EDGES) == N_OFFICIAL_EDGES
    assert edges <= set(pm.edges)
    assert {(e.name, e.seq_idx) for e in edges} == set(TOY_IOI_OFFICIAL_EDGES)
    no_positions = toy_ioi_official_edges(patchable_model(model))
    assert {e.name for e in no_positions} == {name for name, _ in TOY_IOI_OFFICIAL_EDGES}
    with pytest.raises(ValueError, match="seq_len=15"):
        toy_ioi_official_edges(patchable_model(model, seq_len=12))


def test_official_circuit_recovers_the_documented_logit_difference(pm):
    _, test = toy_ioi_dataloaders(pm, batch_size=128, train_test_size=(256, 256))
    edges = toy_ioi_official_edges(pm)
    scores = pm.masks_from_edges(edges, value=1.0, rest=0.0)
    outs = run_circuits(pm, test, [len(edges)], scores, patch_type=PatchType.TREE_PATCH,
                        ablation_type=AblationType.RESAMPLE, progress=False)
    ((size, percent),) = measure_logit_diff_percent(pm, test, outs)
    assert size == N_OFFICIAL_EDGES
    assert percent >= DOCUMENTED_CIRCUIT_LD_PERCENT - 1.0
