"""The `meshgen` command: exit codes, one-line errors, tokenize/detokenize round trip."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import trimesh

from tokenizers3d.io import load_mesh


def run_cli(*args, check_rc=0):
    proc = subprocess.run([sys.executable, "-m", "meshgen.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == check_rc, proc.stderr + proc.stdout
    return proc


@pytest.fixture
def box_obj(tmp_path):
    m = trimesh.creation.box(extents=(4.0, 2.0, 1.0))
    m.apply_translation([10.0, -3.0, 5.0])
    path = tmp_path / "box.obj"
    m.export(path)
    return path


def test_help_for_every_subcommand():
    for cmd in ["info", "preview", "dataset", "tokenize", "detokenize", "segment", "generate", "demo"]:
        assert "Usage" in run_cli(cmd, "--help").stdout
    assert "tokenize" in run_cli("batch", "--help").stdout


def test_info_json(box_obj):
    data = json.loads(run_cli("info", box_obj, "--json").stdout)
    assert data["faces"] == 12 and data["watertight"] and data["genus"] == 0
    assert data["extent"] == pytest.approx([4.0, 2.0, 1.0])


@pytest.mark.parametrize("content,match", [(None, "does not exist"), (b"not a mesh", "cannot parse|corrupt")])
def test_bad_input_exit_code_2_one_line(tmp_path, content, match):
    path = tmp_path / "bad.stl"
    if content is not None:
        path.write_bytes(content)
    proc = run_cli("info", path, check_rc=2)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.stl" in lines[0]
    assert any(m in lines[0] for m in match.split("|"))


@pytest.mark.parametrize("tokenizer", ["coords", "adjacent", "blocks"])
def test_tokenize_detokenize_restores_place(tmp_path, box_obj, tokenizer):
    npz = tmp_path / "t.npz"
    stats = json.loads(run_cli("tokenize", box_obj, "-t", tokenizer, "--bits", "10", "-o", npz).stdout)
    assert stats["faces"] == 12 and stats["tokens_per_face"] > 0
    out = tmp_path / "back.obj"
    run_cli("detokenize", npz, "-o", out)
    back, orig = load_mesh(out), load_mesh(box_obj)
    assert len(back.faces) == 12
    # restored to the original frame within half a quantization cell of the longest side (4.0 / 1024 / 2)
    assert np.allclose(np.sort(back.vertices, axis=0), np.sort(orig.vertices, axis=0), atol=4.0 / 1024)


def test_detokenize_rejects_non_token_file(tmp_path):
    bad = tmp_path / "x.npz"
    np.savez(bad, foo=np.zeros(3))
    proc = run_cli("detokenize", bad, "-o", tmp_path / "o.obj", check_rc=2)
    assert "x.npz" in proc.stderr and not (tmp_path / "o.obj").exists()


def test_preview_writes_png(tmp_path, box_obj):
    from PIL import Image

    out = tmp_path / "p.png"
    run_cli("preview", box_obj, "-o", out, "--views", "2", "--size", "64")
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape[1] > img.shape[0] > 16  # two views side by side (the grid is cropped to the mesh)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 4  # shaded, not a blank canvas


def test_dataset_command_writes_split(tmp_path):
    out = tmp_path / "ds"
    run_cli("dataset", "-o", out, "-n", "6", "--workers", "1", "--family", "box", "--family", "pyramid")
    lines = (out / "metadata.jsonl").read_text().splitlines()
    assert len(lines) == 6
    assert {json.loads(x)["family"] for x in lines} <= {"box", "pyramid"}
    assert all((out / json.loads(x)["path"]).exists() for x in lines)


def test_segment_command_outputs(tmp_path):
    a = trimesh.creation.box(extents=(1.0, 1.0, 0.2))
    b = trimesh.creation.box(extents=(0.3, 0.3, 0.6))
    b.apply_translation([0, 0, -0.5])
    path = tmp_path / "two.obj"
    trimesh.util.concatenate([a, b]).export(path)
    out = tmp_path / "seg" / "two.ply"
    res = json.loads(run_cli("segment", path, "-o", out, "--views", "6").stdout)
    labels = np.load(out.with_suffix(".npy"))
    assert res["segments"] == len(np.unique(labels)) >= 2 and len(labels) == 24
    # faces of one box share a label that the other box's faces do not have
    assert set(labels[:12]).isdisjoint(set(labels[12:]))
    assert out.with_suffix(".png").exists()


@pytest.mark.parametrize("args,match", [(["-t", "nosuch"], "unknown tokenizer"), (["--bits", "13"], "bits must be")])
def test_tokenize_bad_settings_exit_2(tmp_path, box_obj, args, match):
    proc = run_cli("tokenize", box_obj, "-o", tmp_path / "t.npz", *args, check_rc=2)
    assert match in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "t.npz").exists()
