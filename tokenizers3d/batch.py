"""Tokenize a directory tree of meshes into Parquet shards: resumable, on local processes or on Ray.

::

    report = batch_tokenize("meshes/", "shards/", tokenizer="adjacent", tokenizer_config={"bits": 10}, workers=2)
    print(report.summary())

Layout of an output directory (see ``docs/batch.md``)::

    shards/
      batch.lock                   held (flock) by the one run writing here; removed when it ends
      plan.json                    written first: input folder, settings, the sorted file ids (and their digest)
      shard-00000.parquet          one row per mesh of work unit 0 that tokenized (SHARD_SCHEMA)
      shard-00000.failures.jsonl   the files of work unit 0 that did not (written just before the shard)
      ...
      failures.jsonl               every failure, merged in shard order at the end of a run
      manifest.json                summary, rewritten at the end of a run (:func:`rebuild_manifest`)

Work unit ``k`` is the files ``[k * shard_size, (k + 1) * shard_size)`` of the sorted list saved in
``plan.json``. A unit is *complete* when its ``.parquet`` file exists (its failure sidecar is always
written first), and both are written to a temporary name and renamed, so a run killed at any point
and started again skips the complete units, redoes the others, and ends with every file either in
exactly one row or in exactly one failure line.

One run at a time writes to an output directory: it holds an exclusive ``flock`` on ``batch.lock``
(released by the kernel when the process dies, even by ``SIGKILL``), and a second run refuses to start.
A resumed run must have the same input folder, input files and settings as the plan, otherwise it
refuses to start (:func:`_check_plan`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import math
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from .base import MeshTokenizer, config_hash, get_tokenizer
from .errors import MeshgenError, MeshInputError
from .io import MESH_SUFFIXES, atomic_path, load_mesh
from .mesh import canonicalize

#: 2: plans record the resolved input folder and ``ids_sha256``; shards have ``n_source_faces``.
FORMAT_VERSION = 2
DEFAULT_SHARD_SIZE = 256
ENGINES = ("local", "ray")
PLAN_NAME = "plan.json"
MANIFEST_NAME = "manifest.json"
FAILURES_NAME = "failures.jsonl"
LOCK_NAME = "batch.lock"
#: A mesh that keeps less than this share of its source faces after clean-up and quantization is warned about.
FACE_LOSS_WARN = 0.05
#: Meshes named in the face-loss warning and in ``manifest.json`` (the worst ones).
FACE_LOSS_EXAMPLES = 5
#: Host a local Ray binds to; :func:`_check_loopback` makes sure a TCP connection to it works first.
RAY_LOOPBACK = "127.0.0.1"
SHARD_METADATA_KEY = b"tokenizers3d.batch"
#: Test hook: seconds to sleep before each mesh, so tests can kill a run part-way deterministically.
DELAY_ENV = "TOKENIZERS3D_BATCH_DELAY_S"
#: Test hook: a pool worker about to read a file whose id contains this text dies (``os._exit``), like a segfault.
CRASH_ENV = "TOKENIZERS3D_BATCH_CRASH_ON"
#: Failure message of a file whose pool worker died while tokenizing it.
WORKER_DIED = "worker process died while reading this file (crash or out of memory)"
RAY_INSTALL_HINT = "pip install 'meshgen[ray]'"

NORMALIZATION_TYPE = pa.struct([("center", pa.list_(pa.float64())), ("scale", pa.float64())])
#: One row per tokenized mesh; every shard has exactly this schema.
SHARD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("ids", pa.list_(pa.int32()), nullable=False),
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("n_faces", pa.int32(), nullable=False),
        pa.field("n_vertices", pa.int32(), nullable=False),
        pa.field("tokenizer", pa.string(), nullable=False),
        pa.field("tokenizer_config", pa.string(), nullable=False),
        pa.field("config_hash", pa.string(), nullable=False),
        pa.field("normalization", NORMALIZATION_TYPE, nullable=False),
        # faces of the file as loaded (before clean-up and quantization); null in shards of format 1
        pa.field("n_source_faces", pa.int32(), nullable=True),
    ]
)


class BatchError(MeshgenError, ValueError):
    """A batch run cannot start: bad arguments, or an output directory made with other settings."""


# ---- configuration and plan ------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizerSpec:
    """How every worker rebuilds the same tokenizer.

    Attributes
    ----------
    config : dict
        Full ``tok.config`` (includes ``name``); ``get_tokenizer(**config)`` rebuilds the tokenizer.
    plugins : tuple of str
        Modules imported first (in every worker), e.g. to register tokenizers defined outside this package.
    """

    config: dict
    plugins: tuple[str, ...] = ()

    def build(self) -> MeshTokenizer:
        import_plugins(self.plugins)
        return get_tokenizer(**self.config)


@dataclass(frozen=True)
class ShardTask:
    """Work unit ``index``: the relative file ids it covers, in order."""

    index: int
    ids: tuple[str, ...]


@dataclass(frozen=True)
class BatchJob:
    """Everything a worker needs to tokenize a work unit and write its shard (picklable, absolute paths)."""

    input_dir: str
    out_dir: str
    tokenizer: TokenizerSpec
    max_faces: int | None = None


@dataclass
class BatchPlan:
    """The contents of ``plan.json``: fixed by the first run, checked and followed by every resumed run.

    Attributes
    ----------
    tokenizer_config : dict
        Full tokenizer config, including ``name``.
    shard_size : int
    max_faces : int or None
    ids : list of str
        Sorted relative POSIX paths of the input meshes (the row ids).
    input_dir : str
        The resolved input folder of the first run; a resume must read the same folder.
    format : int
        1 (no ``ids_sha256``) or 2.
    ids_sha256 : str
        :func:`ids_digest` of ``ids`` (empty in format 1); a plan whose ids do not match it was edited.
    """

    tokenizer_config: dict
    shard_size: int
    max_faces: int | None
    ids: list[str]
    input_dir: str = ""
    format: int = FORMAT_VERSION
    ids_sha256: str = ""

    @property
    def n_shards(self) -> int:
        return math.ceil(len(self.ids) / self.shard_size)

    def tasks(self) -> list[ShardTask]:
        size = self.shard_size
        return [ShardTask(k, tuple(self.ids[k * size:(k + 1) * size])) for k in range(self.n_shards)]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    @classmethod
    def load(cls, out_dir: str | Path) -> BatchPlan:
        """Read and validate ``plan.json``.

        Raises
        ------
        BatchError
            Missing, unreadable, not JSON, wrong schema, or tampered (an id outside the input folder,
            ids not sorted and unique, ids that do not match ``ids_sha256``).
        """
        path = Path(out_dir) / PLAN_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BatchError(f"{out_dir}: no {PLAN_NAME}; not a batch_tokenize output directory") from None
        except (OSError, ValueError) as exc:  # ValueError covers JSONDecodeError and UnicodeDecodeError
            raise BatchError(f"{path}: unreadable plan ({_one_line(exc)}); {_START_OVER}") from None
        plan = cls(**_plan_fields(path, data))
        plan._check_ids(path)
        return plan

    def _check_ids(self, path: Path) -> None:
        for rel in self.ids:
            problem = unsafe_id(rel)
            if problem:
                raise BatchError(f"{path}: tampered plan: id {rel!r} {problem}; {_START_OVER}")
        if any(a >= b for a, b in zip(self.ids, self.ids[1:], strict=False)):
            raise BatchError(f"{path}: tampered plan: ids are not sorted and unique; {_START_OVER}")
        if self.ids_sha256 and self.ids_sha256 != ids_digest(self.ids):
            raise BatchError(f"{path}: tampered plan: ids do not match ids_sha256; {_START_OVER}")


#: The fix named by every refusal to resume.
_START_OVER = "use a new output folder, or delete this one to start over"

#: Field name -> (check, expected type in words) for ``plan.json``.
_PLAN_CHECKS = {
    "tokenizer_config": (lambda v: isinstance(v, dict) and isinstance(v.get("name"), str), "an object with a name"),
    "shard_size": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "max_faces": (lambda v: v is None or (_is_int(v) and v >= 1), "null or a positive integer"),
    "ids": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
    "input_dir": (lambda v: isinstance(v, str), "a string"),
    "format": (lambda v: v in (1, FORMAT_VERSION) and _is_int(v), f"1 or {FORMAT_VERSION}"),
    "ids_sha256": (lambda v: isinstance(v, str), "a string"),
}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _plan_fields(path: Path, data) -> dict:
    """The keyword arguments of :class:`BatchPlan` from parsed ``plan.json``, or a BatchError naming what is wrong."""
    if not isinstance(data, dict):
        raise BatchError(f"{path}: wrong plan schema (expected a JSON object); {_START_OVER}")
    names = {f.name for f in fields(BatchPlan)}
    required = {f.name for f in fields(BatchPlan) if f.default is MISSING}
    unknown, missing = sorted(set(data) - names), sorted(required - set(data))
    if unknown or missing:
        what = ", ".join([f"unknown key {k!r}" for k in unknown] + [f"missing key {k!r}" for k in missing])
        raise BatchError(f"{path}: wrong plan schema ({what}); {_START_OVER}")
    for key, value in data.items():
        check, expected = _PLAN_CHECKS[key]
        if not check(value):
            raise BatchError(f"{path}: wrong plan schema ({key} must be {expected}); {_START_OVER}")
    return data


def ids_digest(ids: Sequence[str]) -> str:
    """SHA-256 of the ids, one per line (``plan.json``'s ``ids_sha256``)."""
    return hashlib.sha256("".join(f"{rel}\n" for rel in ids).encode("utf-8")).hexdigest()


def unsafe_id(rel: str) -> str | None:
    """Why ``rel`` cannot be a file id below the input folder (absolute, ``..``, not normalized), or None."""
    if not rel or "\0" in rel:
        return "is empty or holds a NUL character"
    windows = os.name == "nt"  # where a drive or a backslash also makes a path absolute or a separator
    if rel.startswith("/") or (windows and PureWindowsPath(rel).anchor):
        return "is an absolute path"
    parts = rel.replace("\\", "/").split("/") if windows else rel.split("/")
    if ".." in parts:
        return "leads outside the input folder"
    if any(part in ("", ".") for part in parts) or PurePosixPath(rel).as_posix() != rel:
        return "is not a normalized relative path"
    return None


@dataclass
class BatchReport:
    """What :func:`batch_tokenize` did.

    Attributes
    ----------
    n_files : int
        Meshes in the plan.
    n_ok, n_failed : int
        Rows and failures in the output directory after this run (all runs together).
    n_processed : int
        Files tokenized by this run (the rest were in shards complete before it started).
    n_shards, n_shards_skipped : int
        Work units in the plan, and those already complete when this run started.
    wall_s : float
        Wall time of the whole call (listing, pool/Ray start-up, tokenization, manifest).
    meshes_per_s : float
        ``n_processed / wall_s``.
    n_face_loss : int
        Rows (all runs together) that kept less than ``1 - FACE_LOSS_WARN`` of their source faces.
    warnings : list of str
        What this call warned about (also issued with :func:`warnings.warn`).
    """

    out_dir: str
    engine: str
    workers: int
    n_files: int = 0
    n_ok: int = 0
    n_failed: int = 0
    n_processed: int = 0
    n_shards: int = 0
    n_shards_skipped: int = 0
    wall_s: float = 0.0
    meshes_per_s: float = 0.0
    config_hash: str = ""
    n_face_loss: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.n_ok} meshes tokenized, {self.n_failed} failed ({self.n_files} in plan, {self.n_processed} "
            f"processed now in {self.wall_s:.1f} s, {self.meshes_per_s:.1f} meshes/s, {self.n_shards_skipped}/"
            f"{self.n_shards} shards already done) -> {self.out_dir}"
        )


def import_plugins(plugins: Sequence[str]) -> None:
    """Import modules for their side effects (``@register_tokenizer``)."""
    for name in plugins:
        importlib.import_module(name)


def list_mesh_files(input_dir: str | Path) -> list[str]:
    """Relative POSIX paths of every mesh file below ``input_dir`` (suffix in MESH_SUFFIXES), sorted.

    Hidden files and directories (name starting with ``.``) are skipped; symbolic links to
    directories are not followed.

    Raises
    ------
    BatchError
        A folder below ``input_dir`` (or ``input_dir`` itself) cannot be listed, e.g. for lack of
        permission: the run would otherwise silently miss its meshes.
    """
    root = Path(input_dir)

    def unreadable(exc: OSError) -> None:
        raise BatchError(f"cannot list input folder {exc.filename} ({exc.strerror or _one_line(exc)}); "
                         f"make it readable, or move it out of {root}")

    found = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in MESH_SUFFIXES:
                found.append((Path(dirpath) / name).relative_to(root).as_posix())
    return sorted(found)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def failures_name(index: int) -> str:
    return f"shard-{index:05d}.failures.jsonl"


def _write_text(path: Path, text: str) -> None:
    """Atomic write; ``atomic_path`` gives the file the usual permissions (``0o666`` less the umask)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _config_json(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


# ---- one writer per output directory ------------------------------------------------------------------

#: File descriptors of the locks this process holds; a forked child (a pool worker) closes its copies.
_HELD_LOCKS: set[int] = set()


def _close_inherited_locks() -> None:
    """In a forked child: close the copies of the parent's lock descriptors, so that the lock ends with the
    parent. (Closing a copy does not release the parent's lock; only ``LOCK_UN`` or its last close would.)"""
    for fd in _HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


def _lock_holder(path: Path) -> str:
    """``pid P on HOST since TIME`` from a lock file being written by its holder (retried briefly)."""
    for _ in range(20):
        with contextlib.suppress(OSError, ValueError):
            info = json.loads(path.read_text(encoding="utf-8"))
            return f"pid {info['pid']} on {info['host']} since {info['started']}"
        time.sleep(0.025)
    return "pid unknown"


@contextlib.contextmanager
def lock_output_dir(out_dir: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out_dir`` (``flock`` on ``out_dir/batch.lock``) for the ``with`` block.

    The lock file holds ``{"pid", "host", "started"}`` of the holder and is removed on release. The
    kernel releases a ``flock`` when its holder dies, even by ``SIGKILL``, so a lock file left behind
    by a killed run is stale and the next run takes it over. On network file systems the lock works
    where ``flock`` does across hosts (NFS since Linux 2.6.12). Where ``fcntl`` does not exist
    (Windows) nothing is locked and a warning says so.

    Raises
    ------
    BatchError
        Another process holds the lock; the message names the folder and the holder's pid.
    """
    try:
        import fcntl
    except ImportError:
        warnings.warn(f"{out_dir}: not locked (no fcntl on this platform); do not start two runs into it at once",
                      stacklevel=3)
        yield
        return
    path = Path(out_dir) / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BatchError(f"{out_dir}: another batch run is writing to this folder ({_lock_holder(path)}); "
                             "wait for it to finish, or use another output folder") from None
        try:  # the file we locked may have been released and removed by its holder meanwhile: lock the new one
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    _HELD_LOCKS.add(fd)
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)  # while still locked, so no other run can hold the file we remove
        _HELD_LOCKS.discard(fd)
        os.close(fd)


# ---- tokenizing one file and writing one shard ------------------------------------------------------


def _run_test_hooks(rel: str) -> None:
    """Test-only: sleep ``DELAY_ENV`` seconds; in a pool worker, die on a file whose id contains ``CRASH_ENV``."""
    delay = float(os.environ.get(DELAY_ENV) or 0.0)
    if delay > 0:
        time.sleep(delay)
    crash_on = os.environ.get(CRASH_ENV)
    if crash_on and _IN_POOL_WORKER and crash_on in rel:
        os._exit(1)


def _tokenize_one(tok: MeshTokenizer, job: BatchJob, rel: str) -> tuple[dict | None, dict | None]:
    """Tokenize one file: ``(row, None)`` on success, ``(None, failure)`` otherwise.

    The mesh is read as loaded (its face count is the row's ``n_source_faces``), then cleaned up as
    ``load_mesh`` does and encoded.
    """
    _run_test_hooks(rel)
    path = Path(job.input_dir) / rel
    try:
        loaded = load_mesh(path, max_faces=job.max_faces, clean=False)
        enc = tok.encode(canonicalize(loaded, source=path), source=path)
    except MeshgenError as exc:
        return None, {"id": rel, "path": str(path), "error": str(exc)}
    except Exception as exc:  # one bad file must never stop the run; the type is kept in the message
        return None, {"id": rel, "path": str(path), "error": f"{path}: unexpected {type(exc).__name__}: {exc}"}
    row = {
        "id": rel,
        "source": str(path),
        "ids": np.asarray(enc.ids, dtype=np.int32),
        "n_faces": int(enc.n_faces),
        "n_vertices": int(enc.n_vertices),
        "normalization": enc.normalization.to_dict(),
        "n_source_faces": len(loaded.faces),
    }
    return row, None


def _tokenize_files(tok: MeshTokenizer, job: BatchJob, ids: Sequence[str],
                    progress: _Progress | None = None) -> tuple[list[dict], list[dict]]:
    """Tokenize ``ids`` in order: ``(rows, failures)``; ``progress`` is advanced after every file."""
    rows, failures = [], []
    for rel in ids:
        row, failure = _tokenize_one(tok, job, rel)
        if row is not None:
            rows.append(row)
        else:
            failures.append(failure)
        if progress is not None:
            progress.advance(int(row is not None), int(failure is not None))
    return rows, failures


def _shard_table(rows: Sequence[dict], tok_config: dict) -> pa.Table:
    """Rows of one shard -> a table with SHARD_SCHEMA."""
    lengths = np.array([len(r["ids"]) for r in rows], dtype=np.int32)
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate([r["ids"] for r in rows]).astype(np.int32) if rows else np.zeros(0, np.int32)
    config_json = _config_json(tok_config)
    n = len(rows)
    columns = {
        "id": pa.array([r["id"] for r in rows], pa.string()),
        "source": pa.array([r["source"] for r in rows], pa.string()),
        "ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
        "n_tokens": pa.array(lengths, pa.int32()),
        "n_faces": pa.array([r["n_faces"] for r in rows], pa.int32()),
        "n_vertices": pa.array([r["n_vertices"] for r in rows], pa.int32()),
        "tokenizer": pa.array([tok_config["name"]] * n, pa.string()),
        "tokenizer_config": pa.array([config_json] * n, pa.string()),
        "config_hash": pa.array([config_hash(tok_config)] * n, pa.string()),
        "normalization": pa.array([r["normalization"] for r in rows], NORMALIZATION_TYPE),
        "n_source_faces": pa.array([r["n_source_faces"] for r in rows], pa.int32()),
    }
    return pa.Table.from_pydict(columns, schema=SHARD_SCHEMA)


def write_shard(out_dir: str | Path, index: int, rows: Sequence[dict], failures: Sequence[dict], tok_config: dict) -> None:
    """Write work unit ``index``: its failure sidecar, then its Parquet shard, each atomically.

    The shard's existence marks the unit complete, so it is written last.
    """
    out_dir = Path(out_dir)
    _write_text(out_dir / failures_name(index), "".join(json.dumps(f) + "\n" for f in failures))
    meta = {"format": FORMAT_VERSION, "shard": index, "tokenizer_config": tok_config,
            "config_hash": config_hash(tok_config), "n_rows": len(rows), "n_failed": len(failures)}
    table = _shard_table(rows, tok_config).replace_schema_metadata({SHARD_METADATA_KEY: json.dumps(meta).encode()})
    with atomic_path(out_dir / shard_name(index)) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def run_shard(job: BatchJob, task: ShardTask, tok: MeshTokenizer | None = None) -> tuple[int, int]:
    """Tokenize one work unit and write its shard; returns ``(n_ok, n_failed)``."""
    tok = tok if tok is not None else job.tokenizer.build()
    rows, failures = _tokenize_files(tok, job, task.ids)
    write_shard(job.out_dir, task.index, rows, failures, tok.config)
    return len(rows), len(failures)


def shard_complete(out_dir: str | Path, index: int) -> bool:
    out_dir = Path(out_dir)
    return (out_dir / shard_name(index)).is_file() and (out_dir / failures_name(index)).is_file()


# ---- progress ----------------------------------------------------------------------------------------


class _Progress:
    """A rich progress bar (meshes, meshes/s, failures) on stderr, or nothing.

    The bar (and its refresh thread) starts at the first update, after the process pool has forked.
    """

    def __init__(self, total: int, *, enabled: bool):
        self.total, self.enabled, self.n_failed = total, enabled, 0
        self._bar = self._task = None

    def __enter__(self) -> _Progress:
        return self

    def _start(self) -> None:
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
                             TimeRemainingColumn(), console=Console(stderr=True))
        self._bar.__enter__()
        self._task = self._bar.add_task("tokenizing", total=self.total)

    def advance(self, n_ok: int, n_failed: int) -> None:
        self.n_failed += n_failed
        if self.enabled and self._bar is None:
            self._start()
        if self._bar is not None:
            self._bar.update(self._task, advance=n_ok + n_failed, description=f"tokenizing ({self.n_failed} failed)")

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


class _RateColumn(ProgressColumn):
    """Average meshes per second since the start."""

    def render(self, task) -> Text:
        elapsed = task.elapsed or 0.0
        rate = task.completed / elapsed if elapsed > 0 else 0.0
        return Text(f"{rate:.1f} meshes/s", style="progress.data.speed")


# ---- engines -----------------------------------------------------------------------------------------

_WORKER_TOKENIZER: MeshTokenizer | None = None
#: Why ``_init_worker`` could not build the tokenizer; :func:`_worker_tokenize` reports it to the parent.
_WORKER_INIT_ERROR: str | None = None
#: True in a process-pool worker (set by ``_init_worker``), never in the calling process.
_IN_POOL_WORKER = False


def _exit_with_parent() -> None:
    """In a pool worker: exit as soon as the parent process dies (e.g. SIGKILL), instead of lingering."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()  # returns when the parent's sentinel closes
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _init_worker(spec: TokenizerSpec) -> None:
    """Pool initializer: build the tokenizer once per worker.

    An error is kept and raised by every task of this worker: a worker that exits here would break the
    pool, and the parent would take that for a crash on the file the worker was given.
    """
    global _WORKER_TOKENIZER, _WORKER_INIT_ERROR, _IN_POOL_WORKER
    _IN_POOL_WORKER = True
    _exit_with_parent()
    try:
        _WORKER_TOKENIZER = spec.build()
    except Exception as exc:  # raised again, with its type, by _worker_tokenize in the parent
        _WORKER_INIT_ERROR = f"{type(exc).__name__}: {exc}"


def _worker_tokenize(job: BatchJob, ids: tuple[str, ...]) -> tuple[list[dict], list[dict]]:
    if _WORKER_TOKENIZER is None:
        raise RuntimeError(f"pool worker could not build the tokenizer ({_WORKER_INIT_ERROR or 'not initialized'})")
    return _tokenize_files(_WORKER_TOKENIZER, job, ids)


def _chunk_size(n_files: int, workers: int, shard_size: int) -> int:
    """Files per pool task: small enough that every worker gets several tasks, at most 32."""
    return max(1, min(shard_size, 32, math.ceil(n_files / (4 * workers))))


def _pool_context():
    """``fork`` when this process runs no other thread (fast, and needs no ``__main__`` guard), else
    ``forkserver`` (preloading this module), else ``spawn``."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    if "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return multiprocessing.get_context("spawn")


@dataclass(frozen=True, order=True)
class _Piece:
    """A pool task: the files ``ids`` of work unit ``index``, from position ``offset`` in the unit.

    An ``alone`` piece runs with no other task in flight, so a worker death while it runs is its file's doing.
    """

    index: int
    offset: int
    ids: tuple[str, ...]
    alone: bool = False


PieceResult = tuple[_Piece, tuple[list[dict], list[dict]]]


def _run_local(job: BatchJob, tasks: Sequence[ShardTask], workers: int, shard_size: int, progress: _Progress,
               tok: MeshTokenizer) -> None:
    """Inline for one worker; otherwise a process pool over chunks of files, shards written here."""
    if workers == 1:
        for task in tasks:
            rows, failures = _tokenize_files(tok, job, task.ids, progress)
            write_shard(job.out_dir, task.index, rows, failures, tok.config)
        return
    chunk = _chunk_size(sum(len(t.ids) for t in tasks), workers, shard_size)
    pieces = [_Piece(t.index, j, t.ids[j:j + chunk]) for t in tasks for j in range(0, len(t.ids), chunk)]
    left = {t.index: len(t.ids) for t in tasks}
    done: dict[int, dict[int, tuple[list[dict], list[dict]]]] = {t.index: {} for t in tasks}
    for piece, (rows, failures) in _pool_map(job, pieces, workers):
        progress.advance(len(rows), len(failures))
        done[piece.index][piece.offset] = (rows, failures)
        left[piece.index] -= len(piece.ids)
        if left[piece.index] == 0:
            _write_pieces(job, piece.index, done.pop(piece.index), tok.config)


def _write_pieces(job: BatchJob, index: int, parts: dict[int, tuple[list[dict], list[dict]]], tok_config: dict) -> None:
    """Write work unit ``index`` from the results of its pieces, keyed by offset (so rows keep the file order)."""
    ordered = [parts[offset] for offset in sorted(parts)]
    write_shard(job.out_dir, index, [r for rows, _ in ordered for r in rows],
                [f for _, failures in ordered for f in failures], tok_config)


def _pool_map(job: BatchJob, pieces: Sequence[_Piece], workers: int) -> Iterator[PieceResult]:
    """Run ``pieces`` on a process pool; yield ``(piece, (rows, failures))`` as they finish, in any order.

    A worker that dies (segfault, out-of-memory kill) breaks the pool and fails every task in flight.
    A new pool then runs those tasks again one file per task; a file whose task breaks the pool again
    runs alone, and a file whose task breaks the pool while it runs alone becomes a failure
    (:data:`WORKER_DIED`). Then the run goes on, with every other file tokenized as usual.
    """
    context = _pool_context()  # once: later pools use the same start method (and see the same environment)
    todo = deque(pieces)
    while todo:
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                 initargs=(job.tokenizer,)) as pool:
            broken = yield from _drain(pool, job, todo, 2 * workers)
        retry, culprits = _split_broken(broken)
        for piece in culprits:
            yield piece, ([], [_worker_died(job, piece.ids[0])])
        todo.extendleft(reversed(retry))


def _drain(pool: ProcessPoolExecutor, job: BatchJob, todo: deque[_Piece],
           max_in_flight: int) -> Generator[PieceResult, None, list[_Piece]]:
    """Submit pieces from the front of ``todo`` and yield their results until ``todo`` is done or the pool breaks.

    Returns
    -------
    list of _Piece
        The pieces that were in flight when the pool broke (empty when it did not).
    """
    pending: dict[Future, _Piece] = {}
    try:
        while True:
            pool_ok = _submit_ready(pool, job, todo, pending, max_in_flight)
            if not pending:
                return []
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            broken = yield from _collect(finished, pending)
            if broken or not pool_ok:
                finished, _ = wait(pending)  # a broken pool ends all its other tasks at once
                return broken + (yield from _collect(finished, pending))
    finally:
        for fut in pending:
            fut.cancel()


def _submit_ready(pool: ProcessPoolExecutor, job: BatchJob, todo: deque[_Piece], pending: dict[Future, _Piece],
                  max_in_flight: int) -> bool:
    """Submit pieces from the front of ``todo`` while :func:`_may_submit` allows; False if the pool is broken."""
    while todo and _may_submit(todo[0], pending, max_in_flight):
        piece = todo.popleft()
        try:
            pending[pool.submit(_worker_tokenize, job, piece.ids)] = piece
        except BrokenProcessPool:  # broke since the last wait; the piece did not run
            todo.appendleft(piece)
            return False
    return True


def _may_submit(piece: _Piece, pending: dict[Future, _Piece], max_in_flight: int) -> bool:
    """An ``alone`` piece runs by itself; other pieces run at most ``max_in_flight`` at a time."""
    if piece.alone:
        return not pending
    return len(pending) < max_in_flight and not any(p.alone for p in pending.values())


def _collect(finished: set[Future], pending: dict[Future, _Piece]) -> Generator[PieceResult, None, list[_Piece]]:
    """Yield the results of ``finished`` (removed from ``pending``); return the pieces lost to a broken pool."""
    broken = []
    for fut in finished:
        piece = pending.pop(fut)
        try:
            result = fut.result()
        except BrokenProcessPool:
            broken.append(piece)
        else:
            yield piece, result
    return broken


def _split_broken(broken: Sequence[_Piece]) -> tuple[list[_Piece], list[_Piece]]:
    """The pieces in flight when the pool broke -> ``(pieces to run again, culprits)``.

    A piece of several files becomes one piece per file; a one-file piece that ran beside others runs
    again alone (these first); a piece that ran alone broke the pool by itself: its file is the culprit.
    """
    retry, culprits = [], []
    for piece in sorted(broken):
        if piece.alone:
            culprits.append(piece)
        elif len(piece.ids) > 1:
            retry += [_Piece(piece.index, piece.offset + k, (rel,)) for k, rel in enumerate(piece.ids)]
        else:
            retry.append(replace(piece, alone=True))
    return sorted(retry, key=lambda p: not p.alone), culprits


def _worker_died(job: BatchJob, rel: str) -> dict:
    """The failure line of a file whose pool worker died while tokenizing it."""
    path = Path(job.input_dir) / rel
    return {"id": rel, "path": str(path), "error": f"{path}: {WORKER_DIED}"}


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise BatchError(f"the ray engine needs Ray ({exc}); install it with: {RAY_INSTALL_HINT}") from exc
    return ray


def _ray_shard(item: dict, *, job: BatchJob) -> dict:
    """Ray Data map function: one work unit in, its counts out (the shard is written by the task)."""
    task = ShardTask(int(item["index"]), tuple(str(x) for x in item["ids"]))
    n_ok, n_failed = run_shard(job, task)
    return {"index": task.index, "n_ok": n_ok, "n_failed": n_failed}


def _check_loopback(host: str | None = None, timeout_s: float = 2.0) -> None:
    """Raise :class:`BatchError` unless this process can open a TCP connection to itself on ``host``.

    A local Ray talks to itself over ``RAY_LOOPBACK`` (the default ``host``); without a working
    loopback interface ``ray.init`` waits for its own GCS for minutes, in native code that no signal
    handler interrupts. (Binding alone is not a test: it succeeds while the interface is down.)
    """
    host = host or RAY_LOOPBACK
    try:
        with socket.socket() as server, socket.socket() as client:
            server.bind((host, 0))
            server.listen(1)
            client.settimeout(timeout_s)
            client.connect(server.getsockname())
    except OSError as exc:
        raise BatchError(
            f"cannot start a local Ray: no TCP connection to {host} ({exc.strerror or _one_line(exc)}); bring up "
            "the loopback interface (ip link set lo up), use --engine local, or give --address of a running cluster"
        ) from None


#: Run by :class:`_RayReaper` as ``python -c``: reads "PID STARTTIME" lines; on end of input (its parent
#: died) SIGKILLs each process that still has that start time, on "done" exits without killing.
_REAPER_SOURCE = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
procs = {}
for line in sys.stdin:
    if line == "done\\n":
        sys.exit(0)
    pid, start = line.split()
    procs[int(pid)] = start
for pid, start in procs.items():
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[19] == start:
                os.kill(pid, signal.SIGKILL)
    except (OSError, IndexError):
        pass
"""


def _process_table() -> dict[int, tuple[int, str]]:
    """Linux: ``pid -> (parent pid, start time in clock ticks)`` of every process."""
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    stat = f.read().rsplit(")", 1)[1].split()  # fields 3.. (the name may hold spaces)
            except OSError:
                continue
            table[int(entry.name)] = (int(stat[1]), stat[19])
    return table


def _descendants(pid: int) -> dict[int, str]:
    """Linux: ``pid -> start time`` of every process below ``pid``."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for child, (parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    found, todo = {}, list(children.get(pid, ()))
    while todo:
        child = todo.pop()
        found[child] = table[child][1]
        todo += children.get(child, ())
    return found


class _RayReaper:
    """Kills the processes of a local Ray started by this process if this process dies without shutting it down.

    Ray ties its GCS and raylet to the driver (``PR_SET_PDEATHSIG``), but agents and workers started by
    the raylet outlive a ``SIGKILL``-ed driver by a minute or more. The reaper, a small child process,
    is sent the new descendants of this process (those that were not there before ``ray.init``), and
    kills them when its input ends without a ``done`` line. Linux only (``/proc``).
    """

    def __init__(self, before: dict[int, str]):
        self._sent = dict(before)
        self._proc = subprocess.Popen([sys.executable, "-c", _REAPER_SOURCE], stdin=subprocess.PIPE, text=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.watch()

    @staticmethod
    def supported() -> bool:
        return sys.platform.startswith("linux") and Path("/proc/self/stat").exists()

    def watch(self) -> None:
        """Send the processes that appeared below this one since the last call."""
        new = {pid: start for pid, start in _descendants(os.getpid()).items()
               if self._sent.get(pid) != start and pid != self._proc.pid}
        if new:
            with contextlib.suppress(OSError):  # a reaper killed by someone else must not end the run
                self._proc.stdin.write("".join(f"{pid} {start}\n" for pid, start in new.items()))
                self._proc.stdin.flush()
            self._sent.update(new)

    def close(self) -> None:
        """Ray was shut down: let the reaper exit without killing anything."""
        with contextlib.suppress(OSError):
            self._proc.stdin.write("done\n")
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def _exit_on_sigterm(signum, frame) -> None:
    """SIGTERM handler while a local Ray runs: unwind (so ``ray.shutdown`` runs), exit status 128 + 15."""
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _ray_session(address: str | None, workers: int) -> Iterator[tuple[object, Callable[[], None]]]:
    """Use the running Ray instance, or start one (local, or connected to ``address``) for this call.

    Yields ``(ray, watch)``; call ``watch()`` now and then so the reaper of a local Ray knows its
    latest processes. A Ray started here is shut down when the block ends, by return, exception or
    SIGTERM (turned into ``SystemExit(143)`` meanwhile), and by :class:`_RayReaper` if this process is
    killed. A local Ray is started only after :func:`_check_loopback`, on ``127.0.0.1``.
    """
    ray = _import_ray()
    if ray.is_initialized():
        yield ray, lambda: None
        return
    kwargs: dict = {"include_dashboard": False, "log_to_driver": False}
    if address is not None:
        kwargs["address"] = address
    else:
        _check_loopback()
        kwargs.update(num_cpus=workers, _node_ip_address=RAY_LOOPBACK)
    use_reaper = address is None and _RayReaper.supported()
    before = _descendants(os.getpid()) if use_reaper else {}
    main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main else None
    try:
        ray.init(**kwargs)
    except Exception as exc:  # Ray raises many types (ConnectionError, RuntimeError, ValueError ...); one line each
        with contextlib.suppress(Exception):
            ray.shutdown()
        if main and sigterm is not None:  # ray.init replaces the SIGTERM handler
            signal.signal(signal.SIGTERM, sigterm)
        where = f"at {address}" if address is not None else "locally"
        raise BatchError(f"could not start Ray {where}: {type(exc).__name__}: {_one_line(exc)}") from exc
    reaper = None
    try:
        if main:
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
        reaper = _RayReaper(before) if use_reaper else None
        yield ray, (reaper.watch if reaper is not None else lambda: None)
    finally:
        try:
            ray.shutdown()
        finally:
            if reaper is not None:
                reaper.close()
            if main and sigterm is not None:
                signal.signal(signal.SIGTERM, sigterm)


def _run_ray(job: BatchJob, tasks: Sequence[ShardTask], workers: int, address: str | None,
             progress: _Progress, *, unlimited: bool) -> None:
    """Ray Data maps :func:`run_shard` over the work units; each task writes its shard like the local engine."""
    if not tasks:
        return
    with _ray_session(address, workers) as (ray, watch):
        ctx = ray.data.DataContext.get_current()
        ray_bars, ctx.enable_progress_bars = ctx.enable_progress_bars, False
        try:
            items = [{"index": t.index, "ids": list(t.ids)} for t in tasks]
            ds = ray.data.from_items(items, override_num_blocks=len(items))
            ds = ds.map(_ray_shard, fn_kwargs={"job": job}, num_cpus=1, concurrency=None if unlimited else workers)
            for out in ds.iter_rows():
                watch()
                progress.advance(int(out["n_ok"]), int(out["n_failed"]))
        finally:
            ctx.enable_progress_bars = ray_bars


# ---- plan, manifest, failures ------------------------------------------------------------------------


def _remove_temp_files(out_dir: Path) -> None:
    """Delete temporaries left by a killed run (``.shard-*``, ``.manifest.json.*`` ...)."""
    for p in out_dir.glob(".*"):
        if p.is_file() and any(p.name.startswith(f".{stem}") for stem in ("shard-", PLAN_NAME, MANIFEST_NAME,
                                                                             FAILURES_NAME)):
            p.unlink(missing_ok=True)


def _load_or_create_plan(out_dir: Path, tok_config: dict, shard_size: int, max_faces: int | None,
                         input_dir: Path) -> BatchPlan:
    """The saved plan (validated, and checked against the arguments and the input) or a new one."""
    files = list_mesh_files(input_dir)
    if not (out_dir / PLAN_NAME).exists():
        if any(out_dir.glob("shard-*.parquet")):
            raise BatchError(f"{out_dir}: has shards but no {PLAN_NAME}; use an empty output directory")
        plan = BatchPlan(tok_config, shard_size, max_faces, files, str(input_dir), ids_sha256=ids_digest(files))
        _write_text(out_dir / PLAN_NAME, plan.to_json())
        return plan
    plan = BatchPlan.load(out_dir)
    _check_plan(out_dir, plan, tok_config, shard_size, max_faces, input_dir, files)
    return plan


def _examples(ids: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(repr(rel) for rel in sorted(ids)[:n])
    return shown + (f" and {len(ids) - n} more" if len(ids) > n else "")


def _check_plan(out_dir: Path, plan: BatchPlan, tok_config: dict, shard_size: int, max_faces: int | None,
                input_dir: Path, files: Sequence[str]) -> None:
    """Refuse to resume unless the input folder, its mesh files and every setting are those of the plan.

    Raises
    ------
    BatchError
        Naming everything that differs, and the fix: the same arguments, a new output folder, or
        deleting this one.
    """
    diffs = []
    other_folder = bool(plan.input_dir) and plan.input_dir != str(input_dir)
    if other_folder:
        diffs.append(f"input folder {plan.input_dir}, not {input_dir}")
    if _config_json(plan.tokenizer_config) != _config_json(tok_config):
        diffs.append(f"tokenizer {_config_json(plan.tokenizer_config)}, not {_config_json(tok_config)}")
    if plan.shard_size != shard_size:
        diffs.append(f"shard_size={plan.shard_size}, not {shard_size}")
    if plan.max_faces != max_faces:
        diffs.append(f"max_faces={plan.max_faces}, not {max_faces}")
    if not other_folder and plan.ids != list(files):
        new, missing = sorted(set(files) - set(plan.ids)), sorted(set(plan.ids) - set(files))
        changes = ([f"{len(new)} new ({_examples(new)})"] if new else []) + (
            [f"{len(missing)} gone ({_examples(missing)})"] if missing else [])
        diffs.append(f"other input files: since then {input_dir} has {' and '.join(changes)} mesh files")
    if diffs:
        raise BatchError(f"{out_dir} was made with {'; '.join(diffs)}; resume with the same input and settings, "
                         f"or {_START_OVER}")


def _read_sidecar(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _face_loss(path: Path) -> list[dict]:
    """Rows of a shard that kept less than ``1 - FACE_LOSS_WARN`` of their source faces (none in format-1 shards)."""
    if "n_source_faces" not in pq.read_schema(path).names:
        return []
    table = pq.read_table(path, columns=["id", "n_faces", "n_source_faces"]).to_pydict()
    return [{"id": rel, "n_source_faces": src, "n_faces": kept}
            for rel, kept, src in zip(table["id"], table["n_faces"], table["n_source_faces"], strict=True)
            if src and kept < (1.0 - FACE_LOSS_WARN) * src]


def rebuild_manifest(out_dir: str | Path) -> dict:
    """Recompute ``manifest.json`` and ``failures.jsonl`` from ``plan.json``, the shards and their sidecars.

    Takes the output lock (:func:`lock_output_dir`), so it refuses while a run writes to ``out_dir``.

    Returns
    -------
    dict
        The manifest: ``tokenizer`` (config), ``config_hash``, ``shard_size``, ``max_faces``, ``n_files``,
        ``n_shards``, ``complete`` (every unit done), ``n_rows`` (ids with a row), ``n_failed``, ``n_done``
        (ids with a row or a failure), ``shards`` (``file``, ``rows``, ``failed`` per complete shard),
        ``face_loss`` (``threshold``, ``n_meshes`` over it, ``worst``: up to ``FACE_LOSS_EXAMPLES`` of
        ``{id, n_source_faces, n_faces}``).
    """
    with lock_output_dir(out_dir):
        return _rebuild_manifest(Path(out_dir))


def _rebuild_manifest(out_dir: Path) -> dict:
    """:func:`rebuild_manifest` for a caller that holds the lock."""
    plan = BatchPlan.load(out_dir)
    shards, failures, lossy = [], [], []
    for task in plan.tasks():
        if not shard_complete(out_dir, task.index):
            continue
        fails = _read_sidecar(out_dir / failures_name(task.index))
        rows = pq.ParquetFile(out_dir / shard_name(task.index)).metadata.num_rows
        shards.append({"file": shard_name(task.index), "index": task.index, "files": len(task.ids), "rows": rows,
                       "failed": len(fails)})
        failures.extend(fails)
        lossy.extend(_face_loss(out_dir / shard_name(task.index)))
    n_rows, n_failed = sum(s["rows"] for s in shards), len(failures)
    lossy.sort(key=lambda r: (r["n_faces"] / r["n_source_faces"], r["id"]))
    manifest = {
        "format": FORMAT_VERSION,
        "tokenizer": plan.tokenizer_config,
        "config_hash": config_hash(plan.tokenizer_config),
        "shard_size": plan.shard_size,
        "max_faces": plan.max_faces,
        "input_dir": plan.input_dir,
        "n_files": len(plan.ids),
        "n_shards": plan.n_shards,
        "complete": len(shards) == plan.n_shards,
        "n_rows": n_rows,
        "n_failed": n_failed,
        "n_done": n_rows + n_failed,
        "shards": shards,
        "face_loss": {"threshold": FACE_LOSS_WARN, "n_meshes": len(lossy), "worst": lossy[:FACE_LOSS_EXAMPLES]},
    }
    _write_text(out_dir / FAILURES_NAME, "".join(json.dumps(f) + "\n" for f in failures))
    _write_text(out_dir / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")
    return manifest


def _face_loss_warning(manifest: dict) -> str | None:
    loss = manifest["face_loss"]
    if not loss["n_meshes"]:
        return None
    worst = ", ".join(f"{r['id']} {r['n_source_faces']} -> {r['n_faces']}" for r in loss["worst"][:3])
    bits = manifest["tokenizer"].get("bits")
    return (f"{loss['n_meshes']} of {manifest['n_rows']} meshes kept less than {1 - loss['threshold']:.0%} of their "
            f"faces after clean-up and quantization{f' at {bits} bits' if bits else ''} (worst: {worst}); "
            "see the n_source_faces column and face_loss in manifest.json; more bits keep more faces")


# ---- entry point ---------------------------------------------------------------------------------------


def _check_args(input_dir: Path, out_dir: Path, engine: str, workers: int, shard_size: int,
                max_faces: int | None) -> None:
    if not input_dir.exists():
        raise MeshInputError(input_dir, "input directory does not exist")
    if not input_dir.is_dir():
        raise MeshInputError(input_dir, "is a file, expected a directory of meshes")
    if out_dir.exists() and not out_dir.is_dir():
        raise BatchError(f"output folder {out_dir} is a file")
    if engine not in ENGINES:
        raise BatchError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if not isinstance(workers, int) or workers < 0:
        raise BatchError(f"workers must be a non-negative integer (0 = all CPUs), got {workers!r}")
    if not isinstance(shard_size, int) or shard_size < 1:
        raise BatchError(f"shard_size must be a positive integer, got {shard_size!r}")
    if max_faces is not None and (not isinstance(max_faces, int) or max_faces < 1):
        raise BatchError(f"max_faces must be a positive integer or None, got {max_faces!r}")


def batch_tokenize(
    input_dir: str | Path,
    out_dir: str | Path,
    *,
    tokenizer: str = "adjacent",
    tokenizer_config: dict | None = None,
    workers: int = 1,
    engine: str = "local",
    address: str | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    max_faces: int | None = None,
    progress: bool = True,
    plugins: Sequence[str] = (),
) -> BatchReport:
    """Tokenize every mesh below ``input_dir`` into Parquet shards in ``out_dir``; resumes a killed run.

    Parameters
    ----------
    input_dir : str or Path
        Walked recursively for files with a suffix in ``MESH_SUFFIXES``; a row's ``id`` is the file's
        path relative to it.
    out_dir : str or Path
        Created if needed, and locked for the call (:func:`lock_output_dir`): a second run into it
        meanwhile raises :class:`BatchError`. If it holds an earlier run (``plan.json``), that run is
        resumed: complete shards are kept, the rest redone. It must have been made from the same input
        folder and mesh files, with the same tokenizer config, ``shard_size`` and ``max_faces``
        (otherwise :class:`BatchError`, which names what differs).
    tokenizer : str
        Registered tokenizer name (``coords``, ``adjacent``, ``blocks`` ...).
    tokenizer_config : dict, optional
        Keyword arguments of the tokenizer, e.g. ``{"bits": 10}``.
    workers : int
        Processes (local) or concurrent Ray tasks; 1 runs inline; 0 means all CPUs (local) or as many as
        the Ray cluster offers.
    engine : {"local", "ray"}
        ``ray`` maps the work units over Ray Data: the running Ray instance if ``ray.init`` was called,
        else a local one with ``workers`` CPUs, or the cluster at ``address``.
    address : str, optional
        Ray cluster address (``ray://host:10001`` or ``auto``); ``out_dir`` must then be on storage every
        node can write.
    shard_size : int
        Files per work unit / shard.
    max_faces : int, optional
        Meshes with more faces fail with a clear message instead of being tokenized.
    progress : bool
        Show a progress bar (meshes, meshes/s, failures) on stderr.
    plugins : sequence of str
        Modules imported in every worker before building the tokenizer (custom ``@register_tokenizer``).

    Returns
    -------
    BatchReport
        Counts, wall time and meshes/s of this call. Meshes that kept less than ``1 - FACE_LOSS_WARN``
        of their source faces (column ``n_source_faces``) are counted in ``n_face_loss`` and warned
        about (``warnings.warn`` and ``BatchReport.warnings``).

    Raises
    ------
    MeshInputError
        ``input_dir`` is missing or not a directory.
    BatchError
        Bad arguments; an input folder that cannot be listed; another run holding ``out_dir``;
        ``out_dir`` made from other input or with other settings; a tampered or unreadable
        ``plan.json``; Ray missing or unable to start.
    """
    start = time.perf_counter()
    input_dir, out_dir = Path(input_dir).resolve(), Path(out_dir).resolve()
    _check_args(input_dir, out_dir, engine, workers, shard_size, max_faces)
    unlimited = workers == 0
    workers = workers or (os.cpu_count() or 1)
    plugins = tuple(plugins)
    import_plugins(plugins)
    tok = get_tokenizer(tokenizer, **(tokenizer_config or {}))
    job = BatchJob(str(input_dir), str(out_dir), TokenizerSpec(tok.config, plugins), max_faces)
    out_dir.mkdir(parents=True, exist_ok=True)
    with lock_output_dir(out_dir):
        _remove_temp_files(out_dir)
        plan = _load_or_create_plan(out_dir, tok.config, shard_size, max_faces, input_dir)
        tasks = plan.tasks()
        pending = [t for t in tasks if not shard_complete(out_dir, t.index)]
        n_pending = sum(len(t.ids) for t in pending)
        with _Progress(n_pending, enabled=progress) as bar:
            if engine == "ray":
                _run_ray(job, pending, workers, address, bar, unlimited=unlimited)
            else:
                _run_local(job, pending, max(1, min(workers, n_pending)), plan.shard_size, bar, tok)
        manifest = _rebuild_manifest(out_dir)
    notes = [note for note in [_face_loss_warning(manifest)] if note]
    for note in notes:
        warnings.warn(note, stacklevel=2)
    wall = time.perf_counter() - start
    return BatchReport(
        out_dir=str(out_dir), engine=engine, workers=workers, n_files=len(plan.ids), n_ok=manifest["n_rows"],
        n_failed=manifest["n_failed"], n_processed=n_pending, n_shards=plan.n_shards,
        n_shards_skipped=len(tasks) - len(pending), wall_s=wall, meshes_per_s=n_pending / wall if wall > 0 else 0.0,
        config_hash=manifest["config_hash"], n_face_loss=manifest["face_loss"]["n_meshes"], warnings=notes,
    )


def benchmark_batch(input_dir: str | Path, *, workers: Sequence[int] = (1, 2), tokenizer: str = "adjacent",
                    tokenizer_config: dict | None = None, engine: str = "local", shard_size: int = DEFAULT_SHARD_SIZE,
                    max_faces: int | None = None) -> list[BatchReport]:
    """Time fresh batch runs (one per entry of ``workers``) into temporary directories, deleted afterwards.

    The first few meshes are tokenized and written to a throwaway shard once, untimed, so one-off
    costs (lazy imports of trimesh loaders, Parquet writer set-up) are not charged to the first run.

    Returns
    -------
    list of BatchReport
        One per worker count; ``meshes_per_s`` includes pool / Ray start-up.
    """
    import tempfile

    tok = get_tokenizer(tokenizer, **(tokenizer_config or {}))
    with tempfile.TemporaryDirectory(prefix="batch-warmup-") as tmp:
        warm = BatchJob(str(Path(input_dir).resolve()), tmp, TokenizerSpec(tok.config), max_faces)
        run_shard(warm, ShardTask(0, tuple(list_mesh_files(input_dir)[:4])), tok)
    reports = []
    for n in workers:
        with tempfile.TemporaryDirectory(prefix="batch-bench-") as tmp:
            reports.append(batch_tokenize(input_dir, Path(tmp) / "shards", tokenizer=tokenizer,
                                          tokenizer_config=tokenizer_config, workers=n, engine=engine,
                                          shard_size=shard_size, max_faces=max_faces, progress=False))
    return reports
