import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

# `make test` runs the two environments' suites side by side with one thread each.
torch.set_num_threads(int(os.environ.get("EDGEWISE_TEST_THREADS", "2")))
# Same examples on every run, so a red CI is reproducible.
settings.register_profile("edgewise", derandomize=True, deadline=None, print_blob=True,
                          database=None)
settings.load_profile("edgewise")
