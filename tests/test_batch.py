"""Batch tokenization into Parquet shards: rows, failures, kill + resume, Ray, and the PyTorch dataset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from torch.utils.data import DataLoader

from tokenizers3d.base import get_tokenizer
from tokenizers3d.batch import (
    CRASH_ENV,
    DELAY_ENV,
    SHARD_SCHEMA,
    WORKER_DIED,
    BatchError,
    batch_tokenize,
    rebuild_manifest,
)
from tokenizers3d.io import load_mesh
from tokenizers3d.shards import TokenShardDataset, _consumer_slices, collate_tokens, iter_rows, read_shards

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "batch_tokenize.py"
SHARD_SIZE = 3
BAD_IDS = ["bad.obj", "c/empty.stl"]

TOKENIZER, BITS = "coords", 7
BATCH_KWARGS = {"tokenizer": TOKENIZER, "tokenizer_config": {"bits": BITS}}


@pytest.fixture(scope="module")
def mesh_dir(tmp_path_factory) -> Path:
    """10 good meshes (boxes, cylinders ... in nested dirs, 4 formats), a garbage .obj, an empty .stl."""
    root = tmp_path_factory.mktemp("meshes")
    c = trimesh.creation
    meshes = {
        "a/box1.obj": c.box(extents=(1, 2, 3)),
        "a/box2.stl": c.box(extents=(0.5, 0.5, 2)),
        "a/b/cyl1.ply": c.cylinder(radius=0.5, height=2, sections=8),
        "a/b/cyl2.off": c.cylinder(radius=1, height=0.3, sections=12),
        "c/sphere.obj": c.icosphere(subdivisions=1, radius=2),
        "c/box3.ply": c.box(extents=(4, 1, 1)),
        "top.stl": c.box(extents=(1, 1, 1)),
        "d/e/f/cyl3.obj": c.cylinder(radius=0.2, height=5, sections=6),
        "d/cone.stl": c.cone(radius=1, height=2, sections=10),
        "d/box4.off": c.box(extents=(2, 3, 1)),
    }
    for rel, mesh in meshes.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        mesh.export(root / rel)
    (root / "bad.obj").write_bytes(bytes(range(256)) * 4)
    (root / "c" / "empty.stl").write_bytes(b"")
    (root / "notes.txt").write_text("not a mesh")
    return root


@pytest.fixture(scope="module")
def good_ids(mesh_dir) -> list[str]:
    return sorted(p.relative_to(mesh_dir).as_posix() for p in mesh_dir.rglob("*")
                  if p.is_file() and p.suffix != ".txt" and p.relative_to(mesh_dir).as_posix() not in BAD_IDS)


@pytest.fixture(scope="module")
def clean_run(mesh_dir, tmp_path_factory):
    """One uninterrupted inline run: (out dir, report)."""
    out = tmp_path_factory.mktemp("clean") / "shards"
    report = batch_tokenize(mesh_dir, out, workers=1, shard_size=SHARD_SIZE, progress=False, **BATCH_KWARGS)
    return out, report


def _failures(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]


def test_rows_failures_and_manifest(clean_run, good_ids, mesh_dir):
    out, report = clean_run
    table = read_shards(out)
    assert table.schema.equals(SHARD_SCHEMA)
    assert table.column("id").to_pylist() == good_ids
    assert (report.n_files, report.n_ok, report.n_failed, report.n_shards) == (12, 10, 2, 4)
    assert report.meshes_per_s > 0
    assert sorted(f["id"] for f in _failures(out)) == BAD_IDS
    assert all(f["error"] and f["path"].endswith(f["id"]) for f in _failures(out))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["n_rows"] == 10 and manifest["n_failed"] == 2
    assert [s["file"] for s in manifest["shards"]] == [f"shard-{k:05d}.parquet" for k in range(4)]
    assert sum(s["rows"] for s in manifest["shards"]) == 10
    assert rebuild_manifest(out) == manifest
    tok = get_tokenizer(TOKENIZER, bits=BITS)
    row = next(r for r in iter_rows(out) if r["id"] == "a/b/cyl1.ply")
    enc = tok.encode(load_mesh(mesh_dir / "a/b/cyl1.ply"))
    np.testing.assert_array_equal(row["ids"], enc.ids)
    assert row["n_tokens"] == len(enc.ids) and row["n_faces"] == enc.n_faces
    assert row["normalization"] == enc.normalization.to_dict()
    assert row["tokenizer_config"] == json.dumps(tok.config, sort_keys=True)
    assert row["config_hash"] == tok.config_hash


def test_rerun_skips_done_shards_and_refuses_other_config(clean_run, mesh_dir):
    out, _ = clean_run
    kwargs = BATCH_KWARGS
    again = batch_tokenize(mesh_dir, out, workers=1, shard_size=SHARD_SIZE, progress=False, **kwargs)
    assert (again.n_processed, again.n_shards_skipped, again.n_ok, again.n_failed) == (0, 4, 10, 2)
    other = dict(kwargs, tokenizer_config={"bits": 8})
    with pytest.raises(BatchError, match="was made with tokenizer"):
        batch_tokenize(mesh_dir, out, shard_size=SHARD_SIZE, progress=False, **other)
    with pytest.raises(BatchError, match="shard_size=3"):
        batch_tokenize(mesh_dir, out, shard_size=5, progress=False, **kwargs)


def test_two_workers_give_same_rows(clean_run, mesh_dir, tmp_path):
    report = batch_tokenize(mesh_dir, tmp_path / "out", workers=2, shard_size=SHARD_SIZE, progress=False,
                            **BATCH_KWARGS)
    assert report.n_ok == 10 and report.workers == 2
    assert read_shards(tmp_path / "out").to_pylist() == read_shards(clean_run[0]).to_pylist()
    assert _failures(tmp_path / "out") == _failures(clean_run[0])


def test_worker_crash_becomes_a_failure_and_the_run_goes_on(clean_run, mesh_dir, tmp_path, monkeypatch):
    """A pool worker dying on one file (as in a segfault) costs that file only, in a run that ends normally."""
    crash_id = "a/b/cyl2.off"
    monkeypatch.setenv(CRASH_ENV, "cyl2")
    report = batch_tokenize(mesh_dir, tmp_path / "out", workers=2, shard_size=SHARD_SIZE, progress=False,
                            **BATCH_KWARGS)
    assert (report.n_ok, report.n_failed, report.n_shards_skipped) == (9, 3, 0)
    expected = [r for r in read_shards(clean_run[0]).to_pylist() if r["id"] != crash_id]
    assert read_shards(tmp_path / "out").to_pylist() == expected
    failures = {f["id"]: f for f in _failures(tmp_path / "out")}
    assert sorted(failures) == sorted([*BAD_IDS, crash_id])
    assert failures[crash_id]["error"] == f"{mesh_dir / crash_id}: {WORKER_DIED}"
    assert failures[crash_id]["path"] == str(mesh_dir / crash_id)
    assert [f for f in _failures(tmp_path / "out") if f["id"] != crash_id] == _failures(clean_run[0])
    monkeypatch.delenv(CRASH_ENV)
    again = batch_tokenize(mesh_dir, tmp_path / "out", workers=2, shard_size=SHARD_SIZE, progress=False,
                           **BATCH_KWARGS)
    assert (again.n_processed, again.n_failed) == (0, 3)  # a resumed run keeps the recorded failure


def test_crash_hook_never_fires_in_the_calling_process(mesh_dir, tmp_path):
    """With ``--workers 1`` files are read in the calling process, which the crash hook must leave alone."""
    cmd = [sys.executable, str(SCRIPT), str(mesh_dir), "--out", str(tmp_path / "out"), "-t", TOKENIZER,
           "--bits", str(BITS), "--shard-size", str(SHARD_SIZE), "--workers", "1", "--no-progress"]
    run = subprocess.run(cmd, env=dict(os.environ, **{CRASH_ENV: "cyl2"}), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "10 meshes tokenized, 2 failed" in run.stdout


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for a reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_then_resume_loses_and_duplicates_nothing(clean_run, mesh_dir, tmp_path, workers):
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), str(mesh_dir), "--out", str(out), "-t", TOKENIZER,
           "--bits", str(BITS), "--shard-size", str(SHARD_SIZE), "--workers", str(workers), "--no-progress"]
    proc = subprocess.Popen(cmd, env=dict(os.environ, **{DELAY_ENV: "0.3"}), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (out / "shard-00000.parquet").exists():
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.monotonic() < deadline, "no shard written within 60 s"
        time.sleep(0.02)
    pool = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "shard-00003.parquet").exists() and not (out / "manifest.json").exists()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pool) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pool), "pool workers outlived their killed parent"
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "10 meshes tokenized, 2 failed" in run.stdout
    ids = read_shards(out).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 10
    assert read_shards(out).to_pylist() == read_shards(clean_run[0]).to_pylist()
    assert _failures(out) == _failures(clean_run[0])
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(("args", "message"), [
    (["{tmp}/missing", "--out", "{tmp}/o"], "input directory {tmp}/missing does not exist"),
    (["{tmp}"], "the following arguments are required: --out"),
], ids=["missing-directory", "missing-out"])
def test_cli_bad_arguments_exit_2_with_one_line(tmp_path, args, message):
    args = [a.format(tmp=tmp_path) for a in args]
    run = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert message.format(tmp=tmp_path) in run.stderr


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own deprecated DataContext fields
def test_ray_engine_gives_same_rows(clean_run, mesh_dir, tmp_path):
    pytest.importorskip("ray.data", reason="Ray not installed (pip install 'meshgen[ray]')")
    report = batch_tokenize(mesh_dir, tmp_path / "out", engine="ray", workers=1, shard_size=SHARD_SIZE,
                            progress=False, **BATCH_KWARGS)
    assert (report.engine, report.n_ok, report.n_failed) == ("ray", 10, 2)
    assert read_shards(tmp_path / "out").to_pylist() == read_shards(clean_run[0]).to_pylist()
    assert _failures(tmp_path / "out") == _failures(clean_run[0])


# ---- dataset -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("counts", [[3, 3, 3, 1], [0, 5, 0], [10], [1, 1]])
@pytest.mark.parametrize("n_consumers", [1, 3, 4])
def test_consumer_slices_partition_rows(counts, n_consumers):
    seen = [(pos, r) for c in range(n_consumers) for pos, a, b in _consumer_slices(counts, c, n_consumers)
            for r in range(a, b)]
    assert seen == [(pos, r) for pos, n in enumerate(counts) for r in range(n)]


def _epoch_ids(out: Path, *, world_size: int, num_workers: int, **kwargs) -> list[str]:
    got = []
    for rank in range(world_size):
        ds = TokenShardDataset(out, rank=rank, world_size=world_size, shuffle_buffer=4, **kwargs)
        loader = DataLoader(ds, batch_size=None, num_workers=num_workers)
        got += [row["id"] for row in loader]
    return got


def test_dataset_ranks_and_workers_cover_every_row_once(clean_run, good_ids):
    out, _ = clean_run
    got = _epoch_ids(out, world_size=2, num_workers=2, seed=3, epoch=1)
    assert sorted(got) == good_ids


def test_dataset_shuffle_is_deterministic_and_changes_with_epoch(clean_run, good_ids):
    out, _ = clean_run
    ds = TokenShardDataset(out, seed=7, shuffle_buffer=4)
    first = [r["id"] for r in ds]
    assert [r["id"] for r in TokenShardDataset(out, seed=7, shuffle_buffer=4)] == first
    ds.set_epoch(1)
    second = [r["id"] for r in ds]
    assert sorted(first) == sorted(second) == good_ids and first != second
    assert [r["id"] for r in TokenShardDataset(out, shuffle=False)] == good_ids
    row = next(iter(TokenShardDataset(out, shuffle=False)))
    assert row["ids"].dtype == np.int64 and {"id", "n_faces", "n_vertices", "normalization"} <= set(row)
    short = TokenShardDataset(out, shuffle=False, max_len=int(np.median([len(r["ids"]) for r in ds])))
    assert 0 < len(list(short)) < len(good_ids)


def test_collate_pads_with_pad_id_and_returns_mask():
    batch = [{"id": "a", "ids": np.array([5, 6, 7]), "n_faces": 1}, {"id": "b", "ids": np.array([8]), "n_faces": 2}]
    out = collate_tokens(batch, pad_id=99)
    assert out["ids"].dtype == torch.int64 and out["ids"].tolist() == [[5, 6, 7], [8, 99, 99]]
    assert out["mask"].dtype == torch.bool and out["mask"].tolist() == [[True] * 3, [True, False, False]]
    assert out["lengths"].tolist() == [3, 1] and out["id"] == ["a", "b"] and out["n_faces"].tolist() == [1, 2]
