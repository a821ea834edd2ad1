"""The one checkpoint loader: every broken model directory or weight file is one line naming the path, exit 2."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from meshgen.encoder import EncoderConfig
from meshgen.hourglass import HourglassConfig, HourglassTransformer
from meshgen.modeling import MeshGenerator
from tokenizers3d.checkpoint import check_state_dict, read_model_config, read_state_dict
from tokenizers3d.errors import MeshInputError


def _tiny(dim: int = 32) -> HourglassTransformer:
    torch.manual_seed(0)
    return HourglassTransformer(HourglassConfig(bits=7, dim=dim, n_heads=2, layers=(1, 1, 1), window=90,
                                                encoder=EncoderConfig(dim=dim, n_heads=2, n_latents=8, n_layers=1)))


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "good"
    _tiny().save_pretrained(path)
    return path


def _copy(good, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(good, dst)
    return dst


def _break_weights_empty(d):
    (d / "model.safetensors").write_bytes(b"")
    return "empty"


def _break_weights_truncated(d):
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    return "not a readable safetensors"


def _break_weights_random(d):
    (d / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    return "not a readable safetensors"


def _break_no_weights(d):
    (d / "model.safetensors").unlink()
    return "no weights"


def _break_config_not_json(d):
    (d / "config.json").write_text("{not json")
    return "cannot read model config"


def _break_config_unknown_class(d):
    meta = json.loads((d / "config.json").read_text())
    meta["class"] = "NoSuchModel"
    (d / "config.json").write_text(json.dumps(meta))
    return "NoSuchModel"


def _break_config_bad_field(d):
    meta = json.loads((d / "config.json").read_text())
    meta["config"]["no_such_field"] = 1
    (d / "config.json").write_text(json.dumps(meta))
    return "bad HourglassTransformer config"


def _break_config_list(d):
    (d / "config.json").write_text("[1, 2]")
    return "not a model config"


def _break_other_shape(d):
    _tiny(dim=64).save_pretrained(d.parent / "wide")
    shutil.copy(d.parent / "wide" / "model.safetensors", d / "model.safetensors")
    return "shape mismatches"


def _break_no_config(d):
    (d / "config.json").unlink()
    return "no config.json"


def _break_version(d):
    meta = json.loads((d / "config.json").read_text())
    meta["format_version"] = 99
    (d / "config.json").write_text(json.dumps(meta))
    return "format_version"


BREAKS = [_break_weights_empty, _break_weights_truncated, _break_weights_random, _break_no_weights,
          _break_config_not_json, _break_config_unknown_class, _break_config_bad_field, _break_config_list,
          _break_other_shape, _break_no_config, _break_version]


@pytest.mark.parametrize("brk", BREAKS, ids=lambda f: f.__name__[7:])
def test_broken_model_directory_is_one_clear_error(brk, good, tmp_path):
    d = _copy(good, tmp_path)
    expected = brk(d)
    with pytest.raises(MeshInputError, match=expected) as info:
        MeshGenerator.from_pretrained(d)
    assert str(d) in str(info.value) and "\n" not in str(info.value)


def test_missing_directory_and_file_instead_of_directory(tmp_path):
    with pytest.raises(MeshInputError, match="does not exist"):
        read_model_config(tmp_path / "nope")
    (tmp_path / "f").write_text("x")
    with pytest.raises(MeshInputError, match="is a file"):
        read_model_config(tmp_path / "f")


def test_good_directory_loads_and_matches(good):
    model = MeshGenerator.from_pretrained(good)
    ref = _tiny()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values(), strict=True))


@pytest.mark.parametrize("brk", [_break_weights_truncated, _break_config_unknown_class, _break_other_shape],
                         ids=lambda f: f.__name__[7:])
def test_cli_generate_with_broken_checkpoint_exits_2_with_one_line(brk, good, tmp_path):
    d = _copy(good, tmp_path)
    brk(d)
    pts = tmp_path / "p.npy"
    np.save(pts, np.random.default_rng(0).random((200, 3)).astype(np.float32))
    out = tmp_path / "o.obj"
    proc = subprocess.run([sys.executable, "-m", "meshgen.cli", "generate", str(pts), "-o", str(out),
                           "--checkpoint", str(d)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(d) in lines[0] and "Traceback" not in proc.stderr
    assert not out.exists()


# ---- single weight files ----------------------------------------------------------------------------------
class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pickled_objects_are_refused_without_unsafe_advice(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"a": _Evil()}, path)  # the real-world case: torch.save of a model object, not a state dict
    with pytest.raises(MeshInputError) as info:
        read_state_dict(path)
    msg = str(info.value)
    assert "pickled objects" in msg and "weights_only=False" not in msg and "\n" not in msg
    raw = tmp_path / "raw.pth"
    with open(raw, "wb") as fh:
        pickle.dump({"a": _Evil()}, fh)
    with pytest.raises(MeshInputError, match="never loaded") as info:
        read_state_dict(raw)
    assert "weights_only=False" not in str(info.value)


@pytest.mark.parametrize("payload", [b"\x00" * 10, b"random bytes that are not a checkpoint" * 10])
def test_random_bytes_pth_is_refused(payload, tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(payload)
    with pytest.raises(MeshInputError) as info:
        read_state_dict(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_plain_state_dict_pth_and_wrapper_are_read(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {"a": torch.ones(2)}}, path)
    assert torch.equal(read_state_dict(path)["a"], torch.ones(2))


def test_check_state_dict_names_missing_unexpected_and_shapes(tmp_path):
    exp = {"a": torch.zeros(2), "b": torch.zeros(3)}
    check_state_dict(exp, {"a": torch.ones(2), "b": torch.ones(3)}, tmp_path)
    with pytest.raises(MeshInputError, match=r"1 missing tensors \(e.g. b\).*1 unexpected.*") as info:
        check_state_dict(exp, {"a": torch.ones(2), "c": torch.ones(1)}, tmp_path)
    assert "\n" not in str(info.value)
    with pytest.raises(MeshInputError, match=r"shape mismatches \(e.g. b: \(4,\) vs \(3,\)\)"):
        check_state_dict(exp, {"a": torch.ones(2), "b": torch.ones(4)}, tmp_path)
