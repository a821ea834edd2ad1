"""Evaluate a point-cloud-to-mesh generator against Poisson reconstruction + quadric decimation.

For every held-out mesh: sample an oriented point cloud from its surface, generate a mesh from the points
(asking for the reference face count), and reconstruct the non-learned baseline from the same points
(Open3D screened Poisson, then quadric decimation to the same face count). Both are scored against the
reference with :func:`tokenizers3d.metrics.evaluate_mesh` (conventions in that module).

    python scripts/eval_generator.py --checkpoint assets/checkpoints/hourglass-small \\
        --procedural data/procedural --real data/real --n 24 --out runs/eval.json

Prints JSON (and a markdown table with --markdown).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import trimesh

from meshgen.pipeline import generate_mesh, load_generator
from tokenizers3d.errors import MeshInputError
from tokenizers3d.io import PointCloud, atomic_write_text, load_mesh
from tokenizers3d.mesh import Normalization, canonicalize
from tokenizers3d.metrics import evaluate_mesh
from tokenizers3d.sample import sample_surface

METRICS = ("chamfer", "normal_consistency", "fscore_002", "fscore_005", "hausdorff")


def poisson_baseline(cloud: PointCloud, n_faces: int, *, depth: int = 7) -> trimesh.Trimesh | None:
    """Screened Poisson surface reconstruction (Open3D) decimated by quadric error to ``n_faces``."""
    import open3d as o3d

    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(cloud.points.astype(np.float64)))
    pcd.normals = o3d.utility.Vector3dVector(cloud.normals.astype(np.float64))
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        mesh, density = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(pcd, depth=depth)
    density = np.asarray(density)
    mesh.remove_vertices_by_mask(density < np.quantile(density, 0.02))  # trim the low-density skirt
    mesh = mesh.simplify_quadric_decimation(target_number_of_triangles=max(4, int(n_faces)))
    v, f = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    if len(f) == 0:
        return None
    try:
        return canonicalize(trimesh.Trimesh(v, f, process=False))
    except MeshInputError:
        return None


def procedural_items(root: Path, n: int, max_faces: int) -> list[tuple[str, Path]]:
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["split"] == "test" and r["n_faces"] <= max_faces]
    rows.sort(key=lambda r: r["id"])
    return [(r["id"], root / r["path"]) for r in rows[:n]]


def real_items(root: Path, n: int, max_faces: int) -> list[tuple[str, Path]]:
    catalog = root / "catalog.jsonl"
    if not catalog.exists():
        return []
    rows = [json.loads(line) for line in catalog.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("n_faces_clean", r["n_faces"]) <= max_faces]
    rows.sort(key=lambda r: r["id"])
    return [(r["id"], root / r["path"]) for r in rows[:n]]


def evaluate_items(model, items, *, n_points: int, seed: int, temperature: float, log) -> dict:
    per_item = []
    for name, path in items:
        ref = load_mesh(path)
        cloud = sample_surface(ref, n_points, seed=seed)
        t0 = time.time()
        gen = generate_mesh(model, cloud, faces=len(ref.faces), seed=seed, temperature=temperature,
                            max_faces=max(2 * len(ref.faces), 32))
        t_model = time.time() - t0
        t0 = time.time()
        base = poisson_baseline(cloud, len(ref.faces))
        t_base = time.time() - t0
        row = {"id": name, "ref_faces": len(ref.faces), "model_seconds": round(t_model, 2),
               "baseline_seconds": round(t_base, 2)}
        for key, mesh in (("model", gen.mesh), ("baseline", base)):
            row[key] = evaluate_mesh(mesh, ref, seed=seed).to_dict() if mesh is not None else None
        per_item.append(row)
        log(f"{name}: ref {len(ref.faces)} faces | model "
            f"{'invalid' if row['model'] is None else row['model']['n_faces']} faces "
            f"cd={'-' if row['model'] is None else round(row['model']['chamfer'], 4)} | baseline "
            f"cd={'-' if row['baseline'] is None else round(row['baseline']['chamfer'], 4)}")
    return {"summary": summarize(per_item), "items": per_item}


def invalid_rates(model, items, *, n_points: int, seed: int, temperature: float) -> dict:
    """Share of sampled sequences that are not a valid canonical mesh, with and without order constraints."""
    import torch

    from meshgen.generate import measure_invalid_rate
    from meshgen.modeling import Conditioning

    pts, faces = [], []
    for _, path in items:
        ref = load_mesh(path)
        cloud = sample_surface(ref, n_points, seed=seed)
        norm = Normalization.fit(cloud.points)
        pts.append(np.concatenate([norm.apply(cloud.points), cloud.normals], axis=1).astype(np.float32))
        faces.append(len(ref.faces))
    cond = Conditioning(points=torch.from_numpy(np.stack(pts)), n_faces=torch.tensor(faces))
    return measure_invalid_rate(model, cond, max_faces=max(faces) * 2, seed=seed, temperature=temperature)


def summarize(rows: list[dict]) -> dict:
    out = {}
    for key in ("model", "baseline"):
        ok = [r[key] for r in rows if r[key] is not None]
        s = {"n": len(rows), "valid_rate": len(ok) / max(len(rows), 1),
             "watertight_rate": sum(m["watertight"] for m in ok) / max(len(rows), 1)}
        for m in METRICS:
            vals = [x[m] for x in ok if not math.isnan(x[m])]
            s[m] = float(np.mean(vals)) if vals else float("nan")
        ratios = [x["n_faces"] / r["ref_faces"] for r, x in ((r, r[key]) for r in rows) if x is not None]
        s["face_ratio_median"] = float(np.median(ratios)) if ratios else float("nan")
        out[key] = s
    return out


def markdown(results: dict) -> str:
    lines = ["| split | method | n | valid | watertight | Chamfer | normal cons. | F@0.02 | F@0.05 | faces / ref |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for split, res in results["splits"].items():
        for method, s in res["summary"].items():
            lines.append(f"| {split} | {method} | {s['n']} | {s['valid_rate']:.2f} | {s['watertight_rate']:.2f} | "
                         f"{s['chamfer']:.4f} | {s['normal_consistency']:.3f} | {s['fscore_002']:.3f} | "
                         f"{s['fscore_005']:.3f} | {s['face_ratio_median']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="model directory (default: the bundled checkpoint)")
    p.add_argument("--procedural", default="data/procedural", help="procedural dataset (its test split is used)")
    p.add_argument("--real", default="data/real", help="real meshes from scripts/fetch_real_meshes.py")
    p.add_argument("--n", type=int, default=24, help="meshes per split")
    p.add_argument("--max-faces", type=int, default=200)
    p.add_argument("--n-points", type=int, default=2048)
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--invalid-rate", type=int, default=8,
                   help="inputs on which to compare sampling with and without constraints (0: skip)")
    p.add_argument("--out", default=None, help="write the JSON here too")
    p.add_argument("--markdown", action="store_true", help="print a markdown table on stderr")
    args = p.parse_args(argv)
    try:
        model = load_generator(args.checkpoint)
    except MeshInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    results = {"checkpoint": args.checkpoint or "bundled", "seed": args.seed, "temperature": args.temperature,
               "n_points": args.n_points, "n": args.n, "max_faces": args.max_faces, "splits": {}}
    for split, items in (("procedural", procedural_items(Path(args.procedural), args.n, args.max_faces)),
                         ("real", real_items(Path(args.real), args.n, args.max_faces))):
        if items:
            results["splits"][split] = evaluate_items(model, items, n_points=args.n_points, seed=args.seed,
                                                      temperature=args.temperature, log=log)
    if args.invalid_rate and results["splits"].get("procedural"):
        results["invalid_rate"] = invalid_rates(model, procedural_items(Path(args.procedural), args.invalid_rate,
                                                                        args.max_faces),
                                                n_points=args.n_points, seed=args.seed,
                                                temperature=args.temperature)
        log(f"invalid-mesh rate: {results['invalid_rate']}")
    text = json.dumps(results, indent=2)
    if args.out:
        atomic_write_text(args.out, text)
    summary = {s: r["summary"] for s, r in results["splits"].items()}
    summary["invalid_rate"] = results.get("invalid_rate")
    print(json.dumps(summary, indent=2))
    if args.markdown:
        print(markdown(results), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
