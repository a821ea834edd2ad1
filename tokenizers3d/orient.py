"""Consistent, outward face winding: what every convexity test on a mesh assumes.

:func:`orient_outward` keeps the faces' order and the vertices, and only reverses the corner order of
some faces:

1. *Consistent winding per piece.* Vertices at equal positions are merged; two faces sharing a manifold
   edge (exactly two faces) agree when they traverse it in opposite directions. A face's orientation
   relative to its piece's first face is found without a loop, on the *double cover* of the face graph:
   nodes ``(f, 0)`` (face as wound) and ``(f, 1)`` (reversed); an agreeing pair links ``(a, s)-(b, s)``, a
   disagreeing one ``(a, s)-(b, 1 - s)``. A face is reversed when ``(f, 0)`` is not connected to its
   piece's first face ``(r, 0)``. Edges shared by three or more faces do not link (their pairing is
   ambiguous); a non-orientable piece (a Moebius strip, where ``(f, 0)`` and ``(f, 1)`` meet) is left
   as it is.
2. *Outward per piece.* A closed piece (every edge manifold) is reversed as a whole when its signed
   volume is negative. An open piece (a boundary or non-manifold edge) is judged by visibility: rays
   from 26 directions outside the mesh (Open3D's ``RaycastingScene``) vote, for every piece they hit
   first, whether they see the front (outward) or the back of its faces; a piece no ray reaches falls
   back to its signed volume about its centroid; a tie keeps it as it is.

Procedural and most artist meshes come outward already (nothing changes); a mesh saved inside out, or
one whose pieces disagree, is fixed. Nothing here runs inside :func:`tokenizers3d.io.load_mesh`, so
tokenization of any mesh is unchanged; the segmentation path (:mod:`renderers.segment`) calls it.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def orient_outward(vertices: np.ndarray, faces: np.ndarray, *, n_directions: int = 26, rays: int = 48) -> np.ndarray:
    """Faces with consistent, outward winding (same order; some rows reversed).

    Parameters
    ----------
    vertices : (V, 3) float
    faces : (F, 3) int
    n_directions : int
        Ray directions of the visibility vote for open pieces (Fibonacci sphere).
    rays : int
        Rays per direction and side (``rays ** 2`` parallel rays over the bounding sphere).

    Returns
    -------
    faces : (F, 3) int64
        ``faces`` with the corner order of the reversed faces swapped (``[a, b, c] -> [a, c, b]``).
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    n = len(faces)
    if n == 0:
        return faces.copy()
    _, inverse = np.unique(vertices, axis=0, return_inverse=True)
    merged = inverse.reshape(-1)[faces]  # (F, 3) position-merged corners
    first, second, agree, closed_edge = _manifold_pairs(merged)

    # 1. relative orientation inside each piece (double cover, see the module docstring)
    piece = connected_components(_graph(n, first, second), directed=False)[1]
    a2 = np.concatenate([first, first + n])
    b2 = np.concatenate([np.where(agree, second, second + n), np.where(agree, second + n, second)])
    cover = connected_components(_graph(2 * n, a2, b2), directed=False)[1]
    root = np.zeros(piece.max() + 1, dtype=np.int64)
    root[piece[::-1]] = np.arange(n)[::-1]  # lowest face of each piece
    flip = cover[:n] != cover[root[piece]]
    flip &= cover[:n] != cover[n:]  # non-orientable pieces: leave as they are
    out = faces.copy()
    out[flip] = out[flip][:, [0, 2, 1]]

    # 2. outward per piece
    closed = np.bincount(piece, weights=~closed_edge, minlength=piece.max() + 1) == 0
    volume = _piece_volumes(vertices, out, piece)
    reverse = closed & (volume < 0)
    if not closed.all():
        vote = _visibility_vote(vertices, out, piece, n_directions=n_directions, rays=rays)
        open_ = ~closed
        reverse |= open_ & (vote < 0)
        unseen = open_ & (vote == 0)
        reverse |= unseen & (volume < 0)
    whole = reverse[piece]
    out[whole] = out[whole][:, [0, 2, 1]]
    return out


def _graph(n: int, a: np.ndarray, b: np.ndarray):
    return coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))


def _manifold_pairs(merged: np.ndarray):
    """Face pairs across manifold edges and whether they agree; per face, whether all its edges are manifold.

    Returns
    -------
    first, second : (E,) int64
    agree : (E,) bool
        The two faces traverse the shared edge in opposite directions.
    closed_edge : (F,) bool
        Each of the face's three edges is shared with exactly one other face.
    """
    n = len(merged)
    start = merged.reshape(-1)
    end = merged[:, [1, 2, 0]].reshape(-1)
    owner = np.repeat(np.arange(n), 3)
    ok = start != end
    start, end, owner = start[ok], end[ok], owner[ok]
    lo, hi = np.minimum(start, end), np.maximum(start, end)
    key = lo * (int(merged.max()) + 1) + hi
    order = np.argsort(key, kind="stable")
    key, start, owner = key[order], start[order], owner[order]
    uniq, begin, count = np.unique(key, return_index=True, return_counts=True)
    two = begin[count == 2]
    first, second = owner[two], owner[two + 1]
    agree = start[two] != start[two + 1]
    good = first != second
    manifold_per_half = np.repeat(count == 2, count)
    closed_edge = np.ones(n, dtype=bool)
    np.logical_and.at(closed_edge, owner, manifold_per_half)
    closed_edge &= np.bincount(owner, minlength=n) == 3  # a degenerate edge leaves a gap
    return first[good], second[good], agree[good], closed_edge


def _piece_volumes(vertices: np.ndarray, faces: np.ndarray, piece: np.ndarray) -> np.ndarray:
    """Signed volume of every piece, tetrahedra from the piece's centroid (P,)."""
    tri = vertices[faces]  # (F, 3, 3)
    k = piece.max() + 1
    weight = np.bincount(piece, minlength=k).astype(np.float64)
    centre = np.stack([np.bincount(piece, weights=tri[:, :, i].mean(1), minlength=k) for i in range(3)], 1)
    centre /= np.maximum(weight, 1)[:, None]
    rel = tri - centre[piece][:, None, :]
    det = np.einsum("ij,ij->i", rel[:, 0], np.cross(rel[:, 1], rel[:, 2])) / 6.0
    return np.bincount(piece, weights=det, minlength=k)


def _visibility_vote(vertices: np.ndarray, faces: np.ndarray, piece: np.ndarray, *, n_directions: int,
                     rays: int) -> np.ndarray:
    """Front hits minus back hits of parallel rays from outside, per piece (P,)."""
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(vertices.astype(np.float32)), o3d.core.Tensor(faces.astype(np.uint32)))
    centre = (vertices.min(0) + vertices.max(0)) / 2.0
    radius = float(np.linalg.norm(vertices - centre, axis=1).max()) * 1.01 + 1e-9
    tri = vertices[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    i = np.arange(n_directions) + 0.5
    z = 1.0 - 2.0 * i / n_directions
    phi = np.pi * (3.0 - np.sqrt(5.0)) * i
    dirs = np.stack([np.sqrt(1 - z * z) * np.cos(phi), np.sqrt(1 - z * z) * np.sin(phi), z], 1)  # (D, 3)
    s = np.linspace(-radius, radius, rays)
    gu, gv = np.meshgrid(s, s, indexing="ij")
    origins, directions = [], []
    for d in dirs:
        u = np.cross(d, [0.0, 0.0, 1.0] if abs(d[2]) < 0.9 else [1.0, 0.0, 0.0])
        u /= np.linalg.norm(u)
        v = np.cross(d, u)
        plane = centre + gu.reshape(-1, 1) * u + gv.reshape(-1, 1) * v  # (R*R, 3)
        origins.append(plane + radius * 2.0 * d)
        directions.append(np.broadcast_to(-d, plane.shape))
    ray = np.concatenate([np.concatenate(origins), np.concatenate(directions)], axis=1).astype(np.float32)
    hit = scene.cast_rays(o3d.core.Tensor(ray))["primitive_ids"].numpy().astype(np.int64)
    sel = hit != scene.INVALID_ID
    face = hit[sel]
    facing = np.einsum("ij,ij->i", normal[face], ray[sel, 3:].astype(np.float64))  # < 0: front side seen
    return np.bincount(piece[face], weights=-np.sign(facing), minlength=piece.max() + 1)
