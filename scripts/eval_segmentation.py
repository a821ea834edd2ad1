#!/usr/bin/env python
"""Evaluate mesh part segmentation on shapes whose parts are known, beside the render-free baseline.

Sets (:mod:`tokenizers3d.part_sets`): ``separate`` (procedural composites made of separate closed parts:
table, chair, shelf, lamp, mug), ``fused`` (the same, united into one surface by a boolean union),
``remeshed`` (fused, then remeshed by marching cubes: no crease of the parts survives) and ``anny``
(posed Anny bodies, 6 parts from skinning weights; skipped with a message when the optional ``anny``
package is missing). Shapes use test-split seeds (0-999; default 0 and 1), disjoint from the seeds of the
mask-model dataset (``scripts/make_segmentation_dataset.py``: train 10000+, val 1000-1999).

Rows, per set and view count:

* ``views: NAME`` -- :class:`renderers.segment.MeshSegmenter` with mask generator ``NAME``
  (:func:`renderers.masks.get_mask_generator`; default ``geometric``; ``--generator`` repeats, the hook for
  a trained mask model);
* ``mesh: concave-cut`` -- :func:`renderers.segment.segment_by_concave_edges` (cut sharp concave edges,
  take connected components; renders nothing, so one number for every view count).

Metric (:func:`tokenizers3d.metrics.matched_part_iou`): IoU between a true part and a predicted segment is
area-weighted over faces; segments are matched one-to-one to parts with the Hungarian algorithm; a shape
scores the mean matched IoU over its parts (unmatched parts 0); a table cell is the mean over shapes.

"1 view" is a single camera at 30 degrees elevation on the 45 degree diagonal; the others are Fibonacci
spheres of cameras with revoting. ``--no-components`` turns off the split of masks along the mesh's
connected pieces (image cues and revoting only).

Usage::

    python scripts/eval_segmentation.py                              # every set, 1/6/12/24 views, 256 px
    python scripts/eval_segmentation.py --sets fused remeshed --views 6 12 --image-size 128
    python scripts/eval_segmentation.py --sets separate --no-components
    python scripts/eval_segmentation.py --sets fused remeshed anny --families chair --seeds 0 --views 6 \\
        --image-size 128 --grid docs/img/segmentation_grid.png       # + predictions next to the truth
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from tokenizers3d.metrics import face_areas, matched_part_iou
from tokenizers3d.part_sets import ANNY_INSTALL, COMPOSITE_FAMILIES, SET_NAMES, SPLIT_SEEDS, anny_available, make_set

FAMILIES = COMPOSITE_FAMILIES
MESH_ROW = "mesh: concave-cut"


def matched_iou(pred: np.ndarray, true: np.ndarray, areas: np.ndarray) -> tuple[float, list[float]]:
    """Mean area-weighted IoU over true parts after Hungarian matching; also the per-part IoUs."""
    return matched_part_iou(pred, true, areas)


def load_sets(set_names, families, seeds, *, resolution: int = 96, max_faces: int | None = 10_000) -> dict:
    """``{set name: [LabelledMesh, ...]}``; ``anny`` is left out (with a message on stderr) when not installed."""
    out = {}
    for name in set_names:
        if name == "anny" and not anny_available():
            print(f"skipping set 'anny': {ANNY_INSTALL}", file=sys.stderr)
            continue
        out[name] = make_set(name, seeds, families, resolution=resolution, max_faces=max_faces)
    return out


def evaluate(shapes, view_counts, image_size: int, device: str = "cpu", *, components: bool = True,
             generators=("geometric",), keep_labels=(), mask_checkpoint: str | Path | None = None) -> dict:
    """Scores of every row on one set's shapes.

    Returns ``{"rows": {row: {views: {"miou", "seconds"}}}, "objects": {name: {row: {views: {...}}}},
    "labels": {name: {row: labels at the largest view count}}}`` (labels only for names in ``keep_labels``).
    """
    from renderers.masks import get_mask_generator
    from renderers.render import RenderSettings
    from renderers.segment import MeshSegmenter, RevoteSettings, SegmentSettings, segment_by_concave_edges

    results: dict = {"rows": {}, "objects": {}, "labels": {}}
    areas = {s.name: face_areas(s.mesh) for s in shapes}

    def record(row, n, shape, res, seconds):
        miou, per_part = matched_iou(res.labels, shape.face_labels, areas[shape.name])
        results["objects"].setdefault(shape.name, {}).setdefault(row, {})[str(n)] = {
            "miou": round(miou, 4), "n_parts": shape.n_parts, "n_segments": res.n_segments,
            "part_iou": [round(x, 3) for x in per_part]}
        if shape.name in keep_labels and n == max(view_counts):
            results["labels"].setdefault(shape.name, {})[row] = res.labels
        return miou

    for gen_name in generators:
        row = f"views: {gen_name}"
        for n in view_counts:
            elevations = (30.0,) if n == 1 else None
            settings = SegmentSettings(render=RenderSettings(n_views=n, image_size=image_size, elevations=elevations),
                                       revote=RevoteSettings(split_components=components))
            kwargs = {"checkpoint": mask_checkpoint} if gen_name == "learned" and mask_checkpoint else {}
            segmenter = MeshSegmenter(get_mask_generator(gen_name, **kwargs), settings=settings, device=device)
            scores, seconds = [], 0.0
            for shape in shapes:
                t0 = time.perf_counter()
                res = segmenter.segment(shape.mesh)
                dt = time.perf_counter() - t0
                seconds += dt
                scores.append(record(row, n, shape, res, dt))
            results["rows"].setdefault(row, {})[str(n)] = {"miou": round(float(np.mean(scores)), 4),
                                                           "seconds": round(seconds, 2)}
    scores, seconds = [], 0.0
    for shape in shapes:
        t0 = time.perf_counter()
        res = segment_by_concave_edges(shape.mesh)
        dt = time.perf_counter() - t0
        seconds += dt
        for n in view_counts:
            miou = record(MESH_ROW, n, shape, res, dt)
        scores.append(miou)
    for n in view_counts:
        results["rows"].setdefault(MESH_ROW, {})[str(n)] = {"miou": round(float(np.mean(scores)), 4),
                                                            "seconds": round(seconds, 2)}
    return results


def markdown(set_name: str, results: dict, view_counts, n_shapes: int) -> str:
    """One table: a row per method, a column per view count."""
    columns = " | ".join(f"{n} view{'s' if n > 1 else ''}" for n in view_counts)
    head = f"**{set_name}** ({n_shapes} shapes) | {columns} |"
    lines = ["| " + head, "|---|" + "---|" * len(view_counts)]
    for row, per_view in results["rows"].items():
        cells = [f"{per_view[str(n)]['miou']:.3f}" for n in view_counts]
        lines.append(f"| {row}{' (renders nothing)' if row == MESH_ROW else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_grid(path: Path, sets: dict, all_results: dict, view_counts, *, image_size: int = 128,
               n_views: int = 2) -> None:
    """PNG: the first shape of every set, truth beside every row's labels at the largest view count."""
    from renderers.preview import segmentation_grid, write_png
    from tokenizers3d.io import atomic_path

    rows = []
    for set_name, shapes in sets.items():
        shape = shapes[0]
        labels = all_results[set_name]["labels"][shape.name]
        preds = {(f"{row.removeprefix('views: ')}, {max(view_counts)} views" if row != MESH_ROW else "concave-cut"): lab
                 for row, lab in labels.items()}
        rows.append((shape.name, shape.mesh, shape.face_labels, preds))
    image = segmentation_grid(rows, n_views=n_views, image_size=image_size)
    with atomic_path(path, suffix=".png") as tmp:
        write_png(tmp, image)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", nargs="+", default=list(SET_NAMES), choices=SET_NAMES)
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="test-split seeds (0-999)")
    ap.add_argument("--views", nargs="+", type=int, default=[1, 6, 12, 24])
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--generator", action="append", default=None,
                    help="mask generator by name (renderers.masks.get_mask_generator); repeat for several rows "
                         "(default: geometric)")
    ap.add_argument("--mask-checkpoint", type=Path, default=None,
                    help="weights of the 'learned' generator (default: the shipped assets/checkpoints/part-masks)")
    ap.add_argument("--resolution", type=int, default=96, help="remeshed set: marching-cubes cells per longest side")
    ap.add_argument("--max-faces", type=int, default=10_000,
                    help="remeshed set: decimate to at most this many faces (0: keep every marching-cubes face)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-components", action="store_true",
                    help="do not split masks along connected pieces of the mesh (image cues only)")
    ap.add_argument("--json-out", type=Path, default=None, help="also write the JSON here (atomically)")
    ap.add_argument("--markdown-out", type=Path, default=None, help="also write the markdown tables here")
    ap.add_argument("--grid", type=Path, default=None,
                    help="also write a PNG of the first shape of every set: truth beside each row's labels")
    args = ap.parse_args(argv)
    bad = [s for s in args.seeds if not SPLIT_SEEDS["test"][0] <= s < SPLIT_SEEDS["test"][1]]
    if bad:
        ap.error(f"evaluation seeds must be test-split seeds (0-999), got {bad}")
    import torch

    torch.manual_seed(0)
    generators = args.generator or ["geometric"]
    sets = load_sets(args.sets, args.families, args.seeds, resolution=args.resolution,
                     max_faces=args.max_faces or None)
    out: dict = {"settings": {"sets": list(sets), "families": args.families, "seeds": args.seeds,
                              "views": args.views, "image_size": args.image_size, "generators": generators,
                              "mask_checkpoint": str(args.mask_checkpoint) if args.mask_checkpoint else None,
                              "split_components": not args.no_components, "resolution": args.resolution,
                              "max_faces": args.max_faces,
                              "metric": "mean over true parts of area-weighted IoU after Hungarian matching",
                              "command": "python scripts/eval_segmentation.py " + " ".join(
                                  sys.argv[1:] if argv is None else argv)},
                 "sets": {}}
    keep = {shapes[0].name for shapes in sets.values()} if args.grid else set()
    for name, shapes in sets.items():
        res = evaluate(shapes, args.views, args.image_size, args.device, components=not args.no_components,
                       generators=generators, keep_labels=keep, mask_checkpoint=args.mask_checkpoint)
        out["sets"][name] = res
    labels = {name: r.pop("labels") for name, r in out["sets"].items()}
    print(json.dumps(out, indent=1))
    print()
    tables = "\n\n".join(markdown(name, res, args.views, len(sets[name])) for name, res in out["sets"].items())
    print("cells: mean matched IoU over shapes")
    print()
    print(tables)
    from tokenizers3d.io import atomic_write_text

    if args.json_out:
        atomic_write_text(args.json_out, json.dumps(out, indent=1) + "\n")
    if args.markdown_out:
        atomic_write_text(args.markdown_out, tables + "\n")
    if args.grid:
        for name in labels:
            out["sets"][name]["labels"] = labels[name]
        write_grid(args.grid, sets, out["sets"], args.views)
        print(f"\nwrote {args.grid}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
