"""Copy a trained run's best weights into assets/checkpoints/NAME and write its model card from measured files.

    python scripts/ship_checkpoint.py --run runs/hourglass_small --eval runs/eval.json \\
        --name hourglass-small --wall-time-min 75

Every number in the card is read from the run's ``log.csv`` / ``config.yaml`` and the evaluation JSON written by
``scripts/eval_generator.py --out``; nothing is typed in by hand.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import yaml
from eval_generator import markdown  # scripts/ is on sys.path when this script runs

from tokenizers3d.io import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent


def _verdict(summary: dict) -> str:
    """Which method wins each metric, per split, in words."""
    higher = {"normal_consistency", "fscore_002", "fscore_005", "watertight_rate"}
    parts = []
    for split, res in summary.items():
        m, b = res["model"], res["baseline"]
        base_wins = [k for k in ("chamfer", "normal_consistency", "fscore_002", "fscore_005", "watertight_rate")
                     if (b[k] > m[k] if k in higher else b[k] < m[k])]
        parts.append(f"{split}: the baseline is better on {len(base_wins)} of 5 metrics ({', '.join(base_wins)}), "
                     f"Chamfer {b['chamfer']:.4f} vs {m['chamfer']:.4f} for the model")
    return "; ".join(parts) + "."


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--eval", type=Path, required=True)
    p.add_argument("--name", default="hourglass-small")
    p.add_argument("--wall-time-min", type=float, required=True, help="training wall time, from the run's logs")
    args = p.parse_args(argv)

    dest = ROOT / "assets" / "checkpoints" / args.name
    tmp = dest.with_name(f".{args.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        shutil.copy2(args.run / "best" / f, tmp / f)

    cfg = yaml.safe_load((args.run / "config.yaml").read_text())
    log = list(csv.DictReader(open(args.run / "log.csv")))
    val = [(int(r["step"]), float(r["val_loss"])) for r in log if r["val_loss"] != "nan"]
    best_step, best_val = min(val, key=lambda x: x[1])
    last = log[-1]
    res = json.loads(args.eval.read_text())
    summary = {s: r["summary"] for s, r in res["splits"].items()}
    meta = json.loads((tmp / "config.json").read_text())
    n_params = None
    try:
        from meshgen.registry import load_model

        n_params = sum(p.numel() for p in load_model(tmp).parameters())
    except (OSError, ValueError) as exc:  # report, do not guess
        print(f"could not count parameters: {exc}")
    size_mb = (tmp / "model.safetensors").stat().st_size / 2**20
    inv = res.get("invalid_rate") or {}

    card = f"""# {args.name}

A small Meshtron-style hourglass transformer that turns an oriented point cloud into a triangle mesh, trained on
CPU on this project's procedural artist-mesh dataset. It is the default checkpoint of `meshgen generate` and
`make demo`. It is a small CPU-trained model: read the evaluation below before relying on it.

## Model
- Class `{meta['class']}`, {n_params:,} parameters, {size_mb:.1f} MB (safetensors, fp32).
- Config (`config.json`): {json.dumps(meta['config'], sort_keys=True)}
- Tokens: the `coords` sequence at {cfg['model']['args']['bits']} bits (vocabulary {2 ** cfg['model']['args']['bits'] + 3}).

## Data
- `meshgen dataset -o data/procedural -n 6000 --seed 0` (15 procedural families, split 80/10/10 by hash), tokenized with
  `scripts/batch_tokenize.py ... -t coords --bits 7 --max-faces 2000`; training used meshes of at most
  {cfg['data']['max_faces']} faces (after 7-bit quantization), windows of {cfg['data']['window']} tokens, {cfg['data']['n_points']}
  conditioning points sampled from each mesh, {int(cfg['data'].get('drop_face_count', 0) * 100)}% of examples with the face count hidden.

## Training
- `python scripts/train_generator.py --config configs/hourglass_small.yaml` (AdamW, lr {cfg['train']['lr']}, warmup
  {cfg['train']['warmup_steps']}, cosine, batch {cfg['train']['batch_size']}, clip {cfg['train']['grad_clip']}), on the 2-core CPU of the
  development machine, shared with other work; the run was stopped and resumed several times (the total step count was
  changed between resumes, which re-shaped the cosine schedule).
- Steps: {last['step']}; wall time about {args.wall_time_min:.0f} min.
- Validation loss (next-token cross entropy, nats): best {best_val:.4f} at step {best_step} (shipped weights); last
  logged train loss {float(last['loss']):.4f}. Uniform guessing over the vocabulary is {__import__('math').log(2 ** cfg['model']['args']['bits'] + 3):.2f}.

## Evaluation
`python scripts/eval_generator.py --checkpoint assets/checkpoints/{args.name} --n {res['n']} --max-faces {res['max_faces']} --temperature {res['temperature']} --out runs/eval.json --markdown`
(seed {res['seed']}, {res['n_points']} points per input, the first {res['n']} test meshes of at most {res['max_faces']} faces of each
split; the requested face count is the reference's; measured on `runs/hourglass_small/best`, the file shipped here). Baseline: Open3D screened Poisson reconstruction (depth 7) from the same points, quadric-decimated to the
same face count. Metrics as defined in `tokenizers3d/metrics.py` (distances in units of the reference's longest side).

{markdown(res)}

Invalid-mesh rate of raw sampling on {inv.get('n', 0)} procedural test inputs (a sequence that is not a valid canonical
mesh): {inv.get('constrained', float('nan')):.2f} with order-enforcing constraints, {inv.get('unconstrained', float('nan')):.2f} without.

## Limitations
- {_verdict(summary)} This model is small and was trained for {last['step']} steps on CPU; its
  outputs are always valid canonical meshes (constrained sampling), but their shape often follows the point cloud
  only loosely.
- Trained on procedural shapes only; the real-mesh rows measure transfer to human-made meshes it never saw.
- 7-bit coordinates: vertices snap to a 128^3 grid of the input's bounding cube.
"""
    atomic_write_text(tmp / "README.md", card)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    print(f"shipped {dest} ({size_mb:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
