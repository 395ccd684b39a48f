"""What a model name means, where the model runs and in which precision.

A name given to ``--model`` (or :func:`load_model`) is, tried in this order:

1. a model the package ships (``toy-ioi``, ...) or a tracr program (``tracr-reverse``);
2. a local folder holding a Hugging Face checkpoint (``config.json`` and weights);
3. a TransformerLens model name (``gpt2-small``) or a Hugging Face hub repository id
   (``gpt2``, ``EleutherAI/pythia-70m``), loaded through the standard Hugging Face cache:
   downloaded when missing, unless ``HF_HUB_OFFLINE`` is set (then only the cache is read).

A name that looks like a path (``./m``, ``/data/m``, ``~/m``, ``a/b/c``) and names no
folder is refused as "no such folder", not passed to the hub.

``--device`` is ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available, else the
CPU); ``--dtype`` is one of :data:`DTYPES` (default ``float32``). Both are checked before
any model loads (:func:`resolve_device`, :func:`resolve_dtype`).

Importing this module does not import torch or TransformerLens (the command line's
``--help`` stays fast); the functions that need them import them when called.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Iterable, Iterator
from typing import Any

DTYPES: tuple[str, ...] = ("float32", "float64", "bfloat16", "float16")
"""The model dtypes ``--dtype`` accepts (torch's names)."""

KINDS: tuple[str, ...] = ("hooked", "bridge")
"""``--kind``: ``hooked`` (TransformerLens' ``HookedTransformer``, TransformerLens 3.x
only) or ``bridge`` (a ``TransformerBridge`` over the Hugging Face model)."""

_DEVICE = re.compile(r"cpu|cuda|cuda:\d+|auto")
_TRUE = ("1", "on", "yes", "true")


class DeviceUnavailableError(RuntimeError):
    """The device asked for does not exist on this machine (no CUDA, too few GPUs)."""


def offline() -> bool:
    """Whether the user set ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) on."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))  # fmt: skip


# ------------------------------------------------------------------ device and dtype
def device_arg(text: str) -> str:
    """An ``argparse`` ``type`` for ``--device``: ``cpu``, ``cuda``, ``cuda:N`` or
    ``auto``, checked for its form only (whether it exists: :func:`resolve_device`)."""
    if not _DEVICE.fullmatch(text.strip().lower()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: give cpu, cuda, cuda:N "
                                         "(a GPU's index) or auto (cuda when available)")
    return text.strip().lower()


def resolve_device(spec: str | None) -> str:
    """The device ``spec`` names on this machine: ``"auto"`` is ``"cuda"`` when CUDA is
    available, else ``"cpu"``; ``None`` is ``"cpu"``.

    Raises:
        ValueError: ``spec`` is not ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        DeviceUnavailableError: CUDA is asked for and not available, or GPU ``N`` does
            not exist; the message names ``--device cpu``.
    """
    spec = (spec or "cpu").strip().lower()
    if not _DEVICE.fullmatch(spec):
        raise ValueError(f"--device {spec!r} is not a device: give cpu, cuda, cuda:N or auto")
    if spec == "cpu":
        return spec
    import torch

    available = torch.cuda.is_available()
    if spec == "auto":
        return "cuda" if available else "cpu"
    if not available:
        why = ("this torch was built without CUDA" if torch.version.cuda is None
               else "no CUDA GPU is visible")  # fmt: skip
        raise DeviceUnavailableError(f"--device {spec}: CUDA is not available here ({why}, "
                                     f"torch {torch.__version__}); use --device cpu, or "
                                     "--device auto to take a GPU only where there is one")
    if ":" in spec:
        index, count = int(spec.split(":")[1]), torch.cuda.device_count()
        if index >= count:
            raise DeviceUnavailableError(f"--device {spec}: this machine has {count} CUDA "
                                         f"GPU(s), cuda:0 to cuda:{count - 1}; pick one of "
                                         "those, or use --device cpu")  # fmt: skip
    return spec


def resolve_dtype(spec: str | None) -> Any:
    """The ``torch.dtype`` named ``spec`` (one of :data:`DTYPES`; ``None``: float32)."""
    import torch

    name = (spec or "float32").strip().lower().removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"--dtype {spec!r} is not one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def add_device_arguments(parser: argparse.ArgumentParser, kind: bool = True,
                         dtype_help: str = "the model's dtype") -> None:  # fmt: skip
    """Add ``--device``, ``--dtype`` and (``kind``) ``--kind`` to a subcommand."""
    parser.add_argument("--device", type=device_arg, default="cpu", metavar="DEVICE",
                        help="where the model runs: cpu, cuda, cuda:N or auto (cuda when "
                             "available, else cpu)")  # fmt: skip
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help=f"{dtype_help} (default: float32)")
    if kind:
        parser.add_argument("--kind", choices=KINDS, default=None,
                            help="hooked (TransformerLens' HookedTransformer, TransformerLens "
                                 "3.x) or bridge (a TransformerBridge over the Hugging Face "
                                 "model). Default: hooked where TransformerLens has it, else "
                                 "bridge; a local folder or a hub model TransformerLens does "
                                 "not know loads as a bridge")


# ------------------------------------------------------------------ what a name means
def looks_like_path(name: str) -> bool:
    """Whether ``name`` can only be a path: absolute, ``./``/``../``/``~``, a trailing or
    doubled separator, or more than one ``/`` (a hub id has at most one)."""
    return (os.path.isabs(name) or name.startswith((".", "~")) or name.endswith(("/", os.sep))
            or name.count("/") > 1 or (os.sep != "/" and os.sep in name))  # fmt: skip


def _shipped() -> list[str]:
    from edgewise.benchmarks.toy_models import available

    return [*available(), "tracr-reverse", "tracr-xproportion"]


def _valid_repo_id(name: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", name) is not None and ".." not in name


def source(name: str) -> str:
    """What ``name`` is: ``"shipped"``, ``"tracr"``, ``"folder"`` or ``"hub"`` (a
    TransformerLens name or a Hugging Face repository id)."""
    if name in _shipped():
        return "tracr" if name.startswith("tracr-") else "shipped"
    if name.startswith("tracr-"):
        return "tracr"
    if os.path.isdir(os.path.expanduser(name)) or looks_like_path(name):
        return "folder"
    return "hub"


def _get_weights(name: str) -> str:
    return (f"to get the weights: run once with a network (unset HF_HUB_OFFLINE), or `hf "
            f"download {name}` (or huggingface-cli download) where there is one and copy "
            "HF_HOME over, or pass a local folder saved with save_pretrained(DIR)")


def check_model(name: str) -> None:
    """Check, without loading anything, that :func:`load_model` can try ``name``.

    Raises:
        FileNotFoundError: ``name`` looks like a path and names no folder.
        ValueError: a file instead of a folder, an unknown tracr program, a folder that
            is no Hugging Face checkpoint (:func:`edgewise.models.files.check_model_dir`),
            a name that is no valid hub id, or (``HF_HUB_OFFLINE`` set) a hub name whose
            files are not in the cache. Each message says what was tried and the fix.
    """
    what = source(name)
    if what == "shipped":
        return
    if what == "tracr":
        if name not in _shipped():
            raise ValueError(f"unknown tracr model {name!r}; the tracr models are "
                             f"{', '.join(n for n in _shipped() if n.startswith('tracr-'))}")
        return
    path = os.path.expanduser(name)
    if os.path.isfile(path):
        raise ValueError(f"model {name!r} is a file: pass the folder holding its config.json "
                         "and weights (a Hugging Face save_pretrained folder)")
    if what == "folder":
        if not os.path.isdir(path):
            raise FileNotFoundError(f"model {name!r}: no such folder. Pass a folder holding "
                                    "config.json and weights (model.save_pretrained(DIR)), a "
                                    f"Hugging Face hub name such as gpt2, or one of "
                                    f"{', '.join(_shipped())}")  # fmt: skip
        from edgewise.models.files import check_model_dir

        check_model_dir(path)
        return
    if not _valid_repo_id(name):
        raise ValueError(f"model {name!r} is not a shipped model ({', '.join(_shipped())}), "
                         "a local folder, or a Hugging Face hub name (like gpt2 or "
                         "EleutherAI/pythia-70m): check its spelling")
    if offline() and not cached(name):
        raise ValueError(f"cannot load model {name!r}: it is not a shipped model "
                         f"({', '.join(_shipped())}), no local folder has that name, and the "
                         f"Hugging Face cache ({_hub_cache()}) does not hold it while "
                         f"HF_HUB_OFFLINE is set (no download); {_get_weights(name)}")


def _hub_cache() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:
        return "HF_HOME/hub"


def cached(name: str) -> bool:
    """Whether the Hugging Face cache holds a ``config.json`` for ``name`` or for the
    repository TransformerLens maps it to (``gpt2-small`` to ``gpt2``)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # cannot tell: loading will say
        return True

    def has(repo: str) -> bool:
        try:
            return isinstance(try_to_load_from_cache(repo, "config.json"), str)
        except Exception:  # not a valid repository id
            return False

    if has(name):
        return True
    official = _official_name(name)
    return official is not None and official != name and has(official)


def _official_name(name: str) -> str | None:
    """The Hugging Face repository TransformerLens maps ``name`` to, or ``None`` when
    ``name`` is no TransformerLens model name (or this TransformerLens has no table)."""
    try:
        from transformer_lens.loading_from_pretrained import get_official_model_name
    except ImportError:
        return None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return str(get_official_model_name(name))
    except Exception:
        return None


# ------------------------------------------------------------------------- loading
def load_model(name: str, kind: str | None = None, device: str | None = "cpu",
               dtype: Any = None) -> Any:  # fmt: skip
    """The model ``name`` means (see the module's docstring), in eval mode.

    Args:
        name: a shipped model, a tracr program, a local Hugging Face folder, a
            TransformerLens name or a Hugging Face hub repository id.
        kind: ``"hooked"``, ``"bridge"`` or ``None``: hooked where TransformerLens has
            ``HookedTransformer`` and the name is one it knows, else bridge (a local
            folder or another hub model always loads as a bridge).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (:func:`resolve_device`).
        dtype: a ``torch.dtype`` or one of :data:`DTYPES` (``None``: float32).

    Raises:
        FileNotFoundError, ValueError: as :func:`check_model`; ``ValueError`` also when
            the hub load fails, with the whole first line of the reason, what was tried
            and how to get the weights.
        DeviceUnavailableError: ``device`` does not exist here.
        ImportError: ``kind="hooked"`` on TransformerLens 4.x.
    """
    import torch

    from edgewise.models.kinds import load_hf_bridge, resolve_kind

    check_model(name)
    dev = resolve_device(device)
    dt = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype)
    what = source(name)
    if what == "shipped":
        from edgewise.benchmarks.toy_models import load

        return load(name, device=dev, kind=resolve_kind(kind), dtype=dt)  # type: ignore[arg-type]
    if what == "tracr":
        from edgewise.benchmarks.tracr_models import compile_tracr

        return compile_tracr(name.removeprefix("tracr-"), device=dev, dtype=dt,  # type: ignore[arg-type]
                             kind=resolve_kind(kind))[0]  # type: ignore[arg-type]
    if what == "folder":
        if kind == "hooked":
            raise ValueError(f"--kind hooked loads TransformerLens model names; the local folder "
                             f"{name!r} loads as a bridge: drop --kind or pass --kind bridge")
        return load_hf_bridge(os.path.expanduser(name), device=dev, dtype=dt).eval()
    return _load_hub(name, kind, dev, dt)


def _load_hub(name: str, kind: str | None, device: str, dtype: Any) -> Any:
    from edgewise.models.kinds import hooked_transformer_available, resolve_kind

    known = _official_name(name) is not None
    if kind is None:
        chosen = "hooked" if hooked_transformer_available() and known else "bridge"
    else:
        chosen = resolve_kind(kind)  # type: ignore[arg-type]
    if chosen == "hooked" and not known:
        raise ValueError(f"--kind hooked: {name!r} is not a TransformerLens model name "
                         "(HookedTransformer loads only those); --kind bridge loads any "
                         "Hugging Face causal language model")  # fmt: skip
    try:
        with contextlib.redirect_stdout(sys.stderr):  # TransformerLens prints "Loaded ..."
            if chosen == "hooked":
                from transformer_lens import HookedTransformer

                model = HookedTransformer.from_pretrained(name, device=device, dtype=dtype)
            else:
                from transformer_lens.model_bridge import TransformerBridge

                model = TransformerBridge.boot_transformers(name, device=device, dtype=dtype)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:
        raise ValueError(hub_error(name, chosen, e)) from None
    return model.eval()


def hub_error(name: str, kind: str, error: BaseException) -> str:
    """The one-line message for a hub model that failed to load: the whole first line
    of the reason (never cut inside a URL), what was tried, how to get the weights."""
    reason = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    reason = f"{type(error).__name__}: {reason}" if reason else type(error).__name__
    tried = (f"tried: a shipped model (none is named {name!r}), a local folder (none), "
             f"then the Hugging Face hub (--kind {kind})"
             + (" with HF_HUB_OFFLINE set (the cache only)" if offline() else ""))
    return (f"cannot load model {name!r} ({reason}); {tried}. Check the name on the hub, "
            f"log in (hf auth login) for a gated model; {_get_weights(name)}")


def on_device(loader: Any, device: Any) -> Any:
    """Make ``loader`` (a :class:`~edgewise.data.PromptDataLoader`) yield its batches
    with every tensor (``clean``, ``corrupt`` ``[batch, seq]``, the answers, ``lengths``)
    on ``device``; the prompts stay where they were built. Returns ``loader``."""
    if str(device) == "cpu":
        return loader
    import dataclasses

    collate = loader.collate_fn

    def move(x: Any) -> Any:
        if isinstance(x, list):
            return [t.to(device) for t in x]
        return None if x is None else x.to(device)

    def collate_on_device(items: Any) -> Any:
        b = collate(items)
        return dataclasses.replace(b, clean=move(b.clean), corrupt=move(b.corrupt),
                                   answers=move(b.answers), wrong_answers=move(b.wrong_answers),
                                   lengths=move(b.lengths))  # fmt: skip

    loader.collate_fn = collate_on_device
    return loader


# ------------------------------------------------------------------- misspellings
def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'eap'?)"`` when one of ``choices`` is close to ``word``
    (:func:`difflib.get_close_matches`, ignoring case; an exact match but for case comes
    first), else ``""``."""
    import difflib

    by_lower: dict[str, str] = {}
    for c in choices:
        by_lower.setdefault(c.lower(), c)
    key = word.lower()
    close = [key] if key in by_lower else difflib.get_close_matches(key, by_lower, n=1,
                                                                    cutoff=0.6)  # fmt: skip
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""


# ------------------------------------------------------------------------ --quiet
@contextlib.contextmanager
def quiet_libraries(quiet: bool = True) -> Iterator[None]:
    """While active (``quiet``): no transformers logging below errors, no Hugging Face
    progress bars (downloads, checkpoint shards), no Python warnings. Restores all of
    it afterwards."""
    if not quiet:
        yield
        return
    import warnings

    restore: list[Any] = []
    try:
        from huggingface_hub.utils import (
            are_progress_bars_disabled,
            disable_progress_bars,
            enable_progress_bars,
        )

        if not are_progress_bars_disabled():
            disable_progress_bars()
            restore.append(enable_progress_bars)
    except ImportError:
        pass
    try:
        from transformers.utils import logging as tf_logging

        level = tf_logging.get_verbosity()
        tf_logging.set_verbosity_error()
        restore.append(lambda: tf_logging.set_verbosity(level))
        if tf_logging.is_progress_bar_enabled():
            tf_logging.disable_progress_bar()
            restore.append(tf_logging.enable_progress_bar)
    except ImportError:
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for undo in reversed(restore):
            undo()


__all__ = [
    "DTYPES", "KINDS", "DeviceUnavailableError", "add_device_arguments", "cached",
    "check_model", "device_arg", "did_you_mean", "on_device", "hub_error", "load_model", "looks_like_path", "offline",
    "quiet_libraries", "resolve_device", "resolve_dtype", "source",
]  # fmt: skip
