import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

# `make test` runs the two environments' suites side by side with one thread each.
THREADS = int(os.environ.get("EDGEWISE_TEST_THREADS", "2"))
torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def _suite_thread_count():
    """Every test ends on the suite's thread count, whatever it set: one left on two
    threads would slow every later test of a suite sharing the cores with another."""
    yield
    if torch.get_num_threads() != THREADS:
        torch.set_num_threads(THREADS)
# Same examples on every run, so a red CI is reproducible.
settings.register_profile("edgewise", derandomize=True, deadline=None, print_blob=True,
                          database=None)
settings.load_profile("edgewise")
