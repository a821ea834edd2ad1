#!/usr/bin/env python
"""Copy a VAT run's weights into assets/checkpoints/vat and write its model card from measured files.

    python scripts/eval_vat.py --checkpoint runs/vat_points/best --n 8 --threads 1 --out runs/eval_vat_points.json
    python scripts/ship_vat.py --run runs/vat_points --eval runs/eval_vat_points.json \\
        --config configs/vat_cpu_points.yaml

``--eval`` takes several JSONs of the same weights (e.g. one process per split): their splits are merged and
each one's command is printed in the card.

The card (``README.md`` beside the weights) states the model, data, steps, wall time and machines (from the run's
``config.yaml``, ``log.csv`` and ``sessions.jsonl``), the validation IoU of the shipped step, the evaluation table
(from the JSON of ``scripts/eval_vat.py``, which must be of these very weights: its ``digest`` is checked), whether
the targets are met, and the bundled demo table compressed and decoded with these weights at ship time. Refuses
weights of 40 MB or more; the old checkpoint is replaced only when the new card is complete.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

from tokenizers3d.checkpoint import WEIGHTS_NAME, RunFolder, install_model_dir, model_digest, shippable_weights
from tokenizers3d.compress import DEFAULT_CHECKPOINT
from tokenizers3d.errors import MeshgenError

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "assets" / "demo" / "table.ply"
MAX_BYTES = 40 * 1024 * 1024
TARGETS = {"fscore_005": 0.95, "fscore_002": 0.80}  # issue 11, procedural test meshes, at <= 1 KB
TARGET_BYTES = 1024


def _fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def val_row(log: list[dict], which: str) -> dict:
    """The row of ``log`` (the run's ``log.csv``) of the validation the shipped weights come from: the best
    full-scale IoU (``best``) or the last validation (``last``); empty when the run never validated."""
    rows = [r for r in log if r.get("val_iou") not in (None, "", "nan")]
    if not rows:
        return {}
    return max(rows, key=lambda r: float(r["val_iou"])) if which == "best" else rows[-1]


def eval_command(ev: dict) -> str:
    s = ev["settings"]
    parts = [f"python scripts/eval_vat.py --checkpoint {s['checkpoint']}", f"--procedural {s['procedural']}",
             f"--real {s['real']}", f"--n {s['n']}", f"--max-faces {s['max_faces']}", f"--points {s['points']}",
             f"--resolution {s['resolution']}", f"--threads {s['threads']}"]
    parts.append("--draco-bits " + " ".join(map(str, s["draco_bits"])) if s["draco_bits"] else "--draco-bits")
    parts += [f"--{k.replace('_', '-')} {s[k]}" for k in ("fit_steps", "level") if s.get(k) is not None]
    parts += [f"--offsets {s['offsets']}"] if s.get("offsets") else []
    parts += [f"--{k.replace('_', '-')} {s[k]}" for k in ("out", "markdown_out", "plot") if s.get(k)]
    return " ".join(parts)


def merge_evals(evs: list[dict], names: list[str]) -> dict:
    """One evaluation of several JSONs of the same weights (one per split, say): the splits of all, the first
    one's settings, every one's command (``commands``); a split measured twice or another digest is refused."""
    merged = {**evs[0], "splits": {}, "commands": [eval_command(ev) for ev in evs]}
    for ev, name in zip(evs, names, strict=True):
        if ev.get("digest") != evs[0].get("digest"):
            _fail(f"{name} evaluates weights {ev.get('digest')}, {names[0]} {evs[0].get('digest')}: not the same")
        for split, res in ev["splits"].items():
            if split in merged["splits"]:
                _fail(f"{name}: split {split!r} is in two of the evaluation files")
            merged["splits"][split] = res
    return merged


def eval_table(ev: dict) -> str:
    """Scales kept -> bytes, VAT and Draco per split, side by side."""
    splits = list(ev["splits"])
    draco_run = any("draco_fscore_005" in r for res in ev["splits"].values() for r in res["rows"])
    off_run = any("off_fscore_005" in r for res in ev["splits"].values() for r in res["rows"])
    cols = 3 + draco_run + 3 * off_run
    head = "| scales | bytes |" + "".join(f" {s} F@0.02 | {s} F@0.05 | {s} Chamfer |" + (f" {s} Draco F@0.05 |"
                                                                                          if draco_run else "")
                                          + (f" {s} + offsets: bytes | F@0.02 | F@0.05 |" if off_run else "")
                                          for s in splits)
    lines = [head, "|" + "---|" * (2 + cols * len(splits))]
    first = ev["splits"][splits[0]]["rows"]
    for i, row in enumerate(first):
        cells = [str(row["scales"]), str(row["bytes"])]
        for s in splits:
            r = ev["splits"][s]["rows"][i]
            draco = r.get("draco_fscore_005")
            fits = r.get("draco_fits", 0) > 0
            cells += [f"{r['vat_fscore_002']:.3f}", f"{r['vat_fscore_005']:.3f}", f"{r['vat_chamfer']:.4f}"]
            if draco_run:
                cells.append(f"{draco:.3f}" if draco is not None and fits else "--")
            if off_run:
                cells += ([str(r["off_bytes"]), f"{r['off_fscore_002']:.3f}", f"{r['off_fscore_005']:.3f}"]
                          if "off_fscore_005" in r else ["--"] * 3)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(ev: dict) -> str:
    """The issue's targets on the procedural split at <= 1 KB: met or not, with the numbers."""
    proc = ev["splits"].get("procedural")
    if not proc:
        return "The procedural split was not evaluated: the targets are not measured."
    within = [r for r in proc["rows"] if r["bytes"] <= TARGET_BYTES]
    if not within:
        return f"No number of scales fits {TARGET_BYTES} bytes: the targets are not measured."
    best = {k: max(r[f"vat_{k}"] for r in within) for k in TARGETS}
    parts = [f"F@{k[-3]}.{k[-2:]} >= {t:.2f} ({best[k]:.3f} here: {'met' if best[k] >= t else 'not met'})"
             for k, t in TARGETS.items()]
    text = f"Targets on procedural test meshes at <= {TARGET_BYTES:,} bytes: " + "; ".join(parts) + "."
    with_off = [r for r in proc["rows"] if "off_fscore_005" in r and r["off_bytes"] <= TARGET_BYTES]
    if with_off:
        best = {k: max(r[f"off_{k}"] for r in with_off) for k in TARGETS}
        text += (" With the offset layer (`--offsets`, ids + offsets within the same bytes): " + "; ".join(
            f"F@{k[-3]}.{k[-2:]} {best[k]:.3f} ({'met' if best[k] >= t else 'not met'})" for k, t in TARGETS.items())
            + "; the line above is the tokens alone.")
    return text


def demo_line(src: Path, resolution: int = 64) -> str:
    """Compress the bundled demo table with ``src`` and decode it: bytes and scores, measured now."""
    from tokenizers3d.compress import compress_file, decompress_file
    from tokenizers3d.io import load_mesh
    from tokenizers3d.metrics import evaluate_mesh

    with tempfile.TemporaryDirectory() as tmp:
        done = compress_file(DEMO, Path(tmp) / "table.vat", checkpoint=src)
        decoded = decompress_file(Path(tmp) / "table.vat", Path(tmp) / "table.obj", checkpoint=src,
                                  resolution=resolution)
        m = evaluate_mesh(decoded, load_mesh(DEMO), seed=0)
    return (f"The bundled demo table (`assets/demo/table.ply`) compresses to a {done.file_bytes}-byte `.vat` file "
            f"({done.payload_bytes} bytes of ids) and decodes at resolution {resolution} to F@0.02 "
            f"{m.fscore_002:.3f}, F@0.05 {m.fscore_005:.3f}, Chamfer {m.chamfer:.4f} (measured when shipped).")


def card(run: Path, which: str, ev: dict, recipe: str, size: int, n_params: int, demo: str | None) -> str:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    m, d, t = cfg["model"], cfg["data"], cfg["train"]
    q = m["quantizer"]
    rows = RunFolder(run).log_rows()
    last = rows[-1] if rows else {}
    minutes = float(last.get("elapsed_s", "nan")) / 60
    sessions = (run / "sessions.jsonl").read_text().count("\n") if (run / "sessions.jsonl").exists() else 0
    val = val_row(rows, which)
    tokens = sum(q["scales"])
    full = ev["splits"][next(iter(ev["splits"]))]["rows"][-1]["bytes"]
    ratios = "; ".join(f"{split}: " + ", ".join(f"{k.replace('_', ' ')} {v:.0f}x" for k, v in
                                                res.get("compression_ratio", {}).items())
                       for split, res in ev["splits"].items())
    by_scales = " / ".join(f"{float(x):.2f}" for x in val.get("val_iou_by_scales", "").split())
    families = ", ".join(d["families"]) if d.get("families") else "the 15 default families"
    grown = (f" grown by {m['query_blocks']} query block(s) (`model.query_blocks`: more reads of the decoded tokens)"
             if m.get("query_blocks") else "")
    frozen = ("\n- The encoder side (point embedding, queries, encoder, Gaussian head, codebook) was frozen"
              " (`train.freeze_encoder`): only the decoder learned, so every shape keeps the ids the starting weights"
              " gave it") if t.get("freeze_encoder") else ""
    settings = ev["settings"]
    decoding = (f"encoder's ids fitted to the mesh for {settings['fit_steps']} steps"
                if settings.get("fit_steps") else "the encoder's ids") + (
        ", surface level chosen per shape" if settings.get("level") == "auto" else
        f", surface level {settings.get('level', '0.5')}")
    draco_note = (", beside Draco compressing the quadric-decimated input into the same number of bytes (\"--\": no"
                  " mesh fits)") if "Draco" in eval_table(ev) else " (Draco not run here)"
    commands = ev.get("commands", [eval_command(ev)])
    warm = (f"\n- The run started from the weights then in `{t['init_from']}` (every tensor copied); their own training"
            " is not counted above (its recipe is named in that checkpoint's card of the time)") if t.get("init_from") else ""
    return f"""# vat

The VAT shape tokenizer (`tokenizers3d/vat.py`): a shape's surface points become {tokens} discrete tokens in
{len(q['scales'])} coarse-to-fine scales ({', '.join(map(str, q['scales']))}) of one {q['codebook_size']:,}-code book
-- {full} bytes -- and any prefix of the scales decodes, through an occupancy field and marching cubes, to a closed
surface. It is the default checkpoint of `meshgen compress` / `meshgen decompress` and of the `vat` tokenizer.
**Lossy**: the decoded surface is close to, not equal to, the input (below).

## Model
- Class `VATModel`, {n_params:,} parameters, {size / 2**20:.1f} MB (`{WEIGHTS_NAME}`, fp32), digest
  `{ev['digest']}` (written into every `.vat` file: files of other weights are refused).
- Config (`config.json`): encoder `{m['encoder']}` (queries `{m['queries']}`), {m['enc_layers']} encoder and
  {m['dec_layers']} decoder layers of width {m['dim']}, Gaussian latent (KL weight {m['kl_weight']}), multi-scale
  residual quantization (code dim {q['dim']}, {'EMA' if q.get('ema') else 'learned'} codebook), decoder
  `{m['decoder']}`{grown}.

## Data
- Fresh procedural shapes of {families} made on the fly (stream seed {d['stream_seed']}),
  {'augmented' if d.get('augment') is not None else 'not augmented'}, at most {d['max_faces']:,} faces; per shape
  {d['n_points']:,} surface points with normals, {d['n_uniform']:,} uniform and {d['n_near']:,} near-surface occupancy
  targets. Validation: {d['val_shapes']} fixed shapes of another seed ({d['val_seed']}). Never the held-out test
  split or the real meshes.

## Training
- `python scripts/train_vat.py --config {recipe}` (resumable; AdamW lr {t['lr']}, warm-up {t['warmup_steps']}, cosine
  to {t['steps']:,} steps, batch {t['batch']}, tail drop {t['tail_drop']}), {last.get('step', '?')} steps in
  {minutes:.0f} min of wall time over {sessions} session(s) on {RunFolder(run).machines()}.{warm}{frozen}
- Validation occupancy IoU of the shipped weights ({which}, step {val.get('step', '?')}):
  {float(val.get('val_iou', 'nan')):.2f} with every scale ({by_scales} with 1-{len(q['scales'])} scales kept);
  {float(val.get('val_iou_continuous', 'nan')):.2f} from the continuous latent.

## Evaluation
{chr(10).join(f"`{c}`" for c in commands)}

The first {settings['n']} meshes of each split ({', '.join(ev['splits'])}), {decoding} (what `meshgen compress`
does with these settings), against the input mesh (distances in units of its longest side){draco_note}.

{eval_table(ev)}

Compression of the full sequence against the input files: {ratios}.
{demo or ''}

## Limitations
- {verdict(ev)}
- Lossy by design; the decoded mesh is a closed marching-cubes surface (thousands of faces), not an artist mesh:
  `meshgen generate --family F --prior DIR --artist` hands such a surface to the point-cloud generator. Open
  meshes have no inside, so thin or open parts decode poorly.

## Reproduce
```bash
python scripts/train_vat.py --config {recipe}   # resumable: run again after a stop
{chr(10).join(commands)}
python scripts/ship_vat.py --run {run} --eval <those JSONs> --config {recipe}
```
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/vat_points", help="run folder of scripts/train_vat.py")
    p.add_argument("--which", default="best", choices=["best", "last"])
    p.add_argument("--eval", required=True, nargs="+",
                   help="JSON(s) of scripts/eval_vat.py --out, made with these weights (several: splits merged)")
    p.add_argument("--config", default="configs/vat_cpu_points.yaml", help="the recipe, for the reproduce command")
    p.add_argument("--dest", default=str(DEFAULT_CHECKPOINT), help="where to ship (default: the bundled checkpoint)")
    p.add_argument("--no-demo", action="store_true", help="leave out the demo table's line (no decode at ship time)")
    args = p.parse_args(argv)
    run, src = Path(args.run), Path(args.run) / args.which
    try:
        size = shippable_weights(src, MAX_BYTES)
        evs = [json.loads(Path(e).read_text()) for e in args.eval]
    except (MeshgenError, OSError, ValueError) as exc:
        _fail(str(exc))
    ev = merge_evals(evs, args.eval)
    if ev.get("digest") != model_digest(src):
        _fail(f"{args.eval[0]} evaluates weights {ev.get('digest')}, not {src} ({model_digest(src)}); "
              f"run scripts/eval_vat.py --checkpoint {src} first")
    if not (run / "config.yaml").is_file():
        _fail(f"{run}: no config.yaml (not a run folder of scripts/train_vat.py)")
    from tokenizers3d.vat import VATModel

    n_params = sum(x.numel() for x in VATModel.from_pretrained(src).parameters())
    demo = None if args.no_demo else demo_line(src)
    install_model_dir(src, args.dest, card(run, args.which, ev, args.config, size, n_params, demo))
    print(json.dumps({"shipped": args.dest, "digest": ev["digest"], "megabytes": round(size / 2**20, 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
