"""The folder ``edgewise discover --out DIR`` writes: who owns it, who is using it.

- A marker file ``DIR/.edgewise`` (JSON: model and task) says edgewise made the folder
  and which task and model it holds: one folder holds one task on one model.
- edgewise only ever writes, replaces or deletes its own names there
  (:func:`is_edgewise_name`); a folder that already holds other files and no marker is
  refused unless the user allows it, and even then no file with one of those names may
  be there already.
- A lock file ``DIR/.edgewise-lock`` (JSON: pid, host, start time) keeps two runs
  out of one folder at a time; a lock whose process is gone (same host) is taken over.
Imports nothing heavy at module level (the command line reads ``STATE_DIR``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MARKER = ".edgewise"
LOCK = ".edgewise-lock"
STATE_DIR = "checkpoints"  # resume state: <algo>.json and <algo>.pt
_OUTPUTS = re.compile(r"(results\.json|report\.html|scores_.+\.safetensors|circuit_.+_mib\.json"
                      r"|mib_results\.json|mib_report\.html|mib_submission)")


class OutputFolderError(ValueError):
    """The output folder cannot be used as asked (a file, someone else's files, another
    task or model, not writable). The message names the folder and what to do."""


class FolderInUseError(RuntimeError):
    """Another edgewise run holds the folder's lock; the message says which."""


def is_edgewise_name(name: str) -> bool:
    """Whether a top-level entry of a results folder has a name edgewise writes."""
    from edgewise.io.files import is_edgewise_temporary

    return (name in (MARKER, LOCK, STATE_DIR) or bool(_OUTPUTS.fullmatch(name))
            or is_edgewise_temporary(name))


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker's content, or ``None`` when ``folder`` has no marker."""
    from edgewise.io.files import read_json

    path = folder / MARKER
    if not path.exists():
        return None
    doc = read_json(path, f"it marks {folder} as edgewise's; restore it, or use another folder")
    if not isinstance(doc, dict) or doc.get("written_by") != "edgewise":
        raise OutputFolderError(f"{path} is not edgewise's marker file; use another folder")
    from edgewise.io.schema import check_marker  # its fields' types (FieldError)

    return check_marker(doc, path, f"restore it (it marks {folder} as edgewise's), or use "
                                   "another folder")


def write_marker(folder: Path, model: str, task: str) -> None:
    """Mark ``folder`` as edgewise's, holding ``task`` on ``model`` (once; kept after)."""
    from edgewise import __version__
    from edgewise.io.files import write_json

    if (folder / MARKER).exists():
        return
    write_json(folder / MARKER, {"written_by": "edgewise", "model": model, "task": task,
                                 "created_by_version": __version__})


def check_output_folder(folder: Path, model: str, task: str, allow_existing: bool) -> None:
    """Refuse, before any work, a ``--out`` edgewise must not write to: a file, a
    folder of another task or model, a non-empty folder edgewise did not make (unless
    ``allow_existing``; then none of its files may have an edgewise name), or one it
    cannot write to."""
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"--out {folder} is a file, not a folder: give a folder path")
    if folder.is_dir():
        marker = read_marker(folder)
        if marker is not None:
            if (marker.get("model"), marker.get("task")) != (model, task):
                raise OutputFolderError(
                    f"{folder} holds results of task {marker.get('task')!r} on model "
                    f"{marker.get('model')!r}; this run is task {task!r} on model {model!r}. "
                    "One folder holds one task and model: use another --out")
        else:
            entries = sorted(p.name for p in folder.iterdir() if p.name != LOCK)
            if entries and not allow_existing:
                raise OutputFolderError(
                    f"{folder} already holds files edgewise did not write ({', '.join(entries[:5])}"
                    f"{', ...' if len(entries) > 5 else ''}); use an empty or new folder, or "
                    "pass --allow-existing to add edgewise's files next to them")
            clashes = [name for name in entries if is_edgewise_name(name)]
            if clashes:
                raise OutputFolderError(
                    f"{folder} holds {', '.join(clashes)}, not written by edgewise (no "
                    f"{MARKER} marker); edgewise would replace them: move them away or use "
                    "another --out")
    check_writable(folder)


def check_writable(folder: Path) -> None:
    """Raise :class:`OutputFolderError` unless a file can be created in ``folder`` (or,
    when it does not exist yet, in the nearest existing folder above it)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-test.", suffix=".edgewise-tmp")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise OutputFolderError(f"cannot write to {existing} ({e.strerror}): make it writable "
                                "or choose another folder") from None


def remove_stale_temporaries(*folders: Path) -> None:
    """Delete the temporary files a killed run left in ``folders`` (only names made by
    :func:`edgewise.io.files.atomic_write`; call with the folder's lock held)."""
    from edgewise.io.files import is_edgewise_temporary

    for folder in folders:
        if folder.is_dir():
            for f in folder.iterdir():
                if f.is_file() and is_edgewise_temporary(f.name):
                    f.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _create_lock(path: Path, doc: dict[str, Any]) -> bool:
    """Create ``path`` holding ``doc`` if it does not exist, in one step (a link of a
    complete temporary file); ``False`` if it exists."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".edgewise-tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: exclusive create, then write
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f)
        return True
    finally:
        os.remove(tmp)


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock while the block runs (creating ``folder`` if needed).

    A lock held by a live process raises :class:`FolderInUseError` naming its pid, host
    and start time; a lock whose process is gone on this host is taken over."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    host = socket.gethostname()
    mine = {"pid": os.getpid(), "host": host,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())}
    if not _create_lock(path, mine):
        held = _read_lock(path) or {}
        pid, where = held.get("pid"), held.get("host")
        stale = isinstance(pid, int) and where == host and not _alive(pid)
        if not stale:
            who = (f"pid {pid} on host {where}, started {held.get('started')}"
                   if pid is not None else "a run whose lock file is unreadable")
            raise FolderInUseError(
                f"{folder} is in use by another edgewise run ({who}): wait for it to end, "
                f"or, if that run is gone, delete {path}")
        path.unlink(missing_ok=True)  # its process is gone: take the lock over
        if not _create_lock(path, mine):
            raise FolderInUseError(f"{folder}: another run took over the stale lock {path} "
                                   "at the same moment; wait for it to end")
    try:
        yield
    finally:
        if (_read_lock(path) or {}).get("pid") == os.getpid():
            path.unlink(missing_ok=True)
