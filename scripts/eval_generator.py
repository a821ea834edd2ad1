"""Evaluate a point-cloud-to-mesh generator beside non-learned baselines at the same face budget.

For every held-out mesh: sample an oriented point cloud from its surface, generate a mesh from the points
(asking for the reference face count), and build from the same points

* ``baseline``: Open3D screened Poisson reconstruction, quadric-decimated to the reference face count;
* ``bbox``: the 12-triangle axis-aligned bounding box of the points;
* ``hull``: the convex hull of the points, quadric-decimated to at most the reference face count.

(The three are in :mod:`meshgen.baselines`, which the web app's Generate tab also uses.) Beside them, ``floor``
scores the reference against itself on independent surface samples: the value a perfect output would get, below
which no method can go (Chamfer of two samplings is not 0), so differences smaller than its spread are ties.

All are scored against the reference with :func:`tokenizers3d.metrics.evaluate_mesh` (conventions in that
module). Per split the JSON holds

* ``summary``: per method, the metric means (the table of :func:`markdown`), with two that surface distances
  cannot see: the mean share of open edges (edges one face uses; 0 for a closed mesh) and the median ratio of
  pieces to the reference's (a triangle soup has about one piece per face);
* ``families``: per group (procedural ``family``; real source ``package``), per method mean Chamfer and
  F@0.05, and whether the model beats the bounding box and the hull there (lower mean Chamfer *and* higher
  mean F@0.05 than each);
* ``tracking``: does the output follow the input? Per axis Pearson correlation, over the split's items,
  between the model output's bounding-box extents and the input points' extents (both in the input's
  normalized frame, :class:`tokenizers3d.mesh.Normalization` of the points); the number of distinct output
  meshes (beside the number of distinct references); the share of items where the model's Chamfer is below the bounding box's (and the hull's);
* ``items``: one row per mesh.

    python scripts/eval_generator.py --checkpoint assets/checkpoints/hourglass-small \\
        --procedural data/procedural --real data/real --n 24 --out runs/eval.json --markdown

``--skip-baselines`` leaves out Poisson, the hull and the floor (quick ablations); the bounding box is always scored.
``--cfg-scale``, ``--guidance/--no-guidance``, ``--min-coverage``, ``--guide-tol``, ``--samples``, ``--free-samples``,
``--open-edge-weight``, ``--edges-once`` and ``--refine/--no-refine`` are passed to
:func:`meshgen.pipeline.generate_mesh` only when given (otherwise its defaults apply; the JSON's
``generation`` records the settings used). Prints the JSON summary (and markdown tables with
--markdown).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

from meshgen.baselines import bbox_baseline, hull_baseline, poisson_baseline
from meshgen.guidance import GuidanceConfig
from meshgen.pipeline import (
    DEFAULT_CHECKPOINT,
    DEFAULT_SAMPLES,
    generate_mesh,
    has_null_context,
    load_generator,
    resolve_cfg_scale,
    resolve_free_samples,
)
from meshgen.refine import RefineConfig
from meshgen.sampling import EDGE_RULE_ROWS, check_edges_once
from tokenizers3d.checkpoint import model_digest
from tokenizers3d.errors import MeshInputError
from tokenizers3d.io import atomic_write_text, load_mesh, save_mesh
from tokenizers3d.mesh import Normalization
from tokenizers3d.metrics import evaluate_mesh
from tokenizers3d.sample import sample_surface

METRICS = ("chamfer", "normal_consistency", "fscore_002", "fscore_005", "hausdorff")
METHODS = ("model", "baseline", "bbox", "hull", "floor")  # JSON keys; "baseline" (Poisson) keeps its old name
LABELS = {"model": "model", "baseline": "Poisson + decimation", "bbox": "bounding box", "hull": "convex hull",
          "floor": "the reference itself (metric floor)"}
SHORT = {"model": "model", "baseline": "Poisson", "bbox": "bbox", "hull": "hull", "floor": "floor"}  # column headers
AXES = ("x", "y", "z")


@dataclass(frozen=True)
class Item:
    """One held-out mesh: its id, file and group (procedural family or real source package)."""

    id: str
    path: Path
    group: str


# ---- tracking statistics --------------------------------------------------------------------------
def unit_extents(points: np.ndarray, norm: Normalization) -> list[float]:
    """Bounding-box side lengths (3,) of ``points`` (n, 3) mapped by ``norm``."""
    p = norm.apply(points)
    return [float(x) for x in p.max(axis=0) - p.min(axis=0)]


def mesh_key(mesh: trimesh.Trimesh, norm: Normalization, *, decimals: int = 4) -> str:
    """Hash of a mesh's triangles in ``norm``'s frame, independent of vertex order, face order and winding."""
    tri = np.round(norm.apply(mesh.vertices)[np.asarray(mesh.faces)], decimals) + 0.0  # (F, 3, 3); -0.0 -> 0.0
    faces = sorted(tuple(sorted(map(tuple, t))) for t in tri.tolist())
    return hashlib.sha1(repr(faces).encode()).hexdigest()[:16]


def pearson(a, b) -> float:
    """Pearson correlation of two equal-length sequences; NaN for fewer than 2 values or a constant one."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or a.std() < 1e-12 or b.std() < 1e-12:  # constant up to rounding
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _nanmean(vals) -> float:
    vals = [v for v in vals if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def _methods(rows: list[dict]) -> list[str]:
    return [m for m in METHODS if any(m in r for r in rows)]


def _beats(rows: list[dict], a: str, b: str) -> float:
    """Share of rows where method ``a`` has a valid mesh and a lower Chamfer than ``b`` (or ``b`` has none)."""
    wins = [r[a] is not None and (r[b] is None or r[a]["chamfer"] < r[b]["chamfer"]) for r in rows]
    return sum(wins) / max(len(wins), 1)


def tracking_stats(rows: list[dict]) -> dict:
    """Does the model output follow its input? (see module doc; extents in the input's normalized frame)."""
    ok = [r for r in rows if r["model"] is not None]
    inp = np.array([r["extents"]["input"] for r in ok]).reshape(-1, 3)  # (n_valid, 3)
    out = np.array([r["extents"]["model"] for r in ok]).reshape(-1, 3)  # (n_valid, 3)
    res = {"n": len(rows), "n_valid": len(ok),
           "distinct_outputs": len({r["model_key"] for r in ok}),
           "distinct_references": len({r["ref_key"] for r in rows}),
           "extents_pearson": {ax: pearson(inp[:, i], out[:, i]) for i, ax in enumerate(AXES)},
           "extents_mean_abs_error": {ax: float(np.abs(out[:, i] - inp[:, i]).mean()) if len(ok) else float("nan")
                                      for i, ax in enumerate(AXES)},
           "model_extents_std": {ax: float(out[:, i].std()) if len(ok) else float("nan")
                                 for i, ax in enumerate(AXES)},
           "beats_bbox_chamfer": _beats(rows, "model", "bbox")}
    if "hull" in _methods(rows):
        res["beats_hull_chamfer"] = _beats(rows, "model", "hull")
    guided = [r["guidance"] for r in rows if r.get("guidance")]
    if guided:
        res["guidance_coverage_mean"] = float(np.mean([g["coverage"] for g in guided]))
        res["guidance_fallbacks_mean"] = float(np.mean([g["fallbacks"] for g in guided]))
    return res


# ---- aggregation ----------------------------------------------------------------------------------
def summarize(rows: list[dict]) -> dict:
    """Per method: valid and watertight rates, metric means over valid meshes, median face ratio."""
    out = {}
    for key in _methods(rows):
        ok = [r[key] for r in rows if r[key] is not None]
        s = {"n": len(rows), "valid_rate": len(ok) / max(len(rows), 1),
             "watertight_rate": sum(m["watertight"] for m in ok) / max(len(rows), 1)}
        for m in METRICS:
            s[m] = _nanmean(x[m] for x in ok)
        ratios = [r[key]["n_faces"] / r["ref_faces"] for r in rows if r[key] is not None]
        s["face_ratio_median"] = float(np.median(ratios)) if ratios else float("nan")
        # is it a mesh or loose triangles? (absent from evaluations made before 2026-11-30's tenth session)
        s["open_edge_share"] = _nanmean(x.get("open_edge_share", float("nan")) for x in ok)
        parts = [m["components"] / m["ref_components"] for m in ok if m.get("ref_components")]
        s["parts_ratio_median"] = float(np.median(parts)) if parts else float("nan")
        out[key] = s
    return out


def family_table(rows: list[dict]) -> dict:
    """Per group (sorted): n, per method mean Chamfer / F@0.05 over valid meshes, and the model's verdict.

    ``model_beats_baselines`` is True when the model's mean Chamfer is lower *and* its mean F@0.05 higher
    than those of each of ``bbox`` and ``hull`` present (a baseline with no valid mesh counts as beaten);
    False when the model has no valid mesh in the group.
    """
    out = {}
    for group in sorted({r["group"] for r in rows}):
        sub = [r for r in rows if r["group"] == group]
        methods = {}
        for key in _methods(sub):
            ok = [r[key] for r in sub if r[key] is not None]
            methods[key] = {"n_valid": len(ok), "chamfer": _nanmean(x["chamfer"] for x in ok),
                            "fscore_005": _nanmean(x["fscore_005"] for x in ok)}
        m = methods["model"]
        verdict = m["n_valid"] > 0
        for b in ("bbox", "hull"):
            if b in methods and methods[b]["n_valid"]:
                verdict = verdict and (m["chamfer"] < methods[b]["chamfer"]
                                       and m["fscore_005"] > methods[b]["fscore_005"])
        out[group] = {"n": len(sub), "methods": methods, "model_beats_baselines": bool(verdict),
                      "compared_with": [b for b in ("bbox", "hull") if b in methods]}
    return out


# ---- items ----------------------------------------------------------------------------------------
def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _select(rows: list[dict], n: int, families: list[str] | None, per_family: int | None) -> list[dict]:
    """The first ``n`` rows by id, keeping ``families`` only and at most ``per_family`` per group."""
    rows = sorted(rows, key=lambda r: r["id"])
    if families:
        rows = [r for r in rows if r["group"] in set(families)]
    out, count = [], {}
    for r in rows:
        if len(out) >= n:
            break
        if per_family is not None and count.get(r["group"], 0) >= per_family:
            continue
        count[r["group"]] = count.get(r["group"], 0) + 1
        out.append(r)
    return out


def procedural_items(root: Path, n: int, max_faces: int, *, families: list[str] | None = None,
                     per_family: int | None = None) -> list[Item]:
    """Test-split meshes of ``root/metadata.jsonl`` with at most ``max_faces`` faces, grouped by ``family``."""
    meta = root / "metadata.jsonl"
    if not meta.exists():
        return []
    rows = [dict(r, group=r.get("family", "procedural")) for r in _read_jsonl(meta)
            if r["split"] == "test" and r["n_faces"] <= max_faces]
    return [Item(r["id"], root / r["path"], r["group"]) for r in _select(rows, n, families, per_family)]


def real_items(root: Path, n: int, max_faces: int, *, families: list[str] | None = None,
               per_family: int | None = None) -> list[Item]:
    """Meshes of ``root/catalog.jsonl`` with at most ``max_faces`` clean faces, grouped by source ``package``."""
    catalog = root / "catalog.jsonl"
    if not catalog.exists():
        return []
    rows = [dict(r, group=r.get("package", "real")) for r in _read_jsonl(catalog)
            if r.get("n_faces_clean", r["n_faces"]) <= max_faces]
    return [Item(r["id"], root / r["path"], r["group"]) for r in _select(rows, n, families, per_family)]


def add_split_options(p: argparse.ArgumentParser) -> None:
    """The options of the ablation scripts that pick one held-out split as this script does."""
    p.add_argument("--checkpoint", default=None, help="model directory (default: the bundled checkpoint)")
    p.add_argument("--split", choices=("procedural", "real"), default="procedural")
    p.add_argument("--procedural", default="data/procedural")
    p.add_argument("--real", default="data/real")
    p.add_argument("--n", type=int, default=24)
    p.add_argument("--max-faces", type=int, default=200)


def split_items(args: argparse.Namespace) -> list[Item]:
    """The held-out items :func:`add_split_options`' options name."""
    if args.split == "procedural":
        return procedural_items(Path(args.procedural), args.n, args.max_faces)
    return real_items(Path(args.real), args.n, args.max_faces)


# ---- evaluation -----------------------------------------------------------------------------------
def _cd(metrics: dict | None) -> str:
    return "-" if metrics is None else f"{metrics['chamfer']:.4f}"


def evaluate_items(model, items: list[Item], *, n_points: int, seed: int, temperature: float, log,
                   baselines: bool = True, gen_kwargs: dict | None = None, save_dir: Path | None = None) -> dict:
    """Score the model and the baselines on ``items``; returns ``summary``, ``families``, ``tracking``, ``items``.
    With ``save_dir`` each item's model output is written there as ``<index>.obj`` (its row records the file)."""
    per_item = []
    for item in items:
        ref = load_mesh(item.path)
        n_ref = len(ref.faces)
        cloud = sample_surface(ref, n_points, seed=seed)
        norm = Normalization.fit(cloud.points)  # the frame generate_mesh works in
        t0 = time.time()
        gen = generate_mesh(model, cloud, faces=n_ref, seed=seed, temperature=temperature,
                            max_faces=max(2 * n_ref, 32), **(gen_kwargs or {}))
        row = {"id": item.id, "group": item.group, "ref_faces": n_ref, "model_seconds": round(time.time() - t0, 2),
               "stopped": gen.stopped_reason}
        if gen.guidance is not None:  # meshgen.guidance.GuidanceStats
            row["guidance"] = {"coverage": float(gen.guidance.coverage), "fallbacks": int(gen.guidance.fallbacks)}
        meshes = {"model": gen.mesh}
        if baselines:
            t0 = time.time()
            meshes["baseline"] = poisson_baseline(cloud, n_ref)  # computed once per item, scored once
            row["baseline_seconds"] = round(time.time() - t0, 2)
        meshes["bbox"] = bbox_baseline(cloud.points)
        if baselines:
            t0 = time.time()
            meshes["hull"] = hull_baseline(cloud.points, n_ref)
            row["hull_seconds"] = round(time.time() - t0, 2)
            meshes["floor"] = ref  # scored on independent samples: what a perfect output would get
        for key, mesh in meshes.items():
            row[key] = evaluate_mesh(mesh, ref, seed=seed).to_dict() if mesh is not None else None
        row["extents"] = {"input": unit_extents(cloud.points, norm),
                          "model": None if gen.mesh is None else unit_extents(gen.mesh.vertices, norm)}
        row["model_key"] = None if gen.mesh is None else mesh_key(gen.mesh, norm)
        if save_dir is not None and gen.mesh is not None:
            out = Path(save_dir) / f"{len(per_item):03d}.obj"
            out.parent.mkdir(parents=True, exist_ok=True)
            save_mesh(out, gen.mesh)
            row["saved"] = str(out)
        row["ref_key"] = mesh_key(ref, Normalization.fit(ref.vertices))  # a catalog can hold one shape twice
        per_item.append(row)
        log(f"{item.id} ({item.group}): ref {n_ref} faces | model "
            f"{'invalid' if row['model'] is None else row['model']['n_faces']} faces cd={_cd(row['model'])} | "
            + " | ".join(f"{k} cd={_cd(row[k])}" for k in meshes if k != "model"))
    return {"summary": summarize(per_item), "families": family_table(per_item), "tracking": tracking_stats(per_item),
            "items": per_item}


def add_floor(results: dict, procedural: Path, real: Path) -> dict:
    """An evaluation written before the ``floor`` row existed, with it added: every item's reference scored against
    itself on independent samples (the same seed as the evaluation), and the tables recomputed."""
    lookup = {}
    for split, items in (("procedural", procedural_items(procedural, 10**9, 10**9)),
                         ("real", real_items(real, 10**9, 10**9))):
        lookup.update({(split, it.id): it.path for it in items})
    for split, res in results["splits"].items():
        for row in res["items"]:
            path = lookup.get((split, row["id"]))
            if path is None:
                raise FileNotFoundError(f"{row['id']}: not found under {procedural if split == 'procedural' else real}")
            ref = load_mesh(path)
            row["floor"] = evaluate_mesh(ref, ref, seed=results["seed"]).to_dict()
        res.update(summary=summarize(res["items"]), families=family_table(res["items"]),
                   tracking=tracking_stats(res["items"]))
    if "floor" not in results["methods"]:
        results["methods"] = [*results["methods"], "floor"]
    return results


def invalid_rates(model, items: list[Item], *, n_points: int, seed: int, temperature: float) -> dict:
    """Share of sampled sequences that are not a valid canonical mesh, with and without order constraints."""
    import torch

    from meshgen.generate import measure_invalid_rate
    from meshgen.modeling import Conditioning

    pts, faces = [], []
    for item in items:
        ref = load_mesh(item.path)
        cloud = sample_surface(ref, n_points, seed=seed)
        norm = Normalization.fit(cloud.points)
        pts.append(np.concatenate([norm.apply(cloud.points), cloud.normals], axis=1).astype(np.float32))
        faces.append(len(ref.faces))
    cond = Conditioning(points=torch.from_numpy(np.stack(pts)), n_faces=torch.tensor(faces))
    return measure_invalid_rate(model, cond, max_faces=max(faces) * 2, seed=seed, temperature=temperature)


def generation_kwargs(*, cfg_scale: float | None = None, guidance: bool | None = None,
                      min_coverage: float | None = None, guide_tol: float | None = None,
                      samples: int | None = None, free_samples: int | None = None,
                      refine: bool | None = None, open_edge_weight: float | None = None,
                      edges_once: str | None = None, fill: bool | None = None) -> dict:
    """Keyword arguments for :func:`generate_mesh` from the options that were given (none given: ``{}``).

    ``guidance=False`` gives ``guidance=None`` (unguided decoding); ``guidance=True``, ``min_coverage`` or
    ``guide_tol`` give a :class:`meshgen.guidance.GuidanceConfig` with those settings. ``refine=False`` gives
    ``refine=None`` (decoded vertices kept as sampled), ``refine=True`` the default :class:`meshgen.refine.RefineConfig`.

    Raises
    ------
    ValueError
        For contradictory or out-of-range settings, or an option this ``generate_mesh`` does not accept.
    """
    kw: dict = {}
    if cfg_scale is not None:
        kw["cfg_scale"] = cfg_scale
    if samples is not None or free_samples is not None:
        # checked before any model is loaded, against the samples generate_mesh will draw
        resolve_free_samples(samples if samples is not None else DEFAULT_SAMPLES, free_samples)
    if samples is not None:
        kw["samples"] = samples
    if free_samples is not None:
        kw["free_samples"] = free_samples
    if refine is not None:
        kw["refine"] = RefineConfig() if refine else None
    if open_edge_weight is not None:
        if open_edge_weight < 0:
            raise ValueError(f"--open-edge-weight must be >= 0, got {open_edge_weight}")
        kw["open_edge_weight"] = float(open_edge_weight)
    if edges_once is not None:
        kw["edges_once"] = check_edges_once(edges_once, "--edges-once")
    if fill is not None:
        kw["fill_budget"] = bool(fill)
    settings = {k: v for k, v in (("tol", guide_tol), ("min_coverage", min_coverage)) if v is not None}
    if guidance is False:
        if settings:
            raise ValueError("--min-coverage and --guide-tol need guidance; drop --no-guidance")
        kw["guidance"] = None
    elif guidance or settings:
        kw["guidance"] = GuidanceConfig(**settings)
    accepted = inspect.signature(generate_mesh).parameters
    missing = [k for k in kw if k not in accepted]
    if missing:
        raise ValueError(f"meshgen.pipeline.generate_mesh does not accept {', '.join(missing)} "
                         "(this meshgen predates the option)")
    return kw


def effective_generation(kw: dict) -> dict:
    """The ``guidance`` and ``cfg_scale`` that :func:`generate_mesh` uses with ``kw``: given, else its defaults."""
    params = inspect.signature(generate_mesh).parameters
    names = ("guidance", "cfg_scale", "samples", "free_samples", "refine", "open_edge_weight", "edges_once",
             "fill_budget")
    return {name: _jsonable(kw.get(name, params[name].default)) for name in names if name in params}


def _jsonable(value):
    """Options as JSON: dataclasses as dicts, the rest as is or as text."""
    from dataclasses import asdict, is_dataclass

    if is_dataclass(value):
        return asdict(value)
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)


# ---- markdown -------------------------------------------------------------------------------------
def _f(x: float, digits: int) -> str:
    return "—" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def markdown(results: dict) -> str:
    """The main table: one row per split and method."""
    lines = ["| split | method | n | valid | watertight | Chamfer | normal cons. | F@0.02 | F@0.05 | faces / ref | "
             "open edges | parts / ref |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for split, res in results["splits"].items():
        for method, s in res["summary"].items():
            lines.append(f"| {split} | {LABELS.get(method, method)} | {s['n']} | {s['valid_rate']:.2f} | "
                         f"{s['watertight_rate']:.2f} | {_f(s['chamfer'], 4)} | {_f(s['normal_consistency'], 3)} | "
                         f"{_f(s['fscore_002'], 3)} | {_f(s['fscore_005'], 3)} | {_f(s['face_ratio_median'], 2)} | "
                         f"{_f(s.get('open_edge_share'), 2)} | {_f(s.get('parts_ratio_median'), 1)} |")
    return "\n".join(lines)


def markdown_families(results: dict) -> str:
    """Per split and group: mean Chamfer and F@0.05 of every method, and whether the model beats bbox & hull."""
    methods = [m for m in METHODS if any(m in g["methods"] for r in results["splits"].values()
                                         for g in r.get("families", {}).values())]
    compared = [b for b in ("bbox", "hull") if b in methods]
    head = ["split", "group", "n"] + [f"{k} {SHORT[m]}" for k in ("Chamfer", "F@0.05") for m in methods]
    head.append("model beats " + " & ".join(compared))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for split, res in results["splits"].items():
        for group, g in res.get("families", {}).items():
            cells = [split, group, str(g["n"])]
            for key, digits in (("chamfer", 4), ("fscore_005", 3)):
                cells += [_f(g["methods"][m][key], digits) if m in g["methods"] else "—" for m in methods]
            cells.append("yes" if g["model_beats_baselines"] else "no")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_tracking(results: dict) -> str:
    """Per split: distinct outputs, win shares against bbox / hull, extents correlation and error per axis."""
    lines = ["| split | n | valid | distinct outputs / refs | beats bbox (Chamfer) | beats hull (Chamfer) | "
             "extents r (x / y / z) | extents MAE (x / y / z) |",
             "|---|---|---|---|---|---|---|---|"]
    for split, res in results["splits"].items():
        t = res.get("tracking")
        if t is None:
            continue
        r = " / ".join(_f(t["extents_pearson"][a], 2) for a in AXES)
        e = " / ".join(_f(t["extents_mean_abs_error"][a], 3) for a in AXES)
        lines.append(f"| {split} | {t['n']} | {t['n_valid']} | {t['distinct_outputs']} / {t['distinct_references']} | "
                     f"{t['beats_bbox_chamfer']:.2f} | {_f(t.get('beats_hull_chamfer'), 2)} | {r} | {e} |")
    return "\n".join(lines)


def markdown_report(results: dict) -> str:
    """All three tables with one-line captions, for the README or a model card."""
    return "\n\n".join([
        markdown(results),
        "Per group (procedural family, real source package): mean Chamfer (lower is better) and F@0.05 (higher is "
        "better) over valid meshes; the model beats a baseline in a group when it is better on both.\n\n"
        + markdown_families(results),
        "Does the output follow the input? Distinct output meshes / distinct reference meshes; share of items where the model's Chamfer is "
        "below the baseline's; per axis Pearson r and mean absolute difference between the output's and the "
        "points' bounding-box extents, in the points' unit-cube frame.\n\n" + markdown_tracking(results),
    ])


# ---- CLI ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="model directory (default: the bundled checkpoint)")
    p.add_argument("--procedural", default="data/procedural", help="procedural dataset (its test split is used)")
    p.add_argument("--real", default="data/real", help="real meshes from scripts/fetch_real_meshes.py")
    p.add_argument("--n", type=int, default=24, help="meshes per split (the first by id)")
    p.add_argument("--max-faces", type=int, default=200, help="leave out references with more faces")
    p.add_argument("--families", nargs="+", default=None,
                   help="only these groups (procedural family names, real source package names)")
    p.add_argument("--per-family", type=int, default=None, help="at most this many meshes per group")
    p.add_argument("--n-points", type=int, default=2048)
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-baselines", action="store_true",
                   help="model and bounding box only (no Poisson, no hull): quick ablation evals")
    p.add_argument("--cfg-scale", type=float, default=None, help="passed to generate_mesh as cfg_scale")
    p.add_argument("--guidance", action=argparse.BooleanOptionalAction, default=None,
                   help="passed to generate_mesh as guidance: a GuidanceConfig, or None with --no-guidance "
                        "(not given: generate_mesh's default)")
    p.add_argument("--min-coverage", type=float, default=None, help="GuidanceConfig.min_coverage (implies --guidance)")
    p.add_argument("--guide-tol", type=float, default=None, help="GuidanceConfig.tol (implies --guidance)")
    p.add_argument("--samples", type=int, default=None,
                   help="passed to generate_mesh as samples (best of k by fit to the input points)")
    p.add_argument("--free-samples", type=int, default=None,
                   help="passed to generate_mesh as free_samples (how many of the samples skip the guide)")
    p.add_argument("--refine", action=argparse.BooleanOptionalAction, default=None,
                   help="passed to generate_mesh as refine: the default RefineConfig, or None with --no-refine "
                        "(not given: generate_mesh's default)")
    p.add_argument("--open-edge-weight", type=float, default=None,
                   help="passed to generate_mesh as open_edge_weight (rank by fit x (1 + w x open-edge share))")
    p.add_argument("--edges-once", choices=EDGE_RULE_ROWS, default=None,
                   help="passed to generate_mesh as edges_once (rows that may not repeat a directed edge)")
    p.add_argument("--fill", action=argparse.BooleanOptionalAction, default=None,
                   help="passed to generate_mesh as fill_budget (refine, split up to the face count, refine again)")
    p.add_argument("--invalid-rate", type=int, default=8,
                   help="inputs on which to compare sampling with and without constraints (0: skip)")
    p.add_argument("--out", default=None, help="write the JSON here too")
    p.add_argument("--save-meshes", type=Path, default=None, metavar="DIR",
                   help="write each model output to DIR/<split>/<index>.obj (for later analysis)")
    p.add_argument("--markdown", action="store_true", help="print the markdown tables on stderr")
    p.add_argument("--markdown-out", default=None, help="write the markdown tables to this file")
    p.add_argument("--add-floor", type=Path, default=None, metavar="JSON",
                   help="no generation: add the floor row to this earlier evaluation (written to --out)")
    args = p.parse_args(argv)
    if args.add_floor is not None:
        try:
            results = add_floor(json.loads(args.add_floor.read_text()), Path(args.procedural), Path(args.real))
        except (OSError, ValueError, MeshInputError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if args.out:
            atomic_write_text(args.out, json.dumps(results, indent=2))
        if args.markdown_out:
            atomic_write_text(args.markdown_out, markdown_report(results) + "\n")
        print(markdown_report(results))
        return 0
    try:
        gen_kwargs = generation_kwargs(cfg_scale=args.cfg_scale, guidance=args.guidance,
                                       min_coverage=args.min_coverage, guide_tol=args.guide_tol,
                                       samples=args.samples, free_samples=args.free_samples,
                                       refine=args.refine, open_edge_weight=args.open_edge_weight,
                                       edges_once=args.edges_once, fill=args.fill)
    except ValueError as exc:
        p.error(str(exc))
    try:
        model = load_generator(args.checkpoint)
    except MeshInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if gen_kwargs.get("cfg_scale", 1.0) != 1.0 and not has_null_context(model):
        print("error: --cfg-scale needs a model trained with encoder.null_context (point dropout)", file=sys.stderr)
        return 2
    generation = effective_generation(gen_kwargs)
    if generation.get("cfg_scale", 1.0) is None:  # the pipeline's per-model default, recorded as the number used
        generation["cfg_scale"] = resolve_cfg_scale(model, None)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    select = {"families": args.families, "per_family": args.per_family}
    results = {"checkpoint": args.checkpoint or "bundled",
               "digest": model_digest(args.checkpoint or DEFAULT_CHECKPOINT),  # ship_checkpoint.py checks it
               "seed": args.seed, "temperature": args.temperature,
               "n_points": args.n_points, "n": args.n, "max_faces": args.max_faces,
               "families": args.families, "per_family": args.per_family,
               "methods": ["model", "bbox"] if args.skip_baselines else list(METHODS),
               "generation": generation,
               "generation_given": sorted(gen_kwargs), "splits": {}}
    procedural = procedural_items(Path(args.procedural), args.n, args.max_faces, **select)
    for split, items in (("procedural", procedural),
                         ("real", real_items(Path(args.real), args.n, args.max_faces, **select))):
        if items:
            results["splits"][split] = evaluate_items(model, items, n_points=args.n_points, seed=args.seed,
                                                      temperature=args.temperature, log=log,
                                                      baselines=not args.skip_baselines, gen_kwargs=gen_kwargs,
                                                      save_dir=None if args.save_meshes is None
                                                      else args.save_meshes / split)
    if not results["splits"]:
        print(f"error: no held-out mesh found under {args.procedural} or {args.real} (with these filters)",
              file=sys.stderr)
        return 2
    if args.invalid_rate and procedural:
        results["invalid_rate"] = invalid_rates(model, procedural_items(Path(args.procedural), args.invalid_rate,
                                                                        args.max_faces, **select),
                                                n_points=args.n_points, seed=args.seed,
                                                temperature=args.temperature)
        log(f"invalid-mesh rate: {results['invalid_rate']}")
    if args.out:
        atomic_write_text(args.out, json.dumps(results, indent=2))
    for split, res in results["splits"].items():
        log(f"{split} tracking: {json.dumps(res['tracking'])}")
    summary = {s: r["summary"] for s, r in results["splits"].items()}
    summary["invalid_rate"] = results.get("invalid_rate")
    print(json.dumps(summary, indent=2))
    report = markdown_report(results)
    if args.markdown_out:
        atomic_write_text(args.markdown_out, report + "\n")
    if args.markdown:
        print(report, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
