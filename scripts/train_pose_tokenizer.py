#!/usr/bin/env python
"""Train the 2D pose tokenizer (:mod:`tokenizers3d.pose_tokens`) on the keypoints of a body dataset. Resumable.

The dataset comes from ``scripts/make_body_dataset.py``; the tokenizer sees the COCO-17 keypoints of the train
split in the crop frame, with a random share of the joints hidden (plus the joints the renderer marked as
hidden), and must give back all 17. Every step: a batch of poses, randomly mirrored left-right (joints
swapped) and jittered, one AdamW step. Validation (val split, every ``--val-every`` steps): mean keypoint error
in pixels of the decoded tokens for all joints of the unmasked poses, and with 30 % of the joints hidden;
codebook usage. ``OUT/best`` (lowest unmasked error), ``OUT/last`` (resumable), ``OUT/log.csv``.

Usage::

    python scripts/train_pose_tokenizer.py --data data/body --out runs/pose_tokenizer
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from meshgen.train import lr_at, optimizer_step
from tokenizers3d.checkpoint import RunFolder
from tokenizers3d.errors import MeshgenError
from tokenizers3d.io import atomic_write_text
from tokenizers3d.pose_tokens import FLIP_PAIRS, PoseTokenizer, PoseTokenizerConfig, mask_joints, to_crop

LOG_FIELDS = ["step", "lr", "loss", "recon", "commit", "poses_per_s", "val_px", "val_masked_px", "usage",
              "elapsed_s"]


def load_poses(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Keypoints (N, 17, 2) in the crop frame, visibility (N, 17) bool (seen and inside), image size."""
    from renderers.body_data import load_body_split

    data = load_body_split(root, split)
    size = float(data["camera"][0, 3])
    kp = torch.as_tensor(to_crop(data["keypoints"][..., :2], size), dtype=torch.float32)
    return kp, torch.as_tensor(data["keypoints"][..., 2] == 2), size


def mirror(kp: torch.Tensor, vis: torch.Tensor, flip: torch.Tensor):
    perm = list(range(kp.shape[1]))
    for a, b in FLIP_PAIRS:
        perm[a], perm[b] = b, a
    kp2 = kp.clone()
    kp2[flip] = kp[flip][:, perm] * torch.tensor([-1.0, 1.0])
    vis2 = vis.clone()
    vis2[flip] = vis[flip][:, perm]
    return kp2, vis2


@torch.no_grad()
def validate(model: PoseTokenizer, kp: torch.Tensor, size: float, gen: torch.Generator) -> dict:
    model.eval()
    ones = torch.ones(kp.shape[:2], dtype=torch.bool)
    clean = model.decode(model.encode(kp))
    masked_kp, conf = mask_joints(kp, ones, gen, max_share=0.0, noise=0.0)
    hide = torch.rand(kp.shape[:2], generator=gen) < 0.3
    masked_kp, conf = masked_kp * (~hide)[..., None], conf * (~hide)
    ids = model.encode(masked_kp, conf)
    masked = model.decode(ids)
    px = float((clean - kp).norm(dim=-1).mean()) * size / 2
    mpx = float((masked - kp).norm(dim=-1).mean()) * size / 2
    usage = len(torch.unique(model.encode(kp))) / model.config.codebook_size
    model.train()
    return {"px": px, "masked_px": mpx, "usage": usage}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/body")
    ap.add_argument("--out", default="runs/pose_tokenizer")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--val-every", type=int, default=250)
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None, help="JSON of PoseTokenizerConfig fields")
    args = ap.parse_args(argv)
    config = PoseTokenizerConfig(**json.loads(args.model)) if args.model else PoseTokenizerConfig()
    try:
        kp, vis, size = load_poses(Path(args.data), "train")
        val_kp, _, _ = load_poses(Path(args.data), "val")
    except (FileNotFoundError, MeshgenError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run = RunFolder(args.out)
    model, opt, step, best = run.start(PoseTokenizer, config, lambda p: torch.optim.AdamW(p, lr=args.lr),
                                       threads=args.threads, seed=args.seed)
    best = float("inf") if best < 0 else best
    run.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.out / "train_config.json", json.dumps(vars(args), indent=1) + "\n")
    run.record_session(from_step=step, train_poses=len(kp), val_poses=len(val_kp))
    gen = torch.Generator().manual_seed(args.seed * 100003 + step)
    elapsed0, t0, t_log, rows = run.elapsed_before(), time.time(), time.time(), []
    val = {"px": float("nan"), "masked_px": float("nan"), "usage": float("nan")}
    model.train()
    while step < args.steps:
        lr = lr_at(step, base=args.lr, warmup=50, total=args.steps, min_ratio=0.05)
        idx = torch.randint(len(kp), (args.batch,), generator=gen)
        b_kp, b_vis = mirror(kp[idx], vis[idx], torch.rand(args.batch, generator=gen) < 0.5)
        inp, conf = mask_joints(b_kp, b_vis | (torch.rand(b_vis.shape, generator=gen) < 0.5), gen)
        out = model(inp, conf, target=b_kp)
        optimizer_step(opt, out.loss, model.parameters(), lr=lr, clip=1.0)
        step += 1
        rows.append({"loss": out.loss.item(), "recon": out.recon_loss.item(), "commit": out.commit_loss.item()})
        if step % args.val_every == 0 or step == args.steps:
            val = validate(model, val_kp, size, torch.Generator().manual_seed(1))
            print(json.dumps({"step": step, "val": val}), flush=True)
            best = run.keep_best(model, step, val["px"], best, val)
        if step % 50 == 0 or step == args.steps:
            now = time.time()
            row = run.log_means(rows, LOG_FIELDS, step=step, lr=f"{lr:.3e}",
                                poses_per_s=f"{len(rows) * args.batch / (now - t_log):.0f}",
                                val_px=f"{val['px']:.3f}", val_masked_px=f"{val['masked_px']:.3f}",
                                usage=f"{val['usage']:.3f}", elapsed_s=f"{elapsed0 + now - t0:.1f}")
            print(json.dumps(row), flush=True)
            rows, t_log = [], now
        if step % args.ckpt_every == 0 or step == args.steps:
            run.checkpoint(model, "last", optimizer=opt, step=step, best=best)
    print(json.dumps({"step": step, "best_val_px": best, "val": val, "out": str(run.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
