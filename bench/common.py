"""Shared pieces of the benchmarks: a random-weight model of GPT-2 small's shape, prompt
batches, timing (median of several runs after a warm-up), peak-memory measurement and
table printing.

Peak memory
-----------
On CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus
what was allocated before the call (the call's own peak).

On the CPU torch's allocations are invisible to ``tracemalloc``, so we read the
process's resident set: ``VmHWM`` (peak RSS) from ``/proc/self/status`` after resetting
it through ``/proc/self/clear_refs`` (Linux), minus the RSS just before the call.
Before the call ``malloc_trim(0)`` hands glibc's free heap memory back to the OS, so
the RSS before is the memory in use and the call's allocations show up as RSS growth
(freed memory that glibc would otherwise keep resident would be reused silently and
hide part of the peak). Where ``clear_refs`` cannot be written, the fallback is the
growth of ``ru_maxrss`` (a lower bound). The peak includes everything the call
allocates: activations kept for backward, patch buffers, gradients, temporaries.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

# GPT-2 small: 12 layers x 12 heads, d_head 64 (d_model 768), d_mlp 3072.
GPT2_SMALL = dict(
    n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257, n_ctx=1024
)
FLAGS = ("use_attn_result", "use_split_qkv_input", "use_attn_in", "use_hook_mlp_in")
"""Every flag a benchmark may switch; ``patchable_model`` sets only those it needs."""
_SETTERS = {f: f"set_{f}" for f in FLAGS}


# ------------------------------------------------------------------ set-up
def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    parser.add_argument("--no-mem", action="store_true", help="skip peak-memory measurements")
    parser.add_argument("--kind", choices=("hooked", "bridge"), default=None,
                        help="model kind: HookedTransformer (TransformerLens 3.x) or "
                             "TransformerBridge (default: hooked where available)")


def setup_torch(args: argparse.Namespace) -> torch.device:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but CUDA is not available")
    return device


def machine_line(device: torch.device) -> str:
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = f"CPU, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores visible"
    return f"torch {torch.__version__} | {what}"


def gpt2_small(device: torch.device | str = "cpu", seed: int = 0, act_fn: str = "gelu_new",
               kind: str | None = None) -> Any:
    """A model of GPT-2 small's shape with random (seeded) weights: a ``HookedTransformer``,
    or with ``kind="bridge"`` a ``TransformerBridge`` over a Hugging Face GPT-2. Nothing is
    downloaded."""
    import warnings

    from edgewise.models import random_bridge, resolve_kind

    if resolve_kind(kind) == "bridge":  # type: ignore[arg-type]
        return random_bridge("gpt2", n_layers=12, n_heads=12, d_head=64, d_vocab=50257,
                             n_ctx=1024, seed=seed).to(device)
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        **GPT2_SMALL,
        act_fn=act_fn,
        normalization_type="LN",
        positional_embedding_type="standard",
        seed=seed,
        device=str(device),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg)
    model.eval()
    return model


def prompt_loader(batch: int, seq: int, seed: int = 0, vocab: int = 50257) -> Any:
    """A ``PromptDataLoader`` of one batch of ``batch`` prompts x ``seq`` tokens: random
    clean prompts, corrupt prompts that differ at the last two positions, one answer and
    one wrong answer each."""
    from edgewise import PromptDataLoader, PromptDataset

    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(3, vocab, (batch, seq), generator=gen)
    corrupt = clean.clone()
    corrupt[:, -2:] = torch.randint(3, vocab, (batch, 2), generator=gen)
    answers = torch.randint(0, vocab, (batch, 1), generator=gen)
    wrong = torch.randint(0, vocab, (batch, 1), generator=gen)
    ds = PromptDataset(clean, corrupt, answers, wrong)
    return PromptDataLoader(ds, seq_len=None, diverge_idx=0, batch_size=batch)


def to_device(batch: Any, device: torch.device) -> Any:
    """The batch with its token and answer tensors on ``device``."""
    import dataclasses

    def move(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return x.to(device)
        if isinstance(x, list):
            return [move(t) for t in x]
        return x

    return dataclasses.replace(
        batch,
        clean=move(batch.clean),
        corrupt=move(batch.corrupt),
        answers=move(batch.answers),
        wrong_answers=move(batch.wrong_answers),
    )


def device_loader(loader: Any, device: torch.device) -> list[Any]:
    """The loader's batches moved to ``device`` (a list works wherever edgewise iterates
    a dataloader and calls ``len``)."""
    return [to_device(b, device) for b in loader]


@contextmanager
def hook_flags(model: Any, on: bool | Sequence[str]):
    """Within the block the TransformerLens hook flags that edge patching needs are all
    off (``on=False``: the plain model), as ``patchable_model`` left them (``on=True``),
    or exactly the flags named in ``on`` (a list)."""
    saved = {f: bool(getattr(model.cfg, f, False)) for f in FLAGS}
    try:
        if on is not True:
            want = set() if on is False else set(on)
            for f in FLAGS:
                if saved[f] and f not in want:
                    getattr(model, _SETTERS[f])(False)
            for f in FLAGS:
                if f in want and not getattr(model.cfg, f, False):
                    getattr(model, _SETTERS[f])(True)
        yield
    finally:
        for f in FLAGS:  # switch off first: use_attn_in and use_split_qkv_input exclude each other
            if bool(getattr(model.cfg, f, False)) and not saved[f]:
                getattr(model, _SETTERS[f])(False)
        for f in FLAGS:
            if saved[f] and not getattr(model.cfg, f, False):
                getattr(model, _SETTERS[f])(True)


# ------------------------------------------------------------------ timing and memory
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(times: Sequence[float]) -> float:
    return statistics.median(times)


def _busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (from /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    busy = sum(v[:8]) - v[3] - v[4]  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class CpuMonitor:
    """How much CPU other processes used while timings ran (they compete for the cores
    and inflate the times): ``others`` is their share of all cores, 0..1."""

    def __enter__(self) -> CpuMonitor:
        self.t0, self.busy0, self.own0 = time.perf_counter(), _busy_seconds(), _own_seconds()
        return self

    def __exit__(self, *exc: Any) -> None:
        wall = time.perf_counter() - self.t0
        busy1 = _busy_seconds()
        if self.busy0 is None or busy1 is None or wall <= 0:
            self.others = float("nan")
            return
        others = (busy1 - self.busy0) - (_own_seconds() - self.own0)
        self.others = max(others, 0.0) / (wall * (os.cpu_count() or 1))

    def line(self) -> str:
        warn = "  WARNING: timings inflated by other processes" if self.others > 0.1 else ""
        return f"other processes used {100 * self.others:.0f}% of the CPU during the timings{warn}"


@dataclass
class Task:
    """A measured call: ``repeats`` timed calls after ``warmup`` untimed ones."""

    name: str
    fn: Callable[[], Any]
    repeats: int = 5
    warmup: int = 1
    times: list[float] = field(default_factory=list)
    mem: dict[str, Any] | None = None


def run_tasks(tasks: Sequence[Task], device: torch.device, measure_memory: bool = True) -> None:
    """Time ``tasks`` interleaved (round robin, so a burst of load from other processes
    hits them alike) and measure each one's peak memory on its first call (a warm-up
    call where there is one, otherwise the first timed call)."""
    for t in tasks:
        for i in range(t.warmup):
            if i == 0 and measure_memory:
                t.mem = peak_memory(t.fn, device)
            else:
                t.fn()
    for r in range(max(t.repeats for t in tasks)):
        for t in tasks:
            if r >= t.repeats:
                continue
            if measure_memory and t.mem is None:
                t0 = time.perf_counter()
                t.mem = peak_memory(t.fn, device)
                t.times.append(time.perf_counter() - t0)
                continue
            gc.collect()
            sync(device)
            t0 = time.perf_counter()
            t.fn()
            sync(device)
            t.times.append(time.perf_counter() - t0)


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def _hwm_kib() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    """Give glibc's free heap memory back to the OS, so the RSS is what is in use."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory(fn: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """Peak memory of one call of ``fn`` in MiB above what was in use just before it:
    ``peak_mib`` (the call's own peak) and ``base_mib`` (in use before)."""
    gc.collect()
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"peak_mib": (peak - base) / 2**20, "base_mib": base / 2**20,
                "how": "torch.cuda.max_memory_allocated"}
    _malloc_trim()
    base = _rss_kib()
    if _reset_hwm():
        fn()
        hwm = _hwm_kib() or 0
        return {"peak_mib": (hwm - base) / 1024, "base_mib": base / 1024,
                "how": "VmHWM - RSS before (malloc_trim'ed)"}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mib": max(after - max(before, base), 0) / 1024, "base_mib": base / 1024,
            "how": "ru_maxrss growth (lower bound)"}


def param_mib(model: Any) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20


def mem_str(task: Task) -> str:
    return "-" if task.mem is None else f"{task.mem['peak_mib']:.0f}"


# ------------------------------------------------------------------ output
def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> None:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
        return str(v)

    cells = [[fmt(v) for v in r] for r in rows]
    numeric = [all(isinstance(r[i], int | float) or r[i] == "-" or _is_number(r[i]) for r in rows)
               for i in range(len(headers))]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    if title:
        print(f"\n{title}")
    line = "  ".join(h.rjust(w) if numeric[i] else h.ljust(w)
                     for i, (h, w) in enumerate(zip(headers, widths)))
    print(line)
    print("-" * len(line))
    for r in cells:
        print("  ".join(c.rjust(w) if numeric[i] else c.ljust(w)
                        for i, (c, w) in enumerate(zip(r, widths))))
    sys.stdout.flush()


def _is_number(v: object) -> bool:
    try:
        float(str(v))
        return True
    except ValueError:
        return False
