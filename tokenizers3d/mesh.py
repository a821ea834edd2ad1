"""Canonical triangle meshes: clean-up, normalization into the unit cube, quantization.

Conventions (every other module relies on them):

* A *canonical* mesh is a ``trimesh.Trimesh`` (or an :class:`ArrayMesh`, its numpy-only stand-in) whose
  faces are triangles, with equal vertices merged, degenerate faces (two equal corners, or zero area) and
  duplicate faces (the same vertex set, either winding) dropped, and unreferenced vertices removed.
  Which of several duplicates is kept does not depend on the face order: a vertex set listed with both
  windings keeps the winding that comes first in canonical order (rotated to start at its lowest corner in
  (z, y, x) order, the next corner is the lower of the other two); copies with the same winding are the
  same face. The zero-area test (a cross product with no non-zero component) does not depend on the
  mesh's scale: a valid mesh 1e-300 units across is kept.
* Coordinates must be finite and within ``±MAX_COORDINATE`` (1e30), so that no extent, squared distance
  or volume overflows; :func:`check_coordinates` refuses anything else.
* *Normalized* space is the cube ``[-0.5, 0.5]^3``: the bounding box is centred at the origin and its
  longest side scaled to 1. :class:`Normalization` keeps the transform so outputs go back to the
  user's frame with :meth:`Normalization.invert`.
* *Quantization* with ``bits`` = b splits ``[-0.5, 0.5]`` into ``n = 2^b`` cells of width ``1/n``;
  a coordinate maps to its cell index ``q = floor((x + 0.5) n)`` (clipped to ``n - 1``) and back to the
  cell centre ``-0.5 + (q + 0.5) / n``, so the round-trip error is at most half a cell, ``0.5 / n``.
* The *canonical order* (PolyGen, MeshGPT, Meshtron): vertices sorted by (z, y, x), each face rotated
  (winding kept) so its lowest vertex index comes first, faces sorted lexicographically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .errors import ConfigError, MeshInputError

if TYPE_CHECKING:  # imported where needed: this module must load without trimesh (and SciPy)
    import trimesh

MIN_BITS, MAX_BITS = 6, 12
MAX_COORDINATE = 1e30  # larger coordinates are refused: squares and cubes of extents must stay finite


@dataclass(frozen=True)
class Normalization:
    """Affine map from the user's frame into the unit cube: ``unit = (world - center) / scale``.

    Attributes
    ----------
    center : (3,) float
        Bounding-box centre in the user's frame.
    scale : float
        Longest bounding-box side in the user's frame (1.0 for an already-unit mesh).
    """

    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 1.0

    @classmethod
    def fit(cls, points: np.ndarray) -> Normalization:
        """The normalization that puts ``points`` (n, 3) into ``[-0.5, 0.5]^3``.

        Works at any scale (no absolute epsilon); points that all coincide get ``scale = 1``.

        Raises
        ------
        ValueError
            If the bounding box is not finite (see :func:`check_coordinates`).
        """
        points = np.asarray(points, dtype=np.float64)
        lo, hi = points.min(axis=0), points.max(axis=0)
        extent = float((hi - lo).max())
        if not np.isfinite(extent):
            raise ValueError(f"cannot normalize points whose bounding box is not finite (extent {extent})")
        scale = extent if extent > 0 else 1.0
        return cls(center=tuple(float(c) for c in (lo + hi) / 2.0), scale=scale)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """World (n, 3) -> unit cube (n, 3)."""
        return (np.asarray(points, dtype=np.float64) - np.asarray(self.center)) / self.scale

    def invert(self, points: np.ndarray) -> np.ndarray:
        """Unit cube (n, 3) -> world (n, 3)."""
        return np.asarray(points, dtype=np.float64) * self.scale + np.asarray(self.center)

    def to_dict(self) -> dict:
        return {"center": list(self.center), "scale": self.scale}

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        """Inverse of :meth:`to_dict`.

        Raises
        ------
        ValueError
            If ``d`` is not ``{"center": [x, y, z], "scale": s}`` with finite numbers and ``s > 0``.
        """
        if not isinstance(d, dict) or set(d) != {"center", "scale"}:
            raise ValueError(f"normalization must be a dict with keys 'center' and 'scale', got {d!r}")
        center, scale = d["center"], d["scale"]
        if not isinstance(center, (list, tuple)) or len(center) != 3 or not all(_is_number(c) for c in center):
            raise ValueError(f"normalization center must be three numbers, got {center!r}")
        if not _is_number(scale):
            raise ValueError(f"normalization scale must be a number, got {scale!r}")
        if not all(np.isfinite(float(c)) for c in center):
            raise ValueError(f"normalization center is not finite: {center!r}")
        if not (np.isfinite(float(scale)) and float(scale) > 0):
            raise ValueError(f"normalization scale must be finite and positive, got {scale!r}")
        return cls(center=tuple(float(c) for c in center), scale=float(scale))


@dataclass
class ArrayMesh:
    """A triangle mesh as plain numpy arrays: what :func:`~tokenizers3d.io.load_mesh_arrays` reads, without trimesh.

    :func:`canonicalize`, :func:`normalize`, :func:`quantize` and :func:`prepare` (so every tokenizer's
    ``encode``) take it as they take a ``trimesh.Trimesh``, and :func:`canonicalize` and :func:`normalize`
    return an ``ArrayMesh`` for an ``ArrayMesh``.

    Attributes
    ----------
    vertices : (V, 3) float64
    faces : (F, 3) int64
        Vertex indices, counter-clockwise seen from outside.
    face_attributes : dict of str to (F, ...) array
        Per-face data carried along, as ``trimesh.Trimesh.face_attributes`` (``"label"``).
    """

    vertices: np.ndarray
    faces: np.ndarray
    face_attributes: dict[str, np.ndarray] = field(default_factory=dict)

    def to_trimesh(self) -> trimesh.Trimesh:
        """The same mesh as a ``trimesh.Trimesh`` (no processing; face attributes kept)."""
        return _mesh_like(None, self.vertices, self.faces, self.face_attributes)


def _mesh_like(like, vertices: np.ndarray, faces: np.ndarray, face_attributes: dict | None = None):
    """A new mesh of the kind of ``like``: an :class:`ArrayMesh` for an ``ArrayMesh``, else a ``trimesh.Trimesh``."""
    attributes = {k: v for k, v in (face_attributes or {}).items() if v is not None}
    if isinstance(like, ArrayMesh):
        return ArrayMesh(np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64), attributes)
    import trimesh

    out = trimesh.Trimesh(vertices, faces, process=False)
    for k, v in attributes.items():
        out.face_attributes[k] = v
    return out


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


@dataclass
class QuantizedMesh:
    """A triangle mesh on the integer grid ``[0, 2^bits)^3``.

    Attributes
    ----------
    vertices : (V, 3) int64
        Grid coordinates, columns x, y, z.
    faces : (F, 3) int64
        Vertex indices, counter-clockwise seen from outside.
    bits : int
        Grid resolution, 6 to 12.
    """

    vertices: np.ndarray
    faces: np.ndarray
    bits: int
    face_labels: np.ndarray | None = field(default=None)

    @property
    def levels(self) -> int:
        return 1 << self.bits

    @property
    def n_faces(self) -> int:
        return int(len(self.faces))

    def to_trimesh(self) -> trimesh.Trimesh:
        """Dequantize to cell centres in the unit cube (no processing, faces kept as they are)."""
        return self.to_arrays().to_trimesh()

    def to_arrays(self) -> ArrayMesh:
        """:meth:`to_trimesh` as an :class:`ArrayMesh`."""
        return ArrayMesh(dequantize(self.vertices, self.bits), np.asarray(self.faces, dtype=np.int64).copy())

    def canonical_order(self) -> QuantizedMesh:
        """Vertices sorted by (z, y, x), faces rotated to start at their lowest vertex, faces sorted."""
        return canonical_order(self)

    def face_set(self) -> set[tuple[tuple[int, int, int], ...]]:
        """Faces as cyclically-normalized tuples of vertex coordinates: equal sets mean equal meshes."""
        tri = self.vertices[self.faces]  # (F, 3, 3)
        out = set()
        for f in tri:
            corners = [tuple(int(c) for c in v) for v in f]
            k = min(range(3), key=lambda i: (corners[i][2], corners[i][1], corners[i][0]))
            out.add(tuple(corners[k:] + corners[:k]))
        return out


def validate_bits(bits: int) -> int:
    if not isinstance(bits, (int, np.integer)) or not MIN_BITS <= int(bits) <= MAX_BITS:
        raise ConfigError(f"bits must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits!r}")
    return int(bits)


def quantize_coords(points: np.ndarray, bits: int) -> np.ndarray:
    """Unit-cube coordinates (..., 3) -> grid indices (..., 3) int64 in ``[0, 2^bits)``."""
    n = 1 << validate_bits(bits)
    q = np.floor((np.asarray(points, dtype=np.float64) + 0.5) * n)
    return np.clip(q, 0, n - 1).astype(np.int64)


def dequantize(q: np.ndarray, bits: int) -> np.ndarray:
    """Grid indices (..., 3) -> cell centres (..., 3) float64 in the unit cube."""
    n = 1 << validate_bits(bits)
    return -0.5 + (np.asarray(q, dtype=np.float64) + 0.5) / n


def check_coordinates(points: np.ndarray, source=None, *, what: str = "mesh") -> None:
    """Refuse NaN/inf coordinates and coordinates beyond ``±MAX_COORDINATE``.

    Parameters
    ----------
    points : (n, 3) float
    source : str or Path or None
        Named in the error.
    what : str
        ``"mesh"`` or ``"point cloud"``, for the message.

    Raises
    ------
    MeshInputError
    """
    points = np.asarray(points)
    if not np.all(np.isfinite(points)):
        coords = "vertex coordinates" if what == "mesh" else "coordinates"
        raise MeshInputError(source, f"{what} has NaN or infinite {coords}")
    big = float(np.abs(points).max()) if points.size else 0.0
    if big > MAX_COORDINATE:
        raise MeshInputError(source, f"{what} has a coordinate of magnitude {big:.3g}, beyond the supported "
                                     f"±{MAX_COORDINATE:.0e} (its extent would overflow); rescale it")


_INT64_MAX = np.iinfo(np.int64).max


def _sorted_unique_first(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stable argsort of a non-negative int64 ``key`` and a mask of the first element of each run of equal keys
    (in sorted order); one plain sort of ``key * n + index`` when that fits in int64."""
    n = max(len(key), 1)
    if len(key) and int(key.max()) < (_INT64_MAX - n) // n:
        packed = np.sort(key * n + np.arange(len(key)))
        order, skey = packed % n, packed // n
    else:
        order = np.argsort(key, kind="stable")
        skey = key[order]
    new = np.ones(len(key), dtype=bool)
    new[1:] = skey[1:] != skey[:-1]
    return order, new


def _unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Like ``np.unique(rows, axis=0, return_inverse=True)`` for (n, 3) arrays."""
    if rows.dtype.kind in "iu" and len(rows) and rows.min() >= 0:
        base = int(rows.max()) + 1
        if base**3 < _INT64_MAX // 4:
            r = rows.astype(np.int64)
            order, new = _sorted_unique_first((r[:, 0] * base + r[:, 1]) * base + r[:, 2])
            inverse = np.empty(len(rows), dtype=np.int64)
            inverse[order] = np.cumsum(new) - 1
            return rows[order[new]], inverse
    if rows.dtype.kind == "f" and 0 < len(rows) < 2_000_000:
        # per-column ranks (three 1-D sorts) turn float rows into small integer rows with the same order
        ranks = np.empty(rows.shape, dtype=np.int64)
        for j in range(3):
            ranks[:, j] = np.unique(rows[:, j], return_inverse=True)[1].reshape(-1)
        _, inverse = _unique_rows(ranks)
        first = np.empty(int(inverse.max()) + 1, dtype=np.int64)
        first[inverse[::-1]] = np.arange(len(rows) - 1, -1, -1)  # first occurrence of each unique row
        return rows[first], inverse
    order = np.lexsort((rows[:, 2], rows[:, 1], rows[:, 0]))
    srt = rows[order]
    new = np.ones(len(rows), dtype=bool)
    new[1:] = np.any(srt[1:] != srt[:-1], axis=1)
    inverse = np.empty(len(rows), dtype=np.int64)
    inverse[order] = np.cumsum(new) - 1
    return srt[new], inverse


def _nonzero_area(points: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(F,) bool: the triangle's cross product has a non-zero component.

    For float points a face whose cross product comes out zero is tested again with its two edge vectors
    scaled by a power of two (exact) so that their largest component is about 1: the test then does not
    depend on the mesh's scale (edges of 1e-300 would otherwise give products that underflow to zero).
    """
    p = points.astype(np.float64) if points.dtype.kind == "f" else points.astype(np.int64)
    a = p[faces[:, 0]]
    e1 = p[faces[:, 1]] - a
    e2 = p[faces[:, 2]] - a
    ok = _cross_nonzero(e1, e2)
    if p.dtype.kind == "f" and not ok.all():
        redo = np.flatnonzero(~ok)
        big = np.maximum(np.abs(e1[redo]).max(axis=1), np.abs(e2[redo]).max(axis=1))
        _, exp = np.frexp(big)
        ok[redo] = _cross_nonzero(np.ldexp(e1[redo], -exp[:, None]), np.ldexp(e2[redo], -exp[:, None]))
    return ok


def _cross_nonzero(e1: np.ndarray, e2: np.ndarray) -> np.ndarray:
    """(F,) bool: the cross product of edge vectors (F, 3) x (F, 3) has a non-zero component."""
    cx = e1[:, 1] * e2[:, 2] - e1[:, 2] * e2[:, 1]
    cy = e1[:, 2] * e2[:, 0] - e1[:, 0] * e2[:, 2]
    cz = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    return (cx != 0) | (cy != 0) | (cz != 0)


def clean_faces(vertices: np.ndarray, faces: np.ndarray, labels: np.ndarray | None = None):
    """Merge equal vertices, drop degenerate and duplicate faces, drop unreferenced vertices.

    Parameters
    ----------
    vertices : (V, 3) array (float or int)
    faces : (F, 3) int
    labels : (F,) int or None
        Per-face labels carried along with the kept faces.

    Returns
    -------
    vertices : (V', 3), faces : (F', 3) int64, labels : (F',) or None
        Vertices sorted by (x, y, z); face order is preserved among kept faces. Of faces with the same
        vertex set, the one kept is the first with the canonical winding (:func:`_canonical_winding`) if
        any has it, else the first; so the kept faces do not depend on the face order.
    """
    vertices = np.asarray(vertices)
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise MeshInputError(None, "face references a vertex index out of range")
    uniq, inverse = _unique_rows(vertices.reshape(-1, 3))
    faces = inverse[faces]
    keep = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    if len(faces) and keep.any():
        keep &= _nonzero_area(uniq, faces)
    faces = faces[keep]
    labels = None if labels is None else np.asarray(labels)[keep]
    if len(faces):
        n = len(uniq)
        a, b, c = faces[:, 0], faces[:, 1], faces[:, 2]
        lo, hi = np.minimum(np.minimum(a, b), c), np.maximum(np.maximum(a, b), c)
        if n < 2_000_000:  # n^3 fits in int64
            order, new = _sorted_unique_first((lo * n + (a + b + c - lo - hi)) * n + hi)
        else:
            order = np.lexsort((hi, a + b + c - lo - hi, lo))  # stable: equal vertex sets in face order
            srt = np.stack([lo, a + b + c - lo - hi, hi], axis=1)[order]
            new = np.ones(len(faces), dtype=bool)
            new[1:] = np.any(srt[1:] != srt[:-1], axis=1)
        if not new.all():  # some vertex set appears more than once: keep one face per set
            m = len(faces)
            pref = (~_canonical_winding(uniq, faces))[order].astype(np.int64)  # 0 = canonical winding
            starts = np.flatnonzero(new)
            best = np.minimum.reduceat(pref * m + order, starts)  # per set: first canonical, else first
            first = np.sort(best % m)
            faces = faces[first]
            labels = None if labels is None else labels[first]
    used = np.flatnonzero(np.bincount(faces.reshape(-1), minlength=len(uniq)))
    remap = np.full(len(uniq), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return uniq[used], remap[faces].reshape(-1, 3), labels


def _canonical_winding(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(F,) bool: rotated to start at its lowest corner in (z, y, x) order, the face's second corner is
    lower than its third; of the two windings of a triangle, the one that comes first in canonical order.

    Parameters
    ----------
    vertices : (V, 3), distinct rows, columns x, y, z
    faces : (F, 3) int, three distinct vertices each
    """
    v = np.asarray(vertices)
    perm = np.lexsort((v[:, 0], v[:, 1], v[:, 2]))  # (z, y, x) order
    rank = np.empty(len(v), dtype=np.int64)
    rank[perm] = np.arange(len(v))
    r = rank[faces]  # (F, 3)
    ascents = (r[:, 0] < r[:, 1]).astype(np.int64) + (r[:, 1] < r[:, 2]) + (r[:, 2] < r[:, 0])
    return ascents == 2  # a cyclic triple of distinct ranks rises twice when it runs (min, mid, max)


def canonicalize(mesh: trimesh.Trimesh | ArrayMesh, *, source=None,
                 labels: np.ndarray | None = None) -> trimesh.Trimesh | ArrayMesh:
    """Clean a triangle mesh (see module docstring); per-face ``labels`` go to ``face_attributes['label']``.

    Returns an :class:`ArrayMesh` for an ``ArrayMesh``, else a ``trimesh.Trimesh``.

    Raises
    ------
    MeshInputError
        If the mesh has non-finite coordinates or coordinates beyond ``±MAX_COORDINATE``, or no face
        survives the clean-up (which includes every mesh of zero extent).
    """
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    check_coordinates(vertices, source)
    if labels is None and "label" in getattr(mesh, "face_attributes", {}):
        labels = np.asarray(mesh.face_attributes["label"])
    v, f, lab = clean_faces(vertices, np.asarray(mesh.faces), labels)
    if len(f) == 0:
        used = vertices[np.asarray(mesh.faces, dtype=np.int64).reshape(-1)] if len(mesh.faces) else vertices
        if len(used) and not np.ptp(used, axis=0).any():
            raise MeshInputError(source, "mesh has zero extent (all vertices at one point)")
        raise MeshInputError(source, "mesh is empty (no non-degenerate triangle)")
    return _mesh_like(mesh, v, f, {"label": lab})


def normalize(mesh: trimesh.Trimesh | ArrayMesh) -> tuple[trimesh.Trimesh | ArrayMesh, Normalization]:
    """Scale and centre into ``[-0.5, 0.5]^3``; returns the new mesh (of the kind given) and the transform to undo it."""
    norm = Normalization.fit(mesh.vertices)
    out = _mesh_like(mesh, norm.apply(mesh.vertices), np.asarray(mesh.faces), dict(getattr(mesh, "face_attributes", {})))
    return out, norm


def quantize(mesh: trimesh.Trimesh | ArrayMesh, bits: int, *, order: bool = True) -> QuantizedMesh:
    """Quantize a normalized mesh; vertices in the same cell merge and collapsed faces are dropped.

    Parameters
    ----------
    mesh : trimesh.Trimesh or ArrayMesh
        Vertices in the unit cube (see :func:`normalize`).
    bits : int
        6 to 12; ``2^bits`` levels per axis.
    order : bool
        Put the result in canonical order (default).
    """
    q = quantize_coords(mesh.vertices, bits)
    labels = mesh.face_attributes.get("label") if hasattr(mesh, "face_attributes") else None
    v, f, lab = clean_faces(q, np.asarray(mesh.faces), labels)
    qm = QuantizedMesh(v.astype(np.int64), f, int(bits), lab)
    return canonical_order(qm) if order else qm


def canonical_order(qm: QuantizedMesh) -> QuantizedMesh:
    """Return ``qm`` in canonical order (see module docstring); labels follow their faces.

    Sorting uses packed int64 keys (z, y, x) and (i0, i1, i2); equal to a lexsort, several times faster.
    """
    v = np.asarray(qm.vertices, dtype=np.int64)
    b = int(qm.bits)
    if len(v) and v.min() >= 0 and v.max() < (1 << b):
        perm = np.argsort((v[:, 2] << (2 * b)) | (v[:, 1] << b) | v[:, 0], kind="stable")
    else:
        perm = np.lexsort((v[:, 0], v[:, 1], v[:, 2]))
    rank = np.empty_like(perm)
    rank[perm] = np.arange(len(perm))
    faces = rank[np.asarray(qm.faces, dtype=np.int64)].reshape(-1, 3)
    f0, f1, f2 = faces[:, 0], faces[:, 1], faces[:, 2]
    shift = np.where((f0 <= f1) & (f0 <= f2), 0, np.where(f1 <= f2, 1, 2))  # = np.argmin(faces, axis=1)
    idx = (shift[:, None] + np.arange(3)) % 3
    faces = np.take_along_axis(faces, idx, axis=1)
    n = max(len(v), 1)
    if n < 2_000_000:
        forder = np.argsort((faces[:, 0] * n + faces[:, 1]) * n + faces[:, 2], kind="stable")
    else:
        forder = np.lexsort((faces[:, 2], faces[:, 1], faces[:, 0]))
    labels = None if qm.face_labels is None else np.asarray(qm.face_labels)[forder]
    return QuantizedMesh(v[perm], faces[forder], qm.bits, labels)

def prepare(mesh: trimesh.Trimesh | ArrayMesh, bits: int, *, source=None) -> tuple[QuantizedMesh, Normalization]:
    """canonicalize -> normalize -> quantize -> canonical order: what every tokenizer consumes."""
    clean = canonicalize(mesh, source=source)
    unit, norm = normalize(clean)
    qm = quantize(unit, bits)
    if qm.n_faces == 0:
        raise MeshInputError(source, f"no face survives quantization at {bits} bits")
    return qm, norm
