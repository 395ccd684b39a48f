"""What the tests of results folders share: a small dataset file, the commands called
directly or through the command line, and a picture of a folder's files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgewise.cli import build_parser, demo, discover, evaluate, main, report

ROOT = Path(__file__).resolve().parents[2]
RUN = ["--model", "toy-ioi", "--batch-size", "4", "--quiet"]


def dataset(path: Path, reverse: bool = False) -> Path:
    """8 prompts of the shipped toy IOI dataset (reversed: other prompts, same format)."""
    doc = json.loads((ROOT / "src/edgewise/datasets/toy_ioi.json").read_text())
    doc["prompts"] = doc["prompts"][:8][::-1] if reverse else doc["prompts"][:8]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def api(argv: list[str]):
    """The command's function called directly, so errors arrive as exceptions."""
    args = build_parser().parse_args(argv)
    if args.command == "mib":
        return args.mib_run(args)
    return {"discover": discover, "evaluate": evaluate, "report": report,
            "demo": demo}[args.command](args)  # fmt: skip


def cli_error(argv: list[str], capsys: pytest.CaptureFixture[str], rc: int = 2) -> str:
    """Run the command line; assert it failed with ``rc`` and one clear line; return it."""
    capsys.readouterr()
    assert main(argv) == rc
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("edgewise: error: "), err
    assert err.rstrip().endswith(errors[0])  # the last word (progress bars may come before)
    return errors[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}
