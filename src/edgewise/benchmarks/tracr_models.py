"""Tracr models: RASP programs compiled to transformer weights, as TransformerLens models.

The ACDC paper (Conmy et al. 2023) and auto-circuit evaluate circuit discovery on two
programs compiled with DeepMind's tracr, whose circuits are known by construction:

``reverse``
    ``reverse(tokens)`` over the vocabulary ``{1, 2, 3}``: ``length`` is a selector width
    of an all-true selector, ``opp_index = length - indices - 1``, and the output at
    position ``i`` aggregates the token at ``opp_index``. Categorical output: one logit
    per vocabulary value, decoded by argmax. Four layers, one head each, with MLPs.
``xproportion``
    ``frac_prevs(tokens == "x")`` over ``{"w", "x", "y", "z"}``: the fraction of the
    tokens up to and including position ``i`` that are ``"x"``. Numerical output: a single
    real value per position. Two layers, one head each, with MLPs.

Both are compiled with a maximum sequence length of 5 and the compiler BOS token
``"BOS"``, so inputs are ``[BOS, t1, ..., t5]`` (6 token ids) and the interesting outputs
are at positions ``1:`` (``slice_output="not_first_seq"``).

tracr is an optional dependency (``pip install edgewise[tracr]``); it is imported only
when a model is compiled. The prompt datasets and :func:`tracr_dataloaders` work
without it.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from edgewise.data import PromptDataLoader, PromptPair, load_dataset_json

if TYPE_CHECKING:
    from edgewise.models.kinds import ModelKind

__all__ = [
    "TRACR_BOS",
    "TRACR_MAX_SEQ_LEN",
    "TRACR_TASKS",
    "TracrInfo",
    "TracrPromptDataset",
    "TracrTask",
    "compile_tracr",
    "make_tracr_dataset",
    "tracr_dataloaders",
]

TracrTask = Literal["reverse", "xproportion"]
TRACR_TASKS: tuple[TracrTask, ...] = ("reverse", "xproportion")
TRACR_BOS = "BOS"
"""The compiler BOS token every input starts with."""
TRACR_MAX_SEQ_LEN = 5
"""Maximum number of tokens after BOS; model inputs have ``TRACR_MAX_SEQ_LEN + 1`` ids."""

_VOCABS: dict[str, tuple[Any, ...]] = {
    "reverse": (1, 2, 3),
    "xproportion": ("w", "x", "y", "z"),
}
_INSTALL_HINT = (
    "compiling tracr models needs the optional dependency tracr: pip install edgewise[tracr]"
)


def _check_task(task: str) -> None:
    if task not in TRACR_TASKS:
        raise ValueError(f"unknown tracr task {task!r}; expected one of {list(TRACR_TASKS)}")


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TracrInfo:
    """How to talk to a compiled tracr model.

    Attributes:
        task: ``"reverse"`` or ``"xproportion"``.
        vocab: the program's input values (without BOS and padding), sorted.
        encoding: input value (including ``bos_token`` and ``pad_token``) -> token id.
        decoding: token id -> input value (the inverse of ``encoding``).
        output_decoding: for categorical output, output index (position along the
            model's ``d_vocab_out`` logits) -> value; ``None`` for numerical output.
        bos_token / bos_id: the BOS value and its token id (every input starts with it).
        pad_token / pad_id: tracr's padding value and id. The converted model does not
            mask padding as tracr does, so only unpadded inputs match tracr.
        max_seq_len: tokens after BOS (5); inputs are at most ``max_seq_len + 1`` ids.
        categorical: ``True`` for ``reverse`` (logits decoded by argmax), ``False`` for
            ``xproportion`` (the single output value is the answer).
        tracr_model: tracr's ``AssembledTransformerModel`` (``.apply([...])`` runs it).
    """

    task: TracrTask
    vocab: tuple[Any, ...]
    encoding: Mapping[Any, int]
    decoding: Mapping[int, Any]
    output_decoding: Mapping[int, Any] | None
    bos_token: str
    bos_id: int
    pad_token: str
    pad_id: int
    max_seq_len: int
    categorical: bool
    tracr_model: Any = field(repr=False)

    @property
    def n_ctx(self) -> int:
        """Positions of the model, BOS included (``max_seq_len + 1``)."""
        return self.max_seq_len + 1

    def encode(self, values: Sequence[Any], add_bos: bool = True) -> Tensor:
        """Token ids ``[len(values) (+ 1)]`` (int64) of input ``values``, BOS first."""
        seq = [self.bos_token, *values] if add_bos else list(values)
        if len(seq) > self.n_ctx:
            raise ValueError(f"{len(seq)} tokens exceed the model's {self.n_ctx} positions")
        try:
            return torch.tensor([self.encoding[v] for v in seq], dtype=torch.int64)
        except KeyError as err:
            raise ValueError(f"{err.args[0]!r} is not in the vocabulary {self.vocab}") from None

    def decode_output(self, logits: Tensor) -> list[list[Any]]:
        """Decode model outputs like tracr: per position, the argmax value (categorical)
        or the output itself (numerical).

        Args:
            logits: ``[batch, seq, d_vocab_out]`` (or ``[seq, d_vocab_out]``).

        Returns:
            ``batch`` lists of ``seq`` values (position 0 decoded like the others; tracr
            itself reports ``bos_token`` there).
        """
        out = logits if logits.ndim == 3 else logits[None]
        if self.categorical:
            assert self.output_decoding is not None
            return [[self.output_decoding[int(i)] for i in row] for row in out.argmax(-1)]
        return [[float(v) for v in row] for row in out[..., 0]]


@dataclass(frozen=True)
class _Compiled:
    info: TracrInfo
    cfg: dict[str, Any]
    weights: dict[str, np.ndarray]


def _import_tracr() -> tuple[Any, Any, Any]:
    try:
        from tracr.compiler import compiling, lib
        from tracr.rasp import rasp
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(_INSTALL_HINT) from err
    return compiling, lib, rasp


def _rasp_program(task: TracrTask, lib: Any, rasp: Any) -> Any:
    """The RASP program of ``task`` (as in the ACDC paper)."""
    if task == "reverse":
        everything = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE)
        length = rasp.SelectorWidth(everything)
        opp_index = length - rasp.indices - 1
        flip = rasp.Select(rasp.indices, opp_index, rasp.Comparison.EQ)
        return rasp.Aggregate(flip, rasp.tokens)
    return lib.make_frac_prevs(rasp.tokens == "x")


def _unembedding(assembled: Any, d_model: int) -> np.ndarray:
    """tracr's unembedding (projection of the residual onto the output space),
    ``[d_model, d_vocab_out]``, obtained by applying it to the identity."""
    import haiku as hk
    import jax.numpy as jnp

    def unembed(x: Any) -> Any:
        return assembled.get_compiled_model().unembed(x, use_unembed_argmax=False)

    fn = hk.without_apply_rng(hk.transform(unembed))
    w_u = np.asarray(fn.apply({}, jnp.eye(d_model, dtype=jnp.float32)), dtype=np.float32)
    return w_u.reshape(d_model, -1)


@functools.cache
def _compile(task: TracrTask) -> _Compiled:
    """Compile ``task`` with tracr and collect TransformerLens-shaped weights (cached)."""
    compiling, lib, rasp = _import_tracr()
    vocab = _VOCABS[task]
    assembled = compiling.compile_rasp_to_model(
        _rasp_program(task, lib, rasp),
        vocab=set(vocab),
        max_seq_len=TRACR_MAX_SEQ_LEN,
        compiler_bos=TRACR_BOS,
    )
    mc = assembled.model_config
    if mc.layer_norm:
        raise NotImplementedError("tracr models with layer norm are not supported")
    params = {k: {n: np.asarray(v, dtype=np.float32) for n, v in p.items()}
              for k, p in assembled.params.items()}
    n_layers, n_heads, d_head = int(mc.num_layers), int(mc.num_heads), int(mc.key_size)
    w_e = params["token_embed"]["embeddings"]  # [d_vocab, d_model]
    w_pos = params["pos_embed"]["embeddings"]  # [n_ctx, d_model]
    d_vocab, d_model = w_e.shape
    w_u = _unembedding(assembled, d_model)  # [d_model, d_vocab_out]
    weights: dict[str, np.ndarray] = {
        "embed.W_E": w_e,
        "pos_embed.W_pos": w_pos,
        "unembed.W_U": w_u,
        "unembed.b_U": np.zeros(w_u.shape[1], dtype=np.float32),
    }

    def heads_in(w: np.ndarray) -> np.ndarray:  # [d_model, n*h] -> [n, d_model, h]
        return w.reshape(d_model, n_heads, d_head).transpose(1, 0, 2)

    for layer in range(n_layers):
        pre = f"transformer/layer_{layer}"
        for tl_name, tr_name in (("Q", "query"), ("K", "key"), ("V", "value")):
            weights[f"blocks.{layer}.attn.W_{tl_name}"] = heads_in(params[f"{pre}/attn/{tr_name}"]["w"])
            weights[f"blocks.{layer}.attn.b_{tl_name}"] = params[f"{pre}/attn/{tr_name}"]["b"].reshape(
                n_heads, d_head
            )
        weights[f"blocks.{layer}.attn.W_O"] = params[f"{pre}/attn/linear"]["w"].reshape(
            n_heads, d_head, d_model
        )
        weights[f"blocks.{layer}.attn.b_O"] = params[f"{pre}/attn/linear"]["b"]
        weights[f"blocks.{layer}.mlp.W_in"] = params[f"{pre}/mlp/linear_1"]["w"]
        weights[f"blocks.{layer}.mlp.b_in"] = params[f"{pre}/mlp/linear_1"]["b"]
        weights[f"blocks.{layer}.mlp.W_out"] = params[f"{pre}/mlp/linear_2"]["w"]
        weights[f"blocks.{layer}.mlp.b_out"] = params[f"{pre}/mlp/linear_2"]["b"]

    cfg = dict(
        model_name=f"tracr-{task}",
        n_layers=n_layers,
        d_model=int(d_model),
        d_head=d_head,
        n_heads=n_heads,
        d_mlp=int(mc.mlp_hidden_size),
        d_vocab=int(d_vocab),
        d_vocab_out=int(w_u.shape[1]),
        n_ctx=int(w_pos.shape[0]),
        act_fn="relu",
        normalization_type=None,
        attention_dir="causal" if mc.causal else "bidirectional",
        positional_embedding_type="standard",
        default_prepend_bos=False,
    )

    in_enc, out_enc = assembled.input_encoder, assembled.output_encoder
    encoding = dict(in_enc.encoding_map)
    categorical = hasattr(out_enc, "encoding_map")
    info = TracrInfo(
        task=task,
        vocab=tuple(sorted(vocab)),
        encoding=encoding,
        decoding={i: v for v, i in encoding.items()},
        output_decoding={i: v for v, i in out_enc.encoding_map.items()} if categorical else None,
        bos_token=TRACR_BOS,
        bos_id=int(in_enc.bos_encoding),
        pad_token=str(in_enc.pad_token),
        pad_id=int(in_enc.pad_encoding),
        max_seq_len=TRACR_MAX_SEQ_LEN,
        categorical=categorical,
        tracr_model=assembled,
    )
    return _Compiled(info=info, cfg=cfg, weights=weights)


def compile_tracr(
    task: TracrTask,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    kind: ModelKind | None = None,
) -> tuple[Any, TracrInfo]:
    """Compile a tracr program and convert it into a TransformerLens model.

    The tracr compilation is cached per process; every call returns a new model (so hook
    flags set on one model do not leak into another).

    The model has tracr's weights unchanged: one-hot token and positional embeddings,
    no layer norm, ReLU MLPs, bidirectional attention scaled by ``1/sqrt(d_head)``, and
    tracr's unembedding (the projection of the residual stream onto the program's output
    space) as ``W_U`` with a zero bias. On an unpadded input ``tokens`` ``[batch, seq]`` it
    returns ``[batch, seq, d_vocab_out]``: the categorical logits (``reverse``,
    ``d_vocab_out = 3``) or the numerical output (``xproportion``, ``d_vocab_out = 1``),
    equal to tracr's pre-argmax output.

    Args:
        task: ``"reverse"`` or ``"xproportion"``.
        device: where the model lives.
        dtype: the model's parameter dtype.
        kind: ``"hooked"`` (a ``HookedTransformer``, TransformerLens 3.x) or ``"bridge"``
            (a ``TransformerBridge`` over an equivalent GPT-2 whose norms are identities,
            heads zero-padded to the residual width and ``lm_head`` of the output size; see
            :mod:`edgewise.models.convert`). Default: ``"hooked"`` where TransformerLens has it.

    Returns:
        ``(model, info)``; ``info`` holds the vocabularies, encodings and tracr's own model.
        The model's tokenizer maps ``str(value)`` to its id.

    Raises:
        ImportError: tracr is not installed (``pip install edgewise[tracr]``).
    """
    from edgewise.models.kinds import from_tl_weights, vocab_tokenizer

    _check_task(task)
    compiled = _compile(task)
    info = compiled.info
    vocab = [str(info.decoding[i]) for i in range(len(info.decoding))]
    tokenizer = vocab_tokenizer(vocab, bos=str(info.bos_token), pad=str(info.pad_token),
                                unk=str(info.pad_token))
    weights = {k: torch.tensor(v, dtype=dtype) for k, v in compiled.weights.items()}
    model = from_tl_weights({**compiled.cfg, "dtype": dtype}, weights, kind=kind,
                            tokenizer=tokenizer, device=device)
    return model, info


# --------------------------------------------------------------------------------------
# Prompt datasets
# --------------------------------------------------------------------------------------


def _xproportions(seq: Sequence[Any]) -> list[float]:
    """Fraction of ``"x"`` among ``seq[: i + 1]`` for each ``i``."""
    return [sum(t == "x" for t in seq[: i + 1]) / (i + 1) for i in range(len(seq))]


def make_tracr_dataset(task: TracrTask, seed: int = 0) -> dict[str, Any]:
    """Every input of length ``TRACR_MAX_SEQ_LEN`` as a clean prompt, each paired with a
    different random corrupt input (seeded); the JSON dict of ``tracr_{task}.json``.

    Prompts are token ids ``[BOS, t1, ..., t5]``. Answers are per output position
    (positions ``1..5``), each a list of one entry, so a prompt's answers form a
    ``[5, 1]`` array: the output index of the reversed sequence (``reverse``) or the
    real-valued fraction of ``"x"`` so far (``xproportion``). ``wrong_answers`` are the
    same for the corrupt input. Needs tracr (for its token encodings).
    """
    _check_task(task)
    info = _compile(task).info
    rng = random.Random(seed)
    seqs = list(itertools.product(info.vocab, repeat=info.max_seq_len))
    inverse_out = (
        None if info.output_decoding is None else {v: i for i, v in info.output_decoding.items()}
    )

    def answers(seq: Sequence[Any]) -> list[list[int | float]]:
        if inverse_out is not None:
            return [[inverse_out[v]] for v in reversed(seq)]
        return [[p] for p in _xproportions(seq)]

    prompts = []
    for i, clean in enumerate(seqs):
        j = rng.randrange(len(seqs) - 1)
        corrupt = seqs[j + (j >= i)]  # any input but the clean one
        prompts.append(
            {
                "clean": info.encode(clean).tolist(),
                "corrupt": info.encode(corrupt).tolist(),
                "answers": answers(clean),
                "wrong_answers": answers(corrupt),
            }
        )
    labels = ["BOS"] + [f"tok{i}" for i in range(1, info.max_seq_len + 1)]
    return {"prompts": prompts, "seq_labels": labels}


class TracrPromptDataset(Dataset[PromptPair]):
    """Prompt pairs with per-position answers, for the tracr tasks.

    Unlike :class:`edgewise.data.PromptDataset` (one set of answer token ids per prompt),
    each pair carries answers per output position: ``answers`` ``[n_out, 1]`` int64
    output indices (``reverse``) or float32 values (``xproportion``), so batches have
    ``answers`` ``[batch, n_out, 1]``, matching outputs ``[batch, n_out, d_vocab_out]``
    at ``slice_output="not_first_seq"``.

    Attributes:
        clean, corrupt: ``[n, seq]`` int64 token ids.
        answers, wrong_answers: ``[n, seq - 1, 1]``.
        seq_labels: label per position, or ``None``.
    """

    def __init__(
        self,
        clean: Tensor,
        corrupt: Tensor,
        answers: Tensor,
        wrong_answers: Tensor,
        seq_labels: Sequence[str] | None = None,
    ) -> None:
        if clean.ndim != 2 or clean.shape != corrupt.shape:
            raise ValueError(
                f"clean and corrupt must both be [n, seq], got {tuple(clean.shape)} and "
                f"{tuple(corrupt.shape)}"
            )
        n, seq = clean.shape
        for name, t in (("answers", answers), ("wrong_answers", wrong_answers)):
            if t.ndim != 3 or t.shape[:2] != (n, seq - 1):
                raise ValueError(
                    f"{name} must be [n, seq - 1, k] = [{n}, {seq - 1}, k], got {tuple(t.shape)}"
                )
        self.clean, self.corrupt = clean, corrupt
        self.answers, self.wrong_answers = answers, wrong_answers
        self.seq_labels: list[str] | None = None if seq_labels is None else list(seq_labels)

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    def __getitem__(self, idx: int) -> PromptPair:
        return PromptPair(
            self.clean[idx], self.corrupt[idx], self.answers[idx], self.wrong_answers[idx]
        )

    @classmethod
    def from_json_dict(
        cls, data: Mapping[str, Any], task: TracrTask, device: torch.device | str = "cpu"
    ) -> TracrPromptDataset:
        """Build from a ``tracr_{task}.json`` dict (answers nested per position)."""
        _check_task(task)
        prompts = data["prompts"]
        if not prompts:
            raise ValueError('"prompts" must be a non-empty list')
        answer_dtype = torch.int64 if task == "reverse" else torch.float32

        def column(name: str, dtype: torch.dtype) -> Tensor:
            try:
                return torch.tensor([p[name] for p in prompts], dtype=dtype, device=device)
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(
                    f"{name}: every prompt needs a rectangular {name!r} entry ({err})"
                ) from err

        return cls(
            column("clean", torch.int64),
            column("corrupt", torch.int64),
            column("answers", answer_dtype),
            column("wrong_answers", answer_dtype),
            seq_labels=data.get("seq_labels"),
        )


def _split(
    train_test_size: Sequence[int | float], n: int
) -> tuple[int, int]:
    a, b = train_test_size
    if isinstance(a, float) or isinstance(b, float):
        if not (0 <= a and 0 <= b and a + b <= 1 + 1e-9):
            raise ValueError(f"fractional train_test_size must sum to at most 1, got {train_test_size}")
        n_train = int(a * n)
        return n_train, (n - n_train if abs(a + b - 1) < 1e-9 else int(b * n))
    if a < 0 or b < 0 or a + b > n:
        raise ValueError(f"train_test_size={tuple(train_test_size)} asks for more than {n} prompts")
    return int(a), int(b)


def tracr_dataloaders(
    task: TracrTask,
    batch_size: int | tuple[int, int] = 32,
    train_test_size: Sequence[int | float] = (0.5, 0.5),
    return_seq_length: bool = False,
    shuffle: bool = True,
    random_seed: int = 42,
    device: torch.device | str = "cpu",
    path: str | None = None,
    drop_last: bool = True,
) -> tuple[PromptDataLoader, PromptDataLoader]:
    """Train and test loaders of the shipped ``tracr_{task}.json`` prompts.

    Batches have ``clean``/``corrupt`` ``[batch, 6]`` token ids and per-position
    ``answers``/``wrong_answers`` ``[batch, 5, 1]``: output indices (``reverse``; use
    ``answer_function="avg_diff"`` or the answer metrics) or real values (``xproportion``;
    use ``answer_function="mse"``). Use them with a model wrapped with
    ``patchable_model(model, slice_output="not_first_seq", ...)`` (and ``seq_len=6``
    when ``return_seq_length``). Does not need tracr.

    Args:
        task: ``"reverse"`` or ``"xproportion"``.
        batch_size: the batch size, or ``(train, test)`` batch sizes.
        train_test_size: ``(n_train, n_test)`` counts or fractions of the prompts
            (243 for ``reverse``, 1024 for ``xproportion``).
        return_seq_length: set the loaders' ``seq_len`` to 6 (for per-position edges).
        shuffle: shuffle the prompts once with ``random.Random(random_seed)`` before
            splitting (the loaders do not reshuffle).
        random_seed: the shuffle seed.
        device: where the tensors live.
        path: a dataset JSON file to read instead of the shipped one.
        drop_last: drop incomplete final batches.

    Returns:
        ``(train_loader, test_loader)``.
    """
    _check_task(task)
    data = load_dataset_json(path if path is not None else f"tracr_{task}")
    dataset = TracrPromptDataset.from_json_dict(data, task, device=device)
    order = list(range(len(dataset)))
    if shuffle:
        random.Random(random_seed).shuffle(order)
    n_train, n_test = _split(train_test_size, len(dataset))
    sizes = batch_size if isinstance(batch_size, tuple) else (batch_size, batch_size)
    seq_len = int(dataset.clean.shape[1]) if return_seq_length else None
    train, test = (
        PromptDataLoader(
            Subset(dataset, idx),
            seq_len=seq_len,
            batch_size=size,
            shuffle=False,
            seq_labels=dataset.seq_labels,
            drop_last=drop_last,
        )
        for idx, size in ((order[:n_train], sizes[0]), (order[n_train : n_train + n_test], sizes[1]))
    )
    return train, test
