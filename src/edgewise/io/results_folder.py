"""The folders edgewise commands write: who owns them, who is using them.

- A marker file ``DIR/.edgewise`` (JSON) says edgewise made the folder and what it
  holds: one task on one model (``discover``, ``mib demo``), or MIB submission files
  (``mib export``, ``"kind": "mib-submission"``).
- edgewise only ever writes, replaces or deletes its own names there
  (:func:`is_edgewise_name`, or the names a command passes as ``owned``); a folder that
  already holds other files and no marker is refused unless the user allows it, and even
  then no file with one of those names may be there already.
- No edgewise name in the folder may be a symbolic link, nor may anything inside an
  edgewise folder (``checkpoints/``, ``mib_submission/``, ...): writing, replacing or
  deleting through a link could reach files outside the folder (:func:`check_links`).
- A lock file ``DIR/.edgewise-lock`` (JSON: pid, host, start time) keeps two runs
  out of one folder at a time; a lock whose process is gone (same host) is taken over,
  one that edgewise cannot have written (no readable process id) is refused.
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

MARKER = ".edgewise"
LOCK = ".edgewise-lock"
STATE_DIR = "checkpoints"  # resume state: <algo>.json and <algo>.pt
RESULTS = "results"  # the marker's kind for discover and mib demo (one task, one model)
MIB_SUBMISSION = "mib-submission"  # the marker's kind for mib export
_OUTPUTS = re.compile(r"(results\.json|report\.html|scores_.+\.safetensors|circuit_.+_mib\.json"
                      r"|mib_results\.json|mib_report\.html|mib_submission)")
_MAX_PID = 2**31 - 1  # pid_t is a signed 32-bit integer wherever edgewise runs


class OutputFolderError(ValueError):
    """The output folder cannot be used as asked (a file, someone else's files, another
    task or model, a link, not writable). The message names the folder and what to do."""


class FolderInUseError(RuntimeError):
    """Another edgewise run holds the folder's lock (or a lock file edgewise cannot read
    is there); the message says which and what to do."""


def is_edgewise_name(name: str) -> bool:
    """Whether a top-level entry of a results folder has a name edgewise writes."""
    from edgewise.io.files import is_edgewise_temporary

    return (name in (MARKER, LOCK, STATE_DIR) or bool(_OUTPUTS.fullmatch(name))
            or is_edgewise_temporary(name))


def _always_owned(name: str) -> bool:
    """The marker, the lock and temporary files: edgewise's in every folder it writes."""
    from edgewise.io.files import is_edgewise_temporary

    return name in (MARKER, LOCK) or is_edgewise_temporary(name)


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker's content, or ``None`` when ``folder`` has no marker."""
    from edgewise.io.files import read_json

    path = folder / MARKER
    if not os.path.lexists(path):
        return None
    _refuse_link(path, folder)
    doc = read_json(path, f"it marks {folder} as edgewise's; restore it, or use another folder")
    if not isinstance(doc, dict) or doc.get("written_by") != "edgewise":
        raise OutputFolderError(f"{path} is not edgewise's marker file; use another folder")
    from edgewise.io.schema import check_marker  # its fields' types (FieldError)

    return check_marker(doc, path, f"restore it (it marks {folder} as edgewise's), or use "
                                   "another folder")


def write_marker(folder: Path, model: str | None, task: str | None, kind: str = RESULTS) -> None:
    """Mark ``folder`` as edgewise's (once; kept after): holding ``task`` on ``model``
    (``kind`` :data:`RESULTS`), or files of another ``kind`` such as
    :data:`MIB_SUBMISSION` (then ``model`` and ``task`` are not recorded)."""
    from edgewise import __version__
    from edgewise.io.files import write_json

    if (folder / MARKER).exists():
        return
    doc: dict[str, Any] = {"written_by": "edgewise"}
    if kind == RESULTS:
        doc.update(model=model, task=task)
    else:
        doc["kind"] = kind
    doc["created_by_version"] = __version__
    write_json(folder / MARKER, doc)


def _holds(marker: dict[str, Any]) -> str:
    kind = marker.get("kind", RESULTS)
    if kind == MIB_SUBMISSION:
        return "MIB submission files (edgewise mib export)"
    if kind == RESULTS:
        return f"results of task {marker.get('task')!r} on model {marker.get('model')!r}"
    return f"edgewise files of kind {kind!r}"


def check_output_folder(
    folder: Path,
    model: str | None,
    task: str | None,
    allow_existing: bool,
    kind: str = RESULTS,
    owned: Callable[[str], bool] = is_edgewise_name,
) -> None:
    """Refuse, before any work, a ``--out`` edgewise must not write to: a file, a
    folder of another kind, task or model, a non-empty folder edgewise did not make
    (unless ``allow_existing``; then none of its entries may be ``owned``: a name this
    command writes), an ``owned`` name that is a link or holds one (:func:`check_links`),
    or a folder it cannot write to."""
    if folder.is_symlink() and not folder.exists():
        raise OutputFolderError(f"--out {folder} is a link to {os.readlink(folder)}, which does "
                                "not exist: create that folder, or give another path")
    if os.path.lexists(folder) and not folder.is_dir():
        raise OutputFolderError(f"--out {folder} is a file, not a folder: give a folder path")
    if folder.is_dir():
        marker = read_marker(folder)
        if marker is not None:
            wanted = {"kind": kind, "model": model, "task": task}
            same = (marker.get("kind", RESULTS) == kind and (kind != RESULTS or (
                marker.get("model"), marker.get("task")) == (model, task)))
            if not same:
                one = ("One folder holds one task and model" if kind == RESULTS else
                       "A folder holds one kind of edgewise files")
                raise OutputFolderError(
                    f"{folder} holds {_holds(marker)}; this run writes {_holds(wanted)}. "
                    f"{one}: use another --out")
        else:
            entries = sorted(p.name for p in folder.iterdir()  # a killed run's temporaries
                             if not _always_owned(p.name) or p.name == MARKER)  # go anyway
            if entries and not allow_existing:
                raise OutputFolderError(
                    f"{folder} already holds files edgewise did not write ({', '.join(entries[:5])}"
                    f"{', ...' if len(entries) > 5 else ''}); use an empty or new folder, or "
                    "pass --allow-existing to add edgewise's files next to them")
            clashes = [name for name in entries if owned(name)]
            if clashes:
                raise OutputFolderError(
                    f"{folder} holds {', '.join(clashes)}, not written by edgewise (no "
                    f"{MARKER} marker); edgewise would replace them: move them away or use "
                    "another --out")
        check_links(folder, owned)
    check_writable(folder)


def _refuse_link(path: Path, folder: Path) -> None:
    if path.is_symlink():
        what = "folder" if path.is_dir() else "file"
        raise OutputFolderError(
            f"{path} is a symbolic link (to {os.readlink(path)}): edgewise never writes, "
            f"replaces or deletes through a link, which could reach files outside {folder}. "
            f"Replace it with a real {what}, or remove the link, or use another folder")


def check_links(folder: Path, owned: Callable[[str], bool] = is_edgewise_name) -> None:
    """Raise :class:`OutputFolderError` if an entry of ``folder`` that edgewise writes
    (``owned``, the marker, the lock, temporaries) is a symbolic link, or if anything
    under such a folder (``checkpoints/``, ``mib_submission/``, ...) is one. ``folder``
    itself may be a link: the user named it."""
    if not folder.is_dir():
        return
    for entry in sorted(folder.iterdir()):
        if not (owned(entry.name) or _always_owned(entry.name)):
            continue
        _refuse_link(entry, folder)
        if entry.is_dir():
            for root, dirs, files in os.walk(entry):  # links are listed, never followed
                for name in sorted(dirs + files):
                    _refuse_link(Path(root) / name, folder)


def check_writable(folder: Path) -> None:
    """Raise :class:`OutputFolderError` unless a file can be created in ``folder`` (or,
    when it does not exist yet, in the nearest existing folder above it)."""
    from edgewise.io.files import TEMP_SUFFIX, signals_deferred

    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        with signals_deferred():  # the probe never outlives this step
            fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-test.", suffix=TEMP_SUFFIX)
            os.close(fd)
            os.remove(probe)
    except OSError as e:
        raise OutputFolderError(f"cannot write to {existing} ({e.strerror}): make it writable "
                                "or choose another folder") from None


def remove_stale_temporaries(
    folder: Path, owned: Callable[[str], bool] = is_edgewise_name
) -> None:
    """Delete the temporary files a killed run left in ``folder`` and in the folders it
    writes under it (``owned``; only names made by
    :func:`edgewise.io.files.atomic_write`). Call with the folder's lock held, after
    :func:`check_links`."""
    from edgewise.io.files import is_edgewise_temporary

    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.is_symlink():
            continue
        if entry.is_file() and is_edgewise_temporary(entry.name):
            entry.unlink()
        elif entry.is_dir() and owned(entry.name):
            for root, _dirs, files in os.walk(entry):
                for name in files:
                    path = Path(root) / name
                    if is_edgewise_temporary(name) and not path.is_symlink():
                        path.unlink()


# ------------------------------------------------------------------------- the lock
_HELD: set[str] = set()  # the lock files this process holds


def _key(path: Path) -> str:
    return os.path.realpath(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (OverflowError, ValueError, OSError):  # no process can have this id
        return False
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
    from edgewise.io.files import TEMP_SUFFIX

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
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


def _is_pid(pid: Any) -> bool:
    return isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid <= _MAX_PID


def _stale(held: dict[str, Any], path: Path, host: str) -> bool:
    """Whether a lock (a valid one, see :func:`_is_pid`) can be taken over: written on
    this host by a process that is gone, or by an earlier process that had this
    process's id (a restarted container) while this process does not hold it."""
    if held.get("host") != host:
        return False  # another machine's processes cannot be checked from here
    if held["pid"] == os.getpid():
        return _key(path) not in _HELD
    return not _alive(held["pid"])


def _take_over(path: Path, held: dict[str, Any], mine: dict[str, Any]) -> bool:
    """Replace the stale lock ``held`` at ``path`` by ``mine``; ``False`` when another
    run got there first. The stale lock is first moved aside, in one step, so that of
    two runs taking it over at once only one removes it; one that finds it has moved
    another run's fresh lock puts it back."""
    from edgewise.io.files import TEMP_SUFFIX

    aside = path.with_name(f".{path.name}.{os.getpid()}.stale{TEMP_SUFFIX}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:  # another run moved it: race for the free name
        return _create_lock(path, mine)
    if _read_lock(aside) != held:  # a fresh lock another run took meanwhile: put it back
        try:
            os.link(aside, path)
        except FileExistsError:  # a third run took the free name: its lock stands
            pass
        except OSError:  # a file system without hard links
            if not os.path.lexists(path):
                os.replace(aside, path)
                return False
        os.remove(aside)
        return False
    os.remove(aside)
    return _create_lock(path, mine)


def _acquire(folder: Path, path: Path, mine: dict[str, Any]) -> None:
    host = mine["host"]
    for _ in range(3):
        if _create_lock(path, mine):
            return
        held = _read_lock(path)
        if held is None:  # released meanwhile: try again
            continue
        if not held:
            raise FolderInUseError(
                f"{folder} is in use by another edgewise run (its lock file {path} is "
                "unreadable: it may be being written now): wait for it to end, or, if no "
                f"edgewise run is using {folder}, delete {path}")
        pid = held.get("pid")
        if not _is_pid(pid):
            raise FolderInUseError(
                f"{path} is not a lock edgewise wrote: it names pid {pid!r}, which no "
                "process can have (edited or damaged). edgewise does not take over a lock "
                f"it cannot tell the owner of: if no edgewise run is using {folder}, delete "
                f"{path} and run again")
        if not _stale(held, path, host):
            raise FolderInUseError(
                f"{folder} is in use by another edgewise run (pid {pid} on host "
                f"{held.get('host')}, started {held.get('started')}): wait for it to end, "
                f"or, if that run is gone, delete {path}")
        if _take_over(path, held, mine):  # its process is gone
            return
    raise FolderInUseError(f"{folder}: other runs are taking its lock {path} at the same "
                           "moment; wait for them to end")


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock while the block runs (creating ``folder`` if needed).

    A lock held by a live process raises :class:`FolderInUseError` naming its pid, host
    and start time; so does a lock file that is unreadable or names no possible process
    id (edgewise always writes its real pid, so such a file is not its own; the message
    says to delete it if no run uses the folder). A lock whose process is gone on this
    host is taken over. Taking and releasing the lock are never cut by a signal
    (:func:`edgewise.io.files.signals_deferred`): an interrupted run releases it."""
    from edgewise.io.files import signals_deferred

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    _refuse_link(path, folder)
    mine = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())}
    taken = False
    try:
        with signals_deferred():
            _acquire(folder, path, mine)
            taken = True
            _HELD.add(_key(path))
        yield
    finally:
        if taken:
            with signals_deferred():
                _HELD.discard(_key(path))
                if _read_lock(path) == mine:
                    path.unlink(missing_ok=True)


@contextlib.contextmanager
def writing(folder: Path, owned: Callable[[str], bool] = is_edgewise_name) -> Iterator[None]:
    """Hold ``folder``'s lock (:func:`folder_lock`) and, with it held, check its links
    again (:func:`check_links`) and remove the temporaries a killed run left
    (:func:`remove_stale_temporaries`): how every edgewise command that writes into a
    folder starts, after checking the folder without the lock."""
    with folder_lock(folder):
        check_links(folder, owned)
        remove_stale_temporaries(folder, owned)
        yield
