"""Shape metrics and surface sampling."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from tokenizers3d.metrics import evaluate_mesh, fscore, mesh_info
from tokenizers3d.sample import sample_surface


def test_identical_meshes_score_perfectly():
    m = trimesh.creation.box(extents=(1, 2, 3))
    res = evaluate_mesh(m, m, n_samples=4000)
    # different random samples on the same surface: spacing about 0.025 at 4000 samples
    assert res.chamfer < 0.02
    assert res.fscore_002 > 0.8 and res.fscore_005 == pytest.approx(1.0)
    assert res.normal_consistency > 0.95
    assert res.edge_chamfer < 0.01
    assert res.watertight and res.manifold and res.n_faces == 12


def test_shifted_mesh_distance_matches_shift():
    ref = trimesh.creation.box(extents=(1, 1, 1))
    pred = ref.copy()
    pred.apply_translation([0.1, 0, 0])
    res = evaluate_mesh(pred, ref, n_samples=8000)
    # a 0.1 shift of a unit cube: Hausdorff about 0.1, Chamfer well below it, F@0.05 clearly below 1
    assert res.hausdorff == pytest.approx(0.1, abs=0.02)
    assert 0.01 < res.chamfer < 0.1
    assert res.fscore_005 < 0.95


def test_fscore_threshold_behaviour():
    a = np.zeros((10, 3))
    b = np.zeros((10, 3)) + [0.03, 0, 0]
    assert fscore(a, b, 0.02) == 0.0
    assert fscore(a, b, 0.05) == 1.0


def test_sampling_deterministic_and_on_surface():
    m = trimesh.creation.box(extents=(1, 1, 1))
    a = sample_surface(m, 500, seed=3)
    b = sample_surface(m, 500, seed=3)
    assert np.array_equal(a.points, b.points)
    assert np.allclose(np.abs(a.points).max(axis=1), 0.5, atol=1e-6)  # every point on a face of the cube
    on_face = np.isclose(np.abs(a.points), 0.5, atol=1e-6) & np.isclose(np.abs(a.normals), 1.0)
    assert on_face.any(axis=1).all()  # the normal is that face's normal
    p = sample_surface(m, 300, method="poisson", seed=0)
    from scipy.spatial import cKDTree

    nn_p = cKDTree(p.points).query(p.points, k=2)[0][:, 1].min()
    u = sample_surface(m, 300, seed=0)
    nn_u = cKDTree(u.points).query(u.points, k=2)[0][:, 1].min()
    assert nn_p > 2 * nn_u  # blue noise: no near-coincident points


def test_mesh_info_genus():
    torus = trimesh.creation.torus(major_radius=1.0, minor_radius=0.3)
    info = mesh_info(torus)
    assert info["watertight"] and info["genus"] == 1 and info["components"] == 1
    info = mesh_info(trimesh.creation.box())
    assert info["genus"] == 0 and info["faces"] == 12


def test_evaluate_mesh_sees_a_triangle_soup_that_surface_distances_miss():
    """The same box surface as 12 loose triangles scores the same Chamfer as the box, but one piece per face and
    every edge open; a box with one face missing has one piece and 3 of 18 edges open."""

    box = trimesh.creation.box()
    soup = trimesh.Trimesh(box.vertices[box.faces].reshape(-1, 3), np.arange(36).reshape(12, 3), process=False)
    closed, loose = evaluate_mesh(box, box), evaluate_mesh(soup, box)
    assert loose.chamfer == pytest.approx(closed.chamfer, rel=1e-6)
    assert (closed.components, closed.ref_components, closed.open_edge_share) == (1, 1, 0.0)
    assert (loose.components, loose.ref_components, loose.open_edge_share) == (12, 1, 1.0)
    holed = evaluate_mesh(trimesh.Trimesh(box.vertices, box.faces[1:], process=False), box)
    assert holed.components == 1 and holed.open_edge_share == pytest.approx(3 / 18)
    info = mesh_info(soup)
    assert (info["edges"], info["open_edges"]) == (36, 36)
