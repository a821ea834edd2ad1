"""Teacher-forced loss of generators per token kind and shape group: where does a model pay?

    python scripts/eval_token_loss.py --checkpoint assets/checkpoints/hourglass-small \
        --checkpoint runs/hourglass_cpu_pointer/best --n 24 --out runs/token_loss.json --markdown

For every group of procedural families (default: ``pebble``; boxes, tables, chairs, prisms, bevelled boxes;
lathes, tori, mugs, lamps) the first ``--n`` shapes of a fresh stream (``--seed``, never a training stream: those
use small seeds) of at most ``--max-faces`` faces, one window each (even ones from BOS), are scored by every
checkpoint: mean negative log-likelihood per target token (nats) over all targets, tokens of new vertices, tokens of
vertices written before (``repeat``) and the first vertex. With a copy head (``pointer_dim``) a vertex's NLL is the
mixture's (:mod:`meshgen.pointer`), spread here over its three tokens like the plain model's, so the columns compare.
Prints JSON; ``--markdown`` adds a table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from meshgen.data import ProceduralStream, collate_examples
from meshgen.registry import load_model
from meshgen.train import loss_by_kind
from tokenizers3d.io import atomic_write_text

GROUPS = {"pebble": ["pebble"], "boxy": ["box", "table", "chair", "prism", "bevelled_box"],
          "round": ["lathe", "torus", "mug", "lamp"]}
KINDS = ("all", "new_vertex", "repeat_vertex", "first_vertex")


def group_items(families: list[str], *, window: int, n: int, seed: int, max_faces: int, n_points: int) -> list[dict]:
    stream = ProceduralStream(bits=7, window=window, n_points=n_points, max_faces=max_faces, seed=seed,
                              families=families)
    return stream.take(n)


@torch.no_grad()
def score(model, items: list[dict], batch: int = 4) -> dict:
    pad = model.vocab.pad
    sums = {k: [0.0, 0] for k in KINDS}
    for i in range(0, len(items), batch):
        parts = loss_by_kind(model, collate_examples(items[i : i + batch], pad), pad)
        for k in KINDS:
            sums[k][0] += parts[k][0]
            sums[k][1] += parts[k][1]
    return {k: (s / c if c else float("nan")) for k, (s, c) in sums.items()} | {
        "tokens": {k: c for k, (_, c) in sums.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", required=True, help="model directory (repeatable)")
    p.add_argument("--group", action="append", default=None, metavar="NAME=FAM,FAM",
                   help="a group of families (repeatable; default pebble, boxy, round)")
    p.add_argument("--n", type=int, default=24, help="shapes per group")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--max-faces", type=int, default=200)
    p.add_argument("--n-points", type=int, default=1024)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    groups = GROUPS if not args.group else {g.split("=")[0]: g.split("=")[1].split(",") for g in args.group}
    models = {c: load_model(c).eval() for c in args.checkpoint}
    windows = {m.config.window for m in models.values()}
    if len(windows) != 1:
        raise SystemExit(f"the checkpoints have different windows {sorted(windows)}: their losses do not compare")
    window = windows.pop()
    result = {"seed": args.seed, "n": args.n, "max_faces": args.max_faces, "window": window, "groups": groups,
              "scores": {}}
    for name, fams in groups.items():
        items = group_items(fams, window=window, n=args.n, seed=args.seed, max_faces=args.max_faces,
                            n_points=args.n_points)
        for ckpt, model in models.items():
            result["scores"].setdefault(ckpt, {})[name] = score(model, items)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        atomic_write_text(Path(args.out), text + "\n")
    if args.markdown:
        lines = ["| checkpoint | group | all | new vertex | repeated vertex | first vertex |", "|---|---|---|---|---|---|"]
        for ckpt, per in result["scores"].items():
            for name, s in per.items():
                lines.append(f"| {ckpt} | {name} | " + " | ".join(f"{s[k]:.3f}" for k in KINDS) + " |")
        md = "\n".join(lines)
        print(md)
        if args.out:
            atomic_write_text(Path(args.out).with_suffix(".md"), md + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
