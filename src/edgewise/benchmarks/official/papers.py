"""Circuits of real models from published papers, as data.

Each circuit is a list of ``(edge name, token position)`` pairs (position ``None``: the
paper gives none) in edgewise's factorized graph with separate Q/K/V inputs, built from
the paper's head classes and the connections between them:

* **IOI**, GPT-2 small: Wang et al. 2022, "Interpretability in the Wild". Head classes
  and their connections as in the paper's Figure 2 (and the ACDC paper's ground truth),
  with token positions of the 15-token single-template prompts
  (``BOS When Mary and John went to the store, John gave a drink to``): ``IO`` = 2,
  ``S1`` = 4, ``S1+1`` = 5, ``S2`` = 10, ``END`` = 14. Activations may flow through
  the MLPs between two connected classes, so every MLP from the sender's first layer to
  the receiver's last layer is in, at the receiver's positions.
* **Greater-than**, GPT-2 small: Hanna et al. 2023, "How does GPT-2 compute greater-than?".
  Head and MLP groups and the connected pairs of groups (as in the ACDC paper's ground
  truth); the paper gives no token positions.
* **Docstring**, the 4-layer attention-only model ``attn-only-4l``: Heimersheim &
  Janiak 2023, "A circuit for Python docstrings in a 4-layer attention-only
  transformer" (the manual edge graph, with token positions of the 41-token prompts).

These functions only look edges up by name, so they work on any model of the right shape;
the tests check them against random-weight models of the same shapes. Loading the real
models needs their weights, which edgewise never downloads.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from edgewise.benchmarks.official import edges_by_name
from edgewise.patching.model import PatchableModel
from edgewise.types import Edge

__all__ = [
    "DOCSTRING_OFFICIAL_EDGES",
    "DOCSTRING_SEQ_LEN",
    "GREATERTHAN_GROUPS",
    "IOI_HEAD_CLASSES",
    "IOI_POSITIONS",
    "IOI_SEQ_LEN",
    "docstring_official_edges",
    "greaterthan_official_edges",
    "ioi_official_edges",
    "official_edge_names",
]

Head = tuple[int, int]
NamedEdge = tuple[str, int | None]

# ---------------------------------------------------------------------------- IOI
IOI_SEQ_LEN = 15
IOI_POSITIONS = {"IO": 2, "S1": 4, "S1+1": 5, "S2": 10, "END": 14}

IOI_HEAD_CLASSES: dict[str, tuple[Head, ...]] = {
    "name mover": ((9, 9), (10, 0), (9, 6)),
    "backup name mover": ((10, 10), (10, 6), (10, 2), (10, 1), (11, 2), (9, 7), (9, 0), (11, 9)),
    "negative name mover": ((10, 7), (11, 10)),
    "s-inhibition": ((7, 3), (7, 9), (8, 6), (8, 10)),
    "induction": ((5, 5), (5, 8), (5, 9), (6, 9)),
    "duplicate token": ((0, 1), (0, 10), (3, 0)),
    "previous token": ((2, 2), (4, 11)),
}
"""Wang et al. 2022, GPT-2 small: (layer, head) of each class."""

_MOVERS = ("name mover", "backup name mover", "negative name mover")

# (sender class or "input", receiver class or "output", receiver inputs at positions)
_IOI_CONNECTIONS: tuple[tuple[str, str, tuple[tuple[str | None, str], ...]], ...] = (
    ("input", "previous token", (("q", "S1+1"), ("k", "S1"), ("v", "S1"))),
    ("input", "duplicate token", (("q", "S2"), ("k", "S1"), ("v", "S1"))),
    ("input", "s-inhibition", (("q", "END"),)),
    *(("input", c, (("k", "IO"), ("v", "IO"))) for c in _MOVERS),
    ("previous token", "induction", (("k", "S1+1"), ("v", "S1+1"))),
    ("induction", "s-inhibition", (("k", "S2"), ("v", "S2"))),
    ("duplicate token", "s-inhibition", (("k", "S2"), ("v", "S2"))),
    *(("s-inhibition", c, (("q", "END"),)) for c in _MOVERS),
    *((c, "output", ((None, "END"),)) for c in _MOVERS),
)


def _ioi_edge_names() -> list[NamedEdge]:
    out: list[NamedEdge] = []
    for sender, receiver, inputs in _IOI_CONNECTIONS:
        # nodes as (layer, head or None for an MLP); the input at layer -1, the output at 12
        srcs = [(-1, None)] if sender == "input" else list(IOI_HEAD_CLASSES[sender])
        dests = [(12, None)] if receiver == "output" else list(IOI_HEAD_CLASSES[receiver])
        at = [(x, IOI_POSITIONS[pos]) for x, pos in inputs]  # (Q/K/V or None, position)
        positions = sorted({p for _, p in at})
        # through the MLPs between sender and receiver, at the receiver's positions
        mlps = [(m, None) for m in range(max(0, min(s[0] for s in srcs)), max(d[0] for d in dests))]
        pairs = [(a, b, at) for a in srcs for b in dests]
        pairs += [(a, m, [(None, p) for p in positions]) for a in srcs for m in mlps]
        pairs += [(m, b, at) for m in mlps for b in dests]
        pairs += [(m, n, [(None, p) for p in positions]) for m in mlps for n in mlps]
        for a, b, ins in pairs:
            if a[0] == -1 or b[0] == 12 or _before(a, b):
                src = "Resid Start" if a[0] == -1 else _src(a)
                for x, p in ins:
                    dest = "Resid End" if b[0] == 12 else _src(b) + (f".{x.upper()}" if x else "")
                    out.append((f"{src}->{dest}", p))
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------------------- greater-than
GREATERTHAN_GROUPS: dict[str, tuple[tuple[int, int | None], ...]] = {
    "attn 0.1": ((0, 1),),
    "attn 0.3, 0.5": ((0, 3), (0, 5)),
    "early mlps": ((0, None), (1, None), (2, None), (3, None)),
    "mid attns": ((5, 5), (6, 1), (6, 9), (7, 10), (8, 11), (9, 1)),
    "late mlps": ((8, None), (9, None), (10, None), (11, None)),
}
"""Hanna et al. 2023, GPT-2 small: (layer, head), or (layer, None) for an MLP."""

_GT_PAIRS = (
    ("attn 0.1", "early mlps"),
    ("attn 0.1", "mid attns"),
    ("attn 0.3, 0.5", "mid attns"),
    ("early mlps", "mid attns"),
    ("mid attns", "late mlps"),
)


def _src(node: tuple[int, int | None]) -> str:
    lyr, h = node
    return f"MLP {lyr}" if h is None else f"A{lyr}.{h}"


def _dests(node: tuple[int, int | None]) -> list[str]:
    lyr, h = node
    return [f"MLP {lyr}"] if h is None else [f"A{lyr}.{h}.{x}" for x in "QKV"]


def _before(a: tuple[int, int | None], b: tuple[int, int | None]) -> bool:
    """Whether ``a``'s output can reach ``b``'s input (attention comes before the MLP
    of its own layer)."""
    return a[0] < b[0] or (a[0] == b[0] and a[1] is not None and b[1] is None)


def _greaterthan_edge_names() -> list[NamedEdge]:
    g = GREATERTHAN_GROUPS
    out = [f"Resid Start->{d}" for grp in ("attn 0.3, 0.5", "attn 0.1", "early mlps")
           for n in g[grp] for d in _dests(n)]
    out += [f"{_src(n)}->Resid End" for grp in ("mid attns", "late mlps") for n in g[grp]]
    for grp in ("early mlps", "late mlps"):  # each MLP group is fully connected
        out += [f"{_src(a)}->{_src(b)}" for a in g[grp] for b in g[grp] if _before(a, b)]
    for sender, receiver in _GT_PAIRS:
        out += [f"{_src(a)}->{d}" for a in g[sender] for b in g[receiver] if _before(a, b)
                for d in _dests(b)]
    # the mid heads' queries read the year through every earlier MLP
    last_mid = max(lyr for lyr, _ in g["mid attns"])
    out += [f"MLP {a}->MLP {b}" for a in range(last_mid) for b in range(a + 1, last_mid)]
    out += [f"MLP {m}->A{lyr}.{h}.Q" for lyr, h in g["mid attns"] for m in range(lyr)]
    return [(name, None) for name in dict.fromkeys(out)]


# ---------------------------------------------------------------------------- docstring
DOCSTRING_SEQ_LEN = 41

_DOCSTRING: dict[str, tuple[int, ...]] = {
    "Resid Start->A0.5.V": (13, 15, 34),
    "A0.5->A1.4.V": (13,),
    "Resid Start->A1.4.V": (13, 34),
    "Resid Start->A1.2.Q": (27, 34),
    "A0.5->A1.2.Q": (34,),
    "Resid Start->A1.2.K": (11, 13, 27, 34),
    "A0.5->A1.2.K": (13, 34),
    "Resid Start->A2.0.Q": (15,),
    "A0.5->A2.0.Q": (15,),
    "A0.5->A2.0.K": (13,),
    "A1.4->A2.0.V": (14,),
    **{k: v for h in (0, 6) for k, v in {
        f"A1.4->A3.{h}.Q": (40,),
        f"A2.0->A3.{h}.K": (15,),
        f"A1.2->A3.{h}.K": (34,),
        f"Resid Start->A3.{h}.V": (15,),
        f"A0.5->A3.{h}.V": (15,),
        f"A3.{h}->Resid End": (40,),
    }.items()},
}
DOCSTRING_OFFICIAL_EDGES: tuple[NamedEdge, ...] = tuple(
    (name, p) for name, ps in _DOCSTRING.items() for p in ps
)
"""Heimersheim & Janiak 2023, attn-only-4l: the manual graph with token positions."""


# ---------------------------------------------------------------------------- lookup
def official_edge_names(task: str) -> list[NamedEdge]:
    """``(edge name, position)`` pairs of ``task``'s circuit: ``"ioi"``,
    ``"greaterthan"`` or ``"docstring"``."""
    if task == "ioi":
        return _ioi_edge_names()
    if task == "greaterthan":
        return _greaterthan_edge_names()
    if task == "docstring":
        return list(DOCSTRING_OFFICIAL_EDGES)
    raise ValueError(f"unknown task {task!r}: use 'ioi', 'greaterthan' or 'docstring'")


def _lookup(
    model: PatchableModel,
    task: str,
    shape: tuple[int, int, bool],
    seq_len: int | None,
    named: Iterable[NamedEdge],
) -> set[Edge]:
    cfg = model.cfg
    got = (int(cfg.n_layers), int(cfg.n_heads), bool(getattr(cfg, "attn_only", False)))
    if got != shape:
        raise ValueError(
            f"the {task} circuit is for a model with {shape[0]} layers, {shape[1]} heads"
            f"{', attention only' if shape[2] else ' and MLPs'}; got {got[0]} layers, "
            f"{got[1]} heads, attn_only={got[2]}"
        )
    if not model.factorized or not model.separate_qkv:
        raise ValueError(f"the {task} circuit needs a factorized graph with separate Q/K/V "
                         "inputs (patchable_model's defaults)")
    if model.seq_len is not None and model.seq_len != seq_len:
        fix = (f"patchable_model(model, seq_len={seq_len}) or seq_len=None" if seq_len
               else "patchable_model(model) without seq_len: the paper gives no positions")
        raise ValueError(f"the {task} circuit's positions assume {seq_len}-token prompts, but "
                         f"the graph has seq_len={model.seq_len}: use {fix}")
    names: Sequence[NamedEdge] = list(named)
    if model.seq_len is None:  # position-free: every edge named at some position
        names = [(n, None) for n in dict.fromkeys(n for n, _ in names)]
    return edges_by_name(model, names, task)


def ioi_official_edges(model: PatchableModel) -> set[Edge]:
    """The IOI circuit (Wang et al. 2022) in a GPT-2-small-shaped model's graph; with
    token positions when the graph has ``seq_len=15``, position-free when it has none."""
    return _lookup(model, "ioi", (12, 12, False), IOI_SEQ_LEN, _ioi_edge_names())


def greaterthan_official_edges(model: PatchableModel) -> set[Edge]:
    """The greater-than circuit (Hanna et al. 2023) in a GPT-2-small-shaped model's graph
    (no token positions)."""
    return _lookup(model, "greaterthan", (12, 12, False), None, _greaterthan_edge_names())


def docstring_official_edges(model: PatchableModel) -> set[Edge]:
    """The docstring circuit (Heimersheim & Janiak 2023) in an attn-only-4l-shaped graph
    (4 layers, 8 heads, attention only); with token positions when ``seq_len=41``."""
    return _lookup(model, "docstring", (4, 8, True), DOCSTRING_SEQ_LEN, DOCSTRING_OFFICIAL_EDGES)
