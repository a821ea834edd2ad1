"""Segmentation on one-piece meshes: outward orientation, the concave-cut baseline, the part sets (fused,
remeshed, Anny), the `meshgen segment` options and exit codes, the evaluation grid and the mask-model dataset."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import trimesh

from renderers import MeshSegmenter, RenderSettings, SegmentSettings, segment_by_concave_edges
from renderers.masks import GeometricMaskGenerator, get_mask_generator, register_mask_generator
from renderers.part_views import DatasetConfig, write_part_views
from renderers.preview import segmentation_grid
from renderers.render import face_normals_of
from renderers.segment import RevoteSettings
from tokenizers3d.metrics import face_areas, matched_part_iou
from tokenizers3d.orient import orient_outward
from tokenizers3d.part_sets import (
    ANNY_PARTS,
    composite_parts,
    make_shape,
    split_of_seed,
    split_seeds,
)
from tokenizers3d.procedural import generate


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


def inside_out(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    return trimesh.Trimesh(np.asarray(mesh.vertices), np.asarray(mesh.faces)[:, [0, 2, 1]], process=False)


def same_winding(vertices, a, b) -> bool:
    return np.allclose(face_normals_of(vertices, a), face_normals_of(vertices, b))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "meshgen.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


# --------------------------------------------------------------------------------------------- orientation


def test_orient_outward_fixes_inverted_and_mixed_winding():
    rng = np.random.default_rng(0)
    box = trimesh.creation.box()
    cyl = trimesh.creation.cylinder(radius=0.4, height=1.0, sections=12)
    tube = trimesh.Trimesh(cyl.vertices, cyl.faces[np.abs(cyl.face_normals[:, 2]) < 0.5], process=False)  # open
    tube.apply_translation((2.0, 0.0, 0.0))
    both = trimesh.util.concatenate([box, tube])
    # reference: trimesh's primitives are outward; every face flipped at random must come back to them
    for mesh in (box, tube, both):
        faces = np.asarray(mesh.faces).copy()
        flip = rng.random(len(faces)) < 0.5
        faces[flip] = faces[flip][:, [0, 2, 1]]
        assert same_winding(mesh.vertices, orient_outward(mesh.vertices, faces), mesh.faces)
        assert same_winding(mesh.vertices, orient_outward(mesh.vertices, mesh.faces[:, ::-1]), mesh.faces)
        assert np.array_equal(orient_outward(mesh.vertices, mesh.faces), mesh.faces)  # outward: untouched
    pm = generate("mug", 0)  # procedural meshes are outward: nothing changes
    assert np.array_equal(orient_outward(pm.mesh.vertices, pm.mesh.faces), pm.mesh.faces)


def test_inside_out_fused_composite_gives_the_same_segments():
    shape = make_shape("fused", "lamp", 0)
    flipped = inside_out(shape.mesh)
    seg = MeshSegmenter(settings=SegmentSettings(render=RenderSettings(n_views=4, image_size=96)))
    a, b = seg.segment(shape.mesh), seg.segment(flipped)
    assert np.array_equal(a.labels, b.labels) and a.n_segments >= 2
    assert np.array_equal(segment_by_concave_edges(shape.mesh).labels, segment_by_concave_edges(flipped).labels)
    # without orientation the inside-out mesh's concave seams read as convex and the result changes
    unoriented = segment_by_concave_edges(flipped, orient=False)
    assert not np.array_equal(unoriented.labels, segment_by_concave_edges(shape.mesh).labels)
    plain = MeshSegmenter(settings=SegmentSettings(render=RenderSettings(n_views=4, image_size=96),
                                                   revote=RevoteSettings(orient=False)))
    assert not np.array_equal(plain.segment(flipped).labels, a.labels)


# --------------------------------------------------------------------------------------------- concave cut


def test_concave_cut_finds_separate_and_fused_parts():
    box = trimesh.creation.box()
    res = segment_by_concave_edges(box)
    assert res.n_segments == 1 and res.method == "mesh" and res.n_views == 0 and res.seen.all()
    separate = make_shape("separate", "table", 0)
    res = segment_by_concave_edges(separate.mesh)
    assert matched_part_iou(res.labels, separate.face_labels, face_areas(separate.mesh))[0] == pytest.approx(1.0)
    fused = make_shape("fused", "table", 0)
    assert len(fused.mesh.split(only_watertight=False)) == 1  # one surface
    res = segment_by_concave_edges(fused.mesh)
    assert matched_part_iou(res.labels, fused.face_labels, face_areas(fused.mesh))[0] > 0.9


# --------------------------------------------------------------------------------------------- part sets


def _point_triangle_distance(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Brute force: distance from every point (N, 3) to the nearest of the triangles (T, 3, 3)."""
    n, t = len(points), len(triangles)
    closest = trimesh.triangles.closest_point(np.repeat(triangles, n, axis=0), np.tile(points, (t, 1)))
    return np.linalg.norm(closest - np.tile(points, (t, 1)), axis=1).reshape(t, n).min(axis=0)


def test_fused_labels_cover_every_face_and_lie_on_their_part():
    pm = generate("chair", 0)
    shape = make_shape("fused", "chair", 0)
    parts = composite_parts(pm.mesh, pm.face_labels)
    labels = shape.face_labels
    assert labels.shape == (len(shape.mesh.faces),) and labels.min() == 0
    assert np.array_equal(np.unique(labels), np.arange(shape.n_parts))
    assert shape.mesh.is_watertight and len(shape.mesh.faces) > len(pm.mesh.faces)  # cut where the parts meet
    centroids = shape.mesh.triangles_center
    scale = float(np.ptp(shape.mesh.vertices, axis=0).max())
    for k, part in enumerate(parts):  # a boolean union keeps the surfaces: each face lies on its own part
        sel = labels == k
        if sel.any():
            assert _point_triangle_distance(centroids[sel], part.triangles).max() < 1e-5 * scale


def test_remeshed_set_is_one_smooth_surface_with_every_face_labelled():
    shape = make_shape("remeshed", "table", 0, resolution=40, max_faces=3000)
    assert len(shape.mesh.faces) <= 3000 and shape.mesh.volume > 0
    assert shape.face_labels.shape == (len(shape.mesh.faces),)
    assert np.array_equal(np.unique(shape.face_labels), np.arange(shape.n_parts)) and shape.n_parts >= 2


def test_split_seeds_are_disjoint():
    assert split_seeds("test", 2) == [0, 1] and split_seeds("val", 1) == [1000] and split_seeds("train", 1) == [10000]
    assert [split_of_seed(s) for s in (0, 999, 1000, 1999, 10000)] == ["test", "test", "val", "val", "train"]
    with pytest.raises(ValueError):
        split_of_seed(5000)


@pytest.mark.slow
def test_anny_body_has_six_parts_from_skinning_weights():
    pytest.importorskip("anny")
    shape = make_shape("anny", "anny", 0)
    assert shape.part_names == list(ANNY_PARTS)
    assert shape.face_labels.shape == (len(shape.mesh.faces),)
    assert np.bincount(shape.face_labels).min() > 100


# --------------------------------------------------------------------------------------------- command line


@pytest.fixture
def two_boxes(tmp_path):
    a = trimesh.creation.box(extents=(1.0, 1.0, 0.2))
    b = trimesh.creation.box(extents=(0.3, 0.3, 0.6)).apply_translation((0, 0, -0.5))
    path = tmp_path / "two.obj"
    trimesh.util.concatenate([a, b]).export(path)
    return path


def test_segment_method_mesh(tmp_path, two_boxes):
    out = tmp_path / "m.ply"
    proc = run_cli("segment", two_boxes, "-o", out, "--method", "mesh")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    labels = np.load(out.with_suffix(".npy"))
    assert res["method"] == "mesh" and res["segments"] == 2
    assert set(labels[:12]).isdisjoint(set(labels[12:]))
    assert out.with_suffix(".png").exists()


def test_segment_without_masks_warns_and_exits_3(tmp_path):
    needle = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [1, 1e-4, 0], [0, 1e-4, 0]], [[0, 1, 2], [0, 2, 3]],
                             process=False)  # thinner than a pixel from every side
    src = tmp_path / "needle.obj"
    needle.export(src)
    out = tmp_path / "n.ply"
    proc = run_cli("segment", src, "-o", out, "--views", "2", "--image-size", "32", "--no-components")
    assert proc.returncode == 3
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("warning: no view")
    assert json.loads(proc.stdout)["masks"] == 0
    assert np.array_equal(np.load(out.with_suffix(".npy")), [0, 0])  # written, one segment (documented)


@pytest.mark.parametrize("args,match", [
    (["--views", "0"], "--views"), (["--image-size", "8"], "--image-size"), (["--method", "foo"], "unknown --method"),
    (["--method", "mesh", "--no-components"], "--no-components"),
    (["--method", "mesh", "--sam-checkpoint", "x.pth"], "--sam-checkpoint"),
])
def test_segment_bad_options_are_one_line_exit_2(tmp_path, two_boxes, args, match):
    out = tmp_path / "o.ply"
    proc = run_cli("segment", two_boxes, "-o", out, *args)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and match in proc.stderr
    assert not list(tmp_path.glob("o.*"))


# --------------------------------------------------------------------------------------------- evaluation


def test_mask_generator_registry():
    assert isinstance(get_mask_generator("geometric"), GeometricMaskGenerator)
    with pytest.raises(KeyError, match="unknown mask generator"):
        get_mask_generator("nosuch")
    register_mask_generator("test-empty", lambda: GeometricMaskGenerator())
    assert isinstance(get_mask_generator("test-empty"), GeometricMaskGenerator)


def test_matched_part_iou_against_hand_counts():
    areas = np.array([1.0, 1.0, 2.0, 4.0])
    true = np.array([0, 0, 1, 1])
    assert matched_part_iou(np.array([5, 5, 7, 7]), true, areas)[0] == pytest.approx(1.0)  # any label names
    # one segment for all: matched to part 1 (IoU 6/8), part 0 left unmatched (0)
    assert matched_part_iou(np.zeros(4, int), true, areas)[0] == pytest.approx(0.5 * 6 / 8)


def test_segmentation_grid_puts_truth_beside_predictions():
    shape = make_shape("separate", "table", 0)
    mesh_labels = segment_by_concave_edges(shape.mesh).labels
    image = segmentation_grid([(shape.name, shape.mesh, shape.face_labels, {"a": mesh_labels, "b": mesh_labels})],
                              n_views=1, image_size=48)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[1] > 3 * 48  # truth + two columns


def test_eval_script_reports_views_and_mesh_rows(capsys):
    sys.path.insert(0, "scripts")
    try:
        import eval_segmentation
    finally:
        sys.path.pop(0)
    shapes = [make_shape("fused", "table", 0)]
    res = eval_segmentation.evaluate(shapes, [2], 48)
    assert set(res["rows"]) == {"views: geometric", "mesh: concave-cut"}
    assert 0.0 <= res["rows"]["mesh: concave-cut"]["2"]["miou"] <= 1.0
    with pytest.raises(SystemExit):
        eval_segmentation.main(["--seeds", "10000"])  # a training seed: refused
    assert "test-split seeds" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- dataset


def test_part_views_dataset_writer(tmp_path):
    config = DatasetConfig(sets=("separate", "fused"), families=("table",), shapes={"train": 1, "val": 0, "test": 0},
                           views=2, image_size=64)
    index = write_part_views(tmp_path, config)
    assert [row["id"] for row in index["shapes"]] == ["train/separate/table-10000", "train/fused/table-10000"]
    assert json.loads((tmp_path / "index.json").read_text()) == index
    for row in index["shapes"]:
        data = np.load(tmp_path / row["path"])
        assert data["normals"].shape == (2, 64, 64, 3) and data["depth"].shape == (2, 64, 64)
        p2f, parts = data["pix_to_face"], data["parts"]
        fg = p2f >= 0
        assert fg.any() and np.array_equal(fg, data["depth"] > 0)
        assert np.array_equal(parts[fg], data["face_labels"][p2f[fg]]) and (parts[~fg] == -1).all()
        assert parts.max() == row["n_parts"] - 1  # every part of a table shows in two views
        normals = data["normals"][fg].astype(np.float32)
        assert np.allclose(np.linalg.norm(normals, axis=1), 1.0, atol=2e-3)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.npz")}
    assert write_part_views(tmp_path, config) == index  # resume: nothing left to do
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.npz")} == stamps
    with pytest.raises(ValueError, match="another config"):
        write_part_views(tmp_path, DatasetConfig(sets=("separate",), families=("table",),
                                                 shapes={"train": 1}, views=2, image_size=64))
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary files left
