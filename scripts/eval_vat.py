#!/usr/bin/env python
"""Evaluate a VAT shape tokenizer per number of scales kept, against Google Draco at the same byte budgets.

For every held-out mesh (the test split of a procedural dataset and the real split; moved into the unit cube),
the VAT model encodes ``--points`` surface samples with normals once; then for each prefix of ``K`` scales the
ids decode to an occupancy field, marching cubes at ``--resolution`` gives a closed mesh, scored against the
input with :func:`tokenizers3d.metrics.evaluate_mesh`: F-score at 0.02 and 0.05 of the longest side, Chamfer and
normal consistency. ``bytes`` is the packed size of the ids (:meth:`tokenizers3d.vat.VATConfig.bytes_for`; a
``.vat`` file adds a 38-byte header and a 4-byte CRC).

Baseline (``DracoPy``): the input decimated by Open3D's quadric decimation and compressed by Draco (compression
level 10) to at most the same number of bytes: for each quantization setting in ``--draco-bits`` the largest
face count that fits (binary search), and of those the one with the lowest Chamfer to the input (the baseline
is given its best setting per mesh). When not even a 4-face mesh fits, the budget scores 0 (no mesh).

``--offsets N`` also scores every prefix with the occupancy-offset grid ``meshgen compress --offsets N`` would
write after its ids (:mod:`tokenizers3d.vat_offsets`; kept only where it brings the surface closer, so a row's
bytes are the most any mesh used); ``--draco-only`` scores the Draco baseline alone at the model's budgets.

Compression ratios, as the paper reports them: the input's OBJ text size and its Draco size without quantization
(lossless floats) over the VAT bytes of the full sequence.

Writes JSON (``--out``), a Markdown table (``--markdown-out``) and a PNG plot of F@0.05 vs bytes (``--plot``).

Usage::

    python scripts/eval_vat.py --checkpoint runs/vat/best --procedural data/procedural --real data/real --n 24 \\
        --out runs/eval_vat.json --markdown-out runs/eval_vat.md --plot docs/img/vat_fscore_bytes.png
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from pathlib import Path

import numpy as np

METRICS = ("fscore_002", "fscore_005", "chamfer", "normal_consistency")


# ---- the Draco baseline -----------------------------------------------------------------------------
def draco_bytes(vertices: np.ndarray, faces: np.ndarray, bits: int) -> bytes:
    """Draco encoding (compression level 10) of a mesh; ``bits`` 0 keeps the float coordinates (lossless)."""
    import DracoPy

    return DracoPy.encode(np.asarray(vertices, dtype=np.float32), np.asarray(faces, dtype=np.uint32),
                          quantization_bits=int(bits), compression_level=10)


def decimate(vertices: np.ndarray, faces: np.ndarray, n_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Open3D quadric decimation to at most ``n_faces`` faces."""
    import open3d as o3d

    if n_faces >= len(faces):
        return vertices, faces
    om = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(np.asarray(vertices, dtype=np.float64)),
                                   o3d.utility.Vector3iVector(np.asarray(faces, dtype=np.int32)))
    om = om.simplify_quadric_decimation(int(n_faces))
    om.remove_unreferenced_vertices()
    return np.asarray(om.vertices), np.asarray(om.triangles, dtype=np.int64)


def draco_within(vertices: np.ndarray, faces: np.ndarray, budget: int, bits: int):
    """The largest decimation of the mesh whose Draco encoding at ``bits`` fits ``budget`` bytes:
    ``(decoded vertices, faces, size)`` or None when not even 4 faces fit."""
    import DracoPy

    lo, hi, best = 4, len(faces), None
    while lo <= hi:
        mid = (lo + hi) // 2
        v, f = decimate(vertices, faces, mid)
        if len(f) == 0:
            lo = mid + 1
            continue
        data = draco_bytes(v, f, bits)
        if len(data) <= budget:
            best, lo = data, mid + 1
        else:
            hi = mid - 1
    if best is None:
        return None
    mesh = DracoPy.decode(best)
    return np.asarray(mesh.points, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64), len(best)


def draco_baseline(unit, budget: int, bits_options, *, seed: int = 0) -> dict:
    """Scores of the best Draco setting within ``budget`` bytes (see the module docstring)."""
    import trimesh

    from tokenizers3d.metrics import evaluate_mesh

    best = None
    for bits in bits_options:
        got = draco_within(np.asarray(unit.vertices), np.asarray(unit.faces), budget, bits)
        if got is None:
            continue
        v, f, size = got
        m = evaluate_mesh(trimesh.Trimesh(v, f, process=False), unit, n_samples=5000, seed=seed)
        row = {"bytes": size, "faces": len(f), "bits": bits, **{k: float(getattr(m, k)) for k in METRICS}}
        if best is None or row["chamfer"] < best["chamfer"]:
            best = row
    return best or {"bytes": 0, "faces": 0, "bits": None, "fscore_002": 0.0, "fscore_005": 0.0,
                    "chamfer": float("nan"), "normal_consistency": float("nan")}


# ---- VAT ---------------------------------------------------------------------------------------------
def vat_rows(model, unit, *, n_points: int, resolution: int, seed: int = 0, fit=None, level="0.5",
             offsets: int = 0) -> list[dict]:
    """One row per number of scales kept: bytes and scores of the decoded mesh (zeros when it is empty); ``fit``
    (a :class:`~tokenizers3d.vat_fit.FitSettings`) fits the ids to the mesh first, as ``meshgen compress --fit``;
    ``level`` ``"auto"`` picks each prefix's surface level as ``meshgen compress --scales K`` does
    (:func:`tokenizers3d.vat_fit.choose_level`, at the evaluation's resolution; its samples are not the scoring
    ones), a number fixes it. ``offsets`` (cells per side) also scores each prefix with an occupancy-offset grid
    as ``meshgen compress --offsets`` writes it (:func:`tokenizers3d.compress.choose_surface`: fitted on the
    evaluation's grid, kept only when closer), under ``row["offsets"]``."""
    import torch

    from tokenizers3d.compress import AUTO_LEVEL
    from tokenizers3d.sample import sample_surface
    from tokenizers3d.vat_fit import choose_level

    cloud = sample_surface(unit, n_points, seed=seed)
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)[None]  # noqa: E731
    rows = []
    if fit is not None:
        from tokenizers3d.vat_fit import fit_codes

        with torch.no_grad():
            mean = model.encode_gaussian(t(cloud.points), t(cloud.normals))[0]
        codes, _ = fit_codes(model, np.asarray(unit.vertices), np.asarray(unit.faces), mean, fit)
    else:
        codes = model.encode(t(cloud.points), t(cloud.normals))
    vertices, faces = np.asarray(unit.vertices), np.asarray(unit.faces)
    with torch.no_grad():
        for k in range(1, len(codes) + 1):
            grid = model.occupancy_grid(model.decode_ids(codes, scales=k), resolution)
            plain = choose_level(grid, vertices, faces) if level == AUTO_LEVEL else (float(level), None)
            row = {"scales": k, "tokens": int(sum(c.shape[-1] for c in codes[:k])), "bytes": model.config.bytes_for(k),
                   "level": plain[0], **_scores(grid, plain[0], unit, seed)}
            if offsets:
                row["offsets"] = offsets_row(model, grid, unit, level, plain, row, offsets, k, seed)
            rows.append(row)
    return rows


def _scores(grid, level: float, unit, seed: int) -> dict:
    """``valid`` and :data:`METRICS` of the marching-cubes surface of ``grid`` at ``level`` against ``unit`` (zeros
    and NaNs when the surface is empty)."""
    import trimesh

    from tokenizers3d.metrics import evaluate_mesh
    from tokenizers3d.vat import grid_to_mesh

    v, f = grid_to_mesh(grid, level=level)
    if not len(f):
        return {"valid": False, "fscore_002": 0.0, "fscore_005": 0.0, "chamfer": float("nan"),
                "normal_consistency": float("nan")}
    m = evaluate_mesh(trimesh.Trimesh(v, f, process=False), unit, n_samples=5000, seed=seed)
    return {"valid": True, **{name: float(getattr(m, name)) for name in METRICS}}


def offsets_row(model, grid, unit, level, plain, row: dict, cells: int, k: int, seed: int) -> dict:
    """Bytes and scores of prefix ``k`` with the offset grid ``meshgen compress --offsets cells`` would write;
    ``plain`` (``choose_level``'s answer for ``grid``) and ``row`` (its scores) are the prefix's without offsets,
    reused when the offsets are not kept."""
    from tokenizers3d.compress import AUTO_LEVEL, choose_surface
    from tokenizers3d.vat_offsets import apply_offsets
    from tokenizers3d.vatfile import offsets_section_bytes

    chosen, found = choose_surface(grid, np.asarray(unit.vertices), np.asarray(unit.faces),
                                   level if level == AUTO_LEVEL else float(level), cells,
                                   plain=plain if level == AUTO_LEVEL else None)
    if found is None:
        return {"bytes": row["bytes"], "kept": False, "level": chosen,
                **{key: row[key] for key in ("valid", *METRICS)}}
    return {"bytes": model.config.bytes_for(k) + offsets_section_bytes(found), "kept": True, "level": chosen,
            **_scores(apply_offsets(grid, found), chosen, unit, seed)}


def budget_rows(config) -> list[dict]:
    """The VAT rows of an unscored run (``--draco-only``): scale count, tokens and bytes of each prefix."""
    return [{"scales": k, "tokens": int(sum(config.quantizer.scales[:k])), "bytes": config.bytes_for(k)}
            for k in range(1, len(config.quantizer.scales) + 1)]


def evaluate(model, paths: list[Path], *, n_points: int, resolution: int, draco: tuple[int, ...] | None,
             log=print, fit=None, level="0.5", vat: bool = True, offsets: int = 0) -> dict:
    """Per mesh: VAT rows per scale count, Draco rows at the same byte budgets, input sizes. ``vat=False`` scores
    only Draco at the model's budgets (the VAT rows keep bytes and tokens, no scores)."""
    import trimesh

    from tokenizers3d.io import load_mesh
    from tokenizers3d.mesh import Normalization

    items = []
    for path in paths:
        mesh = load_mesh(path)
        norm = Normalization.fit(np.asarray(mesh.vertices))
        unit = trimesh.Trimesh(norm.apply(np.asarray(mesh.vertices)), np.asarray(mesh.faces), process=False)
        obj = mesh.export(file_type="obj")
        item = {"path": str(path), "faces": int(len(unit.faces)),
                "obj_bytes": len(obj.encode() if isinstance(obj, str) else obj),
                "vat": vat_rows(model, unit, n_points=n_points, resolution=resolution, fit=fit, level=level,
                                offsets=offsets)
                if vat else budget_rows(model.config)}
        if draco:
            item["draco_lossless_bytes"] = len(draco_bytes(unit.vertices, unit.faces, 0))
            item["draco"] = [draco_baseline(unit, r["bytes"], draco) for r in item["vat"]]
        rows = item["draco"] if not vat else item["vat"]
        log(f"{path.name}: " + " ".join(f"{r['bytes']}B F5 {r['fscore_005']:.2f}" for r in rows))
        items.append(item)
    return summarize(items)


def _mean(values) -> float:
    """Mean of the finite values (NaN when there is none: e.g. Chamfer where no Draco mesh fits the budget)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else float("nan")


def summarize(items: list[dict]) -> dict:
    """Means per scale count over items (VAT and Draco), and the compression ratios of the full sequence."""
    if not items:
        return {"n": 0, "rows": [], "items": []}
    n_scales = len(items[0]["vat"])
    scored = "fscore_005" in items[0]["vat"][0]
    rows = []
    for k in range(n_scales):
        row = {"scales": k + 1, "bytes": items[0]["vat"][k]["bytes"], "tokens": items[0]["vat"][k]["tokens"]}
        for name in METRICS:
            if scored:
                row[f"vat_{name}"] = _mean([it["vat"][k][name] for it in items])
            if "draco" in items[0]:
                row[f"draco_{name}"] = _mean([it["draco"][k][name] for it in items])
        if scored:
            row["vat_valid"] = float(np.mean([it["vat"][k]["valid"] for it in items]))
        if "offsets" in items[0]["vat"][0]:
            got = [it["vat"][k]["offsets"] for it in items]
            row.update({f"off_{name}": _mean([g[name] for g in got]) for name in METRICS})
            row.update(off_bytes=max(g["bytes"] for g in got), off_kept=float(np.mean([g["kept"] for g in got])))
        if "draco" in items[0]:
            row["draco_fits"] = float(np.mean([it["draco"][k]["faces"] > 0 for it in items]))
            row["draco_faces"] = float(np.mean([it["draco"][k]["faces"] for it in items]))
        rows.append(row)
    full = rows[-1]["bytes"]
    ratios = {"obj": float(np.mean([it["obj_bytes"] for it in items]) / full)}
    if "draco_lossless_bytes" in items[0]:
        ratios["draco_lossless"] = float(np.mean([it["draco_lossless_bytes"] for it in items]) / full)
    return {"n": len(items), "rows": rows, "compression_ratio": ratios, "items": items}


# ---- reporting ---------------------------------------------------------------------------------------
def markdown(name: str, res: dict) -> str:
    has_draco = res["rows"] and "draco_fscore_005" in res["rows"][0]
    has_vat = res["rows"] and "vat_fscore_005" in res["rows"][0]
    head, sep = "| scales | tokens | bytes |", "|---|---|---|"
    if has_vat:
        head += " VAT F@0.02 | VAT F@0.05 | VAT Chamfer | VAT NC |"
        sep += "---|---|---|---|"
    has_off = res["rows"] and "off_fscore_005" in res["rows"][0]
    if has_off:
        head += " +offsets bytes (most) | +offsets F@0.02 | F@0.05 | Chamfer | offsets kept |"
        sep += "---|---|---|---|---|"
    if has_draco:
        head += " Draco F@0.02 | Draco F@0.05 | Draco Chamfer | Draco faces |"
        sep += "---|---|---|---|"
    lines = [f"**{name}** ({res['n']} meshes)", "", head, sep]
    for r in res["rows"]:
        line = f"| {r['scales']} | {r['tokens']} | {r['bytes']} |"
        if has_vat:
            line += (f" {r['vat_fscore_002']:.3f} | {r['vat_fscore_005']:.3f} | {r['vat_chamfer']:.4f} | "
                     f"{r['vat_normal_consistency']:.3f} |")
        if has_off:
            line += (f" {r['off_bytes']} | {r['off_fscore_002']:.3f} | {r['off_fscore_005']:.3f} | "
                     f"{r['off_chamfer']:.4f} | {r['off_kept'] * 100:.0f} % |")
        if has_draco:
            line += (f" {r['draco_fscore_002']:.3f} | {r['draco_fscore_005']:.3f} | {r['draco_chamfer']:.4f} | "
                     f"{r['draco_faces']:.0f} |")
        lines.append(line)
    ratios = res.get("compression_ratio", {})
    if ratios:
        lines += ["", "Compression ratio of the full sequence: " +
                  ", ".join(f"{k} {v:.0f}x" for k, v in ratios.items())]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path, *, width: int = 900, height: int = 520) -> None:
    """F@0.05 vs bytes (log scale): VAT and Draco per split."""
    from PIL import Image, ImageDraw, ImageFont

    from tokenizers3d.io import atomic_write_bytes

    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=14)
    box = (80, 40, width - 220, height - 60)
    series = []
    colours = {"procedural": ((40, 90, 200), (120, 160, 235)), "real": ((200, 70, 40), (235, 150, 120))}
    for split, res in results.items():
        dark, light = colours.get(split, ((60, 60, 60), (150, 150, 150)))
        xs = [r["bytes"] for r in res["rows"]]
        if res["rows"] and "vat_fscore_005" in res["rows"][0]:
            series.append((f"VAT {split}", dark, xs, [r["vat_fscore_005"] for r in res["rows"]]))
        if res["rows"] and "off_fscore_005" in res["rows"][0]:
            series.append((f"VAT+offsets {split}", tuple(c // 2 for c in dark), [r["off_bytes"] for r in res["rows"]],
                           [r["off_fscore_005"] for r in res["rows"]]))
        if res["rows"] and "draco_fscore_005" in res["rows"][0]:
            series.append((f"Draco {split}", light, xs, [r["draco_fscore_005"] for r in res["rows"]]))
    allx = [x for s in series for x in s[2] if x > 0] or [1, 10]
    lo, hi = math.log10(min(allx)) - 0.1, math.log10(max(allx)) + 0.1
    px = lambda x: box[0] + (math.log10(x) - lo) / (hi - lo) * (box[2] - box[0])  # noqa: E731
    py = lambda y: box[3] - y * (box[3] - box[1])  # noqa: E731
    d.rectangle(box, outline="black")
    for y in np.linspace(0, 1, 6):
        d.line([(box[0], py(y)), (box[2], py(y))], fill=(225, 225, 225))
        d.text((box[0] - 40, py(y) - 7), f"{y:.1f}", fill="black", font=font)
    for e in range(math.ceil(lo), math.floor(hi) + 1):
        for m in (1, 2, 5):
            x = m * 10 ** e
            if lo <= math.log10(x) <= hi:
                d.line([(px(x), box[1]), (px(x), box[3])], fill=(225, 225, 225))
                d.text((px(x) - 12, box[3] + 8), f"{x:g}", fill="black", font=font)
    d.text(((box[0] + box[2]) / 2 - 60, box[3] + 32), "bytes (log scale)", fill="black", font=font)
    d.text((10, 12), "F-score at 0.05 of the longest side", fill="black", font=font)
    for i, (label, colour, xs, ys) in enumerate(series):
        pts = [(px(x), py(y)) for x, y in zip(xs, ys, strict=True) if x > 0]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=3)
        for x, y in pts:
            d.ellipse((x - 4, y - 4, x + 4, y + 4), fill=colour)
        d.line([(box[2] + 20, box[1] + 20 + 24 * i), (box[2] + 50, box[1] + 20 + 24 * i)], fill=colour, width=3)
        d.text((box[2] + 58, box[1] + 12 + 24 * i), label, fill="black", font=font)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, help="VAT model directory (scripts/train_vat.py run's best/)")
    ap.add_argument("--procedural", default="data/procedural", help="procedural dataset (its test split)")
    ap.add_argument("--real", default="data/real", help="real meshes (scripts/fetch_real_meshes.py)")
    ap.add_argument("--n", type=int, default=24, help="meshes per split")
    ap.add_argument("--max-faces", type=int, default=5000)
    ap.add_argument("--points", type=int, default=2048)
    ap.add_argument("--resolution", type=int, default=96, help="marching-cubes cells per side")
    ap.add_argument("--draco-bits", type=int, nargs="*", default=[6, 8, 10, 12],
                    help="Draco quantization settings tried per budget (none: no Draco baseline)")
    ap.add_argument("--fit-steps", type=int, default=0,
                    help="fit the ids to each mesh first (meshgen compress --fit; 0: the encoder's ids)")
    ap.add_argument("--fit-lr", type=float, default=None, help="learning rate of the fit (default: FitSettings')")
    ap.add_argument("--level", default="0.5",
                    help="surface level: 'auto' picks it per mesh and prefix as `meshgen compress` does (its "
                         "default); a number fixes it (default 0.5, the decoder's own)")
    ap.add_argument("--offsets", type=int, default=0,
                    help="also score each prefix with an occupancy-offset grid of this many cells per side, as "
                         "`meshgen compress --offsets` writes it (0: not)")
    ap.add_argument("--draco-only", action="store_true",
                    help="score only the Draco baseline at the model's byte budgets (beside an earlier VAT "
                         "evaluation of the same meshes; minutes instead of most of an hour)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--markdown-out", default=None)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args(argv)
    from tokenizers3d.compress import parse_level
    from tokenizers3d.errors import ConfigError

    try:
        args.level = parse_level(args.level)
    except ConfigError as exc:
        ap.error(str(exc))
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from eval_generator import procedural_items, real_items

    from tokenizers3d.compress import load_vat_model
    from tokenizers3d.errors import MeshgenError
    from tokenizers3d.io import atomic_write_text

    try:
        model, digest = load_vat_model(args.checkpoint)
    except MeshgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.draco_only and not args.draco_bits:
        ap.error("--draco-only needs --draco-bits settings")
    if args.draco_bits:
        try:
            import DracoPy  # noqa: F401
        except ImportError:
            print("error: the Draco baseline needs DracoPy: pip install DracoPy (or --draco-bits with no value)",
                  file=sys.stderr)
            return 2
    splits = {"procedural": [it.path for it in procedural_items(Path(args.procedural), args.n, args.max_faces)],
              "real": [it.path for it in real_items(Path(args.real), args.n, args.max_faces)]}
    fit = None
    if args.fit_steps > 0:
        from tokenizers3d.vat_fit import FitSettings

        fit = FitSettings(steps=args.fit_steps, **({} if args.fit_lr is None else {"lr": args.fit_lr}))
    results = {}
    for name, paths in splits.items():
        if paths:
            results[name] = evaluate(model, paths, n_points=args.points, resolution=args.resolution,
                                     draco=tuple(args.draco_bits) or None, fit=fit, level=args.level,
                                     vat=not args.draco_only, offsets=args.offsets)
    md = "\n".join(markdown(name, res) for name, res in results.items())
    print(md)
    out = {"checkpoint": args.checkpoint, "digest": digest, "settings": vars(args), "splits": results}
    if args.out:
        atomic_write_text(args.out, json.dumps(out, indent=1) + "\n")
    if args.markdown_out:
        atomic_write_text(args.markdown_out, md)
    if args.plot:
        plot(results, Path(args.plot))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
