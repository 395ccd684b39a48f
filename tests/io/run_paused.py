"""Run the ``edgewise`` command line with one function made to wait, so that a test can
act while a command is at a known point (holding its folder's lock, with a temporary
file written):

    python run_paused.py MODULE:NAME MATCH READY GO ARGV...

When ``MODULE.NAME`` is called with arguments whose ``repr`` contains ``MATCH``, the
process writes its pid to the file READY, waits until the file GO exists, then makes the
real call. It exits with the command line's status."""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path


def run() -> int:
    target, match, ready, go = sys.argv[1:5]
    module_name, name = target.split(":")
    module = importlib.import_module(module_name)
    real = getattr(module, name)

    def paused(*args, **kwargs):
        if match in repr((args, kwargs)):
            Path(f"{ready}.part").write_text(str(os.getpid()))
            os.rename(f"{ready}.part", ready)  # complete when it appears
            while not os.path.exists(go):
                time.sleep(0.01)
        return real(*args, **kwargs)

    setattr(module, name, paused)
    from edgewise.cli import main

    return main(sys.argv[5:])


if __name__ == "__main__":
    sys.exit(run())
