"""Copy a face VQ-VAE run's weights into assets/checkpoints/face-vqvae and write its model card from measured files.

    python scripts/eval_face_vqvae.py --checkpoint runs/face_vqvae/best --out runs/face_vqvae/eval.json
    python scripts/ship_face_vqvae.py --run runs/face_vqvae --eval runs/face_vqvae/eval.json

The card (``README.md`` beside the weights) states the data, steps, wall time and hardware (from the run's
``config.yaml``, ``log.csv`` and ``sessions.jsonl``), the evaluation table (from the JSON of
``scripts/eval_face_vqvae.py``, which must be of these very weights: its ``checkpoint_sha256`` is checked) and the
commands that reproduce it. Refuses weights of 30 MB or more.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml
from eval_face_vqvae import TARGETS, USAGE_TARGET, markdown  # scripts/ is on sys.path when this script runs

from tokenizers3d.checkpoint import WEIGHTS_NAME, RunFolder, install_model_dir, shippable_weights
from tokenizers3d.errors import MeshInputError
from tokenizers3d.vqvae import DEFAULT_CHECKPOINT, checkpoint_digest

MAX_BYTES = 30 * 1024 * 1024


def _fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def card(run: Path, which: str, ev: dict, digest: str, size: int) -> str:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    rows = RunFolder(run).log_rows()
    last = rows[-1] if rows else {}
    m, d, t = cfg["model"], cfg["data"], cfg["train"]
    hours = float(last.get("elapsed_s", "nan")) / 3600
    vq = {split: res["rows"]["vqvae"] for split, res in ev["sets"].items()}
    verdict = "; ".join(
        f"{split}: {row['within_one']:.1%} of faces within one cell (target {TARGETS[split]:.0%}: "
        f"{'met' if row['within_one'] >= TARGETS[split] else 'not met'}), codebook usage {row['codebook_usage']:.1%} "
        f"(target {USAGE_TARGET:.0%}: {'met' if row['codebook_usage'] >= USAGE_TARGET else 'not met'})"
        for split, row in vq.items())
    return f"""# face-vqvae: the model of the `vqvae` tokenizer

A face VQ-VAE (MeshGPT / MeshAnything style; `tokenizers3d/face_vqvae.py`, `tokenizers3d/rvq.py`): each face of a
{m['bits']}-bit canonical mesh becomes {m['slots']} x {m['rvq']['depth']} = {m['slots'] * m['rvq']['depth']} codes
of {m['rvq']['codebook_size']:,} (one book per level{', shared' if m['rvq']['shared'] else ''}); decoding predicts every
coordinate as one of {2 ** m['bits']} levels. **Lossy**: decoded meshes are close to, not equal to, the input (table
below). Load it with `get_tokenizer("vqvae")` or `meshgen tokenize MESH -t vqvae -o out.npz`.

* Weights: `{WEIGHTS_NAME}`, {size / 2**20:.1f} MB; `config.json`; digest (tokenizer config `checkpoint_sha256`)
  `{digest}`: token files made with other weights are refused.
* Architecture: dim {m['dim']}, {m['graph_layers']} graph layers over face adjacency, {m['decoder_layers']} residual 1-D
  conv blocks over the face sequence, {m['head']} coordinate head, label smoothing sigma {m['label_sigma']}; RVQ
  {m['rvq']['dim']}-D, EMA decay {m['rvq']['decay']}, commitment {m['rvq']['commitment']}, dead-code threshold
  {m['rvq']['dead_threshold']}; vertex averaging {'on' if m['vertex_average'] else 'off'}.
* Data: fresh procedural meshes (15 families, at most {d['max_faces']} faces, stream seed {d['stream_seed']}), augmented
  (`AugmentConfig` {d['augment'] or 'defaults'}, random 3-D rotation p = {d['rotate_p']}), about
  {d['faces_per_batch']:,} faces a step; never a held-out mesh.
* Training: {last.get('step', '?')} steps ({which} weights: best validation share of faces within one cell,
  {float(last.get('val_within_one', 'nan')):.1%} at the last step), lr {t['lr']} with warmup {t['warmup_steps']} and
  cosine decay, {hours:.2f} h wall time on {RunFolder(run).machines()}.

## Evaluation (`scripts/eval_face_vqvae.py`; meshes of at most {ev['max_faces']:,} faces)

{markdown(ev)}

{verdict}.

Rows `coords@{m['bits']}` and `blocks@{m['bits']}` are exact by construction; `coords@{m['bits'] - 1}` is the simplest
lossy baseline (one bit less: every surviving coordinate is within one {m['bits']}-bit cell, collapsed faces are misses).
Chamfer: mean of both directions, {ev['samples']:,} points per surface, in the unit cube of the unquantized mesh.

## Reproduce

```bash
python scripts/train_face_vqvae.py --config configs/face_vqvae_cpu.yaml   # resumable: run again after a stop
{ev['command']}
python scripts/ship_face_vqvae.py --run {run} --eval <that JSON>
```
"""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/face_vqvae", help="run folder of scripts/train_face_vqvae.py")
    p.add_argument("--which", default="best", choices=["best", "last"])
    p.add_argument("--eval", required=True, help="JSON of scripts/eval_face_vqvae.py --out, made with these weights")
    p.add_argument("--dest", default=str(DEFAULT_CHECKPOINT), help="where to ship (default: the bundled checkpoint)")
    args = p.parse_args(argv)
    run, src, dest = Path(args.run), Path(args.run) / args.which, Path(args.dest)
    try:
        size = shippable_weights(src, MAX_BYTES)
    except MeshInputError as exc:
        _fail(str(exc))
    ev = json.loads(Path(args.eval).read_text())
    digest = checkpoint_digest(src)
    if ev.get("tokenizer", {}).get("checkpoint_sha256") != digest:
        _fail(f"{args.eval} evaluates weights {ev.get('tokenizer', {}).get('checkpoint_sha256')}, not {src} ({digest}); "
              f"run scripts/eval_face_vqvae.py --checkpoint {src} first")
    text = card(run, args.which, ev, digest, size)
    install_model_dir(src, dest, text)
    print(json.dumps({"shipped": str(dest), "digest": digest, "megabytes": round(size / 2**20, 2)}))


if __name__ == "__main__":
    main()
