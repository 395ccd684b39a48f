"""The reference side of the MIB parity harness: MIB's own code (hannamw/EAP-IG at the
commit hannamw/MIB-circuit-track pins, and MIB-circuit-track) on the shipped toy IOI
model. Runs in ``.venv-mib`` with ``PYTHONPATH=$MIB_REF/EAP-IG/src:$MIB_REF/MIB-circuit-track``
(``parity/mib_compare.py`` sets it up); never imports edgewise.

    python parity/mib/ref_side.py run  WORKDIR   # scores, evaluations, graph JSONs
    python parity/mib/ref_side.py read WORKDIR   # read back edgewise's submission files

Adjustments that only make MIB's code run here, recorded as notes in the output:

* MIB's code allocates its score and buffer tensors with ``device='cuda'``; the harness
  hands its modules a ``torch`` whose ``zeros`` puts a ``'cuda'`` tensor on the CPU.
* ``HFEAPDataset`` reads ``mib-bench/ioi`` from the Hugging Face hub; the harness gives
  ``MIB_circuit_track.dataset.load_dataset`` the local rows instead (the class itself, its
  filters and its answer tokens run unchanged).
* The model is ``HookedTransformer(HookedTransformerConfig(**config.json))`` with the
  shipped TransformerLens-format weights (``from_pretrained`` would download), with the
  three flags ``run_attribution.py`` sets; the tokenizer is the shipped
  ``hf/tokenizer.json``.
* ``Graph`` stores scores in float32 (``graph.scores``, ``nodes_scores``,
  ``neurons_scores``); the float64 tensors ``attribute``/``attribute_node`` computed are
  captured before that cast and compared; the float32-rounded values are what MIB writes
  to its JSON and evaluates, so the evaluations use those.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import common  # noqa: E402
from common import EDGE_METHODS, EVAL_METHOD, LEVELS, NODE_METHODS, TOY_DIR, Side  # noqa: E402


# ------------------------------------------------------------------ making it run here
class _CpuTorch:
    """``torch`` with ``zeros(..., device='cuda')`` on the CPU (MIB's code hard-codes cuda)."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def zeros(*args, **kwargs):
        if str(kwargs.get("device", "")).startswith("cuda"):
            kwargs["device"] = "cpu"
        return torch.zeros(*args, **kwargs)


def import_reference(side: Side):
    import eap
    import eap.attribute
    import eap.attribute_node
    import eap.evaluate
    import eap.utils
    import MIB_circuit_track.dataset
    import MIB_circuit_track.evaluation

    for mod in (eap.attribute, eap.attribute_node, eap.evaluate, eap.utils):
        mod.torch = _CpuTorch()
    side.note("MIB's modules get a torch whose zeros(device='cuda') allocates on the CPU")
    side.put("meta/eap_file", eap.__file__)
    side.put("meta/mib_file", MIB_circuit_track.dataset.__file__)


def load_model(dtype: torch.dtype, workdir: Path):
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    # a tokenizer saved to a folder, so that TransformerLens can reload it by path
    tok_dir = workdir / "ref_tokenizer"
    PreTrainedTokenizerFast(
        tokenizer_file=str(TOY_DIR / "hf" / "tokenizer.json"), bos_token="<bos>",
        eos_token="<bos>", pad_token="<pad>", unk_token="<unk>",
    ).save_pretrained(tok_dir)  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    fields = json.loads((TOY_DIR / "config.json").read_text())
    fields.update(dtype=dtype, device="cpu")
    model = HookedTransformer(HookedTransformerConfig(**fields), tokenizer=tokenizer)
    state = model.state_dict()
    state.update({k: v.to(dtype) for k, v in load_file(TOY_DIR / "model.safetensors").items()})
    model.load_state_dict(state)
    model.eval()
    # as run_attribution.py / run_evaluation.py configure every model
    model.cfg.use_split_qkv_input = True
    model.cfg.use_attn_result = True
    model.cfg.use_hook_mlp_in = True
    model.cfg.ungroup_grouped_query_attention = True
    return model


def mib_dataset(model, workdir: Path, split: str, num_examples: int | None):
    """MIB's ``HFEAPDataset`` over the local rows of ``split``."""
    import datasets
    import MIB_circuit_track.dataset as mib_dataset_module

    rows = common.read_jsonl(workdir / "data" / f"{split}.jsonl")

    def local_rows(url, split=None, token=None):
        return datasets.Dataset.from_list(rows)

    mib_dataset_module.load_dataset = local_rows
    return mib_dataset_module.HFEAPDataset("mib-bench/ioi", model.tokenizer, split=split,
                                           task="ioi", model_name="gpt2",
                                           num_examples=num_examples)  # fmt: skip


# ---------------------------------------------------------------------------- helpers
def edge_values(graph, matrix: torch.Tensor) -> dict[str, float]:
    return {name: float(matrix[e.matrix_index]) for name, e in graph.edges.items()}


def in_graph_names(graph) -> list[str]:
    return sorted(name for name, e in graph.edges.items() if bool(e.in_graph))


def fixed_point_prune(graph) -> list[str]:
    """The edges left when MIB's own ``Graph.prune`` is repeated until nothing changes
    (what EAP-IG's later fix of the loop condition gives); the graph is restored."""
    saved = (graph.in_graph.clone(), graph.nodes_in_graph.clone())
    while True:
        before = graph.in_graph.clone()
        graph.prune()
        if torch.equal(before, graph.in_graph):
            break
    names = in_graph_names(graph)
    graph.in_graph[:], graph.nodes_in_graph[:] = saved
    return names


class Capture:
    """Wraps a function to keep the tensor it returns (the float64 scores)."""

    def __init__(self, module, name: str):
        self.module, self.name, self.orig = module, name, getattr(module, name)
        self.last = None

    def __enter__(self):
        def wrapped(*args, **kwargs):
            self.last = self.orig(*args, **kwargs)
            return self.last

        setattr(self.module, self.name, wrapped)
        return self

    def __exit__(self, *exc):
        setattr(self.module, self.name, self.orig)


EDGE_FUNCS = {"EAP": "get_scores_eap", "EAP-IG-inputs": "get_scores_eap_ig",
              "EAP-IG-activations": "get_scores_ig_activations",
              "clean-corrupted": "get_scores_clean_corrupted"}  # fmt: skip


# ------------------------------------------------------------------------------- run
def run(workdir: Path, args: argparse.Namespace) -> None:
    side = Side("reference")
    import_reference(side)
    import eap.attribute
    import eap.attribute_node
    from eap.graph import Graph
    from MIB_circuit_track.metrics import get_metric

    dtype = getattr(torch, args.dtype)
    model = load_model(dtype, workdir)
    side.note("model: HookedTransformer(config.json) + model.safetensors (from_pretrained would download)")
    side.note("HFEAPDataset reads the local rows (load_dataset replaced); filters and answers unchanged")
    train = mib_dataset(model, workdir, "train", args.num_examples)
    valid = mib_dataset(model, workdir, "validation", None)
    train_dl = train.to_dataloader(batch_size=args.batch_size)
    valid_dl = valid.to_dataloader(batch_size=args.batch_size)
    metric = get_metric("logit_diff", "ioi", model.tokenizer, model)
    attribution_metric = partial(metric, mean=True, loss=True)  # run_attribution.py
    eval_metric = partial(metric, mean=False, loss=False)  # run_evaluation.py

    # --- data: what MIB feeds the model
    from eap.utils import tokenize_plus

    for split, dl in (("train", train_dl), ("validation", valid_dl)):
        def data(dl=dl):
            out = {"clean": [], "corrupt": [], "answers": [], "wrong_answers": []}
            for clean, corrupted, labels in dl:  # tokenized per batch, as MIB's passes do
                out["clean"] += tokenize_plus(model, clean)[0].tolist()
                out["corrupt"] += tokenize_plus(model, corrupted)[0].tolist()
                out["answers"] += [int(a) for a, _ in labels]
                out["wrong_answers"] += [int(w) for _, w in labels]
            out["pad_id"] = int(model.tokenizer.pad_token_id)
            return out

        side.step(f"data/{split}", data)

    # --- edge scores (run_attribution.py: attribute(..., args.ablation, ig_steps, ...))
    graphs: dict[str, Graph] = {}
    runs = [(m, "patching") for m in EDGE_METHODS] + [("EAP", "optimal")]
    for method, ablation in runs:
        key = f"scores/edge/{method}" + ("" if ablation == "patching" else f"/{ablation}")

        def edge(method=method, ablation=ablation):
            graph = Graph.from_model(model)
            with Capture(eap.attribute, EDGE_FUNCS[method]) as cap:
                eap.attribute.attribute(
                    model, graph, train_dl, attribution_metric, method, ablation,
                    ig_steps=args.ig_steps, intervention_dataloader=train_dl,
                    optimal_ablation_path=str(workdir / "optimal_ablations.pkl"), quiet=True,
                )  # fmt: skip
            if ablation == "patching":
                graphs[method] = graph
                graph.to_json(str(workdir / f"ref_importances_{method}.json"))
            return edge_values(graph, cap.last.double())

        side.step(key, edge)
    side.put("scores/edge/EAP-IG-activations/optimal", {
        "skipped": "MIB's EAP-IG-activations with optimal ablation multiplies by (optimal - clean) "
        "but interpolates from 0 (its corrupt buffer is never filled): the reference's own "
        "bug, documented in edgewise's eap_ig_activations module"})  # fmt: skip

    # --- node and neuron scores (run_attribution.py --level node / neuron)
    node_graphs: dict[tuple[str, str], Graph] = {}
    for method in NODE_METHODS:
        for level in LEVELS:
            def node(method=method, level=level):
                graph = Graph.from_model(model, neuron_level=level == "neuron",
                                         node_scores=level == "node")  # fmt: skip
                with Capture(eap.attribute_node, EDGE_FUNCS[method]) as cap:
                    eap.attribute_node.attribute_node(
                        model, graph, train_dl, attribution_metric, method, "patching",
                        neuron=level == "neuron", ig_steps=args.ig_steps,
                        intervention_dataloader=train_dl, quiet=True,
                    )  # fmt: skip
                node_graphs[(method, level)] = graph
                stored = graph.nodes_scores if level == "node" else graph.neurons_scores
                return {"computed": cap.last.double().tolist(), "stored": stored.double().tolist()}

            side.step(f"scores/{level}/{method}", node)

    # --- evaluation (run_evaluation.py: evaluate_area_under_curve, --absolute or not)
    for method, graph in graphs.items():
        for absolute in (False, True):
            side.step(f"eval/edge/{method}/abs-{absolute}",
                      partial(evaluate, model, graph, valid_dl, eval_metric, "edge", absolute))  # fmt: skip
    for level in LEVELS:
        graph = node_graphs.get((EVAL_METHOD, level))
        if graph is None:
            continue
        for absolute in (False, True):
            side.step(f"eval/{level}/{EVAL_METHOD}/abs-{absolute}",
                      partial(evaluate, model, graph, valid_dl, eval_metric, level, absolute))  # fmt: skip
    side.write(workdir / "ref.json")


def evaluate(model, graph, dataloader, metric, level: str, absolute: bool) -> dict:
    """``evaluate_area_under_curve`` with every circuit it evaluates recorded."""
    import MIB_circuit_track.evaluation as mib_eval

    circuits: list[dict] = []
    orig_graph, orig_base = mib_eval.evaluate_graph, mib_eval.evaluate_baseline
    baseline: list[list[float]] = []

    def evaluate_graph(model, graph, *args, **kwargs):
        out = orig_graph(model, graph, *args, **kwargs)
        rec = {"per_prompt": out.double().tolist(),
               "nodes": sorted(n for n, node in graph.nodes.items() if bool(node.in_graph))}
        if graph.neurons_in_graph is not None:
            rec["n_neurons"] = int(graph.neurons_in_graph.sum())
        if level == "edge":
            rec["evaluated"] = in_graph_names(graph)
            rec["fixed_point"] = fixed_point_prune(graph)
        circuits.append(rec)
        return out

    def evaluate_baseline(*args, **kwargs):
        out = orig_base(*args, **kwargs)
        baseline.append(out.double().tolist())
        return out

    mib_eval.evaluate_graph, mib_eval.evaluate_baseline = evaluate_graph, evaluate_baseline
    try:
        counts, area_under, area_from_1, average, faith = mib_eval.evaluate_area_under_curve(
            model, graph, dataloader, metric, quiet=True, level=level, absolute=absolute)
    finally:
        mib_eval.evaluate_graph, mib_eval.evaluate_baseline = orig_graph, orig_base
    return {
        "weighted_edge_counts": [float(c) for c in counts],
        "area_under": float(area_under), "area_from_1": float(area_from_1),
        "average": float(average), "faithfulnesses": [float(f) for f in faith],
        "full": baseline[0], "empty": circuits[0]["per_prompt"], "circuits": circuits[1:],
    }  # fmt: skip


# ------------------------------------------------------------------------------ read
def read(workdir: Path, args: argparse.Namespace) -> None:
    """Read edgewise's submission files with EAP-IG's ``Graph.from_json`` (what MIB's
    ``run_evaluation.py`` and its leaderboard load), and take MIB's own top-n circuits
    of the scores it read."""
    side = Side("reference-read")
    import_reference(side)
    from eap.graph import Graph

    root = workdir / "ew_submission"
    folder = f"{common.TASK.replace('_', '-')}_{common.MODEL_NAME}"

    def importances():
        g = Graph.from_json(str(root / "importances" / folder / "importances.json"))
        return {"scores": edge_values(g, g.scores), "in_graph": in_graph_names(g)}

    side.step("read/importances", importances)
    for absolute in (False, True):
        def circuits(absolute=absolute):
            files = sorted((root / "circuits" / f"abs-{absolute}" / folder).glob("*.json"))
            read = [Graph.from_json(str(p)) for p in files]
            read.sort(key=lambda g: int(g.in_graph.sum()))  # as MIB's evaluator orders them
            scores = Graph.from_json(str(root / "importances" / folder / "importances.json"))
            own = []
            for p in common.PERCENTAGES[:-1]:
                scores.apply_topn(int(p * len(scores.edges)), absolute)
                own.append({"pinned": in_graph_names(scores), "fixed_point": fixed_point_prune(scores)})
            return {
                "files": [p.name for p in files],
                "read": [in_graph_names(g) for g in read],
                "read_nodes": [sorted(n for n, node in g.nodes.items()
                                      if n != "logits" and bool(node.in_graph)) for g in read],
                "own": own,
            }  # fmt: skip

        side.step(f"read/circuits/abs-{absolute}", circuits)
    side.write(workdir / "ref_read.json")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("phase", choices=["run", "read"])
    p.add_argument("workdir", type=Path)
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    p.add_argument("--ig-steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--num-examples", type=int, default=100)
    args = p.parse_args()
    torch.manual_seed(0)
    (run if args.phase == "run" else read)(args.workdir, args)


if __name__ == "__main__":
    main()
