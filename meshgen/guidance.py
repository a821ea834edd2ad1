"""Point-cloud-guided decoding: keep sampled vertices and faces on the input surface.

The order-enforcing masks of :mod:`meshgen.sampling` make every sample a valid canonical mesh but say
nothing about *where* its vertices go. A :class:`PointGuide` adds, per token, the input cloud's opinion;
it is built once per (normalized, unit-cube) point cloud and shared by every row that uses that cloud,
and :meth:`PointGuide.state` wraps a row's :class:`~meshgen.sampling.FaceConstraint` in a
:class:`GuidedConstraint` with the same ``allowed()`` / ``push()`` surface.

What is allowed (all distances in the unit cube, vertices at grid cell centres):

* **Candidate vertices** -- cells within the points' bounding box +- 1 cell whose centre ``c`` is within
  ``tol`` of its nearest input point ``p`` and within ``plane_tol`` of ``p``'s tangent plane
  (``|n_p . (c - p)|``; a sharp corner lies in the plane of each adjacent face, so corners pass). A sorted
  int64 array of ranks ``r = z n^2 + y n + x``, computed with a ``cKDTree`` over blocks of cells near the
  cloud (``distance_upper_bound``).
* **Start pin** -- the first vertex of the first face (the mesh's lowest vertex) has ``z`` within one cell
  of the lowest input point's quantized ``z``.
* **Face test** -- ``v1`` only where the midpoint of ``v0 v1`` is within ``face_tol`` of the cloud; ``v2``
  only where the centroid and the three edge midpoints of ``(v0, v1, v2)`` are. Looked up in a
  precomputed occupancy grid (at most 128 cells a side): a position passes iff the centre of the grid cell
  holding it is within ``face_tol`` of an input point (so the test is exact to half a grid-cell diagonal).
  Evaluated once per vertex, vectorized over the candidates.
* **Lookahead** -- a ``v0`` or ``v1`` is offered only if the face can be finished inside the same candidate
  set, the face test aside (valid under the order constraint, ``v1`` and ``v2`` candidates). A ``v0`` not
  tied to the previous face's needs two higher candidates off one line through it, which only the top
  ``n`` candidates can lack (precomputed per set); a ``v1`` needs a ``v2``, which with more than
  ``n - 1 + 2 |group|`` candidates above ``v0`` only the previous face's ``v1`` can lack; the remaining
  cases are checked one by one with :meth:`FaceConstraint.v1_domain` / :meth:`FaceConstraint.v2_domain`.
* **Coverage-aware EOS** (``min_coverage > 0``) -- per input point the distance to the nearest generated
  face is kept up to date; EOS is refused while the share of points within ``tol`` of the mesh is below
  ``min_coverage``, unless the face budget is reached or no value is allowed at all.

A digit value is allowed iff some candidate rank in its rank interval is also allowed by the order
constraint (``>= lb``, not in the exceptions ``bad`` of :meth:`FaceConstraint.vertex_domain`), counted
with ``searchsorted`` over the sorted candidates (:func:`meshgen.sampling.digit_mask`), so within a vertex
the guided masks are exact: a vertex that starts on a level always finishes on it.

**Fallback.** At the first digit of each vertex the guide picks the first level that leaves something to
sample (a coordinate value, or EOS when it is allowed and not refused):

0. everything above;
1. without the face test (``v1`` and ``v2`` only);
2. candidates recomputed with ``tol`` and ``plane_tol`` widened by ``widen`` (x2), start pin kept;
3. the order constraint alone.

Each vertex taken on level 1, 2 or 3 is counted in :class:`GuidanceStats` (``face_test_dropped``,
``widened``, ``order_only``), which :class:`~meshgen.generate.GenerationResult` reports per row. The order
constraint is never dropped, so the output is always a valid canonical mesh. Thanks to the lookahead a
vertex started on level 0 or 1 finishes its face on level <= 1, and one on level 2 on level 2; level 3 is
reached only at a ``v0`` where both candidate sets are used up and EOS is refused (coverage), and then for
the rest of that face. At a face boundary where level 0 leaves only EOS, the mesh simply ends.

**Known gap.** Random surface samples leave holes wider than ``tol``, and cells in such a hole are not
candidates. At a corner that is the only place the vertex can go: on the held-out box ``0000378`` (2,048 points,
``tol`` 0.031) none of the cells x 29-41, y 0-1 at the lowest z (the corner) was a candidate; the model alone
(seeds 0-2) drew the exact 12-face box every time, guided it drew 8-10 faces off the box every time. That is why
the pipeline's best-of-k draws half its samples without the guide (:func:`meshgen.pipeline.generate_mesh`,
``free_samples``) and lets the fit to the points decide.

Cost at 7 bits, 2048 points (``scripts/bench_guidance.py``): building a guide takes 0.1-0.5 s; per token the
masks are ``O(n log K)`` and each ``v1`` / ``v2`` filters the candidates above its order bound once, about
0.25-0.5 ms per token on average and a few ms for the first ``v2`` of a mesh.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .modeling import coord_layout
from .sampling import FaceConstraint, digit_mask

GUIDED, NO_FACE_TEST, WIDENED, ORDER_ONLY = range(4)
FACE_GRID_MAX = 128  # face-test occupancy grid: at most this many cells a side


# ---- settings and per-row report --------------------------------------------------------------------
@dataclass(frozen=True)
class GuidanceConfig:
    """Settings of point-cloud-guided decoding; distances are in the unit cube (longest bbox side = 1).

    Attributes
    ----------
    tol : float or None
        Max distance from a vertex (cell centre) to its nearest input point. ``None``: 1.5 x the median
        nearest-neighbour spacing of the cloud, at least 1.5 cells.
    plane_tol : float or None
        Max distance from a vertex to that point's tangent plane. ``None``: 1.5 cells.
    face_tol : float or None
        Max distance from a face's centroid and edge midpoints to the cloud. ``None``: ``max(2 tol, 0.04)``.
    face_test : bool
        Apply the face test (edge midpoint for ``v1``, centroid + edge midpoints for ``v2``).
    pin_start : bool
        Pin the first vertex's ``z`` to within one cell of the cloud's lowest quantized ``z``.
    min_coverage : float
        In ``[0, 1]``: refuse EOS while fewer input points than this share are within ``tol`` of the mesh.
    widen : float
        Factor on ``tol`` and ``plane_tol`` for the second fallback level.
    """

    tol: float | None = None
    plane_tol: float | None = None
    face_tol: float | None = None
    face_test: bool = True
    pin_start: bool = True
    min_coverage: float = 0.0
    widen: float = 2.0

    def __post_init__(self):
        for name in ("tol", "plane_tol", "face_tol"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"{name} must be positive, got {v}")
        if not 0.0 <= self.min_coverage <= 1.0:
            raise ValueError(f"min_coverage must be in [0, 1], got {self.min_coverage}")
        if not self.widen >= 1.0:
            raise ValueError(f"widen must be >= 1, got {self.widen}")


@dataclass
class GuidanceStats:
    """What guidance did for one row: vertices taken on each fallback level, and the final coverage."""

    face_test_dropped: int = 0  # v1 / v2 taken without the face test
    widened: int = 0  # vertices taken from the widened candidate set
    order_only: int = 0  # vertices taken with the order constraint alone
    coverage: float = 0.0  # share of input points within tol of the generated faces

    @property
    def fallbacks(self) -> int:
        return self.face_test_dropped + self.widened + self.order_only


# ---- geometry helpers -------------------------------------------------------------------------------
def _cells_near(tree, lo: np.ndarray, hi: np.ndarray, n: int, radius: float, *, block: int = 4):
    """Cells of an ``n``-grid in the box ``lo..hi`` (xyz, inclusive) whose centre is within ``radius`` of a point.

    Blocks of ``block^3`` cells are screened first by their centre, so far-away space costs one query per
    block. Returns ``cells (K, 3) int64`` (xyz) and ``nearest (K,) int64`` (index into the tree's points).
    """
    axes = [np.arange(a, b + 1, block) for a, b in zip(lo, hi, strict=True)]
    origins = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)  # (Nb, 3) first cell of each block
    reach = radius + block * np.sqrt(3.0) / 2.0 / n  # block centre to any of its cell centres, and more
    d, _ = tree.query((origins + block / 2.0) / n - 0.5, distance_upper_bound=reach)
    origins = origins[np.isfinite(d)]
    off = np.stack(np.meshgrid(*[np.arange(block)] * 3, indexing="ij"), -1).reshape(-1, 3)  # (block^3, 3)
    cells = (origins[:, None, :] + off[None]).reshape(-1, 3)  # (Nb' block^3, 3)
    cells = cells[np.all(cells <= hi, axis=1)]
    d, idx = tree.query((cells + 0.5) / n - 0.5, distance_upper_bound=radius)
    keep = np.isfinite(d)
    return cells[keep], idx[keep]


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from points ``p (N, 3)`` to the segment ``a b``."""
    ab = b - a
    t = np.clip((p - a) @ ab / max(float(ab @ ab), 1e-30), 0.0, 1.0)  # (N,)
    return np.linalg.norm(p - a - t[:, None] * ab, axis=1)


def point_triangle_distance(points: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Distance from ``points (N, 3)`` to the (non-degenerate) triangle ``tri (3, 3)``, ``(N,)``.

    The projection onto the triangle's plane when it falls inside, else the nearest of the three edges.
    """
    a, b, c = tri
    ab, ac, w = b - a, c - a, points - a
    d00, d01, d11 = ab @ ab, ab @ ac, ac @ ac
    d20, d21 = w @ ab, w @ ac  # (N,)
    denom = d00 * d11 - d01 * d01
    v = (d11 * d20 - d01 * d21) / denom
    u = (d00 * d21 - d01 * d20) / denom
    inside = (v >= 0) & (u >= 0) & (u + v <= 1)
    normal = np.cross(ab, ac)
    plane = np.abs(w @ normal) / np.linalg.norm(normal)
    edges = np.minimum(np.minimum(_segment_distance(points, a, b), _segment_distance(points, b, c)),
                       _segment_distance(points, c, a))
    return np.where(inside, plane, edges)


# ---- the guide (one per point cloud) ----------------------------------------------------------------
class PointGuide:
    """Guided vertex sets for one normalized point cloud; immutable once built, so rows may share it.

    Parameters
    ----------
    points : (N, 3) float
        Input points in the unit cube ``[-0.5, 0.5]^3`` (``Normalization.fit(points).apply(points)``).
    normals : (N, 3) float
        Their normals (zero vectors switch the tangent-plane test off for that point).
    bits : int
        Coordinate bits of the ``coords`` vocabulary; ``levels`` overrides ``n = 2^bits`` (tests use tiny grids).
    config : GuidanceConfig

    Attributes
    ----------
    ranks : (K,) int64
        Sorted ranks of the candidate vertices.
    tol, plane_tol, face_tol : float
        The resolved tolerances.
    """

    def __init__(self, points: np.ndarray, normals: np.ndarray, *, bits: int = 7,
                 config: GuidanceConfig | None = None, levels: int | None = None):
        from scipy.spatial import cKDTree

        self.config = config = config or GuidanceConfig()
        self.vocab = coord_layout(bits)
        self.n = n = levels if levels is not None else self.vocab.n
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        nrm = np.asarray(normals, dtype=np.float64).reshape(-1, 3)
        if len(pts) == 0 or len(pts) != len(nrm):
            raise ValueError(f"need N >= 1 points with N normals, got {len(pts)} points and {len(nrm)} normals")
        pts, first = np.unique(pts, axis=0, return_index=True)  # resampled clouds repeat points
        nrm = nrm[first]
        length = np.linalg.norm(nrm, axis=1, keepdims=True)
        self.points = pts  # (N', 3)
        self.normals = np.divide(nrm, length, out=np.zeros_like(nrm), where=length > 0)  # (N', 3)
        self.tree = cKDTree(pts)

        cell = 1.0 / n
        if config.tol is not None:
            self.tol = float(config.tol)
        else:
            spacing = float(np.median(self.tree.query(pts, k=2)[0][:, 1])) if len(pts) > 1 else 0.0
            self.tol = max(1.5 * spacing, 1.5 * cell)
        self.plane_tol = float(config.plane_tol) if config.plane_tol is not None else 1.5 * cell
        self.face_tol = float(config.face_tol) if config.face_tol is not None else max(2.0 * self.tol, 0.04)

        q = self.quantize(pts)  # (N', 3) xyz cells of the points
        self.lo = np.maximum(q.min(axis=0) - 1, 0)  # bounding box +- 1 cell, xyz
        self.hi = np.minimum(q.max(axis=0) + 1, n - 1)
        zmin = int(q[:, 2].min())
        self.pin = (max(zmin - 1, 0) * n * n, min(zmin + 2, n) * n * n)  # first-vertex ranks [lo, hi)
        self._sets: dict[int, tuple[np.ndarray, np.ndarray]] = {GUIDED: self._candidates(self.tol, self.plane_tol)}
        self.ranks = self._sets[GUIDED][0]

        # face-test occupancy grid of m^3 cells, flat in rank order ((z m + y) m + x)
        self.m = m = min(n, FACE_GRID_MAX)
        qm = np.clip(np.floor((pts + 0.5) * m).astype(np.int64), 0, m - 1)
        cells, _ = _cells_near(self.tree, np.maximum(qm.min(axis=0) - 1, 0), np.minimum(qm.max(axis=0) + 1, m - 1),
                               m, self.face_tol)
        self.near = np.zeros(m**3, dtype=bool)
        self.near[(cells[:, 2] * m + cells[:, 1]) * m + cells[:, 0]] = True

    @classmethod
    def from_array(cls, arr: np.ndarray | torch.Tensor, **kw) -> PointGuide:
        """From an ``(N, 6)`` array of xyz + normals (a row of ``Conditioning.points``)."""
        arr = arr.detach().cpu().numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr)
        return cls(arr[:, :3], arr[:, 3:6], **kw)

    # -- geometry ------------------------------------------------------------------------------------
    def quantize(self, xyz: np.ndarray) -> np.ndarray:
        """Unit-cube positions ``(K, 3)`` -> cells ``(K, 3) int64`` (``floor((x + 0.5) n)``, clipped)."""
        return np.clip(np.floor((np.asarray(xyz) + 0.5) * self.n).astype(np.int64), 0, self.n - 1)

    def centres(self, cells: np.ndarray) -> np.ndarray:
        """Cells ``(K, 3)`` (xyz) -> their centres in the unit cube ``(K, 3)``."""
        return (np.asarray(cells, dtype=np.float64) + 0.5) / self.n - 0.5

    def unrank(self, ranks: np.ndarray) -> np.ndarray:
        """Ranks ``(K,)`` -> cells ``(K, 3) int64`` (xyz)."""
        n = self.n
        r = np.asarray(ranks, dtype=np.int64)
        return np.stack([r % n, (r // n) % n, r // (n * n)], axis=-1)

    def _candidates(self, tol: float, plane_tol: float) -> tuple[np.ndarray, np.ndarray]:
        """Sorted candidate ranks ``(K,)`` for these tolerances, and the sorted dead ends among them."""
        n = self.n
        cells, idx = _cells_near(self.tree, self.lo, self.hi, n, tol)
        off_plane = np.abs(np.sum(self.normals[idx] * (self.centres(cells) - self.points[idx]), axis=1))
        cells = cells[off_plane <= plane_tol]
        ranks = (cells[:, 2] * n + cells[:, 1]) * n + cells[:, 0]
        order = np.argsort(ranks)
        ranks, cells = ranks[order], cells[order]
        # dead ends: a v0 (not tied to the previous face's v0) needs two higher candidates off one line through
        # it; a ray from v0 holds at most n - 1 grid points, so only candidates with < n above can fail
        dead = []
        for j in range(max(len(ranks) - n, 0), len(ranks)):
            above = cells[j + 1 :] - cells[j]  # (K - j - 1, 3)
            if len(above) < 2 or not np.cross(above[0], above[1:]).any():
                dead.append(ranks[j])
        return ranks, np.asarray(dead, dtype=np.int64)

    def candidates(self, level: int) -> np.ndarray:
        """Sorted candidate ranks of fallback level ``GUIDED`` / ``NO_FACE_TEST`` (one set) or ``WIDENED`` (lazy)."""
        return self._set(level)[0]

    def dead_ends(self, level: int) -> np.ndarray:
        """Sorted candidates of that level's set with no two higher candidates off a line through them."""
        return self._set(level)[1]

    def _set(self, level: int) -> tuple[np.ndarray, np.ndarray]:
        key = WIDENED if level == WIDENED else GUIDED
        if key not in self._sets:
            w = self.config.widen
            self._sets[key] = self._candidates(self.tol * w, self.plane_tol * w)
        return self._sets[key]

    def _near_at(self, num: np.ndarray, denom: int) -> np.ndarray:
        """Occupancy lookup at positions ``num / denom`` in cell units (``num (K, 3)`` ints, xyz), ``(K,)``."""
        m, n = self.m, self.n
        c = np.minimum((np.atleast_2d(num) * m) // (denom * n), m - 1)  # (K, 3) face-grid cells
        return self.near[(c[:, 2] * m + c[:, 1]) * m + c[:, 0]]

    def edge_pass(self, qa: np.ndarray, qb: np.ndarray) -> np.ndarray:
        """Whether the midpoints of cells ``qa`` and ``qb`` (broadcast ``(K, 3)``) are near the cloud, ``(K,)``."""
        return self._near_at(np.asarray(qa) + np.asarray(qb) + 1, 2)  # midpoint + 0.5 = (qa + qb + 1) / 2

    def face_pass(self, q0: np.ndarray, q1: np.ndarray, q2: np.ndarray) -> np.ndarray:
        """Face test of triangles ``(q0, q1, q2)`` (cells, broadcast ``(K, 3)``): centroid and edge midpoints."""
        q2 = np.atleast_2d(q2)
        ok = self._near_at(2 * (q0 + q1 + q2) + 3, 6)  # centroid + 0.5 = (2 (q0 + q1 + q2) + 3) / 6
        ok &= self.edge_pass(q0, q2) & self.edge_pass(q1, q2)
        return ok & self.edge_pass(q0, q1)

    def state(self, constraint: FaceConstraint) -> GuidedConstraint:
        """A per-row guided state around ``constraint`` (which must be fresh)."""
        return GuidedConstraint(self, constraint)


def build_guides(points: np.ndarray | torch.Tensor, *, bits: int, config: GuidanceConfig | None = None,
                 batch: int | None = None) -> list[PointGuide]:
    """One guide per row of ``points (B, N, 6)`` (or ``(N, 6)``, repeated ``batch`` times).

    Rows equal to the previous row share its guide (``Conditioning.repeat`` makes such batches).
    """
    arr = points.detach().float().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[-1] < 6:
        raise ValueError(f"points must be (B, N, 6) or (N, 6) xyz + normals, got shape {arr.shape}")
    if batch is not None and len(arr) not in (1, batch):
        raise ValueError(f"{len(arr)} point clouds for {batch} rows")
    guides: list[PointGuide] = []
    for b in range(len(arr)):
        if b and np.array_equal(arr[b], arr[b - 1]):
            guides.append(guides[-1])
        else:
            guides.append(PointGuide.from_array(arr[b], bits=bits, config=config))
    if batch is not None and len(guides) == 1:
        guides = guides * batch
    return guides


# ---- per-row state ------------------------------------------------------------------------------------
def _member(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(len(a),)`` bool: which elements of sorted ``a`` are in sorted ``b``."""
    if not len(a) or not len(b):
        return np.zeros(len(a), dtype=bool)
    return b[np.minimum(np.searchsorted(b, a), len(b) - 1)] == a


def _count_allowed(ranks: np.ndarray, lb: int, bad: np.ndarray) -> int:
    """How many of the sorted ``ranks`` are ``>= lb`` and not in the sorted ``bad``."""
    above = ranks[np.searchsorted(ranks, lb):]
    return len(above) - int(_member(bad[bad >= lb], above).sum())


class GuidedConstraint:
    """:class:`FaceConstraint` plus a :class:`PointGuide` for one sequence, with the same surface.

    Attributes
    ----------
    constraint : FaceConstraint
    stats : GuidanceStats
        Fallback counts so far and the current coverage.
    level : int or None
        Fallback level of the vertex being written (``None`` until its first digit's mask was asked for).
    """

    def __init__(self, guide: PointGuide, constraint: FaceConstraint):
        if constraint.n != guide.n:
            raise ValueError(f"guide has {guide.n} levels, constraint {constraint.n}")
        if constraint.cur or constraint.n_faces:
            raise ValueError("GuidedConstraint needs a fresh FaceConstraint")
        self.guide = guide
        self.constraint = constraint
        self.vocab = constraint.vocab
        self.stats = GuidanceStats()
        self.level: int | None = None
        self._cand: np.ndarray | None = None  # sorted candidate ranks of the vertex being written
        self._cells: list[np.ndarray] = []  # cells (xyz) of the face's completed vertices
        self._digits: list[int] = []  # digits of the vertex being written
        self._dist = np.full(len(guide.points), np.inf)  # (N',) distance of each point to the mesh so far

    # -- FaceConstraint surface ------------------------------------------------------------------------
    @property
    def n_faces(self) -> int:
        return self.constraint.n_faces

    @property
    def finished(self) -> bool:
        return self.constraint.finished

    @property
    def coverage(self) -> float:
        """Share of (distinct) input points within ``tol`` of the faces generated so far."""
        return float(np.mean(self._dist <= self.guide.tol))

    def eos_refused(self) -> bool:
        """Whether coverage-aware EOS refuses EOS now (``min_coverage`` not reached, budget left)."""
        fc, min_cov = self.constraint, self.guide.config.min_coverage
        return min_cov > 0 and fc.can_continue and not fc.cur and self.coverage < min_cov

    def allowed_values(self) -> np.ndarray:
        """``(n,)`` bool: coordinate values allowed as the next token."""
        return self.allowed()[: self.guide.n]

    def allowed(self) -> np.ndarray:
        """``(vocab_size,)`` bool: the order constraint's mask narrowed by the guide (see module doc)."""
        fc, n = self.constraint, self.guide.n
        out = fc.allowed()  # (V,)
        if not out[:n].any():  # finished, face budget used up: nothing to guide
            return out
        if self.eos_refused():
            out[self.vocab.eos] = False
        if self.level is None:
            self._choose_level(eos=bool(out[self.vocab.eos]))
        if self.level != ORDER_ONLY:
            lb, bad = fc.vertex_domain()
            out[:n] = digit_mask(n, self._digits, lb, bad, self._cand)
        return out

    def push(self, token: int) -> None:
        """Advance with ``token`` (from :meth:`allowed`)."""
        token = int(token)
        self.constraint.push(token)
        if token >= self.guide.n:
            return
        self._digits.append(token)
        if len(self._digits) < 3:
            return
        z, y, x = self._digits
        self._cells.append(np.array([x, y, z], dtype=np.int64))
        self._digits, self.level, self._cand = [], None, None
        if len(self._cells) == 3:
            tri = self.guide.centres(np.stack(self._cells))  # (3, 3)
            np.minimum(self._dist, point_triangle_distance(self.guide.points, tri), out=self._dist)
            self.stats.coverage = self.coverage
            self._cells = []

    # -- levels ------------------------------------------------------------------------------------------
    def _choose_level(self, *, eos: bool) -> None:
        """Pick the vertex's fallback level: the first that leaves a value, or EOS (first vertex only)."""
        fc, g = self.constraint, self.guide
        lb, bad = fc.vertex_domain()
        a = len(self._cells)  # which vertex of the face
        self.level, self._cand = ORDER_ONLY, None
        for key in (GUIDED, WIDENED):
            base = self._feasible(key, lb, bad)
            options = [(key, base)]
            if key == GUIDED and a and g.config.face_test:
                options = [(GUIDED, self._face_filter(base)), (NO_FACE_TEST, base)]
            for level, cand in options:
                if eos or digit_mask(g.n, [], lb, bad, cand).any():
                    self.level, self._cand = level, cand
                    break
            if self.level != ORDER_ONLY:
                break
        if self.level == NO_FACE_TEST:
            self.stats.face_test_dropped += 1
        elif self.level == WIDENED:
            self.stats.widened += 1
        elif self.level == ORDER_ONLY:
            self.stats.order_only += 1

    def _rank(self, cell: np.ndarray) -> int:
        n = self.guide.n
        return int((cell[2] * n + cell[1]) * n + cell[0])

    def _feasible(self, key: int, lb: int, bad: np.ndarray) -> np.ndarray:
        """Sorted candidate ranks of set ``key`` for the vertex being written, ``>= lb``, with a completion of
        the face inside the same set (the face test aside)."""
        g, fc = self.guide, self.constraint
        ranks = g.candidates(key)
        a = len(self._cells)
        if a == 0:
            cand = ranks[np.searchsorted(ranks, lb):]
            cand = cand[~_member(cand, g.dead_ends(key))]
            if g.config.pin_start and fc.n_faces == 0:
                cand = cand[(cand >= g.pin[0]) & (cand < g.pin[1])]
            prev = fc.prev
            if prev is not None and len(cand) and cand[0] == prev[0]:  # same v0 as the last face: check it
                if not len(self._v1_feasible(ranks, prev[0], *fc.v1_domain(prev[0]))):
                    cand = cand[1:]
            return cand
        if a == 1:
            return self._v1_feasible(ranks, self._rank(self._cells[0]), lb, bad)
        return ranks[np.searchsorted(ranks, lb):]

    def _v1_feasible(self, ranks: np.ndarray, r0: int, lb: int, bad: np.ndarray) -> np.ndarray:
        """Ranks (sorted) allowed for ``v1`` after ``r0`` whose face can be finished with a ``v2`` from ``ranks``."""
        fc, n = self.constraint, self.guide.n
        cand = ranks[np.searchsorted(ranks, lb):]
        cand = cand[~_member(cand, bad)]
        tight0 = fc.prev is not None and r0 == fc.prev[0]
        above = len(ranks) - int(np.searchsorted(ranks, r0, side="right"))
        # a v2 must avoid the line v0 v1 (< n points above v0) and duplicate partners (2 per face of the group):
        # with more candidates above v0 than that, only v1 == the previous face's v1 (v2 above its v2) can fail
        if above > n - 1 + (2 * len(fc.group) if tight0 else 0):
            check = cand[:1] if tight0 and len(cand) and cand[0] == fc.prev[1] else cand[:0]
        else:
            check = cand
        dead = [r1 for r1 in check.tolist() if _count_allowed(ranks, *fc.v2_domain(r0, r1)) == 0]
        return cand[~np.isin(cand, dead)] if dead else cand

    def _face_filter(self, cand: np.ndarray) -> np.ndarray:
        """The face test on ``v1`` (edge midpoint) or ``v2`` (centroid and edge midpoints) candidates."""
        g = self.guide
        cells = g.unrank(cand)  # (K, 3)
        if len(self._cells) == 1:
            return cand[g.edge_pass(self._cells[0], cells)]
        return cand[g.face_pass(self._cells[0], self._cells[1], cells)]
