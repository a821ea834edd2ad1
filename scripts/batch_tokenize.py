#!/usr/bin/env python
"""Tokenize a directory tree of meshes into resumable Parquet shards (see docs/batch.md).

Usage::

    python scripts/batch_tokenize.py meshes/ --out shards/ -t adjacent --bits 10 --workers 2
    python scripts/batch_tokenize.py meshes/ --out shards/ --engine ray [--address ray://head:10001]

Run the same command again after a crash or kill to finish the run. Exit status: 0 done (even with
failed meshes, listed in SHARDS/failures.jsonl), 2 bad arguments or settings.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_USAGE = 2


class _OneLineParser(argparse.ArgumentParser):
    """Argument errors as one line on stderr and exit status 2 (no usage dump)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog="batch_tokenize.py", description=__doc__.split("\n\n")[0])
    p.add_argument("input_dir", metavar="DIR", type=Path, help="directory tree of meshes (.obj .ply .stl .off .glb .gltf)")
    p.add_argument("--out", "-o", required=True, type=Path, metavar="SHARDS", help="output directory")
    p.add_argument("--tokenizer", "-t", default="adjacent", help="tokenizer name (default: adjacent)")
    p.add_argument("--bits", type=int, default=None, help="quantization bits (default: the tokenizer's)")
    p.add_argument("--tokenizer-config", default=None, metavar="JSON",
                   help='other tokenizer arguments as a JSON object, e.g. \'{"block": 8}\'')
    p.add_argument("--workers", "-j", type=int, default=1, help="processes or Ray tasks; 0 = all CPUs (default: 1)")
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="default: local")
    p.add_argument("--address", default=None, help="Ray cluster address (with --engine ray); default: start a local Ray")
    p.add_argument("--shard-size", type=int, default=256, help="meshes per shard (default: 256)")
    p.add_argument("--max-faces", type=int, default=None, help="meshes with more faces are recorded as failures")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="module to import first, e.g. one registering a custom tokenizer (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a summary line")
    return p


def _tokenizer_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    config = {}
    if args.tokenizer_config:
        try:
            config = json.loads(args.tokenizer_config)
        except json.JSONDecodeError as exc:
            parser.error(f"--tokenizer-config is not valid JSON ({exc})")
        if not isinstance(config, dict):
            parser.error("--tokenizer-config must be a JSON object")
    if args.bits is not None:
        config["bits"] = args.bits
    return config


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.input_dir.is_dir():
        what = "is not a directory" if args.input_dir.exists() else "does not exist"
        parser.error(f"input directory {args.input_dir} {what}")
    if args.address is not None and args.engine != "ray":
        parser.error("--address needs --engine ray")
    config = _tokenizer_config(parser, args)
    try:
        import tokenizers3d  # noqa: F401
    except ImportError:  # running from a checkout without `pip install -e .`
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tokenizers3d.base import get_tokenizer
    from tokenizers3d.batch import batch_tokenize, import_plugins
    from tokenizers3d.errors import MeshgenError

    try:
        import_plugins(args.plugin)
    except ImportError as exc:
        parser.error(f"cannot import plugin ({exc})")
    try:  # check the tokenizer settings before any work
        get_tokenizer(args.tokenizer, **config)
    except KeyError as exc:
        parser.error(str(exc.args[0]) if exc.args else str(exc))
    except (TypeError, ValueError) as exc:
        parser.error(f"bad settings for tokenizer {args.tokenizer!r}: {exc}")
    try:
        report = batch_tokenize(
            args.input_dir, args.out, tokenizer=args.tokenizer, tokenizer_config=config, workers=args.workers,
            engine=args.engine, address=args.address, shard_size=args.shard_size, max_faces=args.max_faces,
            progress=not args.no_progress, plugins=args.plugin,
        )
    except MeshgenError as exc:  # output directory made with other settings, bad numbers, Ray missing
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(report.to_dict(), indent=1) if args.json else report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
