"""MIB's models on the default install (TransformerLens 4: bridges only): ``edgewise mib``
commands ungroup grouped-query attention on a bridge as MIB does, and a random-weight
model at Qwen2.5-0.5B's real shape gets MIB's graph (179,749 edges), EAP scores and
leaderboard files that pass validation with the shape check."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch

from edgewise import edge_attribution_patching_prune_scores, patchable_model
from edgewise.graph.build import GraphSpec, build_graph
from edgewise.io.files import mib_edge_name, save_mib_json
from edgewise.mib.evaluate import format_result, load_mib_setup, mib_evaluate
from edgewise.mib.models import MIB_MODELS
from edgewise.mib.random_models import mib_hf_config, random_mib_bridge
from edgewise.mib.submission import (
    export_circuits,
    export_importances,
    import_submission,
    mib_graph_names,
    validate_submission,
)
from edgewise.models.adapter import HookAdapter
from edgewise.models.ungroup import bridge_kv_ungrouped

from reference import reference_eap_scores
from util import random_loader


def mib_edge_formula(n_layers: int, n_heads: int) -> int:
    """MIB's edge count by hand: block ``b``'s heads read ``1 + b (H + 1)`` earlier nodes at
    each of q, k and v, its MLP those and the block's ``H`` heads, the logits everything."""
    per_block = (3 * n_heads * (1 + b * (n_heads + 1)) + 1 + b * (n_heads + 1) + n_heads
                 for b in range(n_layers))  # fmt: skip
    return sum(per_block) + 1 + n_layers * (n_heads + 1)


def grouped_edge_formula(n_layers: int, n_heads: int, n_kv: int) -> int:
    """The same with K and V inputs per key/value head (``ungroup_kv=False``)."""
    per_block = ((n_heads + 2 * n_kv) * (1 + b * (n_heads + 1)) + 1 + b * (n_heads + 1) + n_heads
                 for b in range(n_layers))  # fmt: skip
    return sum(per_block) + 1 + n_layers * (n_heads + 1)


# ------------------------------------------------------------------ edgewise mib on a bridge
@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    """A local Hugging Face directory (tiny random Qwen 2 with grouped-query attention and
    a word tokenizer) and a dataset of token-id prompts: what ``--model DIR`` loads as a
    bridge."""
    from edgewise.models import random_hf_model
    from edgewise.models.kinds import word_tokenizer

    d = tmp_path_factory.mktemp("qwen")
    hf = random_hf_model("qwen2", n_layers=2, n_heads=4, d_head=4, d_vocab=20, n_kv_heads=2, seed=1)
    hf.save_pretrained(d)
    word_tokenizer([f"w{i}" for i in range(17)]).save_pretrained(d)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(32):  # `mib export` reads batches of 16
        clean = torch.randint(3, 20, (5,), generator=gen).tolist()
        corrupt = clean[:3] + torch.randint(3, 20, (2,), generator=gen).tolist()
        ans, wrong = torch.randint(3, 20, (2,), generator=gen).tolist()
        rows.append({"clean": clean, "corrupt": corrupt, "answers": [ans], "wrong_answers": [wrong]})
    (d / "data.json").write_text(json.dumps({"prompts": rows}))
    return d


def test_mib_commands_ungroup_a_bridge_with_grouped_query_attention(qwen_dir, tmp_path, capsys):
    from edgewise.cli import main

    data = str(qwen_dir / "data.json")
    pm, test = load_mib_setup(str(qwen_dir), data, 16)
    assert HookAdapter(pm.wrapped_model).is_bridge and bridge_kv_ungrouped(pm.wrapped_model)
    _, names = mib_graph_names(2, 4)
    assert pm.n_edges == mib_edge_formula(2, 4) == len(names) == 110
    assert sorted(mib_edge_name(e) for e in pm.edges) == sorted(names)
    gen = torch.Generator().manual_seed(3)
    scores = {n: torch.randn(m.mask_shape, generator=gen) for n, m in pm.dest_modules.items()}
    src = save_mib_json(tmp_path / "scores.json", pm, scores)
    out = tmp_path / "sub"
    args = ["mib", "export", str(src), "--model", str(qwen_dir), "--task", data, "--mib-task", "ioi",
            "--mib-model", "qwen2.5", "--kind", "both", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    back = import_submission(out / "ioi_qwen2.5", pm)
    for n in scores:
        torch.testing.assert_close(back[n], scores[n], atol=0, rtol=0)
    assert len(import_submission(out / "circuits" / "ioi_qwen2.5", pm)) == 9
    capsys.readouterr()
    one = ["--min-tasks", "1", "--min-models", "1"]
    assert main(["mib", "validate", str(out), "--no-shape-check", *one]) == 0
    assert main(["mib", "validate", str(out), *one]) == 2  # a tiny model, not Qwen2.5's shape
    assert "qwen2.5 has (24, 14, False)" in capsys.readouterr().err
    result = mib_evaluate(pm, test, scores, progress=False)
    assert main(["mib", "evaluate", str(src), "--model", str(qwen_dir), "--task", data,
                 "--batch-size", "16", "--quiet"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert printed[printed.index("CPR ") :].strip() == format_result(result)


# ------------------------------------------------------------------ Qwen2.5-0.5B's shape
def test_qwen25_edge_count_from_the_config_alone():
    """No weights: the public config gives MIB's 179,749 edges ungrouped (and 79,813 with
    K/V per key/value head), and 494,032,768 parameters built on the meta device."""
    import transformers as tf

    cfg = mib_hf_config("qwen2.5")
    bridge_like = SimpleNamespace(n_layers=cfg.num_hidden_layers, n_heads=cfg.num_attention_heads,
                                  n_key_value_heads=cfg.num_key_value_heads,
                                  ungroup_grouped_query_attention=True)  # fmt: skip
    spec = GraphSpec.from_config(bridge_like)
    assert spec == MIB_MODELS["qwen2.5"].spec
    assert build_graph(spec).n_edges == mib_edge_formula(24, 14) == 179_749
    assert len(mib_graph_names(24, 14)[1]) == 179_749
    grouped = GraphSpec.from_config(
        SimpleNamespace(**{**vars(bridge_like), "ungroup_grouped_query_attention": False})
    )
    assert build_graph(grouped).n_edges == grouped_edge_formula(24, 14, 2) == 79_813
    with torch.device("meta"):
        hf = tf.Qwen2ForCausalLM(cfg)
    assert sum(p.numel() for p in hf.parameters()) == MIB_MODELS["qwen2.5"].n_params == 494_032_768
    with pytest.raises(ValueError, match="n_layers must be an integer from 1 to 24"):
        mib_hf_config("qwen2.5", n_layers=25)
    with pytest.raises(ValueError, match="no random-weight builder for MIB model 'llama3'"):
        mib_hf_config("llama3")


def test_qwen25_width_at_two_layers_has_mibs_graph():
    """Qwen2.5-0.5B's width, heads, MLP and vocabulary with 2 of its 24 layers, as a
    bridge: MIB's edge formula and names, and its parameter count."""
    model = random_mib_bridge("qwen2.5", n_layers=2)
    cfg = model.cfg
    assert (cfg.d_model, cfg.n_heads, cfg.n_key_value_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab) == (
        896, 14, 2, 64, 4864, 151936)  # fmt: skip
    two = dataclasses.replace(MIB_MODELS["qwen2.5"], n_layers=2)
    params = dict(model.original_model.named_parameters())
    # TransformerLens 3.9's bridge gives the unembedding a bias of zeros
    added = [n for n in params if n.startswith("lm_head") and n.endswith("bias")]
    assert all(int(torch.count_nonzero(params[n])) == 0 for n in added)
    assert sum(p.numel() for n, p in params.items() if n not in added) == two.n_params
    pm = patchable_model(model, ungroup_kv=True, slice_output="last_seq")
    _, names = mib_graph_names(2, 14)
    assert pm.n_edges == mib_edge_formula(2, 14) == len(names) == 790
    assert sorted(mib_edge_name(e) for e in pm.edges) == sorted(names)
    assert pm.dest_modules["blocks.1.hook_v_input"].mask_shape == (14, 1 + 15)


@pytest.mark.slow
def test_qwen25_full_shape_gets_mibs_graph_eap_scores_and_valid_files(tmp_path):
    """All 24 layers (494M random parameters, float32, about 2 GB) on the plain install:
    MIB's 179,749 edges, EAP scores over 2 prompts of 6 tokens (300 sampled edges equal the
    closed form), and importances plus 9 circuits that pass ``validate_submission`` with
    the check of the files' shape against Qwen2.5's."""
    model = random_mib_bridge("qwen2.5")
    pm = patchable_model(model, ungroup_kv=True, slice_output="last_seq")
    _, names = mib_graph_names(24, 14)
    assert pm.n_edges == 179_749 and sorted(mib_edge_name(e) for e in pm.edges) == sorted(names)
    loader = random_loader(seed=0, n=2, seq=6, batch_size=2, vocab=151936)
    scores = edge_attribution_patching_prune_scores(pm, loader, progress=False)
    flat = torch.cat([s.flatten() for s in scores.values()])
    assert bool(torch.isfinite(flat).all()) and int((flat != 0).sum()) > 0.9 * pm.n_edges
    gen = torch.Generator().manual_seed(0)
    sample = [pm.edges[i] for i in torch.randperm(pm.n_edges, generator=gen)[:300].tolist()]
    want = reference_eap_scores(pm, loader, edges=sample)
    scale = float(flat.abs().max())
    for e in sample:
        got = float(scores[e.dest.module_name][e.patch_idx])
        assert got == pytest.approx(float(want[e.dest.module_name][e.patch_idx]), abs=1e-4 * scale)
    export_importances(tmp_path, pm, scores, "ioi", "qwen2.5")
    export_circuits(tmp_path / "circuits", pm, scores, "ioi", "qwen2.5")
    found = validate_submission(tmp_path, min_tasks=1, min_models=1, check_shapes=True)
    assert found == {"ioi_qwen2.5": "importances", "circuits/ioi_qwen2.5": "circuits"}
