#!/usr/bin/env python
"""Benchmark VAT training steps on this machine; prints JSON.

Seconds per training step (forward + backward + AdamW) of :class:`tokenizers3d.vat.VATModel` on one batch of
procedural shapes (as ``scripts/train_vat.py`` draws them), for each encoder (``in_context``, ``perceiver``) and
number of surface points, plus the seconds to make the batch's data. Median of ``--repeat`` steps after one
warm-up step. The system load average is reported: on a busy machine every figure grows.

    python scripts/bench_vat.py                                   # configs/vat_cpu.yaml, 1 thread
    python scripts/bench_vat.py --points 1024 2048 --threads 2 --out runs/bench_vat.json

``--decode DIR [DIR ...]`` times decoding instead: for each VAT model directory, the seconds of one occupancy grid
(:meth:`~tokenizers3d.vat.VATModel.occupancy_grid`, what ``meshgen compress`` pays to choose the level at 96 and
``meshgen decompress`` at its resolution) of the demo table's ids, per ``--resolutions``, median of ``--repeat``:

    python scripts/bench_vat.py --decode assets/checkpoints/vat runs/vat_points5/best --resolutions 96 128
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_vat import collate, draw_shape, load_run_config  # noqa: E402

from meshgen.data import AugmentConfig  # noqa: E402
from tokenizers3d.vat import VATModel  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/vat_cpu.yaml")
    ap.add_argument("--points", nargs="+", type=int, default=[1024, 2048])
    ap.add_argument("--encoders", nargs="+", default=["in_context", "perceiver"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--decode", nargs="+", default=None, help="time grid decoding of these VAT model directories")
    ap.add_argument("--resolutions", nargs="+", type=int, default=[96, 128])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.decode:
        return bench_decode(args)
    base = load_run_config(args.config)
    rows = []
    for n in args.points:
        data = dataclasses.replace(base.data, n_points=n)
        t0 = time.perf_counter()
        batch = collate([draw_shape(data.stream_seed, i, data, AugmentConfig()) for i in range(base.train.batch)])
        data_s = time.perf_counter() - t0
        for enc in args.encoders:
            model = VATModel(dataclasses.replace(base.model, encoder=enc))
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            times = []
            for _ in range(args.repeat + 1):
                t0 = time.perf_counter()
                out = model(batch["points"], batch["normals"], batch["queries"], batch["occupancy"])
                opt.zero_grad()
                out.loss.backward()
                opt.step()
                times.append(time.perf_counter() - t0)
            rows.append({"encoder": enc, "points": n, "batch": base.train.batch, "step_s": round(statistics.median(times[1:]), 3),
                         "data_s_per_batch": round(data_s, 3),
                         "params": sum(p.numel() for p in model.parameters())})
            print(json.dumps(rows[-1]), file=sys.stderr)
    return report(args, rows)


def report(args, rows: list[dict]) -> int:
    """Print the rows with the thread count and load average as JSON (and write them to ``--out``)."""
    result = {"threads": args.threads, "load_average": [round(x, 2) for x in os.getloadavg()], "rows": rows}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def bench_decode(args) -> int:
    """Seconds of one occupancy grid of the demo table's ids per model directory and resolution (JSON)."""
    from tokenizers3d.compress import encode_mesh, load_vat_model
    from tokenizers3d.io import load_mesh

    table = load_mesh(Path(__file__).resolve().parents[1] / "assets" / "demo" / "table.ply")
    rows = []
    for directory in args.decode:
        model, digest = load_vat_model(directory)
        codes, _ = encode_mesh(model, table)
        with torch.no_grad():
            field = model.decode_ids(codes)
            for res in args.resolutions:
                times = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    model.occupancy_grid(field, res)
                    times.append(time.perf_counter() - t0)
                rows.append({"checkpoint": directory, "digest": digest[:16], "resolution": res,
                             "decode_s": round(statistics.median(times), 2),
                             "params": sum(p.numel() for p in model.parameters())})
                print(json.dumps(rows[-1]), file=sys.stderr)
    return report(args, rows)


if __name__ == "__main__":
    sys.exit(main())
