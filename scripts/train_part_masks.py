#!/usr/bin/env python
"""Train the part-mask network (:mod:`renderers.mask_model`) on a labelled render dataset. Resumable.

The dataset comes from ``scripts/make_segmentation_dataset.py`` (train / val splits by seed; the evaluation's
test seeds are never rendered into it). Every step draws ``batch`` random train views, augments them (a random
rotation of the whole scene about the vertical axis, which rotates the world-frame normals and changes
nothing else; a random horizontal flip) and takes one AdamW step on the discriminative loss. Every
``val_every`` steps the validation views are embedded, clustered exactly as ``meshgen segment`` does, and
scored by pixel mIoU (Hungarian matching of clusters to true parts per view, unmatched parts count 0); the
best run so far is kept in ``OUT/best``, the resumable state in ``OUT/last`` (every ``ckpt_every`` steps; a
kill loses at most that many steps), the log in ``OUT/log.csv``.

Usage::

    python scripts/train_part_masks.py --data data/part_views data/part_views_anny --out runs/part_masks
    python scripts/train_part_masks.py --data data/part_views data/part_views_anny --out runs/part_masks  # resumes
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

from meshgen.train import lr_at, optimizer_step
from renderers.mask_model import PartMaskConfig, PartMaskNet, cluster_embeddings, discriminative_loss, view_features
from tokenizers3d.checkpoint import RunFolder, config_from_dict
from tokenizers3d.errors import MeshgenError, MeshInputError
from tokenizers3d.io import atomic_write_text

LOG_FIELDS = ["step", "lr", "loss", "var", "dist", "norm", "views_per_s", "val_loss", "val_miou", "elapsed_s"]


@dataclass(frozen=True)
class TrainConfig:
    data: tuple[str, ...] = ("data/part_views",)
    out: str = "runs/part_masks"
    steps: int = 3000
    batch: int = 16
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup: int = 50
    weight_decay: float = 1e-4
    val_every: int = 250
    ckpt_every: int = 100
    log_every: int = 25
    val_views_per_shape: int = 2
    flip_p: float = 0.5
    seed: int = 0
    threads: int = 1
    model: PartMaskConfig = field(default_factory=PartMaskConfig)


class Views:
    """The views of one split of one or more datasets, in memory: normals (N, S, S, 3) f16, depth (N, S, S) f16,
    parts (N, S, S) i16, and the part set of every view."""

    def __init__(self, roots: list[Path], split: str, *, views_per_shape: int | None = None):
        rows = []
        for root in roots:
            index_path = root / "index.json"
            if not index_path.exists():
                raise MeshInputError(root, "is not a part-view dataset (no index.json); make one with "
                                           "scripts/make_segmentation_dataset.py")
            rows += [(root, r) for r in json.loads(index_path.read_text())["shapes"] if r["split"] == split]
        normals, depth, parts, sets = [], [], [], []
        for root, r in rows:
            with np.load(root / r["path"]) as z:
                k = z["depth"].shape[0] if views_per_shape is None else min(views_per_shape, z["depth"].shape[0])
                normals.append(z["normals"][:k])
                depth.append(z["depth"][:k])
                parts.append(z["parts"][:k])
                sets += [r["set"]] * k
        if not rows:
            raise MeshInputError(roots[0], f"has no {split} shapes" if len(roots) == 1 else
                                 f"and the other datasets have no {split} shapes")
        self.normals, self.depth = np.concatenate(normals), np.concatenate(depth)
        self.parts, self.sets = np.concatenate(parts), np.asarray(sets)

    def __len__(self) -> int:
        return len(self.depth)


def augment(normals: torch.Tensor, depth: torch.Tensor, parts: torch.Tensor, rng: np.random.Generator,
            flip_p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rotate each view's scene about +z (normals only change) and flip some views left-right."""
    b = normals.shape[0]
    angle = torch.as_tensor(rng.uniform(0, 2 * np.pi, size=b), dtype=torch.float32)
    c, s = torch.cos(angle), torch.sin(angle)
    x, y = normals[..., 0], normals[..., 1]
    normals = torch.stack([c[:, None, None] * x - s[:, None, None] * y,
                           s[:, None, None] * x + c[:, None, None] * y, normals[..., 2]], dim=-1)
    flip = torch.as_tensor(rng.random(b) < flip_p)
    if flip.any():
        normals[flip] = normals[flip].flip(-2)
        depth[flip] = depth[flip].flip(-1)
        parts[flip] = parts[flip].flip(-1)
    return normals, depth, parts


def view_miou(labels: np.ndarray, parts: np.ndarray) -> float:
    """Pixel mIoU of predicted regions (-1 none) against true parts (-1 background), Hungarian-matched."""
    from scipy.optimize import linear_sum_assignment

    fg = parts >= 0
    true = np.unique(parts[fg])
    if len(true) == 0:
        return float("nan")
    pred_ids = np.unique(labels[fg & (labels >= 0)])
    if len(pred_ids) == 0:
        return 0.0
    t = np.searchsorted(true, parts[fg])
    pl = labels[fg]
    p = np.where(pl >= 0, np.searchsorted(pred_ids, np.maximum(pl, pred_ids[0])), len(pred_ids))
    inter = np.zeros((len(true), len(pred_ids) + 1))
    np.add.at(inter, (t, p), 1)
    inter = inter[:, :-1]
    t_area = np.bincount(t, minlength=len(true))[:, None]
    p_area = np.bincount(p, minlength=len(pred_ids) + 1)[None, :-1]
    iou = inter / np.maximum(t_area + p_area - inter, 1)
    r, c = linear_sum_assignment(-iou)
    return float(iou[r, c].sum() / len(true))


class Trainer:
    def __init__(self, cfg: TrainConfig, *, log=print):
        self.cfg, self.log = cfg, log
        self.out = Path(cfg.out)
        self.run = RunFolder(self.out)
        self.model, self.opt, self.step, self.best = self.run.start(
            PartMaskNet, cfg.model, lambda p: torch.optim.AdamW(p, lr=cfg.lr, weight_decay=cfg.weight_decay),
            threads=cfg.threads, seed=cfg.seed)
        self.rng = np.random.default_rng([cfg.seed, self.step])
        roots = [Path(p) for p in cfg.data]
        self.train = Views(roots, "train")
        self.val = Views(roots, "val", views_per_shape=cfg.val_views_per_shape)

    def save(self, name: str) -> None:
        self.run.checkpoint(self.model, name, optimizer=self.opt, step=self.step, best=self.best)

    def batch(self, views: Views, idx: np.ndarray, *, train: bool):
        normals = torch.from_numpy(views.normals[idx].astype(np.float32))
        depth = torch.from_numpy(views.depth[idx].astype(np.float32))
        parts = torch.from_numpy(views.parts[idx].astype(np.int64))
        if train:
            normals, depth, parts = augment(normals, depth, parts, self.rng, self.cfg.flip_p)
        return view_features(normals, depth), parts

    @torch.no_grad()
    def validate(self) -> dict:
        self.model.eval()
        m = self.cfg.model
        losses, mious, per_set = [], [], {}
        for start in range(0, len(self.val), 16):
            idx = np.arange(start, min(start + 16, len(self.val)))
            x, parts = self.batch(self.val, idx, train=False)
            emb = self.model(x)
            loss, _ = discriminative_loss(emb, parts, delta_v=m.delta_v, delta_d=m.delta_d)
            losses.append(float(loss) * len(idx))
            for j, i in enumerate(idx):
                fg = self.val.depth[i] > 0
                labels = cluster_embeddings(emb[j].numpy(), fg, radius=m.radius, min_pixels=m.min_pixels)
                score = view_miou(labels, self.val.parts[i])
                if not np.isnan(score):
                    mious.append(score)
                    per_set.setdefault(str(self.val.sets[i]), []).append(score)
        self.model.train()
        return {"loss": sum(losses) / len(self.val), "miou": float(np.mean(mious)),
                "per_set": {k: round(float(np.mean(v)), 4) for k, v in sorted(per_set.items())}}

    def fit(self) -> dict:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / "train_config.json", json.dumps(asdict(cfg), indent=1) + "\n")
        self.run.record_session(from_step=self.step, train_views=len(self.train), val_views=len(self.val))
        elapsed0, t0, t_log = self.run.elapsed_before(), time.time(), time.time()
        rows, val = [], {"loss": float("nan"), "miou": float("nan")}
        self.model.train()
        while self.step < cfg.steps:
            lr = lr_at(self.step, base=cfg.lr, warmup=cfg.warmup, total=cfg.steps, min_ratio=cfg.min_lr_ratio)
            idx = self.rng.choice(len(self.train), cfg.batch, replace=False)
            x, parts = self.batch(self.train, idx, train=True)
            loss, terms = discriminative_loss(self.model(x), parts, delta_v=cfg.model.delta_v,
                                              delta_d=cfg.model.delta_d)
            optimizer_step(self.opt, loss, self.model.parameters(), lr=lr, clip=1.0)
            self.step += 1
            rows.append({"loss": loss.item(), **terms})
            if self.step % cfg.val_every == 0 or self.step == cfg.steps:
                val = self.validate()
                self.log(json.dumps({"step": self.step, "val": val}))
                if val["miou"] > self.best:
                    self.best = val["miou"]
                    self.save("best")
                    atomic_write_text(self.out / "best" / "val.json",
                                      json.dumps({"step": self.step, **val}, indent=1) + "\n")
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                now = time.time()
                row = self.run.log_means(rows, LOG_FIELDS, step=self.step, lr=f"{lr:.3e}",
                                         views_per_s=f"{len(rows) * cfg.batch / (now - t_log):.2f}",
                                         val_loss=f"{val['loss']:.4f}", val_miou=f"{val['miou']:.4f}",
                                         elapsed_s=f"{elapsed0 + now - t0:.1f}")
                self.log(json.dumps(row))
                rows, t_log = [], now
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                self.save("last")
        return {"step": self.step, "best_val_miou": self.best, "val": val, "out": str(self.out)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", nargs="+", default=list(TrainConfig.data),
                    help="dataset folders (scripts/make_segmentation_dataset.py); their train and val splits are pooled")
    ap.add_argument("--out", default=TrainConfig.out)
    ap.add_argument("--steps", type=int, default=TrainConfig.steps)
    ap.add_argument("--batch", type=int, default=TrainConfig.batch)
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    ap.add_argument("--val-every", type=int, default=TrainConfig.val_every)
    ap.add_argument("--ckpt-every", type=int, default=TrainConfig.ckpt_every)
    ap.add_argument("--threads", type=int, default=TrainConfig.threads)
    ap.add_argument("--seed", type=int, default=TrainConfig.seed)
    ap.add_argument("--model", type=str, default=None, help="JSON of PartMaskConfig fields (default: the defaults)")
    args = ap.parse_args(argv)
    model = config_from_dict(PartMaskConfig, json.loads(args.model)) if args.model else PartMaskConfig()
    cfg = TrainConfig(data=tuple(args.data), out=args.out, steps=args.steps, batch=args.batch, lr=args.lr,
                      val_every=args.val_every, ckpt_every=args.ckpt_every, threads=args.threads, seed=args.seed,
                      model=model)
    try:
        result = Trainer(cfg, log=lambda s: print(s, flush=True)).fit()
    except MeshgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
