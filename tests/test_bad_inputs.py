"""Bad token files and bad meshes: `meshgen detokenize` / `meshgen tokenize` exit 2 with one stderr line naming the
file, no traceback and no output; size limits; what is accepted (old token files, tiny meshes, relative OBJ indices).

The CLI runs in-process (``meshgen.cli.main``) to keep the tests fast; one test runs the real command.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import trimesh

import tokenizers3d.io as tio
from meshgen.cli import main
from tokenizers3d.base import get_tokenizer
from tokenizers3d.errors import MeshInputError
from tokenizers3d.io import load_mesh, load_point_cloud
from tokenizers3d.mesh import MAX_COORDINATE, canonicalize
from tokenizers3d.tokenfile import FORMAT_VERSION, checksum, load_tokens, save_tokens

TETRA_V = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
TETRA_F = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
OBJ_V = "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\n"


def run(capsys, *args) -> tuple[int, str, str]:
    """``meshgen ARGS`` in this process: exit code, stdout, stderr."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(capsys, bad, out, *args, match: str):
    """Exit 2, exactly one stderr line naming ``bad`` and matching ``match``, no traceback, nothing written."""
    code, _, err = run(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert bad.name in lines[0] and "Traceback" not in err, err
    assert match.lower() in lines[0].lower(), lines[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary file left


# ---- token files ---------------------------------------------------------------------------------------------
@pytest.fixture
def good_tokens(tmp_path):
    """A coords token file of a box at 8 bits (12 faces: ids = BOS + 108 + EOS)."""
    mesh = trimesh.creation.box(extents=(2.0, 1.0, 0.5))
    tok = get_tokenizer("coords", bits=8)
    path = tmp_path / "good.npz"
    save_tokens(path, tok.encode(mesh), tok, source_faces=12)
    return path


def entries(path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def write_entries(path, data: dict, **changes) -> None:
    data = {**data, **changes}
    np.savez(path, **{k: v for k, v in data.items() if v is not None})


def resign(data: dict) -> dict:
    """Recompute the checksum after an edit (a forged but self-consistent file)."""
    meta = json.loads(str(data["meta"]))
    meta["sha256"] = checksum(data["ids"], str(data["tokenizer"]), str(data["normalization"]), meta)
    return {**data, "meta": np.array(json.dumps(meta))}


def js(obj) -> np.ndarray:
    return np.array(json.dumps(obj))


NORM = {"center": [0.0, 0.0, 0.0], "scale": 2.0}
TOKEN_CASES = {  # name -> (changes to the good file's entries, expected words)
    "missing-ids": ({"ids": None}, "missing ids"),
    "missing-normalization": ({"normalization": None}, "missing normalization"),
    "tokenizer-not-json": ({"tokenizer": np.array("{coords")}, "not valid JSON"),
    "tokenizer-not-text": ({"tokenizer": np.arange(3)}, "not a JSON string"),
    "tokenizer-unknown": ({"tokenizer": js({"name": "nosuch", "bits": 8})}, "unknown tokenizer"),
    "tokenizer-bits": ({"tokenizer": js({"name": "coords", "bits": 13})}, "bits must be"),
    "tokenizer-argument": ({"tokenizer": js({"name": "coords", "bits": 8, "colour": 1})}, "bad tokenizer config"),
    "tokenizer-list": ({"tokenizer": js(["coords", 8])}, "JSON object"),
    "scale-nan": ({"normalization": np.array('{"center": [0, 0, 0], "scale": NaN}')}, "scale must be finite"),
    "scale-inf": ({"normalization": np.array('{"center": [0, 0, 0], "scale": Infinity}')}, "scale must be finite"),
    "scale-zero": ({"normalization": js({**NORM, "scale": 0.0})}, "scale must be finite and positive"),
    "scale-negative": ({"normalization": js({**NORM, "scale": -1.0})}, "scale must be finite and positive"),
    "scale-text": ({"normalization": js({**NORM, "scale": "2"})}, "must be a number"),
    "center-nan": ({"normalization": np.array('{"center": [0, NaN, 0], "scale": 1}')}, "center is not finite"),
    "center-short": ({"normalization": js({**NORM, "center": [0, 0]})}, "three numbers"),
    "normalization-keys": ({"normalization": js({"scale": 1.0})}, "keys"),
    "ids-float": ({"ids": np.array([1.0, 2.0])}, "integers"),
    "ids-2d": ({"ids": np.zeros((2, 3), np.uint16)}, "1-D"),
    "ids-negative": ({"ids": np.array([259, -1, 260], np.int32)}, "outside the vocabulary"),
    "ids-too-big": ({"ids": np.array([259, 259, 260], np.int32)}, "outside the vocabulary"),  # vocab 259
    "meta-newer": ({"meta": js({"format": "meshgen-tokens", "version": FORMAT_VERSION + 1})}, "newer"),
    "meta-foreign": ({"meta": js({"format": "something-else"})}, "not a token file"),
}


@pytest.mark.parametrize("name", sorted(TOKEN_CASES))
def test_detokenize_refuses_bad_entries(capsys, tmp_path, good_tokens, name):
    changes, match = TOKEN_CASES[name]
    bad = tmp_path / f"{name}.npz"
    write_entries(bad, entries(good_tokens), **changes)
    out = tmp_path / "out" / "mesh.obj"
    out.parent.mkdir()
    assert_refused(capsys, bad, out, "detokenize", bad, "-o", out, match=match)


def _edit_ids_cut(d):  # cut at a face boundary and re-terminated: a valid, shorter sequence
    return {**d, "ids": np.concatenate([d["ids"][:10], d["ids"][-1:]])}


def _edit_ids_value(d):
    ids = d["ids"].copy()
    ids[5] = (int(ids[5]) + 1) % 256
    return {**d, "ids": ids}


def _edit_meta_faces(d):
    meta = json.loads(str(d["meta"]))
    return {**d, "meta": js({**meta, "n_faces": 11})}


TAMPER_CASES = {
    "cut-at-face-boundary": (_edit_ids_cut, "checksum mismatch"),
    "id-changed": (_edit_ids_value, "checksum mismatch"),
    "normalization-changed": (lambda d: {**d, "normalization": js({**NORM, "scale": 3.0})}, "checksum mismatch"),
    "tokenizer-changed": (lambda d: {**d, "tokenizer": js({"bits": 8, "name": "adjacent"})}, "checksum mismatch"),
    "face-count-changed": (_edit_meta_faces, "checksum mismatch"),
    "face-count-forged": (lambda d: resign(_edit_meta_faces(d)), "decodes to 12 faces, but 11 were written"),
    "cut-and-resigned": (lambda d: resign(_edit_ids_cut(d)), "decodes to 1 faces, but 12"),
}


@pytest.mark.parametrize("name", sorted(TAMPER_CASES))
def test_detokenize_detects_cuts_and_edits(capsys, tmp_path, good_tokens, name):
    edit, match = TAMPER_CASES[name]
    bad = tmp_path / f"{name}.npz"
    write_entries(bad, edit(entries(good_tokens)))
    out = tmp_path / "out" / "mesh.obj"
    out.parent.mkdir()
    assert_refused(capsys, bad, out, "detokenize", bad, "-o", out, match=match)


@pytest.mark.parametrize("kind", ["zero-bytes", "text", "npy", "truncated-zip", "directory"])
def test_detokenize_refuses_files_that_are_not_token_files(capsys, tmp_path, good_tokens, kind):
    bad = tmp_path / f"{kind}.npz"
    if kind == "zero-bytes":
        bad.write_bytes(b"")
    elif kind == "text":
        bad.write_text("ids = 1 2 3\n")
    elif kind == "npy":
        with open(bad, "wb") as fh:
            np.save(fh, np.arange(5))
    elif kind == "truncated-zip":
        bad.write_bytes(good_tokens.read_bytes()[:200])
    else:
        bad.mkdir()
    out = tmp_path / "out" / "mesh.obj"
    out.parent.mkdir()
    assert_refused(capsys, bad, out, "detokenize", bad, "-o", out, match=bad.name)


def test_strict_decoding_errors_name_the_file(capsys, tmp_path, good_tokens):
    data = entries(good_tokens)
    del data["meta"]  # an old file: no checksum, so the sequence itself is checked
    ids = data["ids"].copy()
    ids[4] = 256  # PAD inside the body
    bad = tmp_path / "pad-in-body.npz"
    write_entries(bad, data, ids=ids)
    out = tmp_path / "out" / "mesh.obj"
    out.parent.mkdir()
    assert_refused(capsys, bad, out, "detokenize", bad, "-o", out, match="malformed token sequence")
    empty = tmp_path / "empty-body.npz"
    write_entries(empty, data, ids=np.array([257, 258], np.uint16))
    assert_refused(capsys, empty, out, "detokenize", empty, "-o", out, match="no face could be decoded")


def test_old_token_files_are_read_with_a_warning(capsys, caplog, tmp_path, good_tokens):
    data = entries(good_tokens)
    del data["meta"]
    old = tmp_path / "old.npz"
    write_entries(old, data)
    out = tmp_path / "old.obj"
    with caplog.at_level(logging.WARNING, logger="tokenizers3d.tokenfile"):
        code, stdout, err = run(capsys, "detokenize", old, "-o", out)
    assert code == 0 and json.loads(stdout)["faces"] == 12 and out.exists()
    assert any("old.npz" in r.getMessage() and "no checksum" in r.getMessage() for r in caplog.records)
    tf = load_tokens(old)
    assert not tf.verified and tf.version == 0 and tf.n_faces is None
    assert load_tokens(good_tokens).verified


def test_token_file_round_trip_and_metadata(tmp_path, good_tokens):
    tf = load_tokens(good_tokens)
    assert (tf.version, tf.n_faces, tf.n_vertices, tf.source_faces) == (FORMAT_VERSION, 12, 8, 12)
    dec = tf.decode()
    box = trimesh.creation.box(extents=(2.0, 1.0, 0.5))
    assert np.allclose(np.sort(dec.mesh.vertices, axis=0), np.sort(box.vertices, axis=0), atol=2.0 / 256 / 2 + 1e-12)


def test_tokenize_warns_when_quantization_loses_faces(capsys, caplog, tmp_path):
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    speck = trimesh.Trimesh(TETRA_V * 1e-4 + 0.1, TETRA_F, process=False)  # far below one cell at 6 bits
    src = tmp_path / "speck.obj"
    trimesh.util.concatenate([box, speck]).export(src)
    with caplog.at_level(logging.WARNING, logger="tokenizers3d.tokenfile"):
        code, stdout, _ = run(capsys, "tokenize", src, "--bits", "6", "-o", tmp_path / "s.npz")
    stats = json.loads(stdout)
    assert code == 0 and (stats["faces"], stats["source_faces"]) == (12, 16)
    assert any("speck.obj" in r.getMessage() and "25.0% lost" in r.getMessage() for r in caplog.records)
    caplog.clear()
    trimesh.creation.box().export(tmp_path / "box.obj")
    with caplog.at_level(logging.WARNING, logger="tokenizers3d.tokenfile"):
        assert run(capsys, "tokenize", tmp_path / "box.obj", "--bits", "6", "-o", tmp_path / "b.npz")[0] == 0
    assert not caplog.records


def test_real_command_prints_one_line(tmp_path, good_tokens):
    """Outside pytest's capture: a zero-byte file used to print `Aborted.` with exit 1; an old file warns on stderr."""
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "meshgen.cli", "detokenize", str(empty), "-o", str(tmp_path / "e.obj")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [f"error: {empty}: file is empty"]
    data = entries(good_tokens)
    del data["meta"]
    write_entries(tmp_path / "old.npz", data)
    proc = subprocess.run([sys.executable, "-m", "meshgen.cli", "detokenize", str(tmp_path / "old.npz"), "-o",
                           str(tmp_path / "o.obj")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and len(proc.stderr.strip().splitlines()) == 1 and "no checksum" in proc.stderr


# ---- meshes --------------------------------------------------------------------------------------------------
MESH_CASES = {  # file name -> (OBJ text, expected words)
    "index-zero.obj": (OBJ_V + "f 1 2 3\nf 0 2 3\nf 1 3 4\n", "line 6: face 'f 0 2 3' refers to vertex 0"),
    "index-beyond.obj": (OBJ_V + "f 1 2 3\nf 1 2 9\n", "line 6: face refers to vertex 9, but the file has only 4"),
    "relative-beyond.obj": (OBJ_V + "f 1 2 3\nf -1 -2 -7\n", "refers 7 vertices back, but only 4"),
    "cut-face.obj": (OBJ_V + "f 1 2 3\nf 1 2", "last line 'f 1 2' is incomplete"),
    "cut-reference.obj": (OBJ_V + "vt 0 0\nf 1/1 2/1 3/1\nf 1/1 2/1 4/", "last line 'f 1/1 2/1 4/' is incomplete"),
    "cut-vertex.obj": (OBJ_V + "f 1 2 3\nv 1 2", "last line 'v 1 2' is incomplete"),
    "mixed-references.obj": (OBJ_V + "vt 0 0\nf 1/1 2/1 3\nf 1 2 4\n", "line 6: malformed face"),
    "two-corners.obj": (OBJ_V + "f 1 2\nf 1 2 3\n", "line 5: malformed face 'f 1 2'"),
    "huge.obj": (OBJ_V.replace("v 0 0 1", "v 0 0 1e308") + "f 1 2 3\nf 1 2 4\n", "beyond the supported"),
    "just-too-big.obj": (OBJ_V.replace("v 1 0 0", "v 2e30 0 0") + "f 1 2 3\n", "beyond the supported"),
    "flat.obj": ("v 1 1 1\nv 1 1 1\nv 1 1 1\nf 1 2 3\n", "zero extent"),
    "collinear.obj": ("v 0 0 0\nv 1 1 1\nv 2 2 2\nf 1 2 3\n", "no non-degenerate triangle"),
    "nan.obj": ("v 0 0 0\nv nan 0 0\nv 0 1 0\nf 1 2 3\n", "NaN"),
}


@pytest.mark.parametrize("name", sorted(MESH_CASES))
def test_tokenize_refuses_bad_meshes(capsys, tmp_path, name):
    text, match = MESH_CASES[name]
    bad = tmp_path / name
    bad.write_text(text)
    out = tmp_path / "out" / "t.npz"
    out.parent.mkdir()
    assert_refused(capsys, bad, out, "tokenize", bad, "-o", out, match=match)


def test_obj_forms_that_are_fine(tmp_path):
    cases = {
        "relative.obj": OBJ_V + "f -4 -2 -3\nf -4 -3 -1\n",  # negative indices count back from the last vertex
        "normals.obj": OBJ_V + "vn 0 0 1\nf 1//1 3//1 2//1\nf 1//1 2//1 4//1\n",
        "textured.obj": OBJ_V + "vt 0 0\nvt 1 0\nvn 0 0 1\nf 1/1 3/2 2/1\nf 1/2/1 2/2/1 4/2/1\n",
        "no-final-newline.obj": OBJ_V + "f 1 3 2\nf 1 2 4",
        "polygon.obj": OBJ_V + "f 1 2 3 4\n",
        "crlf.obj": (OBJ_V + "f 1 3 2\nf 1 2 4\n").replace("\n", "\r\n"),
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        assert len(load_mesh(tmp_path / name).faces) == 2, name


def test_tiny_meshes_are_accepted_and_keep_their_shape(capsys, tmp_path):
    for scale in (1e-300, 1e-150, 1e25):
        offset = 3.0 * scale
        mesh = trimesh.Trimesh(TETRA_V * scale + offset, TETRA_F, process=False)
        clean = canonicalize(mesh)
        assert len(clean.faces) == 4, scale
        for name in ("coords", "adjacent", "blocks"):
            enc = get_tokenizer(name, bits=8).encode(mesh)
            assert enc.n_faces == 4 and enc.normalization.scale == pytest.approx(scale)
            back = enc.normalization.invert(get_tokenizer(name, bits=8).decode(enc.ids).vertices)
            assert np.allclose(np.sort(back, axis=0), np.sort(mesh.vertices, axis=0), rtol=0, atol=scale / 256 / 2 * 1.001)
    src = tmp_path / "tiny.obj"
    src.write_text("".join(f"v {x:.17g} {y:.17g} {z:.17g}\n" for x, y, z in TETRA_V * 1e-300) + "f 1 3 2\nf 1 2 4\nf 1 4 3\nf 2 3 4\n")
    code, stdout, err = run(capsys, "tokenize", src, "-o", tmp_path / "tiny.npz")
    assert code == 0 and json.loads(stdout)["faces"] == 4, err
    dec = load_tokens(tmp_path / "tiny.npz").decode()
    assert dec.mesh.extents.max() == pytest.approx(1e-300 * 255 / 256)


def test_the_coordinate_limit_is_inclusive():
    mesh = trimesh.Trimesh(TETRA_V * MAX_COORDINATE, TETRA_F, process=False)
    assert len(canonicalize(mesh).faces) == 4
    with pytest.raises(MeshInputError, match="beyond"):
        canonicalize(trimesh.Trimesh(TETRA_V * MAX_COORDINATE * 1.01, TETRA_F, process=False))


def test_default_face_limit(tmp_path, monkeypatch, capsys):
    path = tmp_path / "box.obj"
    trimesh.creation.box().export(path)
    monkeypatch.setattr(tio, "MAX_MESH_FACES", 10)
    with pytest.raises(MeshInputError, match="at least 12 faces, more than the limit of 10"):
        load_mesh(path)  # refused by the OBJ pre-scan, before trimesh parses the file
    assert len(load_mesh(path, max_faces=12).faces) == 12
    trimesh.creation.box().export(tmp_path / "box.ply")
    with pytest.raises(MeshInputError, match="has 12 faces, more than the limit of 10"):
        load_mesh(tmp_path / "box.ply")
    out = tmp_path / "out" / "t.npz"
    out.parent.mkdir()
    assert_refused(capsys, path, out, "tokenize", path, "-o", out, match="more than the limit of 10")
    assert_refused(capsys, path, out, "tokenize", path, "--max-faces", "5", "-o", out, match="limit of 5")


# ---- point clouds --------------------------------------------------------------------------------------------
def sphere_points(n: int, seed: int = 0) -> np.ndarray:
    p = np.random.default_rng(seed).normal(size=(n, 3))
    return p / np.linalg.norm(p, axis=1, keepdims=True)


@pytest.mark.parametrize("name,points,match", [
    ("huge.npy", np.vstack([sphere_points(50), [[1e308, 0, 0]]]), "beyond the supported"),
    ("one-place.npy", np.full((50, 3), 7.0), "coincide"),
    ("nan.npy", np.vstack([sphere_points(50), [[np.nan, 0, 0]]]), "NaN"),
])
def test_point_clouds_refused(tmp_path, name, points, match):
    np.save(tmp_path / name, points)
    with pytest.raises(MeshInputError, match=match) as err:
        load_point_cloud(tmp_path / name)
    assert name in str(err.value)


@pytest.mark.parametrize("scale", [1e-300, 1e20])
def test_point_clouds_at_any_scale_keep_points_and_outward_normals(tmp_path, scale):
    unit = sphere_points(300)
    np.save(tmp_path / "c.npy", unit * scale + 5 * scale)
    cloud = load_point_cloud(tmp_path / "c.npy")
    assert cloud.points.dtype == np.float64 and np.array_equal(cloud.points, unit * scale + 5 * scale)
    assert (cloud.normals * unit).sum(axis=1).mean() > 0.9  # estimated on the unit-cube copy: outward


def test_large_point_clouds_are_subsampled_deterministically(tmp_path, caplog, monkeypatch):
    pts = sphere_points(5000)
    np.save(tmp_path / "big.npy", np.hstack([pts, pts]))
    with caplog.at_level(logging.WARNING, logger="tokenizers3d.io"):
        a = load_point_cloud(tmp_path / "big.npy", max_points=1000)
    assert len(a) == 1000 and any("5,000 points" in r.getMessage() for r in caplog.records)
    b = load_point_cloud(tmp_path / "big.npy", max_points=1000)
    assert np.array_equal(a.points, b.points)
    assert len(load_point_cloud(tmp_path / "big.npy")) == 5000  # under the default limit
    monkeypatch.setattr(tio, "MAX_CLOUD_POINTS", 2000)
    assert len(load_point_cloud(tmp_path / "big.npy")) == 2000


def test_every_mesh_reading_command_has_a_face_limit_option(capsys, tmp_path):
    path = tmp_path / "box.ply"
    trimesh.creation.box().export(path)
    out = tmp_path / "out" / "x.png"
    out.parent.mkdir()
    code, _, err = run(capsys, "info", path, "--max-faces", "5", "--json")
    assert code == 2 and "limit of 5" in err and len(err.strip().splitlines()) == 1
    assert_refused(capsys, path, out, "preview", path, "--max-faces", "5", "-o", out, match="limit of 5")
    ply = out.with_suffix(".ply")
    assert_refused(capsys, path, ply, "segment", path, "--max-faces", "5", "-o", ply, match="limit of 5")
    obj = out.with_suffix(".obj")
    assert_refused(capsys, path, obj, "generate", path, "--max-input-faces", "5", "-o", obj, match="limit of 5")


def test_generate_subsamples_a_large_cloud_to_max_points(tmp_path):
    from meshgen.pipeline import read_points

    path = tmp_path / "big.npy"
    np.save(path, sphere_points(5000).astype(np.float32))
    cloud = read_points(path, n_points=64, max_points=1000)
    assert len(cloud) == 64 and np.allclose(np.linalg.norm(cloud.points, axis=1), 1.0, atol=1e-5)
