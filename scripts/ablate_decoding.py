"""Which samples should best-of-k decoding draw, and when should it rank them? One batch per held-out mesh, then
every selection rule scored on the same candidates.

Per mesh (the first ``--n`` of a split, as :mod:`scripts.eval_generator` picks them): ``--guided`` rows sampled with
point guidance and ``--free`` rows without it (order constraints only), one batch, the default temperature and
classifier-free guidance; every candidate decoded, refined (:func:`meshgen.refine.refine_vertices`) and scored
against the reference (:func:`tokenizers3d.metrics.evaluate_mesh`) and against the input points
(:func:`meshgen.pipeline.fit_to_points`, before and after refinement). Then, for each rule -- which rows
(the first ``g`` guided, the first ``f`` free) and whether candidates are ranked by their fit before or after
refinement, and whether open edges count against a candidate (``fit x (1 + w x open-edge share)``,
:func:`meshgen.pipeline.rank_score`) -- the kept candidate's mean Chamfer / F@0.05 and how mesh-like it is (open-edge
share, pieces over the reference's, watertight rate), and "oracle" (the best by the reference, an upper bound no
decoder can use). Rules on subsets reuse the same candidates, so they differ only by the rule::

    python scripts/ablate_decoding.py --split procedural --n 24 --guided 8 --free 4 --out runs/ablate_decoding_proc.json
    python scripts/ablate_decoding.py --split real --n 24 --guided 8 --free 4 --out runs/ablate_decoding_real.json

Prints the table in markdown (also written to ``--out`` with suffix ``.md``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_generator import add_split_options, split_items  # noqa: E402

from meshgen.guidance import GuidanceConfig  # noqa: E402
from meshgen.pipeline import (  # noqa: E402
    EDGES_ONCE,
    N_POINTS,
    OPEN_EDGE_WEIGHT,
    draw_samples,
    fit_to_points,
    load_generator,
    refine_candidate,
    weighted_fit,
)
from meshgen.refine import RefineConfig, refine_vertices  # noqa: E402
from meshgen.sampling import EDGE_RULE_ROWS  # noqa: E402
from meshgen.subdivide import split_to_budget  # noqa: E402
from tokenizers3d.io import atomic_write_text, load_mesh  # noqa: E402
from tokenizers3d.metrics import evaluate_mesh  # noqa: E402
from tokenizers3d.sample import sample_surface  # noqa: E402


def reference_samples(model, ref: trimesh.Trimesh, cloud, *, samples: int, free: int, seed: int,
                      temperature: float, edges_once: str = EDGES_ONCE) -> list:
    """:func:`meshgen.pipeline.draw_samples` for ``cloud`` (points of the held-out ``ref``) with the settings
    :mod:`scripts.eval_generator` generates with: the reference's face count, ``max(2 F, 32)`` faces at most,
    top-p 0.95, point guidance, the default classifier-free guidance. ``[(mesh | None, report)]`` per row."""
    n_ref = len(ref.faces)
    decoded, _ = draw_samples(model, cloud, faces=n_ref, seed=seed, temperature=temperature, top_p=0.95, top_k=None,
                              max_faces=max(2 * n_ref, 32), constraints=True, progress=None, guidance=GuidanceConfig(),
                              cfg_scale=None, samples=samples, free_samples=free,
                              edges_once=edges_once)
    return decoded


FILL_VARIANTS = ("fill", "refine-fill", "refine-twice")


def scored(mesh: trimesh.Trimesh, raw: trimesh.Trimesh, ref: trimesh.Trimesh, cloud, seed: int) -> dict:
    """Fits (``raw``: the decoded mesh before refinement) and reference metrics of one candidate."""
    metrics = evaluate_mesh(mesh, ref, seed=seed).to_dict()
    return {"faces": len(mesh.faces), "fit_raw": fit_to_points(raw, cloud.points, seed=seed),
            "fit": fit_to_points(mesh, cloud.points, seed=seed), "chamfer": metrics["chamfer"],
            "fscore_005": metrics["fscore_005"], "open_edge_share": metrics["open_edge_share"],
            "components": metrics["components"], "ref_components": metrics["ref_components"],
            "watertight": metrics["watertight"]}


def candidates(model, ref: trimesh.Trimesh, *, guided: int, free: int, seed: int,
               temperature: float, edges_once: str = EDGES_ONCE, fill: bool = False) -> tuple[list, float, list]:
    """Per row (guided rows first): ``None`` or a dict of fits and reference metrics; the sampling seconds; and the
    refined meshes (``None`` where nothing decoded). ``fill`` also scores, under the keys of
    :data:`FILL_VARIANTS`, the candidate with its face budget (the reference's count) filled by
    :func:`meshgen.subdivide.split_to_budget`: split then refined (``"fill"``), or refined, split and refined
    again (``"refine-fill"``), and the control of the latter without the split (``"refine-twice"``)."""
    cloud = sample_surface(ref, N_POINTS, seed=seed)
    t0 = time.time()
    decoded = reference_samples(model, ref, cloud, samples=guided + free, free=free, seed=seed, temperature=temperature,
                                edges_once=edges_once)
    seconds = time.time() - t0
    rows, meshes = [], []
    for mesh, _ in decoded:
        if mesh is None:
            rows.append(None)
            meshes.append(None)
            continue
        refined = refine_vertices(mesh, cloud.points, RefineConfig(), seed=seed)
        meshes.append(refined)
        row = scored(refined, mesh, ref, cloud, seed)
        if fill:
            n_ref = len(ref.faces)
            split = split_to_budget(mesh, n_ref, cloud.points, cloud.normals)
            row["fill"] = scored(refine_vertices(split, cloud.points, RefineConfig(), seed=seed), mesh, ref, cloud,
                                 seed)
            row["refine-fill"] = scored(refine_candidate(mesh, cloud, RefineConfig(), faces=n_ref, seed=seed), mesh,
                                        ref, cloud, seed)  # the default decoding since 2026-12-01
            row["refine-twice"] = scored(refine_vertices(refined, cloud.points, RefineConfig(), seed=seed), mesh,
                                         ref, cloud, seed)
        rows.append(row)
    return rows, seconds, meshes


OPEN_EDGE_WEIGHTS = (0.5, 1.0, 2.0, 4.0)


def rules(guided: int, free: int) -> dict[str, tuple[list[int], str] | tuple[list[int], str, float]]:
    """Selection rules: name -> (candidate rows, ranking key[, open-edge weight w: rank by key x (1 + w x open-edge
    share), as :func:`meshgen.pipeline.rank_score`])."""
    g = list(range(guided))
    f = list(range(guided, guided + free))
    out = {}
    for k in sorted({1, 2, 4, guided}):
        if k <= guided:
            out[f"guided {k}, ranked before refinement"] = (g[:k], "fit_raw")
            out[f"guided {k}"] = (g[:k], "fit")
    for k in sorted({2, 4, free}):
        if k <= free:
            out[f"free {k}"] = (f[:k], "fit")
    for k in sorted({2, 4}):
        if k <= guided and k <= free:
            out[f"guided {k} + free {k}"] = (g[:k] + f[:k], "fit")
    if free:
        out[f"guided {guided} + free {free}"] = (g + f, "fit")
        for w in OPEN_EDGE_WEIGHTS:
            out[f"guided {guided} + free {free}, open-edge weight {w:g}"] = (g + f, "fit", w)
    out["oracle (by the reference)"] = (g + f, "chamfer")
    return out


def _rank(c: dict, key: str, weight: float) -> float:
    return weighted_fit(c[key], c.get("open_edge_share", 0.0), weight)


def _variant(c: dict | None, variant: str | None) -> dict | None:
    return c if c is None or variant is None else c[variant]


def kept_row(item: dict, rows: list[int], key: str, weight: float = 0.0, variant: str | None = None) -> int | None:
    """The row a rule keeps for one mesh (``None`` when none of ``rows`` decoded); ``variant``: rank the candidates
    as post-processed that way (a key of :data:`FILL_VARIANTS`)."""
    live = [i for i in rows if item["candidates"][i] is not None]
    return min(live, key=lambda i: _rank(_variant(item["candidates"][i], variant), key, weight)) if live else None


def score(items: list[dict], rows: list[int], key: str, weight: float = 0.0, variant: str | None = None) -> dict:
    """Mean Chamfer / F@0.05 of the kept candidates, and how mesh-like they are: mean open-edge share, median pieces
    over the reference's, watertight rate (candidates scored before those fields existed give NaN there)."""
    rows_kept = [(item, kept_row(item, rows, key, weight, variant)) for item in items]
    kept = [_variant(item["candidates"][i], variant) for item, i in rows_kept if i is not None]
    mean = lambda name: float(np.mean([c[name] for c in kept])) if kept and name in kept[0] else float("nan")  # noqa: E731
    parts = [c["components"] / c["ref_components"] for c in kept if c.get("ref_components")]
    return {"n": len(kept), "chamfer": mean("chamfer"), "fscore_005": mean("fscore_005"),
            "faces": mean("faces"),
            "open_edge_share": mean("open_edge_share"), "watertight": mean("watertight"),
            "parts_ratio_median": float(np.median(parts)) if parts else float("nan")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_options(p)
    p.add_argument("--guided", type=int, default=8)
    p.add_argument("--free", type=int, default=4)
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--edges-once", choices=EDGE_RULE_ROWS, default=EDGES_ONCE,
                   help="rows that may not repeat a directed edge (meshgen.sampling.edges_once_for)")
    p.add_argument("--fill", action="store_true",
                   help="also score every candidate with its face budget filled (meshgen.subdivide), both variants")
    p.add_argument("--out", default=None, help="JSON here (and the markdown table beside it, .md)")
    p.add_argument("--grid", default=None, help="PNG: per mesh the reference, the candidate kept by the fit alone "
                                                "and the one kept with --grid-weight (all rows of the batch)")
    p.add_argument("--grid-weight", type=float, default=2.0, help="open-edge weight of the grid's third column")
    p.add_argument("--grid-n", type=int, default=8, help="meshes in the grid (the first of the split)")
    args = p.parse_args(argv)
    if args.guided < 1 or args.free < 0:
        p.error("--guided must be >= 1 and --free >= 0")
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # one-token steps: one thread is fastest (meshgen.pipeline)
    model = load_generator(args.checkpoint)
    items = split_items(args)
    if not items:
        print(f"error: no held-out mesh found for the {args.split} split", file=sys.stderr)
        return 2
    done = []
    pictures = []  # (reference, refined candidates) of the first --grid-n meshes
    for item in items:
        ref = load_mesh(item.path)
        cands, seconds, meshes = candidates(model, ref, guided=args.guided, free=args.free, seed=args.seed,
                                            temperature=args.temperature,
                                            edges_once=args.edges_once, fill=args.fill)
        done.append({"id": item.id, "group": item.group, "seconds": round(seconds, 2), "candidates": cands})
        if args.grid and len(pictures) < args.grid_n:
            pictures.append((ref, meshes))
        print(f"{item.id} ({item.group}): {seconds:.1f} s", file=sys.stderr, flush=True)
    table = {name: score(done, *rule) for name, rule in rules(args.guided, args.free).items()}
    if args.fill and args.free:
        every = list(range(args.guided + args.free))
        for variant in FILL_VARIANTS:
            table[f"guided {args.guided} + free {args.free}, budget filled ({variant})"] = score(done, every, "fit",
                                                                                                  0.0, variant)
            table[f"guided {args.guided} + free {args.free}, open-edge weight {OPEN_EDGE_WEIGHT:g}, budget filled "
                  f"({variant})"] = score(done, every, "fit", OPEN_EDGE_WEIGHT, variant)
    if args.grid:
        from renderers.preview import mesh_table_png

        every = list(range(args.guided + args.free))
        pick = lambda item, meshes, w: None if (i := kept_row(item, every, "fit", w)) is None else meshes[i]  # noqa: E731
        mesh_table_png([[ref, pick(item, meshes, 0.0), pick(item, meshes, args.grid_weight)]
                        for item, (ref, meshes) in zip(done, pictures, strict=False)], args.grid, size=192)
    lines = [f"| rule ({args.split}, n = {len(done)}) | Chamfer | F@0.05 | open edges | parts / ref | watertight | "
             "faces |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {name} | {r['chamfer']:.4f} | {r['fscore_005']:.3f} | {r['open_edge_share']:.2f} | "
              f"{r['parts_ratio_median']:.1f} | {r['watertight']:.2f} | {r['faces']:.0f} |" for name, r in table.items()]
    md = "\n".join(lines) + "\n"
    print(md)
    if args.out:
        out = Path(args.out)
        atomic_write_text(out, json.dumps({"settings": vars(args), "rules": table, "items": done}, indent=1))
        atomic_write_text(out.with_suffix(".md"), md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
