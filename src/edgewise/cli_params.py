"""The scoring choices of ``edgewise discover``: ``--param ALGO.NAME=VALUE``, the
ablation, the loss and the token positions, turned into each algorithm's call.

One syntax for every algorithm's own parameters::

    --param ig.steps=10 --param acdc.tau_exps=-5,-3 --param atp-star.grad_drop=true

A value is read by the annotation of the scoring function's parameter (``int``,
``float``, ``bool``: true/false, a string choice, a comma-separated list, ``none`` where
the parameter may be ``None``), so a bad name or value is refused before any model is
loaded. :func:`effective_parameters` gives everything a run computes with: the
function's defaults, the registry's, the task's settings and the user's choices.
"""

from __future__ import annotations

import difflib
import enum
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import Any

#: Short names accepted for a parameter (``ig.steps=10``), each algorithm's own name too.
ALIASES: dict[str, str] = {
    "steps": "integrated_grad_samples",
    "samples": "integrated_grad_samples",
    "tau_exps": "tao_exps",
    "tau_bases": "tao_bases",
    "lr": "learning_rate",
}

#: Parameters set by an option of their own, not by ``--param``.
OWN_OPTION: dict[str, str] = {
    "grad_function": "--grad-function",
    "answer_function": "--answer-function",
    "ablation_type": "--ablation",
    "ablation_values": "--ablation optimal",
    "scale": "--scale",
    "endpoint": "--ig-endpoint",
}

#: How a run computes, not what: never recorded, never a settings mismatch.
NOT_PARAMETERS = ("progress", "checkpoint", "max_memory", "checkpoint_seconds")

#: Parameters a task decides (documented as task settings, not algorithm defaults).
TASK_SETTINGS = ("grad_function", "answer_function", "faithfulness_target")

#: The ``--ablation`` choices: patching (the corrupt prompt's activations), every
#: :class:`edgewise.types.AblationType` by its value, and MIB's optimal ablation.
_ABLATION_ALIASES = {"patching": "resample", "interchange": "resample"}


def ablation_choices() -> list[str]:
    """The names ``--ablation`` takes, the default first."""
    from edgewise.types import AblationType

    return ["patching", *[a.value for a in AblationType if a != AblationType.RESAMPLE], "optimal"]


def ablation_arg(text: str) -> str:
    """``--ablation``'s type: a choice of :func:`ablation_choices` (any case, ``-`` for
    ``_``), as its canonical name (``"patching"`` for resample)."""
    import argparse

    from edgewise.types import AblationType

    key = text.strip().lower().replace("-", "_")
    if key == "optimal":
        return key
    key = _ABLATION_ALIASES.get(key, key)
    try:
        value = AblationType(key).value
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"unknown ablation {text!r}{_did_you_mean(key, ablation_choices())}; choose one of "
            f"{', '.join(ablation_choices())}") from None
    return "patching" if value == "resample" else value


def _did_you_mean(name: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ------------------------------------------------------------------ signatures
# scoring functions that pass **kwargs on to another: the parameters it reaches
_FORWARDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "learned_mask_sizes_prune_scores": ("learned_mask_prune_scores", ("circuit_size",)),
}


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """The resolved annotations of ``fn`` (one that cannot be resolved is left out)."""
    target = inspect.unwrap(fn)
    try:
        return typing.get_type_hints(target)
    except Exception:  # an annotation only importable under TYPE_CHECKING: one by one
        out = {}
        for name, ann in getattr(target, "__annotations__", {}).items():
            try:
                out[name] = eval(ann, target.__globals__) if isinstance(ann, str) else ann  # noqa: S307
            except Exception:
                continue
        return out


def _parser(ann: Any) -> Callable[[str], Any] | None:
    """A function reading a command-line string as ``ann`` (``None``: not expressible)."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        parsers = [p for a in members if (p := _parser(a)) is not None]
        if not parsers:
            return None
        nullable = len(members) < len(args)

        def union(text: str) -> Any:
            if nullable and text.strip().lower() in ("none", "null"):
                return None
            errors = []
            for p in parsers:
                try:
                    return p(text)
                except ValueError as e:
                    errors.append(str(e))
            raise ValueError(" or ".join(errors) + (" or none" if nullable else ""))

        return union
    if origin is typing.Literal:
        choices = list(args)

        def literal(text: str) -> Any:
            for c in choices:
                if str(c) == text.strip():
                    return c
            raise ValueError(f"one of {', '.join(map(str, choices))}")

        return literal
    if origin in (list, tuple, Sequence, Iterable, set, frozenset) or (
            origin is not None and isinstance(origin, type)
            and issubclass(origin, Iterable) and origin not in (str, dict)):  # fmt: skip
        if origin is dict or (origin is tuple and len(args) == 2 and args[1] is not Ellipsis):
            return None
        item = _parser(args[0]) if args else None
        if item is None:
            return None

        def sequence(text: str) -> list[Any]:
            parts = [p for p in text.split(",") if p.strip()]
            try:
                return [item(p) for p in parts]
            except ValueError as e:
                raise ValueError(f"a comma-separated list, each {e}") from None

        return sequence
    if ann is bool:
        def boolean(text: str) -> bool:
            t = text.strip().lower()
            if t in ("true", "1", "yes", "on"):
                return True
            if t in ("false", "0", "no", "off"):
                return False
            raise ValueError("true or false")

        return boolean
    if ann is int:
        def integer(text: str) -> int:
            try:
                return int(text.strip())
            except ValueError:
                raise ValueError("an integer") from None

        return integer
    if ann is float:
        def number(text: str) -> float:
            try:
                return float(text.strip())
            except ValueError:
                raise ValueError("a number") from None

        return number
    if ann is str:
        return lambda text: text
    if isinstance(ann, type) and issubclass(ann, enum.Enum):
        def member(text: str) -> Any:
            try:
                return ann(text.strip()).value
            except ValueError:
                raise ValueError(f"one of {', '.join(str(m.value) for m in ann)}") from None

        return member
    return None


def jsonable(value: Any) -> Any:
    """``value`` as it is recorded in ``results.json``: enums by value, tuples as lists."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple | set | frozenset):
        items = [jsonable(v) for v in value]
        return sorted(items, key=str) if isinstance(value, set | frozenset) else items
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


class Param(typing.NamedTuple):
    """One parameter of a scoring function the command line can set."""

    name: str
    default: Any  # the function's own default (``inspect.Parameter.empty``: none)
    read: Callable[[str], Any]


def function_parameters(fn: Callable[..., Any]) -> dict[str, Param]:
    """The parameters of a scoring function ``fn(model, dataloader, official_edges,
    ...)`` that a command-line string can express, in signature order, with their
    defaults (a function passing ``**kwargs`` on includes the one it calls)."""
    sig = inspect.signature(fn)
    hints = _hints(fn)
    out: dict[str, Param] = {}
    for i, (name, p) in enumerate(sig.parameters.items()):
        if i < 3 or name in NOT_PARAMETERS:
            continue
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            target = _FORWARDS.get(getattr(inspect.unwrap(fn), "__name__", ""))
            if target is not None:
                import edgewise.prune_algos as algos

                for k, v in function_parameters(getattr(algos, target[0])).items():
                    if k not in target[1] and k not in out:
                        out[k] = v
            continue
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        read = _parser(hints.get(name, p.annotation if not isinstance(p.annotation, str)
                                 else None))  # fmt: skip
        if read is not None:
            out[name] = Param(name, p.default, read)
    return out


def algorithm_parameters(algo: str) -> dict[str, Param]:
    """:func:`function_parameters` of a registered algorithm, with the registry's
    defaults in place of the function's where it has them."""
    from edgewise.prune_algos import ALGORITHMS

    a = ALGORITHMS[algo]
    params = function_parameters(a.function)
    return {n: p._replace(default=a.defaults.get(n, p.default)) for n, p in params.items()}


def settable(algo: str) -> list[str]:
    """The names ``--param ALGO.NAME=...`` takes for ``algo``."""
    return [n for n in algorithm_parameters(algo) if n not in OWN_OPTION]


# ------------------------------------------------------------------ --param
def parse_params(texts: Sequence[str] | None, algos: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--param ALGO.NAME=VALUE`` options as ``{algo: {name: value}}``, checked
    against the functions' signatures. Raises ``ValueError`` naming the option, what is
    wrong and the valid choices."""
    out: dict[str, dict[str, Any]] = {a: {} for a in algos}
    for text in texts or []:
        head, eq, raw = text.partition("=")
        algo, dot, name = head.strip().rpartition(".")
        if not eq or not dot or not algo or not name:
            raise ValueError(f"--param {text!r}: write ALGO.NAME=VALUE, e.g. --param ig.steps=10 "
                             "or --param acdc.tau_exps=-5,-3")  # fmt: skip
        if algo not in algos:
            raise ValueError(f"--param {text}: {algo!r} is not among --algo "
                             f"{' '.join(algos)}{_did_you_mean(algo, algos)}; add it to --algo "
                             "or drop the --param")  # fmt: skip
        name = name.strip().replace("-", "_")
        name = ALIASES.get(name, name) if ALIASES.get(name) in algorithm_parameters(algo) else name
        params = algorithm_parameters(algo)
        if name in OWN_OPTION and name in params:
            raise ValueError(f"--param {text}: {name} has its own option: use {OWN_OPTION[name]}")
        valid = settable(algo)
        if name not in valid:
            names = valid + [a for a, n in ALIASES.items() if n in valid]
            raise ValueError(
                f"--param {text}: {algo} has no parameter {name!r}"
                f"{_did_you_mean(name, names)}; its parameters: "
                f"{', '.join(valid) if valid else 'none'}")
        try:
            value = params[name].read(raw)
        except ValueError as e:
            raise ValueError(f"--param {text}: {algo}.{name} must be {e}") from None
        if name in out[algo] and out[algo][name] != value:
            raise ValueError(f"--param {algo}.{name} is given twice, with different values: "
                             "keep one")  # fmt: skip
        out[algo][name] = value
    return out


# ------------------------------------------------------------------ what a run computes with
def call_parameters(
    algo: str, task: Any, *, quiet: bool = False, max_memory: str | None = None,
    scale: str | None = None, ig_endpoint: str | None = None,
    grad_function: str | None = None, answer_function: str | None = None,
    ablation: str = "patching", params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The keyword arguments ``edgewise discover`` passes to ``ALGORITHMS[algo]`` (on top
    of the registry's defaults): the task's loss and faithfulness target, the options
    given, and the user's ``--param`` values. Nothing that differs from the function's
    documented default unless the user or the task asked for it."""
    from edgewise.prune_algos import ALGORITHMS

    a = ALGORITHMS[algo]
    known = algorithm_parameters(algo)
    call: dict[str, Any] = {"progress": not quiet} if a.progress else {}
    if max_memory is not None and a.max_memory:
        call["max_memory"] = max_memory
    if scale is not None and a.takes_scale:
        call["scale"] = scale
    if ig_endpoint is not None and "endpoint" in known:
        call["endpoint"] = ig_endpoint
    if a.loss:
        call["grad_function"] = grad_function or task.grad_function
        call["answer_function"] = answer_function or task.answer_function
    if a.faithfulness:
        call["faithfulness_target"] = "mse" if task.metric == "mse" else "kl_div"
    if ablation not in ("patching", "optimal"):
        call["ablation_type"] = ablation
    call.update(params or {})
    return call


def effective_parameters(algo: str, call: dict[str, Any]) -> dict[str, Any]:
    """Every parameter a call with ``call`` computes with, as recorded in
    ``results.json``: the function's defaults, the registry's, then ``call``'s (JSON
    values; how it runs — progress, checkpoints, memory — left out)."""
    from edgewise.prune_algos import ALGORITHMS

    out = {n: p.default for n, p in algorithm_parameters(algo).items()
           if p.default is not inspect.Parameter.empty}  # fmt: skip
    out.update(ALGORITHMS[algo].defaults)
    out.update(call)
    return {k: jsonable(v) for k, v in out.items() if k not in NOT_PARAMETERS}


def takes_ablation(algo: str, ablation: str) -> bool:
    """Whether ``algo`` can score with ``--ablation ablation``."""
    from edgewise.prune_algos import ALGORITHMS

    if ablation == "patching":
        return True
    names = inspect.signature(ALGORITHMS[algo].function).parameters
    if ablation == "optimal":
        return "ablation_values" in names
    return "ablation_type" in names


def check_ablation_choice(ablation: str, algos: Sequence[str]) -> None:
    """Raise ``ValueError`` (before anything loads) unless every algorithm of ``algos``
    can score with ``--ablation ablation``, naming those that can."""
    from edgewise.prune_algos import ALGORITHMS

    refused = [a for a in algos if not takes_ablation(a, ablation)]
    if not refused:
        return
    able = [a for a in ALGORITHMS if takes_ablation(a, ablation)]
    if ablation == "optimal":
        why = ("cannot patch with fixed values (MIB refuses it for eap-ig-inputs and "
               "clean-corrupted, which patch from the corrupt prompts)")
    else:
        why = "always patch from the corrupt prompts"
    raise ValueError(f"--ablation {ablation}: {', '.join(refused)} {why}; the algorithms that "
                     f"can: {', '.join(able)}")


def check_option_reaches(option: str, value: Any, algos: Sequence[str],
                         takes: Callable[[str], bool]) -> None:  # fmt: skip
    """An option given must reach at least one requested algorithm."""
    from edgewise.prune_algos import ALGORITHMS

    if value is not None and not any(takes(a) for a in algos):
        users = ", ".join(a for a in ALGORITHMS if takes(a))
        raise ValueError(f"{option} applies to {users}; none of --algo {' '.join(algos)} "
                         f"takes it: drop {option} or add one of those")


def describe_parameters(algo: str) -> str:
    """One line per settable parameter with its default, for ``--help``-like listings."""
    lines = []
    for name, p in algorithm_parameters(algo).items():
        if name in OWN_OPTION:
            continue
        d = "(required)" if p.default is inspect.Parameter.empty else f"= {jsonable(p.default)!r}"
        lines.append(f"{algo}.{name} {d}")
    return "\n".join(lines)


def add_choice_arguments(parser: Any) -> None:
    """Add ``discover``'s scoring choices to an ``argparse`` parser: ``--ablation``
    (with the optimal-ablation fitting options), ``--grad-function``,
    ``--answer-function``, ``--positions/--no-positions`` and ``--param``."""
    import argparse

    from edgewise.prune_algos.loss import AnswerFunction, GradFunction
    from edgewise.prune_algos.optimal_ablation import add_optimal_ablation_arguments

    add_optimal_ablation_arguments(
        parser, "what scoring patches ablated edges with: patching (the default: the corrupt "
                "prompt's activations), zero, a mean (batch_tokenwise_mean, batch_all_tok_mean, "
                "tokenwise_mean_clean, tokenwise_mean_corrupt, "
                "tokenwise_mean_clean_and_corrupt), or optimal (MIB's optimal ablation, one "
                "constant per source fitted on the train prompts; see --oa-*). An algorithm "
                "that cannot take the choice is refused before anything loads. Circuits are "
                "still evaluated with interchange ablation, as MIB's run_evaluation.py does",
        ablation_arg)
    parser.add_argument("--grad-function", choices=typing.get_args(GradFunction), default=None,
                        help="what gradient-based scores differentiate: logit, prob, logprob or "
                             "logit_exp of the answers. Default: the task's (logit)")
    parser.add_argument("--answer-function", choices=typing.get_args(AnswerFunction),
                        default=None,
                        help="how the answers' values make the loss: avg_diff (answers minus "
                             "wrong answers), avg_val (answers) or mse. Default: the task's "
                             "(toy_ioi, tracr_reverse: avg_diff; tracr_xproportion: mse)")
    parser.add_argument("--positions", action=argparse.BooleanOptionalAction, default=None,
                        help="one edge per token position (--positions) or one per pair of "
                             "modules (--no-positions: what MIB's circuit JSON holds). "
                             "Default: the task's (toy_ioi: positions)")
    parser.add_argument("--param", action="append", metavar="ALGO.NAME=VALUE", default=None,
                        help="an algorithm's own parameter, checked against its signature "
                             "before anything loads; repeat for more. E.g. --param ig.steps=10 "
                             "--param acdc.tau_exps=-5,-3 --param atp-star.grad_drop=true "
                             "--param sp.epochs=20. Lists are comma-separated, booleans "
                             "true/false, none where allowed")
