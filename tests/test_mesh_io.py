"""Canonical meshes, normalization, quantization, readers and writers."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tokenizers3d.errors import MeshInputError
from tokenizers3d.io import (
    PointCloud,
    load_mesh,
    load_point_cloud,
    read_ply_face_labels,
    save_mesh,
    save_point_cloud,
)
from tokenizers3d.mesh import (
    Normalization,
    canonical_order,
    canonicalize,
    dequantize,
    normalize,
    prepare,
    quantize,
    quantize_coords,
)


def _box(offset=(0.0, 0.0, 0.0)):
    m = trimesh.creation.box(extents=(2.0, 1.0, 0.5))
    m.apply_translation(offset)
    return m


@pytest.mark.parametrize("ext", [".obj", ".ply", ".stl", ".off", ".glb"])
def test_round_trip_every_format(tmp_path, ext):
    mesh = canonicalize(_box((3.0, -1.0, 2.0)))
    path = tmp_path / f"m{ext}"
    save_mesh(path, mesh)
    back = load_mesh(path)
    assert len(back.faces) == 12 and len(back.vertices) == 8
    a = sorted(map(tuple, np.round(mesh.triangles.reshape(-1, 9), 5)))
    b = sorted(map(tuple, np.round(back.triangles.reshape(-1, 9), 5)))
    assert a == b  # same triangles, same winding
    assert not list(tmp_path.glob(".*"))  # no temp file left


def test_scene_merged_with_transforms(tmp_path):
    scene = trimesh.Scene()
    scene.add_geometry(_box(), transform=trimesh.transformations.translation_matrix([10, 0, 0]))
    scene.add_geometry(_box(), transform=trimesh.transformations.translation_matrix([-10, 0, 0]))
    path = tmp_path / "scene.glb"
    scene.export(path)
    m = load_mesh(path)
    assert len(m.faces) == 24
    assert m.bounds[0][0] == pytest.approx(-11.0) and m.bounds[1][0] == pytest.approx(11.0)


def test_obj_quads_are_triangulated(tmp_path):
    path = tmp_path / "quad.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nf 1 2 3 4\n")
    m = load_mesh(path)
    assert len(m.faces) == 2 and len(m.vertices) == 4


def test_canonicalize_drops_degenerate_duplicate_unreferenced():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0], [5, 5, 5], [2, 0, 0]], float)
    f = np.array([
        [0, 1, 2],  # good
        [3, 1, 2],  # duplicate of the first after merging vertex 3 into 0
        [2, 1, 0],  # same vertex set, other winding: duplicate
        [0, 0, 1],  # repeated corner
        [0, 1, 5],  # collinear: zero area
    ])
    m = canonicalize(trimesh.Trimesh(v, f, process=False))
    assert len(m.faces) == 1
    assert len(m.vertices) == 3  # (5,5,5) unreferenced and (2,0,0) only used by a dropped face


def test_canonicalize_keeps_labels():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float)
    f = np.array([[0, 1, 2], [0, 0, 1], [0, 1, 3]])
    m = canonicalize(trimesh.Trimesh(v, f, process=False), labels=np.array([7, 8, 9]))
    assert list(m.face_attributes["label"]) == [7, 9]


def test_nan_coordinates_raise(tmp_path):
    path = tmp_path / "nan.obj"
    path.write_text("v 0 0 0\nv nan 0 0\nv 0 1 0\nf 1 2 3\n")
    with pytest.raises(MeshInputError, match="nan.obj.*NaN"):
        load_mesh(path)


@pytest.mark.parametrize(
    "name,content,match",
    [
        ("missing.obj", None, "does not exist"),
        ("empty.obj", b"", "empty"),
        ("x.foo", b"abc", "unknown mesh format"),
        ("garbage.stl", b"\x00\x01garbage" * 3, "cannot parse|corrupt"),
        ("points.ply", b"ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\n"
                       b"property float z\nend_header\n0 0 0\n1 1 1\n", "point cloud"),
    ],
)
def test_bad_input_clear_error(tmp_path, name, content, match):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(MeshInputError, match=match) as err:
        load_mesh(path)
    assert name in str(err.value)


def test_face_limit(tmp_path):
    path = tmp_path / "box.obj"
    save_mesh(path, _box())
    with pytest.raises(MeshInputError, match="more than the limit of 10"):
        load_mesh(path, max_faces=10)


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "out.glb"
    path.write_bytes(b"old")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(trimesh.Trimesh, "export", boom)
    with pytest.raises(RuntimeError):
        save_mesh(path, _box())
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.glb"]


def test_ply_labels_round_trip(tmp_path):
    m = _box()
    labels = np.arange(12) % 3
    save_mesh(tmp_path / "l.ply", m, face_labels=labels)
    assert np.array_equal(read_ply_face_labels(tmp_path / "l.ply"), labels)
    colored = trimesh.load(tmp_path / "l.ply", process=False)
    assert len(np.unique(colored.visual.face_colors[:, :3], axis=0)) == 3


def test_normalization_undone_exactly():
    m = _box((3.0, -7.0, 11.0))
    m.apply_scale([5.0, 1.0, 2.0])
    unit, norm = normalize(m)
    assert np.all(unit.vertices >= -0.5 - 1e-12) and np.all(unit.vertices <= 0.5 + 1e-12)
    assert np.ptp(unit.vertices, axis=0).max() == pytest.approx(1.0)
    assert np.allclose(norm.invert(unit.vertices), m.vertices, atol=1e-12)
    assert Normalization.from_dict(norm.to_dict()) == norm


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, (50, 3), elements=st.floats(-0.5, 0.5)), st.integers(6, 12))
def test_quantization_error_at_most_half_a_cell(points, bits):
    q = quantize_coords(points, bits)
    assert q.min() >= 0 and q.max() < 2**bits
    err = np.abs(dequantize(q, bits) - points)
    assert err.max() <= 0.5 / 2**bits + 1e-12


def test_quantize_merges_vertices_and_orders():
    # two vertices closer than a cell merge; the face they share collapses and is dropped
    v = np.array([[-0.5, -0.5, -0.5], [0.5, -0.5, -0.5], [-0.5, 0.5, -0.5], [-0.5, 0.5, -0.4999], [0.5, 0.5, 0.5]])
    f = np.array([[0, 1, 2], [2, 3, 1], [0, 4, 1]])
    qm = quantize(trimesh.Trimesh(v, f, process=False), 6)
    assert len(qm.vertices) == 4 and qm.n_faces == 2
    zyx = qm.vertices[:, ::-1]
    assert all(tuple(zyx[i]) < tuple(zyx[i + 1]) for i in range(len(zyx) - 1))  # sorted by (z, y, x)
    assert np.all(qm.faces[:, 0] < qm.faces[:, 1:].min(axis=1))  # lowest vertex first
    assert canonical_order(qm).faces.tolist() == qm.faces.tolist()  # idempotent


def test_prepare_keeps_winding():
    m = _box()
    qm, _ = prepare(m, 8)
    back = qm.to_trimesh()
    assert back.is_winding_consistent and back.volume > 0


def test_point_cloud_formats(tmp_path):
    rng = np.random.default_rng(0)
    nrm = rng.normal(size=(400, 3)).astype(np.float32)
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    pts = nrm * 2.0  # points on a sphere of radius 2
    cloud = PointCloud(pts, nrm)
    for ext in (".ply", ".xyz", ".npy"):
        save_point_cloud(tmp_path / f"c{ext}", cloud)
        back = load_point_cloud(tmp_path / f"c{ext}")
        assert np.allclose(back.points, pts, atol=1e-5)
        assert np.allclose(back.normals, nrm, atol=1e-4)
    np.save(tmp_path / "xyz_only.npy", pts)
    est = load_point_cloud(tmp_path / "xyz_only.npy")
    # estimated normals of a sphere point outward
    assert (est.normals * nrm).sum(axis=1).mean() > 0.9


def test_point_cloud_pcd_and_errors(tmp_path):
    import open3d as o3d

    pts = np.random.default_rng(1).random((100, 3))
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    o3d.io.write_point_cloud(str(tmp_path / "c.pcd"), pcd)
    assert len(load_point_cloud(tmp_path / "c.pcd")) == 100
    np.save(tmp_path / "bad.npy", np.zeros((10, 4)))
    with pytest.raises(MeshInputError, match="bad.npy.*N x 3 or N x 6"):
        load_point_cloud(tmp_path / "bad.npy")
    np.save(tmp_path / "nan.npy", np.full((10, 3), np.nan))
    with pytest.raises(MeshInputError, match="NaN"):
        load_point_cloud(tmp_path / "nan.npy")


def test_gltf_with_buffers_loads(tmp_path):
    scene = trimesh.Scene()
    scene.add_geometry(_box(), transform=trimesh.transformations.translation_matrix([0, 5, 0]))
    files = scene.export(file_type="gltf")  # {"model.gltf": ..., "gltf_buffer_*.bin": ...}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    m = load_mesh(tmp_path / "model.gltf")
    assert len(m.faces) == 12 and m.bounds[0][1] == pytest.approx(4.5)
