#!/usr/bin/env python
"""Train the body-recovery model (:mod:`meshgen.hmr`, PostoMETRO on Anny) on a body dataset. Resumable.

The dataset comes from ``scripts/make_body_dataset.py`` (train and val splits by seed; the test seeds of
``scripts/eval_body.py`` are never trained on) and the frozen pose tokenizer from
``scripts/train_pose_tokenizer.py`` (copied into the model at the start of a run). Every step: a batch of train
images with colour jitter (per-channel gain, brightness, contrast, noise), one AdamW step on
:func:`meshgen.hmr.hmr_losses`. Validation every ``--val-every`` steps on the val split: MPJPE and coarse-vertex
error (mm) on its clean and its occluded images; ``OUT/best`` keeps the lowest mean coarse-vertex error,
``OUT/last`` the resumable state, ``OUT/log.csv`` the curve. ``--no-pose-tokens`` trains the ablation (the same
model without the pose tokens, same data and budget). ``--pose-teacher P`` feeds a share ``P`` of the training
images' pose tokens the true keypoints instead of the head's (validation always uses the head's); ``--image-drop P``
hides part of the image tokens of a share ``P`` of the training images from the transformer (modality dropout).
``--keypoint-net DIR`` installs a separate 2D pose estimator (``scripts/train_keypoints.py``; frozen, saved inside
the model) whose keypoints the pose tokens read instead of the keypoint head's, as PostoMETRO's do.
``--pose-only-batch N`` adds to every step ``N`` labelled poses without images (the dataset's ``poses`` split,
``make_body_dataset.py --poses``): their true 2D keypoints, jittered by ``--teacher-noise`` px, with the joints under
a random box hidden on half of them, go through the pose tokens alone (:meth:`meshgen.hmr.HMRModel.lift`: no image
tokens) to 3D, and their vertex, joint, reprojection, edge and normal losses, weighted by ``--pose-only-weight``,
join the images' -- the tokens -> 3D path learns from poses that cost no rendering.

Usage::

    python scripts/train_hmr.py --data data/body --tokenizer runs/pose_tokenizer/best --out runs/hmr
    python scripts/train_hmr.py --data data/body --tokenizer runs/pose_tokenizer/best --out runs/hmr_nopose \\
        --no-pose-tokens
    python scripts/train_hmr.py ... --out runs/hmr_pose2 --init-from runs/hmr_pose/best   # a second stage
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from meshgen.hmr import HMRConfig, HMRModel, LossWeights, colour_jitter, hmr_losses, with_keypoint_net
from meshgen.keypoints import KeypointNet
from meshgen.train import lr_at, optimizer_step
from tokenizers3d.checkpoint import RunFolder
from tokenizers3d.errors import MeshgenError
from tokenizers3d.io import atomic_write_text
from tokenizers3d.pose_tokens import PoseTokenizer, to_crop

LOG_FIELDS = ["step", "lr", "loss", "vertices", "joints", "reprojection", "keypoints", "visibility", "edges",
              "normals", "pose_only", "images_per_s", "val_pve", "val_mpjpe", "val_pve_occluded", "elapsed_s"]
POSE_ONLY_WEIGHTS = LossWeights(keypoints=0.0, visibility=0.0)  # no image: no keypoint head to train


class BodySplit:
    """One split of a body dataset in memory, and its batches as tensors (pelvis-relative 3D targets); the
    ``poses`` split has no images (its batches none)."""

    def __init__(self, root: Path, split: str, n_vertices: int):
        from renderers.body_data import load_body_split, root_relative

        d = load_body_split(root, split)
        self.images = d.get("image")
        self.size = float(d["camera"][0, 3])
        self.joints = root_relative(d["joints"], d["joints"]).astype(np.float32)
        self.vertices = root_relative(d["vertices"][:, :n_vertices], d["joints"]).astype(np.float32)
        self.keypoints = to_crop(d["keypoints"][..., :2], self.size).astype(np.float32)
        self.vis = d["keypoints"][..., 2].astype(np.int64)
        self.occluded = d["occlusion"] > 0 if "occlusion" in d else np.zeros(len(d["seed"]), dtype=bool)
        self.seeds = d["seed"]

    def __len__(self) -> int:
        return len(self.seeds)

    def batch(self, idx: np.ndarray, rng: np.random.Generator | None = None) -> dict:
        labels = {"joints": torch.from_numpy(self.joints[idx]), "vertices": torch.from_numpy(self.vertices[idx]),
                  "keypoints": torch.from_numpy(self.keypoints[idx]), "inside": torch.from_numpy(self.vis[idx] > 0),
                  "visible": torch.from_numpy(self.vis[idx] == 2)}
        if self.images is None:
            return labels
        img = torch.from_numpy(self.images[idx]).permute(0, 3, 1, 2).float() / 255.0
        if rng is not None:
            img = colour_jitter(rng, img)
        return {"images": img, **labels}


def install_topology(model: HMRModel, n_fit: int = 48) -> None:
    """Fit the coarse -> full upsampling map on ``n_fit`` train bodies and install it with the coarse faces."""
    from renderers.body_data import BodyRenderer, coarse_topology, split_seed

    renderer = BodyRenderer()
    topo = coarse_topology(model.config.n_vertices)  # cached: built once with coarse_faces_count's
    full = renderer.full_vertices([split_seed("train", 500_000 + i) for i in range(n_fit)])
    nbr, w = topo.upsample_map(full, model.config.n_vertices, renderer.body.template, k=model.config.up_k)
    model.set_topology(nbr, w, topo.faces, renderer.body.faces)


def coarse_faces_count(n_vertices: int) -> int:
    from renderers.body_data import coarse_topology

    return len(coarse_topology(n_vertices).faces)


@torch.no_grad()
def validate(model: HMRModel, data: BodySplit, batch: int = 64) -> dict:
    model.eval()
    pve, mpjpe = [], []
    for s in range(0, len(data), batch):
        idx = np.arange(s, min(s + batch, len(data)))
        b = data.batch(idx)
        out = model(b["images"])
        pve.append((out.vertices - b["vertices"]).norm(dim=-1).mean(-1))
        mpjpe.append((out.joints - b["joints"]).norm(dim=-1).mean(-1))
    model.train()
    pve, mpjpe = torch.cat(pve).numpy() * 1000, torch.cat(mpjpe).numpy() * 1000
    occ = data.occluded
    return {"pve": float(pve.mean()), "mpjpe": float(mpjpe.mean()), "pve_clean": float(pve[~occ].mean()) if (~occ).any() else float("nan"),
            "pve_occluded": float(pve[occ].mean()) if occ.any() else float("nan")}


def hidden_image_tokens(rng: np.random.Generator, n: int, n_tokens: int, share: float) -> torch.Tensor:
    """(n, n_tokens) bool: on a share ``share`` of the rows, a random 25-100 % of the image tokens are hidden."""
    hide = rng.random((n, n_tokens)) < rng.uniform(0.25, 1.0, (n, 1))
    return torch.as_tensor(hide & (rng.random((n, 1)) < share))


def pose_only_inputs(rng: np.random.Generator, keypoints: torch.Tensor, inside: torch.Tensor, noise: float,
                     box_share: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """What the pose tokens of a pose-only example read: the true keypoints (B, J, 2, crop frame) jittered by
    ``noise`` (crop units), confidence 1 for the joints in the image; on a share ``box_share`` of the rows the
    joints under a random box (centred near one of the joints, half-sides 0.1-0.4 of the crop) get confidence 0,
    as behind an occluder -- the tokenizer was trained to complete such poses."""
    n, j = keypoints.shape[:2]
    kp = keypoints + torch.as_tensor(rng.normal(0.0, noise, (n, j, 2)), dtype=torch.float32)
    centre = keypoints[torch.arange(n), torch.as_tensor(rng.integers(0, j, n))]
    centre = centre + torch.as_tensor(rng.uniform(-0.1, 0.1, (n, 2)), dtype=torch.float32)
    half = torch.as_tensor(rng.uniform(0.1, 0.4, (n, 1, 2)), dtype=torch.float32)
    under = ((keypoints - centre[:, None]).abs() < half).all(-1)
    boxed = torch.as_tensor(rng.random(n) < box_share)[:, None]
    return kp, (inside & ~(under & boxed)).float()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/body")
    ap.add_argument("--tokenizer", default="runs/pose_tokenizer/best", help="pose tokenizer model directory")
    ap.add_argument("--out", default="runs/hmr")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--val-every", type=int, default=250)
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-pose-tokens", action="store_true", help="the ablation without pose tokens")
    ap.add_argument("--init-from", default=None, help="start a new run from these weights (a model directory of "
                                                      "this script with the same config; a longer second stage; a "
                                                      "--no-pose-tokens run may start from a pose model)")
    ap.add_argument("--model", default=None, help="JSON of HMRConfig fields (besides the pose tokenizer's)")
    ap.add_argument("--pose-teacher", type=float, default=0.0,
                    help="share of training images whose pose tokens read the true 2D keypoints (jittered by "
                         "--teacher-noise px; every joint in the image, hidden ones too) instead of the keypoint "
                         "head's, so the transformer learns to rely on the tokens")
    ap.add_argument("--teacher-noise", type=float, default=2.0, help="std of the teacher keypoints' jitter, pixels")
    ap.add_argument("--image-drop", type=float, default=0.0,
                    help="share of training images that hide a random 25-100%% of their image tokens from the "
                         "transformer (modality dropout: the rest must come from the pose tokens)")
    ap.add_argument("--pose-only-batch", type=int, default=0,
                    help="labelled poses without images per step (the dataset's poses split): 2D keypoints -> pose "
                         "tokens -> 3D, no image tokens")
    ap.add_argument("--pose-only-weight", type=float, default=1.0, help="weight of the pose-only batch's loss")
    ap.add_argument("--keypoint-net", default=None,
                    help="a 2D pose estimator (model directory of scripts/train_keypoints.py) whose keypoints the "
                         "pose tokens read instead of the keypoint head's; frozen, saved inside the model")
    args = ap.parse_args(argv)
    for flag, given in (("--pose-only-batch", args.pose_only_batch), ("--keypoint-net", args.keypoint_net)):
        if given and args.no_pose_tokens:
            print(f"error: {flag} needs the pose tokens (not with --no-pose-tokens)", file=sys.stderr)
            return 2
    try:
        tokenizer = PoseTokenizer.from_pretrained(args.tokenizer)
        kw = {k: tuple(v) if isinstance(v, list) else v  # JSON lists are the config's tuples
              for k, v in (json.loads(args.model) if args.model else {}).items()}
        config = HMRConfig(**kw)
        net = KeypointNet.from_pretrained(args.keypoint_net) if args.keypoint_net else None
        config = replace(config, pose_tokens=not args.no_pose_tokens, pose_tokenizer=tokenizer.config,
                         n_coarse_faces=coarse_faces_count(config.n_vertices),
                         keypoint_net=None if net is None else net.config)
        train = BodySplit(Path(args.data), "train", config.n_vertices)
        val = BodySplit(Path(args.data), "val", config.n_vertices)
        poses = BodySplit(Path(args.data), "poses", config.n_vertices) if args.pose_only_batch else None
    except (FileNotFoundError, MeshgenError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run = RunFolder(args.out)
    model, opt, step, best = run.start(HMRModel, config,
                                       lambda p: torch.optim.AdamW([q for q in p if q.requires_grad], lr=args.lr,
                                                                   weight_decay=1e-4),
                                       threads=args.threads, seed=args.seed)
    if step == 0 and args.init_from:
        start = HMRModel.from_pretrained(args.init_from)
        # The two designs have the same parameters (the ablation keeps an unused tokenizer), so an ablation may start
        # from a pose model's weights: both arms of a comparison then share every earlier stage.
        if replace(start.config, pose_tokens=config.pose_tokens, keypoint_net=config.keypoint_net) != config:
            print(f"error: {args.init_from} holds another model config", file=sys.stderr)
            return 2
        model.load_state_dict(with_keypoint_net(start.state_dict(), net))  # the given estimator, if any
    elif step == 0:
        model.tokenizer.load_state_dict(tokenizer.state_dict())
        install_topology(model)
        if net is not None:
            model.keypoint_net.load_state_dict(net.state_dict())
    best = float("inf") if best < 0 else best
    run.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.out / "train_config.json", json.dumps(vars(args), indent=1) + "\n")
    run.record_session(from_step=step, train_images=len(train), val_images=len(val))
    rng = np.random.default_rng([args.seed, step])
    elapsed0, t0, t_log, rows = run.elapsed_before(), time.time(), time.time(), []
    val_row = {"pve": float("nan"), "mpjpe": float("nan"), "pve_occluded": float("nan")}
    model.train()
    while step < args.steps:
        lr = lr_at(step, base=args.lr, warmup=100, total=args.steps, min_ratio=0.05)
        b = train.batch(rng.choice(len(train), args.batch, replace=False), rng)
        kw = {}
        if args.pose_teacher > 0 and config.pose_tokens:
            n = len(b["images"])
            noise = rng.normal(0.0, args.teacher_noise * 2 / train.size, (n, 17, 2))  # px -> crop frame [-1, 1]
            kw = {"pose_keypoints": b["keypoints"] + torch.as_tensor(noise, dtype=torch.float32),
                  "pose_confidence": b["inside"].float(),
                  "pose_rows": torch.as_tensor(rng.random(n) < args.pose_teacher)}
        if args.image_drop > 0:
            kw["image_hidden"] = hidden_image_tokens(rng, len(b["images"]), (config.image_size // 16) ** 2,
                                                     args.image_drop)
        terms = hmr_losses(model(b["images"], **kw), b, model)
        if poses is not None:
            pb = poses.batch(rng.choice(len(poses), args.pose_only_batch, replace=False))
            kp, conf = pose_only_inputs(rng, pb["keypoints"], pb["inside"], args.teacher_noise * 2 / train.size)
            terms["pose_only"] = hmr_losses(model.lift(kp, conf), pb, model, POSE_ONLY_WEIGHTS)["loss"]
            terms["loss"] = terms["loss"] + args.pose_only_weight * terms["pose_only"]
        optimizer_step(opt, terms["loss"], model.parameters(), lr=lr, clip=1.0)
        step += 1
        rows.append({k: float(v.detach()) for k, v in terms.items()})
        if step % args.val_every == 0 or step == args.steps:
            val_row = validate(model, val)
            print(json.dumps({"step": step, "val": val_row}), flush=True)
            best = run.keep_best(model, step, val_row["pve"], best, val_row)
        if step % 25 == 0 or step == args.steps:
            now = time.time()
            row = run.log_means(rows, LOG_FIELDS, step=step, lr=f"{lr:.3e}",
                                images_per_s=f"{len(rows) * args.batch / (now - t_log):.1f}",
                                val_pve=f"{val_row['pve']:.1f}", val_mpjpe=f"{val_row['mpjpe']:.1f}",
                                val_pve_occluded=f"{val_row['pve_occluded']:.1f}", elapsed_s=f"{elapsed0 + now - t0:.1f}")
            print(json.dumps(row), flush=True)
            rows, t_log = [], now
        if step % args.ckpt_every == 0 or step == args.steps:
            run.checkpoint(model, "last", optimizer=opt, step=step, best=best)
    print(json.dumps({"step": step, "best_val_pve": best, "val": val_row, "out": str(run.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
