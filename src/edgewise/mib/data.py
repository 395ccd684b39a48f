"""MIB's circuit-track task data, read from local files into a
:class:`~edgewise.data.PromptDataset`.

Every convention here follows ``hannamw/MIB-circuit-track``
(``MIB_circuit_track/dataset.py``: ``HFEAPDataset``; ``run_attribution.py`` and
``run_evaluation.py`` for the defaults) and ``hannamw/EAP-IG`` (``src/eap/utils.py``:
``tokenize_plus``). Each task is a Hugging Face dataset ``mib-bench/<name>`` whose rows
hold a clean ``prompt`` and several counterfactual columns, each a nested row with its
own ``prompt`` (named ``*_counterfactual``):

- ``ioi``: the answer is the first token of ``" " + metadata.indirect_object``, the
  wrong answer that of ``" " + metadata.subject``; default ``s2_io_flip_counterfactual``.
- ``mcqa``, ``arc_easy``, ``arc_challenge``: the first token of
  ``choices.label[answerKey]``, and of the counterfactual row's
  ``choices.label[answerKey]``; default ``symbol_counterfactual``.
- ``arithmetic_addition``, ``arithmetic_subtraction``: the token of ``str(label)``, and
  of the counterfactual row's ``str(label)``; default (and in MIB the only one used)
  ``random_counterfactual``.

- MIB drops rows before use (``HFEAPDataset.filter_dataset``), and so does this loader:
  IOI rows whose ``" IO"``, ``" S"`` and ``" random_c"`` tokenize to different lengths;
  MCQA/ARC rows whose clean and counterfactual answer labels do; arithmetic rows whose
  answer or counterfactual answer is not one token, whose counterfactual is missing, or
  whose ``operator`` is not the task's (``"+"`` / ``"-"``).
- Answers are tokenized exactly as MIB does: IOI names with a leading space, MCQA/ARC
  labels and arithmetic results as stored (no space added), without special tokens;
  the first token is the answer.
- Prompts get a BOS token in front (MIB tokenizes with TransformerLens'
  ``to_tokens(prepend_bos=True)``, which uses the EOS token when a tokenizer has no BOS,
  e.g. Qwen's).
- Defaults: discovery reads the ``train`` split, the first 100 rows that survive the
  filters (``run_attribution.py``: ``--split train --num-examples 100``); evaluation reads
  all of ``validation`` (``run_evaluation.py``); ``test`` is MIB's public test split. Both
  use the task's default counterfactual. MCQA is the ``4_answer_choices`` configuration.

**Prompt lengths.** MIB batches prompts of different lengths by right-padding them
(EAP-IG ``tokenize_plus``: ``to_tokens(..., padding_side="right")``) and reading each
prompt's logits at its own last token (``get_logit_positions`` at ``input_lengths - 1``);
a clean prompt and its counterfactual are both run under the *clean* prompt's attention
mask. This loader does the same by default:

- pairs of different lengths from each other: the dataset keeps them unpadded with
  ``padding_side="right"``, and a :class:`~edgewise.data.PromptDataLoader` right-pads
  each batch to its longest prompt and records every prompt's length, so that every
  algorithm and metric that supports it reads each prompt at its own last token. In a
  causal model this is exact (each prompt's outputs are those of the prompt alone), with
  or without MIB's attention mask, which changes only the padding positions' own
  activations. ``padding_side="left"`` gives edgewise's older left padding (attended
  to, with a warning); :func:`split_by_length` gives one unpadded dataset per length.
- a clean prompt and its counterfactual of different token lengths: under the clean
  prompt's mask, MIB patches the counterfactual's activations at the clean prompt's
  positions, and everything after the clean prompt's last token is never read. So
  ``mismatched="fit"`` (the default) cuts a longer counterfactual to the clean prompt's
  length and right-pads a shorter one with the pad id (the tokens MIB's padded tensor
  holds there), with a warning naming how many; ``"error"`` refuses them, naming the
  rows; ``"drop"`` leaves them out.
- the pad id is the tokenizer's pad token, else its EOS (TransformerLens sets the pad
  token to the EOS when a tokenizer has none).

Reading files: a ``.jsonl`` / ``.json`` file (``Dataset.to_json`` writes JSON lines), a
``.parquet`` file (the Hub's format; needs ``pyarrow``, which ``datasets`` installs), an
``.arrow`` file (``Dataset.save_to_disk``), or a folder holding the split's files (a
Hub snapshot such as ``data/train-00000-of-00001.parquet``, or ``<split>.jsonl``).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import torch

from edgewise.data import PromptDataset
from edgewise.data.json_format import _encode

__all__ = [
    "MIB_TASKS",
    "MIBPair",
    "MIBTask",
    "load_mib_rows",
    "load_mib_task",
    "mib_pairs",
    "mib_task",
    "split_by_length",
]

Split = Literal["train", "validation", "test"]
SPLITS: tuple[str, ...] = ("train", "validation", "test")


@dataclass(frozen=True)
class MIBTask:
    """One MIB circuit-track task.

    Attributes:
        name: edgewise's name (MIB's ``--tasks`` name; MIB's file names use ``-``).
        hf_name: the Hugging Face dataset MIB loads.
        hf_config: its configuration, if any.
        kind: how rows become prompt pairs: ``"ioi"``, ``"choices"`` (MCQA, ARC) or
            ``"arithmetic"``.
        default_counterfactual: the counterfactual column MIB uses for discovery and
            evaluation.
        counterfactuals: counterfactual columns known to exist in the real data (any other
            ``*_counterfactual`` column of a file is accepted too).
        operator: for arithmetic, the ``operator`` value MIB keeps.
    """

    name: str
    hf_name: str
    hf_config: str | None
    kind: Literal["ioi", "choices", "arithmetic"]
    default_counterfactual: str
    counterfactuals: tuple[str, ...]
    operator: str | None = None


_CHOICE_CFS = (
    "symbol_counterfactual",
    "answerPosition_counterfactual",
    "randomLetter_counterfactual",
    "answerPosition_randomLetter_counterfactual",
)
# The default columns are in MIB's dataset.py. The others were read from third-party code
# that loads the same Hub datasets (not from MIB's circuit track, which uses only the
# defaults); the real data holds more (IOI 8, MCQA 9, arithmetic 7 types by those
# sources), which the loader accepts by their column names.
MIB_TASKS: dict[str, MIBTask] = {
    t.name: t
    for t in (
        MIBTask("ioi", "mib-bench/ioi", None, "ioi", "s2_io_flip_counterfactual",
                ("s2_io_flip_counterfactual", "s1_io_flip_counterfactual",
                 "abc_counterfactual", "random_names_counterfactual")),
        MIBTask("mcqa", "mib-bench/copycolors_mcqa", "4_answer_choices", "choices",
                "symbol_counterfactual", _CHOICE_CFS),
        MIBTask("arithmetic_addition", "mib-bench/arithmetic_addition", None, "arithmetic",
                "random_counterfactual", ("random_counterfactual",), "+"),
        MIBTask("arithmetic_subtraction", "mib-bench/arithmetic_subtraction", None,
                "arithmetic", "random_counterfactual", ("random_counterfactual",), "-"),
        MIBTask("arc_easy", "mib-bench/arc_easy", None, "choices", "symbol_counterfactual",
                _CHOICE_CFS),
        MIBTask("arc_challenge", "mib-bench/arc_challenge", None, "choices",
                "symbol_counterfactual", _CHOICE_CFS),
    )
}  # fmt: skip
"""The six tasks by name."""


def mib_task(name: str) -> MIBTask:
    """The task called ``name`` (``arithmetic-addition`` and ``arithmetic_addition`` are
    the same); a ``ValueError`` listing the tasks otherwise."""
    key = str(name).strip().lower().replace("-", "_")
    if key not in MIB_TASKS:
        raise ValueError(f"unknown MIB task {name!r}; the tasks are {', '.join(MIB_TASKS)}")
    return MIB_TASKS[key]


# ------------------------------------------------------------------------------ reading

_EXTS = (".jsonl", ".json", ".parquet", ".arrow")


def _shipped_dir(task: MIBTask) -> Any:
    return resources.files("edgewise").joinpath("datasets", "mib", task.name)


def _read_json_rows(text: str, source: str) -> list[Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and isinstance(data.get("rows"), list):
        return data["rows"]
    rows = []
    for i, line in enumerate(text.splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{source}: line {i + 1} is not JSON ({err}); expected JSON "
                    "lines (one row per line) or a JSON list of rows"
                ) from None
    return rows


def _read_file(path: Path) -> list[Any]:
    if path.suffix in (".parquet", ".arrow"):
        try:
            import pyarrow
        except ImportError:
            raise ImportError(
                f"{path}: reading {path.suffix} files needs pyarrow (pip install pyarrow), "
                "or export the split as JSON lines: Dataset.to_json('train.jsonl')"
            ) from None
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        with pyarrow.memory_map(str(path)) as source:
            try:
                return pyarrow.ipc.open_stream(source).read_all().to_pylist()
            except pyarrow.ArrowInvalid:
                return pyarrow.ipc.open_file(source).read_all().to_pylist()
    return _read_json_rows(path.read_text(encoding="utf-8"), str(path))


def _split_files(folder: Path, split: str, config: str | None) -> list[Path]:
    """The files of ``split`` under ``folder``: named ``<split>.<ext>`` or
    ``<split>-<shard>.<ext>`` (the Hub's shards); within ``config``'s subfolder when the
    folder has one."""
    found = sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.suffix in _EXTS
        and (p.stem == split or p.stem.startswith(f"{split}-"))
    )  # fmt: skip
    if config is not None and any(config in p.parts for p in found):
        found = [p for p in found if config in p.parts]
    arrow = [p for p in found if p.suffix == ".arrow"]
    return found if not arrow or len(arrow) == len(found) else [p for p in found if p not in arrow]


def load_mib_rows(
    task: str, path: str | os.PathLike[str] | None = None, split: Split = "train"
) -> list[dict[str, Any]]:
    """The raw rows of one split of a task's data, as dicts (nested columns as dicts).

    Args:
        task: a name from :data:`MIB_TASKS`.
        path: a file (``.jsonl``, ``.json``, ``.parquet``, ``.arrow``; it is the split),
            a folder holding the split's files, or ``None`` for the made-up examples
            shipped with edgewise (``edgewise/datasets/mib/<task>/<split>.jsonl``; not
            MIB's data).
        split: ``"train"``, ``"validation"`` or ``"test"`` (ignored when ``path`` is a file).

    Raises:
        FileNotFoundError: no such file, or no file of the split in the folder.
        ValueError: a file that is not rows of objects.
    """
    spec = mib_task(task)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; MIB's splits are {', '.join(SPLITS)}")
    if path is None:
        entry = _shipped_dir(spec).joinpath(f"{split}.jsonl")
        if not entry.is_file():
            raise FileNotFoundError(f"edgewise ships no {split!r} examples for {spec.name}")
        rows = _read_json_rows(entry.read_text(encoding="utf-8"), f"shipped {spec.name} {split}")
        source = f"the shipped {spec.name} {split} examples"
    else:
        p = Path(path)
        if p.is_file():
            files = [p]
        elif p.is_dir():
            files = _split_files(p, split, spec.hf_config)
            if not files:
                raise FileNotFoundError(
                    f"{p}: no {split!r} file (looked for {split}.jsonl/.json/.parquet/.arrow "
                    f"or {split}-*.parquet below it); download {spec.hf_name}"
                    + (f" (configuration {spec.hf_config!r})" if spec.hf_config else "")
                    + " or pass the split's file"
                )
        else:
            raise FileNotFoundError(f"no file or folder at {str(p)!r}")
        rows = [r for f in files for r in _read_file(f)]
        source = ", ".join(str(f) for f in files)
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, Mapping)), None)
    if bad is not None:
        raise ValueError(f"{source}: row {bad} is a {type(rows[bad]).__name__}, not an object")
    if not rows:
        raise ValueError(f"{source}: no rows")
    return [dict(r) for r in rows]


# ------------------------------------------------------------------------------ pairs


@dataclass(frozen=True)
class MIBPair:
    """One row of a task as MIB uses it: the clean and counterfactual prompt texts and
    the answer and wrong-answer token ids; ``row`` is its index in the split's rows."""

    row: int
    clean: str
    counterfactual: str
    answer: int
    wrong_answer: int


def _field(row: Mapping[str, Any], dotted: str, where: str) -> Any:
    value: Any = row
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            have = sorted(value) if isinstance(value, Mapping) else type(value).__name__
            raise ValueError(
                f"{where}: missing column {dotted!r} (found {have}); is this the right task's data?"
            )
        value = value[part]
    return value


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _counterfactual_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return sorted(k for k in rows[0] if k.endswith("_counterfactual"))


def _label(choice_row: Mapping[str, Any], where: str) -> str:
    labels = _field(choice_row, "choices.label", where)
    key = _field(choice_row, "answerKey", where)
    if not isinstance(key, int) or not 0 <= key < len(labels):
        raise ValueError(f"{where}: answerKey {key!r} is not an index into {labels!r}")
    return str(labels[key])


def mib_pairs(
    task: str,
    rows: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    counterfactual: str | None = None,
    *,
    source: str | None = None,
) -> list[MIBPair]:
    """The rows MIB keeps, as prompt pairs with answer ids (see the module docstring for
    each task's columns and filters). An answer the tokenizer does not know (it becomes
    the unknown token) is a ``ValueError`` naming ``source`` (the file), the row and the
    text, not a silent ``<unk>`` answer.

    Args:
        task: a name from :data:`MIB_TASKS`.
        rows: the split's rows (:func:`load_mib_rows`).
        tokenizer: a Hugging Face tokenizer (the answers are tokenized here).
        counterfactual: the counterfactual column; default the task's
            (``MIB_TASKS[task].default_counterfactual``).

    Raises:
        ValueError: an unknown counterfactual (listing the data's), a missing column
            (naming the row), or no row left after MIB's filters.
    """
    spec = mib_task(task)
    if not rows:
        raise ValueError(f"{spec.name}: no rows")
    cf_name = counterfactual or spec.default_counterfactual
    present = _counterfactual_columns(rows)
    if cf_name not in rows[0]:
        known = sorted(set(spec.counterfactuals) | set(present))
        raise ValueError(
            f"{spec.name}: no counterfactual column {cf_name!r} in the data; its "
            f"counterfactual columns are {present or '(none)'} (MIB's {spec.name} data has "
            f"{', '.join(known)}; the default is {spec.default_counterfactual!r})"
        )

    def n_tok(text: str) -> int:
        return len(_ids(tokenizer, text))

    pairs: list[MIBPair] = []
    for i, row in enumerate(rows):
        where = f"{source}: {spec.name} row {i}" if source else f"{spec.name} row {i}"
        clean = _field(row, "prompt", where)
        cf = row.get(cf_name)
        if spec.kind == "arithmetic":
            if row.get("operator") != spec.operator:
                continue
            if not isinstance(cf, Mapping) or cf.get("prompt") is None:
                continue
            answer, wrong = str(_field(row, "label", where)), str(_field(cf, "label", where))
            if n_tok(answer) != 1 or n_tok(wrong) != 1:
                continue
        elif spec.kind == "ioi":
            io = " " + str(_field(row, "metadata.indirect_object", where))
            s = " " + str(_field(row, "metadata.subject", where))
            c = " " + str(_field(row, "metadata.random_c", where))
            if not n_tok(io) == n_tok(s) == n_tok(c):
                continue
            answer, wrong = io, s
        else:
            if not isinstance(cf, Mapping):
                raise ValueError(f"{where}: column {cf_name!r} is {cf!r:.60}, not a row")
            answer, wrong = _label(row, where), _label(cf, f"{where}: {cf_name}")
            if n_tok(answer) != n_tok(wrong):
                continue
        if not isinstance(cf, Mapping):
            raise ValueError(f"{where}: column {cf_name!r} is {cf!r:.60}, not a row")
        cf_prompt = _field(cf, "prompt", f"{where}: {cf_name}")
        for what, text in (("prompt", clean), (f"{cf_name}.prompt", cf_prompt)):
            if not isinstance(text, str) or not text:
                raise ValueError(f"{where}: {what} must be a non-empty string, got {text!r:.60}")
        a, w = _ids(tokenizer, answer), _ids(tokenizer, wrong)
        if not a or not w:
            raise ValueError(f"{where}: the answer {answer!r} or {wrong!r} tokenizes to nothing")
        _refuse_unknown(tokenizer, where, (("answer", answer, a[0]), ("wrong answer", wrong, w[0])))
        pairs.append(MIBPair(i, clean, cf_prompt, a[0], w[0]))
    if not pairs:
        raise ValueError(
            f"{spec.name}: none of the {len(rows)} rows passes MIB's filters with this "
            "tokenizer (answers of one length"
            + (", one token, the task's operator" if spec.kind == "arithmetic" else "")
            + ")"
        )
    return pairs


def _refuse_unknown(tokenizer: Any, where: str, answers: Sequence[tuple[str, str, int]]) -> None:
    """A ``ValueError`` when an answer's text became the tokenizer's unknown token: every
    such answer would be one and the same id, so the metric would compare nothing."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return
    for what, text, first in answers:
        if first == unk and text.strip() != getattr(tokenizer, "unk_token", None):
            raise ValueError(
                f"{where}: the {what} {text!r} is not in the tokenizer's vocabulary (it "
                f"becomes the unknown token {getattr(tokenizer, 'unk_token', None)!r}, id "
                f"{unk}); use the model's own tokenizer, or fix or drop that row"
            )


def _bos_id(tokenizer: Any) -> int | None:
    """TransformerLens' BOS: the tokenizer's, else its EOS (``set_tokenizer``)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return bos if bos is not None else getattr(tokenizer, "eos_token_id", None)


def load_mib_task(
    task: str,
    path: str | os.PathLike[str] | None,
    tokenizer: Any,
    counterfactual: str | None = None,
    split: Split = "train",
    *,
    num_examples: int | None = None,
    prepend_bos: bool = True,
    mismatched: Literal["fit", "error", "drop"] = "fit",
    pad: bool = True,
    padding_side: Literal["right", "left"] = "right",
    pad_id: int | None = None,
    device: torch.device | str = "cpu",
) -> PromptDataset:
    """One split of an MIB task as a :class:`PromptDataset`, as MIB builds it.

    Args:
        task: ``ioi``, ``mcqa``, ``arithmetic_addition``, ``arithmetic_subtraction``,
            ``arc_easy`` or ``arc_challenge`` (:data:`MIB_TASKS`).
        path: the data (see :func:`load_mib_rows`); ``None``: edgewise's made-up examples.
        tokenizer: the model's Hugging Face tokenizer (``model.tokenizer``).
        counterfactual: the counterfactual column; default the task's (MIB's default for
            both discovery and evaluation).
        split: ``"train"`` (MIB's discovery default), ``"validation"`` (its evaluation
            default) or ``"test"``.
        num_examples: keep the first ``n`` rows that pass MIB's filters (MIB's discovery
            uses 100); ``None``: all.
        prepend_bos: put the BOS token (the EOS when the tokenizer has none) in front of
            each prompt, as MIB does.
        mismatched: a clean prompt and its counterfactual of different token lengths:
            ``"fit"`` (MIB's runs) cuts or right-pads the counterfactual to the clean
            prompt's length, with a warning; ``"error"`` names them; ``"drop"`` drops them
            with a warning (see the module docstring).
        pad: pad pairs of different lengths, per batch (see ``padding_side``); ``False``:
            keep them ragged without a pad id (a loader then refuses batches of mixed
            lengths; :func:`split_by_length` splits them).
        padding_side: ``"right"`` (MIB's, exact: each prompt read at its own last token;
            the dataset stays unpadded and its loader pads each batch) or ``"left"``
            (edgewise's older padding of the whole dataset, attended to, with a warning).
        pad_id: the padding id; default the tokenizer's pad token, else its EOS.
        device: where the tensors live.

    Returns:
        A dataset with ``clean``/``corrupt`` token ids (``[n, seq]`` when every prompt has
        one length or they were left-padded, else ragged with ``padding_side="right"``)
        and ``answers``/``wrong_answers`` of one id each (``[1]`` per prompt).

    Raises:
        ValueError: an unknown task, split, counterfactual or option; a missing column;
            unequal clean/counterfactual lengths with ``mismatched="error"``.
    """
    if mismatched not in ("fit", "error", "drop"):
        raise ValueError(f"mismatched must be 'fit', 'error' or 'drop', got {mismatched!r}")
    if padding_side not in ("right", "left"):
        raise ValueError(
            f"padding_side must be 'right' (MIB's) or 'left', got {padding_side!r}"
        )
    spec = mib_task(task)
    pairs = mib_pairs(spec.name, load_mib_rows(spec.name, path, split), tokenizer, counterfactual,
                      source=str(path) if path is not None else f"the shipped {split} examples")
    if num_examples is not None:
        if not isinstance(num_examples, int) or num_examples < 1:
            raise ValueError(f"num_examples must be a positive int or None, got {num_examples!r}")
        pairs = pairs[:num_examples]
    prefix: list[int] = []
    if prepend_bos:
        bos = _bos_id(tokenizer)
        if bos is None:
            raise ValueError(
                "prepend_bos=True but the tokenizer has no BOS or EOS token; pass prepend_bos=False"
            )
        prefix = [bos]
    if pad_id is None:
        pad_id = getattr(tokenizer, "pad_token_id", None)
        pad_id = pad_id if pad_id is not None else getattr(tokenizer, "eos_token_id", None)
    clean = [prefix + ids for ids in _encode(tokenizer, [p.clean for p in pairs])]
    corrupt = [prefix + ids for ids in _encode(tokenizer, [p.counterfactual for p in pairs])]
    unequal = [k for k, (c, x) in enumerate(zip(clean, corrupt)) if len(c) != len(x)]
    cf_name = counterfactual or spec.default_counterfactual
    if unequal:
        shown = ", ".join(
            f"row {pairs[k].row} ({len(clean[k])} vs {len(corrupt[k])} tokens)" for k in unequal[:5]
        )
        more = f" and {len(unequal) - 5} more" if len(unequal) > 5 else ""
        what = (
            f"{spec.name} {split}: {len(unequal)} of {len(pairs)} clean prompts and their "
            f"{cf_name} have different token lengths: {shown}{more}"
        )
        if mismatched == "error":
            raise ValueError(
                f"{what}. Pass mismatched='fit' to patch them as MIB does (the counterfactual "
                "cut or right-padded to the clean prompt's length), mismatched='drop' to leave "
                "them out, or choose another counterfactual."
            )
        if mismatched == "fit":
            if pad_id is None and any(len(corrupt[k]) < len(clean[k]) for k in unequal):
                raise ValueError(
                    f"{what}; fitting a shorter counterfactual to its clean prompt pads it, but "
                    "the tokenizer has no pad or EOS token: pass pad_id=..."
                )
            warnings.warn(
                f"{what}; each counterfactual is cut or right-padded (pad id {pad_id}) to its "
                "clean prompt's length, the positions MIB's runs patch (mismatched='fit')",
                UserWarning, stacklevel=2,
            )  # fmt: skip
            for k in unequal:
                n = len(clean[k])
                corrupt[k] = corrupt[k][:n] + [pad_id] * (n - len(corrupt[k]))  # type: ignore[list-item]
        else:
            warnings.warn(f"{what}; dropping them (mismatched='drop')", UserWarning, stacklevel=2)
            keep = [k for k in range(len(pairs)) if k not in set(unequal)]
            if not keep:
                raise ValueError(f"{what}; none is left after dropping them")
            pairs = [pairs[k] for k in keep]
            clean, corrupt = [clean[k] for k in keep], [corrupt[k] for k in keep]
    lengths = sorted({len(c) for c in clean})
    if pad and len(lengths) > 1 and pad_id is None:
        raise ValueError(
            f"{spec.name} {split}: the prompts have different lengths ({lengths}) but the "
            "tokenizer has no pad or EOS token; pass pad_id=..., pad=False, or use "
            "split_by_length on an unpadded dataset"
        )

    def ids(rows: list[list[int]]) -> list[torch.Tensor]:
        return [torch.tensor(r, dtype=torch.int64, device=device) for r in rows]

    return PromptDataset(
        ids(clean), ids(corrupt), ids([[p.answer] for p in pairs]),
        ids([[p.wrong_answer] for p in pairs]), pad_id=pad_id if pad else None,
        vocab_size=len(tokenizer), padding_side=padding_side,
    )  # fmt: skip


def split_by_length(dataset: PromptDataset) -> dict[int, PromptDataset]:
    """One unpadded dataset per prompt length, ``{length: dataset}`` in length order: for
    the algorithms that read every prompt at one position (ACDC, exact patching, learned
    masks, ...), which refuse right-padded batches. ``dataset`` must not be left-padded
    (right-padded datasets stay unpadded until batched).

    Returns:
        ``{seq: PromptDataset}`` with ``[n_seq, seq]`` prompts, in the original order.
    """
    if dataset.padded:
        raise ValueError(
            "the dataset was left-padded; load it with padding_side='right' or pad=False, then "
            "split it"
        )
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(dataset.lengths.tolist()):
        groups.setdefault(int(n), []).append(i)
    return {
        n: PromptDataset(
            [dataset.clean[i] for i in idx], [dataset.corrupt[i] for i in idx],
            [dataset.answers[i] for i in idx], [dataset.wrong_answers[i] for i in idx],
            vocab_size=dataset.vocab_size,
        )
        for n, idx in sorted(groups.items())
    }  # fmt: skip
