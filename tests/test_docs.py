"""The documentation is current: every code block in README.md and docs/ runs or parses,
every ``edgewise.x.y`` name and repository path the documents mention exists, and no
document speaks of work sessions, issue numbers or files a user does not have.

A fenced block's checks are chosen by an HTML comment on the line before it (invisible
when the Markdown is rendered)::

    <!-- docs-check: KIND (why) -->

``python`` blocks without a marker are run, each in a fresh namespace in a temporary
folder, offline; they must be fast. Other kinds:

* ``run``: a ``bash`` block executed line by line in a temporary folder (``edgewise``
  is this checkout's command line); must be fast.
* ``parse``: a ``bash`` block too slow for the suite, or one that writes into the
  repository: each ``edgewise`` command is parsed by the command line's own parser,
  each ``make`` target must exist in the Makefile and each script or test path named
  must exist.
* ``needs-weights``: a block that names a checkpoint or a hub model this machine lacks.
  Python is compiled and every name it imports (and every attribute of an imported
  module it uses) must exist; bash is parsed as above.
* ``slow``: a ``python`` block run only by ``pytest -m slow``; checked like
  ``needs-weights`` in the default suite.
* ``data``: a ``json`` block in edgewise's dataset format, checked by the dataset
  validator.

A ``bash`` block without a marker is an error: say which of these it is.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# names and paths checked (not CHANGELOG.md: history may name what was since removed)
NAMED = [*DOCS, ROOT / "bench" / "README.md"]
MARKER = re.compile(r"<!--\s*docs-check:\s*([a-z-]+)(?:\s*\(.*\))?\s*-->")
KINDS = {"run", "parse", "needs-weights", "slow", "data"}


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    kind: str | None
    code: str

    @property
    def id(self) -> str:
        where = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{where}:{self.line}"


def blocks(paths: list[Path]) -> list[Block]:
    """Every fenced code block of ``paths`` with its language and marker."""
    out = []
    for path in paths:
        lines = path.read_text(encoding="utf-8").split("\n")
        i = 0
        while i < len(lines):
            m = re.match(r"^```(\w*)\s*$", lines[i])
            if not m:
                i += 1
                continue
            start = i
            i += 1
            body = []
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            prev = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
            mk = MARKER.search(prev)
            out.append(Block(path, start + 1, m[1], mk[1] if mk else None, "\n".join(body)))
            i += 1
    return out


ALL = blocks(DOCS)
CODE = [b for b in ALL if b.lang in ("python", "bash", "json")]


def by_kind(lang: str, *kinds: str | None) -> list[Block]:
    return [b for b in CODE if b.lang == lang and b.kind in kinds]


def ids(bs: list[Block]) -> list[str]:
    return [b.id for b in bs]


def test_every_block_has_a_known_marker():
    for b in CODE:
        assert b.kind is None or b.kind in KINDS, f"{b.id}: unknown docs-check kind {b.kind!r}"
        if b.lang == "bash":
            assert b.kind in ("run", "parse", "needs-weights"), (
                f"{b.id}: a bash block needs a marker: <!-- docs-check: run --> (fast), "
                "parse (slow) or needs-weights")
        if b.lang == "json":
            assert b.kind == "data", f"{b.id}: mark a dataset example <!-- docs-check: data -->"
        if b.kind == "data":
            assert b.lang == "json", f"{b.id}: docs-check: data marks a json block"
    assert by_kind("python", None), "no python block is run: the check would check nothing"


# --------------------------------------------------------------------------- python


def offline_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)


def run_python(b: Block) -> dict:
    namespace: dict = {"__name__": "__main__"}
    exec(compile(b.code, b.id, "exec"), namespace)
    return namespace


@pytest.mark.parametrize("b", by_kind("python", None), ids=ids(by_kind("python", None)))
def test_python_block_runs(b, monkeypatch, tmp_path):
    offline_env(monkeypatch, tmp_path)
    run_python(b)


@pytest.mark.slow
@pytest.mark.parametrize("b", by_kind("python", "slow"), ids=ids(by_kind("python", "slow")))
def test_slow_python_block_runs(b, monkeypatch, tmp_path):
    offline_env(monkeypatch, tmp_path)
    run_python(b)


def imported_names(tree: ast.AST) -> list[tuple[str, str | None, str]]:
    """``(module, name or None, bound as)`` of every import in ``tree``."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out.append((a.name, None, a.asname or a.name.split(".")[0]))
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                out.append((node.module, a.name, a.asname or a.name))
    return out


def check_python_names(b: Block) -> None:
    """Every import of the block resolves, and every ``mod.attr`` on an imported edgewise
    module exists. Third-party packages edgewise does not depend on are skipped."""
    tree = ast.parse(b.code, b.id)
    modules = {}
    for module, name, bound in imported_names(tree):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if module.split(".")[0] == "edgewise":
                raise AssertionError(f"{b.id}: imports {module}, which does not exist") from e
            continue
        if name is None:  # import a.b binds a; import a.b as c binds a.b
            top = module.split(".")[0]
            modules[bound] = importlib.import_module(top) if bound == top else mod
            continue
        if not hasattr(mod, name):  # a submodule, e.g. from edgewise import models
            try:
                importlib.import_module(f"{module}.{name}")
            except ModuleNotFoundError:
                raise AssertionError(f"{b.id}: {module} has no {name}") from None
        else:
            obj = getattr(mod, name)
            if type(obj).__name__ == "module":
                modules[bound] = obj
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in modules
                and modules[node.value.id].__name__.split(".")[0] == "edgewise"):
            assert hasattr(modules[node.value.id], node.attr), (
                f"{b.id}: {modules[node.value.id].__name__} has no {node.attr}")


@pytest.mark.parametrize("b", by_kind("python", "needs-weights", "slow"),
                         ids=ids(by_kind("python", "needs-weights", "slow")))
def test_python_block_not_run_compiles_and_names_exist(b):
    check_python_names(b)


# --------------------------------------------------------------------------- bash


def commands(code: str) -> list[list[str]]:
    """Each command of a bash block as words: continuations joined, comments and
    leading ``VAR=value`` assignments dropped."""
    out = []
    for line in code.replace("\\\n", " ").split("\n"):
        words = shlex.split(line, comments=True)
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            words = words[1:]
        if words:
            out.append(words)
    return out


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, flags=re.M))


def check_command(b: Block, words: list[str]) -> None:
    from edgewise.cli import build_parser

    head = words[0]
    where = f"{b.id}: {' '.join(words)}"
    if head == "edgewise":
        try:
            build_parser().parse_args(words[1:])
        except SystemExit as e:
            raise AssertionError(f"{where}: the command line refuses it") from e
    elif head == "make":
        targets = [w for w in words[1:] if "=" not in w and not w.startswith("-")]
        missing = set(targets) - make_targets()
        assert not missing, f"{where}: no make target {sorted(missing)}"
    elif head == "python":
        args = words[1:]
        if args[:2] == ["-m", "pytest"]:
            paths = [a.split("::")[0] for a in args[2:] if not a.startswith("-")]
        else:
            paths = [args[0]]
        for p in paths:
            assert (ROOT / p).exists(), f"{where}: {p} does not exist"
    else:
        raise AssertionError(f"{where}: the docs check does not know {head!r}; use edgewise, "
                             "make or python, or check it another way")


@pytest.mark.parametrize("b", by_kind("bash", "parse", "needs-weights", "run"),
                         ids=ids(by_kind("bash", "parse", "needs-weights", "run")))
def test_bash_block_parses(b):
    cmds = commands(b.code)
    assert cmds, f"{b.id}: an empty block"
    for words in cmds:
        check_command(b, words)


@pytest.mark.parametrize("b", by_kind("bash", "run"), ids=ids(by_kind("bash", "run")))
def test_bash_block_runs(b, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "edgewise"  # this checkout's command line, whatever is installed
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -c "from edgewise.cli import main; '
                    f'main()" "$@"\n')  # fmt: skip
    shim.chmod(0o755)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}"
                   f"{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    for words in commands(b.code):
        proc = subprocess.run(words, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, f"{b.id}: {' '.join(words)}\n{proc.stderr[-2000:]}"


# --------------------------------------------------------------------------- data


@pytest.mark.parametrize("b", [b for b in CODE if b.kind == "data"],
                         ids=ids([b for b in CODE if b.kind == "data"]))
def test_dataset_examples_are_valid(b):
    from edgewise.data.json_format import _validated_prompts

    _validated_prompts(json.loads(b.code), source=b.id)


# --------------------------------------------------------------------------- names


def mentioned_names(path: Path) -> set[str]:
    """``edgewise.x.y`` names in the document's code spans and blocks."""
    text = path.read_text(encoding="utf-8")
    spans = re.findall(r"`([^`\n]+)`", text)
    return {m.rstrip(".") for s in spans for m in re.findall(r"\bedgewise(?:\.\w+)+", s)}


def resolve(name: str) -> None:
    """Import the longest module prefix of ``name`` and get the rest as attributes."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                raise AssertionError(f"{name}: {'.'.join(parts[:i])} has no {attr}")
            obj = getattr(obj, attr)
        return
    raise AssertionError(f"{name}: no such module")


@pytest.mark.parametrize("path", NAMED, ids=[str(p.relative_to(ROOT)) for p in NAMED])
def test_named_modules_and_attributes_exist(path):
    names = mentioned_names(path)
    bad = []
    for name in sorted(names):
        try:
            resolve(name)
        except AssertionError as e:
            bad.append(str(e))
    assert not bad, f"{path.relative_to(ROOT)} names what does not exist: {bad}"


PATH_RE = re.compile(r"`((?:src|tests|scripts|bench|docs|examples|parity)/[\w./-]+)")


@pytest.mark.parametrize("path", NAMED, ids=[str(p.relative_to(ROOT)) for p in NAMED])
def test_named_repository_paths_exist(path):
    text = path.read_text(encoding="utf-8")
    named = {p.rstrip("/.") for p in PATH_RE.findall(text)}
    # a path under a folder this repository lacks (MIB's src/eap/...) is another project's
    ours = {p for p in named if len(p.split("/")) < 3 or (ROOT / "/".join(p.split("/")[:2])).is_dir()}
    missing = sorted(p for p in ours if not (ROOT / p).exists())
    assert not missing, f"{path.relative_to(ROOT)} names paths that do not exist: {missing}"


def test_algorithm_list_in_readme_is_the_registry():
    from edgewise.prune_algos import ALGORITHMS

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"`edgewise discover --algo ([^`]+)`", text)
    assert m, "README.md lists the algorithms as `edgewise discover --algo ...`"
    assert m[1].split() == list(ALGORITHMS)


SPEAKS_OF_WORK = re.compile(r"session [0-9]|issue [0-9]|shared[/]spec|DESIGN[.]md", re.I)
SCANNED = ("README.md", "CHANGELOG.md", "docs", "bench", "tests", "src", "examples", "parity")


def test_no_document_speaks_of_sessions_issues_or_internal_files():
    this = Path(__file__).resolve()
    hits = []
    for top in SCANNED:
        root = ROOT / top
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            if f == this or f.suffix not in (".md", ".py", ".ipynb", ".json", ".txt", ".toml"):
                continue
            for n, line in enumerate(f.read_text(encoding="utf-8", errors="replace")
                                     .split("\n"), 1):  # fmt: skip
                if SPEAKS_OF_WORK.search(line):
                    hits.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()[:80]}")
    assert not hits, "documents should speak of versions, not of work sessions:\n" + "\n".join(hits)


# --------------------------------------------------------------------------- the checks


def test_the_checks_catch_drift(tmp_path):
    """Each check fails on a document that has drifted."""
    with pytest.raises(AssertionError, match="edgewise.visualize has no no_such_plot"):
        resolve("edgewise.visualize.no_such_plot")
    with pytest.raises(AssertionError, match="no such module"):
        resolve("edgewisex.foo")
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- docs-check: parse (slow) -->\n```bash\nmake nothing-here\n"
                   "edgewise discover --no-such-flag\n```\n\n```python\nfrom edgewise import "
                   "no_such_name\n```\n")
    parse, code = blocks([doc])
    assert (parse.kind, parse.lang, parse.line, code.kind) == ("parse", "bash", 3, None)
    make, discover = commands(parse.code)
    with pytest.raises(AssertionError, match=r"no make target \['nothing-here'\]"):
        check_command(parse, make)
    with pytest.raises(AssertionError, match="the command line refuses it"):
        check_command(parse, discover)
    with pytest.raises(AssertionError, match="edgewise has no no_such_name"):
        check_python_names(code)
    assert commands("A=1 B=2 python x.py \\\n  --flag  # note\n# only a comment") == [
        ["python", "x.py", "--flag"]]
