"""Does a generator use its conditioning? Validation loss with the true points, with another mesh's points,
and without the face count.

    python scripts/check_conditioning.py --checkpoint assets/checkpoints/hourglass-small            # procedural val set
    python scripts/check_conditioning.py --checkpoint ... --shards data/shards/val                      # shard rows

Without ``--shards`` the windows are the training runs' fixed validation set (``ProceduralStream`` seed 2, half
of the windows starting at BOS). Reported per target kind: all tokens, new-vertex tokens, first-vertex tokens.
"""

from __future__ import annotations

import argparse
import json

import torch

from meshgen.data import GeneratorExamples, ProceduralStream, collate_examples
from meshgen.registry import load_model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="assets/checkpoints/hourglass-small")
    p.add_argument("--shards", default=None, help="shard directory (default: the procedural validation stream)")
    p.add_argument("--n", type=int, default=32, help="validation windows")
    p.add_argument("--n-points", type=int, default=1024)
    p.add_argument("--max-faces", type=int, default=200)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = load_model(args.checkpoint).eval()
    if args.shards:
        data = GeneratorExamples(args.shards, window=model.config.window, n_points=args.n_points,
                                 max_faces=args.max_faces, repeat=False, shuffle=False)
        items = []
        for item in data:
            items.append(item)
            if len(items) == args.n:
                break
    else:
        data = ProceduralStream(bits=model.config.bits, window=model.config.window, n_points=args.n_points,
                                max_faces=args.max_faces, seed=2, tokenizer=model.config.tokenizer)
        items = data.take(args.n)
    from meshgen.train import loss_by_kind

    out = {}
    unknown = torch.zeros(len(items), dtype=torch.long)
    with torch.no_grad():
        for i in range(0, len(items), 8):
            batch = collate_examples(items[i : i + 8], pad_id=data.pad_id)
            other = batch.points.roll(1, dims=0)  # each window gets the next window's mesh's points
            nf0 = unknown[: len(batch.n_faces)]
            for name, pts, nf in (("true", batch.points, batch.n_faces), ("other_points", other, batch.n_faces),
                                  ("no_face_count", batch.points, nf0), ("other_points_no_face_count", other, nf0)):
                b = type(batch)(batch.tokens, batch.start, pts, nf, batch.kinds)
                for kind, (total, count) in loss_by_kind(model, b, data.pad_id).items():
                    acc = out.setdefault(name, {}).setdefault(kind, [0.0, 0])
                    acc[0] += total
                    acc[1] += count
    out = {name: {k: round(t / max(c, 1), 4) for k, (t, c) in parts.items()} for name, parts in out.items()}
    out["n_windows"] = len(items)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
