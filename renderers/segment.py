"""Mesh segmentation from 2D masks: render views, make masks per view, revote them onto faces.

Pipeline (:class:`MeshSegmenter`)
---------------------------------
1. Render ``n_views`` views (:class:`~renderers.render.MeshRenderer`): shaded image, normals, depth,
   surface points and ``pix_to_face``.
2. Run a :class:`~renderers.masks.MaskGenerator` on every view (default
   :class:`~renderers.masks.GeometricMaskGenerator`; :class:`~renderers.sam.SamMaskGenerator` with a
   checkpoint). Each view's masks are flattened into a partition, smaller masks painted over larger ones.
3. Revote (:func:`revote`):

   * *Orient*: faces are wound consistently and outward (:func:`tokenizers3d.orient.orient_outward`; face
     order kept), so the convexity tests below read an inside-out mesh as they read the original.
   * *Lift*: a mask's pixels map to faces through ``pix_to_face``. Mask ``m`` in view ``v`` holds face
     ``f`` with fraction ``c(m, f) / c(v, f)`` (its pixels of ``f`` over all visible pixels of ``f``) and
     votes for it with weight ``score(m) * |cos(n_f, view direction)| * c(m, f) / c(v, f)``.
   * *Associate*: a face belongs to the mask holding most of its pixels in a view. Masks from different
     views belong to the same 3D segment when their face sets agree where both views can judge: the
     area-weighted IoU over the faces visible in *both* views exceeds ``association_iou`` (and the
     overlap is not negligible). Connected masks are united (union-find); every group is a segment.
   * *Vote*: every face takes the segment with the largest summed vote; ``confidence`` is that vote's
     share of all the face's votes.
   * *Fill*: faces no view saw take the majority label of their labelled neighbours over the face
     adjacency graph, repeatedly; whole components nobody saw take the nearest labelled face's label.
   * *Smooth*: a few rounds of majority filtering over face adjacency for low-confidence faces.
   * *Merge convex*: neighbouring segments whose shared boundary runs mostly along sharp convex mesh
     edges are one part seen from two sides (the top and underside of a thin board) and are united.
   * *Convex pieces*: a closed connected piece of the mesh that is nearly convex (its volume at least
     ``convex_piece_ratio`` of its convex hull's) has no concavity for a part boundary to run along (the
     minima rule), so it becomes one segment (a shelf board that a mask generator split in two).
   * *Clean*: segments below ``min_segment_area`` of the surface merge into the neighbour they share most
     edges with; labels are renumbered 0..K-1 by decreasing area.

:func:`segment_by_concave_edges` is the render-free baseline (``meshgen segment --method mesh``): cut sharp
concave edges, take connected components. :func:`segment_mesh_file` is the file-to-file entry point behind
``meshgen segment``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trimesh
from scipy.sparse import coo_matrix
from scipy.spatial import cKDTree

from tokenizers3d.errors import ConfigError, MeshInputError
from tokenizers3d.io import atomic_paths, check_output_path, label_colors, load_mesh, mesh_bytes, refuse_overwrite
from tokenizers3d.orient import orient_outward

from .masks import GeometricMaskGenerator, Mask, MaskGenerator
from .render import MeshRenderer, RenderOutput, RenderSettings, face_normals_of


@dataclass(frozen=True)
class RevoteSettings:
    """How masks become face labels (see the module docstring).

    Attributes
    ----------
    association : str
        ``"louvain"`` (communities of the mask graph) or ``"union_find"`` (every strong pair united).
    association_iou : float
        ``union_find``: masks of two views join one segment when their co-visible IoU exceeds this.
    min_edge_iou : float
        ``louvain``: pairs of masks with a lower co-visible IoU get no edge.
    resolution : float
        ``louvain`` resolution (higher: more, smaller segments).
    min_overlap : float
        ... and their co-visible intersection is at least this fraction of the smaller mask's area.
    view_weighting : bool
        Weigh votes by ``|cos|`` between face normal and viewing direction.
    smooth_iterations : int
        Rounds of majority filtering.
    smooth_below_confidence : float
        Only faces with a lower confidence are smoothed.
    min_segment_area : float
        Segments with a smaller fraction of the total surface area merge into a neighbour.
    min_mask_pixels : int
        Masks with fewer foreground pixels (after flattening) are ignored.
    split_components : bool
        Split every mask where it covers several connected pieces of the mesh (pieces sharing no edge):
        separate pieces never end up in one segment. Right for objects modelled as separate parts
        (procedural and most artist meshes), where flush parts show no crease or depth step in any
        image; wrong when one part is made of several pieces.
    merge_convex_fraction : float
        Neighbouring segments whose shared boundary is at least this fraction (by length) sharp convex
        creases merge (1.0 turns it off); needs outward-consistent winding (see ``orient``).
    convex_angle : float
        Dihedral (degrees between normals) above which a mesh edge counts as a sharp crease.
    convex_piece_ratio : float
        A closed connected piece whose volume is at least this fraction of its convex hull's becomes one
        segment (above 1 turns it off).
    orient : bool
        Make the winding consistent and outward first (:func:`tokenizers3d.orient.orient_outward`), so that
        an inside-out mesh, or one whose pieces disagree, gets the same convexity tests as an outward one.
        Face order and labels are unchanged.
    """

    association: str = "louvain"
    association_iou: float = 0.5
    min_edge_iou: float = 0.2
    resolution: float = 1.0
    min_overlap: float = 0.05
    view_weighting: bool = True
    smooth_iterations: int = 3
    smooth_below_confidence: float = 0.75
    min_segment_area: float = 0.002
    min_mask_pixels: int = 12
    split_components: bool = True
    merge_convex_fraction: float = 0.6
    convex_angle: float = 30.0
    convex_piece_ratio: float = 0.95
    orient: bool = True


@dataclass(frozen=True)
class SegmentSettings:
    """Rendering and revoting settings of :class:`MeshSegmenter`."""

    render: RenderSettings = field(default_factory=lambda: RenderSettings(n_views=12, image_size=256))
    revote: RevoteSettings = field(default_factory=RevoteSettings)


@dataclass
class SegmentationResult:
    """Per-face segment labels.

    Attributes
    ----------
    labels : (F,) int64
        Segment per face, 0..K-1 by decreasing area.
    confidence : (F,) float32
        Share of the face's votes its label got; 0 for faces no view saw.
    n_segments : int
        ``K``.
    n_views : int
        Views rendered.
    n_masks : int
        Masks used (after flattening and size filtering), all views together.
    seen : (F,) bool
        Faces some mask voted for.
    mask_segments : list of (M_v,) int64
        Per view, the segment (before clean-up and renumbering) each of its masks joined.
    render : RenderOutput or None
        The views, when the segmenter rendered them.
    view_masks : list of list of Mask
        Per view, the masks the generator made (before flattening), when the segmenter made them.
    method : str
        ``"views"`` (masks revoted) or ``"mesh"`` (:func:`segment_by_concave_edges`, nothing rendered).
    """

    labels: np.ndarray
    confidence: np.ndarray
    n_segments: int
    n_views: int
    n_masks: int
    seen: np.ndarray
    mask_segments: list = field(default_factory=list)
    render: RenderOutput | None = None
    view_masks: list = field(default_factory=list)
    method: str = "views"

    @property
    def no_masks(self) -> bool:
        """The views method found no usable mask in any view: every face got label 0 (one segment)."""
        return self.method == "views" and self.n_masks == 0

    def summary(self) -> dict:
        """JSON-ready counts."""
        return {"method": self.method, "n_segments": self.n_segments, "n_views": self.n_views, "n_masks": self.n_masks,
                "n_faces": int(len(self.labels)), "seen_fraction": float(self.seen.mean()) if len(self.seen) else 0.0,
                "mean_confidence": float(self.confidence.mean()) if len(self.confidence) else 0.0}


# --------------------------------------------------------------------------------------------- graph helpers


def merged_faces(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Faces (F, 3) int64 re-indexed so that vertices at equal positions share one index."""
    faces = np.asarray(faces, dtype=np.int64)
    if len(faces) == 0:
        return faces.reshape(0, 3)
    _, inverse = np.unique(np.asarray(vertices), axis=0, return_inverse=True)
    return inverse.reshape(-1)[faces]


def face_adjacency(vertices: np.ndarray, faces: np.ndarray, *, merged: np.ndarray | None = None) -> np.ndarray:
    """Pairs of faces sharing an edge (E, 2) int64, with equal vertex positions merged first.

    Non-manifold edges (three or more faces) link their faces in a chain. Face order is untouched.
    ``merged`` (:func:`merged_faces`) skips the merge when already computed.
    """
    f = merged_faces(vertices, faces) if merged is None else merged
    if len(f) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    owner = np.tile(np.arange(len(f)), 3)
    keep = edges[:, 0] != edges[:, 1]
    edges, owner = edges[keep], owner[keep]
    order = np.lexsort((owner, edges[:, 1], edges[:, 0]))
    edges, owner = edges[order], owner[order]
    same = np.all(edges[1:] == edges[:-1], axis=1) & (owner[1:] != owner[:-1])
    pairs = np.stack([owner[:-1][same], owner[1:][same]], axis=1)
    return np.unique(np.sort(pairs, axis=1), axis=0) if len(pairs) else pairs


def edge_convexity(vertices: np.ndarray, faces: np.ndarray, adjacency: np.ndarray, normals: np.ndarray, *,
                   angle: float = 30.0, merged: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Length of each shared edge and whether it is a sharp convex crease.

    Parameters
    ----------
    adjacency : (E, 2) int64
        Face pairs (:func:`face_adjacency`).
    normals : (F, 3) float
        Unit face normals, assumed outward (consistent winding).
    angle : float
        Normals further apart than this (degrees) make a sharp crease.
    merged : (F, 3) int64, optional
        :func:`merged_faces`, when already computed.

    Returns
    -------
    length : (E,) float
    convex : (E,) bool
        Sharp, and each face's centroid lies behind the other's plane.
    """
    if len(adjacency) == 0:
        return np.zeros(0), np.zeros(0, dtype=bool)
    vertices = np.asarray(vertices, dtype=np.float64)
    f = merged_faces(vertices, faces) if merged is None else merged
    a, b = adjacency[:, 0], adjacency[:, 1]
    shared = (f[a][:, :, None] == f[b][:, None, :]).any(axis=2)  # (E, 3): corners of a also in b
    corners = np.asarray(faces)[a]
    length = np.zeros(len(a))
    two = shared.sum(axis=1) == 2
    first, second = np.argsort(~shared, axis=1, kind="stable")[:, 0], np.argsort(~shared, axis=1, kind="stable")[:, 1]
    rows = np.arange(len(a))
    length[two] = np.linalg.norm(vertices[corners[rows, first]] - vertices[corners[rows, second]], axis=1)[two]
    tri = vertices[np.asarray(faces)]
    centroid = tri.mean(axis=1)
    sharp = np.einsum("ij,ij->i", normals[a], normals[b]) < np.cos(np.radians(angle))
    behind = (np.einsum("ij,ij->i", normals[a], centroid[b] - centroid[a]) < 0) & \
        (np.einsum("ij,ij->i", normals[b], centroid[a] - centroid[b]) < 0)
    return length, sharp & behind


def concave_edges(vertices: np.ndarray, faces: np.ndarray, adjacency: np.ndarray, *, angle: float = 30.0
                  ) -> np.ndarray:
    """Which shared edges are sharp concave creases, (E,) bool.

    Normals (by winding, assumed outward) further apart than ``angle`` degrees, and each face's centroid
    in front of the other's plane (the opposite of :func:`edge_convexity`'s ``behind``): the valley where
    a leg meets a table top, a handle meets a mug, two fused parts meet.
    """
    if len(adjacency) == 0:
        return np.zeros(0, dtype=bool)
    vertices = np.asarray(vertices, dtype=np.float64)
    normals = face_normals_of(vertices, faces)
    centroid = vertices[np.asarray(faces)].mean(axis=1)
    a, b = adjacency[:, 0], adjacency[:, 1]
    sharp = np.einsum("ij,ij->i", normals[a], normals[b]) < np.cos(np.radians(angle))
    front = (np.einsum("ij,ij->i", normals[a], centroid[b] - centroid[a]) > 0) & \
        (np.einsum("ij,ij->i", normals[b], centroid[a] - centroid[b]) > 0)
    return sharp & front


class _UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)

    def roots(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)


# --------------------------------------------------------------------------------------------- revoting


def flatten_masks(masks: Sequence[Mask], foreground: np.ndarray, *, min_pixels: int = 12) -> tuple[np.ndarray, list[float]]:
    """Paint one view's masks into a partition: larger masks first, so smaller (finer) ones win overlaps.

    Parameters
    ----------
    masks : sequence of Mask
    foreground : (H, W) bool
        Pixels showing the mesh; masks are clipped to it.
    min_pixels : int
        Masks left with fewer pixels are dropped.

    Returns
    -------
    index : (H, W) int64
        Mask number per pixel (0..M-1 over the kept masks), -1 where none.
    scores : list of float
        Score of each kept mask.
    """
    index = np.full(foreground.shape, -1, dtype=np.int64)
    clipped = [(np.asarray(m.mask, dtype=bool) & foreground, float(m.score)) for m in masks]
    clipped = [(m, s) for m, s in clipped if m.any()]
    order = sorted(range(len(clipped)), key=lambda i: -int(clipped[i][0].sum()))
    for rank, i in enumerate(order):
        index[clipped[i][0]] = rank
    counts = np.bincount(index[index >= 0], minlength=len(order))
    kept = np.nonzero(counts >= min_pixels)[0]
    remap = np.full(len(order) + 1, -1, dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    index = remap[index]  # -1 maps through remap[-1] = -1
    return index, [clipped[order[k]][1] for k in kept]


def _components_of(n_faces: int, adjacency: np.ndarray) -> np.ndarray:
    """Connected component (over shared edges) of every face, (F,) int64."""
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(adjacency)), (adjacency[:, 0], adjacency[:, 1])), shape=(n_faces, n_faces))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def split_by_component(index: np.ndarray, scores: list[float], pix_to_face: np.ndarray, component: np.ndarray, *,
                       min_pixels: int = 12) -> tuple[np.ndarray, list[float]]:
    """Split every mask of a flattened view where it covers several connected pieces of the mesh.

    Parameters
    ----------
    index : (H, W) int64
        Mask number per pixel, -1 where none (:func:`flatten_masks`).
    scores : list of float
    pix_to_face : (H, W) int64
    component : (F,) int64
        Connected component of each face.

    Returns
    -------
    index : (H, W) int64
        New mask numbers; pieces under ``min_pixels`` are dropped.
    scores : list of float
        Each piece keeps its mask's score.
    """
    sel = (index >= 0) & (pix_to_face >= 0)
    out = np.full(index.shape, -1, dtype=np.int64)
    if not sel.any():
        return out, []
    key = index[sel] * (int(component.max()) + 1) + component[pix_to_face[sel]]
    uniq, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    kept = counts >= min_pixels
    remap = np.where(kept, np.cumsum(kept) - 1, -1)
    out[sel] = remap[inverse]
    base = uniq[kept] // (int(component.max()) + 1)
    return out, [scores[int(b)] for b in base]


def _mask_face_fractions(pix_to_face: np.ndarray, index: np.ndarray, n_faces: int):
    """For one view: visible pixel count per face (F,), and (mask, face, fraction) triples."""
    fg = pix_to_face >= 0
    faces_seen = pix_to_face[fg]
    visible = np.bincount(faces_seen, minlength=n_faces)
    sel = fg & (index >= 0)
    key = index[sel] * n_faces + pix_to_face[sel]
    uniq, cnt = np.unique(key, return_counts=True)
    mask_id, face = uniq // n_faces, uniq % n_faces
    return visible, mask_id, face, cnt / visible[face]


def revote(mesh: trimesh.Trimesh, pix_to_face: np.ndarray, view_masks: Sequence[Sequence[Mask]], *,
           eyes: np.ndarray | None = None, settings: RevoteSettings | None = None) -> SegmentationResult:
    """Turn per-view 2D masks into per-face labels (see the module docstring).

    Parameters
    ----------
    mesh : trimesh.Trimesh
        The mesh the views show; ``pix_to_face`` indexes its faces.
    pix_to_face : (V, H, W) int64
        Face per pixel, -1 for background.
    view_masks : sequence (V) of sequence of Mask
        Masks of each view.
    eyes : (V, 3) float, optional
        Camera centres in the mesh's frame; without them votes are not weighted by viewing angle.
    settings : RevoteSettings

    Returns
    -------
    SegmentationResult
        ``render`` is None.
    """
    s = settings or RevoteSettings()
    pix_to_face = np.asarray(pix_to_face, dtype=np.int64)
    if pix_to_face.ndim != 3:
        raise ValueError(f"pix_to_face must be (V, H, W), got shape {pix_to_face.shape}")
    if len(view_masks) != pix_to_face.shape[0]:
        raise ValueError(f"got masks for {len(view_masks)} views but pix_to_face has {pix_to_face.shape[0]}")
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    n_faces, n_views = len(faces), pix_to_face.shape[0]
    if pix_to_face.max(initial=-1) >= n_faces:
        raise ValueError("pix_to_face refers to a face index beyond the mesh")
    if s.orient:
        faces = orient_outward(vertices, faces)  # same faces in the same order; only the winding may change
    tri = vertices[faces]
    centroids = tri.mean(axis=1)
    areas = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    area_w = areas / areas.sum() if areas.sum() > 0 else np.full(n_faces, 1.0 / max(n_faces, 1))
    normals = face_normals_of(vertices, faces)

    # lift: one entry per (mask, face)
    e_mask, e_face, e_frac, e_vote = [], [], [], []
    visible_by_view = []
    mask_view, mask_offset = [], 0
    merged = merged_faces(vertices, faces)
    adjacency = face_adjacency(vertices, faces, merged=merged)
    component = _components_of(n_faces, adjacency) if s.split_components else None
    for v in range(n_views):
        index, scores = flatten_masks(view_masks[v], pix_to_face[v] >= 0, min_pixels=s.min_mask_pixels)
        if component is not None:
            index, scores = split_by_component(index, scores, pix_to_face[v], component, min_pixels=s.min_mask_pixels)
        visible, mask_id, face, frac = _mask_face_fractions(pix_to_face[v], index, n_faces)
        visible_by_view.append(visible > 0)
        quality = np.ones(len(face))
        if eyes is not None and s.view_weighting:
            to_eye = np.asarray(eyes[v], dtype=np.float64)[None] - centroids[face]
            to_eye /= np.maximum(np.linalg.norm(to_eye, axis=1, keepdims=True), 1e-12)
            quality = np.abs(np.einsum("ij,ij->i", normals[face], to_eye))
            quality = np.maximum(quality, 0.05)
        e_mask.append(mask_id + mask_offset)
        e_face.append(face)
        e_frac.append(frac)
        e_vote.append(np.asarray(scores, dtype=np.float64)[mask_id] * quality * frac)
        mask_view += [v] * len(scores)
        mask_offset += len(scores)
    n_masks = mask_offset
    mask_view = np.asarray(mask_view, dtype=np.int64)
    e_mask, e_face = np.concatenate(e_mask), np.concatenate(e_face)
    e_frac, e_vote = np.concatenate(e_frac), np.concatenate(e_vote)
    visible = np.stack(visible_by_view) if n_views else np.zeros((0, n_faces), bool)

    segment_of_mask = _associate(e_mask, e_face, e_frac, mask_view, visible, area_w, n_masks, s)

    # vote
    seg = segment_of_mask[e_mask] if n_masks else np.zeros(0, np.int64)
    n_seg = int(seg.max()) + 1 if len(seg) else 0
    labels = np.full(n_faces, -1, dtype=np.int64)
    confidence = np.zeros(n_faces, dtype=np.float64)
    if n_seg:
        key, inverse = np.unique(e_face * n_seg + seg, return_inverse=True)
        votes = np.bincount(inverse, weights=e_vote)
        face, segment = key // n_seg, key % n_seg
        total = np.bincount(face, weights=votes, minlength=n_faces)
        order = np.lexsort((segment, -votes, face))  # per face: largest vote first, ties to the lower id
        face, segment, votes = face[order], segment[order], votes[order]
        first = np.r_[True, face[1:] != face[:-1]] & (votes > 0)
        labels[face[first]] = segment[first]
        confidence[face[first]] = votes[first] / total[face[first]]
    seen = labels >= 0

    labels = _fill_unseen(labels, adjacency, area_w, centroids)
    for _ in range(s.smooth_iterations if len(adjacency) else 0):
        labels, changed = _majority_step(labels, confidence, adjacency, s.smooth_below_confidence)
        if not changed:
            break
    if s.merge_convex_fraction < 1.0:
        length, convex = edge_convexity(vertices, faces, adjacency, normals, angle=s.convex_angle, merged=merged)
        if component is None:
            component = _components_of(n_faces, adjacency)
        labels = _merge_convex(labels, adjacency, length, convex, s.merge_convex_fraction,
                               _dominant(labels, component, area_w))
    if s.convex_piece_ratio <= 1.0:
        if component is None:
            component = _components_of(n_faces, adjacency)
        labels = _merge_convex_pieces(labels, vertices, faces, component, area_w, s.convex_piece_ratio)
    labels = _merge_small(labels, adjacency, area_w, s.min_segment_area)
    labels = _relabel_by_area(labels, area_w)

    per_view = [segment_of_mask[mask_view == v] for v in range(n_views)]
    return SegmentationResult(labels=labels, confidence=confidence.astype(np.float32),
                              n_segments=int(labels.max()) + 1 if len(labels) else 0, n_views=n_views,
                              n_masks=n_masks, seen=seen, mask_segments=per_view)


def _mask_overlaps(e_mask, e_face, e_frac, mask_view, visible, area_w, n_masks: int, min_overlap: float):
    """Co-visible IoU of every pair of masks (from different views) that share a face.

    A face belongs to a mask when more than half of its visible pixels in that view lie in it (so to at
    most one mask per view). For two views, the area-weighted intersection and union of every pair of
    their masks are counted over the faces both views see; pairs whose intersection is below
    ``min_overlap`` of the smaller mask's area are left out.

    Returns
    -------
    first, second : (P,) int64
        Mask indices.
    iou : (P,) float
    """
    n_views, n_faces = visible.shape
    owner = np.full((n_views, n_faces), -1, dtype=np.int64)
    major = e_frac > 0.5
    owner[mask_view[e_mask[major]], e_face[major]] = e_mask[major]
    mask_area = np.bincount(e_mask[major], weights=area_w[e_face[major]], minlength=n_masks)
    firsts, seconds, ious = [], [], []
    for v in range(n_views):
        for u in range(v + 1, n_views):
            both = visible[v] & visible[u] & (owner[v] >= 0) & (owner[u] >= 0)
            if not both.any():
                continue
            a, b, w = owner[v][both], owner[u][both], area_w[both]
            ua, ia = np.unique(a, return_inverse=True)
            ub, ib = np.unique(b, return_inverse=True)
            size_a = np.bincount(ia, weights=w, minlength=len(ua))
            size_b = np.bincount(ib, weights=w, minlength=len(ub))
            pair, inverse = np.unique(ia * len(ub) + ib, return_inverse=True)
            inter = np.bincount(inverse, weights=w)
            pa, pb = pair // len(ub), pair % len(ub)
            ma, mb = ua[pa], ub[pb]
            ok = inter >= min_overlap * np.minimum(mask_area[ma], mask_area[mb])
            firsts.append(ma[ok])
            seconds.append(mb[ok])
            ious.append((inter / (size_a[pa] + size_b[pb] - inter))[ok])
    if not firsts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(firsts), np.concatenate(seconds), np.concatenate(ious)


def _associate(e_mask, e_face, e_frac, mask_view, visible, area_w, n_masks: int, s: RevoteSettings) -> np.ndarray:
    """Group masks into 3D segments; segment id per mask (M,).

    ``union_find`` unites every pair above ``association_iou`` (single linkage: one mask that merges two
    parts in one view can chain them); ``louvain`` finds communities in the graph of all pairs above
    ``min_edge_iou`` weighted by IoU, so a few bridging masks do not merge two well-supported groups,
    then re-unites communities it split without cause (:func:`_rejoin`).
    """
    first, second, iou = _mask_overlaps(e_mask, e_face, e_frac, mask_view, visible, area_w, n_masks, s.min_overlap)
    if s.association == "union_find":
        uf = _UnionFind(n_masks)
        for m, n in zip(first[iou > s.association_iou], second[iou > s.association_iou], strict=True):
            uf.union(int(m), int(n))
        _, seg = np.unique(uf.roots(), return_inverse=True)
        return seg.astype(np.int64)
    import networkx as nx
    from networkx.algorithms.community import louvain_communities

    graph = nx.Graph()
    graph.add_nodes_from(range(n_masks))
    keep = iou > s.min_edge_iou
    graph.add_weighted_edges_from(zip(first[keep].tolist(), second[keep].tolist(), iou[keep].tolist(), strict=True))
    seg = np.zeros(n_masks, dtype=np.int64)
    communities = louvain_communities(graph, weight="weight", resolution=s.resolution, seed=0)
    for k, nodes in enumerate(sorted(communities, key=min)):
        seg[list(nodes)] = k
    return _rejoin(seg, first, second, iou, mask_view, s.association_iou)


def _rejoin(seg: np.ndarray, first: np.ndarray, second: np.ndarray, iou: np.ndarray, mask_view: np.ndarray,
            threshold: float) -> np.ndarray:
    """Re-unite communities that modularity split although nothing tells them apart.

    Louvain cuts a ring of views around one part (masks of opposite views share no face) into arcs.
    Two communities are joined, strongest first, when the mean IoU of the mask pairs linking them exceeds
    ``threshold`` and no view has a mask in both (a view showing two masks says "two parts").
    """
    a, b = seg[first], seg[second]
    cross = a != b
    if not cross.any():
        return seg
    n = int(seg.max()) + 1
    lo, hi = np.minimum(a[cross], b[cross]), np.maximum(a[cross], b[cross])
    pair, inverse = np.unique(lo * n + hi, return_inverse=True)
    mean = np.bincount(inverse, weights=iou[cross]) / np.bincount(inverse)
    views = [set(mask_view[seg == k].tolist()) for k in range(n)]
    uf = _UnionFind(n)
    for p in np.argsort(-mean, kind="stable"):
        if mean[p] <= threshold:
            break
        i, j = uf.find(int(pair[p] // n)), uf.find(int(pair[p] % n))
        if i == j or views[i] & views[j]:
            continue
        uf.union(i, j)
        root = uf.find(i)
        views[root] = views[i] | views[j]
    _, out = np.unique(uf.roots()[seg], return_inverse=True)
    return out.astype(np.int64)


def _neighbour_votes(labels: np.ndarray, src: np.ndarray, dst: np.ndarray, weights: np.ndarray, which: np.ndarray):
    """Summed weight of each labelled neighbour's label, for the faces selected by ``which``.

    ``src, dst`` are directed face adjacency (both directions); returns, per selected face that has a
    labelled neighbour: face (N,), best label (N,), its weight (N,), and the weight of the face's own label.
    """
    sel = which[src] & (labels[dst] >= 0)
    s, lab, w = src[sel], labels[dst[sel]], weights[sel]
    empty = np.zeros(0, dtype=np.int64)
    if len(s) == 0:
        return empty, empty, np.zeros(0), np.zeros(0)
    k = int(labels.max()) + 1
    key, inverse = np.unique(s * k + lab, return_inverse=True)
    total = np.bincount(inverse, weights=w)
    face, label = key // k, key % k
    own = np.bincount(face, weights=np.where(label == labels[face], total, 0.0), minlength=len(labels))
    order = np.lexsort((label, -total, face))  # per face: heaviest first, ties to the lower label
    face, label, total = face[order], label[order], total[order]
    first = np.r_[True, face[1:] != face[:-1]]
    return face[first], label[first], total[first], own[face[first]]


def _fill_unseen(labels, adjacency, area_w, centroids) -> np.ndarray:
    """Unlabelled faces take the (area-weighted) majority of labelled neighbours, repeatedly; then nearest."""
    labels = labels.copy()
    if not (labels >= 0).any():
        return np.zeros_like(labels)
    src = np.concatenate([adjacency[:, 0], adjacency[:, 1]]) if len(adjacency) else np.zeros(0, np.int64)
    dst = np.concatenate([adjacency[:, 1], adjacency[:, 0]]) if len(adjacency) else np.zeros(0, np.int64)
    weights = area_w[dst] + 1e-12
    while (labels < 0).any():
        face, best, _, _ = _neighbour_votes(labels, src, dst, weights, labels < 0)
        if len(face) == 0:
            break
        labels[face] = best
    rest = labels < 0
    if rest.any():
        tree = cKDTree(centroids[~rest])
        _, idx = tree.query(centroids[rest])
        labels[rest] = labels[~rest][idx]
    return labels


def _majority_step(labels, confidence, adjacency, below: float):
    """One synchronous round: a low-confidence face whose neighbours mostly share another label takes it."""
    src = np.concatenate([adjacency[:, 0], adjacency[:, 1]])
    dst = np.concatenate([adjacency[:, 1], adjacency[:, 0]])
    degree = np.bincount(src, minlength=len(labels))
    face, best, count, own = _neighbour_votes(labels, src, dst, np.ones(len(src)), confidence < below)
    switch = (best != labels[face]) & (count >= 2) & (2 * count > degree[face]) & (count > own)
    out = labels.copy()
    out[face[switch]] = best[switch]
    return out, bool(switch.any())


def _dominant(labels: np.ndarray, component: np.ndarray, area_w: np.ndarray) -> np.ndarray:
    """For every label 0..max, the connected component holding most of its area (-1 for unused labels)."""
    n = int(labels.max()) + 1
    pair, inverse = np.unique(labels * (int(component.max()) + 1) + component, return_inverse=True)
    area = np.bincount(inverse, weights=area_w)
    seg, comp = pair // (int(component.max()) + 1), pair % (int(component.max()) + 1)
    out = np.full(n, -1, dtype=np.int64)
    best = np.zeros(n)
    for k in np.argsort(area):  # larger areas written last win
        out[seg[k]], best[seg[k]] = comp[k], area[k]
    return out


def _merge_convex(labels, adjacency, length, convex, min_fraction: float, dominant: np.ndarray) -> np.ndarray:
    """Unite neighbouring segments whose shared boundary is mostly (by length) sharp convex creases and
    that lie mostly on the same connected piece of the mesh.

    Part boundaries are concave (or flush); a convex rim between two segments means one part seen from
    two sides that no view showed together (the top and underside of a thin board).
    """
    if len(adjacency) == 0:
        return labels
    a, b = labels[adjacency[:, 0]], labels[adjacency[:, 1]]
    cross = a != b
    if not cross.any():
        return labels
    lo, hi = np.minimum(a[cross], b[cross]), np.maximum(a[cross], b[cross])
    n = int(labels.max()) + 1
    pair, inverse = np.unique(lo * n + hi, return_inverse=True)
    total = np.bincount(inverse, weights=length[cross])
    sharp = np.bincount(inverse, weights=length[cross] * convex[cross])
    uf = _UnionFind(n)
    for p in np.nonzero(sharp >= min_fraction * np.maximum(total, 1e-30))[0]:
        i, j = int(pair[p] // n), int(pair[p] % n)
        if dominant[i] == dominant[j]:
            uf.union(i, j)
    return uf.roots()[labels]


def _merge_convex_pieces(labels, vertices, faces, component, area_w, min_ratio: float) -> np.ndarray:
    """Give every closed, nearly convex connected piece one label: the one covering most of its area.

    A piece is closed when each of its edges (as vertex pairs) belongs to exactly two of its faces; it is
    nearly convex when the absolute signed volume of its (consistently wound) faces is at least ``min_ratio``
    of its convex hull's volume. Pieces holding a single label are left alone.
    """
    from scipy.spatial import ConvexHull, QhullError

    labels = labels.copy()
    order = np.argsort(component, kind="stable")
    bounds = np.flatnonzero(np.r_[True, np.diff(component[order]) != 0, True])
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        idx = order[start:stop]
        if len(idx) < 4 or len(np.unique(labels[idx])) < 2:
            continue
        f = faces[idx]
        edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
        _, counts = np.unique(edges, axis=0, return_counts=True)
        if not np.all(counts == 2):
            continue
        tri = vertices[f]
        volume = abs(float(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum()) / 6.0)
        try:
            hull = ConvexHull(vertices[np.unique(f)]).volume
        except (QhullError, ValueError):  # flat or degenerate piece
            continue
        if hull > 0 and volume >= min_ratio * hull:
            labels[idx] = int(np.argmax(np.bincount(labels[idx], weights=area_w[idx])))
    return labels


def _merge_small(labels, adjacency, area_w, min_area: float) -> np.ndarray:
    """Merge segments under ``min_area`` (area fraction) into the neighbour sharing most edges; repeat."""
    labels = labels.copy()
    if min_area <= 0 or len(adjacency) == 0:
        return labels
    while True:
        seg_area = np.bincount(labels, weights=area_w)
        small = [k for k in np.argsort(seg_area) if 0 < seg_area[k] < min_area]
        merged = False
        for k in small:
            a, b = labels[adjacency[:, 0]], labels[adjacency[:, 1]]
            cross = ((a == k) & (b != k)) | ((b == k) & (a != k))
            if not cross.any():
                continue
            other = np.where(a[cross] == k, b[cross], a[cross])
            labels[labels == k] = int(np.argmax(np.bincount(other)))
            merged = True
            break
        if not merged:
            return labels


def _relabel_by_area(labels, area_w) -> np.ndarray:
    """Renumber labels 0..K-1 by decreasing total area (ties by old label)."""
    uniq = np.unique(labels)
    area = np.array([area_w[labels == u].sum() for u in uniq])
    order = np.lexsort((uniq, -area))
    remap = np.zeros(int(uniq.max()) + 1, dtype=np.int64)
    remap[uniq[order]] = np.arange(len(uniq))
    return remap[labels]


# --------------------------------------------------------------------------------------------- pipeline


def segment_by_concave_edges(mesh: trimesh.Trimesh, *, angle_deg: float = 30.0, min_segment_area: float = 0.002,
                             orient: bool = True) -> SegmentationResult:
    """The render-free baseline: cut the mesh along sharp concave edges, take connected components.

    Separate pieces are separate segments; pieces are cut where their surface folds inwards by more
    than ``angle_deg`` (:func:`concave_edges`), the minima rule applied to the mesh itself. Segments under
    ``min_segment_area`` of the surface merge into the neighbour they share most edges with; labels are
    ``0..K-1`` by decreasing area. Every evaluation table has this row beside the view-based pipeline.

    Parameters
    ----------
    mesh : trimesh.Trimesh
    angle_deg : float
        Dihedral (degrees between face normals) above which a concave edge is cut.
    min_segment_area : float
        Fraction of the total surface area.
    orient : bool
        Make the winding consistent and outward first (:func:`tokenizers3d.orient.orient_outward`).

    Returns
    -------
    SegmentationResult
        ``method="mesh"``, ``n_views = n_masks = 0``, confidence 1 and ``seen`` True for every face.
    """
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64).reshape(-1, 3)
    n_faces = len(faces)
    if n_faces == 0:
        raise MeshInputError(None, "mesh has no faces to segment")
    if orient:
        faces = orient_outward(vertices, faces)
    adjacency = face_adjacency(vertices, faces)
    cut = concave_edges(vertices, faces, adjacency, angle=angle_deg)
    labels = _components_of(n_faces, adjacency[~cut])
    tri = vertices[faces]  # (F, 3, 3)
    areas = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    area_w = areas / areas.sum() if areas.sum() > 0 else np.full(n_faces, 1.0 / n_faces)
    labels = _relabel_by_area(_merge_small(labels, adjacency, area_w, min_segment_area), area_w)
    return SegmentationResult(labels=labels, confidence=np.ones(n_faces, dtype=np.float32),
                              n_segments=int(labels.max()) + 1, n_views=0, n_masks=0,
                              seen=np.ones(n_faces, dtype=bool), method="mesh")


class MeshSegmenter:
    """Render, generate masks, revote.

    Parameters
    ----------
    generator : MaskGenerator, optional
        Default :class:`~renderers.masks.GeometricMaskGenerator`.
    settings : SegmentSettings
    device : str or torch.device
        Render device.
    """

    def __init__(self, generator: MaskGenerator | None = None, settings: SegmentSettings | None = None, *,
                 device="cpu"):
        self.generator = generator or GeometricMaskGenerator()
        self.settings = settings or SegmentSettings()
        self.device = device

    def segment(self, mesh: trimesh.Trimesh, *, progress=None) -> SegmentationResult:
        """Labels for every face of ``mesh`` (any frame; it is normalized for rendering).

        ``progress(views_done, n_views)`` is called after the render (0) and after each view's masks; an exception
        it raises stops the segmentation (the app's Cancel).
        """
        out = MeshRenderer(self.settings.render, device=self.device).render(mesh)
        view_masks = []
        for v in range(out.n_views):
            if progress is not None:
                progress(v, out.n_views)
            view_masks.append(self.generator.generate(out.image(v), normals=out.normals[v], depth=out.depth[v],
                                                      points=out.points[v]))
        if progress is not None:
            progress(out.n_views, out.n_views)
        eyes = out.normalization.invert(out.rig.eyes)
        result = revote(mesh, out.pix_to_face, view_masks, eyes=eyes, settings=self.settings.revote)
        result.render = out
        result.view_masks = view_masks
        return result


METHODS = ("views", "mesh")
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 2048


GENERATORS = ("learned", "geometric")


def default_generator() -> str:
    """``"learned"`` when the trained part-mask checkpoint is present (:mod:`renderers.mask_model`), else
    ``"geometric"``."""
    from .mask_model import learned_available

    return "learned" if learned_available() else "geometric"


def check_segment_options(*, method: str = "views", views: int = 12, image_size: int = 256,
                          sam_checkpoint: str | Path | None = None, components: bool | None = None,
                          generator: str | None = None) -> None:
    """Raise :class:`~tokenizers3d.errors.ConfigError` (one line) for settings ``meshgen segment`` refuses.

    ``components=None`` means "not given"; ``--method mesh`` takes neither SAM nor a components choice (it
    always separates pieces).
    """
    if method not in METHODS:
        raise ConfigError(f"unknown --method {method!r}; expected {' or '.join(METHODS)}")
    if views < 1:
        raise ConfigError(f"--views must be at least 1, got {views}")
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ConfigError(f"--image-size must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE}, got {image_size}")
    if method == "mesh" and sam_checkpoint is not None:
        raise ConfigError("--sam-checkpoint needs --method views (--method mesh renders nothing)")
    if method == "mesh" and components is False:
        raise ConfigError("--no-components needs --method views (--method mesh always separates pieces)")
    if generator is not None:
        if generator not in GENERATORS:
            raise ConfigError(f"unknown --generator {generator!r}; expected {' or '.join(GENERATORS)}")
        if method == "mesh":
            raise ConfigError("--generator needs --method views (--method mesh renders nothing)")
        if sam_checkpoint is not None:
            raise ConfigError("--generator and --sam-checkpoint exclude each other (SAM is the generator then)")


def segment_mesh_file(mesh_path: str | Path, out_path: str | Path, *, views: int = 12,
                      sam_checkpoint: str | Path | None = None, sam_model_type: str = "vit_b", image_size: int = 256,
                      seed: int = 0, device: str = "cpu", preview: bool = True,
                      max_faces: int | None = None, progress=None, method: str = "views",
                      components: bool = True, generator: str | None = None) -> SegmentationResult:
    """Segment a mesh file; write the labelled mesh, the labels and a preview, atomically and together.

    Parameters
    ----------
    mesh_path : str or Path
        Any mesh :func:`tokenizers3d.io.load_mesh` reads (it is cleaned; labels refer to the cleaned faces,
        which is the mesh written to ``out_path``).
    out_path : str or Path
        Output mesh, normally ``.ply`` (per-face colours and an integer ``label`` face property). Beside
        it: ``<stem>.npy`` with the (F,) int64 labels and ``<stem>.png`` with a coloured preview.
    views : int
        Rendered views (Fibonacci sphere).
    sam_checkpoint : str or Path, optional
        SAM weights (``.pth`` or ``.safetensors``); without it ``generator`` makes the masks.
    sam_model_type : str
        ``vit_b``, ``vit_l`` or ``vit_h``.
    image_size : int
        Render size per view.
    seed : int
        Seeds torch and the label colours (SAM's sampling is deterministic otherwise).
    device : str
        Render (and SAM) device.
    preview : bool
        Write the PNG preview.
    max_faces : int, optional
        Refuse meshes with more faces (default :data:`tokenizers3d.io.MAX_MESH_FACES`).
    progress : callable, optional
        ``progress(views_done, n_views)`` (see :meth:`MeshSegmenter.segment`); nothing is written if it raises.
    method : str
        ``"views"`` (render, masks, revote) or ``"mesh"`` (:func:`segment_by_concave_edges`; ``views``,
        ``image_size`` and SAM do not apply).
    components : bool
        ``views``: split masks along the mesh's connected pieces (:attr:`RevoteSettings.split_components`).
    generator : str, optional
        ``views`` without SAM: ``"learned"`` (the trained part-mask model) or ``"geometric"``; default
        :func:`default_generator`.

    The files are written even when no view produced a mask (``result.no_masks``: one segment); the
    ``meshgen segment`` command then warns and exits with code 3.

    Raises
    ------
    ConfigError
        Unknown method, fewer than one view, image size outside 32-2048, SAM with ``method="mesh"``.
    MeshInputError
        Unreadable mesh, missing or mismatched SAM checkpoint, unsupported output suffix.
    MeshOutputError
        An output is the input, a directory, or cannot be written (checked before the work where possible);
        then none of the three files is written.
    """
    import torch

    from .preview import preview_image, write_png

    check_segment_options(method=method, views=views, image_size=image_size, sam_checkpoint=sam_checkpoint,
                          components=None if components else False, generator=generator)
    out_path = Path(out_path)
    check_output_path(out_path)  # a directory is named as such, not as a wrong suffix
    if out_path.suffix.lower() not in (".ply", ".obj", ".glb", ".off", ".stl"):
        raise MeshInputError(out_path, "output must be a mesh file (.ply keeps the labels as a face property)")
    outputs = [out_path, out_path.with_suffix(".npy")] + ([out_path.with_suffix(".png")] if preview else [])
    for path in outputs:
        refuse_overwrite(path, mesh_path, sam_checkpoint)
        check_output_path(path)
    torch.manual_seed(seed)
    mesh = load_mesh(mesh_path, max_faces=max_faces)  # None: the documented default limit
    if method == "mesh":
        result = segment_by_concave_edges(mesh)
    else:
        if sam_checkpoint is not None:
            from .sam import SamMaskGenerator

            mask_generator: MaskGenerator = SamMaskGenerator.from_checkpoint(sam_checkpoint,
                                                                             model_type=sam_model_type, device=device)
        elif (generator or default_generator()) == "learned":
            from .mask_model import LearnedMaskGenerator

            mask_generator = LearnedMaskGenerator.from_pretrained(device=device, seed=seed)
        else:
            mask_generator = GeometricMaskGenerator()
        settings = SegmentSettings(render=RenderSettings(n_views=views, image_size=image_size),
                                   revote=RevoteSettings(split_components=components))
        result = MeshSegmenter(mask_generator, settings, device=device).segment(mesh, progress=progress)
    colors = label_colors(result.labels, seed=seed)
    data = mesh_bytes(mesh, out_path.suffix, face_labels=result.labels, face_colors=colors, path=out_path)
    image = preview_image(mesh, face_colors=colors, device=device) if preview else None
    with atomic_paths(*outputs) as tmps:  # the mesh, its labels and its preview: all three or none
        tmps[0].write_bytes(data)
        with open(tmps[1], "wb") as fh:
            np.save(fh, result.labels.astype(np.int64))
        if image is not None:
            write_png(tmps[2], image)
    return result
