"""The shapes of the JSON files edgewise writes and reads back, checked whole before use.

``results.json`` (:func:`check_results_doc`), one algorithm's evaluation in it or in
the resume state (:func:`check_algorithm_result`), the resume state
``checkpoints/<algo>.json`` (:func:`check_resume_state`) and the folder marker
``.edgewise`` (:func:`check_marker`). A hand-edited or damaged file raises
:class:`FieldError` naming the file, the field by its JSON path
(``algorithms.eap.measurements[3][1]``), what is wrong with it and the fix, before
anything reads it: types, required fields, ranges, lists whose lengths must match,
NaN where a number must be finite, edge names edgewise does not write.

Keys a file has beyond these are allowed and ignored (newer files may carry more).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from edgewise.io.files import FileFormatError

Check = Callable[[Any, str], None]

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_NODE = r"(?:Resid Start|Resid End|A\d+\.\d+(?:\.[QKV])?|(?:Resid Mid|MLP|Resid Post) \d+)"
EDGE_NAME = re.compile(rf"{_NODE}->{_NODE}")
"""An edge name as edgewise writes it: ``"A0.1->A1.2.Q"``, ``"Resid Start->MLP 0"``."""
_SHA256 = re.compile(r"[0-9a-f]{64}")


class FieldError(FileFormatError):
    """A field of a file edgewise wrote is missing, of the wrong type, out of range or
    inconsistent with another. ``file`` and ``field`` (a JSON path such as
    ``algorithms.eap.top_edges[0].score``; ``""`` for the whole document) say where."""

    def __init__(self, file: str, field: str, problem: str, fix: str):
        self.file, self.field = file, field
        where = f"field {field}" if field else "the top level"
        super().__init__(f"{file}: {where} {problem}; {fix}")


def join(path: str, key: str | int) -> str:
    """The JSON path of ``key`` under ``path``: ``a.b``, ``a[3]``, ``a["odd key"]``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _KEY.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{key!r}]"


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true/false"
    if isinstance(v, float) and math.isnan(v):
        return "NaN"
    return {dict: "an object", list: "a list", str: "a string", int: "a whole number",
            float: "a number"}.get(type(v), type(v).__name__)  # fmt: skip


def _got(v: Any) -> str:
    text = repr(v) if not isinstance(v, dict | list) else _kind(v)
    return text if len(text) <= 60 else text[:57] + "..."


class Schema:
    """Checks for one file: every failure is a :class:`FieldError` with ``file`` and
    ``fix``."""

    def __init__(self, file: Any, fix: str):
        self.file, self.fix = str(file), fix

    def fail(self, path: str, problem: str) -> FieldError:
        return FieldError(self.file, path, problem, self.fix)

    # ---------------------------------------------------------------- leaves
    def obj(self, v: Any, path: str, required: tuple[str, ...] = ()) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise self.fail(path, f"holds {_kind(v)}, not an object")
        missing = [k for k in required if k not in v]
        if missing:
            err = self.fail(path, f"lacks {', '.join(map(repr, missing))}")
            err.field = join(path, missing[0])  # the first missing field
            raise err
        return v

    def lst(self, v: Any, path: str, length: int | None = None, nonempty: bool = False) -> list[Any]:
        if not isinstance(v, list):
            raise self.fail(path, f"holds {_kind(v)}, not a list")
        if length is not None and len(v) != length:
            raise self.fail(path, f"has {len(v)} entries, not {length}")
        if nonempty and not v:
            raise self.fail(path, "is empty")
        return v

    def text(self, v: Any, path: str, nonempty: bool = True) -> str:
        if not isinstance(v, str) or (nonempty and not v):
            raise self.fail(path, f"must be a non-empty string, got {_got(v)}")
        return v

    def sha256(self, v: Any, path: str) -> str:
        if not isinstance(v, str) or not _SHA256.fullmatch(v):
            raise self.fail(path, f"must be a sha256 (64 hex digits), got {_got(v)}")
        return v

    def integer(self, v: Any, path: str, lo: int | None = None, hi: int | None = None,
                nullable: bool = False) -> int | None:  # fmt: skip
        if v is None and nullable:
            return None
        if not isinstance(v, int) or isinstance(v, bool):
            raise self.fail(path, f"must be a whole number{' or null' if nullable else ''}, "
                                  f"got {_got(v)}")  # fmt: skip
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            bounds = f"from {lo}" + (f" to {hi}" if hi is not None else " up")
            raise self.fail(path, f"is {v}, out of range (must be {bounds})")
        return v

    def number(self, v: Any, path: str, lo: float | None = None, hi: float | None = None,
               infinite: bool = False, nullable: bool = False) -> float | None:  # fmt: skip
        if v is None and nullable:
            return None
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise self.fail(path, f"must be a number{' or null' if nullable else ''}, got {_got(v)}")
        if math.isnan(v):
            raise self.fail(path, "is NaN, not a number")
        if math.isinf(v) and not infinite:
            raise self.fail(path, f"is {v}, not a finite number")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise self.fail(path, f"is {v}, out of range (must be within [{lo}, {hi}])")
        return float(v)

    def edge_name(self, v: Any, path: str) -> str:
        if not isinstance(v, str) or not EDGE_NAME.fullmatch(v):
            raise self.fail(path, f"must be an edge name like 'A0.1->A1.2.Q', got {_got(v)}")
        return v

    def seq_idx(self, v: Any, path: str, seq_len: int | None) -> int | None:
        if seq_len is None:
            if v is not None:
                raise self.fail(path, f"is {_got(v)}, but these results have no token "
                                      "positions (seq_len null): it must be null")  # fmt: skip
            return None
        return self.integer(v, path, 0, seq_len - 1)

    def interval(self, v: Any, path: str, infinite: bool = False) -> tuple[float, float]:
        lo, hi = self.lst(v, path, 2)
        a = self.number(lo, join(path, 0), infinite=infinite)
        b = self.number(hi, join(path, 1), infinite=infinite)
        assert a is not None and b is not None
        if a > b:
            raise self.fail(path, f"is [{a}, {b}]: its lower end exceeds its upper end")
        return a, b


# ------------------------------------------------------------------------ results.json
SETTING_CHECKS: dict[str, str] = {
    "model": "text", "task": "text", "model_kind": "text", "batch_size": "batch_size",
    "seq_len": "seq_len", "data_sha256": "sha256", "graph_sha256": "sha256",
    "weights_sha256": "sha256", "edgewise_version": "text",
    "transformer_lens_version": "text", "algorithm": "text", "parameters": "object",
    "dtype": "text", "device": "text",
}  # fmt: skip
"""The provenance fields (``results.json``'s ``settings``, a resume state's
``fingerprint``) and how each is checked when present."""


def check_settings(s: Schema, v: Any, path: str) -> dict[str, Any]:
    """The provenance fields a file recorded: each present one of the right type."""
    s.obj(v, path)
    for key, how in SETTING_CHECKS.items():
        if key not in v:
            continue
        p = join(path, key)
        if how == "text":
            s.text(v[key], p)
        elif how == "sha256":
            s.sha256(v[key], p)
        elif how == "batch_size":
            s.integer(v[key], p, 1)
        elif how == "seq_len":
            s.integer(v[key], p, 1, nullable=True)
        else:
            s.obj(v[key], p)
    return v


def _pairs(s: Schema, v: Any, path: str, n_edges: int, nonempty: bool) -> list[int]:
    """``[[size, value], ...]``: sizes whole numbers in ``[0, n_edges]``, strictly
    increasing; values finite. Returns the sizes."""
    sizes: list[int] = []
    for i, row in enumerate(s.lst(v, path, nonempty=nonempty)):
        p = join(path, i)
        size, value = s.lst(row, p, 2)
        size = s.integer(size, join(p, 0), 0, n_edges)
        s.number(value, join(p, 1))
        assert size is not None
        if sizes and size <= sizes[-1]:
            raise s.fail(join(p, 0), f"is {size}, not above the previous size {sizes[-1]}: "
                                     "sizes must increase")  # fmt: skip
        sizes.append(size)
    return sizes


def _same_sizes(s: Schema, path: str, sizes: list[int], want: list[int], of: str) -> None:
    if len(sizes) != len(want):
        raise s.fail(path, f"has {len(sizes)} entries, but {of} has {len(want)}: they must "
                           "have one entry per circuit size")  # fmt: skip
    for i, (a, b) in enumerate(zip(sizes, want)):
        if a != b:
            raise s.fail(join(join(path, i), 0), f"is size {a}, but {of} has size {b} there")


def _monotone(s: Schema, v: list[Any], path: str) -> None:
    for i in range(1, len(v)):
        if v[i] < v[i - 1]:
            raise s.fail(join(path, i), f"is {v[i]}, below the previous {v[i - 1]}: a ROC "
                                        "curve never decreases")  # fmt: skip


def check_algorithm_result(
    s: Schema, r: Any, path: str, n_edges: int, seq_len: int | None, algo: str | None = None
) -> dict[str, Any]:
    """One algorithm's evaluation (``results.json``'s ``algorithms.<algo>``, a resume
    state's ``result``): ``metric``, ``measurements`` and ``top_edges`` required; every
    other field edgewise writes checked when present (curves with one entry per
    measured size, AUC and ROC rates within [0, 1], intervals ordered, edge names and
    positions that exist in a graph of ``n_edges`` edges and ``seq_len`` positions)."""
    s.obj(r, path, ("metric", "measurements", "top_edges"))
    if "algorithm" in r:
        s.text(r["algorithm"], join(path, "algorithm"))
        if algo is not None and r["algorithm"] != algo:
            raise s.fail(join(path, "algorithm"), f"is {r['algorithm']!r}, but these are the "
                                                  f"results of {algo!r}")  # fmt: skip
    s.text(r["metric"], join(path, "metric"))
    mpath = join(path, "measurements")
    sizes = _pairs(s, r["measurements"], mpath, n_edges, nonempty=True)
    if "faithfulness" in r:
        fpath = join(path, "faithfulness")
        _same_sizes(s, fpath, _pairs(s, r["faithfulness"], fpath, n_edges, False), sizes, mpath)
    if "cpr" in r:
        s.number(r["cpr"], join(path, "cpr"))
    if "cmd" in r:
        s.number(r["cmd"], join(path, "cmd"), lo=0.0)
    for key in ("faithfulness_error", "bootstrap_error"):
        if key in r:
            s.text(r[key], join(path, key), nonempty=False)
    if "seconds" in r:
        s.number(r["seconds"], join(path, "seconds"), lo=0.0, nullable=True)
    if "parameters" in r:
        s.obj(r["parameters"], join(path, "parameters"))
    if "auc" in r:
        s.number(r["auc"], join(path, "auc"), 0.0, 1.0)
    if "roc" in r:
        rp = join(path, "roc")
        roc = s.obj(r["roc"], rp, ("fpr", "tpr"))
        rates = {}
        for key in ("fpr", "tpr"):
            kp = join(rp, key)
            rates[key] = [s.number(x, join(kp, i), 0.0, 1.0)
                          for i, x in enumerate(s.lst(roc[key], kp, nonempty=True))]  # fmt: skip
            _monotone(s, rates[key], kp)
        if len(rates["fpr"]) != len(rates["tpr"]):
            raise s.fail(join(rp, "tpr"), f"has {len(rates['tpr'])} entries, but roc.fpr has "
                                          f"{len(rates['fpr'])}: one pair per point")  # fmt: skip
    if "official_edges" in r:
        op = join(path, "official_edges")
        for i, pair in enumerate(s.lst(r["official_edges"], op)):
            p = join(op, i)
            name, pos = s.lst(pair, p, 2)
            s.edge_name(name, join(p, 0))
            s.seq_idx(pos, join(p, 1), seq_len)
    tp = join(path, "top_edges")
    seen: set[tuple[str, int | None]] = set()
    for i, rec in enumerate(s.lst(r["top_edges"], tp)):
        p = join(tp, i)
        s.obj(rec, p, ("edge", "score"))
        name = s.edge_name(rec["edge"], join(p, "edge"))
        pos = s.seq_idx(rec.get("seq_idx"), join(p, "seq_idx"), seq_len)
        s.number(rec["score"], join(p, "score"), infinite=True)
        if "ci" in rec:
            s.interval(rec["ci"], join(p, "ci"), infinite=True)
        if (name, pos) in seen:
            raise s.fail(p, f"repeats the edge {name!r} (position {pos}) listed before it")
        seen.add((name, pos))
    if len(seen) > n_edges:
        raise s.fail(tp, f"lists {len(seen)} edges, more than the graph's {n_edges}")
    if "bootstrap" in r:
        _check_bootstrap(s, r["bootstrap"], join(path, "bootstrap"), sizes, mpath)
    return r


def _check_bootstrap(s: Schema, b: Any, path: str, sizes: list[int], mpath: str) -> None:
    s.obj(b, path)
    for where in (b, b.get("scores")):
        if where is None:
            continue
        wp = path if where is b else join(path, "scores")
        s.obj(where, wp)
        if "n_resamples" in where:
            s.integer(where["n_resamples"], join(wp, "n_resamples"), 1)
        if "level" in where:
            level = s.number(where["level"], join(wp, "level"), 0.0, 1.0)
            if level in (0.0, 1.0):
                raise s.fail(join(wp, "level"), f"is {level}: a confidence level lies strictly "
                                                "between 0 and 1")  # fmt: skip
        if "seed" in where:
            s.integer(where["seed"], join(wp, "seed"))
        if "method" in where:
            s.text(where["method"], join(wp, "method"))
    if "faithfulness" in b:
        fp = join(path, "faithfulness")
        rows = s.lst(b["faithfulness"], fp)
        got = []
        for i, row in enumerate(rows):
            p = join(fp, i)
            size, lo, hi = s.lst(row, p, 3)
            got.append(s.integer(size, join(p, 0), 0))
            a, z = s.number(lo, join(p, 1)), s.number(hi, join(p, 2))
            if a > z:  # type: ignore[operator]
                raise s.fail(p, f"has lower end {a} above upper end {z}")
        _same_sizes(s, fp, got, sizes, mpath)  # type: ignore[arg-type]
    for key in ("cpr", "cmd"):
        if key in b:
            s.interval(b[key], join(path, key))


def check_results_doc(doc: Any, file: Any, fix: str) -> dict[str, Any]:
    """Check a whole ``results.json`` document (see the module docstring); return it.

    Required: ``model``, ``task`` (strings), ``n_edges`` (>= 1), ``algorithms`` (a
    non-empty object of :func:`check_algorithm_result` entries). Checked when present:
    ``seq_len`` (>= 1 or null) and ``settings`` (:func:`check_settings`), which must
    agree with ``model``, ``task`` and ``seq_len``; ``seq_labels`` (strings or null),
    ``n_prompts`` (whole numbers >= 0 by split) and ``unfinished`` (the algorithms an
    interrupted run did not finish and its command).

    Raises:
        FieldError: naming ``file``, the field's JSON path and ``fix``.
    """
    s = Schema(file, fix)
    s.obj(doc, "", ("model", "task", "n_edges", "algorithms"))
    s.text(doc["model"], "model")
    s.text(doc["task"], "task")
    n_edges = s.integer(doc["n_edges"], "n_edges", 1)
    seq_len = s.integer(doc.get("seq_len"), "seq_len", 1, nullable=True)
    assert n_edges is not None
    if "settings" in doc:
        settings = check_settings(s, doc["settings"], "settings")
        for key, value in (("model", doc["model"]), ("task", doc["task"]), ("seq_len", seq_len)):
            if key in settings and settings[key] != value:
                raise s.fail(join("settings", key), f"is {settings[key]!r}, but {key} is "
                                                    f"{value!r}: they must agree")  # fmt: skip
    if doc.get("seq_labels") is not None:
        for i, label in enumerate(s.lst(doc["seq_labels"], "seq_labels")):
            s.text(label, join("seq_labels", i), nonempty=False)
    if "n_prompts" in doc:
        for split, n in s.obj(doc["n_prompts"], "n_prompts").items():
            s.integer(n, join("n_prompts", split), 0)
    if "unfinished" in doc:
        u = s.obj(doc["unfinished"], "unfinished", ("algorithms",))
        for i, algo in enumerate(s.lst(u["algorithms"], join("unfinished", "algorithms"))):
            s.text(algo, join(join("unfinished", "algorithms"), i))
        if "command" in u:
            s.text(u["command"], join("unfinished", "command"))
    algos = s.obj(doc["algorithms"], "algorithms")
    if not algos:
        raise s.fail("algorithms", "holds no algorithms' results")
    for algo, r in algos.items():
        check_algorithm_result(s, r, join("algorithms", algo), n_edges, seq_len, algo)
    return doc


# ------------------------------------------------------------------ other JSON files
def check_resume_state(
    doc: Any, file: Any, fix: str, n_edges: int, seq_len: int | None, algo: str
) -> dict[str, Any]:
    """Check ``checkpoints/<algo>.json``: ``fingerprint`` (the run's settings,
    :func:`check_settings`), ``seconds`` (>= 0) and, when present, ``result`` (an
    evaluation for a graph of ``n_edges`` edges and ``seq_len`` positions)."""
    s = Schema(file, fix)
    s.obj(doc, "", ("fingerprint", "seconds"))
    check_settings(s, doc["fingerprint"], "fingerprint")
    s.number(doc["seconds"], "seconds", lo=0.0)
    if doc.get("result") is not None:
        check_algorithm_result(s, doc["result"], "result", n_edges, seq_len, algo)
    return doc


def check_marker(doc: Any, file: Any, fix: str) -> dict[str, Any]:
    """Check a folder's marker ``.edgewise``: ``written_by`` (``"edgewise"``), then either
    ``model`` and ``task`` (strings: a results folder) or ``kind`` (a string naming
    another kind of folder, such as MIB submission files), and ``created_by_version`` (a
    string, when present)."""
    s = Schema(file, fix)
    other_kind = isinstance(doc, dict) and "kind" in doc and doc["kind"] != "results"
    s.obj(doc, "", ("written_by", "kind") if other_kind else ("written_by", "model", "task"))
    if doc["written_by"] != "edgewise":
        raise s.fail("written_by", f"is {_got(doc['written_by'])}, not 'edgewise'")
    if other_kind:
        s.text(doc["kind"], "kind")
    else:
        s.text(doc["model"], "model")
        s.text(doc["task"], "task")
    if "created_by_version" in doc:
        s.text(doc["created_by_version"], "created_by_version")
    return doc


def check_mib_provenance(v: Any, file: Any) -> Mapping[str, Any]:
    """The ``"edgewise"`` key of a MIB graph JSON edgewise wrote: an object of
    provenance fields (:func:`check_settings`)."""
    s = Schema(file, "delete the 'edgewise' key to load it unchecked, or write it again "
                     "with edgewise")  # fmt: skip
    return check_settings(s, v, "edgewise")


__all__ = [
    "EDGE_NAME", "FieldError", "Schema", "SETTING_CHECKS", "check_algorithm_result",
    "check_marker", "check_mib_provenance", "check_results_doc", "check_resume_state",
    "check_settings", "join",
]  # fmt: skip
