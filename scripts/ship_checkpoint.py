"""Copy a trained run's best weights into assets/checkpoints/NAME and write its model card from measured files.

    python scripts/ship_checkpoint.py --run runs/hourglass_cpu --eval runs/eval_new.json \\
        --prev-eval runs/eval_prev.json --ablation runs/ablation/table.md --prior-minutes 84

Every number in the card is read from the run's ``log.csv`` / ``config.yaml`` and the evaluation JSON written by
``scripts/eval_generator.py --out``; nothing is typed in by hand.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import yaml
from eval_generator import markdown_report  # scripts/ is on sys.path when this script runs

from tokenizers3d.checkpoint import RunFolder, install_model_dir, model_digest

ROOT = Path(__file__).resolve().parent.parent


def _verdict(summary: dict) -> str:
    """Which of model and Poisson wins each metric, per split, in words."""
    higher = {"normal_consistency", "fscore_002", "fscore_005", "watertight_rate"}
    parts = []
    for split, res in summary.items():
        m, b = res["model"], res.get("baseline")
        if b is None:
            continue
        base_wins = [k for k in ("chamfer", "normal_consistency", "fscore_002", "fscore_005", "watertight_rate")
                     if (b[k] > m[k] if k in higher else b[k] < m[k])]
        parts.append(f"{split}: Poisson + decimation is better on {len(base_wins)} of 5 metrics "
                     f"({', '.join(base_wins) or 'none'}), Chamfer {b['chamfer']:.4f} vs {m['chamfer']:.4f} for the model")
    return "; ".join(parts) + "."


def _family_verdict(res: dict) -> str:
    """On how many groups of each split the model beats both the bounding box and the hull."""
    parts = []
    for split, r in res["splits"].items():
        fam = r.get("families") or {}
        wins = sorted(name for name, f in fam.items() if f.get("model_beats_baselines"))
        if fam:
            parts.append(f"{split}: the model beats the box and the hull on {len(wins)} of {len(fam)} groups"
                         f"{' (' + ', '.join(wins) + ')' if wins else ''}")
    return "; ".join(parts) + "." if parts else ""


def merge_evals(results: list[dict]) -> dict:
    """One evaluation from several ``eval_generator.py`` JSONs of the same settings (one process per split)."""
    out = dict(results[0], splits={})
    for r in results:
        same = {k: r.get(k) for k in ("checkpoint", "digest", "seed", "temperature", "n_points", "n", "max_faces")}
        if same != {k: out.get(k) for k in same}:
            raise SystemExit(f"error: evaluations with different settings cannot be merged: {same}")
        for split, v in r["splits"].items():
            if split in out["splits"]:
                raise SystemExit(f"error: split {split!r} is in two of the evaluations")
            out["splits"][split] = v
    return out


def _family_text(dc: dict) -> str:
    from collections import Counter

    from tokenizers3d.procedural import DEFAULT_FAMILIES

    fams = dc.get("families")
    if not fams:
        return f"{len(DEFAULT_FAMILIES)} families"
    counts = Counter(fams)
    extra = ", ".join(f"`{f}` x{n}" for f, n in sorted(counts.items()) if n > 1)
    return f"{len(counts)} families drawn from a list of {len(fams)}" + (f" ({extra})" if extra else "")


def _eval_command(res: dict, checkpoint: str) -> str:
    gen = res.get("generation") or {}
    flags = []
    if gen.get("guidance") is None and "guidance" in gen:
        flags.append("--no-guidance")
    if gen.get("cfg_scale", 1.0) not in (None, 1.0):
        flags.append(f"--cfg-scale {gen['cfg_scale']}")
    if gen.get("samples", 1) not in (None, 1):
        flags.append(f"--samples {gen['samples']}")
    if gen.get("free_samples") is not None:
        flags.append(f"--free-samples {gen['free_samples']}")
    if gen.get("open_edge_weight"):
        flags.append(f"--open-edge-weight {gen['open_edge_weight']:g}")
    if gen.get("edges_once"):
        flags.append(f"--edges-once {gen['edges_once']}")
    if "fill_budget" in gen:  # absent from evaluations made before the fill default
        flags.append("--fill" if gen["fill_budget"] else "--no-fill")
    return (f"python scripts/eval_generator.py --checkpoint {checkpoint} --n {res['n']} --max-faces {res['max_faces']} "
            f"--temperature {res['temperature']} {' '.join(flags)} --out runs/eval.json --markdown").replace("  ", " ")


def _compare(new: dict, old: dict) -> str:
    """Chamfer / F@0.05 of the new and the previous checkpoint per split (same evaluation settings)."""
    lines = ["| split | previous Chamfer | new Chamfer | previous F@0.05 | new F@0.05 |", "|---|---|---|---|---|"]
    for split, r in new["splits"].items():
        if split not in old["splits"]:
            continue
        a, b = old["splits"][split]["summary"]["model"], r["summary"]["model"]
        lines.append(f"| {split} | {a['chamfer']:.4f} | {b['chamfer']:.4f} | {a['fscore_005']:.3f} | {b['fscore_005']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="training run directory (best/, log.csv, config.yaml)")
    p.add_argument("--eval", type=Path, nargs="+", required=True,
                   help="eval_generator.py --out JSON of the run's best/ (several: one per split, merged)")
    p.add_argument("--config", default="configs/hourglass_cpu.yaml", help="the recipe, for the reproduce command")
    p.add_argument("--prev-eval", type=Path, default=None,
                   help="the same evaluation of the previously shipped checkpoint (a comparison table)")
    p.add_argument("--ablation", type=Path, default=None, help="markdown ablation table (scripts/ablation_table.py)")
    p.add_argument("--prev-note", default="same decoding, same inputs",
                   help="how the previous checkpoint was evaluated (for the comparison's caption)")
    p.add_argument("--decoding", type=Path, default=None, help="markdown table of a decoding ablation")
    p.add_argument("--decoding-note", default="Decoding, same weights, same inputs:",
                   help="caption of the --decoding table")
    p.add_argument("--prior-minutes", type=float, default=0.0,
                   help="training minutes of the warm-start checkpoint (from its own model card)")
    p.add_argument("--warm-note", default="; how to restore it: the comment in the config",
                   help="appended to the warm start's description (its stages, how to restore it)")
    p.add_argument("--extra-eval", type=Path, nargs="+", default=[],
                   help="eval_generator.py JSONs of further held-out inputs of the same weights (their own section)")
    p.add_argument("--extra-note", default="Further held-out inputs, same weights and decoding:",
                   help="caption of the --extra-eval section (how those inputs were made and evaluated)")
    p.add_argument("--name", default="hourglass-small")
    p.add_argument("--dest", type=Path, default=None, help="where to ship (default: assets/checkpoints/NAME)")
    args = p.parse_args(argv)

    dest = args.dest or ROOT / "assets" / "checkpoints" / args.name
    src = args.run / "best"
    res = merge_evals([json.loads(p.read_text()) for p in args.eval])
    shipped = model_digest(src)
    for path in [*args.eval, *args.extra_eval]:  # every number in the card must be of these very weights
        digest = json.loads(path.read_text()).get("digest")
        if digest != shipped:
            raise SystemExit(f"error: {path} evaluates weights {digest}, not {src} ({shipped}); "
                             f"run scripts/eval_generator.py --checkpoint {src} first")
    cfg = yaml.safe_load((args.run / "config.yaml").read_text())
    log = RunFolder(args.run).log_rows()
    val = [r for r in log if r["val_loss"] != "nan"]
    best = min(val, key=lambda r: float(r["val_loss"]))
    last = log[-1]
    summary = {s: r["summary"] for s, r in res["splits"].items()}
    meta = json.loads((src / "config.json").read_text())
    from meshgen.registry import load_model

    n_params = load_model(src).num_params()
    size_mb = (src / "model.safetensors").stat().st_size / 2**20
    curve = args.run / "training.png"
    dc, tc = cfg["data"], cfg["train"]
    minutes = float(last["elapsed_s"]) / 60
    bits = cfg["model"]["args"]["bits"]
    warm = tc.get("init_from")
    sections = [f"""# {args.name}

A small Meshtron-style hourglass transformer that turns an oriented point cloud into a low-poly triangle mesh,
trained on the 2-core CPU of the development machine on fresh procedural artist meshes. It is the default checkpoint
of `meshgen generate` and `make demo`, where it decodes with point-cloud guidance (`meshgen/guidance.py`) and
best of 8 samples (4 guided, 4 free), each refined to the points (`meshgen/refine.py`) before they are ranked.

## Model
- Class `{meta['class']}`, {n_params:,} parameters, {size_mb:.1f} MB (safetensors, fp32).
- Config (`config.json`): {json.dumps(meta['config'], sort_keys=True)}
- Tokens: the `coords` sequence at {bits} bits (vocabulary {2 ** bits + 3}).

## Data
- Fresh procedural meshes made on the fly (`meshgen.data.ProceduralStream`, stream seed {dc.get('stream_seed')}; {_family_text(dc)},
  none repeated), at most {dc['max_faces']} faces, face-count curriculum {dc.get('curriculum') or 'none (the full budget from the first step)'}, augmentation
  {dc.get('augment')} (defaults of `AugmentConfig`: anisotropic scale, rotations about the up axis, axis
  permutations, point noise and holes), {dc['n_points']} points per mesh, windows of {dc['window']} tokens,
  {int(100 * dc.get('drop_face_count', 0))}% of examples with the face count hidden and {int(100 * dc.get('drop_points', 0))}%
  without points (classifier-free guidance).
- Validation: {dc.get('val_examples')} fixed procedural objects of another seed ({dc.get('val_seed')}). Evaluation below: the
  held-out test split of `meshgen dataset -o data/procedural -n 600 --seed 0` and real human-made meshes
  (`scripts/fetch_real_meshes.py`), never trained on.

## Training
- `python scripts/train_generator.py --config {args.config}` (AdamW, lr {tc['lr']}, warmup {tc['warmup_steps']}, cosine,
  batch {tc['batch_size']}, clip {tc.get('grad_clip', 1.0)}), {last['step']} steps in {minutes:.0f} min of wall time on the 2-core
  CPU (shared with evaluation jobs){f", warm-started from `{warm}` ({args.prior_minutes:.0f} min of earlier CPU training{args.warm_note})" if warm else ""}.
- Validation loss (nats/token) of the shipped weights (step {best['step']}): {float(best['val_loss']):.4f} overall,
  {float(best.get('val_new_vertex_loss') or 'nan'):.3f} on tokens of new vertices, {float(best.get('val_first_vertex_loss') or 'nan'):.3f}
  on the first vertex. Uniform guessing is {math.log(2 ** bits + 3):.2f}.
""" + ("\n![training curve](training.png)\n" if curve.exists() else ""),
        f"""## Evaluation
`{_eval_command(res, 'assets/checkpoints/' + args.name)}`
(seed {res['seed']}, {res['n_points']} points per input, the first {res['n']} test meshes of at most {res['max_faces']} faces of
each split; the requested face count is the reference's), at the default decoding of `meshgen generate` (point
guidance, CFG 2, best of 8 samples -- 4 guided, 4 free -- each refined, ranked by fit to the input points). Baselines from the same points at
the same face budget:
Open3D screened Poisson (depth 7) + quadric decimation, the points' bounding box (12 faces), and their convex hull
decimated to the budget. Metrics as defined in `tokenizers3d/metrics.py` (distances in units of the reference's
longest side).

{markdown_report(res)}
"""]
    if args.prev_eval is not None:
        prev = json.loads(args.prev_eval.read_text())
        sections.append("## Against the previous checkpoint\n\nThe same evaluation of the previously bundled "
                        f"checkpoint ({args.prev_note}):\n\n" + _compare(res, prev) + "\n")
    if args.extra_eval:
        extra = merge_evals([json.loads(p.read_text()) for p in args.extra_eval])
        sections.append(f"## More held-out inputs\n\n{args.extra_note}\n\n{markdown_report(extra)}\n")
    if args.decoding is not None:
        sections.append(f"## Decoding\n\n{args.decoding_note}\n\n" + args.decoding.read_text().strip() + "\n")
    if args.ablation is not None:
        sections.append("## Ablation (equal training budget)\n\n" + args.ablation.read_text().strip() + "\n\n"
                        "Recipe arms and their commands: `docs/model.md` (section Training recipe).\n")
    sections.append(f"""## Limitations
- {_verdict(summary)}
- {_family_verdict(res)}
- Trained on procedural shapes only; the real rows measure transfer to human-made meshes it never saw.
- 7-bit coordinates: decoded vertices snap to a 128^3 grid of the input's bounding cube (refinement then moves them
  by a bounded amount, `RefineConfig.max_shift` of the longest side).
""")
    install_model_dir(src, dest, "\n".join(sections), [curve] if curve.exists() else [])
    print(f"shipped {dest} ({size_mb:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
