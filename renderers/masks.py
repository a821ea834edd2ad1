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
        Neighbouring pixels whose normals differ by more than this (degrees) lie on a crease; it is cut
        unless convex.
    cut_convex : bool
        Cut convex creases too (regions become smooth patches rather than parts).
    convex_tolerance : float
        A crease is convex when neither point lies in front of the other's tangent plane by more than
        this fraction of their distance, and one lies clearly (by more than it) behind. A pair straddling
        the crease line so obliquely that both are nearly on both planes is ambiguous and cut; isolated
        cuts along a convex edge do not split a region.
    gap_ratio : float
        Depth gap test: a point in front of its neighbour's tangent plane by more than this fraction of
        their distance is across an occluding contour, unless a shallow concave crease inside a part could
        explain it (at most ``1.5 sin`` of the angle between the normals times the distance, and at most
        ``jump_footprints`` pixel footprints).
    jump_footprints : float
        See ``gap_ratio``; the footprint (pixel size at the point's depth) is estimated from the maps.
    max_step_footprints : float
        Neighbouring pixels whose surface points are farther apart than this many footprints are across
        an occluding contour, unless they lie on one plane seen nearly edge-on.
    relative_depth_jump : float
        Without a points map: a depth change above this fraction of the depth is a discontinuity.
    min_region_pixels : int
        Smaller regions are dropped (their pixels vote for nothing).
    full_score_pixels : int
        Regions at least this big get the full size factor of the score.
    """

    crease_angle: float = 40.0
    cut_convex: bool = False
    convex_tolerance: float = 0.05
    gap_ratio: float = 0.35
    jump_footprints: float = 4.0
    max_step_footprints: float = 12.0
    relative_depth_jump: float = 0.03
    min_region_pixels: int = 12
    full_score_pixels: int = 400


class GeometricMaskGenerator(MaskGenerator):
    """Regions between concave creases and occluding contours; needs no weights.

    Neighbouring pixels ``a, b`` (4-neighbourhood) with surface points ``P_a, P_b`` and camera-facing
    normals ``n_a, n_b`` stay linked unless

    * one is background;
    * they lie on a crease (normals more than ``crease_angle`` apart) that is not convex: each point must
      lie on or behind the other's tangent plane, ``n_a . (P_b - P_a) <= 0`` and ``n_b . (P_a - P_b) <= 0``
      (up to ``convex_tolerance``). A concave crease breaks both, a pixel pair across an occluding contour
      (the side of a table leg seen against the underside of the top right where they touch, with no
      depth gap to see) breaks at least one;
    * one point lies clearly in front of the other's tangent plane (``gap_ratio``): a depth gap between
      surfaces that face the same way, e.g. a leg set back a few millimetres from the seat's edge;
    * their surface points are many pixel footprints apart (``max_step_footprints``) and not on one
      plane seen edge-on.

    Regions are the connected components of the links (``scipy.sparse.csgraph``), so a cut along a
    one-pixel-wide line is exact. Without a points map the creases are cut whatever their sign and depth
    jumps are relative depth changes.

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
        fg, keep_right, keep_down = self.links(normals=normals, depth=depth, points=points)
        return _components(fg, keep_right, keep_down)

    def links(self, *, normals: np.ndarray | None = None, depth: np.ndarray | None = None,
              points: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Foreground (H, W) and which links to the right (H, W-1) and down (H-1, W) neighbour are kept."""
        if normals is None and depth is None:
            raise ValueError("GeometricMaskGenerator needs a normal or depth map (render with renderers.render)")
        s = self.settings
        if depth is not None:
            fg = np.asarray(depth) > 0
        else:
            fg = np.linalg.norm(normals, axis=-1) > 0.5
        keep_right = fg[:, :-1] & fg[:, 1:]
        keep_down = fg[:-1, :] & fg[1:, :]
        n = None if normals is None else np.asarray(normals, dtype=np.float64)
        p = None if points is None else np.asarray(points, dtype=np.float64)
        d = None if depth is None else np.asarray(depth, dtype=np.float64)
        footprint = None
        if p is not None and d is not None:
            footprint = _footprint_per_depth(p, d, fg) * d
        for keep, a, b in ((keep_right, np.s_[:, :-1], np.s_[:, 1:]), (keep_down, np.s_[:-1, :], np.s_[1:, :])):
            if n is not None and p is not None:
                keep &= ~self._cut(n[a], n[b], p[a], p[b],
                                   None if footprint is None else np.maximum(footprint[a], footprint[b]))
            elif n is not None:
                keep &= np.einsum("...i,...i->...", n[a], n[b]) >= math.cos(math.radians(s.crease_angle))
            if p is None and d is not None:
                keep &= np.abs(d[b] - d[a]) <= s.relative_depth_jump * np.minimum(d[a], d[b])
        return fg, keep_right, keep_down

    def _cut(self, n_a: np.ndarray, n_b: np.ndarray, p_a: np.ndarray, p_b: np.ndarray,
             footprint: np.ndarray | None = None) -> np.ndarray:
        """Which neighbour links (the maps' shape minus the last axis) to cut; see the class docstring."""
        s = self.settings
        delta = p_b - p_a
        dist = np.linalg.norm(delta, axis=-1)
        ahead_b = np.einsum("...i,...i->...", n_a, delta)  # how far P_b is in front of a's tangent plane
        ahead_a = -np.einsum("...i,...i->...", n_b, delta)
        front = np.maximum(ahead_a, ahead_b)
        cos = np.einsum("...i,...i->...", n_a, n_b)
        crease = cos < math.cos(math.radians(s.crease_angle))
        if s.cut_convex:
            cut = crease
        else:
            tol = s.convex_tolerance * dist + 1e-9
            convex = (front <= tol) & (np.minimum(ahead_a, ahead_b) < -tol)  # both behind, one clearly
            cut = crease & ~convex
        sin = np.sqrt(np.clip(1.0 - cos * cos, 0.0, 1.0))
        gap = front > s.gap_ratio * dist + 1e-9
        explained = front <= 1.5 * sin * dist  # a shallow concave crease could do this
        if footprint is not None:
            explained &= front <= s.jump_footprints * footprint  # ... but not across several pixel footprints
            # neighbours far apart in 3D, not on one plane seen edge-on: an occluding contour
            far = dist > s.max_step_footprints * footprint
            cut |= far & (crease | (np.abs(front) > s.convex_tolerance * dist))
        return cut | (gap & ~explained)


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


# --------------------------------------------------------------------------------------------- registry

def _learned(**kwargs) -> MaskGenerator:
    """The trained part-mask model (:mod:`renderers.mask_model`); ``checkpoint=DIR`` picks other weights."""
    from .mask_model import LearnedMaskGenerator

    return LearnedMaskGenerator.from_pretrained(kwargs.pop("checkpoint", None), **kwargs)


_GENERATORS: dict = {"geometric": GeometricMaskGenerator, "learned": _learned}


def register_mask_generator(name: str, factory) -> None:
    """Make ``factory(**kwargs) -> MaskGenerator`` available as :func:`get_mask_generator` ``(name)``.

    The hook for learned generators (the evaluation's ``--generator NAME``): a trained mask model registers
    a factory that loads its weights.
    """
    _GENERATORS[str(name)] = factory


def list_mask_generators() -> list[str]:
    """Names :func:`get_mask_generator` knows."""
    return sorted(_GENERATORS)


def get_mask_generator(name: str, **kwargs) -> MaskGenerator:
    """A mask generator by name (``"geometric"``, or one added with :func:`register_mask_generator`)."""
    try:
        factory = _GENERATORS[name]
    except KeyError:
        raise KeyError(f"unknown mask generator {name!r}; choose from {', '.join(list_mask_generators())}") from None
    return factory(**kwargs)
