"""Train the face VQ-VAE (the model of the ``vqvae`` tokenizer) on procedural meshes made on the fly.

    python scripts/train_face_vqvae.py --config configs/face_vqvae_cpu.yaml          # the CPU recipe
    python scripts/train_face_vqvae.py --config configs/face_vqvae_cpu.yaml --steps 40 --out-dir runs/fvq_smoke

Data: an endless stream of fresh procedural meshes (``tokenizers3d.procedural``; 15 families, at most
``data.max_faces`` faces, re-drawn otherwise), augmented (``meshgen.data.AugmentConfig``: anisotropic scale,
rotation about z, axis permutation; plus a uniformly random 3-D rotation with probability ``data.rotate_p``),
quantized at the model's bits, faces in canonical order. Batch ``b`` is a deterministic function of
``(data.stream_seed, b)`` (meshes are added until ``data.faces_per_batch`` faces), so a resumed run sees the
batches it would have seen. Validation: a fixed set of ``data.val_meshes`` meshes drawn with ``data.val_seed``,
no augmentation.

Resumable: every ``train.ckpt_every`` steps ``OUT/last/`` gets the weights (``save_pretrained``: config.json +
model.safetensors, EMA codebooks included) and ``trainer_state.pt`` (optimizer, step, best score, RNG),
written to a temporary folder and swapped in; run the same command again to continue (``--steps`` may be
raised). ``OUT/best/`` holds the weights with the best validation share of faces within one grid cell.
``OUT/log.csv``: step, lr, losses, training-batch accuracy (faces within one cell / exact), code usage and
perplexity, dead-code restarts, speed, and the validation numbers; ``OUT/sessions.jsonl``: the machine of each
(re)start. Prints one JSON summary at the end. Ship the result with ``scripts/ship_face_vqvae.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import trimesh
import yaml
from torch.utils.data import DataLoader, IterableDataset

from meshgen.data import AugmentConfig
from meshgen.train import lr_at, optimizer_step
from tokenizers3d.checkpoint import RunFolder, load_sections
from tokenizers3d.errors import MeshgenError
from tokenizers3d.face_vqvae import FaceBatch, FaceVQVAE, FaceVQVAEConfig
from tokenizers3d.io import atomic_write_text
from tokenizers3d.mesh import QuantizedMesh, canonicalize, normalize, quantize
from tokenizers3d.procedural import DatasetConfig, build_object
from tokenizers3d.rvq import code_usage


# ---- config ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataSection:
    """Where the meshes come from (see the module docstring)."""

    max_faces: int = 800
    faces_per_batch: int = 3000
    max_meshes_per_batch: int = 32
    stream_seed: int = 11  # keep apart from `meshgen dataset` (seed 0) and the generator's streams (1, 2)
    val_seed: int = 12
    val_meshes: int = 48
    families: list | None = None
    augment: dict | None = field(default_factory=dict)  # AugmentConfig fields; null: no augmentation
    rotate_p: float = 0.2
    num_workers: int = 0


@dataclass(frozen=True)
class TrainSection:
    """Optimization and bookkeeping."""

    out_dir: str = "runs/face_vqvae"
    steps: int = 3000
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    log_every: int = 20
    val_every: int = 250
    ckpt_every: int = 100
    seed: int = 0
    threads: int = 1  # torch intra-op threads


@dataclass(frozen=True)
class RunConfig:
    model: FaceVQVAEConfig = field(default_factory=FaceVQVAEConfig)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)

    def to_dict(self) -> dict:
        return asdict(self)


def load_run_config(path: str | Path | None, **overrides) -> RunConfig:
    """YAML sections ``model`` (FaceVQVAEConfig, ``rvq`` nested), ``data``, ``train``; ``overrides`` like
    ``steps=10`` replace ``train`` fields."""
    return RunConfig(**load_sections(path, {"model": FaceVQVAEConfig, "data": DataSection, "train": TrainSection},
                                     {"train": overrides}))


# ---- data -------------------------------------------------------------------------------------------------
def draw_mesh(seed: int, index: int, *, bits: int, max_faces: int, families=None,
              augment: AugmentConfig | None = None, rotate_p: float = 0.0) -> QuantizedMesh:
    """Procedural object ``index`` of stream ``seed`` (drawn as :func:`tokenizers3d.procedural.build_object` draws a
    dataset's objects, re-drawn until it fits ``max_faces``), augmented, quantized at ``bits``, canonical order."""
    rng = np.random.default_rng([seed, index])
    rotate = bool(rng.random() < rotate_p)
    pm, _ = build_object(index, DatasetConfig(seed=seed, families=tuple(families) if families else None,
                                              max_faces=max_faces, rotate=rotate))
    v, f = np.asarray(pm.mesh.vertices, dtype=np.float64), np.asarray(pm.mesh.faces)
    if augment is not None:
        m = augment.mesh_matrix(rng)
        v = v @ m.T
        if np.linalg.det(m) < 0:
            f = f[:, ::-1]
    unit, _ = normalize(canonicalize(trimesh.Trimesh(v, f, process=False)))
    return quantize(unit, bits)


class MeshBatches(IterableDataset):
    """Endless batches (:class:`FaceBatch`) of fresh meshes; batch ``b`` depends only on ``(seed, b)``.

    With ``W`` DataLoader workers, worker ``w`` makes batches ``start + w, start + w + W, ...`` and the
    DataLoader returns them in order.
    """

    def __init__(self, model_cfg: FaceVQVAEConfig, data: DataSection, *, start: int = 0, seed: int | None = None,
                 augment: bool = True):
        super().__init__()
        self.bits, self.data, self.start = model_cfg.bits, data, start
        self.seed = data.stream_seed if seed is None else seed
        self.augment = AugmentConfig(**data.augment) if augment and data.augment is not None else None

    def meshes(self, b: int) -> list[QuantizedMesh]:
        d = self.data
        out, faces, j = [], 0, 0
        while faces < d.faces_per_batch and len(out) < d.max_meshes_per_batch:
            qm = draw_mesh(self.seed, b * d.max_meshes_per_batch + j, bits=self.bits, max_faces=d.max_faces,
                           families=d.families, augment=self.augment,
                           rotate_p=d.rotate_p if self.augment is not None else 0.0)
            j += 1
            if qm.n_faces == 0:
                continue
            out.append(qm)
            faces += qm.n_faces
        return out

    def __iter__(self) -> Iterator[FaceBatch]:
        info = torch.utils.data.get_worker_info()
        workers, me = (info.num_workers, info.id) if info is not None else (1, 0)
        b = self.start + me
        while True:
            yield FaceBatch.from_meshes(self.meshes(b))
            b += workers


def _identity(x):
    return x


# ---- training -----------------------------------------------------------------------------------------
LOG_FIELDS = ("step", "lr", "loss", "recon_loss", "commit_loss", "within_one", "exact", "usage", "perplexity",
              "restarts", "residual_last", "faces_per_s", "steps_per_s", "val_within_one", "val_exact",
              "val_usage", "val_perplexity", "elapsed_s")


class FaceVQVAETrainer:
    """Model, optimizer, data and the resumable state of one run (``cfg.train.out_dir``)."""

    def __init__(self, cfg: RunConfig, *, log=print):
        self.cfg, self.log = cfg, log
        tc = cfg.train
        self.out = Path(tc.out_dir)
        self.run = RunFolder(self.out)
        self.model, self.opt, self.step, self.best = self.run.start(
            FaceVQVAE, cfg.model,
            lambda p: torch.optim.AdamW(p, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay),
            threads=tc.threads, seed=tc.seed)
        self._val = None

    # ---- state ------------------------------------------------------------------------------------------
    def save(self, name: str) -> None:
        """Weights via save_pretrained (+ trainer state for ``last``), swapped in whole (:class:`RunFolder`)."""
        self.run.checkpoint(self.model, name, optimizer=self.opt, step=self.step, best=self.best)

    # ---- validation -----------------------------------------------------------------------------------
    def val_batches(self) -> list[FaceBatch]:
        if self._val is None:
            d = self.cfg.data
            meshes = [draw_mesh(d.val_seed, i, bits=self.cfg.model.bits, max_faces=d.max_faces, families=d.families)
                      for i in range(d.val_meshes)]
            self._val, cur, faces = [], [], 0
            for qm in meshes:
                if qm.n_faces == 0:
                    continue
                cur.append(qm)
                faces += qm.n_faces
                if faces >= d.faces_per_batch:
                    self._val.append(FaceBatch.from_meshes(cur))
                    cur, faces = [], 0
            if cur:
                self._val.append(FaceBatch.from_meshes(cur))
        return self._val

    @torch.no_grad()
    def validate(self) -> dict:
        """Share of faces within one cell / exact, code usage and perplexity over the validation set."""
        self.model.eval()
        within = exact = n = 0.0
        codes = []
        for batch in self.val_batches():
            out = self.model(batch)
            k = len(batch.corners)
            within += float(out.within_one) * k
            exact += float(out.exact) * k
            n += k
            codes.append(out.codes.reshape(-1, out.codes.shape[-1]))
        self.model.train()
        rvq = self.cfg.model.rvq
        usage, ppl = code_usage(torch.cat(codes), rvq.codebook_size, shared=rvq.shared)
        return {"within_one": within / max(n, 1), "exact": exact / max(n, 1), "usage": usage, "perplexity": ppl}

    # ---- loop -------------------------------------------------------------------------------------------
    def fit(self) -> dict:
        tc, d = self.cfg.train, self.cfg.data
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / "config.yaml", yaml.safe_dump(json.loads(json.dumps(self.cfg.to_dict())),
                                                                   sort_keys=False))
        self.run.record_session(from_step=self.step)  # the hardware each (re)start ran on, for the model card
        data = MeshBatches(self.cfg.model, d, start=self.step)
        loader = DataLoader(data, batch_size=None, num_workers=d.num_workers, collate_fn=_identity,
                            prefetch_factor=2 if d.num_workers else None)
        it = iter(loader)
        self.model.train()
        rvq = self.cfg.model.rvq
        elapsed0, t0, t_log = self.run.elapsed_before(), time.time(), time.time()
        start_step, faces_seen, rows = self.step, 0, []
        val = {"within_one": float("nan"), "exact": float("nan"), "usage": float("nan"), "perplexity": float("nan")}
        while self.step < tc.steps:
            lr = lr_at(self.step, base=tc.lr, warmup=tc.warmup_steps, total=tc.steps, min_ratio=tc.min_lr_ratio)
            batch = next(it)
            out = self.model(batch)
            optimizer_step(self.opt, out.loss, self.model.parameters(), lr=lr, clip=tc.grad_clip)
            self.step += 1
            faces_seen += len(batch.corners)
            usage, ppl = code_usage(out.codes.reshape(-1, out.codes.shape[-1]), rvq.codebook_size, shared=rvq.shared)
            rows.append({"loss": out.loss.item(), "recon_loss": out.recon_loss.item(),
                         "commit_loss": out.commit_loss.item(), "within_one": float(out.within_one),
                         "exact": float(out.exact), "usage": usage, "perplexity": ppl,
                         "residual_last": float(out.residual_norms[-1])})
            if self.step % tc.val_every == 0 or self.step == tc.steps:
                val = self.validate()
                if val["within_one"] > self.best:
                    self.best = val["within_one"]
                    self.save("best")
            if self.step % tc.log_every == 0 or self.step == tc.steps:
                now = time.time()
                row = self.run.log_means(rows, list(LOG_FIELDS), step=self.step, lr=f"{lr:.3e}",
                                         restarts=int(self.model.quantizer.restarts),
                                         faces_per_s=f"{faces_seen / (now - t0):.1f}",
                                         steps_per_s=f"{len(rows) / (now - t_log):.3f}",
                                         **{f"val_{k}": f"{v:.4f}" for k, v in val.items()},
                                         elapsed_s=f"{elapsed0 + now - t0:.1f}")
                self.log(json.dumps(row))
                rows, t_log = [], now
            if self.step % tc.ckpt_every == 0 or self.step == tc.steps:
                self.save("last")
        wall = time.time() - t0
        steps = self.step - start_step
        return {"step": self.step, "steps_this_run": steps, "wall_s": round(wall, 1),
                "steps_per_s": round(steps / wall, 3) if wall > 0 else None,
                "faces_per_s": round(faces_seen / wall, 1) if wall > 0 else None,
                "val": val, "best_val_within_one": self.best, "out_dir": str(self.out)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="configs/face_vqvae_cpu.yaml", help="YAML with model / data / train")
    p.add_argument("--steps", type=int, default=None, help="train until this step (overrides train.steps)")
    p.add_argument("--out-dir", default=None, help="run folder (overrides train.out_dir)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (overrides train.threads)")
    args = p.parse_args(argv)
    try:
        cfg = load_run_config(args.config, steps=args.steps, out_dir=args.out_dir, threads=args.threads)
        summary = FaceVQVAETrainer(cfg).fit()
    except MeshgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
