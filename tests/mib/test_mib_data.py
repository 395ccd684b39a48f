"""MIB task data: each shipped task loads to the hand-checked prompts and answers, the
counterfactual column is the chosen one, MIB's filters drop the rows MIB drops, unequal
clean/counterfactual lengths are fitted as MIB's runs patch them, refused or dropped,
pairs of different lengths load unpadded for right padding per batch, and bad input is
named."""

from __future__ import annotations

import json

import pytest
import torch

from edgewise.benchmarks.toy_models import toy_ioi_tokenizer
from edgewise.data import PromptDataLoader
from edgewise.mib.data import (
    MIB_TASKS,
    load_mib_rows,
    load_mib_task,
    mib_pairs,
    mib_task,
    split_by_length,
)
from edgewise.models.kinds import word_tokenizer

SPLITS = ("train", "validation")


def _words(value) -> set[str]:
    if isinstance(value, str):
        return set(value.split())
    if isinstance(value, dict):
        return set().union(*(_words(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(set(), *(_words(v) for v in value))
    return {str(value)}


@pytest.fixture(scope="module")
def tok():
    """A word tokenizer over every word of the shipped files (and " "-prefixed names
    tokenize to the name, as with GPT-2's leading-space tokens)."""
    words = set()
    for task in MIB_TASKS:
        for split in SPLITS:
            for row in load_mib_rows(task, None, split):
                words |= _words(row)
    return word_tokenizer(sorted(words))


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_task_names_and_defaults():
    assert list(MIB_TASKS) == [
        "ioi",
        "mcqa",
        "arithmetic_addition",
        "arithmetic_subtraction",
        "arc_easy",
        "arc_challenge",
    ]
    assert {t: MIB_TASKS[t].default_counterfactual for t in MIB_TASKS} == {
        "ioi": "s2_io_flip_counterfactual",
        "mcqa": "symbol_counterfactual",
        "arithmetic_addition": "random_counterfactual",
        "arithmetic_subtraction": "random_counterfactual",
        "arc_easy": "symbol_counterfactual",
        "arc_challenge": "symbol_counterfactual",
    }
    assert mib_task("arithmetic-addition") is MIB_TASKS["arithmetic_addition"]
    for t in MIB_TASKS.values():
        assert t.default_counterfactual in t.counterfactuals


def test_ioi_on_the_toy_vocabulary_hand_checked():
    tok = toy_ioi_tokenizer()
    vocab = tok.get_vocab()
    ds = load_mib_task("ioi", None, tok)
    assert ds.clean.shape == (5, 15) and not ds.padded  # the toy model's 15-token prompts
    first = "<bos> When Mary and John went to the store , John gave a book to".split()
    assert ds.clean[0].tolist() == [vocab[w] for w in first]
    flipped = "<bos> When Mary and John went to the store , Mary gave a book to".split()
    assert ds.corrupt[0].tolist() == [vocab[w] for w in flipped]  # s2_io_flip
    assert ds.answers[0].tolist() == [vocab["Mary"]]
    assert ds.wrong_answers[0].tolist() == [vocab["John"]]  # the clean subject, as in MIB
    abc = load_mib_task("ioi", None, tok, "abc_counterfactual")
    assert abc.corrupt[0].tolist() == [
        vocab[w] for w in "<bos> When Lucy and Max went to the store , Nina gave a book to".split()
    ]
    assert torch.equal(abc.clean, ds.clean) and abc.answers[0].tolist() == [vocab["Mary"]]
    val = load_mib_task("ioi", None, tok, split="validation")
    assert len(val) == 3 and val.answers[0].tolist() == [vocab["Julia"]]
    assert 0 not in (t for row in ds.clean.tolist() for t in row[1:])  # no unknown words


def test_each_shipped_task_hand_checked(tok):
    mcqa = load_mib_task("mcqa", None, tok)
    assert len(mcqa) == 5
    text = "The banana is yellow . What color is the banana ?\nA. red\nB. yellow\nC. green\nD. blue\nAnswer:"
    assert mcqa.clean[0].tolist() == [tok.bos_token_id] + ids(tok, text)
    assert mcqa.answers[0].tolist() == ids(tok, "B")  # the label, no space added
    assert mcqa.wrong_answers[0].tolist() == ids(tok, "X")  # symbol counterfactual's label
    pos = load_mib_task("mcqa", None, tok, "answerPosition_counterfactual")
    assert pos.wrong_answers[0].tolist() == ids(tok, "D")  # the answer moved to position 3

    add = load_mib_task("arithmetic_addition", None, tok)
    assert add.clean[0].tolist() == [tok.bos_token_id] + ids(tok, "What is 12 plus 34 ?")
    assert add.corrupt[0].tolist() == [tok.bos_token_id] + ids(tok, "What is 21 plus 15 ?")
    assert add.answers[0].tolist() == ids(tok, "46") and add.wrong_answers[0].tolist() == ids(
        tok, "36"
    )
    sub = load_mib_task("arithmetic-subtraction", None, tok, split="validation")
    assert sub.answers[0].tolist() == ids(tok, "49") and sub.wrong_answers[0].tolist() == ids(
        tok, "35"
    )

    easy = load_mib_task("arc_easy", None, tok)
    assert easy.answers[0].tolist() == ids(tok, "B")
    challenge = load_mib_task("arc_challenge", None, tok)
    assert challenge.answers[0].tolist() == ids(tok, "C")
    assert challenge.wrong_answers[0].tolist() == ids(tok, "Y")
    assert challenge.corrupt[0][-5:].tolist() == ids(tok, "Y. evaporation Z. erosion Answer:")


def test_num_examples_keeps_the_first_rows(tok):
    full = load_mib_task("arithmetic_addition", None, tok)
    head = load_mib_task("arithmetic_addition", None, tok, num_examples=2)
    assert torch.equal(head.clean, full.clean[:2])


def _write(tmp_path, rows, name="train.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_mib_filters_drop_rows_as_mib_does(tmp_path):
    rows = load_mib_rows("arithmetic_addition", None, "train")
    rows[1] = {**rows[1], "operator": "-"}  # another task's row
    rows[2] = {**rows[2], "random_counterfactual": None}  # no counterfactual
    rows[3] = {**rows[3], "label": "89 1"}  # two tokens
    words = set().union(*(_words(r) for r in rows))
    tok = word_tokenizer(sorted(words))
    assert [p.row for p in mib_pairs("arithmetic_addition", rows, tok)] == [0, 4]
    ioi = load_mib_rows("ioi", None, "train")
    ioi[0]["metadata"]["random_c"] = "Ali ce"  # " random_c" is two tokens: dropped
    tok = word_tokenizer(sorted(set().union(*(_words(r) for r in ioi))))
    assert [p.row for p in mib_pairs("ioi", ioi, tok)] == [1, 2, 3, 4]


def test_unequal_lengths_are_fitted_refused_or_dropped(tmp_path, tok):
    rows = load_mib_rows("arithmetic_addition", None, "train")
    rows[2]["random_counterfactual"]["prompt"] = "What is 11 plus 64 ? ?"  # one token longer
    rows[4]["random_counterfactual"]["prompt"] = "What is 11 plus"  # two tokens shorter
    path = _write(tmp_path, rows)
    full = load_mib_task("arithmetic_addition", None, tok)
    with pytest.warns(UserWarning, match=r"2 of 5 .*row 2 \(7 vs 8 tokens\), row 4 \(7 vs 5"):
        fitted = load_mib_task("arithmetic_addition", path, tok)
    assert len(fitted) == 5 and torch.equal(fitted.clean, full.clean)
    bos = [tok.bos_token_id]
    # cut to the clean prompt's 7 tokens: what MIB's run reads before the clean last token
    assert fitted.corrupt[2].tolist() == bos + ids(tok, "What is 11 plus 64 ?")
    # right-padded with the pad id, the tokens MIB's padded tensor holds there
    assert fitted.corrupt[4].tolist() == bos + ids(tok, "What is 11 plus") + [tok.pad_token_id] * 2
    assert torch.equal(fitted.corrupt[[0, 1, 3]], full.corrupt[[0, 1, 3]])
    with pytest.raises(ValueError, match=r"row 2 \(7 vs 8 tokens\).*mismatched='fit'.*'drop'"):
        load_mib_task("arithmetic_addition", path, tok, mismatched="error")
    with pytest.warns(UserWarning, match="dropping"):
        ds = load_mib_task("arithmetic_addition", path, tok, mismatched="drop")
    assert torch.equal(ds.clean, full.clean[[0, 1, 3]])


def test_pairs_of_different_lengths_load_every_pair(tmp_path, tok):
    rows = load_mib_rows("arithmetic_addition", None, "train")
    rows[1]["prompt"] = "So , what is 40 plus 17 ?"
    rows[1]["random_counterfactual"]["prompt"] = "So , what is 33 plus 30 ?"
    path = _write(tmp_path, rows)
    full = load_mib_task("arithmetic_addition", None, tok)
    ds = load_mib_task("arithmetic_addition", path, tok)  # right padding per batch: no warning
    assert len(ds) == 5 and ds.padding_side == "right" and ds.pad_id == tok.pad_token_id
    assert ds.lengths.tolist() == [7, 9, 7, 7, 7] and not ds.padded
    batch = next(iter(PromptDataLoader(ds, batch_size=5)))
    assert batch.lengths.tolist() == [7, 9, 7, 7, 7] and batch.clean.shape == (5, 9)
    assert torch.equal(batch.clean[[0, 2, 3, 4], :7], full.clean[[0, 2, 3, 4]])
    assert batch.clean[0, 7:].tolist() == [tok.pad_token_id] * 2
    assert batch.corrupt[1].tolist() == [tok.bos_token_id] + ids(tok, "So , what is 33 plus 30 ?")
    with pytest.warns(UserWarning, match="left-padded"):
        padded = load_mib_task("arithmetic_addition", path, tok, padding_side="left")
    assert padded.padded and padded.clean.shape == (5, 9)
    assert padded.clean[0, :2].tolist() == [tok.pad_token_id] * 2
    ragged = load_mib_task("arithmetic_addition", path, tok, pad=False)
    assert ragged.pad_id is None
    for unpadded in (ds, ragged):
        groups = split_by_length(unpadded)
        assert list(groups) == [7, 9] and [len(g) for g in groups.values()] == [4, 1]
        assert torch.equal(groups[7].clean, padded.clean[[0, 2, 3, 4], 2:])
        assert groups[9].answers[0].tolist() == ids(tok, "57")
    with pytest.raises(ValueError, match="padding_side='right'"):
        split_by_length(padded)


def test_reads_parquet_and_folders(tmp_path, tok):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    rows = load_mib_rows("mcqa", None, "validation")
    (tmp_path / "4_answer_choices").mkdir()
    (tmp_path / "2_answer_choices").mkdir()
    pq.write_table(
        pa.Table.from_pylist(rows),
        tmp_path / "4_answer_choices" / "validation-00000-of-00001.parquet",
    )
    _write(tmp_path / "2_answer_choices", rows[:1], "validation.jsonl")
    assert load_mib_rows("mcqa", tmp_path, "validation") == rows  # the 4-choice config
    shipped = load_mib_task("mcqa", None, tok, split="validation")
    local = load_mib_task("mcqa", tmp_path, tok, split="validation")
    assert torch.equal(local.clean, shipped.clean) and torch.equal(local.corrupt, shipped.corrupt)


def test_bad_input_is_named(tmp_path, tok):
    with pytest.raises(ValueError, match="unknown MIB task 'sst2'.*ioi, mcqa"):
        load_mib_task("sst2", None, tok)
    with pytest.raises(ValueError, match="no counterfactual column 'nope'.*abc_counterfactual"):
        load_mib_task("ioi", None, tok, "nope")
    with pytest.raises(ValueError, match="unknown split"):
        load_mib_task("ioi", None, tok, split="dev")
    rows = load_mib_rows("ioi", None, "train")
    del rows[3]["metadata"]["subject"]
    with pytest.raises(ValueError, match="ioi row 3: missing column 'metadata.subject'"):
        load_mib_task("ioi", _write(tmp_path, rows), tok)
    with pytest.raises(FileNotFoundError, match="no 'test' file"):
        load_mib_task("ioi", tmp_path, tok, split="test")
    with pytest.raises(ValueError, match="mismatched must be 'fit', 'error' or 'drop'"):
        load_mib_task("ioi", None, tok, mismatched="pad")
    with pytest.raises(ValueError, match="padding_side must be 'right'"):
        load_mib_task("ioi", None, tok, padding_side="middle")
