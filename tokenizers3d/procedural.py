"""Procedural artist-style meshes, deterministic by seed, and the dataset built from them.

Every family makes closed, consistently wound (outward) triangle meshes with the topology a modeller
would use: few well-shaped faces, sharp features kept, flat regions as large triangles (a box is 12
triangles, an n-gon cap is a fan or an ear-clipped polygon, never a grid). Composite families
(``table``, ``chair``, ``shelf``, ``lamp``, ``mug``) are built from separate closed parts and label
every face with the index of its part; the other families label every face 0.

Typical use::

    pm = generate("chair", seed=7)            # ProceduralMesh
    pm.mesh, pm.face_labels, pm.part_names    # trimesh.Trimesh, (F,) int64, one name per label
    family = sample_family(seed=7)            # uniform over DEFAULT_FAMILIES
    make_dataset("data/procedural", 10_000, seed=0, workers=8)

The same ``(family, seed)`` always gives the same arrays (numpy's PCG64 stream; no global state).
With ``rotate=True`` the rotation is drawn after everything else, so the shape equals the unrotated one.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import math
import multiprocessing
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import numpy as np
import trimesh

from .mesh import clean_faces

GENERATOR_VERSION = 1
SPLIT_NAMES = ("train", "val", "test")

# ----------------------------------------------------------------------------------------------
# Parts and elementary operations
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One closed component of a procedural object.

    Attributes
    ----------
    vertices : (V, 3) float64
    faces : (F, 3) int64
        Counter-clockwise seen from outside.
    name : str
        Part name, e.g. ``"leg_2"``; composite objects give each part its own label.
    """

    vertices: np.ndarray
    faces: np.ndarray
    name: str = "body"

    def moved(self, offset: Sequence[float]) -> Part:
        """The part translated by ``offset`` (3,)."""
        return Part(self.vertices + np.asarray(offset, dtype=np.float64), self.faces, self.name)

    def renamed(self, name: str) -> Part:
        return Part(self.vertices, self.faces, name)

    def transformed(self, matrix: np.ndarray) -> Part:
        """The part with vertices mapped by a (3, 3) matrix; a negative determinant flips the winding."""
        matrix = np.asarray(matrix, dtype=np.float64)
        faces = self.faces if np.linalg.det(matrix) > 0 else self.faces[:, ::-1]
        return Part(self.vertices @ matrix.T, np.ascontiguousarray(faces), self.name)


def _part(vertices, faces, name: str = "body") -> Part:
    """Build a part and make its winding outward (positive signed volume)."""
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if signed_volume(v, f) < 0:
        f = f[:, ::-1]
    return Part(v, np.ascontiguousarray(f), name)


def signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Signed volume of a closed triangle mesh; positive when the winding is outward.

    Parameters
    ----------
    vertices : (V, 3) float
    faces : (F, 3) int
    """
    tri = np.asarray(vertices, dtype=np.float64)[np.asarray(faces)]
    return float(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6.0)


def _rotation_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rotation_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# Cyclic axis permutation (x, y, z) -> (z, x, y): a rotation, so winding is kept.
_AXES_ZXY = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def _quaternion_matrix(q: np.ndarray) -> np.ndarray:
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


# ----------------------------------------------------------------------------------------------
# Polygon triangulation (ear clipping)
# ----------------------------------------------------------------------------------------------


def polygon_area(polygon: np.ndarray) -> float:
    """Signed area of a 2-D polygon (N, 2); positive when counter-clockwise."""
    p = np.asarray(polygon, dtype=np.float64)
    x, y = p[:, 0], p[:, 1]
    return float(0.5 * (np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)))


def _cross2(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """z of (a - o) x (b - o); broadcasts over leading axes."""
    return (a[..., 0] - o[..., 0]) * (b[..., 1] - o[..., 1]) - (a[..., 1] - o[..., 1]) * (b[..., 0] - o[..., 0])


def _triangle_quality(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> float:
    """``4 sqrt(3) area / sum of squared edges``: 1 for equilateral, 0 for degenerate."""
    area = abs(float(_cross2(a, b, c))) / 2.0
    edges = float(((b - a) ** 2).sum() + ((c - b) ** 2).sum() + ((a - c) ** 2).sum())
    return 4.0 * math.sqrt(3.0) * area / edges if edges > 0 else 0.0


def triangulate_polygon(polygon: np.ndarray) -> np.ndarray:
    """Triangulate a simple polygon by ear clipping, cutting the best-shaped ear first.

    Parameters
    ----------
    polygon : (N, 2) float
        A simple polygon (no self-intersections, no repeated vertex), N >= 3, either orientation.

    Returns
    -------
    (N - 2, 3) int64
        Indices into ``polygon``; every triangle is counter-clockwise.

    Raises
    ------
    ValueError
        Fewer than 3 vertices, zero area, or no ear found (the polygon is not simple).
    """
    pts = np.asarray(polygon, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
        raise ValueError(f"expected an (N >= 3, 2) polygon, got shape {pts.shape}")
    area = polygon_area(pts)
    if area == 0:
        raise ValueError("polygon has zero area")
    remaining = list(range(len(pts))) if area > 0 else list(range(len(pts)))[::-1]
    eps = 1e-12 * float(np.abs(pts).max() ** 2 + 1.0)
    tris: list[tuple[int, int, int]] = []
    while len(remaining) > 3:
        k = _best_ear(pts, remaining, eps)
        m = len(remaining)
        tris.append((remaining[k - 1], remaining[k], remaining[(k + 1) % m]))
        remaining.pop(k)
    tris.append((remaining[0], remaining[1], remaining[2]))
    return np.asarray(tris, dtype=np.int64)


def _best_ear(pts: np.ndarray, remaining: list[int], eps: float) -> int:
    """Position in ``remaining`` of the ear whose triangle is best shaped."""
    idx = np.asarray(remaining)
    ring = pts[idx]
    prev, nxt = np.roll(ring, 1, axis=0), np.roll(ring, -1, axis=0)
    convex = _cross2(prev, ring, nxt) > eps
    best, best_q = -1, -1.0
    for k in np.flatnonzero(convex):
        a, b, c = prev[k], ring[k], nxt[k]
        others = np.delete(ring, [(k - 1) % len(ring), k, (k + 1) % len(ring)], axis=0)
        if len(others):
            inside = (_cross2(a, b, others) >= -eps) & (_cross2(b, c, others) >= -eps) & (_cross2(c, a, others) >= -eps)
            if inside.any():
                continue
        q = _triangle_quality(a, b, c)
        if q > best_q:
            best, best_q = int(k), q
    if best < 0:
        raise ValueError("no ear found: the polygon is not simple")
    return best


# ----------------------------------------------------------------------------------------------
# Primitive builders (all return closed, outward-wound parts)
# ----------------------------------------------------------------------------------------------


def _loft(bottom: np.ndarray, top: np.ndarray, cap: np.ndarray, name: str = "body") -> Part:
    """Solid between two N-gons with the same vertex order; caps triangulated by ``cap`` (T, 3).

    Parameters
    ----------
    bottom, top : (N, 3) float
        Counter-clockwise seen from +z (top above bottom).
    cap : (N - 2, 3) int
        Counter-clockwise triangles over the polygon indices.
    """
    n = len(bottom)
    i = np.arange(n)
    j = (i + 1) % n
    sides = np.concatenate([np.stack([i, j, n + j], 1), np.stack([i, n + j, n + i], 1)])
    faces = np.concatenate([cap[:, ::-1], cap + n, sides])
    return _part(np.vstack([bottom, top]), faces, name)


def extrude(polygon: np.ndarray, z0: float, z1: float, *, name: str = "body") -> Part:
    """Prism over a simple polygon (N, 2) from ``z0`` to ``z1``: 2 (N - 2) cap + 2 N side triangles."""
    poly = np.asarray(polygon, dtype=np.float64)
    if polygon_area(poly) < 0:
        poly = poly[::-1]
    cap = triangulate_polygon(poly)
    return _loft(_lift(poly, z0), _lift(poly, z1), cap, name)


def _lift(polygon: np.ndarray, z: float) -> np.ndarray:
    """(N, 2) polygon -> (N, 3) points at height ``z``."""
    return np.hstack([polygon, np.full((len(polygon), 1), float(z))])


def box(size: Sequence[float], center: Sequence[float] = (0.0, 0.0, 0.0), *, name: str = "body") -> Part:
    """Axis-aligned box, 8 vertices and 12 triangles."""
    sx, sy, sz = (float(s) / 2.0 for s in size)
    rect = np.array([[-sx, -sy], [sx, -sy], [sx, sy], [-sx, sy]])
    return extrude(rect, -sz, sz, name=name).moved(center)


def regular_polygon(n: int, radius: float = 1.0, phase: float = 0.0) -> np.ndarray:
    """Counter-clockwise regular n-gon (n, 2)."""
    t = phase + 2.0 * np.pi * np.arange(n) / n
    return radius * np.stack([np.cos(t), np.sin(t)], 1)


def lathe(profile: np.ndarray, segments: int, *, phase: float = 0.0, name: str = "body") -> Part:
    """Surface of revolution about +z of a profile from one axis point to another.

    Parameters
    ----------
    profile : (M, 2) float
        ``(r, z)`` points; the first and last lie on the axis (r = 0), the others have r > 0. Walk
        it with the solid on the left (bottom pole, outwards, up, back to the top pole).
    segments : int
        Number of vertices per ring (>= 3).

    Returns
    -------
    Part
        ``2 * segments * (M - 2)`` triangles: centre fans at the poles, two triangles per quad.
    """
    prof = np.asarray(profile, dtype=np.float64)
    if prof[0, 0] != 0 or prof[-1, 0] != 0 or np.any(prof[1:-1, 0] <= 0) or len(prof) < 3:
        raise ValueError("lathe profile must start and end on the axis with r > 0 in between")
    rings = prof[1:-1]
    n, k = int(segments), len(rings)
    t = phase + 2.0 * np.pi * np.arange(n) / n
    ring_v = np.stack([
        np.outer(rings[:, 0], np.cos(t)), np.outer(rings[:, 0], np.sin(t)), np.repeat(rings[:, 1:2], n, 1),
    ], -1).reshape(-1, 3)
    south, north = np.array([[0.0, 0.0, prof[0, 1]]]), np.array([[0.0, 0.0, prof[-1, 1]]])
    verts = np.vstack([south, ring_v, north])
    j = np.arange(n)
    jn = (j + 1) % n
    faces = [np.stack([np.zeros(n, np.int64), 1 + jn, 1 + j], 1)]
    for r in range(k - 1):
        a, b = 1 + r * n, 1 + (r + 1) * n
        faces += [np.stack([a + j, a + jn, b + jn], 1), np.stack([a + j, b + jn, b + j], 1)]
    top = 1 + (k - 1) * n
    faces.append(np.stack([np.full(n, len(verts) - 1), top + j, top + jn], 1))
    return _part(verts, np.concatenate(faces), name)


def lathe_loop(profile: np.ndarray, segments: int, *, phase: float = 0.0, name: str = "body") -> Part:
    """Ring-shaped solid: a closed ``(r, z)`` loop (M, 2), all r > 0, revolved about +z; 2 M segments triangles."""
    prof = np.asarray(profile, dtype=np.float64)
    if np.any(prof[:, 0] <= 0):
        raise ValueError("closed lathe profile must stay off the axis (r > 0)")
    n, k = int(segments), len(prof)
    t = phase + 2.0 * np.pi * np.arange(n) / n
    verts = np.stack([
        np.outer(prof[:, 0], np.cos(t)), np.outer(prof[:, 0], np.sin(t)), np.repeat(prof[:, 1:2], n, 1),
    ], -1).reshape(-1, 3)
    j = np.arange(n)
    jn = (j + 1) % n
    faces = []
    for r in range(k):
        a, b = r * n, ((r + 1) % k) * n
        faces += [np.stack([a + j, a + jn, b + jn], 1), np.stack([a + j, b + jn, b + j], 1)]
    return _part(verts, np.concatenate(faces), name)


def torus(major: float, minor: float, n_major: int, n_minor: int, *, arc: float | None = None,
          name: str = "body") -> Part:
    """Torus about +z, or a capped arc of one (``arc`` radians, centred on +x).

    Full torus: ``2 n_major n_minor`` triangles. Arc: ``n_major`` segments along the arc,
    ``2 n_major n_minor + 2 n_minor`` triangles (centre fans close the two ends).
    """
    closed = arc is None
    n_rings = n_major if closed else n_major + 1
    phi = (2.0 * np.pi * np.arange(n_major) / n_major) if closed else np.linspace(-arc / 2.0, arc / 2.0, n_rings)
    psi = 2.0 * np.pi * np.arange(n_minor) / n_minor
    rad = major + minor * np.cos(psi)  # (n_minor,)
    verts = np.stack([
        np.outer(np.cos(phi), rad), np.outer(np.sin(phi), rad), np.tile(minor * np.sin(psi), (n_rings, 1)),
    ], -1).reshape(-1, 3)
    j = np.arange(n_minor)
    jn = (j + 1) % n_minor
    faces = []
    for i in range(n_major):
        a, b = i * n_minor, ((i + 1) % n_rings) * n_minor
        faces += [np.stack([a + j, b + j, b + jn], 1), np.stack([a + j, b + jn, a + jn], 1)]
    if not closed:
        ends = major * np.stack([np.cos(phi[[0, -1]]), np.sin(phi[[0, -1]]), np.zeros(2)], 1)
        c0, c1 = len(verts), len(verts) + 1
        last = (n_rings - 1) * n_minor
        faces += [np.stack([np.full(n_minor, c0), j, jn], 1), np.stack([np.full(n_minor, c1), last + jn, last + j], 1)]
        verts = np.vstack([verts, ends])
    return _part(verts, np.concatenate(faces), name)


def rounded_box(size: Sequence[float], radius: float, segments: int, *, name: str = "body") -> Part:
    """Box whose edges and corners are rounded with ``segments`` steps per 90 degrees (1 = chamfer).

    Flat sides stay two triangles each; edges are strips of long quads; corners are octant patches.
    ``8 s^2 + 24 s + 12`` triangles for ``s`` segments (44 for a chamfered box).
    """
    half = np.asarray(size, dtype=np.float64) / 2.0
    s = int(segments)
    if not 0 < radius < half.min() or s < 1:
        raise ValueError("rounded_box needs 0 < radius < half the smallest side and segments >= 1")
    index: dict[tuple, int] = {}
    verts = []
    triples = [(i, j, s - i - j) for i in range(s + 1) for j in range(s + 1 - i)]
    for sign in np.ndindex(2, 2, 2):
        sg = np.array(sign) * 2 - 1
        for ijk in triples:
            d = sg * np.array(ijk, dtype=np.float64)
            index[(*sign, *ijk)] = len(verts)
            verts.append(sg * (half - radius) + radius * d / np.linalg.norm(d))
    faces: list[tuple[int, int, int]] = []
    for sign in np.ndindex(2, 2, 2):  # corner patches: a triangle grid over the octant
        for a in range(s):
            for b in range(s - a):
                faces.append((index[(*sign, a, b, s - a - b)], index[(*sign, a + 1, b, s - a - b - 1)],
                              index[(*sign, a, b + 1, s - a - b - 1)]))
                if a + b <= s - 2:
                    faces.append((index[(*sign, a + 1, b, s - a - b - 1)], index[(*sign, a + 1, b + 1, s - a - b - 2)],
                                  index[(*sign, a, b + 1, s - a - b - 1)]))
    for axis, s1, s2 in product(range(3), (0, 1), (0, 1)):  # edge strips between corners that differ in `axis`
        for t in range(s):
            ring = [index[(*_on_axes(axis, sa, s1, s2), *_on_axes(axis, 0, tt, s - tt))]
                    for sa, tt in ((0, t), (1, t), (1, t + 1), (0, t + 1))]
            faces += [(ring[0], ring[1], ring[2]), (ring[0], ring[2], ring[3])]
    for axis, sa in product(range(3), (0, 1)):  # flat sides: the four corners' pure-axis vertices
        ring = [index[(*_on_axes(axis, sa, s1, s2), *_on_axes(axis, s, 0, 0))]
                for s1, s2 in ((0, 0), (1, 0), (1, 1), (0, 1))]
        faces += [(ring[0], ring[1], ring[2]), (ring[0], ring[2], ring[3])]
    verts = np.asarray(verts)
    faces = np.asarray(faces, dtype=np.int64)
    return Part(verts, _orient_convex(verts, faces), name)


def _on_axes(axis: int, along: int, first: int, second: int) -> tuple[int, int, int]:
    """A 3-tuple with ``along`` at ``axis`` and ``first``, ``second`` at the other two axes in order."""
    out = [0, 0, 0]
    o1, o2 = (ax for ax in range(3) if ax != axis)
    out[axis], out[o1], out[o2] = along, first, second
    return out[0], out[1], out[2]


def _orient_convex(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Flip each face of a convex solid containing the origin so its normal points away from it."""
    tri = vertices[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    inward = np.einsum("ij,ij->i", normal, tri.mean(axis=1)) < 0
    out = faces.copy()
    out[inward] = out[inward][:, ::-1]
    return out


def cylinder(radius: float, height: float, segments: int, *, bevel: float = 0.0, radius_top: float | None = None,
             name: str = "body") -> Part:
    """Cylinder (or frustum with ``radius_top``) standing on z = 0; centre-fan caps; optional bevelled rims."""
    r0 = float(radius)
    r1 = r0 if radius_top is None else float(radius_top)
    if bevel > 0:
        prof = [(0, 0), (r0 - bevel, 0), (r0, bevel), (r1, height - bevel), (r1 - bevel, height), (0, height)]
    else:
        prof = [(0, 0), (r0, 0), (r1, height), (0, height)]
    return lathe(np.asarray(prof, dtype=np.float64), segments, name=name)


def pyramid(base: np.ndarray, apex: Sequence[float], *, name: str = "body") -> Part:
    """Pyramid over a counter-clockwise simple polygon (N, 2) at z = 0: (N - 2) + N triangles."""
    base = np.asarray(base, dtype=np.float64)
    cap = triangulate_polygon(base)
    n = len(base)
    i = np.arange(n)
    sides = np.stack([i, (i + 1) % n, np.full(n, n)], 1)
    verts = np.vstack([np.hstack([base, np.zeros((n, 1))]), np.asarray(apex, dtype=np.float64)[None]])
    return _part(verts, np.concatenate([cap[:, ::-1], sides]), name)


# ----------------------------------------------------------------------------------------------
# Random helpers
# ----------------------------------------------------------------------------------------------


def _log_int(rng: np.random.Generator, lo: int, hi: int) -> int:
    """Integer in [lo, hi], log-uniform (small values more likely)."""
    x = math.exp(rng.uniform(math.log(lo), math.log(hi + 1)))
    return int(min(hi, max(lo, math.floor(x))))


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _choice(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _board(rng: np.random.Generator, size: Sequence[float], center: Sequence[float], style: str, segments: int,
           name: str) -> Part:
    """A box-like part: plain box, or rounded/chamfered with a small radius."""
    if style == "box":
        return box(size, center, name=name)
    radius = float(rng.uniform(0.15, 0.4)) * float(min(size))
    return rounded_box(size, radius, segments, name=name).moved(center)


def _leg(rng: np.random.Generator, kind: str, width: float, height: float, base: Sequence[float], segments: int,
         name: str) -> Part:
    """A vertical leg standing on ``base`` (3,): square bar, round bar or tapered round bar."""
    x, y, z = (float(c) for c in base)
    if kind == "square":
        return box((width, width, height), (x, y, z + height / 2.0), name=name)
    top = width / 2.0 if kind == "round" else width / 2.0 * float(rng.uniform(1.2, 1.6))
    return cylinder(width / 2.0, height, segments, radius_top=top, name=name).moved((x, y, z))


# ----------------------------------------------------------------------------------------------
# Family generators: rng -> (parts, params)
# ----------------------------------------------------------------------------------------------

Generated = tuple[list[Part], dict]


def _gen_box(rng: np.random.Generator) -> Generated:
    size = rng.uniform(0.2, 1.0, 3)
    return [box(size)], {"size": size.tolist()}


def _gen_bevelled_box(rng: np.random.Generator) -> Generated:
    size = rng.uniform(0.3, 1.0, 3)
    segments = _log_int(rng, 1, 6)
    radius = _uniform(rng, 0.04, 0.3) * float(size.min())
    return [rounded_box(size, radius, segments)], {"size": size.tolist(), "radius": radius, "segments": segments}


def _gen_prism(rng: np.random.Generator) -> Generated:
    n = _log_int(rng, 3, 32)
    radius, height = _uniform(rng, 0.2, 0.6), _uniform(rng, 0.1, 1.2)
    poly = regular_polygon(n, radius, phase=_uniform(rng, 0, 2 * np.pi / n))
    return [extrude(poly, 0.0, height)], {"segments": n, "radius": radius, "height": height}


def _gen_cylinder(rng: np.random.Generator) -> Generated:
    n = _log_int(rng, 3, 32)
    radius, height = _uniform(rng, 0.1, 0.6), _uniform(rng, 0.1, 1.5)
    bevel = _uniform(rng, 0.05, 0.2) * min(radius, height / 2.0) if rng.random() < 0.3 else 0.0
    return [cylinder(radius, height, n, bevel=bevel)], {"segments": n, "radius": radius, "height": height,
                                                         "bevel": bevel}


def _gen_cone(rng: np.random.Generator) -> Generated:
    n = _log_int(rng, 3, 32)
    radius, height = _uniform(rng, 0.2, 0.6), _uniform(rng, 0.2, 1.5)
    if rng.random() < 0.35:
        top = _uniform(rng, 0.1, 0.8) * radius
        return [cylinder(radius, height, n, radius_top=top)], {"segments": n, "radius": radius, "height": height,
                                                                 "radius_top": top}
    prof = np.array([(0.0, 0.0), (radius, 0.0), (0.0, height)])
    return [lathe(prof, n)], {"segments": n, "radius": radius, "height": height, "radius_top": 0.0}


def _gen_pyramid(rng: np.random.Generator) -> Generated:
    n = _log_int(rng, 3, 12)
    radius, height = _uniform(rng, 0.3, 0.7), _uniform(rng, 0.3, 1.2)
    base = regular_polygon(n, radius, phase=np.pi / n)
    apex_xy = rng.uniform(-0.25, 0.25, 2) * radius
    if rng.random() < 0.3:
        shrink = _uniform(rng, 0.2, 0.7)
        top = np.hstack([base * shrink + apex_xy, np.full((n, 1), height)])
        part = _loft(np.hstack([base, np.zeros((n, 1))]), top, triangulate_polygon(base))
        return [part], {"segments": n, "radius": radius, "height": height, "truncated": shrink}
    part = pyramid(base, (*apex_xy, height))
    return [part], {"segments": n, "radius": radius, "height": height, "truncated": 0.0}


def _gen_torus(rng: np.random.Generator) -> Generated:
    n_major, n_minor = _log_int(rng, 3, 64), _log_int(rng, 3, 32)
    minor = _uniform(rng, 0.1, 0.45)
    phase = _uniform(rng, 0.0, np.pi)
    part = torus(1.0, minor, n_major, n_minor).transformed(_rotation_z(phase / n_major))
    return [part], {"n_major": n_major, "n_minor": n_minor, "major": 1.0, "minor": minor}


def _sphere_directions(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` unit vectors spread over the sphere: a Fibonacci lattice, jittered and randomly rotated (n, 3)."""
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    phi = k * math.pi * (3.0 - math.sqrt(5.0))
    d = np.column_stack([np.sqrt(1.0 - z * z) * np.cos(phi), np.sqrt(1.0 - z * z) * np.sin(phi), z])
    d += rng.normal(scale=_uniform(rng, 0.0, 0.5) * math.sqrt(4.0 / n), size=d.shape)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    quat = rng.normal(size=4)
    return d @ _quaternion_matrix(quat / np.linalg.norm(quat)).T


def star_surface(directions: np.ndarray, radius: np.ndarray, *, name: str = "body") -> Part:
    """The closed surface through ``directions[i] * radius[i]``, triangulated as the convex hull of the directions.

    The hull of unit vectors around the origin is a triangulation of the sphere; moving every vertex along its
    own ray by a positive factor keeps each triangle's orientation as seen from the origin (the sign of
    ``det(a, b, c)``), so the result is an embedded, outward-wound, star-shaped polyhedron for any radii.
    """
    from scipy.spatial import ConvexHull

    d = np.asarray(directions, dtype=np.float64)
    faces = ConvexHull(d).simplices.astype(np.int64)
    flip = np.einsum("ij,ij->i", d[faces[:, 0]], np.cross(d[faces[:, 1]], d[faces[:, 2]])) < 0
    faces[flip] = faces[flip][:, ::-1]
    used = np.unique(faces)
    remap = np.full(len(d), -1, np.int64)
    remap[used] = np.arange(len(used))
    return _part(d[used] * np.asarray(radius, dtype=np.float64)[used, None], remap[faces], name)


def _gen_pebble(rng: np.random.Generator) -> Generated:
    """Smooth organic solids as a scan decimated to a few dozen faces leaves them: pebbles, lumps, capsules, bones.

    Vertices on a jittered sphere lattice (irregular triangles), or on rings of latitude about the long axis
    (``capsule``); a superellipsoid radius (exponent 2 = ellipsoid, 4 = a rounded box) with a few Gaussian bumps
    and dents over the directions; an ellipsoid's axes; for ``bone`` knobs at both ends of the long axis and a
    bend ``z += b x^2`` (volume-preserving, so the surface stays embedded).
    """
    style = _choice(rng, ("pebble", "lump", "capsule", "bone"))
    if style == "capsule":
        rings, segments = int(rng.integers(2, 10)), int(rng.integers(4, 13))
        lat = (np.arange(rings) + 0.5) / rings * math.pi - math.pi / 2
        lon = np.arange(segments) * 2 * math.pi / segments
        la, lo = np.meshgrid(lat, lon, indexing="ij")
        lo = lo + (np.arange(rings)[:, None] % 2) * (math.pi / segments) * rng.integers(0, 2)
        ring = np.column_stack([np.sin(la).ravel(), np.cos(la).ravel() * np.cos(lo).ravel(),
                                np.cos(la).ravel() * np.sin(lo).ravel()])
        d = np.vstack([ring, [[1.0, 0, 0], [-1.0, 0, 0]]])
    else:
        d = _sphere_directions(rng, _log_int(rng, 8, 150))
    n = len(d)
    power = _uniform(rng, 2.0, 4.0)
    radius = 1.0 / np.sum(np.abs(d) ** power, axis=1) ** (1.0 / power)
    bumps = {"pebble": 0, "capsule": 0, "lump": int(rng.integers(2, 7)), "bone": 2}[style]
    centres = rng.normal(size=(bumps, 3))
    centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-9)
    amps = rng.uniform(-0.25, 0.45, bumps)
    if style == "bone":
        centres, amps = np.array([[1.0, 0, 0], [-1.0, 0, 0]]), rng.uniform(0.3, 0.8, 2)
    widths = rng.uniform(0.3, 0.7, bumps)
    for c, a, w in zip(centres, amps, widths, strict=True):
        radius = radius + a * np.exp(-np.sum((d - c) ** 2, axis=1) / (2 * w * w))
    axes = rng.uniform(0.3, 1.0, 3)
    if style in ("bone", "capsule"):
        axes = np.array([1.0, _uniform(rng, 0.15, 0.5), _uniform(rng, 0.15, 0.5)])
    part = star_surface(d, np.maximum(radius, 0.2), name="body").transformed(np.diag(axes))
    bend = _uniform(rng, -0.4, 0.4) if style == "bone" else 0.0
    if bend:
        v = part.vertices.copy()
        v[:, 2] += bend * v[:, 0] ** 2
        part = Part(v, part.faces, part.name)
    return [part], {"style": style, "points": n, "power": power, "bumps": bumps, "axes": axes.tolist(),
                    "bend": bend}


def _stairs_polygon(steps: int, depth: float, rise: float) -> np.ndarray:
    pts = [(0.0, 0.0), (steps * depth, 0.0)]
    for i in range(steps, 0, -1):
        pts += [(i * depth, i * rise), ((i - 1) * depth, i * rise)]
    return np.asarray(pts)


def _gen_stairs(rng: np.random.Generator) -> Generated:
    steps = _log_int(rng, 2, 16)
    depth, rise, width = _uniform(rng, 0.2, 0.35), _uniform(rng, 0.12, 0.22), _uniform(rng, 0.6, 2.0)
    part = extrude(_stairs_polygon(steps, depth, rise), 0.0, width).transformed(_AXES_ZXY)
    return [part], {"steps": steps, "depth": depth, "rise": rise, "width": width}


def _letter_polygon(rng: np.random.Generator, letter: str) -> np.ndarray:
    w, h = _uniform(rng, 0.6, 1.2), _uniform(rng, 0.6, 1.2)
    t = _uniform(rng, 0.15, 0.3) * min(w, h)
    if letter == "L":
        pts = [(0, 0), (w, 0), (w, t), (t, t), (t, h), (0, h)]
    elif letter == "T":
        pts = [(w / 2 - t / 2, 0), (w / 2 + t / 2, 0), (w / 2 + t / 2, h - t), (w, h - t), (w, h), (0, h),
               (0, h - t), (w / 2 - t / 2, h - t)]
    elif letter == "U":
        pts = [(0, 0), (w, 0), (w, h), (w - t, h), (w - t, t), (t, t), (t, h), (0, h)]
    elif letter == "H":
        m0, m1 = h / 2 - t / 2, h / 2 + t / 2
        pts = [(0, 0), (t, 0), (t, m0), (w - t, m0), (w - t, 0), (w, 0), (w, h), (w - t, h), (w - t, m1),
               (t, m1), (t, h), (0, h)]
    else:  # plus
        a0, a1, b0, b1 = w / 2 - t / 2, w / 2 + t / 2, h / 2 - t / 2, h / 2 + t / 2
        pts = [(a0, 0), (a1, 0), (a1, b0), (w, b0), (w, b1), (a1, b1), (a1, h), (a0, h), (a0, b1), (0, b1),
               (0, b0), (a0, b0)]
    return np.asarray(pts, dtype=np.float64)


def _star_polygon(rng: np.random.Generator, n: int, style: str) -> np.ndarray:
    """Star-shaped (hence simple) polygon around the origin with ``n`` vertices."""
    step = 2.0 * np.pi / n
    angles = step * np.arange(n) + rng.uniform(-0.3, 0.3, n) * step
    if style == "star":
        radii = np.where(np.arange(n) % 2 == 0, 1.0, _uniform(rng, 0.35, 0.7)) * rng.uniform(0.9, 1.1, n)
    else:  # blob: a few random harmonics
        k = np.arange(1, 4)
        amp = rng.uniform(0.0, 0.18, 3)
        ph = rng.uniform(0, 2 * np.pi, 3)
        radii = 1.0 + (amp[None] * np.cos(k[None] * angles[:, None] + ph[None])).sum(1)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1) * 0.5


def _gen_extrusion(rng: np.random.Generator) -> Generated:
    style = _choice(rng, ("star", "blob", "letter"))
    if style == "letter":
        letter = _choice(rng, ("L", "T", "U", "H", "plus"))
        poly, extra = _letter_polygon(rng, letter), {"letter": letter}
    else:
        n = 2 * _log_int(rng, 3, 20) if style == "star" else _log_int(rng, 5, 40)
        poly, extra = _star_polygon(rng, n, style), {}
    height = _uniform(rng, 0.05, 0.8)
    return [extrude(poly, 0.0, height)], {"style": style, "n_points": len(poly), "height": height, **extra}


def _smooth_profile(z: np.ndarray, knots_z: np.ndarray, knots_r: np.ndarray) -> np.ndarray:
    """Monotone cubic (no overshoot) radius profile through the knots, sampled at ``z``."""
    from scipy.interpolate import PchipInterpolator

    return PchipInterpolator(knots_z, knots_r)(z)


def _hollow_profile(z: np.ndarray, r: np.ndarray, thickness: float, floor: float) -> np.ndarray:
    """Closed vessel profile: outer wall up, rim, inner wall (offset inwards) down to a floor at ``floor``."""
    outer = [(0.0, 0.0)] + list(zip(r.tolist(), z.tolist(), strict=True))
    inner_z = z[z > floor * (1.0 + 1e-9) + 1e-12][::-1]  # a ring at the floor height (up to round-off) is the floor
    inner_r = np.interp(inner_z, z, r) - thickness
    floor_r = float(np.interp(floor, z, r)) - thickness
    inner = list(zip(inner_r.tolist(), inner_z.tolist(), strict=True)) + [(floor_r, floor), (0.0, floor)]
    return np.asarray(outer + inner)


def _gen_lathe(rng: np.random.Generator) -> Generated:
    style = _choice(rng, ("vase", "bowl", "bottle", "baluster"))
    segments = _log_int(rng, 6, 64)
    rings = _log_int(rng, 4, 24)
    height = _uniform(rng, 0.8, 1.6) if style != "bowl" else _uniform(rng, 0.25, 0.5)
    z = np.linspace(0.0, height, rings)
    if style == "bottle":
        body, neck = _uniform(rng, 0.25, 0.45), _uniform(rng, 0.06, 0.12)
        shoulder = _uniform(rng, 0.45, 0.7) * height
        kz = np.array([0.0, shoulder, shoulder + 0.15 * height, height])
        r = _smooth_profile(z, kz, np.array([body, body, neck, neck]))
    else:
        n_knots = 4
        kz = np.linspace(0.0, height, n_knots)
        lo, hi = (0.35, 0.8) if style == "bowl" else (0.12, 0.45)
        kr = rng.uniform(lo, hi, n_knots)
        if style == "bowl":
            kr = np.sort(kr) * np.array([0.5, 0.9, 1.0, 1.0])
        r = _smooth_profile(z, kz, kr)
    if style in ("vase", "bowl"):
        thickness = _uniform(rng, 0.02, 0.05)
        r = np.maximum(r, 2.5 * thickness)
        floor = min(_uniform(rng, 1.0, 3.0) * thickness, 0.3 * height)
        prof = _hollow_profile(z, r, thickness, floor)
    else:
        thickness = 0.0
        prof = np.vstack([[0.0, 0.0], np.stack([r, z], 1), [0.0, height]])
    part = lathe(prof, segments, phase=_uniform(rng, 0, np.pi))
    return [part], {"style": style, "segments": segments, "rings": rings, "height": height, "thickness": thickness}


# --- composites --------------------------------------------------------------------------------


def _gen_table(rng: np.random.Generator) -> Generated:
    style = _choice(rng, ("legs", "round_legs", "pedestal"))
    height, thick = _uniform(rng, 0.45, 0.8), _uniform(rng, 0.025, 0.07)
    params: dict = {"style": style, "height": height, "thickness": thick}
    parts: list[Part] = []
    leg_top = height - thick / 2.0  # legs reach into the top
    if style == "legs":
        width, depth = _uniform(rng, 0.8, 2.0), _uniform(rng, 0.5, 1.0)
        top_style = _choice(rng, ("box", "rounded"))
        top_seg = _log_int(rng, 1, 3)
        parts.append(_board(rng, (width, depth, thick), (0, 0, height - thick / 2.0), top_style, top_seg, "top"))
        half = np.array([width, depth]) / 2.0
        params.update(width=width, depth=depth, top_style=top_style, top_segments=top_seg)
    else:
        radius = _uniform(rng, 0.35, 0.8)
        n = _log_int(rng, 12, 48)
        bevel = 0.3 * thick if rng.random() < 0.5 else 0.0
        parts.append(cylinder(radius, thick, n, bevel=bevel, name="top").moved((0, 0, height - thick)))
        half = np.array([radius, radius]) / math.sqrt(2.0)
        params.update(radius=radius, top_segments=n, bevel=bevel)
    if style == "pedestal":
        n = _log_int(rng, 6, 24)
        stem_r = _uniform(rng, 0.04, 0.1)
        foot_r = _uniform(rng, 0.25, 0.45)
        foot_h = _uniform(rng, 0.02, 0.05)
        parts.append(cylinder(stem_r, leg_top - foot_h / 2.0, n, name="stem").moved((0, 0, foot_h / 2.0)))
        parts.append(cylinder(foot_r, foot_h, 2 * n, bevel=0.3 * foot_h, name="foot"))
        params.update(stem_segments=n)
        return parts, params
    kind = _choice(rng, ("square", "round", "tapered"))
    leg_w = _uniform(rng, 0.035, 0.09)
    n = _log_int(rng, 6, 16)
    inset = leg_w / 2.0 + _uniform(rng, 0.0, 0.08)
    corners = [(sx * (half[0] - inset), sy * (half[1] - inset)) for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    for i, (x, y) in enumerate(corners):
        parts.append(_leg(rng, kind, leg_w, leg_top, (x, y, 0.0), n, f"leg_{i}"))
    params.update(leg_kind=kind, leg_width=leg_w, leg_segments=n)
    if style == "legs" and rng.random() < 0.5:
        apron_h = _uniform(rng, 0.06, 0.14)
        at = leg_w * 0.4
        zc = height - thick - apron_h / 2.0 + 0.25 * thick
        spans = (2 * (half[0] - inset), 2 * (half[1] - inset))
        for i, (axis, sgn) in enumerate(((0, -1), (1, 1), (0, 1), (1, -1))):
            size = (spans[0], at, apron_h) if axis == 0 else (at, spans[1], apron_h)
            center = (0, sgn * (half[1] - inset), zc) if axis == 0 else (sgn * (half[0] - inset), 0, zc)
            parts.append(box(size, center, name=f"apron_{i}"))
        params.update(apron_height=apron_h)
    return parts, params


def _gen_chair(rng: np.random.Generator) -> Generated:
    width, depth = _uniform(rng, 0.4, 0.6), _uniform(rng, 0.4, 0.55)
    seat_h, thick = _uniform(rng, 0.4, 0.5), _uniform(rng, 0.03, 0.07)
    back_h = _uniform(rng, 0.35, 0.6)
    seat_style, seat_seg = _choice(rng, ("box", "rounded")), _log_int(rng, 1, 2)
    parts = [_board(rng, (width, depth, thick), (0, 0, seat_h - thick / 2.0), seat_style, seat_seg, "seat")]
    kind = _choice(rng, ("square", "round"))
    leg_w, n = _uniform(rng, 0.03, 0.05), _log_int(rng, 6, 12)
    inset = leg_w / 2.0 + 0.005
    hx, hy = width / 2.0 - inset, depth / 2.0 - inset
    top = seat_h + back_h
    for i, (sx, sy) in enumerate(((-1, -1), (1, -1), (1, 1), (-1, 1))):  # +y is the back
        h = top if sy > 0 else seat_h - thick / 2.0
        parts.append(_leg(rng, kind, leg_w, h, (sx * hx, sy * hy, 0.0), n, f"leg_{i}"))
    back = _choice(rng, ("panel", "slats", "rails"))
    bt = leg_w * 0.6
    rail_h = _uniform(rng, 0.05, 0.1)
    span = 2 * hx
    if back == "panel":
        ph = back_h * _uniform(rng, 0.5, 0.85)
        parts.append(box((span, bt, ph), (0, hy, top - ph / 2.0 - 0.01), name="back_panel"))
        n_slats = 0
    else:
        parts.append(box((span, bt, rail_h), (0, hy, top - rail_h / 2.0 - 0.01), name="top_rail"))
        n_slats = _log_int(rng, 2, 6)
        if back == "slats":
            z0, z1 = seat_h - thick / 2.0, top - rail_h / 2.0 - 0.01
            sw = min(span / (2 * n_slats + 1), 0.05)
            xs = np.linspace(-hx, hx, n_slats + 2)[1:-1]
            for i, x in enumerate(xs):
                parts.append(box((sw, bt * 0.8, z1 - z0), (x, hy, (z0 + z1) / 2.0), name=f"slat_{i}"))
        else:
            zs = np.linspace(seat_h, top - rail_h, n_slats + 1)[1:]
            for i, zc in enumerate(zs[:-1]):
                parts.append(box((span, bt * 0.8, rail_h * 0.6), (0, hy, zc), name=f"rail_{i}"))
    params = {"width": width, "depth": depth, "seat_height": seat_h, "thickness": thick, "back_height": back_h,
              "seat_style": seat_style, "leg_kind": kind, "leg_segments": n, "back": back, "n_slats": n_slats}
    if rng.random() < 0.4:
        zc, sw = _uniform(rng, 0.1, 0.2), leg_w * 0.6
        parts.append(box((sw, 2 * hy, sw), (-hx, 0, zc), name="stretcher_0"))
        parts.append(box((sw, 2 * hy, sw), (hx, 0, zc), name="stretcher_1"))
        params["stretchers"] = 2
    return parts, params


def _gen_shelf(rng: np.random.Generator) -> Generated:
    width, depth, height = _uniform(rng, 0.5, 1.5), _uniform(rng, 0.2, 0.45), _uniform(rng, 0.6, 2.2)
    t = _uniform(rng, 0.015, 0.04)
    n_boards = _log_int(rng, 2, 12)
    style = _choice(rng, ("box", "rounded"))
    seg = _log_int(rng, 1, 4)
    parts = []
    for i, sx in enumerate((-1, 1)):
        parts.append(_board(rng, (t, depth, height), (sx * (width / 2.0 - t / 2.0), 0, height / 2.0), style, seg,
                            f"side_{i}"))
    inner_w = width - 2 * t
    zs = np.linspace(t / 2.0, height - t / 2.0, n_boards)
    for i, zc in enumerate(zs):  # boards reach halfway into the side panels
        parts.append(_board(rng, (inner_w + t, depth * 0.98, t), (0, -0.005 * depth, zc), style, seg, f"board_{i}"))
    has_back = bool(rng.random() < 0.5)
    if has_back:
        parts.append(box((inner_w + t, t / 2.0, height - t), (0, depth / 2.0 - t / 4.0 - 1e-3, height / 2.0),
                         name="back"))
    n_div = int(rng.integers(0, 4)) if n_boards >= 2 else 0
    for i, x in enumerate(np.linspace(-inner_w / 2.0, inner_w / 2.0, n_div + 2)[1:-1]):
        parts.append(_board(rng, (t, depth * 0.95, height - t), (x, -0.01 * depth, height / 2.0), style, seg,
                            f"divider_{i}"))
    params = {"width": width, "depth": depth, "height": height, "thickness": t, "n_boards": n_boards,
              "style": style, "segments": seg, "back": has_back, "n_dividers": n_div}
    return parts, params


def _gen_lamp(rng: np.random.Generator) -> Generated:
    n = _log_int(rng, 8, 48)
    base_kind = _choice(rng, ("disk", "dome", "square"))
    base_r, base_h = _uniform(rng, 0.12, 0.25), _uniform(rng, 0.02, 0.06)
    if base_kind == "square":
        base = rounded_box((2 * base_r, 2 * base_r, base_h), 0.3 * base_h, 1, name="base").moved((0, 0, base_h / 2))
    elif base_kind == "dome":
        base = cylinder(base_r, base_h, n, radius_top=0.5 * base_r, name="base")
    else:
        base = cylinder(base_r, base_h, n, bevel=0.3 * base_h, name="base")
    stem_r, stem_h = _uniform(rng, 0.01, 0.025), _uniform(rng, 0.3, 0.8)
    stem_n = _log_int(rng, 6, 16)
    stem = cylinder(stem_r, stem_h, stem_n, name="stem").moved((0, 0, base_h / 2.0))
    top_z = base_h / 2.0 + stem_h
    shade_h = _uniform(rng, 0.15, 0.35)
    r_bot, r_top = _uniform(rng, 0.12, 0.3), _uniform(rng, 0.06, 0.2)
    t = _uniform(rng, 0.004, 0.012)
    z0 = top_z - 0.6 * shade_h
    loop = np.array([(r_bot, z0), (r_top, z0 + shade_h), (r_top - t, z0 + shade_h), (r_bot - t, z0)])
    shade = lathe_loop(loop, n, name="shade")
    parts = [base, stem, shade]
    has_bulb = bool(rng.random() < 0.6)
    if has_bulb:
        br = min(_uniform(rng, 0.03, 0.05), 0.6 * (r_top - t))
        ang = np.linspace(0.0, np.pi, _log_int(rng, 4, 8) + 1)
        prof = np.stack([br * np.sin(ang), top_z - br * np.cos(ang)], 1)
        prof[0, 0] = prof[-1, 0] = 0.0
        parts.append(lathe(prof, max(8, n // 2), name="bulb"))
    return parts, {"segments": n, "base": base_kind, "stem_height": stem_h, "shade_height": shade_h,
                   "bulb": has_bulb}


def _gen_mug(rng: np.random.Generator) -> Generated:
    n = _log_int(rng, 12, 48)
    radius, height = _uniform(rng, 0.3, 0.45), _uniform(rng, 0.7, 1.1)
    t = _uniform(rng, 0.04, 0.07)
    floor = _uniform(rng, 0.05, 0.1)
    bev = 0.5 * t
    prof = np.array([(0, 0), (radius - bev, 0), (radius, bev), (radius, height), (radius - t, height),
                     (radius - t, floor), (0, floor)])
    body = lathe(prof, n, name="body")
    arc = _uniform(rng, 0.5, 0.56) * 2 * np.pi  # ends enter the wall almost horizontally
    tube = _uniform(rng, 0.035, 0.06)
    span = _uniform(rng, 0.45, 0.65) * height  # vertical distance between the two ends
    major = span / 2.0 / math.sin(arc / 2.0)
    xc = radius - t / 2.0 - major * math.cos(arc / 2.0)  # both ends sit in the wall
    n_arc, n_tube = _log_int(rng, 6, 16), _log_int(rng, 4, 12)
    handle = torus(major, tube, n_arc, n_tube, arc=arc, name="handle").transformed(_rotation_x(np.pi / 2.0))
    handle = handle.moved((xc, 0.0, height * _uniform(rng, 0.45, 0.55)))
    return [body, handle], {"segments": n, "radius": radius, "height": height, "thickness": t, "arc": arc,
                            "handle_segments": n_arc, "handle_tube_segments": n_tube}


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FamilySpec:
    """One procedural family and what it promises.

    Attributes
    ----------
    name : str
    generator : callable
        ``generator(rng) -> (parts, params)``.
    watertight : bool
        Every mesh is closed (each edge shared by exactly two faces).
    face_range : (int, int)
        Inclusive bounds on the face count of every mesh the family makes.
    composite : bool
        Built from several labelled parts (at least two).
    anisotropy : float
        Each axis is scaled by ``exp(U(-a, a))`` after generation.
    description : str
    """

    name: str
    generator: Callable[[np.random.Generator], Generated]
    watertight: bool
    face_range: tuple[int, int]
    composite: bool = False
    anisotropy: float = 0.35
    description: str = ""


def _spec(name, gen, face_range, description, *, composite=False, anisotropy=0.35) -> FamilySpec:
    return FamilySpec(name, gen, True, face_range, composite, 0.12 if composite else anisotropy, description)


FAMILIES: dict[str, FamilySpec] = {s.name: s for s in (
    _spec("box", _gen_box, (12, 12), "axis-aligned box, 12 triangles"),
    _spec("bevelled_box", _gen_bevelled_box, (44, 444), "box with chamfered (1) or rounded (2-6 steps) edges"),
    _spec("prism", _gen_prism, (8, 124), "regular n-gon prism, 3-32 sides, ear-clipped caps"),
    _spec("cylinder", _gen_cylinder, (12, 320), "3-32 segments, centre-fan caps, optional bevelled rims"),
    _spec("cone", _gen_cone, (6, 128), "cone or frustum, 3-32 segments"),
    _spec("pyramid", _gen_pyramid, (4, 44), "3-12 sided pyramid (oblique apex) or truncated pyramid"),
    _spec("torus", _gen_torus, (18, 4096), "low-poly torus, 3-64 x 3-32 segments"),
    _spec("stairs", _gen_stairs, (20, 132), "straight staircase, 2-16 steps, extruded profile"),
    _spec("extrusion", _gen_extrusion, (16, 156), "extruded random simple polygon (star, blob, letter)"),
    _spec("lathe", _gen_lathe, (48, 6272), "vases, bowls (hollow), bottles, balusters; 6-64 segments"),
    _spec("table", _gen_table, (60, 1056), "top + legs (+ apron), or round top + pedestal", composite=True),
    _spec("chair", _gen_chair, (72, 392), "seat + 4 legs + back (panel, slats, rails) + stretchers",
          composite=True),
    _spec("shelf", _gen_shelf, (48, 4024), "side panels + boards (+ back, dividers)", composite=True),
    _spec("lamp", _gen_lamp, (120, 1264), "base + stem + shade (+ bulb)", composite=True),
    _spec("mug", _gen_mug, (176, 888), "hollow lathed body + tube-arc handle", composite=True),
    _spec("pebble", _gen_pebble, (12, 296), "smooth organic solid (pebble, lump, capsule, bent bone), irregular triangles"),
)}
#: The families a dataset or stream draws from when none are named: every family made before ``pebble`` (added
#: 2026-11-30), so that earlier datasets, streams and held-out splits stay identical. Name ``pebble`` to use it.
DEFAULT_FAMILIES: tuple[str, ...] = tuple(sorted(n for n in FAMILIES if n != "pebble"))


def get_family(name: str) -> FamilySpec:
    """The :class:`FamilySpec` called ``name``; ``KeyError`` lists the known families."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown procedural family {name!r}; choose from {', '.join(sorted(FAMILIES))}") from None


# ----------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------


@dataclass
class ProceduralMesh:
    """One generated object.

    Attributes
    ----------
    mesh : trimesh.Trimesh
        Closed, outward-wound triangle mesh, bounding box centred at the origin.
    face_labels : (F,) int64
        Part index of every face (all 0 for non-composite families).
    part_names : list of str
        ``part_names[label]`` names each part.
    family : str
    seed : int
    params : dict
        JSON-serializable parameters that were drawn (plus ``scale`` and ``rotation``).
    """

    mesh: trimesh.Trimesh
    face_labels: np.ndarray
    part_names: list[str]
    family: str
    seed: int
    params: dict = field(default_factory=dict)

    @property
    def n_faces(self) -> int:
        return int(len(self.mesh.faces))

    @property
    def n_parts(self) -> int:
        return len(self.part_names)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return float(obj)
    return obj


def _assemble(parts: list[Part], composite: bool, family: str):
    """Concatenate parts: vertices (V, 3), faces (F, 3), labels (F,), part names."""
    offsets = np.cumsum([0] + [len(p.vertices) for p in parts])
    vertices = np.vstack([p.vertices for p in parts])
    faces = np.vstack([p.faces + off for p, off in zip(parts, offsets[:-1], strict=True)])
    if composite:
        labels = np.concatenate([np.full(len(p.faces), i, np.int64) for i, p in enumerate(parts)])
        names = [p.name for p in parts]
    else:
        labels, names = np.zeros(len(faces), np.int64), [family]
    return vertices, faces, labels, names


def generate(family: str, seed: int, *, rotate: bool = False) -> ProceduralMesh:
    """Make one object of ``family`` from ``seed`` (same inputs, same arrays).

    Parameters
    ----------
    family : str
        A key of :data:`FAMILIES`.
    seed : int
        Non-negative.
    rotate : bool
        Apply a uniformly random rotation, drawn after everything else (the shape does not change).

    Returns
    -------
    ProceduralMesh
    """
    spec = get_family(family)
    rng = np.random.default_rng(int(seed))
    parts, params = spec.generator(rng)
    scale = np.exp(rng.uniform(-spec.anisotropy, spec.anisotropy, 3))
    vertices, faces, labels, names = _assemble(parts, spec.composite, spec.name)
    vertices = (vertices - (vertices.min(0) + vertices.max(0)) / 2.0) * scale
    params = {**params, "scale": scale.tolist(), "rotation": None}
    if rotate:
        quat = rng.normal(size=4)
        quat /= np.linalg.norm(quat)
        vertices = vertices @ _quaternion_matrix(quat).T
        vertices -= (vertices.min(0) + vertices.max(0)) / 2.0
        params["rotation"] = quat.tolist()
    _check_clean(vertices, faces, family, seed)
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    return ProceduralMesh(mesh, labels, names, spec.name, int(seed), _jsonable(params))


def _check_clean(vertices: np.ndarray, faces: np.ndarray, family: str, seed: int) -> None:
    """Guard: canonical clean-up must keep every face and vertex (else a generator has a bug)."""
    v, f, _ = clean_faces(vertices, faces)
    if len(f) != len(faces) or len(v) != len(vertices):
        raise RuntimeError(f"procedural generator {family!r} (seed {seed}) made duplicate or degenerate elements: "
                           f"{len(faces)} -> {len(f)} faces, {len(vertices)} -> {len(v)} vertices")


def sample_family(seed: int, families: Sequence[str] | None = None) -> str:
    """A family drawn uniformly from ``families`` (default :data:`DEFAULT_FAMILIES`, in sorted order) by ``seed``."""
    names = sorted(families) if families is not None else list(DEFAULT_FAMILIES)
    if not names:
        raise ValueError("no family to sample from")
    for name in names:
        get_family(name)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xFA51]))
    return names[int(rng.integers(len(names)))]


def object_seed(seed: int, index: int, attempt: int = 0) -> int:
    """Seed of object ``index`` of a dataset made with ``seed`` (independent of worker count)."""
    key = [int(seed), int(index)] + ([int(attempt) % 2**32, int(attempt < 0)] if attempt else [])
    return int(np.random.SeedSequence(key).generate_state(1, dtype=np.uint32)[0])


# ----------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------

ATTEMPTS_PER_FAMILY = 16
MAX_ATTEMPTS = 256

@dataclass(frozen=True)
class DatasetConfig:
    """What decides a dataset's content; stored as ``dataset.json`` and checked when resuming."""

    seed: int = 0
    families: tuple[str, ...] | None = None
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1)
    max_faces: int | None = None
    rotate: bool = False

    def to_dict(self) -> dict:
        return {"format": 1, "generator_version": GENERATOR_VERSION, "seed": self.seed,
                "families": None if self.families is None else list(self.families), "splits": list(self.splits),
                "max_faces": self.max_faces, "rotate": self.rotate}


def object_id(index: int) -> str:
    return f"{int(index):07d}"


def assign_split(obj_id: str, seed: int, splits: Sequence[float] = (0.8, 0.1, 0.1)) -> str:
    """``"train"``, ``"val"`` or ``"test"`` from a hash of ``(seed, obj_id)``; fractions ``splits`` (3,)."""
    digest = hashlib.sha256(f"{int(seed)}:{obj_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    bounds = np.cumsum(np.asarray(splits, dtype=np.float64))
    for name, bound in zip(SPLIT_NAMES, bounds, strict=True):
        if u < bound:
            return name
    return SPLIT_NAMES[int(np.flatnonzero(np.asarray(splits) > 0)[-1])]


def _check_splits(splits: Sequence[float]) -> tuple[float, float, float]:
    s = tuple(float(x) for x in splits)
    if len(s) != 3 or any(x < 0 for x in s) or not math.isclose(sum(s), 1.0, abs_tol=1e-6):
        raise ValueError(f"splits must be three non-negative fractions summing to 1 (train, val, test), got {splits}")
    return s


def _eligible_families(families: Sequence[str] | None, max_faces: int | None) -> tuple[str, ...]:
    names = list(DEFAULT_FAMILIES) if families is None else sorted(set(families))
    for name in names:
        get_family(name)
    if max_faces is not None:
        names = [n for n in names if FAMILIES[n].face_range[0] <= max_faces]
    if not names:
        raise ValueError(f"no family can make a mesh with at most {max_faces} faces")
    return tuple(names)


def build_object(index: int, config: DatasetConfig) -> tuple[ProceduralMesh, int]:
    """Object ``index`` of a dataset and the attempt that met ``config.max_faces``.

    Attempt 0 is ``generate(sample_family(object_seed(seed, index)), object_seed(seed, index))``.
    Too large a mesh -- or a generator failure on one seed (a ``RuntimeWarning`` says which) -- is re-drawn
    with seed ``object_seed(seed, index, attempt)``; after every
    :data:`ATTEMPTS_PER_FAMILY` failures the family is re-drawn too, so with ``max_faces`` the
    families that rarely fit are somewhat under-represented.
    """
    names = _eligible_families(config.families, config.max_faces)
    family = sample_family(object_seed(config.seed, index), names)
    for attempt in range(MAX_ATTEMPTS):
        if attempt and attempt % ATTEMPTS_PER_FAMILY == 0:
            family = sample_family(object_seed(config.seed, index, -attempt), names)
        seed = object_seed(config.seed, index, attempt)
        try:
            pm = generate(family, seed, rotate=config.rotate)
        except RuntimeError as exc:  # a generator bug on one seed must not stop a dataset or a training stream
            warnings.warn(f"object {index}: {exc}; drawing another", RuntimeWarning, stacklevel=2)
            continue
        if config.max_faces is None or pm.n_faces <= config.max_faces:
            return pm, attempt
    raise RuntimeError(f"no mesh with at most {config.max_faces} faces for object {index} in {MAX_ATTEMPTS} attempts "
                       f"(families {', '.join(names)})")


def _write_object(out_dir: str, index: int, config: DatasetConfig) -> dict:
    """Worker: generate object ``index``, write its PLY atomically, return its metadata record."""
    from .io import save_mesh

    pm, attempt = build_object(index, config)
    oid = object_id(index)
    split = assign_split(oid, config.seed, config.splits)
    rel = f"meshes/{split}/{oid}.ply"
    save_mesh(Path(out_dir) / rel, pm.mesh, face_labels=pm.face_labels)
    return {"id": oid, "index": int(index), "family": pm.family, "seed": pm.seed, "attempt": attempt, "split": split,
            "path": rel, "n_faces": pm.n_faces, "n_vertices": int(len(pm.mesh.vertices)),
            "watertight": bool(pm.mesh.is_watertight), "n_parts": pm.n_parts, "part_names": pm.part_names,
            "params": pm.params}


def _read_metadata(path: Path) -> list[dict]:
    """Records of ``metadata.jsonl``; unparsable lines (a write cut short) are skipped."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            rec = json.loads(line)
            if isinstance(rec, dict) and "id" in rec and "path" in rec:
                out.append(rec)
    return out


def _recover(out_dir: Path) -> dict[str, dict]:
    """Records whose mesh file exists, first occurrence per id; stale temporary files are removed."""
    meshes = out_dir / "meshes"
    if meshes.exists():
        for tmp in meshes.glob("*/.*"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    done: dict[str, dict] = {}
    for rec in _read_metadata(out_dir / "metadata.jsonl"):
        if rec["id"] not in done and (out_dir / rec["path"]).is_file():
            done[rec["id"]] = rec
    return done


def _write_jsonl(path: Path, records: Iterable[dict]) -> None:
    from .io import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def _check_manifest(out_dir: Path, config: DatasetConfig) -> None:
    from .io import atomic_write_text

    path = out_dir / "dataset.json"
    want = config.to_dict()
    if path.exists():
        have = json.loads(path.read_text())
        if have != want:
            raise ValueError(f"{out_dir} holds a dataset made with different settings ({have}); "
                             f"use a new directory or the same settings ({want})")
        return
    atomic_write_text(path, json.dumps(want, indent=2) + "\n")


def make_dataset(out_dir: str | Path, n: int, *, seed: int = 0, workers: int = 2,
                 families: Sequence[str] | None = None, splits: Sequence[float] = (0.8, 0.1, 0.1),
                 max_faces: int | None = None, rotate: bool = False, progress: bool = True) -> Path:
    """Write ``n`` procedural objects as labelled PLY files plus ``metadata.jsonl`` and split lists.

    Layout::

        out_dir/dataset.json              settings (checked when resuming)
        out_dir/meshes/<split>/<id>.ply   mesh with a per-face ``label`` property (part index)
        out_dir/metadata.jsonl            one JSON record per object, sorted by id when finished
        out_dir/splits/<split>.txt        ids of each split

    Object ``i`` is ``generate(sample_family(...), object_seed(seed, i))`` (re-drawn while it has more
    than ``max_faces`` faces), so the content does not depend on ``workers`` or on interruptions.
    Resumable: an id counts as done once its mesh file is in place *and* its metadata line is
    written (lines are appended only after the file is renamed into place); a restart keeps those,
    drops partial lines and temporary files, and makes the rest.

    Parameters
    ----------
    out_dir : str or Path
    n : int
        Number of objects (ids ``0000000`` to ``n - 1``).
    seed : int
    workers : int
        Processes; ``<= 1`` works in this process.
    families : sequence of str, optional
        Restrict to these families (sampled uniformly); default :data:`DEFAULT_FAMILIES`.
    splits : (3,) float
        Train, val, test fractions; the split of an id is a hash of ``(seed, id)``.
    max_faces : int, optional
        Re-draw objects with more faces; families that cannot comply are left out.
    rotate : bool
        Random rotation per object.
    progress : bool
        Show a progress bar.

    Returns
    -------
    Path
        ``out_dir``.
    """
    if n < 0 or seed < 0:
        raise ValueError(f"n and seed must be >= 0, got n={n}, seed={seed}")
    config = DatasetConfig(int(seed), None if families is None else tuple(sorted(set(families))),
                           _check_splits(splits), None if max_faces is None else int(max_faces), bool(rotate))
    _eligible_families(config.families, config.max_faces)
    from .io import ensure_output_dir

    out = ensure_output_dir(out_dir)  # a file in the way or an unwritable place: MeshOutputError
    _check_manifest(out, config)
    done = _recover(out)
    meta = out / "metadata.jsonl"
    _write_jsonl(meta, sorted(done.values(), key=lambda r: r["index"]))
    todo = [i for i in range(n) if object_id(i) not in done]
    with open(meta, "a", encoding="utf-8") as fh, _progress_bar(progress, n, n - len(todo)) as advance:
        for rec in _run_jobs(str(out), todo, config, workers):
            fh.write(json.dumps(rec, sort_keys=True) + "\n")
            fh.flush()
            done[rec["id"]] = rec
            advance()
    _finish(out, done)
    return out


def _run_jobs(out_dir: str, todo: list[int], config: DatasetConfig, workers: int):
    """Yield records as objects finish; at most ``4 * workers`` jobs in flight."""
    if workers <= 1 or len(todo) <= 1:
        for i in todo:
            yield _write_object(out_dir, i, config)
        return
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        pending: set[cf.Future] = set()
        queue = iter(todo)
        for i in queue:
            pending.add(pool.submit(_write_object, out_dir, i, config))
            if len(pending) >= 4 * workers:
                break
        while pending:
            finished, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                yield fut.result()
                nxt = next(queue, None)
                if nxt is not None:
                    pending.add(pool.submit(_write_object, out_dir, nxt, config))


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int, completed: int):
    if not enabled:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("procedural meshes"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) as bar:
        task = bar.add_task("meshes", total=total, completed=completed)
        yield lambda: bar.advance(task)


def _finish(out: Path, done: dict[str, dict]) -> None:
    """Rewrite metadata sorted by index and write the split lists."""
    from .io import atomic_write_text

    records = sorted(done.values(), key=lambda r: r["index"])
    _write_jsonl(out / "metadata.jsonl", records)
    for split in SPLIT_NAMES:
        ids = [r["id"] for r in records if r["split"] == split]
        atomic_write_text(out / "splits" / f"{split}.txt", "".join(i + "\n" for i in ids))


def load_metadata(out_dir: str | Path) -> list[dict]:
    """Records of a dataset made by :func:`make_dataset` (skips unparsable lines)."""
    return _read_metadata(Path(out_dir) / "metadata.jsonl")


# ----------------------------------------------------------------------------------------------
# Committed samples
# ----------------------------------------------------------------------------------------------

SAMPLE_SEEDS = range(0, 64)


def sample_seed(family: str, *, max_faces: int = 400) -> int:
    """The first seed in ``SAMPLE_SEEDS`` whose ``family`` mesh has at most ``max_faces`` faces."""
    for seed in SAMPLE_SEEDS:
        if generate(family, seed).n_faces <= max_faces:
            return seed
    raise ValueError(f"no seed below {SAMPLE_SEEDS.stop} gives a {family!r} mesh with <= {max_faces} faces")


def write_samples(out_dir: str | Path, *, max_faces: int = 400) -> Path:
    """Write one small labelled PLY per family plus a README table to ``out_dir`` (reproducible)."""
    from .io import atomic_write_text, save_mesh

    out = Path(out_dir)
    rows = []
    for family in sorted(FAMILIES):
        seed = sample_seed(family, max_faces=max_faces)
        pm = generate(family, seed)
        save_mesh(out / f"{family}.ply", pm.mesh, face_labels=pm.face_labels)
        rows.append(f"| `{family}` | {seed} | {pm.n_faces} | {len(pm.mesh.vertices)} | {pm.n_parts} | "
                    f"{', '.join(dict.fromkeys(_part_class(p) for p in pm.part_names))} |")
    text = (
        "# Procedural artist-mesh samples\n\n"
        "One small mesh per family of `tokenizers3d.procedural`, written by\n\n"
        "```bash\n"
        f"python scripts/make_dataset.py --samples assets/procedural --sample-max-faces {max_faces}\n"
        "```\n\n"
        f"which calls `tokenizers3d.procedural.write_samples(\"assets/procedural\", max_faces={max_faces})`: for each\n"
        f"family, the first seed in 0..{SAMPLE_SEEDS.stop - 1} whose (unrotated) mesh has at most {max_faces} faces.\n"
        "Files are binary PLY with a per-face integer `label` property (part index; 0 for single-part\n"
        "families) and matching face colours; read the labels with `tokenizers3d.io.read_ply_face_labels`.\n"
        "Regenerating gives the same meshes for the same generator version "
        f"({GENERATOR_VERSION}); `tests/test_procedural.py` checks that.\n\n"
        "| family | seed | faces | vertices | parts | part kinds |\n|---|---|---|---|---|---|\n"
        + "\n".join(rows) + "\n"
    )
    atomic_write_text(out / "README.md", text)
    return out


def _part_class(name: str) -> str:
    """``"leg_2"`` -> ``"leg"``."""
    head, _, tail = name.rpartition("_")
    return head if head and tail.isdigit() else name


__all__ = [
    "DEFAULT_FAMILIES", "FAMILIES", "FamilySpec", "Part", "ProceduralMesh", "DatasetConfig", "generate", "get_family", "sample_family",
    "object_seed", "object_id", "assign_split", "build_object", "make_dataset", "load_metadata", "write_samples",
    "sample_seed", "triangulate_polygon", "polygon_area", "signed_volume", "extrude", "box", "rounded_box", "lathe",
    "lathe_loop", "torus", "cylinder", "pyramid", "regular_polygon",
]

