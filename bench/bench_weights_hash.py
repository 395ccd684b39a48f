"""The cost of :func:`edgewise.io.provenance.weights_sha256` (the weights fingerprint every
saved result records) on a random model of GPT-2 small's shape: the first call (reads
every parameter) and a cached call (parameters unchanged), median of ``--repeats``.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_weights_hash.py [--device cuda] [--kind bridge]
"""

from __future__ import annotations

import argparse
import time

from edgewise.io.provenance import _CACHE_ATTR, _inner, weights_sha256

from common import add_common_args, gpt2_small, machine_line, median, param_mib, setup_torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    args = parser.parse_args()
    device = setup_torch(args)
    model = gpt2_small(device, kind=args.kind)
    print(machine_line(device))
    print(f"model: {type(model).__name__}, {param_mib(model):.0f} MiB of parameters")
    first, cached, digests = [], [], set()
    for _ in range(args.repeats):
        _inner(model).__dict__.pop(_CACHE_ATTR, None)
        t = time.perf_counter()
        digests.add(weights_sha256(model))
        first.append(time.perf_counter() - t)
        t = time.perf_counter()
        weights_sha256(model)
        cached.append(time.perf_counter() - t)
    assert len(digests) == 1, "the fingerprint must not change between calls"
    print(f"weights_sha256: {median(first):.3f} s uncached, {1e3 * median(cached):.3f} ms cached "
          f"(median of {args.repeats})")


if __name__ == "__main__":
    main()
