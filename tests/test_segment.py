"""Mask generators, multi-view revoting, the SAM path with a tiny random model, and the file entry point."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import trimesh

from renderers import (
    GeometricMaskGenerator,
    Mask,
    MeshRenderer,
    MeshSegmenter,
    RenderSettings,
    RevoteSettings,
    SamArchitecture,
    SamMaskGenerator,
    SamSettings,
    SegmentSettings,
    build_sam,
    load_sam,
    revote,
    rig_from_eyes,
    segment_mesh_file,
)
from renderers.segment import face_adjacency, flatten_masks
from tokenizers3d.errors import MeshInputError
from tokenizers3d.io import load_mesh, read_ply_face_labels

TINY_SAM = SamArchitecture(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,),
                           image_size=64, window_size=4, prompt_embed_dim=32, decoder_depth=1, decoder_mlp_dim=64,
                           decoder_num_heads=2, iou_head_hidden_dim=32, mask_in_chans=4)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


def composite(parts):
    labels = np.concatenate([np.full(len(p.faces), i) for i, p in enumerate(parts)])
    return trimesh.util.concatenate(parts), labels


def table():
    top = trimesh.creation.box((1.2, 0.8, 0.06)).apply_translation((0, 0, 0.72))
    legs = [trimesh.creation.box((0.08, 0.08, 0.72)).apply_translation((sx * 0.5, sy * 0.3, 0.36))
            for sx in (-1, 1) for sy in (-1, 1)]
    return composite([top, *legs])


def best_iou(pred, true, areas):
    """Mean over true parts of the best area-weighted IoU with any predicted segment."""
    out = []
    for t in np.unique(true):
        tm = true == t
        out.append(max(areas[tm & (pred == p)].sum() / areas[tm | (pred == p)].sum() for p in np.unique(pred)))
    return float(np.mean(out))


# --------------------------------------------------------------------------------------------- revoting


def strip_mesh():
    """Five faces in a row (each shares an edge with the next): 0-1 part A, 2-4 part B."""
    v = np.array([[x, y, 0.0] for x in range(4) for y in (0, 1)], dtype=float)
    idx = lambda x, y: 2 * x + y  # noqa: E731
    faces = [[idx(0, 0), idx(1, 0), idx(0, 1)], [idx(1, 0), idx(1, 1), idx(0, 1)],
             [idx(1, 0), idx(2, 0), idx(1, 1)], [idx(2, 0), idx(2, 1), idx(1, 1)],
             [idx(2, 0), idx(3, 0), idx(2, 1)]]
    return trimesh.Trimesh(v, np.array(faces), process=False)


def fake_views():
    """Three 4x8 views: left half shows faces 0/1, right half faces 2/3; face 4 is never seen."""
    p2f = np.full((3, 4, 8), -1, dtype=np.int64)
    p2f[:, :2, :4], p2f[:, 2:, :4] = 0, 1
    p2f[:, :2, 4:], p2f[:, 2:, 4:] = 2, 3
    left = np.zeros((4, 8), bool)
    left[:, :4] = True
    return p2f, left


def test_revote_labels_parts_and_fills_hidden_faces():
    mesh = strip_mesh()
    p2f, left = fake_views()
    masks = [[Mask(left, 0.9), Mask(~left, 0.8)], [Mask(~left, 1.0), Mask(left, 1.0)], [Mask(left, 0.7), Mask(~left, 0.7)]]
    res = revote(mesh, p2f, masks, settings=RevoteSettings(min_mask_pixels=1, min_segment_area=0.0))
    assert res.labels.dtype == np.int64 and res.labels.shape == (5,)
    assert res.labels[0] == res.labels[1] != res.labels[2]
    assert res.labels[2] == res.labels[3] == res.labels[4]  # hidden face 4 takes its neighbour's label
    assert res.n_segments == 2 and res.n_views == 3 and res.n_masks == 6
    assert res.seen.tolist() == [True, True, True, True, False]
    assert res.confidence[4] == 0.0 and np.all(res.confidence[:4] > 0.99)
    assert res.labels[2] == 0  # relabelled by area: B (3 faces) is the larger segment
    assert all(len(s) == 2 for s in res.mask_segments)


@pytest.mark.parametrize("association", ["louvain", "union_find"])
def test_revote_outvotes_a_view_that_merges_two_parts(association):
    mesh = strip_mesh()
    p2f = np.repeat(fake_views()[0][:1], 5, axis=0)
    left = fake_views()[1]
    both = p2f[0] >= 0
    masks = [[Mask(left), Mask(~left)] for _ in range(4)] + [[Mask(both)]]
    res = revote(mesh, p2f, masks, settings=RevoteSettings(association=association, min_mask_pixels=1,
                                                            min_segment_area=0.0))
    assert res.labels[0] == res.labels[1] != res.labels[2] == res.labels[3] == res.labels[4]


def test_revote_checks_inputs():
    mesh = strip_mesh()
    p2f, left = fake_views()
    with pytest.raises(ValueError, match="views"):
        revote(mesh, p2f, [[Mask(left)]])
    bad = p2f.copy()
    bad[0, 0, 0] = 99
    with pytest.raises(ValueError, match="beyond"):
        revote(mesh, bad, [[Mask(left)]] * 3)


def test_flatten_paints_small_masks_over_large():
    fg = np.ones((4, 4), bool)
    big, small = np.ones((4, 4), bool), np.zeros((4, 4), bool)
    small[:2, :2] = True
    index, scores = flatten_masks([Mask(small, 0.5), Mask(big, 0.9)], fg, min_pixels=1)
    assert scores == [0.9, 0.5]
    assert (index[:2, :2] == 1).all() and (index[2:, :] == 0).all()


def test_face_adjacency_of_a_box():
    box = trimesh.creation.box()
    adj = face_adjacency(box.vertices, box.faces)
    assert len(adj) == 18
    assert np.all(np.bincount(adj.ravel(), minlength=12) == 3)


def test_unseen_component_takes_nearest_label():
    a = trimesh.creation.box((0.2, 0.2, 0.2))
    b = trimesh.creation.box((0.1, 0.1, 0.1)).apply_translation((0.5, 0, 0))
    mesh = trimesh.util.concatenate([a, b])
    p2f = np.full((1, 2, 2), -1, dtype=np.int64)
    p2f[0, 0, 0], p2f[0, 1, 1] = 0, 12  # one face of each box seen
    m0, m1 = np.zeros((2, 2), bool), np.zeros((2, 2), bool)
    m0[0, 0], m1[1, 1] = True, True
    res = revote(mesh, p2f, [[Mask(m0), Mask(m1)]], settings=RevoteSettings(min_mask_pixels=1, min_segment_area=0.0))
    assert len(set(res.labels[:12])) == 1 and len(set(res.labels[12:])) == 1
    assert res.labels[0] != res.labels[12]


# --------------------------------------------------------------------------------------------- geometric generator


def test_geometric_generator_separates_stacked_boxes_with_a_gap():
    low = trimesh.creation.box((0.6, 0.6, 0.3)).apply_translation((0, 0, -0.25))
    high = trimesh.creation.box((0.6, 0.6, 0.3)).apply_translation((0, 0, 0.2))
    mesh = trimesh.util.concatenate([low, high])
    rig = rig_from_eyes(np.array([[2.0, 1.2, 0.6]]))
    out = MeshRenderer(RenderSettings(image_size=96)).render(mesh, rig=rig)
    masks = GeometricMaskGenerator().generate(out.image(0), normals=out.normals[0], depth=out.depth[0],
                                              points=out.points[0])
    assert len(masks) == 2  # convex box edges are not cut, the gap is
    part = np.where(out.pix_to_face[0] >= 0, out.pix_to_face[0] // 12, -1)
    for m in masks:
        assert len(np.unique(part[m.mask])) == 1
        assert 0.0 < m.score <= 1.0


def test_geometric_generator_cuts_concave_contact_lines():
    mesh, labels = table()
    rig = rig_from_eyes(np.array([[1.5, -2.0, -1.2]]))  # from below: legs meet the underside
    out = MeshRenderer(RenderSettings(image_size=128)).render(mesh, rig=rig)
    regions = GeometricMaskGenerator().region_labels(normals=out.normals[0], depth=out.depth[0],
                                                     points=out.points[0])
    part = np.where(out.pix_to_face[0] >= 0, labels[np.maximum(out.pix_to_face[0], 0)], -1)
    for r in np.unique(regions[regions >= 0]):
        parts, counts = np.unique(part[regions == r], return_counts=True)
        assert counts.max() >= 0.97 * counts.sum()  # every region lies on one part


def test_segmenter_finds_the_parts_of_a_table_from_image_cues_alone():
    mesh, labels = table()
    settings = SegmentSettings(render=RenderSettings(n_views=8, image_size=128),
                               revote=RevoteSettings(split_components=False))
    res = MeshSegmenter(settings=settings).segment(mesh)
    assert res.n_segments >= 5
    assert best_iou(res.labels, labels, mesh.area_faces) > 0.9
    assert res.render is not None and res.render.n_views == 8


def test_flush_parts_need_the_component_split():
    left = trimesh.creation.box((0.5, 0.5, 0.5)).apply_translation((-0.25, 0, 0))
    right = trimesh.creation.box((0.52, 0.5, 0.5)).apply_translation((0.24, 0, 0))  # reaches 0.02 into the left
    mesh, labels = composite([left, right])  # one flush 1 x 0.5 x 0.5 block made of two closed boxes
    render = RenderSettings(n_views=6, image_size=64)
    merged = MeshSegmenter(settings=SegmentSettings(render=render, revote=RevoteSettings(split_components=False)))
    assert merged.segment(mesh).n_segments == 1  # no crease, no depth step: one part in every image
    split = MeshSegmenter(settings=SegmentSettings(render=render)).segment(mesh)
    assert split.n_segments == 2
    assert best_iou(split.labels, labels, mesh.area_faces) == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------- SAM


@pytest.fixture(scope="module")
def tiny_sam():
    torch.manual_seed(0)
    return build_sam(TINY_SAM)


@pytest.mark.parametrize("mode", ["auto", "points"])
def test_random_sam_runs_end_to_end(tiny_sam, mode):
    mesh, _ = table()
    sam = SamMaskGenerator(tiny_sam, SamSettings(mode=mode, points_per_side=4, pred_iou_thresh=0.0,
                                                 stability_score_thresh=0.0, min_score=0.0))
    settings = SegmentSettings(render=RenderSettings(n_views=2, image_size=64))
    res = MeshSegmenter(sam, settings).segment(mesh)
    assert res.labels.shape == (len(mesh.faces),)
    assert res.labels.min() == 0 and res.labels.max() == res.n_segments - 1
    assert res.n_masks >= 1


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_sam_checkpoint_round_trip(tiny_sam, tmp_path, suffix):
    path = tmp_path / f"tiny{suffix}"
    state = {k: v.contiguous() for k, v in tiny_sam.state_dict().items()}
    if suffix == ".pth":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))
    loaded = load_sam(path, TINY_SAM)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k])
    gen = SamMaskGenerator.from_checkpoint(path, model_type=TINY_SAM,
                                           settings=SamSettings(mode="points", points_per_side=2, min_score=0.0))
    image = np.zeros((32, 32, 3), np.uint8)
    depth = np.ones((32, 32))
    assert isinstance(gen.generate(image, depth=depth), list)


def test_sam_checkpoint_errors(tiny_sam, tmp_path):
    with pytest.raises(MeshInputError, match="does not exist"):
        load_sam(tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(MeshInputError, match="not a readable torch or safetensors file"):
        load_sam(garbage)
    wrong = tmp_path / "tiny.pth"
    torch.save(tiny_sam.state_dict(), wrong)
    with pytest.raises(MeshInputError, match=r"weights do not fit SAM vit_b.*looks like a SAM-like model \(embed dim 32"):
        load_sam(wrong, "vit_b")
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, other)
    with pytest.raises(MeshInputError, match="not a SAM checkpoint"):
        load_sam(other, "vit_b")
    onnx = tmp_path / "weights.onnx"
    onnx.write_bytes(b"x")
    with pytest.raises(MeshInputError, match="format"):
        load_sam(onnx)


def test_sam_checkpoint_named_like_an_official_file_must_match_its_sha256(tiny_sam, tmp_path):
    import hashlib

    state = {k: v.contiguous() for k, v in tiny_sam.state_dict().items()}
    probe = tmp_path / "probe.pth"
    torch.save(state, probe)
    digest = hashlib.sha256(probe.read_bytes()).hexdigest()
    wrong = tmp_path / f"sam_vit_b_{'0' * 6 if not digest.startswith('000000') else '111111'}.pth"
    probe.rename(wrong)
    with pytest.raises(MeshInputError, match=f"SHA-256 starts with {digest[:6]}"):
        load_sam(wrong, TINY_SAM)
    right = tmp_path / f"sam_vit_b_{digest[:6]}.pth"
    wrong.rename(right)
    assert load_sam(right, TINY_SAM) is not None


def test_unknown_sam_model_type_and_pickled_checkpoint_are_one_line(tmp_path):
    import pickle

    from tokenizers3d.errors import ConfigError

    path = tmp_path / "w.pth"
    path.write_bytes(pickle.dumps({"a": object()}))
    with pytest.raises(ConfigError, match="unknown SAM model type 'vit_x'"):
        load_sam(path, "vit_x")
    with pytest.raises(MeshInputError) as info:
        load_sam(path, "vit_b")
    assert "weights_only=False" not in str(info.value) and "\n" not in str(info.value)
    mesh, _ = table()
    src = tmp_path / "t.obj"
    mesh.export(src)
    proc = subprocess.run([sys.executable, "-m", "meshgen.cli", "segment", str(src), "-o", str(tmp_path / "o.ply"),
                           "--sam-checkpoint", str(path), "--sam-model-type", "vit_x"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "vit_x" in proc.stderr
    assert not (tmp_path / "o.ply").exists()


# --------------------------------------------------------------------------------------------- files


def test_segment_mesh_file_writes_ply_labels_and_preview(tmp_path):
    mesh, _ = table()
    src = tmp_path / "table.obj"
    mesh.export(src)
    out = tmp_path / "parts.ply"
    res = segment_mesh_file(src, out, views=6, image_size=96)
    labels = np.load(tmp_path / "parts.npy")
    assert out.exists() and (tmp_path / "parts.png").exists()
    assert np.array_equal(read_ply_face_labels(out), labels)
    assert np.array_equal(labels, res.labels)
    assert len(labels) == len(load_mesh(src).faces)
    assert res.n_segments >= 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_segment_mesh_file_reports_bad_inputs(tmp_path):
    with pytest.raises(MeshInputError):
        segment_mesh_file(tmp_path / "missing.obj", tmp_path / "out.ply")
    mesh, _ = table()
    src = tmp_path / "t.obj"
    mesh.export(src)
    with pytest.raises(MeshInputError, match="does not exist"):
        segment_mesh_file(src, tmp_path / "out.ply", sam_checkpoint=tmp_path / "nope.pth")
    with pytest.raises(MeshInputError, match="mesh file"):
        segment_mesh_file(src, tmp_path / "out.txt")


def _pieces(*meshes):
    """Concatenated meshes, the connected piece of every face, and face areas (normalized)."""
    mesh = trimesh.util.concatenate(meshes)
    component = np.concatenate([np.full(len(m.faces), i) for i, m in enumerate(meshes)])
    areas = mesh.area_faces / mesh.area
    return np.asarray(mesh.vertices), np.asarray(mesh.faces), component, areas


def test_convex_pieces_become_one_segment_and_others_stay_split():
    from renderers.segment import _merge_convex_pieces

    board = trimesh.creation.box(extents=(2.0, 0.2, 0.05))  # closed and convex: one part by the minima rule
    open_box = trimesh.creation.box(extents=(1, 1, 1))
    open_box = trimesh.Trimesh(open_box.vertices, open_box.faces[2:])  # two faces removed: not closed
    vertices, faces, component, areas = _pieces(board, open_box)
    # split the board along its length, the open box in two
    centre_x = vertices[faces].mean(1)[:, 0]
    labels = np.where(component == 0, (centre_x > 0.3).astype(int), 2 + (np.arange(len(faces)) % 2))
    out = _merge_convex_pieces(labels, vertices, faces, component, areas, 0.95)
    assert len(np.unique(out[component == 0])) == 1  # the board is one segment again
    assert np.array_equal(out[component == 1], labels[component == 1])  # open piece untouched
    assert np.array_equal(_merge_convex_pieces(labels, vertices, faces, component, areas, 1.01), labels)  # off


def test_non_convex_piece_keeps_its_segments():
    from renderers.segment import _merge_convex_pieces

    parts = [trimesh.creation.box(extents=(1, 0.2, 0.2)),
             trimesh.creation.box(extents=(0.2, 1, 0.2)).apply_translation((0.4, 0.6, 0))]
    ell = trimesh.boolean.union(parts, engine="manifold")  # one closed L-shaped piece: volume / hull well below 0.95
    vertices, faces = np.asarray(ell.vertices), np.asarray(ell.faces)
    labels = (vertices[faces].mean(1)[:, 1] > 0.1).astype(int)
    component = np.zeros(len(faces), dtype=int)
    out = _merge_convex_pieces(labels, vertices, faces, component, ell.area_faces / ell.area, 0.95)
    assert np.array_equal(out, labels)
