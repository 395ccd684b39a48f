"""Fixtures of the results-folder tests: a finished ``discover`` folder, and fewer
circuit sizes (what these tests check is what happens to files, not the curves)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgewise.cli import main

from folders import RUN, dataset


@pytest.fixture(scope="module")
def few_circuit_sizes():
    """Evaluate circuits of 4 sizes instead of up to 40, keeping these files fast (a
    module asks for it with ``pytestmark = pytest.mark.usefixtures(...)``)."""
    import edgewise.evaluation.circuits

    real = edgewise.evaluation.circuits.edge_counts_util

    def four(n_edges, *args, **kw):
        sizes = real(n_edges, *args, **kw)
        return sorted({sizes[0], sizes[len(sizes) // 3], sizes[2 * len(sizes) // 3], sizes[-1]})

    with pytest.MonkeyPatch.context() as m:
        m.setattr(edgewise.evaluation.circuits, "edge_counts_util", four)
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return dataset(tmp_path_factory.mktemp("data") / "prompts.json")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, few_circuit_sizes, data) -> Path:
    """A folder of a finished ``discover --algo eap`` (copy it before changing it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["discover", "--task", str(data), "--algo", "eap", *RUN, "--out", str(out)]) == 0
    return out


@pytest.fixture
def run(tmp_path, finished) -> Path:
    """A copy of :func:`finished` to change."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out
