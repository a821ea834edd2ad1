"""The numpy-only mesh path (``load_mesh_arrays``, ``tokenizers3d.meshfile``, ``mesh_info``, array writers) gives
what the trimesh path gives: the same canonical meshes, token ids, mesh info and error messages; and
``meshgen info`` / ``tokenize`` / ``detokenize`` load neither trimesh nor SciPy."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

import tokenizers3d.io as tio
from tokenizers3d.base import get_tokenizer
from tokenizers3d.errors import MeshInputError
from tokenizers3d.io import load_mesh, load_mesh_arrays, mesh_bytes, save_mesh
from tokenizers3d.mesh import ArrayMesh, canonicalize, normalize
from tokenizers3d.meshfile import _triangulate, read_mesh_file
from tokenizers3d.metrics import is_edge_manifold, mesh_info
from tokenizers3d.tokenfile import load_tokens, save_tokens

ROOT = Path(__file__).resolve().parents[1]
ASSETS = sorted(p for p in (ROOT / "assets").rglob("*") if p.suffix in tio.MESH_SUFFIXES)


# ---- reference: mesh_info as it was computed with trimesh ----------------------------------------------------
def trimesh_info(mesh: trimesh.Trimesh) -> dict:
    n_comp = len(trimesh.graph.connected_components(mesh.face_adjacency, nodes=np.arange(len(mesh.faces))))
    euler = int(mesh.euler_number)
    watertight = bool(mesh.is_watertight)
    lo, hi = np.asarray(mesh.bounds)
    counts = np.bincount(mesh.edges_unique_inverse, minlength=len(mesh.edges_unique))
    return {
        "faces": int(len(mesh.faces)), "vertices": int(len(mesh.vertices)),
        "bounds_min": [float(x) for x in lo], "bounds_max": [float(x) for x in hi],
        "extent": [float(x) for x in hi - lo], "area": float(mesh.area), "watertight": watertight,
        "winding_consistent": bool(mesh.is_winding_consistent), "edge_manifold": bool(counts.max(initial=0) <= 2),
        "edges": int(len(mesh.edges_unique)), "open_edges": int((counts == 1).sum()), "components": n_comp, "euler_characteristic": euler,
        "genus": (2 * n_comp - euler) // 2 if watertight else None,
    }


def outcome(read, path, **kw):
    """``read(path)`` or the MeshInputError message."""
    try:
        return read(path, **kw)
    except MeshInputError as exc:
        return f"error: {exc}"


def assert_same_mesh(path, *, fast: bool = True, max_faces=None):
    """Both paths give the same canonical mesh, tokens and info (and, before clean-up, the same triangles)."""
    if fast:
        assert read_mesh_file(path, max_faces=max_faces) is not None, f"{path} was not read by numpy"
    ref, got = outcome(load_mesh, path, max_faces=max_faces), outcome(load_mesh_arrays, path, max_faces=max_faces)
    if isinstance(ref, str) or isinstance(got, str):
        assert got == ref, path
        return
    assert isinstance(ref, trimesh.Trimesh) and isinstance(got, ArrayMesh)
    assert np.array_equal(got.vertices, ref.vertices) and got.vertices.dtype == np.float64, path
    assert np.array_equal(got.faces, ref.faces) and got.faces.dtype == np.int64, path
    assert mesh_info(got) == trimesh_info(ref) == mesh_info(ref), path
    tok = get_tokenizer("blocks", bits=8)
    a, b = tok.encode(ref, source=path), tok.encode(got, source=path)
    assert np.array_equal(a.ids, b.ids) and a.normalization == b.normalization, path
    raw_ref, raw_got = load_mesh(path, clean=False, max_faces=max_faces), load_mesh_arrays(path, clean=False, max_faces=max_faces)
    assert np.array_equal(raw_got.vertices[raw_got.faces], raw_ref.vertices[raw_ref.faces]), path  # same triangles, in order


# ---- files in many forms ---------------------------------------------------------------------------------------
def polygon_meshes() -> dict[str, tuple[np.ndarray, list[list[int]]]]:
    """Name -> (vertices, polygons): quads only, triangles only, and a mix with pentagons and hexagons."""
    cube = np.array([[x, y, z] for x in (0, 1) for y in (0, 2) for z in (0, 3)], dtype=np.float64)
    quads = [[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]]
    ang = np.linspace(0, 2 * np.pi, 6)[:-1]
    prism = np.vstack([np.c_[np.cos(ang), np.sin(ang), np.zeros(5)], np.c_[np.cos(ang), np.sin(ang), np.full(5, 1.5)]])
    mixed = [[4, 3, 2, 1, 0], [5, 6, 7, 8, 9]]  # pentagons, then sides: three as two triangles, two as quads
    mixed += [t for i in range(3) for t in ([i, i + 1, i + 6], [i, i + 6, i + 5])] + [[3, 4, 9, 8], [4, 0, 5, 9]]
    six = np.linspace(0, 2 * np.pi, 7)[:-1]
    hexa = np.vstack([np.c_[np.cos(six), np.sin(six), np.zeros(6)], [[0, 0, 0.7]]])
    hexa_polys = [[5, 4, 3, 2, 1, 0]] + [[i, (i + 1) % 6, 6] for i in range(6)]
    torus = trimesh.creation.torus(1.0, 0.35, major_sections=12, minor_sections=8)
    rng = np.random.default_rng(3)
    grid = np.array([[x, y, rng.normal() * 0.1] for y in range(5) for x in range(6)], dtype=np.float64)
    grid_quads = [[y * 6 + x, y * 6 + x + 1, (y + 1) * 6 + x + 1, (y + 1) * 6 + x] for y in range(4) for x in range(5)]
    return {
        "cube": (cube, quads), "prism": (prism, mixed), "hexagon": (hexa, hexa_polys),
        "torus": (np.asarray(torus.vertices), np.asarray(torus.faces).tolist()), "grid": (grid, grid_quads),
    }


def obj_text(vertices, polys, *, refs="v", negative=False, objects=0, interleave=False, crlf=False,
             comments=False) -> str:
    """An OBJ file of ``polys``; ``refs``: v, v/t, v/t/n or v//n; ``objects``: split into this many o/g blocks."""
    n = len(vertices)
    vline = [f"v {x!r} {y!r} {z!r}" for x, y, z in np.asarray(vertices).tolist()]
    extra = []
    if "t" in refs:
        extra += [f"vt {u} {v}" for u, v in ((0, 0), (1, 0), (1, 1), (0, 1))]
    if "n" in refs:
        extra += ["vn 0 0 1", "vn 0 1 0"]

    def ref(i, k, defined):
        v = (i - defined) if negative else i + 1
        t, nn = k % 4 + 1, k % 2 + 1
        return {"v": f"{v}", "v/t": f"{v}/{t}", "v/t/n": f"{v}/{t}/{nn}", "v//n": f"{v}//{nn}"}[refs]

    lines = ["# written by test_fast_io", ""] if comments else []
    lines += extra
    blocks = np.array_split(np.arange(len(polys)), max(objects, 1))
    defined = 0
    if not interleave:
        lines += vline
        defined = n
    for b, idx in enumerate(blocks):
        if objects:
            lines += [f"o part{b}", f"g group{b}", "s 1" if b % 2 else "s off"]
        if interleave:  # each block defines the vertices it is the first to use
            need = max((max(polys[i]) for i in idx), default=-1) + 1
            lines += vline[defined:max(need, defined)]
            defined = max(need, defined)
        for i in idx:
            lines.append("f " + " ".join(ref(c, k, defined) for k, c in enumerate(polys[i])))
            if comments and i % 3 == 0:
                lines.append("# a comment line")
    if interleave:
        lines += vline[defined:]
    return ("\r\n" if crlf else "\n").join(lines) + "\n"


PLY_TYPES = {"f4": "float", "f8": "double", "i4": "int", "u4": "uint", "u1": "uchar", "i2": "short", "u2": "ushort"}


def ply_bytes(vertices, polys, *, fmt="binary_little_endian", vtype="f4", itype="i4", ctype="u1",
              extras=False) -> bytes:
    """A PLY file of ``polys`` (any sizes); ``extras``: normals and colours, a face colour, a material element."""
    order = ">" if fmt == "binary_big_endian" else "<"
    vertices = np.asarray(vertices)
    header = ["ply", f"format {fmt} 1.0", "comment made by test_fast_io", f"element vertex {len(vertices)}"]
    header += [f"property {PLY_TYPES[vtype]} {c}" for c in "xyz"]
    if extras:
        header += ["property float nx", "property float ny", "property float nz", "property uchar red"]
        header += ["element material 2", "property float shine", "property int id"]
    header += [f"element face {len(polys)}"]
    if extras:
        header += ["property uchar red"]
    header += [f"property list {PLY_TYPES[ctype]} {PLY_TYPES[itype]} vertex_indices"]
    if extras:
        header += ["property int label"]
    header += ["end_header"]
    head = ("\n".join(header) + "\n").encode()
    if fmt == "ascii":
        rows = []
        for v in vertices.astype(vtype).tolist():
            rows.append(" ".join(repr(x) for x in v) + (" 0 0 1 7" if extras else ""))
        if extras:
            rows += ["0.5 1", "0.25 2"]
        for k, p in enumerate(polys):
            rows.append((f"{k % 256} " if extras else "") + f"{len(p)} " + " ".join(map(str, p)) + (f" {k}" if extras else ""))
        return head + ("\n".join(rows) + "\n").encode()
    body = b""
    for v in vertices.astype(vtype):
        body += v.astype(order + vtype).tobytes()
        if extras:
            body += np.array([0, 0, 1], dtype=order + "f4").tobytes() + b"\x07"
    if extras:
        body += struct.pack(order + "fi", 0.5, 1) + struct.pack(order + "fi", 0.25, 2)
    for k, p in enumerate(polys):
        if extras:
            body += bytes([k % 256])
        body += np.array([len(p)], dtype=order + ctype).tobytes() + np.asarray(p, dtype=order + itype).tobytes()
        if extras:
            body += np.array([k], dtype=order + "i4").tobytes()
    return head + body


def off_text(vertices, polys, *, colors=False) -> str:
    lines = ["COFF" if colors else "OFF", f"{len(vertices)} {len(polys)} 0"]
    lines += [" ".join(repr(x) for x in v) + (" 255 0 0 255" if colors else "") for v in np.asarray(vertices).tolist()]
    lines += [f"{len(p)} " + " ".join(map(str, p)) for p in polys]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("path", ASSETS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_asset_reads_the_same(path):
    assert_same_mesh(path)


@pytest.mark.parametrize("name", ["box", "icosphere", "cylinder", "torus", "capsule"])
def test_trimesh_exports_read_the_same(tmp_path, name):
    mesh = {"box": lambda: trimesh.creation.box(extents=(2.0, 1.0, 0.5)),
            "icosphere": lambda: trimesh.creation.icosphere(subdivisions=2, radius=3.0),
            "cylinder": lambda: trimesh.creation.cylinder(radius=0.3, height=2.0, sections=17),
            "torus": lambda: trimesh.creation.torus(1.0, 0.25),
            "capsule": lambda: trimesh.creation.capsule(height=1.0, radius=0.4)}[name]()
    mesh.apply_translation([3.0, -1.5, 100.0])
    files = {"m.obj": mesh.export(file_type="obj"), "m.ply": mesh.export(file_type="ply"),
             "a.ply": mesh.export(file_type="ply", encoding="ascii"), "m.stl": mesh.export(file_type="stl"),
             "a.stl": mesh.export(file_type="stl_ascii"), "m.off": mesh.export(file_type="off")}
    for fname, data in files.items():
        path = tmp_path / fname
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        assert_same_mesh(path)


@pytest.mark.parametrize("name", sorted(polygon_meshes()))
def test_obj_forms_read_the_same(tmp_path, name):
    vertices, polys = polygon_meshes()[name]
    forms = {
        "plain": {}, "negative": {"negative": True}, "texture": {"refs": "v/t"}, "full": {"refs": "v/t/n"},
        "normals": {"refs": "v//n"}, "objects": {"objects": 3}, "crlf-comments": {"crlf": True, "comments": True},
        "objects-interleaved": {"objects": 2, "interleave": True},
        "negative-texture-objects": {"negative": True, "refs": "v/t/n", "objects": 2},
    }
    for form, kw in forms.items():
        path = tmp_path / f"{name}-{form}.obj"
        path.write_text(obj_text(vertices, polys, **kw), newline="")
        assert_same_mesh(path)
    # relative indices into vertices defined later in the file: trimesh counts back from the last vertex of the
    # file, not of the line; the numpy reader leaves such files to trimesh
    text = obj_text(vertices, polys, negative=True, objects=2, interleave=True)
    path = tmp_path / f"{name}-negative-interleaved.obj"
    path.write_text(text)
    interleaved = text.rfind("\nv ") > text.find("\nf ")
    assert (read_mesh_file(path) is None) == interleaved
    assert_same_mesh(path, fast=not interleaved)


@pytest.mark.parametrize("name", sorted(polygon_meshes()))
def test_ply_and_off_forms_read_the_same(tmp_path, name):
    vertices, polys = polygon_meshes()[name]
    forms = {
        "le": {}, "be": {"fmt": "binary_big_endian"}, "ascii": {"fmt": "ascii"},
        "double-uint": {"vtype": "f8", "itype": "u4", "ctype": "u2"},
        "extras": {"extras": True}, "ascii-extras": {"fmt": "ascii", "extras": True, "vtype": "f8"},
        "be-extras": {"fmt": "binary_big_endian", "extras": True, "itype": "u4"},
    }
    uniform = len({len(p) for p in polys}) == 1
    for form, kw in forms.items():
        if not uniform and kw.get("fmt") != "ascii":
            continue  # trimesh reads binary PLY lists with the first row's length: mixed polygons are unreadable
        path = tmp_path / f"{name}-{form}.ply"
        path.write_bytes(ply_bytes(vertices, polys, **kw))
        assert_same_mesh(path)
    readable = uniform or max(map(len, polys)) <= 4  # trimesh fails on other OFF polygon mixes
    for colors in (False, True):
        path = tmp_path / f"{name}-{colors}.off"
        path.write_text(off_text(vertices, polys, colors=colors))
        assert_same_mesh(path, fast=readable)


def test_triangulation_matches_trimesh():
    rng = np.random.default_rng(0)
    for _ in range(50):
        sizes = rng.choice([3, 4, 5, 6, 9], size=rng.integers(1, 12), p=[0.4, 0.3, 0.1, 0.1, 0.1])
        polys = [list(rng.integers(0, 100, size=s)) for s in sizes]
        corners = np.concatenate(polys)
        ref = trimesh.geometry.triangulate_quads(polys if len(set(sizes)) > 1 else np.array(polys))
        assert np.array_equal(_triangulate(sizes, corners), ref)
    assert np.array_equal(_triangulate([4, 3, 5], np.arange(12), in_order=True),
                          [[0, 1, 2], [2, 3, 0], [4, 5, 6], [7, 8, 9], [7, 9, 10], [7, 10, 11]])


# ---- the same refusals -----------------------------------------------------------------------------------------
OBJ_V = "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\n"
PLY_HEAD = b"ply\nformat ascii 1.0\nelement vertex 4\nproperty float x\nproperty float y\nproperty float z\n"
BOX = trimesh.creation.box()


def _bad_files() -> dict[str, bytes | None]:
    tetra = [[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]]
    binary = ply_bytes(np.eye(4, 3), tetra)
    stl = BOX.export(file_type="stl")
    return {
        "missing.obj": None, "empty.ply": b"", "x.foo": b"abc", "garbage.stl": b"\x00\x01garbage" * 3,
        "garbage.ply": b"not a ply file\n" * 3, "garbage.off": b"OFF\nfoo bar\n", "garbage.obj": b"hello world\n",
        "index-zero.obj": (OBJ_V + "f 1 2 3\nf 0 2 3\nf 1 3 4\n").encode(),
        "index-beyond.obj": (OBJ_V + "f 1 2 3\nf 1 2 9\n").encode(),
        "relative-beyond.obj": (OBJ_V + "f 1 2 3\nf -1 -2 -7\n").encode(),
        "cut-face.obj": (OBJ_V + "f 1 2 3\nf 1 2").encode(),
        "cut-reference.obj": (OBJ_V + "vt 0 0\nf 1/1 2/1 3/1\nf 1/1 2/1 4/").encode(),
        "cut-vertex.obj": (OBJ_V + "f 1 2 3\nv 1 2").encode(),
        "mixed-references.obj": (OBJ_V + "vt 0 0\nf 1/1 2/1 3\nf 1 2 4\n").encode(),
        "two-corners.obj": (OBJ_V + "f 1 2\nf 1 2 3\n").encode(),
        "short-vertex.obj": b"v 0 0 0\nv 1 0\nv 0 1 0\nv 0 0 1\nf 1 3 4\n",
        "huge.obj": (OBJ_V.replace("v 0 0 1", "v 0 0 1e308") + "f 1 2 3\nf 1 2 4\n").encode(),
        "just-too-big.obj": (OBJ_V.replace("v 1 0 0", "v 2e30 0 0") + "f 1 2 3\n").encode(),
        "flat.obj": b"v 1 1 1\nv 1 1 1\nv 1 1 1\nf 1 2 3\n",
        "collinear.obj": b"v 0 0 0\nv 1 1 1\nv 2 2 2\nf 1 2 3\n",
        "nan.obj": b"v 0 0 0\nv nan 0 0\nv 0 1 0\nf 1 2 3\n",
        "points.obj": OBJ_V.encode(), "comments-only.obj": b"# nothing here\n",
        "points.ply": PLY_HEAD + b"end_header\n0 0 0\n1 1 1\n0 1 0\n1 0 0\n",
        "points-binary.ply": b"ply\nformat binary_little_endian 1.0\nelement vertex 2\nproperty float x\nproperty float y\n"
                             b"property float z\nend_header\n" + np.zeros(6, "<f4").tobytes(),
        "no-vertices.ply": b"ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nproperty float y\n"
                           b"property float z\nend_header\n",
        "cut-binary.ply": binary[:-5], "long-binary.ply": binary + b"\0\0\0\0",
        "cut-ascii.ply": PLY_HEAD + b"element face 1\nproperty list uchar int vertex_indices\nend_header\n0 0 0\n1 0 0\n",
        "bad-index.ply": PLY_HEAD + b"element face 1\nproperty list uchar int vertex_indices\nend_header\n"
                         b"0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 1 7\n",
        "nan.ply": PLY_HEAD + b"element face 1\nproperty list uchar int vertex_indices\nend_header\n"
                   b"0 0 0\n1 nan 0\n0 1 0\n0 0 1\n3 0 1 2\n",
        "flat.ply": PLY_HEAD + b"element face 1\nproperty list uchar int vertex_indices\nend_header\n"
                    b"1 1 1\n1 1 1\n1 1 1\n1 1 1\n3 0 1 2\n",
        "huge.ply": ply_bytes(np.eye(4, 3) * 1e31, tetra, vtype="f8"),
        "zero-faces.stl": stl[:80] + b"\0\0\0\0",
        "cut.stl": stl[:-7],
        "huge.stl": BOX.export(file_type="stl_ascii").replace("0.5", "1e31", 1).encode(),
        "beyond.off": b"OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 5\n",
        "cut.off": b"OFF\n4 1 0\n0 0 0\n1 0 0\n0 1 0\n",
        "flat.off": b"OFF\n3 1 0\n1 1 1\n1 1 1\n1 1 1\n3 0 1 2\n",
        "no-faces.off": b"OFF\n3 0 0\n0 0 0\n1 0 0\n0 1 0\n",
    }


@pytest.mark.parametrize("name", sorted(_bad_files()))
def test_bad_files_are_refused_the_same_way(tmp_path, name):
    data = _bad_files()[name]
    path = tmp_path / name
    if data is not None:
        path.write_bytes(data)
    ref = outcome(load_mesh, path)
    assert isinstance(ref, str) and name in ref, ref  # every case is refused by the trimesh path, naming the file
    assert outcome(load_mesh_arrays, path) == ref


def test_unused_vertices_are_not_checked(tmp_path):
    """trimesh keeps only the OBJ vertices faces use; an unused NaN vertex is no error on either path."""
    path = tmp_path / "unused-nan.obj"
    path.write_text("v 0 0 0\nv nan 0 0\nv 0 1 0\nv 1 0 0\nf 1 4 3\n")
    assert_same_mesh(path)
    assert len(load_mesh_arrays(path, clean=False).vertices) == 3


def test_directory_and_face_limits_the_same(tmp_path, monkeypatch):
    (tmp_path / "folder.obj").mkdir()
    assert outcome(load_mesh_arrays, tmp_path / "folder.obj") == outcome(load_mesh, tmp_path / "folder.obj")
    vertices, polys = polygon_meshes()["prism"]
    grid = polygon_meshes()["grid"]
    files = {"p.obj": obj_text(vertices, polys).encode(), "p.ply": ply_bytes(vertices, polys, fmt="ascii"),
             "g.off": off_text(*grid).encode(), "b.stl": BOX.export(file_type="stl"),
             "b.ply": BOX.export(file_type="ply")}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        for limit in (5, 10, 11, 12, 100):
            assert_same_mesh(tmp_path / name, max_faces=limit, fast=False)
    monkeypatch.setattr(tio, "MAX_MESH_FACES", 10)  # the default limit is read when called
    for name in files:
        assert outcome(load_mesh_arrays, tmp_path / name) == outcome(load_mesh, tmp_path / name)
        assert "more than the limit of 10" in outcome(load_mesh_arrays, tmp_path / name)


def test_unusual_files_go_to_trimesh(tmp_path):
    """What the numpy readers leave to trimesh still reads the same (through trimesh)."""
    scene = trimesh.Scene([BOX, trimesh.creation.icosphere().apply_translation([3, 0, 0])])
    tex = "mtllib m.mtl\n" + OBJ_V + "usemtl a\nf 1 2 3\nusemtl b\nf 1 2 4\nf 1 3 4\nusemtl a\nf 2 3 4\n"
    uv_ply = PLY_HEAD + b"property float u\nproperty float v\n"
    cases = {
        "scene.glb": scene.export(file_type="glb"),
        "materials.obj": tex.encode(),
        "tabs.obj": (OBJ_V + "f\t1 2 3\nf 1 2 4\n").encode(),
        "face-comment.obj": (OBJ_V + "f 1 2 3 # first\nf 1 2 4\n").encode(),
        "continued.obj": (OBJ_V + "f 1 2 \\\n3\nf 1 2 4\n").encode(),
        "lines.obj": (OBJ_V + "l 1 2\nf 1 2 3\n").encode(),
        "uv.ply": uv_ply.replace(b"property float x\n", b"property float x\n", 1)
        .replace(b"property float v\n", b"property float v\nelement face 1\nproperty list uchar int vertex_indices\n")
        + b"end_header\n0 0 0 0 0\n1 0 0 1 0\n0 1 0 0 1\n0 0 1 1 1\n3 0 1 2\n",
        "comment.off": b"OFF\n# a comment\n4 2 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 1 2\n3 0 1 3\n",
        "two-solids.stl": (BOX.export(file_type="stl_ascii") + "\n" + BOX.export(file_type="stl_ascii")).encode(),
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        assert read_mesh_file(path) is None, name
        assert_same_mesh(path, fast=False)


# ---- mesh_info -------------------------------------------------------------------------------------------------
def _info_cases() -> dict[str, trimesh.Trimesh]:
    box = trimesh.creation.box()
    two = trimesh.util.concatenate([box, trimesh.creation.box().apply_translation([3, 0, 0])])
    flipped = box.copy()
    flipped.faces[0] = flipped.faces[0][::-1]
    fin = trimesh.Trimesh(np.vstack([box.vertices, [[0.5, 0.5, 2.0]]]),
                          np.vstack([box.faces, [box.faces[0][0], box.faces[0][1], 8]]), process=False)
    unused = trimesh.Trimesh(np.vstack([box.vertices, [[9.0, 9, 9]]]), box.faces, process=False)
    degenerate = trimesh.Trimesh(box.vertices, np.vstack([box.faces, [[0, 0, 1]]]), process=False)
    return {
        "box": box, "open": trimesh.Trimesh(box.vertices, box.faces[1:], process=False), "two": two,
        "flipped": flipped, "non-manifold": fin, "unused": unused, "degenerate": degenerate,
        "torus": trimesh.creation.torus(1.0, 0.3), "annulus": trimesh.creation.annulus(0.5, 1.0, 0.3),
        "one-face": trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]], process=False),
        "strip": trimesh.Trimesh(np.random.default_rng(1).random((400, 3)),
                                 np.array([[i, i + 1, i + 2] for i in range(398)]), process=False),
    }


@pytest.mark.parametrize("name", sorted(_info_cases()))
def test_mesh_info_is_trimesh_s(name):
    mesh = _info_cases()[name]
    expected = trimesh_info(mesh)
    assert mesh_info(mesh) == expected
    assert mesh_info(ArrayMesh(np.asarray(mesh.vertices), np.asarray(mesh.faces))) == expected
    assert is_edge_manifold(mesh) == expected["edge_manifold"]


# ---- the light mesh type and the writers ----------------------------------------------------------------------
def test_array_mesh_goes_through_the_pipeline_in_kind():
    mesh = trimesh.creation.icosphere(subdivisions=1)
    labels = np.arange(len(mesh.faces)) % 3
    arrays = ArrayMesh(np.asarray(mesh.vertices), np.asarray(mesh.faces))
    got, ref = canonicalize(arrays, labels=labels), canonicalize(mesh, labels=labels)
    assert isinstance(got, ArrayMesh) and isinstance(ref, trimesh.Trimesh)
    assert np.array_equal(got.vertices, ref.vertices) and np.array_equal(got.faces, ref.faces)
    assert np.array_equal(got.face_attributes["label"], ref.face_attributes["label"])
    unit, norm = normalize(got)
    assert isinstance(unit, ArrayMesh) and np.array_equal(unit.face_attributes["label"], got.face_attributes["label"])
    back = got.to_trimesh()
    assert isinstance(back, trimesh.Trimesh) and np.array_equal(back.face_attributes["label"], got.face_attributes["label"])
    for name in ("coords", "adjacent", "blocks"):
        tok = get_tokenizer(name, bits=9)
        assert np.array_equal(tok.encode(arrays).ids, tok.encode(mesh).ids)


def test_writers_write_the_same_bytes_without_trimesh(tmp_path):
    mesh = canonicalize(trimesh.creation.icosphere(subdivisions=2).apply_translation([1e3, 0, -2]))
    arrays = ArrayMesh(np.asarray(mesh.vertices), np.asarray(mesh.faces))
    assert mesh_bytes(arrays, ".ply") == mesh_bytes(mesh, ".ply") == mesh.export(file_type="ply")
    assert mesh_bytes(arrays, ".obj") == mesh_bytes(mesh, ".obj")
    labels = np.arange(len(mesh.faces)) % 4
    assert mesh_bytes(arrays, ".ply", face_labels=labels) == mesh_bytes(mesh, ".ply", face_labels=labels)
    for ext in (".glb", ".stl", ".off"):  # written by trimesh, from arrays too
        assert mesh_bytes(arrays, ext) == mesh_bytes(mesh, ext)
    save_mesh(tmp_path / "m.ply", arrays)
    assert_same_mesh(tmp_path / "m.ply")


def test_decoded_tokens_give_arrays_and_a_trimesh(tmp_path):
    mesh = trimesh.creation.box(extents=(2.0, 1.0, 0.5)).apply_translation([5, 5, 5])
    tok = get_tokenizer("adjacent", bits=8)
    save_tokens(tmp_path / "t.npz", tok.encode(mesh), tok)
    dec = load_tokens(tmp_path / "t.npz").decode()
    assert isinstance(dec.arrays, ArrayMesh) and isinstance(dec.mesh, trimesh.Trimesh)
    assert dec.mesh is dec.mesh  # made once
    assert np.array_equal(dec.mesh.vertices, dec.arrays.vertices) and np.array_equal(dec.mesh.faces, dec.arrays.faces)
    assert np.allclose(dec.mesh.bounds, mesh.bounds, atol=2 / 256)


# ---- the quick commands load neither trimesh nor SciPy -----------------------------------------------------------
HEAVY = ("trimesh", "scipy", "networkx", "torch")
PROBE = ("import sys\nfrom meshgen.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as exc:\n"
         "    assert not exc.code, exc.code\n"
         f"print('HEAVY', *sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")


def run_probe(*args) -> tuple[str, list[str]]:
    """Run ``meshgen ARGS`` in a fresh interpreter: its stdout (without the probe line) and the heavy modules it loaded."""
    proc = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    *out, probe = proc.stdout.strip().splitlines()
    assert probe.startswith("HEAVY"), proc.stdout
    return "\n".join(out), probe.split()[1:]


def test_info_tokenize_detokenize_load_no_trimesh_or_scipy(tmp_path):
    box = ROOT / "assets" / "procedural" / "box.ply"
    out, heavy = run_probe("info", box, "--json")
    assert heavy == []
    assert json.loads(out) == trimesh_info(load_mesh(box))  # what `meshgen info` printed before
    out, heavy = run_probe("tokenize", box, "-o", tmp_path / "t.npz")
    assert heavy == [] and json.loads(out)["faces"] == 12
    ids = load_tokens(tmp_path / "t.npz").ids
    assert np.array_equal(ids, get_tokenizer("coords").encode(load_mesh(box)).ids)
    for ext in (".obj", ".ply"):
        out, heavy = run_probe("detokenize", tmp_path / "t.npz", "-o", tmp_path / f"back{ext}")
        assert heavy == [] and json.loads(out)["faces"] == 12
        decoded = load_tokens(tmp_path / "t.npz").decode().mesh  # what detokenize wrote before: trimesh's PLY
        expected = decoded.export(file_type="ply") if ext == ".ply" else mesh_bytes(decoded, ext)
        assert (tmp_path / f"back{ext}").read_bytes() == expected
