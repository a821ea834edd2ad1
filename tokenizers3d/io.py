"""Reading and writing meshes and point clouds, with clear errors and atomic writes.

Every reader raises :class:`~tokenizers3d.errors.MeshInputError` naming the file and the problem;
every writer writes a temporary file beside the target and renames it, so a crash never leaves a
half-written file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

from .errors import MeshInputError
from .mesh import canonicalize

MESH_SUFFIXES = (".obj", ".ply", ".stl", ".off", ".glb", ".gltf")
POINT_SUFFIXES = (".ply", ".pcd", ".xyz", ".npy")


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None):
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _load_trimesh(path: Path):
    if not path.exists():
        raise MeshInputError(path, "file does not exist")
    if path.is_dir():
        raise MeshInputError(path, "is a directory, expected a mesh file")
    ext = _suffix(path)
    if ext not in MESH_SUFFIXES:
        raise MeshInputError(path, f"unknown mesh format {ext or '(no suffix)'!r}; expected one of {', '.join(MESH_SUFFIXES)}")
    if path.stat().st_size == 0:
        raise MeshInputError(path, "file is empty")
    try:
        return trimesh.load(str(path), process=False, force=None)
    except Exception as exc:  # trimesh raises many types for corrupt files
        raise MeshInputError(path, f"cannot parse {ext[1:].upper()} file ({type(exc).__name__}: {exc})") from exc


def load_mesh(path: str | Path, *, max_faces: int | None = None, clean: bool = True) -> trimesh.Trimesh:
    """Read any mesh trimesh reads into one canonical triangle mesh.

    Scenes (GLB/GLTF, multi-object OBJ) are merged with their node transforms; polygons are
    triangulated by trimesh; with ``clean`` the result goes through :func:`~tokenizers3d.mesh.canonicalize`.

    Parameters
    ----------
    path : str or Path
    max_faces : int, optional
        Refuse meshes with more faces than this (checked before clean-up).

    Raises
    ------
    MeshInputError
        Missing, empty, unknown-format or corrupt file; a point cloud; empty mesh; NaN/inf
        coordinates; too many faces.
    """
    path = Path(path)
    obj = _load_trimesh(path)
    if isinstance(obj, trimesh.Scene):
        geoms = [g for g in obj.dump(concatenate=False) if isinstance(g, trimesh.Trimesh)] if obj.geometry else []
        if not geoms:
            kinds = {type(g).__name__ for g in obj.geometry.values()}
            if kinds & {"PointCloud"}:
                raise MeshInputError(path, "contains a point cloud, not a mesh (no faces)")
            raise MeshInputError(path, "no triangle mesh could be read (corrupt file, or no geometry in it)")
        obj = trimesh.util.concatenate(geoms) if len(geoms) > 1 else geoms[0]
    if isinstance(obj, trimesh.PointCloud):
        raise MeshInputError(path, "is a point cloud, not a mesh (no faces)")
    if not isinstance(obj, trimesh.Trimesh):
        raise MeshInputError(path, f"does not contain a triangle mesh (got {type(obj).__name__})")
    if len(obj.faces) == 0:
        if len(obj.vertices):
            raise MeshInputError(path, "is a point cloud, not a mesh (no faces)")
        raise MeshInputError(path, "mesh is empty (no faces)")
    if max_faces is not None and len(obj.faces) > max_faces:
        raise MeshInputError(path, f"has {len(obj.faces)} faces, more than the limit of {max_faces}")
    if not np.all(np.isfinite(obj.vertices)):
        raise MeshInputError(path, "mesh has NaN or infinite vertex coordinates")
    mesh = trimesh.Trimesh(np.asarray(obj.vertices, dtype=np.float64), np.asarray(obj.faces), process=False)
    return canonicalize(mesh, source=path) if clean else mesh


@dataclass
class PointCloud:
    """Points with normals.

    Attributes
    ----------
    points : (N, 3) float32
    normals : (N, 3) float32, unit length
    """

    points: np.ndarray
    normals: np.ndarray

    def __len__(self) -> int:
        return len(self.points)


def estimate_normals(points: np.ndarray, k: int = 16) -> np.ndarray:
    """Unit normals (N, 3) by PCA over ``k`` nearest neighbours (Open3D), oriented away from the centroid."""
    import open3d as o3d

    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points, dtype=np.float64)))
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(knn=min(k, max(3, len(points) - 1))))
    normals = np.asarray(pcd.normals)
    outward = np.asarray(points) - np.asarray(points).mean(axis=0)
    flip = (normals * outward).sum(axis=1) < 0
    normals[flip] *= -1
    return normals.astype(np.float32)


def _as_point_cloud(arr: np.ndarray, path: Path) -> PointCloud:
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.shape[1] not in (3, 6):
        raise MeshInputError(path, f"expected an N x 3 or N x 6 array of points, got shape {arr.shape}")
    if len(arr) == 0:
        raise MeshInputError(path, "point cloud is empty")
    try:
        arr = arr.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise MeshInputError(path, f"point cloud is not numeric ({exc})") from exc
    if not np.all(np.isfinite(arr)):
        raise MeshInputError(path, "point cloud has NaN or infinite coordinates")
    pts = arr[:, :3]
    if arr.shape[1] == 6:
        nrm = arr[:, 3:]
        length = np.linalg.norm(nrm, axis=1, keepdims=True)
        if np.any(length < 1e-12):
            nrm = estimate_normals(pts)
        else:
            nrm = nrm / length
    else:
        nrm = estimate_normals(pts)
    return PointCloud(pts.astype(np.float32), np.asarray(nrm, dtype=np.float32))


def load_point_cloud(path: str | Path) -> PointCloud:
    """Read points (and normals, if present) from .ply, .pcd, .xyz or .npy; estimate normals if absent.

    A mesh file (faces present) is accepted too: its vertices become the points. Use
    :func:`tokenizers3d.sample.sample_surface` to sample a mesh's surface instead.
    """
    path = Path(path)
    if not path.exists():
        raise MeshInputError(path, "file does not exist")
    ext = _suffix(path)
    if ext not in POINT_SUFFIXES:
        raise MeshInputError(path, f"unknown point-cloud format {ext or '(no suffix)'!r}; expected one of {', '.join(POINT_SUFFIXES)}")
    if path.stat().st_size == 0:
        raise MeshInputError(path, "file is empty")
    if ext == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise MeshInputError(path, f"cannot read .npy array ({exc})") from exc
        return _as_point_cloud(arr, path)
    if ext == ".xyz":
        try:
            arr = np.loadtxt(path, ndmin=2)
        except Exception as exc:
            raise MeshInputError(path, f"cannot parse .xyz text ({exc})") from exc
        return _as_point_cloud(arr, path)
    import open3d as o3d

    pcd = o3d.io.read_point_cloud(str(path))  # .pcd or .ply (a mesh PLY gives its vertices)
    pts = np.asarray(pcd.points)
    if len(pts) == 0:
        raise MeshInputError(path, f"no points could be read (corrupt or empty {ext} file)")
    arr = np.hstack([pts, np.asarray(pcd.normals)]) if pcd.has_normals() else pts
    return _as_point_cloud(arr, path)


def save_point_cloud(path: str | Path, cloud: PointCloud) -> None:
    """Write a point cloud with normals (.ply, .xyz or .npy, N x 6), atomically."""
    path = Path(path)
    ext = _suffix(path)
    arr = np.hstack([cloud.points, cloud.normals]).astype(np.float32)
    with atomic_path(path) as tmp:
        if ext == ".npy":
            with open(tmp, "wb") as fh:
                np.save(fh, arr)
        elif ext == ".xyz":
            np.savetxt(tmp, arr, fmt="%.6f")
        elif ext == ".ply":
            pc = trimesh.PointCloud(cloud.points)
            header = trimesh.exchange.ply.export_ply(pc, encoding="ascii")
            del header  # trimesh cannot write point normals; write our own header below
            lines = [
                "ply", "format ascii 1.0", f"element vertex {len(arr)}",
                "property float x", "property float y", "property float z",
                "property float nx", "property float ny", "property float nz", "end_header",
            ]
            body = "\n".join(" ".join(f"{x:.6f}" for x in row) for row in arr)
            tmp.write_text("\n".join(lines) + "\n" + body + "\n")
        else:
            raise MeshInputError(path, f"cannot write point clouds as {ext!r}; use .ply, .xyz or .npy")


def label_colors(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """A distinct RGBA uint8 colour (F, 4) per integer label; label -1 is grey."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    n = int(labels.max()) + 1 if len(labels) and labels.max() >= 0 else 1
    hues = (np.arange(n) * 0.618033988749895 + rng.random()) % 1.0
    import colorsys

    palette = np.array([[int(255 * c) for c in colorsys.hsv_to_rgb(h, 0.65, 0.95)] + [255] for h in hues], dtype=np.uint8)
    out = np.full((len(labels), 4), [128, 128, 128, 255], dtype=np.uint8)
    ok = labels >= 0
    out[ok] = palette[labels[ok]]
    return out


def save_mesh(path: str | Path, mesh: trimesh.Trimesh, *, face_labels: np.ndarray | None = None,
              face_colors: np.ndarray | None = None) -> None:
    """Write OBJ, PLY (with per-face colours and an integer ``label`` face property) or GLB, atomically.

    Parameters
    ----------
    face_labels : (F,) int, optional
        Stored as a ``label`` face property in PLY; also coloured if ``face_colors`` is not given.
    face_colors : (F, 3 or 4) uint8, optional
    """
    path = Path(path)
    ext = _suffix(path)
    if ext not in (".obj", ".ply", ".glb", ".stl", ".off"):
        raise MeshInputError(path, f"cannot write meshes as {ext!r}; use .obj, .ply, .glb, .stl or .off")
    out = trimesh.Trimesh(np.asarray(mesh.vertices), np.asarray(mesh.faces), process=False)
    if face_labels is not None and face_colors is None:
        face_colors = label_colors(face_labels)
    if face_colors is not None:
        out.visual.face_colors = np.asarray(face_colors)
    with atomic_path(path) as tmp:
        if ext == ".ply" and face_labels is not None:
            tmp.write_bytes(_ply_with_labels(out, np.asarray(face_labels, dtype=np.int32), face_colors))
        elif ext == ".obj":
            tmp.write_text(trimesh.exchange.obj.export_obj(out, include_color=False, include_normals=False,
                                                          include_texture=False, write_texture=False))
        else:
            out.export(str(tmp), file_type=ext[1:])


def _ply_with_labels(mesh: trimesh.Trimesh, labels: np.ndarray, colors: np.ndarray | None) -> bytes:
    """Binary little-endian PLY with float xyz vertices and faces carrying rgba + int label."""
    v = np.asarray(mesh.vertices, dtype="<f4")
    f = np.asarray(mesh.faces, dtype="<i4")
    c = np.asarray(colors if colors is not None else label_colors(labels), dtype=np.uint8)
    if c.shape[1] == 3:
        c = np.hstack([c, np.full((len(c), 1), 255, np.uint8)])
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(v)}\nproperty float x\nproperty float y\nproperty float z\n"
        f"element face {len(f)}\nproperty list uchar int vertex_indices\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nproperty uchar alpha\n"
        "property int label\nend_header\n"
    ).encode("ascii")
    face_dtype = np.dtype([("n", "u1"), ("idx", "<i4", (3,)), ("rgba", "u1", (4,)), ("label", "<i4")])
    rec = np.empty(len(f), dtype=face_dtype)
    rec["n"], rec["idx"], rec["rgba"], rec["label"] = 3, f, c, labels
    return header + v.tobytes() + rec.tobytes()


def read_ply_face_labels(path: str | Path) -> np.ndarray:
    """Per-face ``label`` property of a PLY written by :func:`save_mesh` (F,) int."""
    obj = trimesh.load(str(path), process=False)
    raw = obj.metadata.get("_ply_raw", {}).get("face", {}).get("data")
    if raw is None or "label" not in (raw.dtype.names or ()):
        raise MeshInputError(path, "PLY file has no per-face 'label' property")
    return np.asarray(raw["label"]).astype(np.int64).reshape(-1)
