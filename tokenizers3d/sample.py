"""Sampling oriented point clouds from mesh surfaces, deterministic by seed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .io import PointCloud

if TYPE_CHECKING:
    import trimesh

SAMPLING_METHODS = ("uniform", "poisson")


def _uniform(mesh: trimesh.Trimesh, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Area-weighted face choice and uniform barycentric coordinates: points (n, 3), face ids (n,)."""
    tri = np.asarray(mesh.triangles, dtype=np.float64)  # (F, 3, 3)
    area = np.asarray(mesh.area_faces, dtype=np.float64)
    if area.sum() <= 0:
        raise ValueError("cannot sample a mesh with zero surface area")
    face = rng.choice(len(tri), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    bary = np.stack([1 - s, s * (1 - r2), s * r2], axis=1)  # (n, 3)
    pts = np.einsum("nk,nkd->nd", bary, tri[face])
    return pts, face


def sample_surface(mesh: trimesh.Trimesh, n: int, *, method: str = "uniform", seed: int = 0,
                   oversample: int = 4) -> PointCloud:
    """Sample ``n`` points with face normals from a mesh surface.

    Parameters
    ----------
    mesh : trimesh.Trimesh
    n : int
        Number of points.
    method : {"uniform", "poisson"}
        ``uniform``: area-weighted i.i.d. samples. ``poisson``: a blue-noise (Poisson-disk-like) set, not a
        dart-throwing Poisson-disk sampler: ``oversample * n`` uniform candidates thinned by farthest-point
        sampling (PyTorch3D), so no two points are much closer than the mean spacing.
    seed : int

    Returns
    -------
    PointCloud
        points (n, 3) float32, normals (n, 3) float32 (the normal of the face each point lies on).
    """
    if method not in SAMPLING_METHODS:
        raise ValueError(f"unknown sampling method {method!r}; use one of {SAMPLING_METHODS}")
    rng = np.random.default_rng(seed)
    normals = np.asarray(mesh.face_normals, dtype=np.float64)
    if method == "uniform":
        pts, face = _uniform(mesh, n, rng)
    else:
        import torch
        from pytorch3d.ops import sample_farthest_points

        cand, cface = _uniform(mesh, n * max(oversample, 1), rng)
        _, idx = sample_farthest_points(torch.as_tensor(cand[None], dtype=torch.float32), K=n, random_start_point=False)
        idx = idx[0].numpy()
        pts, face = cand[idx], cface[idx]
    return PointCloud(pts.astype(np.float32), normals[face].astype(np.float32))


def sample_unit_surface(mesh: trimesh.Trimesh, n: int, *, seed: int = 0):
    """``(cloud, normalization)``: ``n`` uniform surface samples of ``mesh`` (any frame) after moving it into the
    unit frame by :class:`~tokenizers3d.mesh.Normalization` of its vertices -- what the VAT encodes, and what its
    evaluations compare."""
    import trimesh

    from .mesh import Normalization

    vertices = np.asarray(mesh.vertices)
    norm = Normalization.fit(vertices)
    unit = trimesh.Trimesh(norm.apply(vertices), np.asarray(mesh.faces), process=False)
    return sample_surface(unit, n, seed=seed), norm
