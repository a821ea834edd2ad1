#!/usr/bin/env python
"""Write the synthetic human-image dataset of the body-recovery model (resumable; train / val / test by seed).

Every image is an Anny body with random phenotypes and pose, a random camera, background and lighting,
rendered by this project's rasterizer, with occluders on a share of the images (``renderers/body_data.py``
describes the labels: COCO-17 keypoints with visibility, 3D joints, coarse vertices, camera). Splits by seed:
train 10000+, val 1000-1999, test 0-999; ``test`` has no occluders and ``test_occluded`` shows the same
bodies and cameras with occluders on every image (the occlusion benchmark of ``scripts/eval_body.py``);
``--poses N`` adds N labelled poses without images (train seeds from 1,000,000 on: the pose-only batches of
``scripts/train_hmr.py --pose-only-batch``).

Usage::

    python scripts/make_body_dataset.py -o data/body --train 8192 --val 512 --test 512
    python scripts/make_body_dataset.py -o data/body --train 8192 --val 512 --test 512 --poses 65536
    python scripts/make_body_dataset.py -o data/body ...   # same again: resumes at the first missing shard
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--out", required=True, help="output folder")
    ap.add_argument("--train", type=int, default=8192, help="train images")
    ap.add_argument("--val", type=int, default=512)
    ap.add_argument("--test", type=int, default=512, help="test images (and as many occluded ones)")
    ap.add_argument("--poses", type=int, default=0, help="labelled poses without images (the poses split)")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--occluded-share", type=float, default=0.5, help="train/val images with occluders")
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    from renderers.body_data import HUMAN_INSTALL, BodyRenderSettings, human_available, write_body_dataset

    if not human_available():
        print(f"error: {HUMAN_INSTALL}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    try:
        settings = BodyRenderSettings(image_size=args.image_size, occluded_share=args.occluded_share)
        for split, n in (("test", args.test), ("test_occluded", args.test), ("val", args.val),
                         ("train", args.train), ("poses", args.poses)):
            if n > 0:
                write_body_dataset(args.out, split, n, shard_size=args.shard_size, settings=settings,
                                   progress=not args.no_progress)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"out": args.out, "train": args.train, "val": args.val, "test": args.test,
                      "poses": args.poses}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
