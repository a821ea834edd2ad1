#!/usr/bin/env python
"""Write the small body fixture the tests, the README and ``meshgen body``'s examples use (needs ``anny``).

``assets/body/samples.npz``: 8 test-split examples (seeds 0-7; seeds 4-7 with occluders) with every label of
``renderers/body_data.py``, and the COCO keypoints of 256 more test-split poses (``poses``: seeds 0-255, crop
frame, visibility); ``assets/body/person-K.png``: the 8 images as PNG files.

Usage::

    python scripts/make_body_samples.py --out assets/body
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="assets/body")
    ap.add_argument("--poses", type=int, default=256)
    args = ap.parse_args(argv)
    from renderers.body_data import HUMAN_INSTALL, BodyRenderer, human_available, split_seed
    from renderers.preview import write_png

    if not human_available():
        print(f"error: {HUMAN_INSTALL}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    renderer = BodyRenderer()
    rows = [renderer.example(split_seed("test", i), occluded=i >= 4) for i in range(8)]
    arrays = {k: np.stack([r[k] for r in rows]) for k in ("image", "keypoints", "joints", "vertices", "camera",
                                                          "occlusion", "seed")}
    poses = [renderer.example(split_seed("test", i), occluded=False)["keypoints"] for i in range(args.poses)]
    arrays["poses"] = np.stack(poses)
    np.savez_compressed(out / "samples.npz", **arrays)
    for i, r in enumerate(rows):
        write_png(out / f"person-{i}.png", r["image"])
    print(f"wrote {out}/samples.npz and {len(rows)} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
