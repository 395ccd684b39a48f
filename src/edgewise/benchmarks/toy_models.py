"""Toy models trained by this project, shipped with the package, and their tasks.

``toy-ioi`` is a 2-layer TransformerLens ``HookedTransformer`` (LayerNorm, GELU MLPs)
trained with ``scripts/train_toy_ioi.py`` on a synthetic indirect-object-identification
task over a word-level vocabulary. Every prompt has the same 15 tokens::

    pos   0     1     2   3    4   5    6   7    8    9  10   11    12  13   14
          <bos> When Mary and John went to  the store ,  John gave  a  book to  -> Mary

(ABBA order: ``N1`` is the indirect object ``IO`` and ``N2`` the subject ``S``; in the
BABA order ``N1`` is ``S`` and ``N2`` is ``IO``; ``S2`` at position 10 repeats ``S``.)
The lead word (position 1), the movement words (5, 6), the place (8), the giving verb
(11) and the object (13) vary. Name pairs and (lead, movement, verb) templates are split
into training and held-out sets (:func:`is_heldout_pair`, :func:`is_heldout_template`);
the shipped dataset ``toy_ioi`` and the documented accuracy use prompts whose name pair
*and* template were both held out of training.

The mechanism and the official circuit are documented in ``docs/toy_ioi.md`` and
:mod:`edgewise.benchmarks.official.toy_ioi`.

Everything here is offline: weights, config and vocabulary are read with
:mod:`importlib.resources`, so they load from an installed wheel as well as from the
source tree.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import torch

from edgewise.models.kinds import ModelKind

__all__ = [
    "NAMES",
    "TOY_IOI_SEQ_LEN",
    "TOY_IOI_SEQ_LABELS",
    "TOY_IOI_WORD_IDXS",
    "ToyIOIPrompt",
    "available",
    "is_heldout_pair",
    "is_heldout_template",
    "load",
    "sample_toy_ioi_prompts",
    "toy_ioi_abc_corrupt",
    "toy_ioi_dataloaders",
    "toy_ioi_tokenizer",
    "toy_ioi_vocab",
]

# ------------------------------------------------------------------------------- the task

NAMES: tuple[str, ...] = (
    "Mary", "John", "Alice", "Bob", "Tom", "Anna", "James", "Kate", "Paul", "Lisa", "Mark",
    "Sarah", "David", "Emma", "Peter", "Laura", "Chris", "Julia", "Adam", "Rose", "Sam",
    "Nina", "Max", "Lucy",
)
LEADS: tuple[str, ...] = ("When", "After", "While", "Once")
MOVES: tuple[tuple[str, str], ...] = (
    ("went", "to"), ("walked", "to"), ("ran", "to"), ("got", "to"), ("were", "at"),
)
PLACES: tuple[str, ...] = (
    "store", "park", "school", "office", "garden", "station", "beach", "library",
)
GIVES: tuple[str, ...] = ("gave", "handed", "passed", "sent", "threw")
OBJECTS: tuple[str, ...] = ("book", "ball", "drink", "letter", "key", "ring", "bag", "apple")

SPECIAL_TOKENS: tuple[str, ...] = ("<bos>", "<pad>", "<unk>")

TOY_IOI_SEQ_LEN = 15
"""Token length of every toy-IOI prompt (BOS included)."""

TOY_IOI_SEQ_LABELS: tuple[str, ...] = (
    "<|BOS|>", "LEAD", "N1", "and", "N2", "MOVE", "PREP", "the", "PLACE", ",", "S2", "GIVE",
    "a", "OBJ", "end",
)
"""A label per token position (``N1``/``N2``: the first/second name, ``S2``: the repeated
subject, ``end``: the final ``to``, where the answer is predicted)."""

TOY_IOI_WORD_IDXS: dict[str, int] = {"N1": 2, "N2": 4, "S2": 10, "end": 14}
"""Token positions of the named words. In ABBA prompts IO is at ``N1`` and S1 at ``N2``;
in BABA prompts the other way round."""

Split = Literal["train", "heldout", "heldout_pairs", "heldout_templates", "all"]


def toy_ioi_vocab() -> list[str]:
    """All tokens in id order: the 3 special tokens, then names, then template words."""
    words: list[str] = [*SPECIAL_TOKENS, *NAMES]
    for w in (*LEADS, "and", *(w for m in MOVES for w in m), "the", *PLACES, ",", *GIVES,
              "a", *OBJECTS, "to"):
        if w not in words:
            words.append(w)
    return words


def is_heldout_pair(a: str, b: str) -> bool:
    """Whether the unordered name pair ``{a, b}`` never occurs in training (about a quarter
    of the 276 pairs)."""
    i, j = sorted((NAMES.index(a), NAMES.index(b)))
    return (i + j) % 4 == 0


def is_heldout_template(lead: str, move: tuple[str, str], give: str) -> bool:
    """Whether the (lead word, movement words, giving verb) combination never occurs in
    training (20 of the 100 combinations; each word alone is seen in training)."""
    return (LEADS.index(lead) + MOVES.index(move) + GIVES.index(give)) % 5 == 0


@dataclass(frozen=True)
class ToyIOIPrompt:
    """One toy-IOI prompt.

    Attributes:
        words: the ``TOY_IOI_SEQ_LEN - 1`` words after BOS.
        io: the indirect object (the answer); s: the subject (the wrong answer).
        order: ``"ABBA"`` (IO first) or ``"BABA"`` (S first).
        lead, move, place, give, obj: the template's slot fillers.
    """

    io: str
    s: str
    order: Literal["ABBA", "BABA"]
    lead: str
    move: tuple[str, str]
    place: str
    give: str
    obj: str

    @property
    def words(self) -> list[str]:
        n1, n2 = (self.io, self.s) if self.order == "ABBA" else (self.s, self.io)
        return [self.lead, n1, "and", n2, *self.move, "the", self.place, ",", self.s,
                self.give, "a", self.obj, "to"]

    @property
    def text(self) -> str:
        return " ".join(self.words)


def _pair_ok(a: str, b: str, split: Split) -> bool:
    held = is_heldout_pair(a, b)
    if split in ("train", "heldout_templates"):
        return not held
    if split in ("heldout", "heldout_pairs"):
        return held
    return True


def _template_ok(lead: str, move: tuple[str, str], give: str, split: Split) -> bool:
    held = is_heldout_template(lead, move, give)
    if split in ("train", "heldout_pairs"):
        return not held
    if split in ("heldout", "heldout_templates"):
        return held
    return True


def sample_toy_ioi_prompts(n: int, split: Split = "heldout", seed: int = 0) -> list[ToyIOIPrompt]:
    """``n`` random prompts (``random.Random(seed)``, so the same on every run).

    Args:
        n: number of prompts.
        split: ``"train"`` (training pairs and templates), ``"heldout"`` (held-out pairs
            *and* held-out templates), ``"heldout_pairs"`` (held-out pairs, training
            templates), ``"heldout_templates"`` (training pairs, held-out templates) or
            ``"all"``.
        seed: the random seed.
    """
    rng = random.Random(seed)
    pairs = [(a, b) for a in NAMES for b in NAMES if a != b and _pair_ok(a, b, split)]
    templates = [
        (lead, move, give)
        for lead in LEADS for move in MOVES for give in GIVES
        if _template_ok(lead, move, give, split)
    ]
    out = []
    for _ in range(n):
        io, s = rng.choice(pairs)
        lead, move, give = rng.choice(templates)
        out.append(ToyIOIPrompt(
            io=io, s=s, order=rng.choice(("ABBA", "BABA")), lead=lead, move=move,
            place=rng.choice(PLACES), give=give, obj=rng.choice(OBJECTS),
        ))
    return out


def toy_ioi_abc_corrupt(prompt: ToyIOIPrompt, rng: random.Random) -> list[str]:
    """The "ABC" corruption of Wang et al. (2022): the same template with the three name
    slots (``N1``, ``N2``, ``S2``) filled by three distinct names, none of them the
    prompt's IO or S. Returns the words after BOS."""
    others = [x for x in NAMES if x not in (prompt.io, prompt.s)]
    a, b, c = rng.sample(others, 3)
    words = list(prompt.words)
    words[TOY_IOI_WORD_IDXS["N1"] - 1] = a
    words[TOY_IOI_WORD_IDXS["N2"] - 1] = b
    words[TOY_IOI_WORD_IDXS["S2"] - 1] = c
    return words


def toy_ioi_tokenizer(vocab: Sequence[str] | None = None) -> Any:
    """The word-level Hugging Face tokenizer of ``vocab`` (default :func:`toy_ioi_vocab`;
    the first three entries must be ``<bos>``, ``<pad>``, ``<unk>``)."""
    from edgewise.models.kinds import word_tokenizer

    vocab = list(vocab if vocab is not None else toy_ioi_vocab())
    if tuple(vocab[:3]) != SPECIAL_TOKENS:
        raise ValueError(f"the vocabulary must start with {SPECIAL_TOKENS}, got {vocab[:3]}")
    tok = word_tokenizer(vocab[3:], bos=SPECIAL_TOKENS[0], pad=SPECIAL_TOKENS[1])
    if tok.get_vocab() != {w: i for i, w in enumerate(vocab)}:
        raise ValueError("the vocabulary has duplicate words")
    tok.eos_token = SPECIAL_TOKENS[0]  # so TransformerLens does not invent an unknown EOS
    return tok


def encode(words: Sequence[str], vocab: Sequence[str] | None = None) -> list[int]:
    """Token ids of ``[<bos>, *words]`` (``[TOY_IOI_SEQ_LEN]`` for a prompt's words)."""
    index = {w: i for i, w in enumerate(vocab if vocab is not None else toy_ioi_vocab())}
    return [0, *(index[w] for w in words)]


# ------------------------------------------------------------------------------- loading

_MODELS: dict[str, str] = {"toy-ioi": "toy_ioi"}
"""Model name -> folder under ``edgewise/weights/``."""

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"


def available() -> list[str]:
    """Names of the shipped toy models, for :func:`load`."""
    return sorted(_MODELS)


def _model_dir(name: str) -> Any:
    if name not in _MODELS:
        raise ValueError(f"unknown toy model {name!r}; available: {', '.join(available())}")
    return resources.files("edgewise").joinpath("weights", _MODELS[name])


def load_config(name: str = "toy-ioi") -> dict[str, Any]:
    """The shipped model's ``HookedTransformerConfig`` fields (JSON values; ``dtype`` as a
    string)."""
    return json.loads(_model_dir(name).joinpath(CONFIG_FILE).read_text(encoding="utf-8"))


def load_vocab(name: str = "toy-ioi") -> list[str]:
    """The shipped model's vocabulary: token strings in id order."""
    return json.loads(_model_dir(name).joinpath(VOCAB_FILE).read_text(encoding="utf-8"))


HF_DIR = "hf"
"""Subfolder with the same model as a Hugging Face GPT-2 checkpoint (config, safetensors,
tokenizer), written by ``scripts/export_toy_ioi_hf.py``."""


def load_weights(name: str = "toy-ioi") -> dict[str, torch.Tensor]:
    """The shipped model's TransformerLens-format weights."""
    from safetensors.torch import load as load_safetensors

    return load_safetensors(_model_dir(name).joinpath(WEIGHTS_FILE).read_bytes())


def load(name: str = "toy-ioi", device: str | torch.device = "cpu", kind: ModelKind | None = None,
         dtype: torch.dtype = torch.float32) -> Any:
    """A shipped toy model in eval mode with its word-level tokenizer attached
    (``model.tokenizer``).

    Args:
        name: one of :func:`available`.
        device: where the model lives.
        kind: ``"hooked"``: a ``HookedTransformer`` built from the TransformerLens-format
            weights (TransformerLens 3.x); ``"bridge"``: a ``TransformerBridge`` booted from
            the shipped Hugging Face GPT-2 checkpoint (3.9 and 4.x; the unembedding bias is
            folded into the final LayerNorm's bias, so logits agree to float rounding).
            Default: ``"hooked"`` where TransformerLens has it, else ``"bridge"``.
        dtype: the parameters' dtype (the shipped weights are float32).

    Raises:
        ValueError: ``name`` is not a shipped model (the message lists the valid names).
    """
    from edgewise.models.kinds import from_tl_weights, load_hf_bridge, resolve_kind

    folder = _model_dir(name)
    vocab = load_vocab(name)
    fields = load_config(name)
    if len(vocab) != fields["d_vocab"]:
        raise ValueError(f"{name}: {len(vocab)} vocabulary entries but d_vocab={fields['d_vocab']}")
    if resolve_kind(kind) == "bridge":
        with resources.as_file(folder.joinpath(HF_DIR)) as path:
            model = load_hf_bridge(path, tokenizer=toy_ioi_tokenizer(vocab), device=str(device),
                                   dtype=dtype)  # fmt: skip
        return model.eval()
    return from_tl_weights({**fields, "dtype": dtype}, load_weights(name), kind="hooked",
                           tokenizer=toy_ioi_tokenizer(vocab), device=device)


def toy_ioi_dataloaders(
    model: Any = None,
    batch_size: int | tuple[int, int] = 32,
    train_test_size: Sequence[int | float] = (256, 256),
    dataset: str = "toy_ioi",
    device: str | torch.device = "cpu",
    shuffle: bool = True,
    seed: int = 42,
) -> tuple[Any, Any]:
    """``(train, test)`` :class:`~edgewise.data.PromptDataLoader` s over the shipped
    toy-IOI dataset (512 clean/ABC-corrupt pairs of held-out names and templates).

    Prompts are token ids, ``[batch, 15]``; the loaders' ``seq_len`` is 15, so a
    patchable model built with ``patchable_model(model, seq_len=15)`` can patch edges per
    token position. ``answers`` are ``[batch, 1]`` IO ids, ``wrong_answers`` ``[batch, 1]``
    S ids.

    Args:
        model: optional; its ``cfg.d_vocab`` bounds the token ids.
        batch_size: per-loader batch size, or ``(train, test)``.
        train_test_size: counts or fractions of the 512 pairs (see
            :func:`edgewise.data.load_datasets_from_json`).
        dataset: the shipped dataset's name.
        device: where the tensors live.
        shuffle / seed: shuffle the pairs once before splitting.
    """
    from edgewise.data import load_datasets_from_json

    wrapped = getattr(model, "wrapped_model", model)
    return load_datasets_from_json(
        wrapped, dataset, device=device, batch_size=batch_size,
        train_test_size=train_test_size, return_seq_length=True, shuffle=shuffle,
        random_seed=seed, pad=False,
    )
