"""Dataset files that are wrong but used to load: a key given twice (JSON keeps the last),
an unknown or misspelt key, ``seq_labels`` that are not one string per position,
``word_idxs`` outside the prompts, and MIB answers the tokenizer does not know. Each is
refused with a ``ValueError`` naming the file, the prompt or key, and the fix, and the
file is left byte for byte as it was; a valid file of the same shape loads."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from edgewise import load_datasets_from_json
from edgewise.mib.data import load_mib_rows, load_mib_task
from edgewise.models.kinds import word_tokenizer

FIELDS = ("clean", "corrupt", "answers", "wrong_answers")
TOP = ("prompts", "seq_labels", "word_idxs")
N_PROMPTS, SEQ = 3, 4
HYPO = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def prompt(i: int) -> dict:
    return {"clean": [3, 4, 5, 6], "corrupt": [3, 4, 5, 7 + i], "answers": [1], "wrong_answers": [2]}


def load(path):
    return load_datasets_from_json(None, path, train_test_size=(N_PROMPTS, 0), batch_size=1,
                                   shuffle=False)[0]  # fmt: skip


def refused(path, *fragments: str) -> str:
    """Load ``path``, expect a ValueError naming the file and every fragment, and check
    the file is unchanged; return the message."""
    before = path.read_bytes()
    with pytest.raises(ValueError) as err:
        load(path)
    message = str(err.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert path.read_bytes() == before
    assert "\n" not in message
    return message


def _one_edit(word: str):
    """Strategies for ``word`` with one character deleted, replaced or inserted."""
    letters = st.sampled_from("abcdefghijklmnopqrstuvwxyz_")
    i = st.integers(0, len(word) - 1)
    return st.one_of(
        i.map(lambda k: word[:k] + word[k + 1:]),
        st.tuples(i, letters).map(lambda t: word[: t[0]] + t[1] + word[t[0] + 1:]),
        st.tuples(st.integers(0, len(word)), letters).map(lambda t: word[: t[0]] + t[1] + word[t[0]:]),
    )


_field_typo = st.sampled_from(FIELDS).flatmap(lambda f: st.tuples(st.just(f), _one_edit(f)))


@HYPO
@given(typo=_field_typo, where=st.integers(0, N_PROMPTS - 1))
def test_a_misspelt_prompt_field_is_named_with_the_field_it_should_be(tmp_path, typo, where):
    field, wrong = typo
    assume(wrong not in FIELDS)
    prompts = [prompt(i) for i in range(N_PROMPTS)]
    prompts[where][wrong] = prompts[where].pop(field)
    path = tmp_path / "typo.json"
    path.write_text(json.dumps({"prompts": prompts}))
    refused(path, f"prompt {where}: unknown key {wrong!r} (did you mean {field!r}?)",
            "Rename or remove it")


def test_the_testers_wrong_answer_typo(tmp_path):
    prompts = [prompt(i) for i in range(N_PROMPTS)]
    prompts[1]["wrong_answer"] = prompts[1].pop("wrong_answers")
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"prompts": prompts}))
    refused(path, "prompt 1: unknown key 'wrong_answer' (did you mean 'wrong_answers'?)")


@HYPO
@given(typo=st.sampled_from(TOP[1:]).flatmap(lambda f: st.tuples(st.just(f), _one_edit(f))))
def test_a_misspelt_top_level_key_is_named(tmp_path, typo):
    field, wrong = typo
    assume(wrong not in TOP)
    path = tmp_path / "top.json"
    path.write_text(json.dumps({"prompts": [prompt(i) for i in range(N_PROMPTS)],
                                wrong: ["a"] * SEQ if field == "seq_labels" else {"x": 1}}))  # fmt: skip
    refused(path, f"the top-level object: unknown key {wrong!r} (did you mean {field!r}?)")


@HYPO
@given(where=st.integers(0, N_PROMPTS - 1), field=st.sampled_from(FIELDS),
       other=st.lists(st.integers(3, 15), min_size=1, max_size=4))  # fmt: skip
def test_a_key_given_twice_is_refused_not_the_last_kept(tmp_path, where, field, other):
    items = []
    for i in range(N_PROMPTS):
        pairs = [f'"{k}": {json.dumps(v)}' for k, v in prompt(i).items()]
        if i == where:
            pairs.insert(0, f'"{field}": {json.dumps(other)}')  # the first of the two
        items.append("{" + ", ".join(pairs) + "}")
    path = tmp_path / "dup.json"
    path.write_text('{"prompts": [' + ", ".join(items) + "]}")
    refused(path, f"prompt {where} has the key {field!r} 2 times", "Keep one")
    with pytest.raises(ValueError, match="2 times"):  # json.loads alone would keep the last
        json.loads(path.read_text(), object_pairs_hook=_no_duplicates)


def _no_duplicates(pairs):
    if len({k for k, _ in pairs}) != len(pairs):
        raise ValueError("2 times")
    return dict(pairs)


@pytest.mark.parametrize(("text", "where"), [
    ('{"prompts": %s, "prompts": %s}', "the top-level object has the key 'prompts'"),
    ('{"prompts": %s, "word_idxs": {"IO": 1, "IO": 2}}', "\"word_idxs\" has the key 'IO' 2 times (1 and 2)"),
])  # fmt: skip
def test_duplicates_outside_prompts_are_named_by_their_place(tmp_path, text, where):
    prompts = json.dumps([prompt(i) for i in range(N_PROMPTS)])
    path = tmp_path / "d.json"
    path.write_text(text % ((prompts, prompts) if text.count("%s") == 2 else (prompts,)))
    refused(path, where)


_label = st.text(min_size=0, max_size=3)
_seq_labels = st.one_of(
    st.lists(_label, max_size=8),  # any length: only SEQ is right
    st.lists(st.one_of(_label, st.integers(), st.none(), st.floats(allow_nan=False)), min_size=1, max_size=6),
    st.dictionaries(st.text(max_size=2), _label, max_size=2), st.text(max_size=4), st.integers(),
)


@HYPO
@given(labels=_seq_labels)
def test_seq_labels_load_exactly_when_one_string_per_position(tmp_path, labels):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"prompts": [prompt(i) for i in range(N_PROMPTS)], "seq_labels": labels}))
    valid = isinstance(labels, list) and len(labels) == SEQ and all(isinstance(x, str) for x in labels)
    if valid:
        assert load(path).seq_labels == labels
    else:
        refused(path, '"seq_labels"', "one label per position")


_positions = st.one_of(st.integers(-6, 9), st.text(max_size=2), st.none(), st.booleans(),
                       st.floats(allow_nan=False), st.lists(st.integers(0, 3), max_size=2))  # fmt: skip


@HYPO
@given(word_idxs=st.dictionaries(st.text(min_size=1, max_size=3), _positions, min_size=1, max_size=3))
def test_word_idxs_load_exactly_when_every_position_is_in_the_prompts(tmp_path, word_idxs):
    path = tmp_path / "words.json"
    path.write_text(json.dumps({"prompts": [prompt(i) for i in range(N_PROMPTS)], "word_idxs": word_idxs}))
    bad = [k for k, v in word_idxs.items()
           if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < SEQ]  # fmt: skip
    if not bad:
        assert load(path).word_idxs == word_idxs
    else:
        message = refused(path, f'"word_idxs"[{bad[0]!r}]')
        assert "position" in message and ("fix the position" in message or "must be an int" in message)


def test_seq_labels_of_padded_prompts_label_the_padded_positions(tmp_path):
    prompts = [prompt(0), {"clean": [3, 4, 5], "corrupt": [3, 4, 8], "answers": [1], "wrong_answers": [2]},
               prompt(2)]  # fmt: skip
    short, padded = tmp_path / "short.json", tmp_path / "padded.json"
    short.write_text(json.dumps({"prompts": prompts, "seq_labels": ["a", "b", "c"]}))
    padded.write_text(json.dumps({"prompts": prompts, "seq_labels": ["a", "b", "c", "d"]}))
    kwargs = {"train_test_size": (3, 0), "batch_size": 1, "shuffle": False, "pad_id": 0}
    with pytest.warns(UserWarning, match="padding"):
        train, _ = load_datasets_from_json(None, padded, **kwargs)
    assert train.seq_labels == ["a", "b", "c", "d"]
    with pytest.raises(  # refused before padding
        ValueError, match=r"short\.json: \"seq_labels\" has 3 labels but the prompts have 4 token "
                          r"positions; give one label per position"):
        load_datasets_from_json(None, short, **kwargs)


# ------------------------------------------------------------------ MIB answers
def _ioi_rows_without(word: str) -> tuple[list[dict], object]:
    rows = load_mib_rows("ioi", None, "train")
    words = {w for r in rows for w in json.dumps(r).replace('"', " ").replace(",", " ").split()}
    return rows, word_tokenizer(sorted(words - {word}))


def test_a_mib_answer_missing_from_the_vocabulary_is_refused_not_unk(tmp_path):
    rows, tok = _ioi_rows_without("Mary")
    row = next(i for i, r in enumerate(rows) if r["metadata"]["indirect_object"] == "Mary")
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = path.read_bytes()
    with pytest.raises(ValueError) as err:
        load_mib_task("ioi", path, tok)
    message = str(err.value)
    assert message.startswith(f"{path}: ioi row {row}: the answer ' Mary' is not in the tokenizer's "
                              "vocabulary (it becomes the unknown token '<unk>', id 2)")
    assert "use the model's own tokenizer" in message
    assert path.read_bytes() == before


def test_mib_answers_in_the_vocabulary_still_load():
    rows, tok = _ioi_rows_without("no-such-word")
    ds = load_mib_task("ioi", None, tok)
    assert all(int(a[0]) != tok.unk_token_id for a in ds.answers + ds.wrong_answers)
