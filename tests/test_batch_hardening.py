"""Batch tokenization under abuse: concurrent runs, kills at random moments, tampered plans, lost faces, Ray start-up.

The expected rows are computed here, file by file, with ``tok.encode(load_mesh(path))`` and face counts
read with trimesh directly; the batch runs (often in subprocesses that get killed) must match them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import trimesh

import tokenizers3d.batch as batch
from tokenizers3d.base import get_tokenizer
from tokenizers3d.batch import (
    DELAY_ENV,
    LOCK_NAME,
    PLAN_NAME,
    BatchError,
    batch_tokenize,
    ids_digest,
    lock_output_dir,
    rebuild_manifest,
)
from tokenizers3d.io import load_mesh
from tokenizers3d.shards import TokenShardDataset, read_shards

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "batch_tokenize.py"
TOKENIZER, BITS, SHARD_SIZE = "coords", 7, 3
KWARGS = {"tokenizer": TOKENIZER, "tokenizer_config": {"bits": BITS}, "shard_size": SHARD_SIZE, "progress": False}
BAD_IDS = ["bad.obj"]


def _write_meshes(root: Path, meshes: dict[str, trimesh.Trimesh]) -> Path:
    for rel, mesh in meshes.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        mesh.export(root / rel)
    return root


@pytest.fixture(scope="module")
def mesh_dir(tmp_path_factory) -> Path:
    """12 good meshes in nested folders (4 formats) and one garbage .obj: 5 shards of 3."""
    c = trimesh.creation
    meshes = {f"m{k:02d}/box.obj": c.box(extents=(1, 1 + k / 4, 2)) for k in range(4)}
    meshes |= {f"cyl{k}.ply": c.cylinder(radius=0.5, height=1 + k, sections=6 + k) for k in range(3)}
    meshes |= {"cone.stl": c.cone(radius=1, height=2, sections=9), "ico.off": c.icosphere(subdivisions=1),
               "deep/a/b/box.stl": c.box(extents=(3, 1, 1)), "deep/cone.off": c.cone(radius=2, height=1, sections=7),
               "z.obj": c.cylinder(radius=0.1, height=3, sections=5)}
    root = _write_meshes(tmp_path_factory.mktemp("meshes"), meshes)
    (root / "bad.obj").write_bytes(bytes(range(256)) * 4)
    return root


@pytest.fixture(scope="module")
def other_dir(tmp_path_factory) -> Path:
    """Another, smaller dataset (a run of it must never mix into a run of ``mesh_dir``)."""
    c = trimesh.creation
    return _write_meshes(tmp_path_factory.mktemp("other"), {f"other{k}.obj": c.box(extents=(1, 2, 3 + k))
                                                            for k in range(4)})


@pytest.fixture(scope="module")
def expected(mesh_dir) -> dict[str, dict]:
    """Independent reference, per good file: token ids of ``tok.encode(load_mesh(path))`` and the face count
    trimesh reads."""
    tok = get_tokenizer(TOKENIZER, bits=BITS)
    out = {}
    for path in sorted(mesh_dir.rglob("*")):
        rel = path.relative_to(mesh_dir).as_posix()
        if path.is_file() and rel not in BAD_IDS:
            out[rel] = {"ids": tok.encode(load_mesh(path)).ids,
                        "n_source_faces": len(trimesh.load(path, force="mesh", process=False).faces)}
    assert len(out) == 12
    return out


def _cmd(input_dir: Path, out: Path, *, workers: int = 1, engine: str = "local",
         shard_size: int = SHARD_SIZE) -> list[str]:
    return [sys.executable, str(SCRIPT), str(input_dir), "--out", str(out), "-t", TOKENIZER, "--bits", str(BITS),
            "--shard-size", str(shard_size), "--workers", str(workers), "--engine", engine, "--no-progress"]


def _start(cmd: list[str], delay: float) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=dict(os.environ, **{DELAY_ENV: str(delay)}), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(what: str, done, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert proc.poll() is None, f"run ended before {what}: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.01)


def _lock_pid(out: Path) -> int | None:
    try:
        return json.loads((out / LOCK_NAME).read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def _wait_for_lock(out: Path, proc: subprocess.Popen) -> None:
    _wait_for("lock", lambda: _lock_pid(out) == proc.pid, proc)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _open_files(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            found.add(os.readlink(fd))
        except OSError:
            pass
    return found


def _n_shards(out: Path) -> int:
    return len(list(out.glob("shard-*.parquet")))


def _check_complete(out: Path, expected: dict[str, dict]) -> None:
    """Every planned file exactly once, as a row with the reference tokens or as the one expected failure."""
    rows = read_shards(out).to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(expected)
    for row in rows:
        np.testing.assert_array_equal(row["ids"], expected[row["id"]]["ids"], err_msg=row["id"])
        assert row["n_source_faces"] == expected[row["id"]]["n_source_faces"]
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [f["id"] for f in failures] == BAD_IDS
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and (manifest["n_rows"], manifest["n_failed"], manifest["n_files"]) == (12, 1, 13)
    assert not (out / LOCK_NAME).exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


# ---- one writer per output folder ----------------------------------------------------------------------


def test_second_run_into_a_busy_folder_refuses_and_the_first_finishes(mesh_dir, other_dir, expected, tmp_path):
    out = tmp_path / "out"
    first = _start(_cmd(mesh_dir, out), delay=0.4)
    _wait_for_lock(out, first)
    with pytest.raises(BatchError) as info:
        batch_tokenize(other_dir, out, **KWARGS)
    assert str(out) in str(info.value) and f"pid {first.pid} on " in str(info.value)
    cli = subprocess.run([sys.executable, "-m", "meshgen.cli", "batch", "tokenize", str(other_dir), "--out", str(out),
                          "-t", TOKENIZER, "--bits", str(BITS), "--shard-size", str(SHARD_SIZE)],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2, cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 1, cli.stderr
    assert str(out) in cli.stderr and f"pid {first.pid} on " in cli.stderr
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert "12 meshes tokenized, 1 failed" in stdout
    _check_complete(out, expected)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_stale_lock_of_a_killed_run_is_taken_over(mesh_dir, expected, tmp_path):
    """The lock dies with its holder: pool workers (forked) hold no copy, and the lock file left behind is stale."""
    out = tmp_path / "out"
    proc = _start(_cmd(mesh_dir, out, workers=2), delay=0.3)
    _wait_for("a first shard", lambda: (out / "shard-00000.parquet").exists(), proc)
    pool = _children(proc.pid)
    assert len(pool) == 2 and _lock_pid(out) == proc.pid
    lock = str((out / LOCK_NAME).resolve())
    for pid in pool:
        assert lock not in _open_files(pid), "a pool worker holds a copy of the output lock"
    proc.kill()
    proc.wait()
    assert _lock_pid(out) == proc.pid  # the file is still there, the flock is not
    report = batch_tokenize(mesh_dir, out, workers=2, **KWARGS)
    assert (report.n_ok, report.n_failed) == (12, 1)
    _check_complete(out, expected)


def test_lock_is_released_on_error_and_blocks_rebuild_manifest(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RuntimeError), lock_output_dir(out):
        raise RuntimeError("boom")
    assert not (out / LOCK_NAME).exists()
    with lock_output_dir(out):
        holder = json.loads((out / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] and holder["started"]
        with pytest.raises(BatchError, match=f"pid {os.getpid()} on "):
            rebuild_manifest(out)
    with lock_output_dir(out):
        pass


# ---- kills at random moments -----------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume(mesh_dir, expected, tmp_path):
    """Four runs killed at seeded random moments (1 or 2 workers), then one to the end: nothing lost or doubled."""
    rng = random.Random(2)  # targets +0, +1, +1, +0 shards: kills at start-up and in the middle of later units
    out = tmp_path / "out"
    done_at_kill = []
    for workers in (1, 2, 1, 1):
        proc = _start(_cmd(mesh_dir, out, workers=workers), delay=0.2)  # a shard takes >= 0.6 s (0.3 s with 2)
        _wait_for_lock(out, proc)
        # a random moment: 0 or 1 more complete shards (at most 3 of 5), then 0.05 to 0.4 s more
        target = min(_n_shards(out) + rng.randint(0, 1), 3)
        _wait_for(f"{target} shards", lambda t=target: _n_shards(out) >= t, proc)
        time.sleep(rng.uniform(0.05, 0.4))
        assert proc.poll() is None, "the run finished before its kill"
        proc.kill()
        proc.wait()
        assert _lock_pid(out) == proc.pid  # a stale lock, taken over by the next run
        done_at_kill.append(_n_shards(out))
    assert len(set(done_at_kill)) >= 2 and done_at_kill[-1] < 5, done_at_kill  # kills at several stages
    assert not (out / "manifest.json").exists()  # no run got to the end
    final = subprocess.run(_cmd(mesh_dir, out, workers=2), capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    assert "12 meshes tokenized, 1 failed" in final.stdout
    _check_complete(out, expected)


# ---- resume rules and tampered plans ---------------------------------------------------------------------


@pytest.fixture()
def small_run(mesh_dir, tmp_path) -> tuple[Path, Path]:
    """A finished run of 5 meshes (3 shards of 2) from a copy of part of ``mesh_dir``: (input, out)."""
    src = tmp_path / "in"
    for rel in ["cone.stl", "cyl0.ply", "cyl1.ply", "ico.off", "m00/box.obj"]:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(mesh_dir / rel, src / rel)
    out = tmp_path / "out"
    report = batch_tokenize(src, out, **dict(KWARGS, shard_size=2))
    assert (report.n_ok, report.n_shards) == (5, 3)
    return src, out


def _edit_plan(out: Path, edit) -> None:
    plan = json.loads((out / PLAN_NAME).read_text())
    edit(plan)
    (out / PLAN_NAME).write_text(json.dumps(plan))


def _escape(plan: dict, rel: str) -> None:
    plan["ids"] = sorted([rel, *plan["ids"][1:]])
    plan["ids_sha256"] = ids_digest(plan["ids"])  # a consistent edit: the digest alone would not catch it


def _tamper(case: str, src: Path, out: Path, tmp_path: Path) -> tuple[Path, dict]:
    """Spoil ``out`` (or the input) as ``case`` says; returns the input folder and the settings to resume with."""
    secret = tmp_path / "outside" / "secret.obj"
    secret.parent.mkdir()
    trimesh.creation.box().export(secret)
    kwargs = dict(KWARGS, shard_size=2)
    if case == "path-escape":
        _edit_plan(out, lambda p: _escape(p, "../outside/secret.obj"))
    elif case == "absolute-path":
        _edit_plan(out, lambda p: _escape(p, str(secret)))
    elif case == "edited-ids":
        _edit_plan(out, lambda p: p["ids"].__setitem__(0, "aaa.obj"))
    elif case == "bad-json":
        (out / PLAN_NAME).write_text('{"ids": [')
    elif case == "wrong-schema":
        _edit_plan(out, lambda p: p.__setitem__("ids", "cone.stl"))
    elif case == "unknown-key":
        _edit_plan(out, lambda p: p.__setitem__("extra", 1))
    elif case == "new-input-file":
        shutil.copy(secret, src / "new.obj")
    elif case == "input-file-gone":
        (src / "ico.off").unlink()
    elif case == "other-input-folder":
        shutil.copytree(src, tmp_path / "moved")
        src = tmp_path / "moved"
    elif case == "other-settings":
        kwargs["max_faces"] = 1000
    return src, kwargs


TAMPER_CASES = {
    "path-escape": "tampered plan: id '../outside/secret.obj' leads outside the input folder",
    "absolute-path": "is an absolute path",
    "edited-ids": "tampered plan: ids do not match ids_sha256",
    "bad-json": "unreadable plan",
    "wrong-schema": "wrong plan schema (ids must be a list of strings)",
    "unknown-key": "wrong plan schema (unknown key 'extra')",
    "new-input-file": "other input files: since then {src} has 1 new ('new.obj') mesh files",
    "input-file-gone": "has 1 gone ('ico.off') mesh files",
    "other-input-folder": "was made with input folder {src}, not {tmp}/moved",
    "other-settings": "was made with max_faces=None, not 1000",
}


@pytest.mark.parametrize("case", list(TAMPER_CASES))
def test_resume_refuses_a_plan_that_does_not_match_or_was_tampered(case, small_run, tmp_path):
    src, out = small_run
    before = {p.name: p.read_bytes() for p in out.glob("shard-*")}
    resume_src, kwargs = _tamper(case, src, out, tmp_path)
    with pytest.raises(BatchError) as info:
        batch_tokenize(resume_src, out, **kwargs)
    message = str(info.value)
    assert TAMPER_CASES[case].format(src=src.resolve(), tmp=tmp_path.resolve()) in message
    assert str(out) in message and "new output folder" in message and "delete" in message
    assert "\n" not in message
    assert {p.name: p.read_bytes() for p in out.glob("shard-*")} == before  # nothing written
    assert not (out / LOCK_NAME).exists()


def test_cli_refuses_a_tampered_plan_with_one_line(small_run, tmp_path):
    src, out = small_run
    _edit_plan(out, lambda p: _escape(p, "../outside/secret.obj"))
    run = subprocess.run(_cmd(src, out, shard_size=2), capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "leads outside the input folder" in run.stderr


def test_format_1_plan_and_shards_still_resume_and_read(small_run):
    """An output folder of the first format (no ids_sha256, no n_source_faces column) resumes and reads."""
    src, out = small_run
    _edit_plan(out, lambda p: (p.pop("ids_sha256"), p.__setitem__("format", 1)))
    old = out / "shard-00000.parquet"
    table = pq.read_table(old)
    pq.write_table(table.drop_columns(["n_source_faces"]).replace_schema_metadata(table.schema.metadata), old)
    report = batch_tokenize(src, out, **dict(KWARGS, shard_size=2))
    assert (report.n_processed, report.n_ok) == (0, 5)
    faces = read_shards(out).column("n_source_faces").to_pylist()
    assert faces[:2] == [None, None] and all(isinstance(n, int) for n in faces[2:])
    rows = {r["id"]: r for r in TokenShardDataset(out, shuffle=False)}
    assert rows["cone.stl"]["n_source_faces"] is None and rows["ico.off"]["n_source_faces"] == 80
    assert rebuild_manifest(out)["face_loss"]["n_meshes"] == 0


# ---- input listing -------------------------------------------------------------------------------------


def test_unreadable_input_folder_is_an_error_not_a_silent_skip(mesh_dir, tmp_path, monkeypatch):
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path).name == "deep":
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(BatchError, match=f"cannot list input folder {mesh_dir / 'deep'} \\(Permission denied\\)"):
        batch_tokenize(mesh_dir, tmp_path / "out", **KWARGS)
    assert not (tmp_path / "out" / PLAN_NAME).exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads folders without permission")
def test_folder_without_read_permission_is_an_error(tmp_path):
    src = _write_meshes(tmp_path / "in", {"ok.obj": trimesh.creation.box(), "locked/x.obj": trimesh.creation.box()})
    (src / "locked").chmod(0)
    try:
        with pytest.raises(BatchError, match="cannot list input folder"):
            batch_tokenize(src, tmp_path / "out", **KWARGS)
    finally:
        (src / "locked").chmod(0o755)


# ---- faces lost to clean-up and quantization -------------------------------------------------------------


def test_source_face_count_and_face_loss_warning(tmp_path):
    """A box with a speck (an icosphere 1/1000 of its size) loses the speck's faces at 7 bits: warned, counted."""
    speck = trimesh.creation.icosphere(subdivisions=1, radius=1e-3)
    speck.apply_translation((0.2, 0.2, 0.2))
    lossy = trimesh.util.concatenate([trimesh.creation.box(), speck])
    src = _write_meshes(tmp_path / "in", {"lossy.obj": lossy, "plain.obj": trimesh.creation.box()})
    with pytest.warns(UserWarning, match=r"1 of 2 meshes kept less than 95% of their faces .* at 7 bits") as caught:
        report = batch_tokenize(src, tmp_path / "out", **KWARGS)
    assert any("lossy.obj 92 -> " in str(w.message) for w in caught)
    assert report.n_face_loss == 1 and len(report.warnings) == 1
    rows = {r["id"]: r for r in read_shards(tmp_path / "out").to_pylist()}
    assert rows["lossy.obj"]["n_source_faces"] == len(trimesh.load(src / "lossy.obj", force="mesh").faces) == 92
    assert rows["lossy.obj"]["n_faces"] < 0.95 * 92
    assert rows["plain.obj"]["n_source_faces"] == rows["plain.obj"]["n_faces"] == 12
    loss = json.loads((tmp_path / "out" / "manifest.json").read_text())["face_loss"]
    assert (loss["threshold"], loss["n_meshes"]) == (0.05, 1)
    assert loss["worst"] == [{"id": "lossy.obj", "n_source_faces": 92, "n_faces": rows["lossy.obj"]["n_faces"]}]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*kept less than")
        clean = batch_tokenize(_write_meshes(tmp_path / "in2", {"plain.obj": trimesh.creation.box()}),
                               tmp_path / "out2", **KWARGS)
    assert clean.n_face_loss == 0 and clean.warnings == []


# ---- Ray start-up and shutdown ---------------------------------------------------------------------------


def test_ray_without_loopback_fails_within_seconds(mesh_dir, tmp_path, monkeypatch):
    pytest.importorskip("ray.data", reason="Ray not installed (pip install 'meshgen[ray]')")
    import ray

    monkeypatch.setattr(batch, "RAY_LOOPBACK", "192.0.2.1")  # TEST-NET: no interface has it, like a missing lo
    start = time.monotonic()
    with pytest.raises(BatchError, match="cannot start a local Ray: no TCP connection to 192.0.2.1"):
        batch_tokenize(mesh_dir, tmp_path / "out", engine="ray", **KWARGS)
    assert time.monotonic() - start < 10
    assert not ray.is_initialized()
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def _unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _unshare_works(), reason="needs unshare -rn (a network namespace whose lo is down)")
def test_ray_in_a_network_namespace_with_loopback_down_fails_within_seconds(mesh_dir, tmp_path):
    pytest.importorskip("ray.data", reason="Ray not installed (pip install 'meshgen[ray]')")
    start = time.monotonic()
    run = subprocess.run(["unshare", "-rn", *_cmd(mesh_dir, tmp_path / "out", engine="ray")], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "cannot start a local Ray: no TCP connection to 127.0.0.1" in run.stderr
    assert time.monotonic() - start < 30


def _descendants(pid: int) -> set[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        kids = [c for c, p in parents.items() if p == parent]
        found.update(kids)
        todo += kids
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class _FakeRay:
    """Stands in for the ``ray`` module in :func:`tokenizers3d.batch._ray_session` (no Ray start-up)."""

    def __init__(self, fail: Exception | None = None):
        self.calls, self.fail, self.up = [], fail, False

    def is_initialized(self) -> bool:
        return self.up

    def init(self, **kwargs) -> None:
        self.calls.append(("init", kwargs))
        if self.fail is not None:
            raise self.fail
        self.up = True

    def shutdown(self) -> None:
        self.calls.append(("shutdown", {}))
        self.up = False


def test_ray_session_shuts_ray_down_on_sigterm_and_on_a_failed_start(monkeypatch):
    fake = _FakeRay()
    monkeypatch.setattr(batch, "_import_ray", lambda: fake)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as info, batch._ray_session(None, 2):
        assert signal.getsignal(signal.SIGTERM) is batch._exit_on_sigterm  # else the kill below ends pytest
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert info.value.code == 128 + signal.SIGTERM
    assert [name for name, _ in fake.calls] == ["init", "shutdown"]
    assert fake.calls[0][1] == {"include_dashboard": False, "log_to_driver": False, "num_cpus": 2,
                                "_node_ip_address": "127.0.0.1"}
    assert signal.getsignal(signal.SIGTERM) is before
    failing = _FakeRay(fail=ConnectionError("GCS\n  unreachable"))
    monkeypatch.setattr(batch, "_import_ray", lambda: failing)
    with pytest.raises(BatchError, match="^could not start Ray at ray://head:10001: ConnectionError: GCS unreachable$"):
        with batch._ray_session("ray://head:10001", 1):
            pass
    assert [name for name, _ in failing.calls] == ["init", "shutdown"]
    assert failing.calls[0][1]["address"] == "ray://head:10001"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ray_processes_end_when_the_run_is_killed(mesh_dir, expected, tmp_path):
    """A local Ray started by a SIGKILLed batch run goes at once (the reaper), not a minute later."""
    pytest.importorskip("ray.data", reason="Ray not installed (pip install 'meshgen[ray]')")
    out = tmp_path / "out"
    proc = _start(_cmd(mesh_dir, out, engine="ray"), delay=0.3)
    _wait_for("a first shard", lambda: (out / "shard-00000.parquet").exists(), proc, timeout=120)
    ray_procs = _descendants(proc.pid)
    assert len(ray_procs) >= 3  # gcs_server, raylet, agents, workers ...
    proc.kill()
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 15  # Ray's agents alone outlive a killed driver by a minute
    while any(_alive(pid) for pid in ray_procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in ray_procs if _alive(pid)], "Ray processes outlived the batch run"
    report = batch_tokenize(mesh_dir, out, **KWARGS)  # the folder resumes (stale lock) with the local engine
    assert report.n_shards_skipped >= 1
    _check_complete(out, expected)
