#!/usr/bin/env python
"""Make the procedural artist-mesh dataset, or the committed per-family samples.

Usage::

    python scripts/make_dataset.py data/procedural -n 10000 --seed 0 --workers 8 [--max-faces 800] [--rotate]
    python scripts/make_dataset.py --samples assets/procedural [--sample-max-faces 400]

Thin wrapper over :func:`tokenizers3d.procedural.make_dataset` and
:func:`tokenizers3d.procedural.write_samples`; re-running the first command resumes an interrupted run.
"""

from __future__ import annotations

import argparse
import sys

from tokenizers3d.procedural import FAMILIES, make_dataset, write_samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", help="dataset folder")
    parser.add_argument("-n", type=int, default=1000, help="number of objects (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--families", nargs="+", choices=sorted(FAMILIES), help="restrict to these families")
    parser.add_argument("--splits", nargs=3, type=float, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--max-faces", type=int, help="re-draw objects with more faces")
    parser.add_argument("--rotate", action="store_true", help="random rotation per object")
    parser.add_argument("--samples", metavar="DIR", help="write one small sample per family to DIR instead")
    parser.add_argument("--sample-max-faces", type=int, default=400)
    args = parser.parse_args(argv)
    if args.samples:
        out = write_samples(args.samples, max_faces=args.sample_max_faces)
        print(f"wrote {len(FAMILIES)} samples to {out}")
        return 0
    if not args.out_dir:
        parser.error("give a dataset folder (or --samples DIR)")
    out = make_dataset(args.out_dir, args.n, seed=args.seed, workers=args.workers, families=args.families,
                       splits=tuple(args.splits), max_faces=args.max_faces, rotate=args.rotate)
    print(f"dataset in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
