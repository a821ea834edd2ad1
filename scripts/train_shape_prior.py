#!/usr/bin/env python
"""Train the class-conditioned prior over VAT tokens (:mod:`meshgen.shape_prior`). Resumable.

Two phases, both picking up where a killed run stopped:

1. **Tokens.** Procedural shapes of every family (:func:`tokenizers3d.procedural.generate`, train seeds
   ``object_seed(TRAIN_SEED, i)``, validation seeds ``object_seed(VAL_SEED, i)``) are encoded by the VAT model into
   per-scale ids (:func:`tokenizers3d.compress.encode_mesh`) and stored in ``OUT/tokens/<split>.npz`` (ids,
   labels), written in chunks (``.partNNNN.npz``, each renamed into place), so a kill loses at most one chunk.
   ``scripts/eval_shape_prior.py`` compares samples with a third, disjoint set of seeds (``TEST_SEED``).
2. **Prior.** AdamW on the next-scale cross-entropy with the family label dropped on ``--label-drop`` of the
   examples (classifier-free guidance); validation nats per token every ``--val-every`` steps; ``OUT/best`` (lowest
   validation loss), ``OUT/last`` (resumable state), ``OUT/log.csv``. The VAT model is copied to ``OUT/vat`` and
   its digest written into the prior's config, so ``meshgen generate --family F --prior OUT/best`` finds it.

Usage::

    python scripts/train_shape_prior.py --vat runs/vat_points/best --out runs/shape_prior --shapes 256 --steps 3000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from meshgen.shape_prior import ShapePrior, ShapePriorConfig
from meshgen.train import lr_at, optimizer_step
from tokenizers3d.checkpoint import RunFolder, model_digest
from tokenizers3d.compress import encode_mesh, load_vat_model
from tokenizers3d.errors import MeshgenError
from tokenizers3d.io import atomic_write_text
from tokenizers3d.procedural import DEFAULT_FAMILIES, generate, object_seed

TRAIN_SEED, VAL_SEED, TEST_SEED = 101, 202, 303
LOG_FIELDS = ["step", "lr", "loss", "val_loss", "examples_per_s", "elapsed_s"]
CHUNK = 64


def shape_seeds(split_seed: int, family: str, n: int) -> list[int]:
    """Seeds of the first ``n`` shapes of ``family`` in a split (disjoint across splits and families)."""
    key = DEFAULT_FAMILIES.index(family) if family in DEFAULT_FAMILIES else sum(map(ord, family))
    return [object_seed(split_seed * 1000 + key, i) for i in range(n)]


def encode_split(vat, families: list[str], split_seed: int, n: int, path: Path, *, log=print) -> dict:
    """``{"ids": (N, T) int16/int32, "labels": (N,) int64}`` of ``n`` shapes per family, cached at ``path``;
    chunks of a killed run are reused."""
    if path.exists():
        with np.load(path) as z:
            return {"ids": z["ids"], "labels": z["labels"]}
    jobs = [(label, fam, seed) for label, fam in enumerate(families) for seed in shape_seeds(split_seed, fam, n)]
    ids, labels = [], []
    t0 = time.time()
    for c0 in range(0, len(jobs), CHUNK):
        part = path.with_name(f"{path.stem}.part{c0 // CHUNK:04d}.npz")
        if part.exists():
            with np.load(part) as z:
                ids.append(z["ids"])
                labels.append(z["labels"])
            continue
        rows = []
        for label, fam, seed in jobs[c0:c0 + CHUNK]:
            codes, _ = encode_mesh(vat, generate(fam, seed).mesh, seed=seed)
            rows.append((torch.cat(codes, dim=-1)[0].numpy(), label))
        chunk_ids = np.stack([r[0] for r in rows]).astype(np.int32)
        chunk_labels = np.array([r[1] for r in rows], dtype=np.int64)
        tmp = part.with_suffix(".tmp.npz")
        np.savez(tmp, ids=chunk_ids, labels=chunk_labels)
        tmp.rename(part)
        ids.append(chunk_ids)
        labels.append(chunk_labels)
        done = min(c0 + CHUNK, len(jobs))
        log(f"{path.stem}: {done}/{len(jobs)} shapes encoded ({time.time() - t0:.0f} s)")
    out = {"ids": np.concatenate(ids), "labels": np.concatenate(labels)}
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **out)
    tmp.rename(path)
    for part in path.parent.glob(f"{path.stem}.part*.npz"):
        part.unlink()
    return out


def split_codes(ids: np.ndarray, scales: tuple[int, ...]) -> list[torch.Tensor]:
    t = torch.as_tensor(ids, dtype=torch.long)
    starts = np.cumsum([0, *scales])
    return [t[:, a:b] for a, b in zip(starts[:-1], starts[1:], strict=True)]


@torch.no_grad()
def validate(model: ShapePrior, data: dict, batch: int = 64) -> float:
    model.eval()
    total, n = 0.0, 0
    for i in range(0, len(data["labels"]), batch):
        ids, labels = data["ids"][i:i + batch], torch.as_tensor(data["labels"][i:i + batch])
        total += float(model(split_codes(ids, model.config.scales), labels)) * len(labels)
        n += len(labels)
    model.train()
    return total / max(n, 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vat", required=True, help="VAT model directory (scripts/train_vat.py: a run's best/)")
    ap.add_argument("--out", default="runs/shape_prior")
    ap.add_argument("--families", nargs="+", default=list(DEFAULT_FAMILIES))
    ap.add_argument("--shapes", type=int, default=256, help="training shapes per family")
    ap.add_argument("--val-shapes", type=int, default=16, help="validation shapes per family")
    ap.add_argument("--model", default=None, help="JSON of ShapePriorConfig fields (dim, heads, layers, ...)")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--label-drop", type=float, default=0.1, help="share of examples trained without their family")
    ap.add_argument("--val-every", type=int, default=250)
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    try:
        vat, digest = load_vat_model(args.vat)
        q = vat.config.quantizer
        kw = json.loads(args.model) if args.model else {}
        config = ShapePriorConfig(scales=tuple(q.scales), codebook_size=q.codebook_size, code_dim=q.dim,
                                  families=tuple(args.families), vat_digest=digest, **kw)
    except (MeshgenError, ValueError, KeyError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    (out / "tokens").mkdir(parents=True, exist_ok=True)
    if not (out / "vat" / "config.json").exists():
        shutil.rmtree(out / ".vat.tmp", ignore_errors=True)
        shutil.copytree(args.vat, out / ".vat.tmp", ignore=shutil.ignore_patterns("trainer_state.pt"))
        (out / ".vat.tmp").rename(out / "vat")
    if model_digest(out / "vat") != digest:
        print(f"error: {out / 'vat'} holds other VAT weights than {args.vat}; use another --out", file=sys.stderr)
        return 2
    key = hashlib.sha1(" ".join(args.families).encode()).hexdigest()[:8]  # a cache per family list
    train = encode_split(vat, args.families, TRAIN_SEED, args.shapes, out / "tokens" / f"train-{args.shapes}-{key}.npz")
    val = encode_split(vat, args.families, VAL_SEED, args.val_shapes, out / "tokens" / f"val-{args.val_shapes}-{key}.npz")
    run = RunFolder(out)
    try:
        model, opt, step, best = run.start(ShapePrior, config,
                                           lambda p: torch.optim.AdamW(p, lr=args.lr, weight_decay=0.01),
                                           threads=args.threads, seed=args.seed)
    except MeshgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if step == 0:
        model.set_codebook(vat.quantizer.codebook[0])
    best = float("inf") if best < 0 else best
    atomic_write_text(out / "train_config.json", json.dumps(vars(args), indent=1) + "\n")
    run.record_session(from_step=step, train_shapes=len(train["labels"]), val_shapes=len(val["labels"]))
    rng = np.random.default_rng([args.seed, step])
    elapsed0, t0, t_log, rows = run.elapsed_before(), time.time(), time.time(), []
    val_loss = float("nan")
    model.train()
    while step < args.steps:
        lr = lr_at(step, base=args.lr, warmup=100, total=args.steps, min_ratio=0.05)
        pick = rng.choice(len(train["labels"]), args.batch, replace=len(train["labels"]) < args.batch)
        labels = torch.as_tensor(train["labels"][pick])
        labels = torch.where(torch.as_tensor(rng.random(len(pick)) < args.label_drop), model.null_label, labels)
        loss = model(split_codes(train["ids"][pick], config.scales), labels)
        optimizer_step(opt, loss, model.parameters(), lr=lr, clip=1.0)
        step += 1
        rows.append({"loss": float(loss.detach())})
        if step % args.val_every == 0 or step == args.steps:
            val_loss = validate(model, val)
            if val_loss < best:
                best = val_loss
                run.checkpoint(model, "best")
        if step % 25 == 0 or step == args.steps:
            now = time.time()
            row = run.log_means(rows, LOG_FIELDS, step=step, lr=f"{lr:.3e}", val_loss=f"{val_loss:.4f}",
                                examples_per_s=f"{len(rows) * args.batch / (now - t_log):.1f}",
                                elapsed_s=f"{elapsed0 + now - t0:.1f}")
            print(json.dumps(row), flush=True)
            rows, t_log = [], now
        if step % args.ckpt_every == 0 or step == args.steps:
            run.checkpoint(model, "last", optimizer=opt, step=step, best=best)
    print(json.dumps({"step": step, "best_val_loss": best, "out": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
