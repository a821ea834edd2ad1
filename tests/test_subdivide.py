"""Filling the face budget (meshgen.subdivide.split_to_budget)."""

from __future__ import annotations

import numpy as np
import trimesh

from meshgen.subdivide import split_to_budget


def _cloud(mesh, n=2048):
    points, faces = trimesh.sample.sample_surface(mesh, n, seed=0)
    return points, mesh.face_normals[faces]


def test_a_coarse_sphere_is_split_onto_the_surface_and_stays_closed():
    sphere = trimesh.creation.icosphere(4)
    points, normals = _cloud(sphere)
    coarse = trimesh.creation.icosphere(0)
    for budget in (22, 80, 200):
        out = split_to_budget(coarse, budget, points, normals)
        assert len(coarse.faces) < len(out.faces) <= budget
        assert out.is_watertight and out.is_winding_consistent and out.volume > 0
    assert len(split_to_budget(coarse, 21, points, normals).faces) == 20  # every split adds two faces here
    out = split_to_budget(coarse, 320, points, normals)
    new = np.linalg.norm(out.vertices[len(coarse.vertices):], axis=1)
    assert np.all(np.abs(new - 1.0) < 0.05)  # new vertices on the surface, not on the chords (radius ~0.8-0.9)
    from meshgen.refine import refine_vertices
    from tokenizers3d.metrics import evaluate_mesh

    assert evaluate_mesh(refine_vertices(out, points), sphere).chamfer < \
        0.6 * evaluate_mesh(refine_vertices(coarse, points), sphere).chamfer


def test_flat_sides_are_left_alone_even_when_offset():
    box = trimesh.creation.box()
    points, normals = _cloud(box)
    for scale in (1.0, 0.97):
        shrunk = box.copy()
        shrunk.vertices *= scale
        assert len(split_to_budget(shrunk, 100, points, normals).faces) == 12


def test_loose_triangles_and_no_budget():
    sphere = trimesh.creation.icosphere(3)
    points, normals = _cloud(sphere)
    tri = trimesh.Trimesh([[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 1, 2]], process=False)
    out = split_to_budget(tri, 9, points, normals)
    assert 1 < len(out.faces) <= 9
    assert np.allclose(out.face_normals @ np.ones(3) / np.sqrt(3), 1.0, atol=0.35)  # winding kept (outward)
    assert split_to_budget(tri, 1, points, normals) is tri
    without = split_to_budget(tri, 9, points, None)  # no normals: midpoints, split by distance to the points
    assert 1 < len(without.faces) <= 9


def test_refine_candidate_fills_the_requested_faces_only():
    from meshgen.pipeline import refine_candidate
    from meshgen.refine import RefineConfig
    from tokenizers3d.metrics import evaluate_mesh
    from tokenizers3d.sample import PointCloud

    sphere = trimesh.creation.icosphere(4)
    points, normals = _cloud(sphere)
    cloud = PointCloud(points, normals)
    coarse = trimesh.creation.icosphere(0)
    cfg = RefineConfig(steps=60, affine_steps=20)
    once = refine_candidate(coarse, cloud, cfg, faces=120, fill_budget=False)
    filled = refine_candidate(coarse, cloud, cfg, faces=120)
    unasked = refine_candidate(coarse, cloud, cfg, faces=None)
    assert len(once.faces) == len(unasked.faces) == 20 and 20 < len(filled.faces) <= 120
    assert filled.is_watertight
    assert evaluate_mesh(filled, sphere).chamfer < evaluate_mesh(once, sphere).chamfer
