#!/usr/bin/env python
"""Train the VAT shape tokenizer (:mod:`tokenizers3d.vat`) on procedural shapes made on the fly. Resumable.

Every step draws ``batch`` fresh procedural objects (:func:`tokenizers3d.procedural.build_object` of stream
``stream_seed``; object ``i`` of step ``s`` depends only on ``(stream_seed, s, i)``), augments them (the
generator's :class:`~meshgen.data.AugmentConfig`: anisotropic scale, rotation about the up axis, axis
permutations), normalizes them into the unit cube, samples ``n_points`` surface points with normals and
``n_uniform + n_near`` occupancy queries (:func:`tokenizers3d.vat.occupancy_targets`), and takes one AdamW step
on occupancy BCE + KL + commitment. Warm-up (``train``): the posterior's sampling noise ramps from 0 to 1 over
``noise_warmup_steps`` and the quantizer is bypassed before ``quantize_after`` (the decoder reads the continuous
latent; the codebook is initialised from trained latents when quantization starts); ``tail_drop`` is the share of
steps that also train the decoder on a random prefix of the scales (tail drop: cut files still decode). ``init_from`` starts a new run
from a model directory's same-named, same-shaped weights (a model grown by ``model.query_blocks`` keeps what it
knew: the new blocks start as the identity); ``freeze_encoder`` then trains the decoder only (encoder, queries and
codebook fixed: every shape keeps its ids). ``data.fixed_shapes: N``
trains on the stream's first ``N`` shapes only -- with ``augment: null`` and ``val_seed = stream_seed``,
``val_shapes = N`` an overfitting check that the latents of different shapes stay apart (docs/tokenizers.md). Every ``val_every`` steps ``val_shapes`` fixed shapes of ``val_seed`` are
encoded (means, no sampling), quantized and decoded: occupancy IoU over their queries at all scales and at each
prefix of the scales, and from the unquantized means; the latents' spread across shapes and the codes used are
logged as signs of collapse; the best full-scale IoU is kept in ``OUT/best``; the resumable state is in ``OUT/last``
(every ``ckpt_every`` steps), the log in ``OUT/log.csv``.

Usage::

    python scripts/train_vat.py --config configs/vat_cpu.yaml            # run again to resume
    python scripts/train_vat.py --config configs/vat_cpu.yaml --steps 50 --out-dir runs/vat_smoke
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import trimesh
import yaml

from meshgen.data import AugmentConfig
from meshgen.train import lr_at, optimizer_step, warm_start
from tokenizers3d.checkpoint import RunFolder, load_sections
from tokenizers3d.errors import MeshgenError
from tokenizers3d.io import atomic_write_text
from tokenizers3d.mesh import Normalization
from tokenizers3d.procedural import DatasetConfig, build_object
from tokenizers3d.sample import sample_surface
from tokenizers3d.vat import VATConfig, VATModel, occupancy_targets


@dataclass(frozen=True)
class DataSection:
    max_faces: int = 2000
    families: list | None = None
    n_points: int = 2048
    n_uniform: int = 2048
    n_near: int = 2048
    near_sigma: float = 0.02
    stream_seed: int = 21  # apart from `meshgen dataset` (0), the generator's streams (1-3), the face VQ-VAE (11, 12)
    val_seed: int = 22
    val_shapes: int = 32
    augment: dict | None = field(default_factory=dict)  # AugmentConfig fields; null: no augmentation
    fixed_shapes: int = 0  # > 0: train on the stream's first this many shapes only (an overfitting check)


@dataclass(frozen=True)
class TrainSection:
    out_dir: str = "runs/vat"
    steps: int = 4000
    batch: int = 8
    lr: float = 5e-4
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    log_every: int = 25
    val_every: int = 250
    ckpt_every: int = 100
    seed: int = 0
    threads: int = 2
    noise_warmup_steps: int = 0  # posterior sampling noise ramps from 0 (the mean) to 1 over these steps
    quantize_after: int = 0  # before this step the decoder reads the continuous latent (quantizer bypassed)
    tail_drop: float = 0.0  # share of steps that also train the decoder on a random prefix of the scales
    init_from: str | None = None  # a new run starts from this VAT model directory (same-named, same-shaped weights)
    freeze_encoder: bool = False  # train the decoder only: encoder, queries and codebook fixed (ids unchanged)


@dataclass(frozen=True)
class RunConfig:
    model: VATConfig = field(default_factory=VATConfig)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)


def load_run_config(path, **overrides) -> RunConfig:
    return RunConfig(**load_sections(path, {"model": VATConfig, "data": DataSection, "train": TrainSection},
                                     {"train": overrides}))


LOG_FIELDS = ["step", "lr", "loss", "occupancy_loss", "kl", "commit", "accuracy", "shapes_per_s", "val_iou",
              "val_iou_by_scales", "val_iou_continuous", "val_spread", "val_codes", "elapsed_s"]


def draw_shape(seed: int, index: int, data: DataSection, augment: AugmentConfig | None) -> dict[str, np.ndarray]:
    """One training example: surface points + normals and occupancy queries of object ``index`` of ``seed``."""
    rng = np.random.default_rng([seed, index])
    pm, _ = build_object(index, DatasetConfig(seed=seed, families=tuple(data.families) if data.families else None,
                                              max_faces=data.max_faces))
    v, f = np.asarray(pm.mesh.vertices, dtype=np.float64), np.asarray(pm.mesh.faces)
    if augment is not None:
        m = augment.mesh_matrix(rng)
        v = v @ m.T
        if np.linalg.det(m) < 0:
            f = f[:, ::-1]
    v = Normalization.fit(v).apply(v)
    cloud = sample_surface(trimesh.Trimesh(v, f, process=False), data.n_points, seed=int(rng.integers(2**31)))
    queries, occ = occupancy_targets(v, f, rng, n_uniform=data.n_uniform, n_near=data.n_near, sigma=data.near_sigma)
    return {"points": cloud.points.astype(np.float32), "normals": cloud.normals.astype(np.float32),
            "queries": queries, "occupancy": occ}


def collate(shapes: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.stack([s[k] for s in shapes])) for k in shapes[0]}


class VATTrainer:
    def __init__(self, cfg: RunConfig, *, log=print):
        self.cfg, self.log = cfg, log
        tc = cfg.train
        self.out = Path(tc.out_dir)
        self.run = RunFolder(self.out)
        self.model, self.opt, self.step, self.best = self.run.start(
            VATModel, cfg.model, lambda p: torch.optim.AdamW(p, lr=tc.lr, weight_decay=tc.weight_decay),
            threads=tc.threads, seed=tc.seed)
        if tc.init_from and self.step == 0:  # a resumed run keeps its own weights
            copied = warm_start(self.model, tc.init_from)
            self.log(json.dumps({"init_from": tc.init_from, **copied}))
        if tc.freeze_encoder:
            self.model.freeze_encoder_side()
        d = cfg.data
        self.augment = AugmentConfig(**d.augment) if d.augment is not None else None
        self._val = None

    def train_mode(self) -> None:
        """Training mode, but a frozen encoder side stays in evaluation mode: its codebook takes no EMA update."""
        self.model.train()
        if self.cfg.train.freeze_encoder:
            for module in self.model.encoder_side():
                module.eval()

    def save(self, name: str) -> None:
        self.run.checkpoint(self.model, name, optimizer=self.opt, step=self.step, best=self.best)

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        d, b = self.cfg.data, self.cfg.train.batch
        index = [step * b + i for i in range(b)]
        if d.fixed_shapes > 0:
            index = [i % d.fixed_shapes for i in index]
        return collate([draw_shape(d.stream_seed, i, d, self.augment) for i in index])

    @torch.no_grad()
    def validate(self) -> dict:
        """Occupancy IoU of the validation shapes from their tokens: all scales, and each prefix of them; and two
        signs of a collapsed latent: ``spread``, the latent means' standard deviation across shapes (mean over
        tokens and channels) divided by the posterior's standard deviation -- near 0 when every shape encodes
        alike --, ``codes``, the distinct codes the validation shapes use, and ``iou_continuous``, the IoU decoded
        from the unquantized latent means (what the quantizer costs)."""
        d = self.cfg.data
        if self._val is None:
            self._val = [collate([draw_shape(d.val_seed, i, d, None) for i in range(j, min(j + 8, d.val_shapes))])
                         for j in range(0, d.val_shapes, 8)]
        self.model.eval()
        n_scales = len(self.cfg.model.quantizer.scales)
        inter, union = np.zeros(n_scales + 1), np.zeros(n_scales + 1)
        means, stds, used = [], [], set()
        for batch in self._val:
            mean, logvar = self.model.encode_gaussian(batch["points"], batch["normals"])
            means.append(mean)
            stds.append((0.5 * logvar).exp().mean())
            codes = self.model.codes_of(mean)  # the same means: the encoder runs once
            for c in codes:
                used.update(c.reshape(-1).tolist())
            pred = self.model.occupancy_logits(self.model.field(mean), batch["queries"]) > 0
            truth = batch["occupancy"] > 0.5
            inter[-1] += float((pred & truth).sum())
            union[-1] += float((pred | truth).sum())
            for k in range(1, n_scales + 1):
                pred = self.model.occupancy_logits(self.model.decode_ids(codes, scales=k), batch["queries"]) > 0
                inter[k - 1] += float((pred & truth).sum())
                union[k - 1] += float((pred | truth).sum())
        self.train_mode()
        iou = inter / np.maximum(union, 1)
        spread = float(torch.cat(means).std(dim=0).mean() / torch.stack(stds).mean())
        return {"iou": float(iou[-2]), "iou_by_scales": [round(float(x), 4) for x in iou[:-1]],
                "iou_continuous": float(iou[-1]), "spread": spread, "codes": len(used)}

    def fit(self) -> dict:
        cfg, tc = self.cfg, self.cfg.train
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / "config.yaml", yaml.safe_dump(json.loads(json.dumps(asdict(cfg))), sort_keys=False))
        self.run.record_session(from_step=self.step)
        elapsed0, t0, t_log = self.run.elapsed_before(), time.time(), time.time()
        rows, val = [], {"iou": float("nan"), "iou_by_scales": [], "iou_continuous": float("nan"),
                         "spread": float("nan"), "codes": 0}
        self.train_mode()
        while self.step < tc.steps:
            lr = lr_at(self.step, base=tc.lr, warmup=tc.warmup_steps, total=tc.steps, min_ratio=tc.min_lr_ratio)
            b = self.batch(self.step)
            noise = min(1.0, self.step / tc.noise_warmup_steps) if tc.noise_warmup_steps > 0 else 1.0
            prefix = None
            if tc.tail_drop > 0:
                rng = np.random.default_rng([tc.seed, self.step, 7])  # by step: a resumed run draws the same
                if rng.random() < tc.tail_drop:
                    prefix = int(rng.integers(1, len(self.cfg.model.quantizer.scales)))
            out = self.model(b["points"], b["normals"], b["queries"], b["occupancy"], noise=noise,
                             quantize=self.step >= tc.quantize_after, prefix=prefix)
            optimizer_step(self.opt, out.loss, self.model.parameters(), lr=lr, clip=tc.grad_clip)
            self.step += 1
            rows.append({"loss": out.loss.item(), "occupancy_loss": out.occupancy_loss.item(), "kl": out.kl.item(),
                         "commit": out.commit.item(), "accuracy": out.accuracy.item()})
            if self.step % tc.val_every == 0 or self.step == tc.steps:
                val = self.validate()
                if val["iou"] > self.best:
                    self.best = val["iou"]
                    self.save("best")
            if self.step % tc.log_every == 0 or self.step == tc.steps:
                now = time.time()
                row = self.run.log_means(rows, LOG_FIELDS, step=self.step, lr=f"{lr:.3e}",
                                         shapes_per_s=f"{len(rows) * tc.batch / (now - t_log):.2f}",
                                         val_iou=f"{val['iou']:.4f}",
                                         val_iou_by_scales=" ".join(map(str, val["iou_by_scales"])),
                                         val_iou_continuous=f"{val['iou_continuous']:.4f}",
                                         val_spread=f"{val['spread']:.3f}", val_codes=val["codes"],
                                         elapsed_s=f"{elapsed0 + now - t0:.1f}")
                self.log(json.dumps(row))
                rows, t_log = [], now
            if self.step % tc.ckpt_every == 0 or self.step == tc.steps:
                self.save("last")
        return {"step": self.step, "best_val_iou": self.best, "val": val, "out_dir": str(self.out)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=None, help="YAML with model / data / train (default: the defaults)")
    ap.add_argument("--steps", type=int, default=None, help="train until this step (overrides train.steps)")
    ap.add_argument("--out-dir", default=None, help="run folder (overrides train.out_dir)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (overrides train.threads)")
    args = ap.parse_args(argv)
    try:
        cfg = load_run_config(args.config, steps=args.steps, out_dir=args.out_dir, threads=args.threads)
        result = VATTrainer(cfg, log=lambda s: print(s, flush=True)).fit()
    except MeshgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
