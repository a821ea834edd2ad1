#!/usr/bin/env python
"""Write the labelled render dataset for a part-mask model (resumable; train / val / test by seed).

For every shape of the part sets (``tokenizers3d.part_sets``: separate, fused and remeshed composites,
Anny bodies when the optional ``anny`` package is installed), ``--views`` random views with the project's
renderer; per view the normal map, the depth and the part instance of every pixel, one compressed ``.npz``
per shape and a JSON index (layout: ``renderers/part_views.py``). Seeds: train 10000+, val 1000-1999,
test 0-999 (the evaluation's), so no evaluation shape is trained on.

Usage::

    python scripts/make_segmentation_dataset.py -o data/part_views --train 1000 --val 50 --test 50 --views 8
    python scripts/make_segmentation_dataset.py -o data/part_views ...   # same again: resumes
"""

from __future__ import annotations

import argparse
import json
import sys

from renderers.part_views import DatasetConfig, planned_shapes, write_part_views
from tokenizers3d.part_sets import ANNY_INSTALL, COMPOSITE_FAMILIES, SET_NAMES, anny_available


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--out", required=True, help="output folder")
    ap.add_argument("--sets", nargs="+", default=["separate", "fused", "remeshed"], choices=SET_NAMES)
    ap.add_argument("--families", nargs="+", default=list(COMPOSITE_FAMILIES), choices=COMPOSITE_FAMILIES)
    ap.add_argument("--train", type=int, default=1000, help="shapes per set in the train split")
    ap.add_argument("--val", type=int, default=50)
    ap.add_argument("--test", type=int, default=50)
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0, help="seeds the view directions")
    ap.add_argument("--resolution", type=int, default=96, help="remeshed set: marching-cubes cells per side")
    ap.add_argument("--limit", type=int, default=None, help="render at most this many new shapes, then stop")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if "anny" in args.sets and not anny_available():
        ap.error(ANNY_INSTALL)
    try:
        config = DatasetConfig(sets=tuple(args.sets), families=tuple(args.families),
                               shapes={"train": args.train, "val": args.val, "test": args.test}, views=args.views,
                               image_size=args.image_size, seed=args.seed, resolution=args.resolution)
        total = len(planned_shapes(config))
    except ValueError as exc:
        ap.error(str(exc))

    def progress(done, n):
        print(f"\r{done}/{n} shapes", end="", file=sys.stderr, flush=True)

    try:
        index = write_part_views(args.out, config, device=args.device, limit=args.limit, progress=progress)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(file=sys.stderr)
    print(json.dumps({"out": args.out, "shapes": len(index["shapes"]), "planned": total,
                      "complete": len(index["shapes"]) == total}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
