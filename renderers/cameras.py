"""Deterministic camera placement on a sphere around a normalized mesh.

Conventions
-----------
* The mesh is *normalized* (``tokenizers3d.mesh`` conventions): bounding box centred at the origin,
  longest side 1, so it lies in ``[-0.5, 0.5]^3``. Every camera looks at the origin.
* World up is ``+z`` by default (``up`` argument); a camera looking straight along ``up`` uses ``+y``
  as its image up instead, so poles are well defined.
* Cameras are PyTorch3D ``FoVPerspectiveCameras``: world-to-view is ``X_view = X_world R + T`` (row
  vectors), the camera looks along its ``+z`` axis, ``+x`` points to the image left and ``+y`` up;
  ``fov`` is the full vertical field of view in degrees.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))
UNIT_CUBE_RADIUS = math.sqrt(3.0) / 2.0  # radius of the sphere around [-0.5, 0.5]^3


def fibonacci_directions(n: int) -> np.ndarray:
    """``n`` nearly evenly spread unit vectors (Fibonacci sphere), the same for the same ``n``.

    Returns
    -------
    directions : (n, 3) float64
        Point ``i`` has ``z = 1 - (2 i + 1) / n`` and azimuth ``i`` times the golden angle, so the
        first points are near ``+z`` and the last near ``-z``; no point lies exactly on a pole.
    """
    if n < 1:
        raise ValueError(f"need at least one view, got {n}")
    i = np.arange(n, dtype=np.float64)
    z = 1.0 - (2.0 * i + 1.0) / n
    r = np.sqrt(np.clip(1.0 - z * z, 0.0, 1.0))
    phi = i * GOLDEN_ANGLE + math.pi / 4.0
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def ring_directions(n: int, elevations: Sequence[float], *, azimuth_offset: float = 45.0) -> np.ndarray:
    """``n`` unit vectors on rings at the given elevations (degrees above the ``xy`` plane).

    Views are dealt to the rings in turn (ring ``k`` gets views ``k, k + R, ...``); on each ring they are
    evenly spaced in azimuth, starting at ``azimuth_offset`` degrees, rings shifted by half a step.

    Returns
    -------
    directions : (n, 3) float64, ``+z`` up.
    """
    if n < 1:
        raise ValueError(f"need at least one view, got {n}")
    elevations = [float(e) for e in elevations]
    if not elevations:
        raise ValueError("elevations must not be empty")
    out = np.zeros((n, 3))
    n_rings = len(elevations)
    for k, elev in enumerate(elevations):
        idx = np.arange(k, n, n_rings)
        if len(idx) == 0:
            continue
        az = np.deg2rad(azimuth_offset + (np.arange(len(idx)) + 0.5 * (k % 2)) * 360.0 / len(idx))
        el = np.deg2rad(elev)
        out[idx] = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.full(len(idx), np.sin(el))], 1)
    return out


def view_directions(n_views: int, elevations: Sequence[float] | None = None,
                    up: Sequence[float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """Unit directions from the origin to each camera, (n_views, 3) float64.

    Fibonacci sphere when ``elevations`` is ``None``, otherwise rings (:func:`ring_directions`); both
    are built with ``+z`` up and rotated so that their ``+z`` maps to ``up``.
    """
    dirs = fibonacci_directions(n_views) if elevations is None else ring_directions(n_views, elevations)
    return dirs @ _z_to(np.asarray(up, dtype=np.float64)).T


def _z_to(up: np.ndarray) -> np.ndarray:
    """Rotation (3, 3) taking ``+z`` to the unit vector ``up`` (identity for ``+z``)."""
    up = up / np.linalg.norm(up)
    z = np.array([0.0, 0.0, 1.0])
    c = float(z @ up)
    if c > 1.0 - 1e-12:
        return np.eye(3)
    if c < -1.0 + 1e-12:
        return np.diag([1.0, -1.0, -1.0])
    v = np.cross(z, up)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)


def framing_distance(fov: float, radius: float = UNIT_CUBE_RADIUS, *, margin: float = 1.05) -> float:
    """Camera distance at which a sphere of ``radius`` around the origin fits in a ``fov``-degree view.

    ``radius / sin(fov / 2)`` times ``margin`` (the sphere's silhouette cone touches the frame edges).
    """
    if not 0.0 < fov < 180.0:
        raise ValueError(f"fov must be in (0, 180) degrees, got {fov}")
    return float(margin * radius / math.sin(math.radians(fov) / 2.0))


def look_at_rotations(eyes: np.ndarray, up: Sequence[float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """PyTorch3D world-to-view rotations for cameras at ``eyes`` looking at the origin.

    Parameters
    ----------
    eyes : (V, 3) float
        Camera centres in world space (not at the origin).
    up : (3,) float
        World up; views (nearly) parallel to it use the world axis least aligned with ``up`` instead.

    Returns
    -------
    R : (V, 3, 3) float64
        Columns are the camera's ``x`` (image left), ``y`` (image up) and ``z`` (forward) axes in world
        coordinates, so that ``X_view = X_world R + T`` with ``T = -eye R``.
    """
    eyes = np.asarray(eyes, dtype=np.float64).reshape(-1, 3)
    up = np.asarray(up, dtype=np.float64)
    up = up / np.linalg.norm(up)
    fallback = np.eye(3)[int(np.argmin(np.abs(up)))]
    fallback = fallback - (fallback @ up) * up
    fallback /= np.linalg.norm(fallback)
    forward = -eyes / np.linalg.norm(eyes, axis=1, keepdims=True)
    ups = np.where((np.abs(forward @ up) > 0.999)[:, None], fallback[None], up[None])
    x = np.cross(ups, forward)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.cross(forward, x)
    return np.stack([x, y, forward], axis=2)


@dataclass(frozen=True)
class ViewRig:
    """Camera centres and orientations of a set of views around the origin.

    Attributes
    ----------
    eyes : (V, 3) float64
        Camera centres in world (normalized-mesh) space.
    R : (V, 3, 3) float64
        World-to-view rotations (see :func:`look_at_rotations`).
    fov : float
        Vertical field of view, degrees.
    """

    eyes: np.ndarray
    R: np.ndarray
    fov: float

    @property
    def n_views(self) -> int:
        return int(len(self.eyes))

    @property
    def T(self) -> np.ndarray:
        """World-to-view translations (V, 3): ``T = -eye R``."""
        return -np.einsum("vi,vij->vj", self.eyes, self.R)

    @property
    def forward(self) -> np.ndarray:
        """Unit viewing directions (V, 3), from each camera towards the origin."""
        return self.R[:, :, 2]

    def to_pytorch3d(self, device: str | torch.device = "cpu"):
        """The same views as ``pytorch3d.renderer.FoVPerspectiveCameras`` on ``device``."""
        from pytorch3d.renderer import FoVPerspectiveCameras

        return FoVPerspectiveCameras(
            R=torch.as_tensor(self.R, dtype=torch.float32, device=device),
            T=torch.as_tensor(self.T, dtype=torch.float32, device=device),
            fov=self.fov, znear=0.01, zfar=100.0, device=device,
        )


def sphere_rig(n_views: int, *, distance: float | None = None, elevations: Sequence[float] | None = None,
               fov: float = 40.0, up: Sequence[float] = (0.0, 0.0, 1.0), radius: float = UNIT_CUBE_RADIUS) -> ViewRig:
    """``n_views`` cameras on a sphere around the origin, all looking at it.

    Parameters
    ----------
    n_views : int
    distance : float, optional
        Sphere radius; default :func:`framing_distance` of ``fov`` and ``radius`` (frames the unit cube).
    elevations : sequence of float, optional
        Ring elevations in degrees (:func:`ring_directions`); default a Fibonacci sphere.
    fov : float
        Vertical field of view, degrees.
    up : (3,) float
        World up axis.
    radius : float
        Radius of the sphere around the origin that must stay in frame when ``distance`` is not given.
    """
    d = framing_distance(fov, radius) if distance is None else float(distance)
    if d <= 0:
        raise ValueError(f"distance must be positive, got {distance}")
    eyes = d * view_directions(n_views, elevations, up)
    return ViewRig(eyes=eyes, R=look_at_rotations(eyes, up), fov=float(fov))


def rig_from_eyes(eyes: np.ndarray, *, fov: float = 40.0, up: Sequence[float] = (0.0, 0.0, 1.0)) -> ViewRig:
    """Cameras at explicit centres ``eyes`` (V, 3), all looking at the origin."""
    eyes = np.asarray(eyes, dtype=np.float64).reshape(-1, 3)
    if np.any(np.linalg.norm(eyes, axis=1) < 1e-9):
        raise ValueError("a camera cannot sit at the origin it looks at")
    return ViewRig(eyes=eyes, R=look_at_rotations(eyes, up), fov=float(fov))
