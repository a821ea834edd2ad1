#!/usr/bin/env python
"""Coverage and minimum matching distance of a VAT shape prior's samples, per family, and a PNG grid of them.

For every family: ``--samples`` shapes drawn from the prior (:meth:`meshgen.shape_prior.ShapePrior.sample`, one
batch, seed ``--seed``) and decoded by its VAT (:func:`meshgen.shape_prior.decode_shape`), against ``--refs``
held-out shapes of that family (seeds ``object_seed(TEST_SEED, i)`` of ``scripts/train_shape_prior.py``, never
trained on). Every shape is moved into the unit frame (:class:`tokenizers3d.mesh.Normalization`) and compared by
Chamfer distance between ``--points`` surface samples. Reported per family (and averaged):

* ``cov``: share of references that are the nearest reference of some sample (higher is better);
* ``mmd``: mean over references of the Chamfer distance to the closest sample (lower is better);
* ``decoded``: share of samples whose field has a surface;
* the same two numbers for the references' own VAT reconstructions (encode + decode: what a perfect prior over
  these tokens could reach) and for samples drawn with the null label (no family: does conditioning matter?).

Usage::

    python scripts/eval_shape_prior.py --prior runs/shape_prior/best --samples 32 --refs 32 \\
        --out runs/eval_prior.json --markdown-out runs/eval_prior.md --grid docs/img/prior_samples.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from meshgen.shape_prior import coverage_mmd, decode_shape, load_prior_and_vat
from tokenizers3d.compress import encode_mesh
from tokenizers3d.errors import MeshgenError
from tokenizers3d.io import atomic_write_text
from tokenizers3d.metrics import chamfer_distance
from tokenizers3d.procedural import generate
from tokenizers3d.sample import sample_unit_surface

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_shape_prior import TEST_SEED, shape_seeds  # noqa: E402


def unit_points(mesh, n: int, seed: int) -> np.ndarray:
    return sample_unit_surface(mesh, n, seed=seed)[0].points


def distances(samples: list[np.ndarray | None], refs: list[np.ndarray]) -> np.ndarray:
    """Chamfer matrix (samples x references); a sample with no surface is at distance inf from everything."""
    return np.array([[np.inf if s is None else chamfer_distance(s, r) for r in refs] for s in samples])


def _scores(d: np.ndarray) -> dict:
    ok = np.isfinite(d).all(axis=1)
    if not ok.any():
        return {"cov": 0.0, "mmd": float("nan"), "decoded": 0.0}
    return {**coverage_mmd(d[ok]), "decoded": float(ok.mean())}


def evaluate(prior, vat, families: list[str], *, n_samples: int, n_refs: int, n_points: int, resolution: int,
             seed: int, temperature: float, cfg_scale: float, log=print) -> tuple[dict, dict]:
    """Per-family scores and the decoded sample meshes (for the grid)."""
    results, meshes = {}, {}
    for family in families:
        t0 = time.time()
        refs = [generate(family, s).mesh for s in shape_seeds(TEST_SEED, family, n_refs)]
        ref_pts = [unit_points(m, n_points, i) for i, m in enumerate(refs)]
        row = {}
        for arm, label in (("prior", prior.label(family)), ("null", prior.null_label)):
            gen = torch.Generator().manual_seed(seed)
            out = prior.sample(torch.full((n_samples,), label), temperature=temperature, cfg_scale=cfg_scale,
                               generator=gen)
            decoded = [decode_shape(vat, [c[i:i + 1] for c in out.codes], resolution=resolution)
                       for i in range(n_samples)]
            if arm == "prior":
                meshes[family] = decoded
            pts = [None if m is None else unit_points(m, n_points, 10_000 + i) for i, m in enumerate(decoded)]
            row[arm] = _scores(distances(pts, ref_pts))
        recon = []
        for i, m in enumerate(refs):
            codes, _ = encode_mesh(vat, m, seed=i)
            d = decode_shape(vat, codes, resolution=resolution)
            recon.append(None if d is None else unit_points(d, n_points, 20_000 + i))
        row["reconstruction"] = _scores(distances(recon, ref_pts))
        row["seconds"] = round(time.time() - t0, 1)
        results[family] = row
        log(f"{family}: prior cov {row['prior']['cov']:.2f} mmd {row['prior']['mmd']:.4f} | null cov "
            f"{row['null']['cov']:.2f} mmd {row['null']['mmd']:.4f} | reconstruction mmd "
            f"{row['reconstruction']['mmd']:.4f} ({row['seconds']} s)")
    return results, meshes


def markdown(results: dict) -> str:
    lines = ["| family | COV prior | MMD prior | decoded | COV no label | MMD no label | MMD reconstructions |",
             "|---|---|---|---|---|---|---|"]
    rows = list(results.items())
    for fam, r in rows:
        lines.append(f"| {fam} | {r['prior']['cov']:.2f} | {r['prior']['mmd']:.4f} | {r['prior']['decoded']:.2f} | "
                     f"{r['null']['cov']:.2f} | {r['null']['mmd']:.4f} | {r['reconstruction']['mmd']:.4f} |")
    if len(rows) > 1:
        mean = lambda arm, k: float(np.nanmean([r[arm][k] for _, r in rows]))  # noqa: E731
        lines.append(f"| mean | {mean('prior', 'cov'):.2f} | {mean('prior', 'mmd'):.4f} | "
                     f"{mean('prior', 'decoded'):.2f} | {mean('null', 'cov'):.2f} | {mean('null', 'mmd'):.4f} | "
                     f"{mean('reconstruction', 'mmd'):.4f} |")
    return "\n".join(lines)


def save_grid(meshes: dict, path: Path, *, per_family: int = 6, size: int = 128) -> None:
    """One row per family: its first ``per_family`` decoded samples (blank where none decoded)."""
    from renderers.preview import mesh_table_png

    mesh_table_png([list(ms[:per_family]) + [None] * (per_family - len(ms[:per_family])) for ms in meshes.values()],
                   path, size=size)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prior", required=True, help="shape prior model directory")
    ap.add_argument("--vat", default=None, help="its VAT (default: beside the prior)")
    ap.add_argument("--families", nargs="+", default=None, help="default: every family of the prior")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--refs", type=int, default=32)
    ap.add_argument("--points", type=int, default=2048)
    ap.add_argument("--resolution", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--cfg-scale", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--markdown-out", default=None)
    ap.add_argument("--grid", default=None, help="PNG grid of samples (one row per family)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        prior, vat = load_prior_and_vat(args.prior, args.vat)
        families = args.families or list(prior.config.families)
        for f in families:
            prior.label(f)
    except MeshgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results, meshes = evaluate(prior, vat, families, n_samples=args.samples, n_refs=args.refs,
                               n_points=args.points, resolution=args.resolution, seed=args.seed,
                               temperature=args.temperature, cfg_scale=args.cfg_scale,
                               log=lambda m: print(m, file=sys.stderr, flush=True))
    report = {"prior": args.prior, "samples": args.samples, "refs": args.refs, "resolution": args.resolution,
              "temperature": args.temperature, "cfg_scale": args.cfg_scale, "seed": args.seed, "families": results}
    text = json.dumps(report, indent=1)
    if args.out:
        atomic_write_text(Path(args.out), text + "\n")
    if args.markdown_out:
        atomic_write_text(Path(args.markdown_out), markdown(results) + "\n")
    if args.grid:
        save_grid(meshes, Path(args.grid))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
