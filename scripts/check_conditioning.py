"""Does a generator use its conditioning? Validation loss with the true points, with another mesh's points,
and without the face count.

    python scripts/check_conditioning.py --checkpoint assets/checkpoints/hourglass-small --shards data/shards/val
"""

from __future__ import annotations

import argparse
import json

import torch

from meshgen.data import GeneratorExamples, collate_examples
from meshgen.modeling import Conditioning
from meshgen.registry import load_model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="assets/checkpoints/hourglass-small")
    p.add_argument("--shards", default="data/shards/val")
    p.add_argument("--n", type=int, default=32, help="validation windows")
    p.add_argument("--n-points", type=int, default=512)
    p.add_argument("--max-faces", type=int, default=200)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = load_model(args.checkpoint).eval()
    data = GeneratorExamples(args.shards, window=model.config.window, n_points=args.n_points,
                             max_faces=args.max_faces, repeat=False, shuffle=False)
    items = []
    for item in data:
        items.append(item)
        if len(items) == args.n:
            break
    batch = collate_examples(items, pad_id=data.pad_id)
    inputs, targets = batch.tokens[:, :-1], batch.tokens[:, 1:]
    other = batch.points.roll(1, dims=0)  # each window gets the next window's mesh's points
    unknown = torch.zeros_like(batch.n_faces)
    out = {}
    with torch.no_grad():
        for name, pts, nf in (("true", batch.points, batch.n_faces), ("other_points", other, batch.n_faces),
                              ("no_face_count", batch.points, unknown), ("other_points_no_face_count", other, unknown)):
            res = model(inputs, cond=Conditioning(points=pts, n_faces=nf), start_pos=batch.start, targets=targets)
            out[name] = round(float(res.loss), 4)
    out["n_windows"] = len(items)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
