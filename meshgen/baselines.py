"""Non-learned point-cloud-to-mesh baselines: what every generated mesh is judged beside.

* :func:`poisson_baseline`: Open3D screened Poisson reconstruction, quadric-decimated to a face budget;
* :func:`bbox_baseline`: the 12-triangle axis-aligned bounding box of the points;
* :func:`hull_baseline`: the convex hull of the points, quadric-decimated to at most a face budget.

Each returns a canonical mesh (:func:`tokenizers3d.mesh.canonicalize`) in the points' frame, or ``None``
when no non-degenerate face is left. Used by ``scripts/eval_generator.py`` (the evaluation tables) and by
the web app's Generate tab (Poisson + decimation beside the model's output, at its face count).
"""

from __future__ import annotations

import numpy as np
import trimesh

from tokenizers3d.errors import MeshInputError
from tokenizers3d.io import PointCloud
from tokenizers3d.mesh import canonicalize


def _as_mesh(v: np.ndarray, f: np.ndarray) -> trimesh.Trimesh | None:
    """Canonical mesh, or None when no non-degenerate face is left."""
    if len(f) == 0:
        return None
    try:
        return canonicalize(trimesh.Trimesh(np.asarray(v, dtype=np.float64), np.asarray(f), process=False))
    except MeshInputError:
        return None


def decimate(mesh: trimesh.Trimesh, n_faces: int) -> trimesh.Trimesh | None:
    """Open3D quadric decimation of ``mesh`` to at most ``max(4, n_faces)`` faces (unchanged if already there)."""
    import open3d as o3d

    target = max(4, int(n_faces))
    if len(mesh.faces) <= target:
        return mesh
    o3 = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(np.asarray(mesh.vertices, dtype=np.float64)),
                                   o3d.utility.Vector3iVector(np.asarray(mesh.faces, dtype=np.int32)))
    out, ask = None, target
    while ask >= 4:  # quadric decimation can stop a few faces above its target: ask for fewer until it fits
        dec = o3.simplify_quadric_decimation(target_number_of_triangles=ask)
        out = _as_mesh(np.asarray(dec.vertices), np.asarray(dec.triangles))
        if out is None or len(out.faces) <= target:
            break
        ask -= max(1, len(out.faces) - target)
    return out


def poisson_baseline(cloud: PointCloud, n_faces: int, *, depth: int = 7) -> trimesh.Trimesh | None:
    """Screened Poisson surface reconstruction (Open3D) decimated by quadric error to ``n_faces``.

    Parameters
    ----------
    cloud : PointCloud
        ``points (N, 3)`` with unit ``normals (N, 3)`` (oriented: Poisson needs them).
    n_faces : int
        Face budget (at least 4 is asked for).
    depth : int
        Octree depth of the reconstruction.
    """
    import open3d as o3d

    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(cloud.points.astype(np.float64)))
    pcd.normals = o3d.utility.Vector3dVector(cloud.normals.astype(np.float64))
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        # one thread: Open3D's parallel reconstruction differs from run to run (the same points gave Chamfer
        # 0.0167, 0.0149 and 0.0150 in one process); on one thread it is the same mesh every time
        mesh, density = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(pcd, depth=depth, n_threads=1)
    density = np.asarray(density)
    mesh.remove_vertices_by_mask(density < np.quantile(density, 0.02))  # trim the low-density skirt
    mesh = mesh.simplify_quadric_decimation(target_number_of_triangles=max(4, int(n_faces)))
    return _as_mesh(np.asarray(mesh.vertices), np.asarray(mesh.triangles))


def bbox_baseline(points: np.ndarray) -> trimesh.Trimesh | None:
    """The 12-triangle axis-aligned bounding box of ``points`` (n, 3).

    Points flat along one axis give a two-sided rectangle (4 faces after clean-up); points that vary along
    fewer than two axes give None.
    """
    points = np.asarray(points, dtype=np.float64)
    box = trimesh.creation.box(bounds=np.stack([points.min(axis=0), points.max(axis=0)]))
    return _as_mesh(box.vertices, box.faces)


def hull_baseline(points: np.ndarray, n_faces: int) -> trimesh.Trimesh | None:
    """Convex hull of ``points`` (n, 3), quadric-decimated to at most ``max(4, n_faces)`` faces."""
    from scipy.spatial import QhullError

    try:
        with np.errstate(invalid="ignore", divide="ignore"):  # flat hulls: trimesh divides by a zero volume
            hull = trimesh.convex.convex_hull(np.asarray(points, dtype=np.float64))
    except QhullError:  # degenerate input qhull cannot triangulate
        return None
    hull = _as_mesh(hull.vertices, hull.faces)
    return None if hull is None else decimate(hull, n_faces)
