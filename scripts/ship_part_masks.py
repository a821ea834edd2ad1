#!/usr/bin/env python
"""Copy a part-mask run's weights into assets/checkpoints/part-masks and write its model card from measured files.

    python scripts/eval_segmentation.py --generator learned --generator geometric \
        --mask-checkpoint runs/part_masks/best --json-out runs/eval_seg.json ...
    python scripts/ship_part_masks.py --run runs/part_masks --eval runs/eval_seg.json

The card (``README.md`` beside the weights) states the data (the run's ``train_config.json`` and the datasets'
``config.json``), steps, wall time and hardware (``log.csv``, ``sessions.jsonl``), the validation score of the
shipped weights (``best/val.json``) and the held-out table (the JSON of ``scripts/eval_segmentation.py``, which
must name these weights as its ``mask_checkpoint``), and the commands that reproduce it. Shipping the weights
makes ``learned`` the default mask generator of ``meshgen segment``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from eval_segmentation import markdown  # scripts/ is on sys.path when this script runs

from renderers.mask_model import DEFAULT_CHECKPOINT
from tokenizers3d.checkpoint import install_model_dir, shippable_weights
from tokenizers3d.errors import MeshInputError

MAX_BYTES = 10 * 1024 * 1024


def _fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def card(run: Path, which: str, ev: dict, size: int, command: str | None) -> str:
    cfg = json.loads((run / "train_config.json").read_text())
    rows = list(csv.DictReader((run / "log.csv").open(newline="")))
    last = rows[-1] if rows else {}
    val = json.loads((run / which / "val.json").read_text()) if (run / which / "val.json").exists() else {}
    sessions = [json.loads(x) for x in (run / "sessions.jsonl").read_text().splitlines() if x.strip()]
    machines = sorted({f"{s['platform']}, {s['cpu_count']} CPUs, {s['threads']} torch threads, torch {s['torch']}"
                       for s in sessions})
    data = []
    for root in cfg["data"]:
        dc = json.loads((Path(root) / "config.json").read_text())
        index = json.loads((Path(root) / "index.json").read_text())["shapes"]
        counts = {}
        for r in index:
            counts[(r["split"], r["set"])] = counts.get((r["split"], r["set"]), 0) + 1
        listed = ", ".join(f"{n} {s} ({sp})" for (sp, s), n in sorted(counts.items()))
        data.append(f"  * `{root}`: {listed}; {dc['views']} random views of {dc['image_size']} px per shape")
    m = cfg["model"]
    hours = float(last.get("elapsed_s", "nan")) / 3600
    settings = ev["settings"]
    tables = "\n\n".join(markdown(name, res, settings["views"], len(res["objects"])) for name, res in ev["sets"].items())
    per_set = ", ".join(f"{k} {v:.3f}" for k, v in val.get("per_set", {}).items())
    return f"""# part-masks: the learned mask generator of `meshgen segment`

A small U-Net (`renderers/mask_model.py`, widths {m['widths']}, {m['embed_dim']}-D embeddings, {size / 2**20:.2f} MB)
that maps a rendered view's normals and depth to per-pixel embeddings; pixels of one part cluster together
(discriminative loss, delta_v {m['delta_v']}, delta_d {m['delta_d']}), and every cluster becomes a mask that the
segmenter revotes across views. Class-agnostic: it was never told what a leg or a shade is. Trained here, on two
CPU cores, from renders this project makes; no downloaded weights.

* Data (`scripts/make_segmentation_dataset.py`; train seeds 10000+, validation 1000-1999; the evaluation's shapes
  use test seeds 0-999, never rendered for training):
{chr(10).join(data)}
* Training (`scripts/train_part_masks.py`): {last.get('step', '?')} steps of {cfg['batch']} views, AdamW lr {cfg['lr']}
  (warmup {cfg['warmup']}, cosine to {cfg['min_lr_ratio']}x), augmentation: scene rotation about +z, left-right flip
  p = {cfg['flip_p']}; {hours:.2f} h wall time on {'; '.join(machines) or 'an unrecorded machine'}.
* Shipped: the {which} weights, step {val.get('step', '?')}: validation pixel mIoU {val.get('miou', float('nan')):.3f}
  per view ({per_set}).

## Held-out evaluation (`scripts/eval_segmentation.py`; mIoU of faces, area-weighted, Hungarian-matched)

Image size {settings['image_size']} px; seeds {settings['seeds']}; families {', '.join(settings['families'])};
masks split along connected pieces: {settings['split_components']}.

{tables}

## Reproduce

```bash
python scripts/make_segmentation_dataset.py -o data/part_views --train 300 --val 12 --test 0 --views 8 \\
    --image-size 128 --sets separate fused remeshed anny     # stopped after the remeshed set's 133rd train shape
python scripts/make_segmentation_dataset.py -o data/part_views_val --train 0 --val 12 --test 0 --views 8 \\
    --image-size 128 --sets separate fused remeshed anny
python scripts/make_segmentation_dataset.py -o data/part_views_anny --train 150 --val 0 --test 0 --views 8 \\
    --image-size 128 --sets anny
python scripts/train_part_masks.py --data {' '.join(cfg['data'])} --out {run} --steps {cfg['steps']}
{command or 'python scripts/eval_segmentation.py --generator learned --mask-checkpoint ' + str(run / which)}
python scripts/ship_part_masks.py --run {run} --eval <that JSON>
```
"""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/part_masks", help="run folder of scripts/train_part_masks.py")
    p.add_argument("--which", default="best", choices=["best", "last"])
    p.add_argument("--eval", required=True, help="JSON of scripts/eval_segmentation.py made with these weights")
    p.add_argument("--command", default=None, help="the evaluation command, for the card")
    p.add_argument("--dest", default=str(DEFAULT_CHECKPOINT), help="where to ship (default: the bundled checkpoint)")
    args = p.parse_args(argv)
    run, src, dest = Path(args.run), Path(args.run) / args.which, Path(args.dest)
    try:
        size = shippable_weights(src, MAX_BYTES)
    except MeshInputError as exc:
        _fail(str(exc))
    ev = json.loads(Path(args.eval).read_text())
    if Path(ev["settings"].get("mask_checkpoint") or "").resolve() != src.resolve():
        _fail(f"{args.eval} evaluates mask weights {ev['settings'].get('mask_checkpoint')}, not {src}")
    text = card(run, args.which, ev, size, args.command)
    install_model_dir(src, dest, text)
    print(json.dumps({"shipped": str(dest), "from": str(src), "bytes": size}))


if __name__ == "__main__":
    main()
