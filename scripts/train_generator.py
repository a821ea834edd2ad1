"""Train a point-cloud-conditioned mesh generator from tokenized shards.

    python scripts/train_generator.py --config configs/hourglass_small.yaml [--set train.steps=100 ...]
    torchrun --nproc_per_node 2 scripts/train_generator.py --config ...     # DDP (gloo on CPU, NCCL on GPU)

Killed and started again with the same command, it resumes from OUT_DIR/last.
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from meshgen.config import load_config
from meshgen.train import train
from tokenizers3d.errors import MeshgenError


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML experiment config (see configs/).")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="Override config values.")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, parse_overrides(args.set))
        result = train(cfg, progress=not args.no_progress)
    except MeshgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
