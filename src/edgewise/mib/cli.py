"""``edgewise mib ...``: each subcommand lives next to the code it runs and registers
itself here with ``add_parser(sub)``; ``args.mib_run(args)`` runs it."""

from __future__ import annotations

import argparse
from collections.abc import Callable

# (module, function) pairs: function(sub) adds one subparser and sets mib_run=...
_SUBCOMMANDS: list[tuple[str, str]] = [
    ("edgewise.mib.evaluate", "add_parser"),
    ("edgewise.mib.submission", "add_parser"),
    ("edgewise.mib.models", "add_parser"),
    ("edgewise.mib.demo", "add_parser"),
]


def add_mib_parser(sub: argparse._SubParsersAction,
                   help: str = "the MIB circuit track: data, evaluation, submissions") -> None:  # fmt: skip
    """Add ``mib`` and its subcommands to the top-level parser's subparsers."""
    import importlib

    mib = sub.add_parser("mib", help=help, description="The MIB circuit track: evaluate a "
                         "scores file as MIB does, export and validate\nsubmissions, size EAP's "
                         "memory, run the whole loop on the toy model.")  # fmt: skip
    mib_sub = mib.add_subparsers(dest="mib_command", required=True, metavar="COMMAND",
                                 title="commands")  # fmt: skip
    for module, function in _SUBCOMMANDS:
        add: Callable[[argparse._SubParsersAction], None] = getattr(
            importlib.import_module(module), function)
        add(mib_sub)


def run_mib(args: argparse.Namespace) -> object:
    """Run the chosen ``mib`` subcommand."""
    return args.mib_run(args)
