"""Shape metrics every evaluation in this project reports.

Conventions
-----------
* Frame: both meshes are first mapped by the *reference* (ground-truth) mesh's
  :class:`~tokenizers3d.mesh.Normalization`, so the reference fills the unit cube ``[-0.5, 0.5]^3``
  (longest side 1). Distances are therefore fractions of the reference's longest side.
* Samples: ``n_samples`` points (default 10,000) drawn uniformly by area from each surface with a fixed
  seed (:func:`tokenizers3d.sample.sample_surface`).
* Chamfer distance: mean nearest-neighbour Euclidean distance (not squared) from prediction to reference
  plus from reference to prediction, halved: ``CD = (mean_p d(p, R) + mean_r d(r, P)) / 2``.
  Nearest neighbours by PyTorch3D ``knn_points``.
* F-score at threshold ``t``: precision = share of predicted samples within ``t`` of the reference samples,
  recall = share of reference samples within ``t`` of the predicted ones, ``F = 2PR / (P + R)``.
  Reported at 0.02 and 0.05 (2 % and 5 % of the reference size).
* Normal consistency: mean absolute cosine between each sample's face normal and its nearest neighbour's,
  both directions averaged (1 is perfect; orientation-agnostic).
* Hausdorff: the larger of the two directed maxima of nearest-neighbour distances over the samples.
* Edge Chamfer: Chamfer distance between points sampled on *sharp* edges (dihedral angle above
  ``sharp_angle`` degrees, default 30) of both meshes; NaN when either mesh has no sharp edge.
* Topology: face and vertex counts; watertight (every edge shared by exactly two faces with consistent
  winding, trimesh's definition); edge-manifold (no edge shared by more than two faces); components (pieces of
  faces joined across edges two faces share, beside the reference's: a triangle soup has about one per face);
  open-edge share (edges only one face uses, over all edges: 0 for a closed mesh). Surface distances cannot see
  whether the faces form a mesh; these can. :func:`mesh_info`
  computes trimesh's topology figures with numpy alone (``meshgen info`` loads neither trimesh nor SciPy).
* Part segmentation (:func:`matched_part_iou`): IoU between a true part and a predicted segment is
  area-weighted over faces, ``area(P & S) / area(P | S)``; segments are matched one-to-one to parts with the
  Hungarian algorithm on IoU; the score is the mean matched IoU over the true parts (a part left without a
  segment scores 0; extra segments cost only through the area they take).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from .mesh import ArrayMesh, Normalization
from .sample import sample_surface

if TYPE_CHECKING:  # imported where needed, so that mesh_info loads neither trimesh nor SciPy
    import trimesh


@dataclass(frozen=True)
class MeshMetrics:
    """Result of :func:`evaluate_mesh` (distances in reference-unit-cube units)."""

    chamfer: float
    fscore_002: float
    fscore_005: float
    normal_consistency: float
    hausdorff: float
    edge_chamfer: float
    n_faces: int
    n_vertices: int
    ref_faces: int
    watertight: bool
    manifold: bool
    components: int = 0  # pieces of the prediction (faces joined across shared edges, :func:`mesh_info`)
    ref_components: int = 0
    open_edge_share: float = 0.0  # share of the prediction's edges that only one face uses (0: closed)

    def to_dict(self) -> dict:
        return asdict(self)


def _nn_dist(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance (Na,) from each point of a (Na, 3) to its nearest in b (Nb, 3), and that neighbour's index."""
    import torch  # here, not at the top: `meshgen info` needs no PyTorch
    from pytorch3d.ops import knn_points

    ta = torch.as_tensor(a, dtype=torch.float32)[None]
    tb = torch.as_tensor(b, dtype=torch.float32)[None]
    knn = knn_points(ta, tb, K=1)
    return knn.dists[0, :, 0].clamp_min(0).sqrt().numpy(), knn.idx[0, :, 0].numpy()


def chamfer_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric mean nearest-neighbour distance between point sets a (Na, 3) and b (Nb, 3)."""
    dab, _ = _nn_dist(a, b)
    dba, _ = _nn_dist(b, a)
    return float((dab.mean() + dba.mean()) / 2)


def fscore(pred: np.ndarray, ref: np.ndarray, threshold: float) -> float:
    """F-score of pred (Np, 3) against ref (Nr, 3) at a distance threshold."""
    dpr, _ = _nn_dist(pred, ref)
    drp, _ = _nn_dist(ref, pred)
    p, r = float((dpr < threshold).mean()), float((drp < threshold).mean())
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def hausdorff_distance(a: np.ndarray, b: np.ndarray) -> float:
    dab, _ = _nn_dist(a, b)
    dba, _ = _nn_dist(b, a)
    return float(max(dab.max(), dba.max()))


def normal_consistency(pa: np.ndarray, na: np.ndarray, pb: np.ndarray, nb: np.ndarray) -> float:
    """Mean |cos| between normals of nearest neighbours, averaged over both directions."""
    _, iab = _nn_dist(pa, pb)
    _, iba = _nn_dist(pb, pa)
    ca = np.abs((na * nb[iab]).sum(axis=1))
    cb = np.abs((nb * na[iba]).sum(axis=1))
    return float((ca.mean() + cb.mean()) / 2)


def sharp_edges(mesh: trimesh.Trimesh, angle_deg: float = 30.0) -> np.ndarray:
    """Sharp edges (E, 2, 3): interior edges with dihedral angle above ``angle_deg``, plus boundary edges."""
    adj_angle = np.asarray(mesh.face_adjacency_angles)
    edges = np.asarray(mesh.face_adjacency_edges)[adj_angle > np.radians(angle_deg)]
    counts = np.bincount(mesh.edges_unique_inverse, minlength=len(mesh.edges_unique))
    boundary = np.asarray(mesh.edges_unique)[counts == 1]
    all_edges = np.vstack([edges.reshape(-1, 2), boundary.reshape(-1, 2)])
    return np.asarray(mesh.vertices)[all_edges]


def sample_edges(segments: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n points uniformly by length along segments (E, 2, 3)."""
    length = np.linalg.norm(segments[:, 1] - segments[:, 0], axis=1)
    idx = rng.choice(len(segments), size=n, p=length / length.sum())
    t = rng.random((n, 1))
    return segments[idx, 0] * (1 - t) + segments[idx, 1] * t


def _edges(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The directed edges (3F, 2) of ``faces`` (a face's edges 0-1, 1-2, 2-0 in turn, as trimesh lists them), the
    index of each one's undirected edge in sorted order, and how many times each undirected edge occurs."""
    edges = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    lo, hi = edges.min(axis=1), edges.max(axis=1)
    n = int(faces.max()) + 1 if faces.size else 1
    _, inverse, counts = np.unique(lo * n + hi, return_inverse=True, return_counts=True)
    return edges, inverse.reshape(-1), counts


def is_edge_manifold(mesh: trimesh.Trimesh | ArrayMesh) -> bool:
    """True when no edge is shared by more than two faces."""
    _, _, counts = _edges(np.asarray(mesh.faces, dtype=np.int64).reshape(-1, 3))
    return bool(counts.max(initial=0) <= 2)


def _count_components(n: int, a: np.ndarray, b: np.ndarray) -> int:
    """Connected components of the graph on nodes ``0 .. n-1`` with edges ``a[i] - b[i]`` (isolated nodes count)."""
    root = np.arange(n)
    while True:
        ra, rb = root[a], root[b]
        cross = ra != rb
        if not cross.any():
            return int(np.count_nonzero(root == np.arange(n)))
        np.minimum.at(root, np.maximum(ra, rb)[cross], np.minimum(ra, rb)[cross])  # hook roots onto smaller ones
        while True:  # point every node at its root
            up = root[root]
            if np.array_equal(up, root):
                break
            root = up


def evaluate_mesh(pred: trimesh.Trimesh, ref: trimesh.Trimesh, *, n_samples: int = 10_000, seed: int = 0,
                  sharp_angle: float = 30.0) -> MeshMetrics:
    """All metrics of ``pred`` against ``ref`` (both in the same frame; see module conventions)."""
    import trimesh

    norm = Normalization.fit(ref.vertices)
    p = trimesh.Trimesh(norm.apply(pred.vertices), pred.faces, process=False)
    r = trimesh.Trimesh(norm.apply(ref.vertices), ref.faces, process=False)
    sp = sample_surface(p, n_samples, seed=seed)
    sr = sample_surface(r, n_samples, seed=seed + 1)
    rng = np.random.default_rng(seed)
    ep, er = sharp_edges(p, sharp_angle), sharp_edges(r, sharp_angle)
    if len(ep) and len(er):
        edge_cd = chamfer_distance(sample_edges(ep, n_samples // 4, rng), sample_edges(er, n_samples // 4, rng))
    else:
        edge_cd = float("nan")
    info = mesh_info(pred)
    return MeshMetrics(
        chamfer=chamfer_distance(sp.points, sr.points),
        fscore_002=fscore(sp.points, sr.points, 0.02),
        fscore_005=fscore(sp.points, sr.points, 0.05),
        normal_consistency=normal_consistency(sp.points, sp.normals, sr.points, sr.normals),
        hausdorff=hausdorff_distance(sp.points, sr.points),
        edge_chamfer=edge_cd,
        n_faces=len(pred.faces),
        n_vertices=len(pred.vertices),
        ref_faces=len(ref.faces),
        watertight=info["watertight"],
        manifold=info["edge_manifold"],
        components=info["components"],
        ref_components=mesh_info(ref)["components"],
        open_edge_share=open_edge_share(pred, info),
    )


def open_edge_share(mesh: trimesh.Trimesh | ArrayMesh, info: dict | None = None) -> float:
    """Share of ``mesh``'s edges that only one face uses: 0 for a closed mesh, 1 for loose triangles (``info``:
    its :func:`mesh_info`, when already computed)."""
    info = mesh_info(mesh) if info is None else info
    return info["open_edges"] / max(info["edges"], 1)


def mesh_info(mesh: trimesh.Trimesh | ArrayMesh) -> dict:
    """Counts, bounds, watertightness, manifoldness, components and genus (Euler characteristic).

    numpy alone, with trimesh's definitions and numbers (``tests/test_fast_io.py`` compares them): bounds and
    extent over the vertices the faces use; area the sum of the faces' areas; watertight when every edge
    occurs in exactly two faces, winding-consistent when each such pair runs the edge in opposite
    directions (both False for a mesh without vertices); edge-manifold when no edge is in more than two
    faces; components of faces joined across edges shared by exactly two faces; Euler characteristic
    ``V_used - E + F``; genus ``(2 components - Euler) / 2`` for a watertight mesh, else None.

    Parameters
    ----------
    mesh : trimesh.Trimesh or ArrayMesh
        Anything with ``vertices`` (V, 3) and ``faces`` (F, 3), at least one face.
    """
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64).reshape(-1, 3)
    edges, inverse, counts = _edges(faces)
    per_edge = counts[inverse]  # occurrences of each directed edge's undirected edge
    twice = np.flatnonzero(per_edge == 2)
    pairs = twice[np.argsort(inverse[twice], kind="stable")].reshape(-1, 2)  # the two occurrences of each such edge
    empty = len(vertices) == 0  # trimesh's is_empty
    watertight = not empty and len(twice) == len(edges)
    winding = not empty and bool(np.all(edges[pairs[:, 0], 1] == edges[pairs[:, 1], 0]))
    adjacent = pairs // 3  # faces sharing an edge (an edge of a degenerate face may join the face to itself)
    n_comp = _count_components(len(faces), adjacent[:, 0], adjacent[:, 1])
    used = np.zeros(len(vertices), dtype=bool)
    used[faces] = True
    euler = int(used.sum()) - len(counts) + len(faces)
    genus = (2 * n_comp - euler) // 2 if watertight else None
    points = vertices[used]
    lo, hi = points.min(axis=0), points.max(axis=0)
    tri = vertices[faces]
    vectors = tri[:, 1:, :] - tri[:, :2, :]  # as trimesh.triangles.cross: edges 0-1 and 1-2
    crosses = np.cross(vectors[:, 0], vectors[:, 1])
    area = (np.sqrt((crosses**2).sum(axis=1)) / 2.0).sum()
    return {
        "faces": int(len(faces)),
        "vertices": int(len(vertices)),
        "bounds_min": [float(x) for x in lo],
        "bounds_max": [float(x) for x in hi],
        "extent": [float(x) for x in hi - lo],
        "area": float(area),
        "watertight": watertight,
        "winding_consistent": winding,
        "edge_manifold": bool(counts.max(initial=0) <= 2),
        "edges": int(len(counts)),
        "open_edges": int((counts == 1).sum()),
        "components": n_comp,
        "euler_characteristic": euler,
        "genus": genus,
    }


def face_areas(mesh: trimesh.Trimesh) -> np.ndarray:
    """Surface area (F,) float64 of every face."""
    tri = np.asarray(mesh.vertices, dtype=np.float64)[np.asarray(mesh.faces)]
    return 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)


def part_matching(pred: np.ndarray, true: np.ndarray, areas: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hungarian matching of predicted segments to true parts on area-weighted IoU.

    Parameters
    ----------
    pred, true : (F,) int
        Segment and part of every face (any integers).
    areas : (F,) float

    Returns
    -------
    parts : (P,) int64
        The true labels, sorted.
    matched : (P,) int64
        The predicted label matched to each part, -1 when none.
    iou : (P,) float64
        The matched IoU (0 when none).
    """
    from scipy.optimize import linear_sum_assignment

    pred = np.asarray(pred, dtype=np.int64)
    true = np.asarray(true, dtype=np.int64)
    tp, pp = np.unique(true), np.unique(pred)
    inter = np.zeros((len(tp), len(pp)))
    np.add.at(inter, (np.searchsorted(tp, true), np.searchsorted(pp, pred)), np.asarray(areas, dtype=np.float64))
    size_t, size_p = inter.sum(1), inter.sum(0)
    iou = inter / np.maximum(size_t[:, None] + size_p[None, :] - inter, 1e-30)  # (P, S)
    rows, cols = linear_sum_assignment(-iou)
    matched = np.full(len(tp), -1, dtype=np.int64)
    best = np.zeros(len(tp))
    matched[rows], best[rows] = pp[cols], iou[rows, cols]
    return tp, matched, best


def matched_part_iou(pred: np.ndarray, true: np.ndarray, areas: np.ndarray) -> tuple[float, list[float]]:
    """Mean area-weighted IoU over true parts after Hungarian matching (see the module docstring); also
    the per-part IoUs, in sorted order of the true labels."""
    _, _, iou = part_matching(pred, true, areas)
    return float(iou.mean()), iou.tolist()
