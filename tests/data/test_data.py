"""Tests for edgewise.data: batching, padding, divergence, JSON I/O and loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgewise.data import (
    PromptDataLoader,
    PromptDataset,
    PromptPair,
    batch_key,
    collate_prompt_pairs,
    first_divergence,
    load_dataset_json,
    load_datasets_from_json,
    save_dataset_json,
    shipped_dataset_names,
)

from util import grad_tol, requires_hooked

PAD = 0
WORDS = [
    "<pad>",
    "<bos>",
    "<unk>",
    "When",
    "Mary",
    "and",
    "John",
    "went",
    "to",
    "the",
    "store",
    "shop",
    ",",
    "gave",
    "a",
    "drink",
    "Bob",
    "Alice",
    "park",
]


@pytest.fixture(scope="module")
def word_tokenizer():
    """A tiny offline word-level Hugging Face tokenizer (whitespace split)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", pad_token="<pad>", unk_token="<unk>"
    )


class StandInModel:
    """Anything with a ``.tokenizer`` is a model for loading purposes."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer


def ids(text: str) -> list[int]:
    return [WORDS.index(w) for w in text.split()]


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def brute_force_divergence(clean: torch.Tensor, corrupt: torch.Tensor) -> int:
    seq = clean.shape[1]
    firsts = []
    for c, k in zip(clean.tolist(), corrupt.tolist()):
        firsts.append(next((i for i in range(seq) if c[i] != k[i]), seq))
    return min(firsts)


# ----------------------------------------------------------------------------------------
# Collation, padding and divergence
# ----------------------------------------------------------------------------------------


@st.composite
def ragged_pairs(draw):
    n = draw(st.integers(1, 6))
    pairs = []
    for _ in range(n):
        length = draw(st.integers(1, 8))
        clean = draw(st.lists(st.integers(1, 20), min_size=length, max_size=length))
        # Change a random subset of positions (possibly none) to get the corrupt prompt.
        changed = draw(st.sets(st.integers(0, length - 1), max_size=length))
        corrupt = [(t % 20) + 1 if i in changed else t for i, t in enumerate(clean)]
        n_ans = draw(st.integers(1, 3))
        answers = draw(st.lists(st.integers(1, 20), min_size=n_ans, max_size=n_ans))
        pairs.append((clean, corrupt, answers))
    return pairs


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pairs=ragged_pairs(), pad_in_dataset=st.booleans())
def test_collation_pads_left_and_finds_divergence(pairs, pad_in_dataset):
    clean = [torch.tensor(c) for c, _, _ in pairs]
    corrupt = [torch.tensor(k) for _, k, _ in pairs]
    answers = [torch.tensor(a) for _, _, a in pairs]
    dataset = PromptDataset(
        clean, corrupt, answers, answers, pad_id=PAD if pad_in_dataset else None
    )
    loader = PromptDataLoader(
        dataset, batch_size=len(pairs), pad_id=None if pad_in_dataset else PAD
    )
    (batch,) = list(loader)
    longest = max(len(c) for c, _, _ in pairs)
    assert batch.clean.shape == batch.corrupt.shape == (len(pairs), longest)
    assert batch.clean.dtype == torch.int64
    for row, (c, k, _) in enumerate(pairs):
        n_pad = longest - len(c)
        assert batch.clean[row, :n_pad].eq(PAD).all()
        assert batch.corrupt[row, :n_pad].eq(PAD).all()
        assert batch.clean[row, n_pad:].tolist() == c
        assert batch.corrupt[row, n_pad:].tolist() == k
    assert batch.batch_diverge_idx == brute_force_divergence(batch.clean, batch.corrupt)
    assert batch.batch_diverge_idx == first_divergence(batch.clean, batch.corrupt)
    same_counts = len({len(a) for _, _, a in pairs}) == 1
    assert isinstance(batch.answers, torch.Tensor) == same_counts
    assert dataset.seq_len == (longest if len({len(c) for c, _, _ in pairs}) == 1 else None)
    # The key depends only on the tokens: a second pass gives the same key.
    assert next(iter(loader)).key == batch.key


def test_divergence_is_seq_len_when_nothing_differs():
    x = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert first_divergence(x, x.clone()) == 3
    y = x.clone()
    y[1, 2] = 9
    assert first_divergence(x, y) == 2
    y[0, 0] = 9
    assert first_divergence(x, y) == 0


def test_ragged_batch_without_pad_id_is_an_error():
    dataset = PromptDataset([[1, 2], [1, 2, 3]], [[1, 3], [1, 2, 4]], [[1], [2]], [[3], [4]])
    assert dataset.seq_len is None and not dataset.padded
    with pytest.raises(ValueError, match="different lengths.*pad_id"):
        list(PromptDataLoader(dataset, batch_size=2))


def test_answer_counts_give_tensor_or_list():
    same = [
        PromptPair(
            torch.tensor([1, 2]), torch.tensor([1, 3]), torch.tensor([4, 5]), torch.tensor([6])
        )
        for _ in range(3)
    ]
    batch = collate_prompt_pairs(same)
    assert isinstance(batch.answers, torch.Tensor) and batch.answers.shape == (3, 2)
    assert isinstance(batch.wrong_answers, torch.Tensor) and batch.wrong_answers.shape == (3, 1)

    varied = same[:2] + [
        PromptPair(torch.tensor([1, 2]), torch.tensor([1, 3]), torch.tensor([7]), torch.tensor([6]))
    ]
    batch = collate_prompt_pairs(varied)
    assert isinstance(batch.answers, list)
    assert [a.tolist() for a in batch.answers] == [[4, 5], [4, 5], [7]]
    assert isinstance(batch.wrong_answers, torch.Tensor)  # these still agree


def test_batch_key_is_content_based_and_stable_across_processes():
    clean = torch.tensor([[5, 6, 7], [8, 9, 10]])
    corrupt = torch.tensor([[5, 6, 1], [8, 9, 2]])
    key = batch_key(clean, corrupt)
    assert key == batch_key(clean.clone().to(torch.int32), corrupt.clone())
    assert 0 <= key < 2**63
    assert key != batch_key(clean, clean)
    assert key != batch_key(clean.reshape(3, 2), corrupt.reshape(3, 2))
    code = (
        "import torch; from edgewise.data import batch_key; "
        "print(batch_key(torch.tensor([[5, 6, 7], [8, 9, 10]]), "
        "torch.tensor([[5, 6, 1], [8, 9, 2]])))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert int(out.stdout.strip()) == key


# ----------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------


def test_clean_corrupt_length_mismatch_names_prompt_and_fix():
    with pytest.raises(ValueError) as err:
        PromptDataset([[1, 2, 3], [1, 2, 3]], [[1, 2, 4], [1, 2]], [[1], [1]], [[2], [2]])
    msg = str(err.value)
    assert "prompt 1" in msg and "3 tokens" in msg and "has 2" in msg
    assert "same length" in msg and "pad or re-word" in msg


def test_text_length_mismatch_from_json(tmp_path, word_tokenizer):
    path = write_json(
        tmp_path / "d.json",
        {
            "prompts": [
                {
                    "clean": "When Mary and John",
                    "corrupt": "When Bob and John",
                    "answers": ["Mary"],
                    "wrong_answers": ["Bob"],
                },
                {
                    "clean": "When Mary went",
                    "corrupt": "When Bob and John went",
                    "answers": ["Mary"],
                    "wrong_answers": ["Bob"],
                },
            ]
        },
    )
    with pytest.raises(ValueError, match=r"prompt 1: the clean prompt has 4 tokens .* has 6"):
        load_datasets_from_json(
            StandInModel(word_tokenizer), path, train_test_size=(2, 0), batch_size=1, shuffle=False
        )


def test_out_of_vocabulary_answer_id(tmp_path, word_tokenizer):
    path = write_json(
        tmp_path / "d.json",
        {
            "prompts": [
                {"clean": [1, 3, 4], "corrupt": [1, 3, 16], "answers": [4], "wrong_answers": [16]},
                {
                    "clean": [1, 3, 4],
                    "corrupt": [1, 3, 16],
                    "answers": [4, 99],
                    "wrong_answers": [16],
                },
            ]
        },
    )
    with pytest.raises(ValueError) as err:
        load_datasets_from_json(
            StandInModel(word_tokenizer), path, train_test_size=(2, 0), batch_size=1, shuffle=False
        )
    msg = str(err.value)
    assert "prompt 1" in msg and "answers[1]" in msg and "99" in msg
    assert f"vocabulary size is {len(WORDS)}" in msg
    # Without a tokenizer, a model's cfg.d_vocab bounds the ids.
    model = StandInModel(None)
    model.cfg = type("Cfg", (), {"d_vocab": 10})()
    with pytest.raises(ValueError, match="prompt 0: clean.*token id 16.*vocabulary size is 10"):
        data = {
            "prompts": [{"clean": [1, 16], "corrupt": [1, 2], "answers": [3], "wrong_answers": [4]}]
        }
        load_datasets_from_json(
            model, write_json(tmp_path / "e.json", data), train_test_size=(1, 0), batch_size=1
        )


def test_out_of_vocabulary_id_in_per_position_answers_names_its_place():
    """Answers per output position ([positions, answers]): the bad id and its (row, column),
    not a tensor-to-scalar error."""
    from edgewise import PromptDataset

    clean = torch.randint(0, 10, (2, 4))
    answers = [torch.tensor([[1, 2], [3, 99]]), torch.tensor([[1, 2], [3, 4]])]
    with pytest.raises(ValueError, match=r"prompt 0: answers: token id 99 at index \(1, 1\) is "
                                         r"outside the vocabulary \(vocabulary size is 10"):
        PromptDataset(clean, clean.clone(), answers, answers, vocab_size=10)


def test_text_answers_must_be_single_known_tokens(tmp_path, word_tokenizer):
    model = StandInModel(word_tokenizer)
    base = {"clean": "When Mary and John", "corrupt": "When Bob and John", "wrong_answers": ["Bob"]}
    for answers, pattern in [
        (["Mary John"], r"'Mary John' tokenizes to 2 tokens"),
        (["Zed"], r"'Zed' is not in the tokenizer's vocabulary"),
    ]:
        path = write_json(tmp_path / "d.json", {"prompts": [{**base, "answers": answers}]})
        with pytest.raises(ValueError, match=r"prompt 0: answers\[0\]: .*" + pattern):
            load_datasets_from_json(model, path, train_test_size=(1, 0), batch_size=1)


def test_small_split_with_big_batch_is_an_error():
    with pytest.raises(ValueError, match="fewer than batch_size=4"):
        load_datasets_from_json(None, "toy_copy", train_test_size=(14, 2), batch_size=4)


# ----------------------------------------------------------------------------------------
# JSON: the public format, round trips, shipped datasets
# ----------------------------------------------------------------------------------------


def test_load_public_format_with_text_prompts(tmp_path, word_tokenizer):
    data = {
        "seq_labels": ["When", "A", "went", "to", "the", "B"],  # the longest prompt's 6
        "word_idxs": {"IO": 1, "S": 3},
        "prompts": [
            {
                "clean": "When Mary and John",
                "corrupt": "When Bob and John",
                "answers": ["Mary"],
                "wrong_answers": ["Bob", "John"],
            },
            {
                "clean": "When Alice went to the store",
                "corrupt": "When Alice went to the park",
                "answers": ["Alice", "store"],
                "wrong_answers": [16],
            },
        ],
    }
    path = write_json(tmp_path / "ioi.json", data)
    train, test = load_datasets_from_json(
        StandInModel(word_tokenizer), path, train_test_size=(2, 0), batch_size=2, shuffle=False
    )
    assert train.seq_len is None and train.diverge_idx == 0 and len(test) == 0
    assert train.seq_labels == ["<|BOS|>", "When", "A", "went", "to", "the", "B"]
    assert train.word_idxs == {"IO": 2, "S": 4}
    (batch,) = list(train)
    bos = word_tokenizer.bos_token_id
    # Row 0 is 2 tokens shorter, so it is left-padded with the tokenizer's pad id.
    assert batch.clean.tolist() == [
        [PAD, PAD, bos, *ids("When Mary and John")],
        [bos, *ids("When Alice went to the store")],
    ]
    assert batch.corrupt.tolist() == [
        [PAD, PAD, bos, *ids("When Bob and John")],
        [bos, *ids("When Alice went to the park")],
    ]
    assert batch.batch_diverge_idx == 4  # "Mary" vs "Bob" in the padded row 0
    assert [a.tolist() for a in batch.answers] == [ids("Mary"), ids("Alice store")]
    assert isinstance(batch.wrong_answers, list)  # 2 vs 1 wrong answers
    assert [a.tolist() for a in batch.wrong_answers] == [ids("Bob John"), [16]]

    # No BOS without prepend_bos; word_idxs are then left alone.
    train, _ = load_datasets_from_json(
        StandInModel(word_tokenizer),
        path,
        prepend_bos=False,
        train_test_size=(2, 0),
        batch_size=2,
        shuffle=False,
    )
    assert next(iter(train)).clean[1].tolist() == ids("When Alice went to the store")
    assert train.word_idxs == {"IO": 1, "S": 3}
    # Different lengths cannot give a fixed seq_len, and pad=False refuses to pad.
    with pytest.raises(ValueError, match="return_seq_length=True needs"):
        load_datasets_from_json(
            StandInModel(word_tokenizer),
            path,
            train_test_size=(2, 0),
            batch_size=2,
            return_seq_length=True,
        )
    with pytest.raises(ValueError, match="pad=False"):
        load_datasets_from_json(
            StandInModel(word_tokenizer), path, train_test_size=(2, 0), batch_size=2, pad=False
        )


def test_json_round_trip_gives_identical_tensors(tmp_path):
    dataset = PromptDataset(
        [[5, 6, 7], [5, 8], [9, 9, 9]],
        [[5, 6, 1], [5, 2], [9, 9, 9]],
        [[7], [8, 3], [9]],
        [[1, 2], [2], []],
        pad_id=PAD,
        seq_labels=["a", "b", "c"],
        word_idxs={"x": 1},
    )
    path = save_dataset_json(tmp_path / "sub" / "rt.json", dataset)
    assert [p.name for p in path.parent.iterdir()] == ["rt.json"]  # no temp file left
    raw = load_dataset_json(path)
    assert raw["seq_labels"] == ["a", "b", "c"] and raw["word_idxs"] == {"x": 1}
    again = PromptDataset.from_json_dict(raw)
    assert torch.equal(again.clean, dataset.clean) and torch.equal(again.corrupt, dataset.corrupt)
    for a, b in zip(again.answers + again.wrong_answers, dataset.answers + dataset.wrong_answers):
        assert a.dtype == b.dtype == torch.int64 and torch.equal(a, b)

    train, _ = load_datasets_from_json(
        None, path, train_test_size=(3, 0), batch_size=3, shuffle=False
    )
    (batch,) = list(train)
    assert torch.equal(batch.clean, dataset.clean)
    assert batch.key == collate_prompt_pairs([dataset[i] for i in range(3)]).key


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "d.json"
    save_dataset_json(path, PromptDataset([[1, 2]], [[1, 3]], [[2]], [[3]]))
    before = path.read_text()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        save_dataset_json(path, PromptDataset([[4, 5]], [[4, 6]], [[5]], [[6]]))
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["d.json"]


def test_shipped_dataset_by_name():
    assert "toy_copy" in shipped_dataset_names()
    raw = load_dataset_json("toy_copy")
    assert raw == load_dataset_json("toy_copy.json")
    assert len(raw["prompts"]) == 16
    for p in raw["prompts"]:
        assert len(p["clean"]) == len(p["corrupt"]) == 6
        assert sum(c != k for c, k in zip(p["clean"], p["corrupt"])) == 1
        assert set(p["answers"]) <= set(p["clean"])
        assert all(0 <= t < 50 for t in p["clean"] + p["corrupt"] + p["answers"])

    train, test = load_datasets_from_json(
        None, "toy_copy", train_test_size=(12, 4), batch_size=(4, 2), return_seq_length=True
    )
    assert train.seq_len == test.seq_len == 6
    assert [len(b.clean) for b in train] == [4, 4, 4] and [len(b.clean) for b in test] == [2, 2]
    batch = next(iter(train))
    assert batch.batch_diverge_idx == 1
    assert batch.answers.shape == (4, 1)
    # Each answer is the clean prompt's token at the divergence position.
    assert torch.equal(batch.answers[:, 0], batch.clean[:, 1])
    assert train.word_idxs == {"target": 1, "copy": 5}  # token ids: no BOS shift


def test_unknown_dataset_name_lists_shipped_names():
    with pytest.raises(FileNotFoundError) as err:
        load_dataset_json("no_such_dataset")
    msg = str(err.value)
    assert "no shipped dataset named 'no_such_dataset'" in msg and "toy_copy" in msg
    with pytest.raises(FileNotFoundError, match="toy_copy"):
        load_datasets_from_json(None, "no_such_dataset")


def test_fractional_split_uses_every_prompt():
    train, test = load_datasets_from_json(
        None, "toy_copy", train_test_size=(0.75, 0.25), batch_size=4
    )
    assert (len(train.dataset), len(test.dataset)) == (12, 4)
    with pytest.raises(ValueError, match="asks for 20 prompts but the dataset has 16"):
        load_datasets_from_json(None, "toy_copy", train_test_size=(10, 10))


# ----------------------------------------------------------------------------------------
# Determinism
# ----------------------------------------------------------------------------------------


def _order(loader: PromptDataLoader) -> list[int]:
    return [int(x) for b in loader for x in b.clean[:, 0]]


def test_loader_shuffle_is_seeded():
    n = 16
    dataset = PromptDataset(
        torch.arange(n).unsqueeze(1),
        torch.arange(n).unsqueeze(1),
        [[i] for i in range(n)],
        [[i] for i in range(n)],
    )
    a = PromptDataLoader(dataset, batch_size=4, shuffle=True, seed=3)
    b = PromptDataLoader(dataset, batch_size=4, shuffle=True, seed=3)
    c = PromptDataLoader(dataset, batch_size=4, shuffle=True, seed=4)
    epochs_a = [_order(a), _order(a)]
    assert epochs_a == [_order(b), _order(b)]  # same seed: same sequence of epochs
    assert sorted(epochs_a[0]) == list(range(n))  # each epoch is a permutation
    assert epochs_a[0] != list(range(n))
    assert _order(c) != epochs_a[0]
    assert _order(PromptDataLoader(dataset, batch_size=4)) == list(range(n))


def test_load_shuffle_is_seeded():
    def split(seed, shuffle=True):
        train, test = load_datasets_from_json(
            None,
            "toy_copy",
            train_test_size=(8, 8),
            batch_size=8,
            shuffle=shuffle,
            random_seed=seed,
        )
        return [b.clean[:, 1].tolist() for b in (*train, *test)]

    file_order = [p["clean"][1] for p in load_dataset_json("toy_copy")["prompts"]]
    assert sum(split(0, shuffle=False), []) == file_order
    assert split(7) == split(7)
    assert split(7) != split(8)
    assert sorted(sum(split(7), [])) == sorted(file_order)


@pytest.mark.parametrize("shuffle", [True, False])
def test_loading_reseeds_the_global_generators_as_auto_circuit_does(shuffle):
    """After loading, torch's and Python's global generators are where a fresh
    ``manual_seed(random_seed)`` / ``random.seed(random_seed)`` leaves them."""
    import random

    torch.manual_seed(123)
    random.seed(123)
    load_datasets_from_json(None, "toy_copy", train_test_size=(8, 8), batch_size=8,
                            shuffle=shuffle, random_seed=5)
    after = torch.rand(4), random.random()
    torch.manual_seed(5)
    random.seed(5)
    if shuffle:  # the shuffle's own draws come first
        random.shuffle(list(range(len(load_dataset_json("toy_copy")["prompts"]))))
    assert torch.equal(after[0], torch.rand(4)) and after[1] == random.random()


# ----------------------------------------------------------------------------------------
# tail_divergence
# ----------------------------------------------------------------------------------------


# a HookedTransformer (TransformerLens 3.9 only) and bridges: GPT-2 (learned positions),
# Llama (rotary, RMSNorm, grouped-query attention) and Qwen 2 (rotary, Q/K/V biases)
PREFIX_MODEL_KINDS = [pytest.param("hooked", marks=requires_hooked), "gpt2", "llama", "qwen2"]


def prefix_model(kind: str, n_layers: int = 2, seed: int = 0):
    """A float64 random model of ``kind`` (``"hooked"`` or a bridge architecture)."""
    from edgewise.models import random_bridge, random_model

    if kind == "hooked":
        return random_model(n_layers=n_layers, d_vocab=50, dtype=torch.float64, seed=seed,
                            kind="hooked")
    return random_bridge(kind, n_layers=n_layers, d_vocab=50, dtype=torch.float64, seed=seed,
                         n_kv_heads=2 if kind == "llama" else None)


def run_after_prefix(model, tokens, cache):
    """``model``'s logits of ``tokens`` run after the prefix ``cache`` holds."""
    from edgewise.models.bridge_blocks import BridgePrefixCache, after_prefix

    if isinstance(cache, BridgePrefixCache):
        with after_prefix(model, cache.rows(tokens.shape[0])) as kwargs:
            return model(tokens, **kwargs)
    return model(tokens, past_kv_cache=cache, attention_mask=torch.ones_like(tokens))


@pytest.mark.parametrize("kind", PREFIX_MODEL_KINDS)
def test_tail_divergence_caches_shared_prefix(tmp_path, kind):
    """The loaders cut the shared prefix and cache its keys and values in the model's own
    form; running the cut prompts after that cache gives the full prompts' logits."""
    from edgewise import patchable_model

    model = prefix_model(kind)
    prefix = [3, 4, 5]
    prompts = [
        {
            "clean": [*prefix, 10 + i, 20, 30],
            "corrupt": [*prefix, 10 + i, 21, 30],
            "answers": [i],
            "wrong_answers": [i + 1],
        }
        for i in range(8)
    ]
    path = write_json(
        tmp_path / "t.json",
        {"prompts": prompts, "seq_labels": list("abcdef"), "word_idxs": {"x": 1, "y": 4}},
    )
    train, test = load_datasets_from_json(
        model,
        path,
        batch_size=(2, 4),
        train_test_size=(4, 4),
        tail_divergence=True,
        return_seq_length=True,
        shuffle=False,
    )
    assert train.diverge_idx == test.diverge_idx == 3
    assert train.seq_len == 3 and train.seq_labels == ["d", "e", "f"]
    # word_idxs keep their positions in the full prompts (auto-circuit's; the official
    # circuit functions subtract seq_start_idx = diverge_idx themselves)
    assert train.word_idxs == test.word_idxs == {"x": 1, "y": 4}
    batch = next(iter(test))
    assert batch.clean.shape == (4, 3)
    full = torch.tensor([p["clean"] for p in prompts[4:8]])
    with torch.no_grad():
        expected = model(full)[:, 3:]
        got = run_after_prefix(model, batch.clean, test.kv_cache)
        # in the patchable model, a cache of other rows (train's, 2) serves any batch size
        got_2 = patchable_model(model, kv_caches=train.kv_cache)(batch.clean[:3])
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(got_2, expected[:3], atol=1e-10, rtol=1e-9)
    with pytest.raises(ValueError, match="needs a model"):
        load_datasets_from_json(
            None, path, train_test_size=(4, 4), batch_size=2, tail_divergence=True
        )


def test_sliding_window_bridge_runs_after_a_prefix_longer_than_its_window(tmp_path):
    """Gemma 2's sliding-window layers (a window of 4) after a 6-token cached prefix: the
    masks the Hugging Face model builds over prefix and prompt keep the window."""
    from edgewise import patchable_model
    from edgewise.models.kinds import GEMMA2_WINDOW

    model = prefix_model("gemma2")
    prefix = [3, 4, 5, 6, 7, 8]
    assert len(prefix) > GEMMA2_WINDOW
    prompts = [{"clean": [*prefix, 10 + i, 20, 30], "corrupt": [*prefix, 10 + i, 21, 30],
                "answers": [i], "wrong_answers": [i + 1]} for i in range(4)]
    path = write_json(tmp_path / "g.json", {"prompts": prompts})
    train, test = load_datasets_from_json(model, path, batch_size=2, train_test_size=(2, 2),
                                          tail_divergence=True, shuffle=False)
    assert train.diverge_idx == len(prefix)
    pm = patchable_model(model, kv_caches=(train.kv_cache, test.kv_cache))
    full = torch.tensor([p["clean"] for p in prompts])
    with torch.no_grad():
        expected = model(full)[:, len(prefix):]
        got = pm(full[:, len(prefix):])
    # Gemma 2's RMSNorm normalises in float32 even in float64
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


@requires_hooked
def test_a_prefix_cache_of_the_other_model_kind_is_refused(tmp_path):
    """A HookedTransformer's prefix cache on a bridge, and a bridge's on a
    HookedTransformer, would not be read: patchable_model refuses them."""
    from edgewise import patchable_model

    hooked, bridge = prefix_model("hooked"), prefix_model("gpt2")
    prompts = [{"clean": [3, 4, 5, 10 + i, 20], "corrupt": [3, 4, 5, 10 + i, 21],
                "answers": [i], "wrong_answers": [i + 1]} for i in range(4)]
    path = write_json(tmp_path / "t.json", {"prompts": prompts})
    kw = dict(batch_size=2, train_test_size=(2, 2), tail_divergence=True, shuffle=False)
    hooked_cache = load_datasets_from_json(hooked, path, **kw)[0].kv_cache
    bridge_cache = load_datasets_from_json(bridge, path, **kw)[0].kv_cache
    with pytest.raises(ValueError, match="built with a HookedTransformer"):
        patchable_model(bridge, kv_caches=hooked_cache)
    with pytest.raises(ValueError, match="built with a TransformerBridge"):
        patchable_model(hooked, kv_caches=bridge_cache)


@pytest.mark.parametrize("kind", [pytest.param("hooked", marks=requires_hooked), "gpt2"])
def test_no_algorithm_runs_on_prompts_cut_after_their_prefix(tmp_path, kind):
    """A tail_divergence loader's prompts lack their prefix (it lives in the loader's KV
    cache): every scorer and run_circuits refuses it instead of scoring the cut prompts."""
    import edgewise as ew

    model = prefix_model(kind, n_layers=1)
    prompts = [{"clean": [3, 4, 5, 10 + i, 20], "corrupt": [3, 4, 5, 10 + i, 21],
                "answers": [i], "wrong_answers": [i + 1]} for i in range(4)]
    path = write_json(tmp_path / "t.json", {"prompts": prompts})
    loader, _ = load_datasets_from_json(model, path, batch_size=2, train_test_size=(2, 2),
                                        tail_divergence=True, shuffle=False)
    assert loader.kv_cache is not None
    pm = ew.patchable_model(model)
    scores = pm.new_masks()
    calls = {
        "mask_gradient": lambda: ew.mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff",
                                                               mask_val=0.0),
        "acdc": lambda: ew.acdc_prune_scores(pm, loader, None, tao_exps=[-2], tao_bases=[1]),
        "eap reference": lambda: ew.edge_attribution_patching_prune_scores(pm, loader),
        "exact": lambda: ew.exact_patching_prune_scores(pm, loader),
        "eap-ig-inputs": lambda: ew.eap_ig_inputs_prune_scores(pm, loader),
        "atp*": lambda: ew.atp_star_prune_scores(pm, loader),
        "learned masks": lambda: ew.learned_mask_prune_scores(pm, loader, epochs=1),
        "magnitude": lambda: ew.activation_magnitude_prune_scores(pm, loader),
        "run_circuits": lambda: ew.run_circuits(pm, loader, [1], scores),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match="tail_divergence=True"):
            call()
            pytest.fail(f"{name} ran on the cut prompts")


@pytest.mark.parametrize("kind", PREFIX_MODEL_KINDS)
def test_prefix_cached_prompts_give_the_full_prompts_results(tmp_path, kind):
    """tail_divergence loaders with the prefix cache in the model (auto-circuit's
    kv_caches) give what the full prompts give: EAP, fractional masks, IG, EAP-IG on
    inputs, exact patching, the hook reference and run_circuits. Algorithms that cannot
    use the cache, and ablations that would leave the prefix unablated, refuse."""
    import edgewise as ew

    model = prefix_model(kind, seed=3)
    gen = torch.Generator().manual_seed(0)
    prefix = [3, 4, 5, 6]
    prompts = []
    for i in range(8):
        tail = torch.randint(7, 50, (3,), generator=gen).tolist()
        prompts.append({"clean": [*prefix, *tail], "corrupt": [*prefix, *tail[:-1], 7 + i],
                        "answers": [i + 1], "wrong_answers": [i + 2]})
    path = write_json(tmp_path / "p.json", {"prompts": prompts})
    kw = dict(batch_size=(4, 4), train_test_size=(4, 4), shuffle=False)
    full, full_test = load_datasets_from_json(model, path, **kw)
    cut, cut_test = load_datasets_from_json(model, path, tail_divergence=True, **kw)
    assert cut.diverge_idx == len(prefix) and next(iter(cut)).clean.shape[1] == 3
    pm_full = ew.patchable_model(model)
    pm_cut = ew.patchable_model(model, kv_caches=(cut.kv_cache, cut_test.kv_cache))

    # Hugging Face's RMSNorm (Llama, Qwen 2) normalises in float32 even in float64
    rtol = grad_tol(pm_full, 1e-7)

    def same(a, b):
        for n in a:
            torch.testing.assert_close(b[n].double(), a[n].double(), atol=rtol * 1e-2, rtol=rtol)

    grad = ew.mask_gradient_prune_scores
    for kwargs in ({"mask_val": 0.0}, {"mask_val": 0.5}, {"integrated_grad_samples": 2}):
        same(grad(pm_full, full, None, "logit", "avg_diff", progress=False, **kwargs),
             grad(pm_cut, cut, None, "logit", "avg_diff", progress=False, **kwargs))
    same(ew.eap_ig_inputs_prune_scores(pm_full, full, integrated_grad_samples=2, progress=False),
         ew.eap_ig_inputs_prune_scores(pm_cut, cut, integrated_grad_samples=2, progress=False))
    same(ew.exact_patching_prune_scores(pm_full, full, progress=False),
         ew.exact_patching_prune_scores(pm_cut, cut, progress=False))
    same(ew.edge_attribution_patching_prune_scores(pm_full, full, progress=False),
         ew.edge_attribution_patching_prune_scores(pm_cut, cut, progress=False))
    scores = grad(pm_full, full, None, "logit", "avg_diff", mask_val=0.0, progress=False)
    outs_full = ew.run_circuits(pm_full, full_test, [0, 5, 30, pm_full.n_edges], scores, progress=False)
    outs_cut = ew.run_circuits(pm_cut, cut_test, [0, 5, 30, pm_cut.n_edges], scores, progress=False)
    assert list(outs_full) == list(outs_cut)
    for size in outs_full:
        for bf, bc in zip(full_test, cut_test):
            torch.testing.assert_close(outs_cut[size][bc.key], outs_full[size][bf.key])
    for refused in (
        lambda: ew.acdc_prune_scores(pm_cut, cut, None, tao_exps=[-2], tao_bases=[1]),
        lambda: grad(pm_cut, cut, None, "logit", "avg_diff", mask_val=0.0,
                     ablation_type=ew.AblationType.ZERO),
        lambda: ew.activation_magnitude_prune_scores(pm_cut, cut),
        lambda: ew.atp_star_prune_scores(pm_cut, cut),
        lambda: grad(ew.patchable_model(model), cut, None, "logit", "avg_diff", mask_val=0.0),
    ):
        with pytest.raises(ValueError, match="tail_divergence|prefix"):
            refused()
