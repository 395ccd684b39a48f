"""Dataset files: the datasets shipped with edgewise, reading and writing JSON dataset
files, and :func:`load_datasets_from_json`, which splits them into train and test
:class:`~edgewise.data.dataset.PromptDataLoader` s (optionally cutting off the prompts'
shared prefix and caching its keys and values)."""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from edgewise.checks import require_device, require_int
from edgewise.data.batches import PromptPair
from edgewise.data.dataset import PromptDataLoader, PromptDataset, _base_prompt_dataset
from edgewise.data.json_format import _pairs_to_json_dict, _validated_prompts
from edgewise.data.tokens import _is_token_id
from edgewise.io.files import atomic_write

_DATASETS_PACKAGE = "edgewise"
_DATASETS_DIR = "datasets"


def _datasets_root() -> Any:
    return resources.files(_DATASETS_PACKAGE).joinpath(_DATASETS_DIR)


def shipped_dataset_names() -> list[str]:
    """Names of the datasets shipped inside the package (``edgewise/datasets/*.json``)."""
    root = _datasets_root()
    if not root.is_dir():
        return []
    return sorted(
        entry.name[: -len(".json")] for entry in root.iterdir() if entry.name.endswith(".json")
    )


def load_dataset_json(path_or_name: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a dataset JSON file, or a shipped dataset by name, into a dict.

    Args:
        path_or_name: a path to a ``.json`` file, or the name of a shipped dataset (with or
            without ``.json``; see :func:`shipped_dataset_names`). An existing file wins.

    Returns:
        The parsed JSON object (not validated beyond having a non-empty ``"prompts"``
        list and no key given twice).

    Raises:
        FileNotFoundError: no such file and no such shipped dataset.
        ValueError: naming the file, when it is not UTF-8 text, not JSON, not an object
            with a ``"prompts"`` list, or that list is empty; or when an object in it has
            a key twice (JSON would keep only the last), naming where and the key.
    """
    path = Path(path_or_name)
    if path.is_file():
        raw, source = path.read_bytes(), str(path)
    else:
        name = str(path_or_name)
        stem = name[: -len(".json")] if name.endswith(".json") else name
        resource = None
        if isinstance(path_or_name, str) and "/" not in name and os.sep not in name:
            candidate = _datasets_root().joinpath(f"{stem}.json")
            resource = candidate if candidate.is_file() else None
        if resource is None:
            raise FileNotFoundError(
                f"no dataset file at {name!r} and no shipped dataset named {stem!r}; "
                f"shipped datasets: {', '.join(shipped_dataset_names()) or '(none)'}"
            )
        raw, source = resource.read_bytes(), f"shipped dataset {stem!r}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{source}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}: "
            f"{err.reason}); save the dataset as UTF-8 JSON"
        ) from None
    try:
        data = _loads_without_duplicates(text, source)
    except json.JSONDecodeError as err:
        raise ValueError(f"{source}: invalid JSON: {err}") from None
    except RecursionError:
        raise ValueError(f"{source}: invalid JSON: nested too deeply") from None
    if not isinstance(data, dict) or not isinstance(data.get("prompts"), list):
        raise ValueError(
            f'{source}: expected a JSON object with a "prompts" list, got '
            + (f"keys {sorted(data)!r:.80}" if isinstance(data, dict) else type(data).__name__)
        )
    if not data["prompts"]:
        raise ValueError(f'{source}: the file has no prompts (its "prompts" list is empty)')
    return data


def _loads_without_duplicates(text: str, source: str) -> Any:
    """``json.loads(text)``, but an object with a key given twice (JSON keeps only the
    last, silently) is a ``ValueError`` naming ``source``, where the object is (e.g.
    ``prompt 3``), the key and its values."""
    repeated: dict[int, tuple[str, list[Any]]] = {}
    objects: list[dict[str, Any]] = []  # keeps the ids in ``repeated`` unique

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            counts = Counter(k for k, _ in pairs)
            key = next(k for k, _ in pairs if counts[k] > 1)
            repeated[id(obj)] = (key, [v for k, v in pairs if k == key])
            objects.append(obj)
        return obj

    data = json.loads(text, object_pairs_hook=hook)
    if not repeated:
        return data
    where, (key, values) = _first_repeated(data, repeated, "the top-level object")
    shown = " and ".join(f"{json.dumps(v)[:40]}" for v in values[:3])
    raise ValueError(
        f"{source}: {where} has the key {key!r} {len(values)} times ({shown}); JSON would "
        f"silently keep only the last. Keep one {key!r} in that object."
    )


def _first_repeated(
    node: Any, repeated: dict[int, tuple[str, list[Any]]], where: str
) -> tuple[str, tuple[str, list[Any]]]:
    """The place (``prompt 3``, ``"word_idxs"``, ...) and entry of the first object in
    ``node`` that :func:`_loads_without_duplicates` found a repeated key in."""
    if isinstance(node, dict) and id(node) in repeated:
        return where, repeated[id(node)]
    top = where == "the top-level object"
    children: Iterable[tuple[str, Any]] = ()
    if isinstance(node, dict):
        children = ((f'"{k}"' if top else f'{where}: "{k}"', v) for k, v in node.items())
    elif isinstance(node, list):
        named = where == '"prompts"'
        children = ((f"prompt {i}" if named else f"{where}[{i}]", v) for i, v in enumerate(node))
    for child_where, child in children:
        try:
            return _first_repeated(child, repeated, child_where)
        except LookupError:
            continue
    raise LookupError(where)


def save_dataset_json(
    path: str | os.PathLike[str],
    dataset_or_pairs: Dataset[PromptPair] | Iterable[PromptPair],
    *,
    seq_labels: Sequence[str] | None = None,
    word_idxs: Mapping[str, int] | None = None,
) -> Path:
    """Write prompt pairs as token ids in the auto-circuit JSON format, atomically.

    Loading the file back (with no tokenizer, and ``shuffle=False`` in
    :func:`load_datasets_from_json`) gives identical tensors. Padded prompts are saved
    with their padding.

    Args:
        path: the destination file; written via a temporary file in the same directory
            and ``os.replace``, so readers never see a partial file.
        dataset_or_pairs: a :class:`PromptDataset`, a ``Subset`` of one, any map-style
            dataset of :class:`PromptPair` s, or an iterable of them.
        seq_labels: labels per position; default the dataset's (if it has them).
        word_idxs: ``{word: position}``; default the dataset's.

    Returns:
        The path written.
    """
    base = _base_prompt_dataset(dataset_or_pairs)
    if base is not None:
        seq_labels = base.seq_labels if seq_labels is None else seq_labels
        word_idxs = base.word_idxs if word_idxs is None else word_idxs
    if isinstance(dataset_or_pairs, Dataset) and hasattr(dataset_or_pairs, "__len__"):
        pairs: Iterable[PromptPair] = (
            dataset_or_pairs[i]
            for i in range(len(dataset_or_pairs))  # type: ignore[arg-type]
        )
    else:
        pairs = dataset_or_pairs  # type: ignore[assignment]
    data = _pairs_to_json_dict(pairs, seq_labels, word_idxs)
    lines = ["{", '  "prompts": [']
    lines += [
        f"    {json.dumps(p)}{',' if i < len(data['prompts']) - 1 else ''}"
        for i, p in enumerate(data["prompts"])
    ]
    lines.append("  ]" + ("," if len(data) > 1 else ""))
    extras = [k for k in data if k != "prompts"]
    lines += [
        f"  {json.dumps(k)}: {json.dumps(data[k])}{',' if j < len(extras) - 1 else ''}"
        for j, k in enumerate(extras)
    ]
    lines.append("}")
    text = "\n".join(lines) + "\n"

    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _split_sizes(train_test_size: Sequence[int | float], n_available: int) -> tuple[int, int]:
    if len(train_test_size) != 2:
        raise ValueError(f"train_test_size must be (train, test), got {train_test_size!r}")
    a, b = train_test_size
    if _is_token_id(a) and _is_token_id(b):
        if a < 0 or b < 0:
            raise ValueError(f"train_test_size must be non-negative, got {train_test_size!r}")
        if a + b > n_available:
            raise ValueError(
                f"train_test_size={tuple(train_test_size)} asks for {a + b} prompts but the "
                f"dataset has {n_available}; ask for fewer, or give fractions such as (0.5, 0.5)"
            )
        return a, b
    if all(isinstance(x, float) for x in (a, b)):
        if a < 0 or b < 0 or a + b > 1 + 1e-9:
            raise ValueError(
                f"fractional train_test_size must be >= 0 and sum to at most 1, "
                f"got {train_test_size!r}"
            )
        n_train = int(a * n_available)
        n_test = n_available - n_train if abs(a + b - 1) < 1e-9 else int(b * n_available)
        return n_train, n_test
    raise ValueError(
        f"train_test_size must be two ints (counts) or two floats (fractions), "
        f"got {train_test_size!r}"
    )


def _common_prefix_len(dataset: PromptDataset) -> int:
    assert isinstance(dataset.clean, Tensor) and isinstance(dataset.corrupt, Tensor)
    rows = torch.cat([dataset.clean, dataset.corrupt])
    same = (rows == rows[:1]).all(dim=0)
    differs = (~same).nonzero()
    return int(differs[0, 0]) if differs.numel() > 0 else int(rows.shape[1])


def _prefix_kv_caches(model: Any, prefix: Tensor, batch_sizes: set[int]) -> dict[int, Any]:
    """Frozen caches of ``prefix`` ([d] token ids) in ``model``, one per batch size: a
    TransformerLens key-value cache for a ``HookedTransformer``, a
    :class:`~edgewise.models.bridge_blocks.BridgePrefixCache` for a ``TransformerBridge``
    (the prefix run once; each batch size gets views of that row)."""
    cfg = getattr(model, "cfg", None)
    if cfg is None or not callable(model):
        raise ValueError(
            "tail_divergence needs a TransformerLens model (with .cfg) to cache the "
            "shared prefix's keys and values"
        )
    from edgewise.models.adapter import HookAdapter

    adapter = HookAdapter(model)
    device = getattr(cfg, "device", None) or prefix.device
    if not adapter.is_hooked_transformer:
        return _bridge_prefix_caches(adapter, prefix.to(device), batch_sizes)
    try:
        from transformer_lens.cache.key_value_cache import (
            TransformerLensKeyValueCache as KVCache,
        )
    except ImportError:  # TransformerLens < 3
        from transformer_lens.past_key_value_caching import (  # type: ignore[no-redef]
            HookedTransformerKeyValueCache as KVCache,
        )
    caches: dict[int, Any] = {}
    for size in sorted(batch_sizes):
        cache = KVCache.init_cache(cfg, device, size)
        tokens = prefix.to(device).unsqueeze(0).expand(size, -1).contiguous()
        with torch.no_grad():
            model(tokens, past_kv_cache=cache, attention_mask=torch.ones_like(tokens))
        cache.freeze()
        caches[size] = cache
    return caches


def _bridge_prefix_caches(adapter: Any, prefix: Tensor, batch_sizes: set[int]) -> dict[int, Any]:
    """:func:`_prefix_kv_caches` for a ``TransformerBridge``; a clear error for one whose
    attention cannot be handed a prefix's keys and values (or that is not causal)."""
    from edgewise.models.bridge_blocks import BlockInputsUnknown, bridge_prefix_cache

    name = type(adapter.model).__name__
    if not adapter.is_bridge or not adapter.is_causal:
        raise ValueError(
            f"tail_divergence caches the shared prefix of a causal HookedTransformer or "
            f"TransformerBridge whose blocks edgewise can drive; {name} is neither. Load the "
            "dataset with tail_divergence=False (the default)."
        )
    try:
        cache = bridge_prefix_cache(adapter.model, prefix.unsqueeze(0))
    except BlockInputsUnknown as err:
        raise ValueError(f"tail_divergence cannot cache a prefix in {name}: {err}") from err
    return {size: cache.rows(size) for size in sorted(batch_sizes)}


def load_datasets_from_json(
    model: Any,
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    device: torch.device | str = "cpu",
    prepend_bos: bool = True,
    batch_size: int | tuple[int, int] = 32,
    train_test_size: Sequence[int | float] = (128, 128),
    return_seq_length: bool = False,
    tail_divergence: bool = False,
    shuffle: bool = True,
    random_seed: int = 42,
    pad: bool = True,
    *,
    pad_id: int | None = None,
) -> tuple[PromptDataLoader, PromptDataLoader]:
    """Load prompt pairs from JSON and split them into train and test loaders.

    Follows auto-circuit's ``load_datasets_from_json``.

    Args:
        model: anything with a ``.tokenizer`` (a Hugging Face tokenizer), e.g. a
            TransformerLens model; ``None`` when every prompt and answer is given as token
            ids. ``model.cfg.d_vocab`` (if present, else ``len(tokenizer)``) bounds the ids.
        path: a JSON file, the name of a shipped dataset, or a list of those (the first is
            loaded in full; the others only add their ``"prompts"``).
        device: where the prompt tensors live.
        prepend_bos: prepend the tokenizer's BOS id to text prompts (when it has one);
            ``word_idxs``/``seq_labels`` are shifted to match. Token-id prompts are used as
            they are.
        batch_size: the batch size, or ``(train, test)`` batch sizes.
        train_test_size: ``(n_train, n_test)`` counts, or ``(f_train, f_test)`` fractions
            of the dataset. The first ``n_train`` prompts (after shuffling) are the train
            split and the next ``n_test`` the test split.
        return_seq_length: set the loaders' ``seq_len`` to the prompt length; every prompt
            must then have the same length (no padding). ``False``: ``seq_len`` is ``None``.
        tail_divergence: cut off the longest prefix shared by every clean and corrupt
            prompt, cache its keys/values with ``model`` (``loader.kv_cache``, one per
            batch size) and set ``loader.diverge_idx`` to its length. ``seq_labels`` are
            cut to match; ``word_idxs`` keep their full-prompt positions, as in
            auto-circuit (a word's position in the cut prompts is ``word_idxs[w] -
            loader.diverge_idx``; official-circuit functions get ``seq_start_idx``).
            Needs a causal ``HookedTransformer`` (the cache is TransformerLens' key-value
            cache) or ``TransformerBridge`` (a
            :class:`~edgewise.models.bridge_blocks.BridgePrefixCache`: per block, the
            prefix's keys and values ``[batch, kv_heads, diverge_idx, d_head]``). Pass both
            loaders' caches to ``patchable_model(..., kv_caches=(train.kv_cache,
            test.kv_cache))``.
        shuffle: shuffle the prompts once, seeded with ``random_seed``, before
            splitting; the loaders themselves do not reshuffle, so runs are reproducible.
        random_seed: the shuffle seed. As auto-circuit does, loading also reseeds Python's
            ``random`` and torch's global generator with it (always, shuffled or not), so
            unseeded random draws after loading repeat from run to run.
        pad: left-pad prompts of different lengths to the longest, with a warning: the
            padding is attended to (no attention mask; see :mod:`edgewise.data.batches`).
            ``False``: different lengths are an error.
        pad_id: the padding id; default ``model.tokenizer.pad_token_id``.

    Returns:
        ``(train_loader, test_loader)``; batches have ``clean``/``corrupt`` of shape
        ``[batch, seq]``. Loaders drop incomplete final batches. Each loader's ``name``
        says which split of which file it holds; an empty split (``train_test_size=(0,
        n)``) gives a loader that scoring functions refuse, naming the split.

    Raises:
        ValueError: naming the file (and, for a bad prompt, its index in the file, before
            shuffling), for any malformed dataset: among others a key given twice, a key
            the format does not have (with the key it is probably a typo of),
            ``seq_labels`` that are not one string per token position (of the padded
            prompts, when they are padded), ``word_idxs`` outside the prompts; for prompts longer than the model's
            context ``model.cfg.n_ctx``; for a ``device`` this machine lacks.
        TypeError: for a ``batch_size`` that is not an int.
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths:
        raise ValueError("no dataset path given")
    require_device(device)
    sizes = batch_size if isinstance(batch_size, tuple) else (batch_size, batch_size)
    if len(sizes) != 2:
        raise ValueError(f"batch_size must be an int or (train, test), got {batch_size!r}")
    sizes = (require_int(sizes[0], "batch_size", 1), require_int(sizes[1], "batch_size", 1))
    # every prompt is named by its file and its index there, which shuffling keeps
    data: dict[str, Any] = {}
    prompts: list[Any] = []
    names: list[str] = []
    sources = [_source_name(p) for p in paths]
    for p, source in zip(paths, sources):
        contents = load_dataset_json(p)
        data = data or contents
        file_names = [f"{source}: prompt {i}" for i in range(len(contents["prompts"]))]
        prompts += _validated_prompts(contents, file_names, source)
        names += file_names
    # auto-circuit reseeds both global generators here; ported code relies on it
    random.seed(random_seed)
    torch.manual_seed(random_seed)
    if shuffle:  # one permutation for both (shuffle's swaps depend only on the length)
        order = list(range(len(prompts)))
        random.shuffle(order)  # the global generator, just seeded: auto-circuit's draws
        prompts, names = [prompts[i] for i in order], [names[i] for i in order]
    where = ", ".join(sources)
    try:
        n_train, n_test = _split_sizes(train_test_size, len(prompts))
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    if n_train + n_test == 0:
        raise ValueError(f"{where}: train_test_size={tuple(train_test_size)} selects no prompts")

    tokenizer = getattr(model, "tokenizer", None) if model is not None else None
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    d_vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
    vocab_size = d_vocab if _is_token_id(d_vocab) and d_vocab > 0 else None
    try:
        dataset = PromptDataset.from_json_dict(
            {**data, "prompts": prompts[: n_train + n_test]},
            tokenizer,
            prepend_bos=prepend_bos,
            vocab_size=vocab_size,
            pad=pad,
            pad_id=pad_id,
            device=device,
            prompt_names=names[: n_train + n_test],
            n_ctx=n_ctx if _is_token_id(n_ctx) else None,
        )
    except ValueError as err:  # name the file(s) in errors about the dataset as a whole
        if any(str(err).startswith(source) for source in sources):
            raise
        raise ValueError(f"{where}: {err}") from None
    longest = int(dataset.lengths.max())
    if _is_token_id(n_ctx) and longest > n_ctx:
        too_long = [names[i] for i in range(len(dataset)) if int(dataset.lengths[i]) > n_ctx]
        raise ValueError(
            f"{where}: {len(too_long)} prompt(s) have more tokens than the model's context "
            f"(n_ctx={n_ctx}), the longest {longest} (e.g. {too_long[0]}); shorten them or "
            "use a model with a longer context"
        )
    seq_len: int | None = None
    if return_seq_length:
        if dataset.seq_len is None:
            raise ValueError(
                "return_seq_length=True needs every prompt to have the same token length, but "
                f"lengths range over {sorted(set(dataset.lengths.tolist()))}"
            )
        seq_len = dataset.seq_len

    diverge_idx = 0
    caches: dict[int, Any] = {}
    if tail_divergence:
        if model is None:
            raise ValueError("tail_divergence needs a model to cache the shared prefix")
        assert isinstance(dataset.clean, Tensor) and isinstance(dataset.corrupt, Tensor)
        diverge_idx = min(_common_prefix_len(dataset), dataset.clean.shape[1] - 1)
        if diverge_idx > 0:
            caches = _prefix_kv_caches(model, dataset.clean[0, :diverge_idx], set(sizes))
            labels = dataset.seq_labels
            dataset = PromptDataset(
                dataset.clean[:, diverge_idx:],
                dataset.corrupt[:, diverge_idx:],
                dataset.answers,
                dataset.wrong_answers,
                pad_id=dataset.pad_id,
                vocab_size=dataset.vocab_size,
                seq_labels=None if labels is None else labels[diverge_idx:],
                word_idxs=dataset.word_idxs,  # full-prompt positions, as auto-circuit
            )
            seq_len = None if seq_len is None else seq_len - diverge_idx

    splits = (range(n_train), range(n_train, n_train + n_test))
    loaders = tuple(
        PromptDataLoader(
            Subset(dataset, list(indices)),
            seq_len=seq_len,
            diverge_idx=diverge_idx,
            batch_size=size,
            shuffle=False,
            kv_cache=caches.get(size),
            name=f"the {split} split of {where} (train_test_size={tuple(train_test_size)})",
        )
        for indices, size, split in zip(splits, sizes, ("train", "test"))
    )
    return loaders[0], loaders[1]


def _source_name(path: str | os.PathLike[str]) -> str:
    """How messages name a dataset: its path as given (a shipped dataset by its name)."""
    return os.fspath(path)
