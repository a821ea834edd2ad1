#!/usr/bin/env python
"""Train the 2D pose estimator of the body-recovery model (:mod:`meshgen.keypoints`) on a body dataset. Resumable.

The dataset comes from ``scripts/make_body_dataset.py`` (train and val splits; the test seeds are never trained
on). Every step: a batch of train images with colour jitter, a horizontal flip (left and right joints swapped) on
half of them, and rectangles pasted over the body on a share ``--paste`` of them (plain, striped or noisy, as the
dataset's occluders; seen joints under one become hidden, their true positions stay the targets), then one AdamW
step on :func:`meshgen.keypoints.keypoint_losses`. Validation every ``--val-every`` steps: mean keypoint error in
pixels (joints inside the image) on the val split's clean and occluded images; ``OUT/best`` keeps the lowest mean of
the two, ``OUT/last`` the resumable state, ``OUT/log.csv`` the curve.

Install a trained net into a body model with ``scripts/train_hmr.py --keypoint-net OUT/best``.

Usage::

    python scripts/train_keypoints.py --data data/body --out runs/keypoints --steps 4000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from meshgen.hmr import colour_jitter
from meshgen.keypoints import HIDDEN, SEEN, KeypointConfig, KeypointNet, keypoint_losses
from meshgen.train import lr_at, optimizer_step
from tokenizers3d.checkpoint import RunFolder
from tokenizers3d.errors import MeshgenError
from tokenizers3d.io import atomic_write_text
from tokenizers3d.pose_tokens import FLIP_PAIRS

LOG_FIELDS = ["step", "lr", "loss", "heatmap", "keypoints", "visibility", "images_per_s", "val_px", "val_px_clean",
              "val_px_occluded", "val_px_hidden", "elapsed_s"]
FLIP = np.arange(17)
for _a, _b in FLIP_PAIRS:
    FLIP[_a], FLIP[_b] = _b, _a


def paste_occluders(rng: np.random.Generator, images: np.ndarray, keypoints_px: np.ndarray, flags: np.ndarray,
                    share: float) -> tuple[np.ndarray, np.ndarray]:
    """On a share ``share`` of ``images`` (B, S, S, 3 uint8, modified copy returned), 1-3 rectangles over the body
    (its keypoints' box), painted as the dataset's occluders; seen joints under one become hidden. Returns
    (images, flags)."""
    from renderers.body_data import paint_occluders

    images, flags = images.copy(), flags.copy()
    size = images.shape[1]
    for i in np.nonzero(rng.random(len(images)) < share)[0]:
        inside = flags[i] > 0
        if not inside.any():
            continue
        (x_lo, y_lo), (x_hi, y_hi) = keypoints_px[i][inside].min(0), keypoints_px[i][inside].max(0)
        bw, bh = max(x_hi - x_lo, 8.0), max(y_hi - y_lo, 8.0)
        rects = []
        for _ in range(int(rng.integers(1, 4))):
            h, w = rng.uniform(0.15, 0.6) * bh + 2, rng.uniform(0.3, 1.1) * bw + 2
            cy, cx = rng.uniform(y_lo, y_hi), rng.uniform(x_lo, x_hi)
            y0, x0 = int(max(cy - h / 2, 0)), int(max(cx - w / 2, 0))
            rects.append((y0, int(min(cy + h / 2, size)), x0, int(min(cx + w / 2, size))))
        img = images[i].astype(np.float64) / 255.0
        paint_occluders(rng, img, rects)
        images[i] = np.round(img * 255.0).astype(np.uint8)
        for y0, y1, x0, x1 in rects:
            kp = keypoints_px[i]
            under = (kp[:, 0] >= x0) & (kp[:, 0] < x1) & (kp[:, 1] >= y0) & (kp[:, 1] < y1)
            flags[i][under & (flags[i] == SEEN)] = HIDDEN
    return images, flags


def training_batch(data: dict, idx: np.ndarray, rng: np.random.Generator, paste: float) -> dict:
    """Augmented tensors for the examples ``idx`` of a loaded split: ``images`` (B, 3, S, S), ``keypoints`` (B, J,
    2, crop frame), ``flags`` (B, J)."""
    images, kp, flags = data["image"][idx], data["keypoints"][idx, :, :2].astype(np.float64), data["keypoints"][idx, :, 2]
    size = images.shape[1]
    flip = rng.random(len(idx)) < 0.5
    images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
    kp = np.where(flip[:, None, None], np.stack([size - kp[..., 0], kp[..., 1]], -1)[:, FLIP], kp)
    flags = np.where(flip[:, None], flags[:, FLIP], flags)
    images, flags = paste_occluders(rng, images, kp, flags, paste)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return {"images": colour_jitter(rng, x), "keypoints": torch.as_tensor(kp * (2.0 / size) - 1.0, dtype=torch.float32),
            "flags": torch.as_tensor(flags.astype(np.int64))}


@torch.no_grad()
def keypoint_errors(model: KeypointNet, data: dict, batch: int = 64) -> np.ndarray:
    """(N, J) pixel error of the net's keypoints on a loaded split (NaN for joints outside the image)."""
    was = model.training
    model.eval()
    size = data["image"].shape[1]
    pred = []
    for s in range(0, len(data["image"]), batch):
        x = torch.from_numpy(data["image"][s:s + batch]).permute(0, 3, 1, 2).float() / 255.0
        pred.append(model(x).keypoints.numpy())
    model.train(was)
    kp = (np.concatenate(pred).astype(np.float64) + 1.0) * (size / 2.0)
    err = np.linalg.norm(kp - data["keypoints"][..., :2], axis=-1)
    return np.where(data["keypoints"][..., 2] > 0, err, np.nan)


def validate(model: KeypointNet, val: dict) -> dict:
    err = keypoint_errors(model, val)
    occ = val["occlusion"] > 0
    hidden = val["keypoints"][..., 2] == HIDDEN
    clean, occluded = float(np.nanmean(err[~occ])), float(np.nanmean(err[occ]))
    return {"px": (clean + occluded) / 2, "px_clean": clean, "px_occluded": occluded,
            "px_hidden": float(np.nanmean(err[hidden])) if hidden.any() else float("nan")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/body")
    ap.add_argument("--out", default="runs/keypoints")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--paste", type=float, default=0.5, help="share of training images given pasted occluders")
    ap.add_argument("--val-every", type=int, default=250)
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-train", type=int, default=None, help="use only the first N train images")
    ap.add_argument("--model", default=None, help="JSON of KeypointConfig fields")
    args = ap.parse_args(argv)
    from renderers.body_data import load_body_split

    try:
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in (json.loads(args.model) if args.model else {}).items()}
        config = KeypointConfig(**kw)
        train = load_body_split(Path(args.data), "train")
        val = load_body_split(Path(args.data), "val")
    except (FileNotFoundError, MeshgenError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.max_train:
        train = {k: v[:args.max_train] for k, v in train.items()}
    if train["image"].shape[1] != config.image_size:
        print(f"error: {args.data} holds {train['image'].shape[1]} px images, the model takes {config.image_size}",
              file=sys.stderr)
        return 2
    run = RunFolder(args.out)
    model, opt, step, best = run.start(KeypointNet, config,
                                       lambda p: torch.optim.AdamW(list(p), lr=args.lr, weight_decay=1e-4),
                                       threads=args.threads, seed=args.seed)
    best = float("inf") if best < 0 else best
    run.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.out / "train_config.json", json.dumps(vars(args), indent=1) + "\n")
    n_train = len(train["seed"])
    run.record_session(from_step=step, train_images=n_train, val_images=len(val["seed"]))
    rng = np.random.default_rng([args.seed, step])
    elapsed0, t0, t_log, rows = run.elapsed_before(), time.time(), time.time(), []
    val_row = {"px": float("nan"), "px_clean": float("nan"), "px_occluded": float("nan"), "px_hidden": float("nan")}
    model.train()
    while step < args.steps:
        lr = lr_at(step, base=args.lr, warmup=100, total=args.steps, min_ratio=0.05)
        b = training_batch(train, rng.choice(n_train, args.batch, replace=False), rng, args.paste)
        terms = keypoint_losses(model(b["images"]), b["keypoints"], b["flags"], config.sigma)
        optimizer_step(opt, terms["loss"], model.parameters(), lr=lr, clip=1.0)
        step += 1
        rows.append({k: float(v.detach()) for k, v in terms.items()})
        if step % args.val_every == 0 or step == args.steps:
            val_row = validate(model, val)
            print(json.dumps({"step": step, "val": val_row}), flush=True)
            best = run.keep_best(model, step, val_row["px"], best, val_row)
        if step % 25 == 0 or step == args.steps:
            now = time.time()
            row = run.log_means(rows, LOG_FIELDS, step=step, lr=f"{lr:.3e}",
                                images_per_s=f"{len(rows) * args.batch / (now - t_log):.1f}",
                                **{f"val_{k}": f"{v:.2f}" for k, v in val_row.items()},
                                elapsed_s=f"{elapsed0 + now - t0:.1f}")
            print(json.dumps(row), flush=True)
            rows, t_log = [], now
        if step % args.ckpt_every == 0 or step == args.steps:
            run.checkpoint(model, "last", optimizer=opt, step=step, best=best)
    print(json.dumps({"step": step, "best_val_px": best, "val": val_row, "out": str(run.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
