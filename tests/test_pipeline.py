"""Point cloud -> mesh end to end with a small random-weight model (the real checkpoint is tested in the demo)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import trimesh

from meshgen.pipeline import generate_file, read_points
from tokenizers3d.errors import MeshInputError
from tokenizers3d.io import PointCloud, save_point_cloud
from tokenizers3d.sample import sample_surface


@pytest.fixture
def cloud_file(tmp_path):
    box = trimesh.creation.box(extents=(4.0, 2.0, 1.0))
    box.apply_translation([100.0, 50.0, -20.0])
    cloud = sample_surface(box, 600, seed=0)
    path = tmp_path / "scan.npy"
    save_point_cloud(path, cloud)
    return path


def test_generate_file_writes_mesh_in_input_frame(tiny_checkpoint, cloud_file, tmp_path):
    out = tmp_path / "gen.obj"
    summary = generate_file(cloud_file, out, checkpoint=tiny_checkpoint, max_faces=12, seed=1, preview=False,
                            progress=False)
    mesh = trimesh.load(out, process=False)
    assert summary["faces"] == len(mesh.faces) > 0
    # generated in the unit cube, then put back where the scan was: the cube of side 4 (the scan's longest
    # side) centred on the scan, far from the origin where an untransformed mesh would be
    # (refinement keeps vertices within half a 7-bit cell of the points' bounding box: 4 / 256)
    lo, hi = np.array([98.0, 48.0, -22.0]), np.array([102.0, 52.0, -18.0])
    slack = 4 / 256 + 1e-6
    assert np.all(mesh.vertices >= lo - slack) and np.all(mesh.vertices <= hi + slack)


def test_same_seed_same_mesh(tiny_checkpoint, cloud_file, tmp_path):
    a = generate_file(cloud_file, tmp_path / "a.obj", checkpoint=tiny_checkpoint, max_faces=8, seed=3,
                      preview=False, progress=False)
    b = generate_file(cloud_file, tmp_path / "b.obj", checkpoint=tiny_checkpoint, max_faces=8, seed=3,
                      preview=False, progress=False)
    assert a["faces"] == b["faces"]
    assert (tmp_path / "a.obj").read_text() == (tmp_path / "b.obj").read_text()


def test_read_points_from_mesh_and_cloud(tmp_path):
    box = trimesh.creation.box()
    box.export(tmp_path / "box.ply")
    pts = read_points(tmp_path / "box.ply", n_points=300)
    assert pts.points.shape == (300, 3) and np.allclose(np.abs(pts.points).max(axis=1), 0.5, atol=1e-5)
    few = np.arange(15, dtype=np.float32).reshape(5, 3)  # distinct points (coincident ones are refused earlier)
    save_point_cloud(tmp_path / "few.xyz", PointCloud(few, np.ones((5, 3), np.float32)))
    with pytest.raises(MeshInputError, match="only 5 points"):
        read_points(tmp_path / "few.xyz")
    with pytest.raises(MeshInputError, match="unknown input format"):
        read_points(tmp_path / "x.txt")


def test_cli_generate_bad_input_exit_2(tmp_path, tiny_checkpoint):
    proc = subprocess.run([sys.executable, "-m", "meshgen.cli", "generate", str(tmp_path / "missing.ply"), "-o",
                           str(tmp_path / "o.obj"), "--checkpoint", str(tiny_checkpoint)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "missing.ply" in proc.stderr
    assert not (tmp_path / "o.obj").exists()


def test_fit_to_points_ranks_meshes_by_how_well_they_explain_the_points():
    from meshgen.pipeline import fit_to_points

    box = trimesh.creation.box(extents=(2.0, 1.0, 1.0))
    pts = sample_surface(box, 800, seed=0).points
    exact = fit_to_points(box, pts)
    assert exact < 0.04  # sampling noise only (800 points)
    smaller = trimesh.creation.box(extents=(1.0, 0.5, 0.5))
    assert fit_to_points(smaller, pts) > 3 * exact
    assert fit_to_points(None, pts) == float("inf")


def test_rank_score_puts_a_closed_mesh_before_loose_triangles_on_the_same_surface():
    from meshgen.pipeline import fit_to_points, rank_score
    from tokenizers3d.metrics import open_edge_share

    box = trimesh.creation.box(extents=(2.0, 1.0, 0.5))
    soup = trimesh.Trimesh(box.vertices[box.faces].reshape(-1, 3), np.arange(36).reshape(12, 3), process=False)
    pts = sample_surface(box, 2048, seed=3).points
    assert open_edge_share(box) == 0.0 and open_edge_share(soup) == 1.0
    assert fit_to_points(soup, pts) == pytest.approx(fit_to_points(box, pts), rel=1e-6)  # the fit cannot tell them apart
    assert rank_score(soup, pts, 0.0) == pytest.approx(rank_score(box, pts, 0.0), rel=1e-6)
    assert rank_score(soup, pts, 1.0) == pytest.approx(2 * rank_score(box, pts, 1.0), rel=1e-6)
    assert rank_score(None, pts, 1.0) == float("inf")


def test_best_of_k_keeps_the_best_fitting_sample(tiny_checkpoint, cloud_file, monkeypatch):
    import meshgen.pipeline as pipeline
    from tokenizers3d.metrics import open_edge_share

    model = pipeline.load_generator(tiny_checkpoint)
    cloud = read_points(cloud_file)
    seen = []

    def recording_fit(mesh, points, *, seed=0):
        seen.append((mesh, fit_to_points(mesh, points, seed=seed)))
        return seen[-1][1]

    fit_to_points = pipeline.fit_to_points
    monkeypatch.setattr(pipeline, "fit_to_points", recording_fit)
    best = pipeline.generate_mesh(model, cloud, max_faces=6, seed=0, samples=4, temperature=1.0, refine=None)
    assert len(seen) == 4 and best.mesh is not None
    assert len({f for _, f in seen}) > 1  # the rows differ
    rank = lambda mf: mf[1] * (1 + pipeline.OPEN_EDGE_WEIGHT * open_edge_share(mf[0]))  # noqa: E731
    kept = min(seen, key=rank)[0]  # the fit, with open edges counted against a sample
    assert kept is best.mesh
    raw = [m for m, _ in seen]
    seen.clear()
    refined = pipeline.generate_mesh(model, cloud, max_faces=6, seed=0, samples=4, temperature=1.0)
    assert len(seen) == 4  # every sample is refined, then ranked
    assert refined.mesh is min(seen, key=rank)[0]
    for (mesh, fit), before in zip(seen, raw, strict=True):  # refinement moves vertices only, and fits better
        assert np.array_equal(mesh.faces, before.faces)
        assert fit < fit_to_points(before, cloud.points)
    with pytest.raises(ValueError):
        pipeline.generate_mesh(model, cloud, max_faces=6, samples=0)
    with pytest.raises(ValueError, match="free-samples"):
        pipeline.generate_mesh(model, cloud, max_faces=6, samples=2, free_samples=3)


def test_best_of_k_draws_half_its_samples_without_the_guide(tiny_checkpoint, cloud_file, monkeypatch):
    import meshgen.generate as gen_mod
    import meshgen.pipeline as pipeline

    model = pipeline.load_generator(tiny_checkpoint)
    cloud = read_points(cloud_file)
    seen = []
    real_generate = gen_mod.generate

    def recording_generate(*args, **kw):
        res = real_generate(*args, **kw)
        seen.append((kw.get("unguided_rows"), [g is None for g in res.guidance]))
        return res

    monkeypatch.setattr(gen_mod, "generate", recording_generate)
    pipeline.generate_mesh(model, cloud, max_faces=6, seed=0, samples=4, refine=None)
    pipeline.generate_mesh(model, cloud, max_faces=6, seed=0, samples=3, free_samples=0, refine=None)
    pipeline.generate_mesh(model, cloud, max_faces=6, seed=0, samples=2, guidance=None, refine=None)
    assert seen == [(2, [False, False, True, True]), (0, [False] * 3), (0, [True, True])]
