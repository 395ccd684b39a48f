"""Weight and config files that cannot be read: a truncated safetensors file, a torch
file that pickles Python objects, a truncated torch file, a config.json that is not JSON.
Each is one line naming the file and the fix (a ``FileFormatError``, a ``ValueError``),
never torch's advice to load with ``weights_only=False``, and the file is left as it was."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgewise.io.files import FileFormatError, load_checkpoint
from edgewise.models import load_hf_bridge, random_hf_model
from edgewise.models.files import (
    check_model_dir,
    check_safetensors_file,
    check_torch_file,
    weight_files,
)


class Pickled:  # a Python object in a checkpoint: what weights_only refuses
    pass


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A random GPT-2 saved with save_pretrained, and its state dict."""
    hf = random_hf_model(n_layers=1, n_heads=2, d_head=4)
    folder = tmp_path_factory.mktemp("hf") / "gpt2"
    hf.save_pretrained(folder)
    return folder, {k: v.clone() for k, v in hf.state_dict().items()}


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _refused(call, path, *fragments):
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(FileFormatError) as err:
        call()
    message = str(err.value)
    assert isinstance(err.value, ValueError) and "\n" not in message
    assert str(path) in message and "weights_only" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    if before is not None:
        assert path.read_bytes() == before
    return message


def test_a_whole_checkpoint_passes_and_lists_its_weights(saved):
    folder, _ = saved
    check_model_dir(folder)
    assert [p.name for p in weight_files(folder)] == ["model.safetensors"]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=1, max_value=10**6))
def test_every_truncation_of_a_safetensors_file_is_named(tmp_path, saved, cut):
    folder, _ = saved
    whole = (folder / "model.safetensors").read_bytes()
    path = tmp_path / "model.safetensors"
    path.write_bytes(whole[: max(0, len(whole) - cut)])
    _refused(lambda: check_safetensors_file(path), path, "save_pretrained")


def test_a_truncated_safetensors_model_folder_fails_before_loading(tmp_path, saved):
    folder = _copy(saved[0], tmp_path / "m")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    _refused(lambda: load_hf_bridge(str(folder)), weights, "is truncated", "download it again")


def test_a_pickled_bin_is_refused_naming_the_object_and_how_to_convert(tmp_path, saved):
    folder = _copy(saved[0], tmp_path / "m")
    (folder / "model.safetensors").unlink()
    state = dict(saved[1])
    torch.save({**state, "extra": Pickled()}, folder / "pytorch_model.bin")
    path = folder / "pytorch_model.bin"
    message = _refused(lambda: load_hf_bridge(str(folder)), path, "pickled Python objects",
                       "Pickled", "unpickling can run any code", "safetensors.torch.save_file")  # fmt: skip
    assert "trust" not in message
    torch.save(state, path)  # the same tensors alone: accepted
    check_model_dir(folder)


@pytest.mark.parametrize("keep", [0, 10, 0.5, -22])
def test_a_truncated_torch_file_is_named(tmp_path, saved, keep):
    path = tmp_path / "pytorch_model.bin"
    torch.save(saved[1], path)
    data = path.read_bytes()
    path.write_bytes(data[: int(keep * len(data)) if isinstance(keep, float) else keep % len(data)])
    _refused(lambda: check_torch_file(path), path, "truncated or damaged", "download it again")


def test_checkpoints_and_mib_pt_files_never_suggest_weights_only_false(tmp_path):
    from edgewise.mib.submission import SchemaError, _load_graph_doc

    path = tmp_path / "acdc.pt"
    torch.save({"state": Pickled()}, path)
    _refused(lambda: load_checkpoint(path, "rerun with --fresh"), path, "pickled Python objects",
             "rerun with --fresh")  # fmt: skip
    with pytest.raises(SchemaError) as err:
        _load_graph_doc(path)
    assert "pickled Python objects" in str(err.value) and "weights_only" not in str(err.value)


@pytest.mark.parametrize(("config", "fragment"), [
    ('{"model_type": ', "is not valid JSON"),
    ("\xff\xfe", "is not valid JSON"),
    ('{"n_layer": 1}', 'has no "model_type"'),
    ("[]", 'has no "model_type"'),
])  # fmt: skip
def test_a_bad_config_json_is_a_value_error_naming_it(tmp_path, saved, config, fragment):
    folder = _copy(saved[0], tmp_path / "m")
    (folder / "config.json").write_bytes(config.encode("latin-1"))
    _refused(lambda: load_hf_bridge(str(folder)), folder / "config.json", fragment, "save_pretrained")


def test_a_folder_without_weights(tmp_path, saved):
    folder = _copy(saved[0], tmp_path / "m")
    (folder / "model.safetensors").unlink()
    _refused(lambda: check_model_dir(folder), folder, "holds no weights")
