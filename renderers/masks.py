"""2D mask generators: the per-view half of multi-view mesh segmentation.

A :class:`MaskGenerator` turns one rendered view into a list of :class:`Mask` (a boolean image and a
score); :class:`~renderers.segment.MeshSegmenter` lifts them to faces and revotes across views.
Generators get the shaded image and, when they can use them, the geometry maps the renderer produces
(:class:`~renderers.render.RenderOutput`): normals, depth and surface points, all per pixel.

:class:`GeometricMaskGenerator` (the default, no weights) cuts the visible surface into regions along
*concave creases* and *depth discontinuities* and returns the connected pieces. Parts of an object
mostly meet at concave creases (a table leg meets the underside of the top, a handle meets a mug), while
creases inside one part are mostly convex (the edges of a box), so cutting only concave creases finds
parts rather than faces (the "minima rule" of part perception). Depth jumps separate a part from what
lies behind it. Parts that touch flush and coplanar show neither and merge in that view; other views
usually separate them, and the revoting weighs the views.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


@dataclass
class Mask:
    """One region of one view.

    Attributes
    ----------
    mask : (H, W) bool
    score : float
        Confidence in [0, 1]; revoting weighs the mask's votes by it.
    """

    mask: np.ndarray
    score: float = 1.0

    @property
    def area(self) -> int:
        return int(self.mask.sum())


class MaskGenerator(ABC):
    """Interface: one view in, masks out.

    Subclasses implement :meth:`generate`. Masks may overlap (e.g. SAM's nested masks); the segmenter
    flattens each view's masks into a partition before revoting (smaller masks on top).
    """

    @abstractmethod
    def generate(self, image: np.ndarray, *, normals: np.ndarray | None = None, depth: np.ndarray | None = None,
                 points: np.ndarray | None = None) -> list[Mask]:
        """Masks of one view.

        Parameters
        ----------
        image : (H, W, 3) uint8, or float in [0, 1]
            Shaded RGB view.
        normals : (H, W, 3) float, optional
            Unit surface normals facing the camera, 0 on background.
        depth : (H, W) float, optional
            Depth along the optical axis, <= 0 on background.
        points : (H, W, 3) float, optional
            Surface position of each pixel, in the same frame as ``normals``.

        Returns
        -------
        list of Mask
        """


@dataclass(frozen=True)
class GeometricSettings:
    """Settings of :class:`GeometricMaskGenerator`.

    Attributes
    ----------
    crease_angle : float
        Neighbouring pixels whose normals differ by more than this (degrees) lie on a crease.
    cut_convex : bool
        Cut convex creases too (regions become smooth patches rather than parts).
    depth_jump : float
        A neighbour farther than this many pixel footprints from a pixel's tangent plane (and the pixel
        from the neighbour's) is across a depth discontinuity.
    relative_depth_jump : float
        Without a points map: a depth change above this fraction of the depth is a discontinuity.
    min_region_pixels : int
        Smaller regions are dropped (their pixels vote for nothing).
    full_score_pixels : int
        Regions at least this big get the full size factor of the score.
    """

    crease_angle: float = 30.0
    cut_convex: bool = False
    depth_jump: float = 3.0
    relative_depth_jump: float = 0.03
    min_region_pixels: int = 12
    full_score_pixels: int = 400


class GeometricMaskGenerator(MaskGenerator):
    """Regions between concave creases and depth discontinuities; needs no weights.

    Parameters
    ----------
    settings : GeometricSettings
    """

    def __init__(self, settings: GeometricSettings | None = None):
        self.settings = settings or GeometricSettings()

    def generate(self, image: np.ndarray, *, normals: np.ndarray | None = None, depth: np.ndarray | None = None,
                 points: np.ndarray | None = None) -> list[Mask]:
        labels = self.region_labels(normals=normals, depth=depth, points=points)
        return regions_to_masks(labels, min_pixels=self.settings.min_region_pixels,
                                full_score_pixels=self.settings.full_score_pixels)

    def region_labels(self, *, normals: np.ndarray | None = None, depth: np.ndarray | None = None,
                      points: np.ndarray | None = None) -> np.ndarray:
        """Region id per pixel (H, W) int64, -1 on background, before small regions are dropped."""
        if normals is None and depth is None:
            raise ValueError("GeometricMaskGenerator needs a normal or depth map (render with renderers.render)")
        s = self.settings
        if depth is not None:
            fg = np.asarray(depth) > 0
        else:
            fg = np.linalg.norm(normals, axis=-1) > 0.5
        h, w = fg.shape
        keep_right = fg[:, :-1] & fg[:, 1:]
        keep_down = fg[:-1, :] & fg[1:, :]
        if normals is not None:
            n = np.asarray(normals, dtype=np.float64)
            cos_limit = math.cos(math.radians(s.crease_angle))
            p = None if points is None else np.asarray(points, dtype=np.float64)
            keep_right &= ~_crease(n[:, :-1], n[:, 1:], None if p is None else (p[:, :-1], p[:, 1:]), cos_limit,
                                   s.cut_convex)
            keep_down &= ~_crease(n[:-1, :], n[1:, :], None if p is None else (p[:-1, :], p[1:, :]), cos_limit,
                                  s.cut_convex)
        if points is not None and normals is not None and depth is not None:
            p, d = np.asarray(points, dtype=np.float64), np.asarray(depth, dtype=np.float64)
            k = _footprint_per_depth(p, d, fg)
            keep_right &= ~_plane_jump(n[:, :-1], n[:, 1:], p[:, :-1], p[:, 1:], d[:, :-1], d[:, 1:], k, s.depth_jump)
            keep_down &= ~_plane_jump(n[:-1, :], n[1:, :], p[:-1, :], p[1:, :], d[:-1, :], d[1:, :], k, s.depth_jump)
        elif depth is not None:
            d = np.asarray(depth, dtype=np.float64)
            keep_right &= np.abs(d[:, 1:] - d[:, :-1]) <= s.relative_depth_jump * np.minimum(d[:, 1:], d[:, :-1])
            keep_down &= np.abs(d[1:, :] - d[:-1, :]) <= s.relative_depth_jump * np.minimum(d[1:, :], d[:-1, :])
        return _components(fg, keep_right, keep_down)


def _crease(n_a: np.ndarray, n_b: np.ndarray, pts, cos_limit: float, cut_convex: bool) -> np.ndarray:
    """Pixel pairs on a crease to cut: normals apart by more than the limit and (unless ``cut_convex``) concave.

    Concave means the normals turn towards each other: ``(n_b - n_a) . (P_b - P_a) < 0``.
    """
    crease = np.einsum("...i,...i->...", n_a, n_b) < cos_limit
    if pts is None or cut_convex:
        return crease
    p_a, p_b = pts
    return crease & (np.einsum("...i,...i->...", n_b - n_a, p_b - p_a) < 0)


def _footprint_per_depth(points: np.ndarray, depth: np.ndarray, fg: np.ndarray) -> float:
    """Pixel footprint per unit depth (``2 tan(fov / 2) / H`` for the renderer's cameras), from the maps.

    Neighbouring rays are at least one footprint apart, reached on surfaces facing the camera, so a low
    percentile of ``|P(x + 1) - P(x)| / depth`` estimates it without knowing the camera.
    """
    both = fg[:, :-1] & fg[:, 1:]
    if not both.any():
        return 0.0
    step = np.linalg.norm(points[:, 1:] - points[:, :-1], axis=-1)[both]
    return float(np.percentile(step / np.maximum(depth[:, :-1][both], 1e-9), 10))


def _plane_jump(n_a, n_b, p_a, p_b, d_a, d_b, k: float, limit: float) -> np.ndarray:
    """Pixel pairs across a depth discontinuity: each point is off the other's tangent plane by > limit footprints."""
    delta = p_b - p_a
    off = np.minimum(np.abs(np.einsum("...i,...i->...", n_a, delta)), np.abs(np.einsum("...i,...i->...", n_b, delta)))
    return off > limit * k * np.maximum(d_a, d_b)


def _components(fg: np.ndarray, keep_right: np.ndarray, keep_down: np.ndarray) -> np.ndarray:
    """Connected components of the pixel grid over the kept neighbour links; (H, W) int64, -1 on background."""
    h, w = fg.shape
    idx = np.arange(h * w).reshape(h, w)
    rows = np.concatenate([idx[:, :-1][keep_right], idx[:-1, :][keep_down]])
    cols = np.concatenate([idx[:, 1:][keep_right], idx[1:, :][keep_down]])
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(h * w, h * w))
    _, comp = connected_components(graph, directed=False)
    labels = np.full(h * w, -1, dtype=np.int64)
    flat_fg = fg.reshape(-1)
    _, labels[flat_fg] = np.unique(comp[flat_fg], return_inverse=True)
    return labels.reshape(h, w)


def regions_to_masks(labels: np.ndarray, *, min_pixels: int = 12, full_score_pixels: int = 400) -> list[Mask]:
    """One :class:`Mask` per region id >= 0 of ``labels`` (H, W) with at least ``min_pixels`` pixels.

    The score is ``size_factor * (0.5 + 0.5 * compactness)``: ``size_factor = min(1, sqrt(n / full_score_pixels))``
    and ``compactness = min(1, 4 pi n / perimeter^2)`` (perimeter in pixel edges), so big, round regions
    score near 1 and slivers low.
    """
    labels = np.asarray(labels)
    if labels.max(initial=-1) < 0:
        return []
    flat = labels.reshape(-1)
    fg = flat >= 0
    sizes = np.bincount(flat[fg])
    pad = np.pad(labels, 1, constant_values=-1)
    perimeter = np.zeros(len(sizes))
    for a, b in ((pad[1:-1, 1:-1], pad[1:-1, 2:]), (pad[1:-1, 1:-1], pad[2:, 1:-1]),
                 (pad[1:-1, 1:-1], pad[1:-1, :-2]), (pad[1:-1, 1:-1], pad[:-2, 1:-1])):
        edge = (a >= 0) & (a != b)
        perimeter += np.bincount(a[edge], minlength=len(sizes))
    masks = []
    for region in np.nonzero(sizes >= min_pixels)[0]:
        n = float(sizes[region])
        compact = min(1.0, 4.0 * math.pi * n / max(perimeter[region], 1.0) ** 2)
        score = min(1.0, math.sqrt(n / full_score_pixels)) * (0.5 + 0.5 * compact)
        masks.append(Mask(mask=labels == region, score=float(score)))
    return masks
