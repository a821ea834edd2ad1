"""Training: a tiny config trains, checkpoints, resumes after a stop, and runs as two DDP processes on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from meshgen.config import load_config
from meshgen.registry import load_model
from meshgen.train import lr_at, train
from tokenizers3d.batch import batch_tokenize
from tokenizers3d.io import save_mesh
from tokenizers3d.procedural import generate

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    base = tmp_path_factory.mktemp("train_data")
    for split, seeds in (("train", range(10)), ("val", range(100, 103))):
        for s in seeds:
            fam = ["box", "pyramid", "prism", "stairs"][s % 4]
            save_mesh(base / "meshes" / split / f"{fam}_{s}.ply", generate(fam, s).mesh)
        batch_tokenize(base / "meshes" / split, base / "shards" / split, tokenizer="coords",
                       tokenizer_config={"bits": 7}, progress=False)
    return base / "shards"


def _cfg(shards, out, **extra):
    over = {"data.train": str(shards / "train"), "data.val": str(shards / "val"), "train.out_dir": str(out),
            "train.threads": 1}
    over.update(extra)
    return load_config(ROOT / "configs" / "tiny_test.yaml", over)


def test_lr_schedule():
    assert lr_at(0, base=1.0, warmup=10, total=100, min_ratio=0.1) == pytest.approx(0.1)
    assert lr_at(9, base=1.0, warmup=10, total=100, min_ratio=0.1) == pytest.approx(1.0)
    assert lr_at(100, base=1.0, warmup=10, total=100, min_ratio=0.1) == pytest.approx(0.1)
    mid = lr_at(55, base=1.0, warmup=10, total=100, min_ratio=0.1)
    assert 0.5 < mid < 0.6


def test_train_checkpoint_and_resume(shards, tmp_path):
    out = tmp_path / "run"
    res = train(_cfg(shards, out, **{"train.steps": 2}), progress=False)
    assert res["step"] == 2 and np.isfinite(res["val_loss"])
    assert (out / "last" / "model.safetensors").exists() and (out / "last" / "config.json").exists()
    state = torch.load(out / "last" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 2
    # started again with more steps, it continues from step 2 instead of starting over
    res = train(_cfg(shards, out, **{"train.steps": 4}), progress=False)
    assert res["step"] == 4
    log = (out / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == ["1", "2", "3", "4"]
    model = load_model(out / "last")
    assert json.loads((out / "last" / "config.json").read_text())["class"] == type(model).__name__


def test_two_process_ddp_on_cpu(shards, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "scripts" / "train_generator.py"), "--config", str(ROOT / "configs" / "tiny_test.yaml"),
           "--no-progress", "--set", f"data.train={shards / 'train'}", f"data.val={shards / 'val'}",
           f"train.out_dir={out}", "train.steps=2", "train.threads=1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "last" / "model.safetensors").exists()
    assert torch.load(out / "last" / "trainer_state.pt", weights_only=True)["step"] == 2


def test_sigkill_then_resume(shards, tmp_path):
    """Killed after a checkpoint, the same command finishes the run; the log has every step exactly once."""
    import signal
    import time

    out = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "scripts" / "train_generator.py"), "--config", str(ROOT / "configs" / "tiny_test.yaml"),
           "--no-progress", "--set", f"data.train={shards / 'train'}", f"data.val={shards / 'val'}",
           f"train.out_dir={out}", "train.steps=60", "train.ckpt_every=2", "train.val_every=1000", "train.threads=1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not (out / "last" / "trainer_state.pt").exists():
        time.sleep(0.2)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(out / "last" / "trainer_state.pt", weights_only=True)["step"]
    assert 2 <= killed_at < 60
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch.load(out / "last" / "trainer_state.pt", weights_only=True)["step"] == 60
    steps = [int(row.split(",")[0]) for row in (out / "log.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 61))
