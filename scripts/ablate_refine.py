"""How should decoded samples be fitted to the points? Every refinement setting scored on the same candidates.

Per held-out mesh (the first ``--n`` of a split, picked as :mod:`scripts.eval_generator` picks them), the default
decoding's candidates -- ``--samples`` rows, the last ``--free`` without point guidance, one batch, the default
temperature and classifier-free guidance, exactly what :func:`meshgen.pipeline.generate_mesh` draws -- are sampled
once and cached (``--cache``, one ``.npz`` per mesh; a rerun or a killed run reuses them). Then for each setting of
:class:`meshgen.refine.RefineConfig` (``--variants``): every candidate refined, ranked by its fit to the input points
(:func:`meshgen.pipeline.fit_to_points`), the kept one scored against the reference
(:func:`tokenizers3d.metrics.evaluate_mesh`, the evaluation's seed) -- so rows differ only by the refinement. The
convex-hull baseline is scored on the same points for the per-family comparison::

    python scripts/ablate_refine.py --split procedural --n 24 --cache runs/candidates_proc --out runs/ablate_refine_proc.json
    python scripts/ablate_refine.py --split real --n 24 --cache runs/candidates_real --out runs/ablate_refine_real.json

Prints the table in markdown (also written to ``--out`` with suffix ``.md``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablate_decoding import reference_samples  # noqa: E402
from eval_generator import add_split_options, split_items  # noqa: E402

from meshgen.baselines import hull_baseline  # noqa: E402
from meshgen.pipeline import DEFAULT_SAMPLES, N_POINTS, fit_to_points, load_generator  # noqa: E402
from meshgen.refine import RefineConfig, refine_vertices  # noqa: E402
from tokenizers3d.io import atomic_write_text, load_mesh  # noqa: E402
from tokenizers3d.metrics import evaluate_mesh  # noqa: E402
from tokenizers3d.sample import sample_surface  # noqa: E402

PREVIOUS = dict(steps=60, max_shift=0.04, schedule="constant", point_term="samples", affine_steps=0)  # until 2026-11-30
VARIANTS = {
    "none": None,
    "previous": RefineConfig(**PREVIOUS),
    "cosine": RefineConfig(**{**PREVIOUS, "schedule": "cosine"}),
    "faces": RefineConfig(**{**PREVIOUS, "point_term": "faces"}),
    "faces+cosine": RefineConfig(**{**PREVIOUS, "point_term": "faces", "schedule": "cosine"}),
    "faces+cosine 150": RefineConfig(**{**PREVIOUS, "point_term": "faces", "schedule": "cosine", "steps": 150}),
    "faces+cosine 150 shift 0.08": RefineConfig(**{**PREVIOUS, "point_term": "faces", "schedule": "cosine",
                                                   "steps": 150, "max_shift": 0.08}),
    "default": RefineConfig(),  # the above with the affine first stage (docs/model.md, "Vertex refinement")
}


def cached_candidates(model, ref: trimesh.Trimesh, cloud, path: Path, *, samples: int, free: int, seed: int,
                      temperature: float) -> list[trimesh.Trimesh | None]:
    """The decoded (unrefined) candidates for ``cloud`` (points of ``ref``), from ``path`` or sampled and written
    there."""
    if path.exists():
        with np.load(path) as z:
            n = int(z["n"])
            return [trimesh.Trimesh(z[f"v{i}"], z[f"f{i}"], process=False) if f"v{i}" in z else None
                    for i in range(n)]
    decoded = reference_samples(model, ref, cloud, samples=samples, free=free, seed=seed, temperature=temperature)
    arrays: dict = {"n": np.array(len(decoded))}
    for i, (mesh, _) in enumerate(decoded):
        if mesh is not None:
            arrays[f"v{i}"], arrays[f"f{i}"] = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)  # a killed run leaves no half-written cache entry
    return [mesh for mesh, _ in decoded]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_options(p)
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES)
    p.add_argument("--free", type=int, default=None, help="rows without point guidance (default: samples // 2)")
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--cache", required=True, help="directory of sampled candidates (created; reused when rerun)")
    p.add_argument("--out", default=None, help="JSON here (and the markdown table beside it, .md)")
    args = p.parse_args(argv)
    free = args.samples // 2 if args.free is None else args.free
    if args.samples < 1 or not 0 <= free <= args.samples:
        p.error("--samples must be >= 1 and --free in [0, samples]")
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # one-token steps and small refinements: one thread is fastest (meshgen.pipeline)
    items = split_items(args)
    if not items:
        print(f"error: no held-out mesh found for the {args.split} split", file=sys.stderr)
        return 2
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    model = None
    results = {name: [] for name in args.variants}
    hull_rows = []
    for item in items:
        ref = load_mesh(item.path)
        key = cache / (hashlib.sha1(item.id.encode()).hexdigest()[:16] + ".npz")
        if model is None and not key.exists():
            model = load_generator(args.checkpoint)
        cloud = sample_surface(ref, N_POINTS, seed=args.seed)
        cands = cached_candidates(model, ref, cloud, key, samples=args.samples, free=free, seed=args.seed,
                                  temperature=args.temperature)
        hull = hull_baseline(cloud.points, len(ref.faces))
        hull_rows.append(evaluate_mesh(hull, ref, seed=args.seed).to_dict()["chamfer"] if hull is not None else None)
        line = [f"{item.id} ({item.group})"]
        for name in args.variants:
            cfg = VARIANTS[name]
            t0 = time.time()
            best, best_fit = None, float("inf")
            for mesh in cands:
                if mesh is None:
                    continue
                if cfg is not None:
                    mesh = refine_vertices(mesh, cloud.points, cfg, seed=args.seed)
                fit = fit_to_points(mesh, cloud.points, seed=args.seed)
                if fit < best_fit:
                    best, best_fit = mesh, fit
            seconds = time.time() - t0
            m = evaluate_mesh(best, ref, seed=args.seed).to_dict() if best is not None else None
            results[name].append({"id": item.id, "group": item.group, "seconds": round(seconds, 2),
                                  "chamfer": None if m is None else m["chamfer"],
                                  "fscore_005": None if m is None else m["fscore_005"]})
            line.append(f"{name} {'-' if m is None else format(m['chamfer'], '.4f')}")
        print(" | ".join(line), file=sys.stderr, flush=True)

    groups = sorted({it.group for it in items})
    lines = [f"| refinement ({args.split}, n = {len(items)}) | Chamfer | F@0.05 | s / mesh | beats hull (items) | "
             "families where it beats the hull on Chamfer |", "|---|---|---|---|---|---|"]
    table = {}
    for name, rows in results.items():
        ok = [r for r in rows if r["chamfer"] is not None]
        beats = [r["chamfer"] < h for r, h in zip(rows, hull_rows, strict=True) if r["chamfer"] is not None and h is not None]
        fam = []
        for g in groups:
            pairs = [(r["chamfer"], h) for r, h in zip(rows, hull_rows, strict=True)
                     if r["group"] == g and r["chamfer"] is not None and h is not None]
            if pairs and np.mean([a for a, _ in pairs]) < np.mean([b for _, b in pairs]):
                fam.append(g)
        table[name] = {"n": len(ok), "chamfer": float(np.mean([r["chamfer"] for r in ok])),
                       "fscore_005": float(np.mean([r["fscore_005"] for r in ok])),
                       "seconds": float(np.mean([r["seconds"] for r in rows])),
                       "beats_hull": float(np.mean(beats)) if beats else float("nan"), "families": fam}
        t = table[name]
        lines.append(f"| {name} | {t['chamfer']:.4f} | {t['fscore_005']:.3f} | {t['seconds']:.1f} | "
                     f"{t['beats_hull']:.2f} | {len(fam)} / {len(groups)} |")
    hull_ok = [h for h in hull_rows if h is not None]
    lines.append(f"| (convex hull baseline) | {np.mean(hull_ok):.4f} | | | | |")
    md = "\n".join(lines) + "\n"
    print(md)
    if args.out:
        out = Path(args.out)
        atomic_write_text(out, json.dumps({"settings": vars(args), "table": table, "hull_chamfer": hull_rows,
                                           "items": results}, indent=1))
        atomic_write_text(out.with_suffix(".md"), md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
