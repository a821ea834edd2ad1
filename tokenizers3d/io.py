"""Reading and writing meshes and point clouds, with clear errors and atomic writes.

Every reader raises :class:`~tokenizers3d.errors.MeshInputError` naming the file and the problem;
every writer writes a temporary file beside the target and renames it, so a crash never leaves a
half-written file, and turns OS errors (no permission, read-only or full file system, a directory in the
way) into :class:`~tokenizers3d.errors.MeshOutputError` naming the target. :func:`atomic_paths` commits
several files together (a mesh and its preview); :func:`refuse_overwrite` and :func:`refuse_output_inside`
keep an output from landing on its input.

:func:`load_mesh` reads meshes with trimesh; :func:`load_mesh_arrays` gives the same mesh as plain arrays,
reading OBJ, OFF, STL and PLY with numpy alone (:mod:`tokenizers3d.meshfile`). trimesh, which loads SciPy, is
imported only inside the functions that need it, so the quick commands never load it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import MeshInputError, MeshOutputError
from .mesh import ArrayMesh, canonicalize, check_coordinates
from .meshfile import check_obj, read_mesh_file

if TYPE_CHECKING:  # trimesh (which loads SciPy) is imported where it is needed: see load_mesh_arrays
    import trimesh

MESH_SUFFIXES = (".obj", ".ply", ".stl", ".off", ".glb", ".gltf")
POINT_SUFFIXES = (".ply", ".pcd", ".xyz", ".npy")

# Size limits of the readers (the one place they are set; see README "Limits").
MAX_MESH_FACES = 1_000_000  # load_mesh refuses larger meshes unless given a larger max_faces
MAX_CLOUD_POINTS = 1_000_000  # load_point_cloud keeps a deterministic subsample of this many points

log = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None):
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched. An OS error (no
    permission, read-only or full file system, ``path`` a directory, a parent a file) becomes a
    :class:`~tokenizers3d.errors.MeshOutputError` naming ``path``.
    """
    with atomic_paths(path, suffixes=(suffix,)) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_paths(*paths: str | Path, suffixes: Sequence[str | None] | None = None):
    """Yield one temporary path beside each of ``paths``; on success all are renamed onto their targets.

    The files are committed together: nothing is renamed before the body has written every temporary
    file, and if a rename fails the targets already replaced get their old content back. On any exception
    every temporary file is removed and the targets are left as they were. OS errors become
    :class:`~tokenizers3d.errors.MeshOutputError` naming the target (the first one when the error does not
    say which file it is about).

    Parameters
    ----------
    paths : str or Path
        Targets, e.g. a mesh and its PNG preview.
    suffixes : sequence of (str or None), optional
        Suffix of each temporary file (default: its target's), for writers that go by the suffix.
    """
    targets = [Path(p) for p in paths]
    suffixes = list(suffixes) if suffixes is not None else [None] * len(targets)
    tmps: list[Path] = []
    try:
        for target, suffix in zip(targets, suffixes, strict=True):
            check_output_path(target)
            _make_parent(target)
            try:
                fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or target.suffix,
                                           dir=target.parent)
            except OSError as exc:
                raise MeshOutputError(target, _write_problem(exc, target)) from exc
            os.close(fd)
            tmps.append(Path(tmp))
        try:
            yield tmps
        except OSError as exc:
            ours = {str(p): target for t, target in zip(tmps, targets, strict=True) for p in (t, target)}
            if exc.filename is not None and str(exc.filename) not in ours:
                raise  # about another file (an input, say): not ours to rename
            target = ours.get(str(exc.filename), targets[0])
            raise MeshOutputError(target, _write_problem(exc, target)) from exc
        mode = 0o666 & ~_umask()  # mkstemp makes 0600; give the files the usual permissions
        for tmp in tmps:
            os.chmod(tmp, mode)
        _commit(tmps, targets)
    finally:
        for tmp in tmps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _commit(tmps: list[Path], targets: list[Path]) -> None:
    """Rename every temporary file onto its target; on a failure put back what was there before."""
    if len(targets) == 1:
        try:
            os.replace(tmps[0], targets[0])
        except OSError as exc:
            raise MeshOutputError(targets[0], _write_problem(exc, targets[0])) from exc
        return
    done: list[tuple[Path, Path | None]] = []  # (target, backup of its old content or None)
    try:
        for tmp, target in zip(tmps, targets, strict=True):
            done.append((target, _backup(target)))
            os.replace(tmp, target)
    except OSError as exc:
        for target, backup in reversed(done):
            with contextlib.suppress(OSError):
                if backup is not None:
                    os.replace(backup, target)
                else:
                    target.unlink(missing_ok=True)
        raise MeshOutputError(done[-1][0], _write_problem(exc, done[-1][0])) from exc
    finally:
        for _, backup in done:
            if backup is not None:
                with contextlib.suppress(OSError):
                    backup.unlink(missing_ok=True)


def _backup(target: Path) -> Path | None:
    """A hard link (or, where links are not supported, a copy) of ``target`` beside it; None if it does not exist."""
    if not target.is_file():
        return None
    backup = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.old")
    try:
        os.link(target, backup)
    except OSError:
        shutil.copy2(target, backup)
    return backup


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MeshOutputError(path, _write_problem(exc, path)) from exc


def _write_problem(exc: OSError, path: Path, *, folder: bool = False) -> str:
    """``exc`` in words, for a failed write of the file (or, with ``folder``, into the folder) ``path``."""
    blocker = _file_in_the_way(path / "x" if folder else path)
    if folder and blocker == path:
        return "is a file, expected a folder"
    if blocker is not None:
        return f"cannot write: {blocker} is a file, not a folder"
    if not folder and (isinstance(exc, IsADirectoryError) or path.is_dir()):
        return "is a directory; give a file name"
    reason = exc.strerror or type(exc).__name__
    return f"cannot write: {reason[:1].lower()}{reason[1:]}"


def _file_in_the_way(path: Path) -> Path | None:
    """The first ancestor of ``path`` that exists and is not a folder, if any."""
    for parent in reversed(path.parents):
        try:
            if parent.exists() and not parent.is_dir():
                return parent
        except OSError:
            return None
    return None


def check_output_path(path: str | Path, *, folder: bool = False) -> None:
    """Fail early, before any work, when ``path`` cannot become an output file (or, with ``folder``, an
    output folder).

    Raises :class:`~tokenizers3d.errors.MeshOutputError` when ``path`` is a directory (with ``folder``: a
    file), when one of its parents is a file, or when the nearest existing folder is not writable. Writes
    nothing. The write itself still turns any later OS error into the same exception.
    """
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise MeshOutputError(path, "is a file, expected a folder")
    if not folder and path.is_dir():
        raise MeshOutputError(path, "is a directory; give a file name")
    blocker = _file_in_the_way(path)
    if blocker is not None:
        raise MeshOutputError(path, f"cannot write: {blocker} is a file, not a folder")
    existing = next((p for p in ([path] if folder else []) + list(path.parents) if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise MeshOutputError(path, f"cannot write: folder {existing} is not writable")


def ensure_output_dir(path: str | Path) -> Path:
    """Create the output folder ``path`` (and its parents) and check that a file can be written in it.

    Raises :class:`~tokenizers3d.errors.MeshOutputError` when ``path`` is a file or cannot be created or
    written; leaves nothing behind but the folder.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MeshOutputError(path, "is a file, expected a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise MeshOutputError(path, _write_problem(exc, path, folder=True)) from exc
    return path


@contextlib.contextmanager
def output_errors(path: str | Path, *, folder: bool = False):
    """Turn an OS error raised inside into :class:`~tokenizers3d.errors.MeshOutputError` naming ``path``, the
    file (or, with ``folder``, the folder) being written; an error that names a file elsewhere passes through.

    For writers that do not go through :func:`atomic_path` (a lock file, an appended journal).
    """
    path = Path(path)
    try:
        yield
    except OSError as exc:
        if exc.filename is not None and not _is_within(Path(os.fsdecode(exc.filename)), path):
            raise
        raise MeshOutputError(path, _write_problem(exc, path, folder=folder)) from exc


def _is_within(path: Path, root: Path) -> bool:
    try:
        path, root = path.resolve(), root.resolve()
    except (OSError, RuntimeError):
        return False
    return path == root or root in path.parents


def refuse_overwrite(out: str | Path, *inputs: str | Path | None) -> None:
    """Raise :class:`~tokenizers3d.errors.MeshOutputError` when ``out`` is the same file as one of ``inputs``.

    Symbolic links, hard links and relative paths are seen through; ``None`` inputs are skipped.
    """
    out = Path(out)
    for inp in inputs:
        if inp is not None and _same_file(out, Path(inp)):
            raise MeshOutputError(out, f"is the input file {inp}; write the output somewhere else")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        try:
            return a.resolve() == b.resolve()
        except (OSError, RuntimeError):  # a symlink loop
            return False


def refuse_output_inside(out_dir: str | Path, input_dir: str | Path) -> None:
    """Raise :class:`~tokenizers3d.errors.MeshOutputError` when the folder ``out_dir`` is ``input_dir`` or below it."""
    if _is_within(Path(out_dir), Path(input_dir)) or _same_file(Path(out_dir), Path(input_dir)):
        raise MeshOutputError(out_dir, f"is inside the input folder {input_dir}; write the output somewhere else")


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


def _check_mesh_path(path: Path) -> str:
    """The suffix of a mesh file that exists, is not empty and has a known format (else MeshInputError)."""
    if not path.exists():
        raise MeshInputError(path, "file does not exist")
    if path.is_dir():
        raise MeshInputError(path, "is a directory, expected a mesh file")
    ext = _suffix(path)
    if ext not in MESH_SUFFIXES:
        raise MeshInputError(path, f"unknown mesh format {ext or '(no suffix)'!r}; expected one of {', '.join(MESH_SUFFIXES)}")
    if path.stat().st_size == 0:
        raise MeshInputError(path, "file is empty")
    return ext


def _load_trimesh(path: Path, *, max_faces: int | None = None, checked: bool = False):
    """``trimesh.load`` of ``path`` after the path checks and, for an OBJ, the pre-scan
    :func:`~tokenizers3d.meshfile.check_obj`; with ``checked`` the caller has made both."""
    import trimesh

    ext = _suffix(path) if checked else _check_mesh_path(path)
    if ext == ".obj" and not checked:
        check_obj(path, max_faces)
    try:
        return trimesh.load(str(path), process=False, force=None)
    except Exception as exc:  # trimesh raises many types for corrupt files
        raise MeshInputError(path, f"cannot parse {ext[1:].upper()} file ({type(exc).__name__}: {exc})") from exc


def _read_with_trimesh(path: Path, limit: int, *, checked: bool = False) -> ArrayMesh:
    """The one triangle mesh in the file, read by trimesh and checked (:func:`_checked_arrays`)."""
    import trimesh

    obj = _load_trimesh(path, max_faces=limit, checked=checked)
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
    return _checked_arrays(path, obj.vertices, obj.faces, limit)


def _checked_arrays(path: Path, vertices, faces, limit: int) -> ArrayMesh:
    """Vertices and faces read from ``path`` as an :class:`~tokenizers3d.mesh.ArrayMesh`, after the checks
    every reader makes: faces present, at most ``limit`` of them, referring to vertices that exist, 3-D finite
    coordinates within range."""
    if len(faces) == 0:
        if len(vertices):
            raise MeshInputError(path, "is a point cloud, not a mesh (no faces)")
        raise MeshInputError(path, "mesh is empty (no faces)")
    if len(faces) > limit:
        raise MeshInputError(path, f"has {len(faces):,} faces, more than the limit of {limit:,}")
    faces = np.asarray(faces, dtype=np.int64)
    if faces.min() < 0 or faces.max() >= len(vertices):
        bad = int(faces.min()) if faces.min() < 0 else int(faces.max())
        raise MeshInputError(path, f"a face refers to vertex index {bad}, but the file has only {len(vertices):,} "
                                   "vertices (file corrupt or cut short?)")
    vertices = np.asarray(vertices, dtype=np.float64)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise MeshInputError(path, f"vertices have {vertices.shape[-1]} coordinates, expected 3 (file cut short?)")
    check_coordinates(vertices, path)
    return ArrayMesh(vertices, faces)


def load_mesh(path: str | Path, *, max_faces: int | None = None, clean: bool = True) -> trimesh.Trimesh:
    """Read any mesh trimesh reads into one canonical triangle mesh.

    Scenes (GLB/GLTF, multi-object OBJ) are merged with their node transforms; polygons are
    triangulated by trimesh; with ``clean`` the result goes through :func:`~tokenizers3d.mesh.canonicalize`.

    OBJ files are checked before trimesh reads them: a face index 0 or beyond the vertices, and a last
    line cut short, are refused (trimesh would silently build a wrong face). :func:`load_mesh_arrays` reads
    the same mesh without trimesh where it can.

    Parameters
    ----------
    path : str or Path
    max_faces : int, optional
        Refuse meshes with more (triangulated) faces than this, checked before clean-up; default
        :data:`MAX_MESH_FACES` (1,000,000). Pass a larger number to read larger meshes.
    clean : bool
        Canonicalize (merge equal vertices, drop degenerate and duplicate faces).

    Raises
    ------
    MeshInputError
        Missing, empty, unknown-format or corrupt file; an OBJ with a bad face index or cut short; a face
        index outside the vertices (any format); a point cloud; empty mesh; NaN/inf coordinates or coordinates beyond ``±MAX_COORDINATE`` (1e30);
        too many faces; no face of non-zero area (including every mesh of zero extent).
    """
    import trimesh

    path = Path(path)
    limit = MAX_MESH_FACES if max_faces is None else int(max_faces)
    arrays = _read_with_trimesh(path, limit)
    mesh = trimesh.Trimesh(arrays.vertices, arrays.faces, process=False)
    return canonicalize(mesh, source=path) if clean else mesh


def load_mesh_arrays(path: str | Path, *, max_faces: int | None = None, clean: bool = True) -> ArrayMesh:
    """:func:`load_mesh` as an :class:`~tokenizers3d.mesh.ArrayMesh`, read with numpy alone where possible.

    OBJ, OFF, STL and PLY files are read by :func:`~tokenizers3d.meshfile.read_mesh_file` (no trimesh, no
    SciPy: what keeps ``meshgen info`` and ``meshgen tokenize`` quick to start); a file it does not read
    exactly as trimesh would (GLB/GLTF, OBJ materials, PLY texture coordinates, ...) goes to trimesh. Either
    way the result, the checks and the error messages are those of :func:`load_mesh`: with ``clean``, the
    same canonical vertices and faces.

    Parameters and errors as :func:`load_mesh`.
    """
    path = Path(path)
    limit = MAX_MESH_FACES if max_faces is None else int(max_faces)
    _check_mesh_path(path)
    read = read_mesh_file(path, max_faces=limit)  # runs the OBJ pre-scan
    arrays = _read_with_trimesh(path, limit, checked=True) if read is None else _checked_arrays(path, *read, limit)
    return canonicalize(arrays, source=path) if clean else arrays


@dataclass
class PointCloud:
    """Points with normals.

    Attributes
    ----------
    points : (N, 3) float
        float64 from :func:`load_point_cloud` (a file's precision is kept: clouds far from the origin or a
        few units of 1e-300 across stay exact), float32 from :func:`~tokenizers3d.sample.sample_surface`.
    normals : (N, 3) float32, unit length
    """

    points: np.ndarray
    normals: np.ndarray

    def __len__(self) -> int:
        return len(self.points)


def estimate_normals(points: np.ndarray, k: int = 16) -> np.ndarray:
    """Unit normals (N, 3) by PCA over ``k`` nearest neighbours (Open3D), oriented away from the centroid.

    The points are first moved into the unit cube, so the result does not depend on their scale.
    """
    import open3d as o3d

    points = np.asarray(points, dtype=np.float64)
    lo, extent = points.min(axis=0), float(np.ptp(points, axis=0).max())
    unit = (points - lo) / (extent if extent > 0 else 1.0)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(unit))
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(knn=min(k, max(3, len(points) - 1))))
    normals = np.asarray(pcd.normals)
    outward = unit - unit.mean(axis=0)
    flip = (normals * outward).sum(axis=1) < 0
    normals[flip] *= -1
    return normals.astype(np.float32)


def _as_point_cloud(arr: np.ndarray, path: Path, max_points: int | None = None) -> PointCloud:
    """Check an (N, 3) or (N, 6) array and make a :class:`PointCloud`, subsampled to ``max_points``
    (default :data:`MAX_CLOUD_POINTS`) with a fixed seed; normals are estimated when absent or zero."""
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
        raise MeshInputError(path, "point cloud has NaN or infinite coordinates or normals")
    check_coordinates(arr[:, :3], path, what="point cloud")
    if len(arr) > 1 and not np.ptp(arr[:, :3], axis=0).any():
        raise MeshInputError(path, f"all {len(arr):,} points coincide (zero extent)")
    limit = MAX_CLOUD_POINTS if max_points is None else int(max_points)
    if len(arr) > limit:
        keep = np.sort(np.random.default_rng(0).choice(len(arr), size=limit, replace=False))
        log.warning("%s: %s points, more than the limit of %s; using a fixed subsample of %s",
                    path, f"{len(arr):,}", f"{limit:,}", f"{limit:,}")
        arr = arr[keep]
    pts = arr[:, :3]
    if arr.shape[1] == 6:
        nrm = arr[:, 3:]
        big = np.abs(nrm).max(axis=1, keepdims=True)  # scale first: normals of any length, no overflow
        if np.any(big == 0):
            nrm = estimate_normals(pts)
        else:
            nrm = nrm / big
            nrm = nrm / np.linalg.norm(nrm, axis=1, keepdims=True)
    else:
        nrm = estimate_normals(pts)
    return PointCloud(pts.copy(), np.asarray(nrm, dtype=np.float32))


def load_point_cloud(path: str | Path, *, max_points: int | None = None) -> PointCloud:
    """Read points (and normals, if present) from .ply, .pcd, .xyz or .npy; estimate normals if absent.

    A mesh file (faces present) is accepted too: its vertices become the points. Use
    :func:`tokenizers3d.sample.sample_surface` to sample a mesh's surface instead.

    Parameters
    ----------
    path : str or Path
    max_points : int, optional
        Larger clouds are cut to a subsample of this many points (fixed seed, file order kept; a warning
        is logged); default :data:`MAX_CLOUD_POINTS` (1,000,000). The generator uses about 2,000.

    Returns
    -------
    PointCloud
        points (N, 3) float64, normals (N, 3) float32.

    Raises
    ------
    MeshInputError
        Missing, empty, unknown-format or unreadable file; not N x 3 or N x 6; NaN/inf values; a
        coordinate beyond ``±MAX_COORDINATE`` (1e30); all points at one place.
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
        return _as_point_cloud(arr, path, max_points)
    if ext == ".xyz":
        try:
            arr = np.loadtxt(path, ndmin=2)
        except Exception as exc:
            raise MeshInputError(path, f"cannot parse .xyz text ({exc})") from exc
        return _as_point_cloud(arr, path, max_points)
    import open3d as o3d

    pcd = o3d.io.read_point_cloud(str(path))  # .pcd or .ply (a mesh PLY gives its vertices)
    pts = np.asarray(pcd.points)
    if len(pts) == 0:
        raise MeshInputError(path, f"no points could be read (corrupt or empty {ext} file)")
    arr = np.hstack([pts, np.asarray(pcd.normals)]) if pcd.has_normals() else pts
    return _as_point_cloud(arr, path, max_points)


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
            import trimesh

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


def save_mesh(path: str | Path, mesh: trimesh.Trimesh | ArrayMesh, *, face_labels: np.ndarray | None = None,
              face_colors: np.ndarray | None = None) -> None:
    """Write OBJ, PLY (with per-face colours and an integer ``label`` face property) or GLB, atomically.

    Parameters
    ----------
    face_labels : (F,) int, optional
        Stored as a ``label`` face property in PLY; also coloured if ``face_colors`` is not given.
    face_colors : (F, 3 or 4) uint8, optional
    """
    check_output_path(path)
    data = mesh_bytes(mesh, _suffix(Path(path)), face_labels=face_labels, face_colors=face_colors, path=path)
    atomic_write_bytes(path, data)


def mesh_bytes(mesh: trimesh.Trimesh | ArrayMesh, suffix: str, *, face_labels: np.ndarray | None = None,
               face_colors: np.ndarray | None = None, path: str | Path | None = None) -> bytes:
    """The file :func:`save_mesh` writes, as bytes (for writers that commit several files together).

    ``suffix`` is the format (``.obj``, ``.ply``, ``.glb``, ``.stl`` or ``.off``); ``path`` only names the
    file in the error raised for another suffix. ``mesh`` is anything with ``vertices`` and ``faces``; OBJ,
    and PLY without ``face_colors``, are written with numpy alone (no trimesh import).
    """
    ext = suffix.lower()
    if ext not in (".obj", ".ply", ".glb", ".stl", ".off"):
        raise MeshInputError(path, f"cannot write meshes as {ext!r}; use .obj, .ply, .glb, .stl or .off")
    if face_colors is None and ext in (".obj", ".ply"):
        if ext == ".obj":
            return _obj_bytes(mesh.vertices, mesh.faces)
        if face_labels is None:
            return _ply_bytes(mesh.vertices, mesh.faces)
        return _ply_with_labels(mesh, np.asarray(face_labels, dtype=np.int32), None)
    import trimesh

    out = trimesh.Trimesh(np.asarray(mesh.vertices), np.asarray(mesh.faces), process=False)
    if face_labels is not None and face_colors is None:
        face_colors = label_colors(face_labels)
    if face_colors is not None:
        out.visual.face_colors = np.asarray(face_colors)
    if ext == ".ply" and face_labels is not None:
        return _ply_with_labels(out, np.asarray(face_labels, dtype=np.int32), face_colors)
    if ext == ".obj":
        return _obj_bytes(out.vertices, out.faces)
    else:
        data = out.export(file_type=ext[1:])
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def _obj_bytes(vertices: np.ndarray, faces: np.ndarray) -> bytes:
    """OBJ text with every coordinate written as the shortest decimal that reads back to the same float64
    (fixed decimals would write a 1e-300 mesh as zeros and pad 1e28 with digits)."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64) + 1
    lines = [f"v {x!r} {y!r} {z!r}" for x, y, z in v.tolist()]
    lines += [f"f {a} {b} {c}" for a, b, c in f.tolist()]
    return ("\n".join(lines) + "\n").encode("ascii")


def _ply_bytes(vertices: np.ndarray, faces: np.ndarray) -> bytes:
    """Binary little-endian PLY with float xyz vertices and triangle faces: the bytes trimesh's PLY export writes
    for a mesh without colours or attributes."""
    v = np.asarray(vertices, dtype="<f4").reshape(-1, 3)
    f = np.asarray(faces).reshape(-1, 3)
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment https://github.com/mikedh/trimesh\n"
        f"element vertex {len(v)}\nproperty float x\nproperty float y\nproperty float z\n"
        f"element face {len(f)}\nproperty list uchar int vertex_indices\nend_header\n"
    ).encode("ascii")
    rec = np.empty(len(f), dtype=np.dtype([("n", "u1"), ("idx", "<i4", (3,))]))
    rec["n"], rec["idx"] = 3, f
    return header + v.tobytes() + rec.tobytes()


def _ply_with_labels(mesh: trimesh.Trimesh | ArrayMesh, labels: np.ndarray, colors: np.ndarray | None) -> bytes:
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
    import trimesh

    obj = trimesh.load(str(path), process=False)
    raw = obj.metadata.get("_ply_raw", {}).get("face", {}).get("data")
    if raw is None or "label" not in (raw.dtype.names or ()):
        raise MeshInputError(path, "PLY file has no per-face 'label' property")
    return np.asarray(raw["label"]).astype(np.int64).reshape(-1)
