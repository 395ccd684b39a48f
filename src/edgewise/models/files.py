"""Checks of a local Hugging Face model directory before anything loads it: its
``config.json`` and the weight files Hugging Face would read. A bad file is one line
(:class:`~edgewise.io.files.FileFormatError`) naming the file and the fix, not a long
traceback from deep inside the loader.

The checks are cheap: a safetensors file's header and size, a torch file's pickle
through ``torch.load(..., weights_only=True, mmap=True)`` (tensors are mapped, not read).
A torch file that pickles Python objects besides tensors is refused: edgewise never
loads one (unpickling can run any code), and never suggests turning the safe loader off.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import torch

from edgewise.io.files import FileFormatError, pickled_global, torch_file_error

_RESAVE = ("download it again, or save the model again with model.save_pretrained(DIR), "
           "which writes safetensors")  # fmt: skip
_UNPICKLED = ("convert it where it was made: safetensors.torch.save_file(model.state_dict(), "
              "'model.safetensors'), or model.save_pretrained(DIR)")  # fmt: skip


def weight_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The weight files Hugging Face reads from ``folder``: its ``*.safetensors`` when it
    has any, else its ``pytorch_model*.bin`` (and ``*.pt`` / ``*.pth``) files, sorted."""
    folder = Path(folder)
    found = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    if found:
        return found
    torch_files = [*folder.glob("pytorch_model*.bin"), *folder.glob("*.pt"), *folder.glob("*.pth")]
    return sorted(p for p in torch_files if p.is_file())


def check_safetensors_file(path: str | os.PathLike[str]) -> None:
    """Raise :class:`FileFormatError` naming ``path`` unless it is a whole safetensors
    file: an 8-byte header length, a JSON header, and every tensor's bytes present."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 0 or n > size - 8:
            raise FileFormatError(f"{path} is truncated or not a safetensors file ({size} bytes, "
                                  f"too short for its header); {_RESAVE}")  # fmt: skip
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            header = None
    entries = [v for k, v in header.items() if k != "__metadata__"] if isinstance(header, dict) else None
    try:
        need = 8 + n + max((int(v["data_offsets"][1]) for v in entries or ()), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        entries = None
    if entries is None:
        raise FileFormatError(f"{path} is damaged: its safetensors header is not a table of "
                              f"tensors; {_RESAVE}")  # fmt: skip
    if size < need:
        raise FileFormatError(f"{path} is truncated: {size} bytes, but its header lists "
                              f"tensors up to byte {need}; {_RESAVE}")  # fmt: skip


def check_torch_file(path: str | os.PathLike[str]) -> None:
    """Raise :class:`FileFormatError` naming ``path`` unless ``torch.load`` reads it with
    ``weights_only=True``: refused are truncated or damaged files and files that pickle
    Python objects besides tensors (:func:`edgewise.io.files.torch_file_error`)."""
    path = Path(path)
    is_zip = zipfile.is_zipfile(path)  # torch's format since 1.6: tensors can be mapped
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise torch_file_error(path, e, _UNPICKLED if _pickled(e) else _RESAVE) from None


def _pickled(err: BaseException) -> bool:
    return pickled_global(err) is not None


def check_weights_file(path: str | os.PathLike[str]) -> None:
    """:func:`check_safetensors_file` or :func:`check_torch_file`, by the file's suffix."""
    if Path(path).suffix == ".safetensors":
        check_safetensors_file(path)
    else:
        check_torch_file(path)


def check_model_dir(folder: str | os.PathLike[str]) -> None:
    """Raise :class:`FileFormatError` (a ``ValueError``) naming the file and the fix
    unless ``folder`` holds a readable Hugging Face checkpoint: a ``config.json`` that is
    a JSON object with a ``model_type``, and whole weight files (:func:`weight_files`)."""
    folder = Path(folder)
    config = folder / "config.json"
    if not config.is_file():
        raise FileFormatError(f"{folder} has no config.json, so it is not a Hugging Face model "
                              "folder; save the model there with model.save_pretrained(DIR)")
    try:
        doc = json.loads(config.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FileFormatError(f"{config} is not valid JSON ({e}); fix it, or save the model "
                              "again with model.save_pretrained(DIR)") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("model_type"), str):
        raise FileFormatError(f'{config} has no "model_type" (e.g. "gpt2", "llama"), so no '
                              "architecture can be chosen; save the model again with "
                              "model.save_pretrained(DIR)")  # fmt: skip
    files = weight_files(folder)
    if not files:
        raise FileFormatError(f"{folder} holds no weights (model.safetensors, its shards, or "
                              "pytorch_model.bin); save the model there with "
                              "model.save_pretrained(DIR)")  # fmt: skip
    for f in files:
        check_weights_file(f)
