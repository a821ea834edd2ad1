"""Fit a generated mesh's vertices to the input points, keeping its faces: the model chooses the topology (which
faces, how many, how they connect), the points decide the last cells of each position.

Decoding at 7 bits puts a vertex on a grid of 1/128 of the longest side, and a sampled coordinate a few cells off
(a box's corner at -0.162 where the points end at -0.193) costs more Chamfer distance than any topology error. After
decoding, :func:`refine_vertices` fits the mesh to the points in two stages, both by gradient descent on the
symmetric distance between the points and the mesh (each input point's exact distance to the nearest triangle, and
points sampled on the surface -- area-weighted, redrawn every step -- to their nearest input point):

1. one affine map of the whole mesh (scale and shear about its centroid, and a translation): a part sampled a few
   cells too short or too narrow -- a triangular prism drawn 0.07 of its length short -- is scaled as a whole;
2. every vertex on its own, with a penalty that keeps each edge's length near its value after stage 1 (the mesh
   keeps its shape, faces do not fold), a step size decayed to zero (the vertices settle instead of jittering by
   a step), and two hard bounds: no vertex leaves the points' bounding box (by more than half a 7-bit cell) and
   none moves farther than ``max_shift`` (a fraction of the points' longest side) from its stage-1 position.

Refinement corrects positions, it cannot invent a shape. The face list is never changed, so a canonical, valid
mesh stays valid. Measured effect: docs/model.md, "Vertex refinement" (``scripts/ablate_refine.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree

from tokenizers3d.mesh import Normalization


@dataclass(frozen=True)
class RefineConfig:
    """Settings of :func:`refine_vertices` (distances in units of the points' longest bounding-box side).

    Attributes
    ----------
    steps : int
        Adam steps (about 10 ms each for 200 faces and 2,048 points on one CPU thread).
    lr : float
        Adam learning rate.
    max_shift : float
        No vertex ends farther than this from where it was decoded (10 cells at 7 bits; 0.04 held the vertices of
        most held-out samples short of their points).
    edge_weight : float
        Weight of the edge-length penalty (squared relative change of each edge's length).
    surface_points : int
        Points sampled on the mesh surface per step.
    schedule : str
        ``"constant"`` learning rate, or ``"cosine"``: decayed to zero over the steps, so the last steps stop
        jittering the vertices by about ``lr`` each (Adam's step size) around their fitted positions.
    point_term : str
        How the points-to-mesh half of the distance is measured: ``"samples"`` (nearest of the points sampled on
        the surface that step) or ``"faces"`` (exact distance to the nearest triangle; no sampling noise).
    affine_steps : int
        Steps of a first stage that fits one affine map of the whole mesh (per-axis scale and shear about its
        centroid, and a translation; the same distance, no edge penalty) before the vertices move one by one:
        a part sampled a few cells too short or too narrow is scaled as a whole instead of stretched vertex by
        vertex against the edge penalty. ``max_shift`` bounds the second stage from the affine-fitted positions.
    affine_lr : float
        Adam learning rate of the affine stage.
    affine_max_shift : float
        No vertex moves farther than this in the affine stage (the map is blended toward the identity until none
        does): a mesh far from the points is not chased. A vertex ends at most ``affine_max_shift + max_shift``
        from where it was decoded.
    """

    steps: int = 150
    lr: float = 0.004
    max_shift: float = 0.08
    edge_weight: float = 0.05
    surface_points: int = 1024
    schedule: str = "cosine"
    point_term: str = "faces"
    affine_steps: int = 60
    affine_lr: float = 0.01
    affine_max_shift: float = 0.2

    def __post_init__(self):
        if self.affine_steps < 0 or self.affine_lr <= 0 or self.affine_max_shift < 0:
            raise ValueError(f"invalid refinement settings: {self}")
        if self.steps < 0 or self.lr <= 0 or self.max_shift < 0 or self.edge_weight < 0 or self.surface_points < 16:
            raise ValueError(f"invalid refinement settings: {self}")
        if self.schedule not in ("constant", "cosine") or self.point_term not in ("samples", "faces"):
            raise ValueError(f"invalid refinement settings: {self}")


def _surface_samples(v: torch.Tensor, f: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` points on the triangles ``v[f]``, area-weighted, differentiable in ``v``."""
    tri = v[f]  # (F, 3, 3)
    area = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=1)
    weights = area.detach().clamp_min(1e-12)
    idx = torch.multinomial(weights, n, replacement=True, generator=gen)
    uv = torch.rand(n, 2, generator=gen, dtype=v.dtype)
    flip = uv.sum(dim=1) > 1
    uv[flip] = 1 - uv[flip]
    t = tri[idx]
    return t[:, 0] + uv[:, :1] * (t[:, 1] - t[:, 0]) + uv[:, 1:] * (t[:, 2] - t[:, 0])


def _nearest(a: torch.Tensor, b: torch.Tensor, tree=None) -> torch.Tensor:
    """Mean distance from each point of ``a`` to its nearest point of ``b`` (differentiable in both). The
    neighbours are found by a k-d tree (``tree``: one already built over ``b``), then the distances are computed in
    torch: 0.3 ms for 1,024 points against 2,048 where PyTorch3D's brute-force ``knn_points`` took 8 ms on one
    thread, which made it most of a refinement step."""
    tree = tree if tree is not None else cKDTree(b.detach().numpy())
    idx = torch.from_numpy(tree.query(a.detach().numpy(), k=1)[1])
    return ((a - b[idx]) ** 2).sum(dim=1).clamp_min(1e-12).sqrt().mean()


def _to_faces(points: torch.Tensor, tris: torch.Tensor) -> torch.Tensor:
    """Mean distance from each point to its nearest triangle of ``tris (F, 3, 3)`` (differentiable in ``tris``)."""
    from pytorch3d.loss.point_mesh_distance import point_face_distance

    first = torch.zeros(1, dtype=torch.long)
    # the last argument: triangles smaller than this count as segments; pytorch3d's default (5e-3) is a tenth of
    # the unit cube's side squared, far too coarse for a low-poly mesh's small faces
    d2 = point_face_distance(points, first, tris, first, len(points), 1e-12)
    return d2.clamp_min(1e-12).sqrt().mean()


def _distance(v: torch.Tensor, f: torch.Tensor, target: torch.Tensor, config: RefineConfig,
              gen: torch.Generator, tree) -> torch.Tensor:
    """Symmetric distance between the mesh ``(v, f)`` and ``target`` points (``tree``: a k-d tree over them), as
    ``config`` measures it."""
    surface = _surface_samples(v, f, config.surface_points, gen)
    near = _to_faces(target, v[f]) if config.point_term == "faces" else _nearest(target, surface)
    return near + _nearest(surface, target, tree)


def _bounded(start: torch.Tensor, move: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bound: float) -> torch.Tensor:
    """``move`` of each vertex of ``start`` projected into the points' bounding box ``[lo, hi]`` (half a 7-bit cell
    of slack), then shortened to at most ``bound``: the two hard bounds of both refinement stages."""
    move = torch.minimum(torch.maximum(start + move, lo), hi) - start
    return move * torch.clamp(bound / move.norm(dim=1, keepdim=True).clamp_min(1e-12), max=1.0)


def _fit_affine(start: torch.Tensor, f: torch.Tensor, target: torch.Tensor, config: RefineConfig,
                gen: torch.Generator, tree, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``start`` moved by the affine map (about its centroid) that best fits ``target`` (``affine_steps`` of Adam),
    blended toward the identity so that no vertex moves farther than ``affine_max_shift``; then kept inside the box
    ``[lo, hi]`` as far as that bound allows."""
    center = start.mean(dim=0)
    linear = torch.eye(3, requires_grad=True)
    shift = torch.zeros(3, requires_grad=True)
    opt = torch.optim.Adam([linear, shift], lr=config.affine_lr)
    for _ in range(config.affine_steps):
        loss = _distance((start - center) @ linear.T + center + shift, f, target, config, gen, tree)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        move = (start - center) @ linear.T + center + shift - start
        move *= min(1.0, config.affine_max_shift / max(float(move.norm(dim=1).max()), 1e-12))
        return start + _bounded(start, move, lo, hi, config.affine_max_shift)


def refine_vertices(mesh: trimesh.Trimesh, points: np.ndarray, config: RefineConfig = RefineConfig(), *,
                    seed: int = 0) -> trimesh.Trimesh:
    """``mesh`` with its vertices moved to fit ``points (N, 3)`` better (same frame as the input; faces unchanged).

    Deterministic for a given ``seed``. A mesh with no area, or ``config.steps == 0``, is returned as is.
    """
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if config.steps == 0 or len(faces) == 0 or mesh.area <= 0:
        return mesh
    norm = Normalization.fit(points)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small products; one thread is fastest and leaves the other core alone
    try:
        gen = torch.Generator().manual_seed(seed)
        target = torch.from_numpy(norm.apply(np.asarray(points, dtype=np.float64))).float()
        if len(target) > 2048:
            target = target[torch.randperm(len(target), generator=gen)[:2048]]
        start = torch.from_numpy(norm.apply(np.asarray(mesh.vertices, dtype=np.float64))).float()
        f = torch.from_numpy(faces)
        tree = cKDTree(target.numpy())
        lo = target.min(dim=0).values - 1 / 256
        hi = target.max(dim=0).values + 1 / 256
        if config.affine_steps:
            start = _fit_affine(start, f, target, config, gen, tree, lo, hi)
        edges = torch.from_numpy(np.array(mesh.edges_unique, dtype=np.int64))
        rest = (start[edges[:, 0]] - start[edges[:, 1]]).norm(dim=1).clamp_min(1e-6)  # lengths after the affine stage
        offset = torch.zeros_like(start, requires_grad=True)
        opt = torch.optim.Adam([offset], lr=config.lr)
        for step in range(config.steps):
            if config.schedule == "cosine":
                opt.param_groups[0]["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * step / config.steps))
            v = start + offset
            loss = _distance(v, f, target, config, gen, tree)
            if config.edge_weight and len(edges):
                length = (v[edges[:, 0]] - v[edges[:, 1]]).norm(dim=1)
                loss = loss + config.edge_weight * ((length / rest - 1) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                offset.copy_(_bounded(start, offset, lo, hi, config.max_shift))
        moved = (start + offset).detach().double().numpy()
    finally:
        torch.set_num_threads(threads)
    return trimesh.Trimesh(norm.invert(moved), faces, process=False)
