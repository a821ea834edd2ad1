#!/usr/bin/env python
"""Evaluate body-recovery models on the test split of a body dataset: MPJPE, PA-MPJPE and PVE (mm).

For each ``--checkpoint`` (a model directory of ``scripts/train_hmr.py``; label with ``NAME=DIR``), on the clean
test images (``test``) and on the same bodies and cameras with occluders (``test_occluded``):

* MPJPE: mean distance of the 17 predicted COCO joints to the true ones, both pelvis-relative (the predicted
  mid-hip moved onto the true one), mm;
* PA-MPJPE: the same after a similarity (Procrustes) alignment of each prediction to the truth;
* PVE: mean distance of the predicted full Anny mesh (13,718 vertices, upsampled from the model's coarse
  vertices by its fixed map) to the true mesh, after the same pelvis alignment, mm; ``PVE coarse`` on the
  model's own vertices;
* the 2D keypoint head's error in pixels (joints inside the image), and that of the model's separate 2D pose
  estimator when it carries one (``--keypoint-net DIR`` attaches one to every model with pose tokens), on all
  joints in the image and on the hidden ones.

The true full meshes are rebuilt from the seeds (needs ``anny``). Also ``--floor``: PVE of the upsampling map
applied to the *true* coarse vertices (the best any model of this size can do). Writes JSON (``--out``), a
Markdown table (``--markdown-out``) and a PNG grid (``--grid``) of test images with the predicted (blue) and
true (green) meshes overlaid.

Usage::

    python scripts/eval_body.py --data data/body --checkpoint pose=runs/hmr/best nopose=runs/hmr_nopose/best \\
        --out runs/eval_body.json --markdown-out runs/eval_body.md --grid runs/eval_body.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch


def procrustes(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """``pred`` (B, N, 3) aligned to ``true`` by the best similarity transform per item."""
    mp, mt = pred.mean(1, keepdims=True), true.mean(1, keepdims=True)
    p, t = pred - mp, true - mt
    out = np.empty_like(pred)
    for i in range(len(pred)):
        u, s, vt = np.linalg.svd(p[i].T @ t[i])
        d = np.sign(np.linalg.det(u @ vt))
        r = u @ np.diag([1.0, 1.0, d]) @ vt
        scale = (s * np.array([1.0, 1.0, d])).sum() / max((p[i] ** 2).sum(), 1e-12)
        out[i] = scale * p[i] @ r + mt[i]
    return out


def pose_inputs(data: dict, source: str) -> tuple[np.ndarray, np.ndarray] | None:
    """What the pose tokens read instead of the keypoint head (``--pose-from``): ``head`` / ``head-hard`` -> None
    (the model's own keypoints; :func:`predict` masks them for ``head-hard``); ``truth`` -> the true 2D keypoints in the crop frame, confidence 1 for every joint in the image
    (hidden ones too: a perfect 2D pose, the upper bound of what pose tokens can add); ``shuffled`` -> the true
    keypoints of another test image (a wrong pose: how much the model leans on the tokens)."""
    from tokenizers3d.pose_tokens import to_crop

    if source in ("head", "head-hard"):
        return None
    size = float(data["camera"][0, 3])
    kp = to_crop(data["keypoints"][..., :2], size).astype(np.float32)
    conf = (data["keypoints"][..., 2] > 0).astype(np.float32)
    if source == "shuffled":
        order = np.roll(np.arange(len(kp)), 1)
        kp, conf = kp[order], conf[order]
    return kp, conf


@torch.no_grad()
def predict(model, images: np.ndarray, batch: int = 64, pose: tuple[np.ndarray, np.ndarray] | None = None,
            hard_visibility: bool = False) -> dict:
    """The model's outputs on ``images`` (uint8 NHWC), pelvis-aligned. ``pose`` replaces what the pose tokens read
    (:func:`pose_inputs`); ``hard_visibility`` feeds them the keypoint head's own keypoints with confidence 1 where
    its visibility logit is positive and 0 elsewhere (joints it calls hidden are masked, as in the pose tokenizer's
    training) instead of the soft sigmoid."""
    outs = {"joints": [], "coarse": [], "full": [], "keypoints": [], "camera": []}
    for s in range(0, len(images), batch):
        x = torch.from_numpy(images[s:s + batch]).permute(0, 3, 1, 2).float() / 255.0
        kw = {} if pose is None else {"pose_keypoints": torch.from_numpy(pose[0][s:s + batch]),
                                      "pose_confidence": torch.from_numpy(pose[1][s:s + batch])}
        if hard_visibility:
            first = model(x)
            if first.estimate is not None:
                kw = {"pose_keypoints": first.estimate.keypoints, "pose_confidence": (first.estimate.seen > 0.5).float()}
            else:
                kw = {"pose_keypoints": first.keypoints, "pose_confidence": (first.visibility > 0).float()}
        o = model(x, **kw)
        if o.estimate is not None:
            outs.setdefault("estimate", []).append(o.estimate.keypoints.numpy())
        outs["joints"].append(o.joints.numpy())
        outs["coarse"].append(o.vertices.numpy())
        outs["full"].append(model.full_vertices(o.vertices).numpy())
        outs["keypoints"].append(o.keypoints.numpy())
        outs["camera"].append(o.camera.numpy())
    out = {k: np.concatenate(v).astype(np.float64) for k, v in outs.items()}
    pelvis = out["joints"][:, 11:13].mean(axis=1, keepdims=True)  # the usual protocol: align the predicted pelvis
    for k in ("joints", "coarse", "full"):
        out[k] = out[k] - pelvis
    return out


def metrics(pred: dict, data: dict, full_true: np.ndarray, q: int) -> dict:
    from renderers.body_data import root_relative
    from tokenizers3d.pose_tokens import to_crop

    joints = root_relative(data["joints"].astype(np.float64), data["joints"].astype(np.float64))
    coarse = root_relative(data["vertices"][:, :q].astype(np.float64), data["joints"].astype(np.float64))
    size = float(data["camera"][0, 3])
    kp = to_crop(data["keypoints"][..., :2], size)
    inside = data["keypoints"][..., 2] > 0
    kp_err = np.linalg.norm(pred["keypoints"] - kp, axis=-1) * size / 2
    mm = 1000.0
    extra = {}
    if "estimate" in pred:  # the model's own 2D pose estimator: all joints in the image, and the hidden ones
        err = np.linalg.norm(pred["estimate"] - kp, axis=-1) * size / 2
        extra = {"estimator_px": float(err[inside].mean()),
                 "estimator_px_hidden": float(err[data["keypoints"][..., 2] == 1].mean())
                 if (data["keypoints"][..., 2] == 1).any() else float("nan")}
    return {
        "n": int(len(joints)),
        "mpjpe": float(np.linalg.norm(pred["joints"] - joints, axis=-1).mean() * mm),
        "pa_mpjpe": float(np.linalg.norm(procrustes(pred["joints"], joints) - joints, axis=-1).mean() * mm),
        "pve": float(np.linalg.norm(pred["full"] - full_true, axis=-1).mean() * mm),
        "pve_coarse": float(np.linalg.norm(pred["coarse"] - coarse, axis=-1).mean() * mm),
        "keypoints_px": float(kp_err[inside].mean()),
        **extra,
    }


def grid_png(path: Path, data_clean: dict, data_occ: dict, preds: dict, full_true: np.ndarray, faces: np.ndarray,
             n: int = 6) -> None:
    n = min(n, len(data_clean["seed"]))
    from meshgen.body import fit_weak_perspective, overlay_image
    from renderers.body_data import root_relative
    from renderers.preview import write_png

    def gt_camera(i, data):
        j = root_relative(data["joints"][i].astype(np.float64), data["joints"][i].astype(np.float64))
        size = float(data["camera"][i, 3])
        return fit_weak_perspective(j, data["keypoints"][i, :, :2] * (2.0 / size) - 1.0)

    rows = []
    for data, key in ((data_clean, "test"), (data_occ, "test_occluded")):
        for i in range(n):
            img = data["image"][i]
            cells = [np.kron(img, np.ones((2, 2, 1), dtype=np.uint8))]
            for pr in preds.values():
                p = pr[key]
                cells.append(overlay_image(img, p["full"][i], faces, p["camera"][i], 1.0, (0, 0), max_side=256))
            cells.append(overlay_image(img, full_true[i], faces, gt_camera(i, data), 1.0, (0, 0), max_side=256,
                                       colour=(110.0, 220.0, 120.0)))
            rows.append(np.concatenate([np.pad(c, ((2, 2), (2, 2), (0, 0)), constant_values=255) for c in cells], 1))
    write_png(path, np.concatenate(rows, 0))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/body")
    ap.add_argument("--checkpoint", nargs="+", required=True, help="model directories, optionally NAME=DIR")
    ap.add_argument("--n", type=int, default=None, help="first N test images (default all)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--markdown-out", default=None)
    ap.add_argument("--grid", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keypoint-net", default=None,
                    help="a 2D pose estimator (scripts/train_keypoints.py) to attach to every model with pose tokens "
                         "(meshgen.hmr.attach_keypoint_net): their tokens read its keypoints")
    ap.add_argument("--pose-from", choices=("head", "head-hard", "truth", "shuffled"), default="head",
                    help="what the pose tokens read (models with pose tokens): the model's own 2D pose (default: its "
                         "keypoint head, or its estimator when it carries one), the same with the joints it calls hidden "
                         "masked (head-hard), the true 2D keypoints (upper bound), or "
                         "another image's true keypoints (reliance on the tokens)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from meshgen.body import load_body_model
    from renderers.body_data import BodyRenderer, load_body_split, root_relative
    from tokenizers3d.errors import MeshgenError

    try:
        clean, occ = load_body_split(args.data, "test"), load_body_split(args.data, "test_occluded")
        models, paths = {}, {}
        for spec in args.checkpoint:
            name, _, path = spec.rpartition("=")
            name = name or Path(path).parent.name
            models[name], paths[name] = load_body_model(path), path
        if args.keypoint_net:
            from meshgen.hmr import attach_keypoint_net
            from meshgen.keypoints import KeypointNet

            net = KeypointNet.from_pretrained(args.keypoint_net).eval()
            models = {k: attach_keypoint_net(m, net).eval() if m.config.pose_tokens else m for k, m in models.items()}
    except (FileNotFoundError, MeshgenError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.n:
        clean = {k: v[:args.n] for k, v in clean.items()}
        occ = {k: v[:args.n] for k, v in occ.items()}
    if not np.array_equal(clean["seed"], occ["seed"]):
        print("error: test and test_occluded hold different seeds", file=sys.stderr)
        return 2
    renderer = BodyRenderer()
    full_true = renderer.full_vertices(clean["seed"])
    result, preds = {"data": args.data, "n": int(len(clean["seed"])), "models": {}}, {}
    for name, model in models.items():
        q = model.config.n_vertices
        source = args.pose_from if model.config.pose_tokens else "head"
        preds[name] = {key: predict(model, d["image"], pose=pose_inputs(d, source), hard_visibility=source == "head-hard")
                       for key, d in (("test", clean), ("test_occluded", occ))}
        r = {key: metrics(preds[name][key], d, full_true, q) for key, d in (("test", clean), ("test_occluded", occ))}
        coarse_true = root_relative(clean["vertices"][:, :q].astype(np.float64), clean["joints"].astype(np.float64))
        floor = model.full_vertices(torch.as_tensor(coarse_true, dtype=torch.float32)).numpy()
        r["upsampling_floor_pve"] = float(np.linalg.norm(floor - full_true, axis=-1).mean() * 1000)
        r["pose_tokens"] = bool(model.config.pose_tokens)
        r["pose_from"] = source
        r["checkpoint"] = paths[name]
        r["keypoint_net"] = args.keypoint_net if args.keypoint_net and model.config.pose_tokens else (
            "carried" if model.keypoint_net is not None else None)
        result["models"][name] = r
        print(json.dumps({name: r}), flush=True)
    lines = ["| model | pose tokens | images | MPJPE | PA-MPJPE | PVE | PVE coarse | 2D keypoints (px) | "
             "2D estimator (px; hidden joints) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["models"].items():
        own = "yes, from its estimator" if r["keypoint_net"] else "yes"
        tokens = "no" if not r["pose_tokens"] else (own if r["pose_from"] == "head" else f"from {r['pose_from']}")
        for key, label in (("test", "clean"), ("test_occluded", "occluded")):
            m = r[key]
            lines.append(f"| {name} | {tokens} | {label} | {m['mpjpe']:.1f} | "
                         f"{m['pa_mpjpe']:.1f} | {m['pve']:.1f} | {m['pve_coarse']:.1f} | {m['keypoints_px']:.2f} | "
                         + (f"{m['estimator_px']:.2f}; {m['estimator_px_hidden']:.2f} |" if "estimator_px" in m else "-- |"))
    md = "\n".join(lines) + f"\n\nmm on Anny's scale, {result['n']} test bodies (seeds {int(clean['seed'][0])}-" \
                            f"{int(clean['seed'][-1])}); upsampling floor PVE " + \
         ", ".join(f"{k} {r['upsampling_floor_pve']:.1f}" for k, r in result["models"].items()) + ".\n"
    print(md)
    from tokenizers3d.io import atomic_write_text

    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    if args.markdown_out:
        atomic_write_text(args.markdown_out, md)
    if args.grid:
        grid_png(Path(args.grid), clean, occ, preds, full_true, renderer.faces)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
