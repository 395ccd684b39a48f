"""The edgewise side of the MIB parity harness: edgewise's MIB entry points, called with
their defaults, on the same weights, prompts and (for the evaluations) the same scores as
the reference side.

    python parity/mib/ew_side.py WORKDIR [--kind hooked|bridge]

Runs after ``ref_side.py run`` (it reads the reference's graph JSONs and node scores from
WORKDIR) and writes ``ew.json`` and its submission files under ``WORKDIR/ew_submission``.

Entry points, each with defaults only (no convention parameter is passed):
``ALGORITHMS["eap" | "eap-ig-inputs" | "eap-ig-activations" | "clean-corrupted"]``
(``ablation_values=`` for MIB's optimal ablation: the values are the input, not a
convention; ``eap``'s sum over batches converted to MIB's scale as ``edgewise mib export``
converts a scores file), ``node_attribution_scores(model, loader, method, level)``,
``load_mib_task``, ``load_mib_json``, ``mib_evaluate`` (through
``mib_evaluate_per_prompt``, which returns its result unchanged), ``mib_circuit``,
``mib_evaluate_nodes_per_prompt``, ``node_circuit``, ``mib_weighted_edge_count``,
``export_importances``, ``export_circuits``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import pickle
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import common  # noqa: E402
from common import EDGE_METHODS, EVAL_METHOD, LEVELS, NODE_METHODS, Side  # noqa: E402

EDGE_ALGOS = {"EAP": "eap", "EAP-IG-inputs": "eap-ig-inputs",
              "EAP-IG-activations": "eap-ig-activations", "clean-corrupted": "clean-corrupted"}  # fmt: skip
NODE_ALGOS = {"EAP": "eap", "EAP-IG-inputs": "eap-ig-inputs",
              "EAP-IG-activations": "eap-ig-activations"}  # fmt: skip


def as_rows(x) -> list[list[int]]:
    return [t.tolist() for t in x] if isinstance(x, list | tuple) else x.tolist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workdir", type=Path)
    p.add_argument("--kind", default=None, choices=["hooked", "bridge"])
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--num-examples", type=int, default=100)
    args = p.parse_args()
    torch.manual_seed(0)
    workdir = args.workdir
    side = Side("edgewise")

    import edgewise
    from edgewise import (
        ALGORITHMS,
        PromptDataLoader,
        export_circuits,
        export_importances,
        load_mib_json,
        load_mib_task,
        node_attribution_scores,
        node_circuit,
        patchable_model,
    )
    from edgewise.benchmarks.toy_models import (
        load_config,
        load_vocab,
        load_weights,
        toy_ioi_tokenizer,
    )
    from edgewise.evaluation.node_circuits import mib_weighted_edge_count
    from edgewise.io.files import mib_edge_name
    from edgewise.mib.evaluate import mib_circuit
    from edgewise.mib.intervals import mib_evaluate_nodes_per_prompt, mib_evaluate_per_prompt
    from edgewise.models.kinds import from_tl_weights, resolve_kind
    from edgewise.prune_algos.node_attribution import flat_node_scores

    side.put("meta/edgewise_file", edgewise.__file__)
    side.put("meta/transformer_lens", importlib.metadata.version("transformer-lens"))
    kind = resolve_kind(args.kind)
    side.put("meta/kind", kind)
    fields = load_config("toy-ioi") | {"dtype": args.dtype}
    weights = load_weights("toy-ioi")
    model = from_tl_weights(fields, weights, kind=kind, tokenizer=toy_ioi_tokenizer(load_vocab()))
    pm = patchable_model(model, slice_output="last_seq", seq_len=None)
    names = [mib_edge_name(e) for e in pm.edges]

    # MIB's node names of the sources, in source order (input, a0.h0.., m0, a1.h0.., ...)
    src_names: list[str] = []
    for mod in pm.graph.src_modules:
        if mod.kind == "embed":
            src_names.append("input")
        elif mod.kind == "attn":
            src_names += [f"a{mod.block}.h{h}" for h in range(mod.n_heads)]
        else:
            src_names.append(f"m{mod.block}")
    side.put("meta/src_names", src_names)

    def edge_values(scores) -> dict[str, float]:
        return {n: float(scores[e.dest.module_name][e.patch_idx]) for n, e in zip(names, pm.edges)}

    def loader(split: str, num_examples: int | None):
        ds = load_mib_task("ioi", workdir / "data", model.tokenizer, split=split,
                           num_examples=num_examples)  # fmt: skip
        return PromptDataLoader(ds, batch_size=args.batch_size, drop_last=False)

    train = loader("train", args.num_examples)
    valid = loader("validation", None)

    for split, dl in (("train", train), ("validation", valid)):
        def data(dl=dl):
            out = {"clean": [], "corrupt": [], "answers": [], "wrong_answers": []}
            for b in dl:
                out["clean"] += as_rows(b.clean)
                out["corrupt"] += as_rows(b.corrupt)
                out["answers"] += [r[0] for r in as_rows(b.answers)]
                out["wrong_answers"] += [r[0] for r in as_rows(b.wrong_answers)]
            out["pad_id"] = dl.dataset.pad_id if hasattr(dl, "dataset") else None
            return out

        side.step(f"data/{split}", data)

    # --- edge scores, registry defaults. The registry's eap keeps auto-circuit's sum over
    # batches; MIB's numbers for it are what `edgewise mib export` writes from its scores
    # file: divided by the prompts (to_mib_scale, through rescale_scores)
    from edgewise.io.scale import count_prompts, rescale_scores

    def as_exported(algo: str, scores: dict, **params) -> dict:
        scale = ALGORITHMS[algo].score_scale(params)
        if scale != "sum":
            return scores
        return rescale_scores(scores, "sum", "mean", count_prompts(train))

    own: dict[str, dict] = {}
    for method in EDGE_METHODS:
        def edge(method=method):
            algo = EDGE_ALGOS[method]
            own[method] = as_exported(algo, ALGORITHMS[algo](pm, train, None, progress=False))
            return edge_values(own[method])

        side.step(f"scores/edge/{method}", edge)

    def optimal(as_mib_loads: bool):
        # the pickle's values: hook_embed [d] (MIB's input node is the token embedding;
        # edgewise's is hook_resid_pre = token + position embedding, so the position
        # embedding is added), each layer's attn.hook_result [n_heads, d], hook_mlp_out [d].
        # MIB's load_ablations reads only head 0's row of each layer (it skips the other
        # heads of a layer it has seen), leaving the others 0: as_mib_loads does the same.
        with open(workdir / "optimal_ablations.pkl", "rb") as f:
            values = pickle.load(f)
        seq = max(len(r) for r in side.doc["values"]["data/train"]["clean"])
        rows = []
        for mod in pm.graph.src_modules:
            if mod.kind == "embed":
                w_pos = weights["pos_embed.W_pos"][:seq].double()
                rows.append((values["hook_embed"].reshape(1, -1).double() + w_pos)[None])
            elif mod.kind == "attn":
                res = values[f"blocks.{mod.block}.attn.hook_result"].double().clone()
                if as_mib_loads:
                    res[1:] = 0.0
                rows += [r.reshape(1, -1).expand(seq, -1)[None] for r in res]
            else:
                mlp = values[f"blocks.{mod.block}.hook_mlp_out"].reshape(1, -1).double()
                rows.append(mlp.expand(seq, -1)[None])
        vals = torch.cat(rows)[:, None].to(getattr(torch, args.dtype))  # [n_srcs, 1, seq, d]
        scores = ALGORITHMS["eap"](pm, train, None, progress=False, ablation_values=vals)
        return edge_values(as_exported("eap", scores))

    side.step("scores/edge/EAP/optimal", lambda: optimal(True))
    side.step("scores/edge/EAP/optimal-as-written", lambda: optimal(False))

    # --- node and neuron scores
    for method in NODE_METHODS:
        for level in LEVELS:
            def node(method=method, level=level):
                s = node_attribution_scores(pm, train, NODE_ALGOS[method], level, progress=False)
                return flat_node_scores(pm, s).double().tolist()

            side.step(f"scores/{level}/{method}", node)

    # --- evaluation of the reference's scores, read from its graph JSON
    ref = json.loads((workdir / "ref.json").read_text())["values"]
    for method in EDGE_METHODS:
        path = workdir / f"ref_importances_{method}.json"
        if not path.exists():
            continue

        def imported(path=path):
            return edge_values(load_mib_json(path, pm)[0])

        side.step(f"import/edge/{method}", imported)

        def evaluate(path=path):
            scores = load_mib_json(path, pm)[0]
            result, m = mib_evaluate_per_prompt(pm, valid, scores)
            out = result.to_dict()
            out["per_prompt"] = {
                "signed": [v.tolist() for v in m.signed], "absolute": [v.tolist() for v in m.absolute],
                "empty": m.empty.tolist(), "full": m.full.tolist(),
            }  # fmt: skip
            out["circuits"] = {
                f"abs-{a}": [sorted(mib_edge_name(e) for e in mib_circuit(pm, scores, n, a))
                             for n in result.sizes]
                for a in (False, True)
            }  # fmt: skip
            return out

        side.step(f"eval/edge/{method}", evaluate)

    for level in LEVELS:
        entry = ref.get(f"scores/{level}/{EVAL_METHOD}")
        if not isinstance(entry, dict) or "stored" not in entry:
            continue

        def evaluate_nodes(level=level, stored=entry["stored"]):
            flat = torch.tensor(stored, dtype=torch.float64)
            scores, i = {}, 0
            for mod in pm.graph.src_modules:
                n = mod.n_heads or 1
                scores[mod.module_name] = flat[i : i + n].to(pm.device)
                i += n
            m = mib_evaluate_nodes_per_prompt(pm, valid, scores)
            curve_cpr, curve_cmd, cpr, cmd = m.point()
            out = {"sizes": m.sizes, "n_units": m.n_units, "curve_cpr": curve_cpr,
                   "curve_cmd": curve_cmd, "cpr": cpr, "cmd": cmd,
                   "per_prompt": {"signed": [v.tolist() for v in m.signed],
                                  "absolute": [v.tolist() for v in m.absolute],
                                  "empty": m.empty.tolist(), "full": m.full.tolist()}}  # fmt: skip
            for a in (False, True):
                circuits = [node_circuit(pm, scores, n, a) for n in m.sizes]
                out[f"weighted_edge_counts/abs-{a}"] = [mib_weighted_edge_count(pm, c) for c in circuits]
                if level == "node":
                    kept = [torch.cat([c[mod.module_name].flatten().cpu() for mod in pm.graph.src_modules])
                            for c in circuits]  # fmt: skip
                    out[f"nodes/abs-{a}"] = [sorted(n for n, k in zip(src_names, row.tolist()) if k)
                                             for row in kept]  # fmt: skip
            return out

        side.step(f"eval/{level}/{EVAL_METHOD}", evaluate_nodes)

    # --- submission files of edgewise's own EAP-IG-inputs scores
    def export():
        scores = own[EVAL_METHOD]
        root = workdir / "ew_submission"
        imp = export_importances(root / "importances", pm, scores, common.TASK, common.MODEL_NAME)
        circ = export_circuits(root / "circuits", pm, scores, common.TASK, common.MODEL_NAME,
                               absolute=None)  # fmt: skip
        return {"importances": str(imp), "circuits": [str(c) for c in circ]}

    side.step("export", export)
    side.write(workdir / "ew.json")


if __name__ == "__main__":
    main()
