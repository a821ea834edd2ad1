"""scripts/eval_generator.py (baselines, tracking statistics, grouping, tables) and scripts/plot_training.py."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from meshgen.pipeline import GeneratedMesh
from tokenizers3d.io import save_mesh
from tokenizers3d.mesh import Normalization, canonicalize
from tokenizers3d.metrics import evaluate_mesh
from tokenizers3d.sample import sample_surface

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


E = _load("eval_generator")
P = _load("plot_training")

CORNERS = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-1.0, 1.0) for z in (-1.5, 1.5)])  # a 1 x 2 x 3 box


def _box() -> trimesh.Trimesh:
    return canonicalize(trimesh.creation.box(extents=(1.0, 2.0, 3.0)))


def _sorted_rows(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a[np.lexsort(a.T[::-1])]


# ---- baselines ------------------------------------------------------------------------------------
def test_bbox_baseline_is_the_box_of_the_points():
    box = _box()
    points = np.vstack([CORNERS, sample_surface(box, 500, seed=0).points])
    bb = E.bbox_baseline(points)
    assert len(bb.faces) == 12 and bb.is_watertight
    np.testing.assert_allclose(_sorted_rows(bb.vertices), _sorted_rows(CORNERS))
    assert abs(bb.volume) == pytest.approx(6.0)
    # scored against the box it is the box: Chamfer at the sampling-noise floor of the box against itself
    floor = evaluate_mesh(box, box, n_samples=2000).chamfer
    assert evaluate_mesh(bb, box, n_samples=2000).chamfer == pytest.approx(floor, rel=0.25)
    assert floor < 0.03


def test_bbox_baseline_of_flat_and_collinear_points():
    flat = np.random.default_rng(0).random((50, 3)) * [1.0, 2.0, 0.0]
    rect = E.bbox_baseline(flat)
    assert rect is not None and np.allclose(rect.vertices[:, 2], 0.0) and len(rect.faces) <= 12
    assert E.bbox_baseline(np.outer(np.linspace(0, 1, 20), [1.0, 0.0, 0.0])) is None  # along an axis: no area


def test_hull_of_a_box_is_the_box():
    box = _box()
    points = np.vstack([CORNERS, sample_surface(box, 2000, seed=0).points])  # surface points add no hull vertex
    for budget in (12, 500):
        hull = E.hull_baseline(points, budget)
        assert len(hull.faces) == 12 and hull.is_watertight
        np.testing.assert_allclose(_sorted_rows(hull.vertices), _sorted_rows(CORNERS), atol=1e-9)
        assert abs(hull.volume) == pytest.approx(6.0)


@pytest.mark.parametrize("budget", [2, 4, 9, 30])
def test_hull_is_decimated_to_the_face_budget(budget):
    points = sample_surface(canonicalize(trimesh.creation.icosphere(3)), 1000, seed=0).points
    full = trimesh.convex.convex_hull(points)
    assert len(full.faces) > 30
    hull = E.hull_baseline(points, budget)
    assert 4 <= len(hull.faces) <= max(4, budget)
    # it stays around the unit sphere (quadric decimation may move vertices outwards, to the planes' corners)
    r = np.linalg.norm(hull.vertices, axis=1)
    assert 0.5 < r.min() and r.max() < 2.0


def test_poisson_baseline_is_the_same_mesh_every_run():
    """Open3D's parallel Poisson gave a different mesh per run; the baseline runs it on one thread."""
    cloud = sample_surface(trimesh.creation.cone(radius=0.5, height=1.0, sections=12), 1024, seed=0)
    a, b = E.poisson_baseline(cloud, 40), E.poisson_baseline(cloud, 40)
    assert a is not None and len(a.faces) > 0
    assert np.array_equal(a.vertices, b.vertices) and np.array_equal(a.faces, b.faces)


def test_hull_of_collinear_points_is_none():
    assert E.hull_baseline(np.outer(np.linspace(0, 1, 20), [1.0, 2.0, 3.0]), 12) is None


# ---- tracking statistics --------------------------------------------------------------------------
def test_pearson_matches_numpy_and_handles_constants():
    rng = np.random.default_rng(0)
    a, b = rng.random(20), rng.random(20)
    assert E.pearson(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1])
    assert E.pearson(a, 3 * a + 1) == pytest.approx(1.0)
    assert math.isnan(E.pearson(a, np.full(20, 0.5)))
    assert math.isnan(E.pearson([1.0], [2.0]))


def _row(group, inp, out, key, cd, f5, *, bbox=(0.1, 0.5), hull=(0.05, 0.75)) -> dict:
    def metric(v):
        return None if v is None else {"chamfer": v[0], "fscore_005": v[1]}

    row = {"id": f"{group}-{key}", "group": group, "ref_faces": 12,
           "model": metric(None if cd is None else (cd, f5)), "bbox": metric(bbox),
           "extents": {"input": list(inp), "model": None if cd is None else list(out)},
           "model_key": None if cd is None else key, "ref_key": f"{group}-{key}"}
    if hull is not None:
        row["hull"] = metric(hull)
    return row


def test_tracking_stats_on_synthetic_extents():
    rng = np.random.default_rng(1)
    inp = rng.uniform(0.2, 1.0, size=(6, 3))
    out = inp * [2.0, 1.0, 0.0] + [0.1, 0.0, 0.4]  # x, y follow the input; z is constant
    rows = [_row("a", i, o, k, cd, 0.5) for i, o, k, cd in zip(inp, out, "ppqqrs", (0.01, 0.2, 0.01, 0.2, 0.2, 0.2),
                                                                 strict=True)]
    rows.append(_row("a", [1, 1, 1], None, "-", None, None))  # an invalid output
    t = E.tracking_stats(rows)
    assert t["n"] == 7 and t["n_valid"] == 6 and t["distinct_outputs"] == 4 and t["distinct_references"] == 5
    assert t["extents_pearson"]["x"] == pytest.approx(1.0) and t["extents_pearson"]["y"] == pytest.approx(1.0)
    assert math.isnan(t["extents_pearson"]["z"])
    assert t["extents_mean_abs_error"]["y"] == pytest.approx(0.0)
    assert t["extents_mean_abs_error"]["z"] == pytest.approx(np.abs(0.4 - inp[:, 2]).mean())
    assert t["model_extents_std"]["z"] == pytest.approx(0.0)
    assert t["beats_bbox_chamfer"] == pytest.approx(2 / 7)  # cd 0.01 < 0.1 twice; the invalid one does not count
    assert t["beats_hull_chamfer"] == pytest.approx(2 / 7)


def test_mesh_key_ignores_order_winding_and_frame():
    box = _box()
    norm = Normalization.fit(box.vertices)
    key = E.mesh_key(box, norm)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(box.vertices))
    inv = np.argsort(perm)
    shuffled = trimesh.Trimesh(box.vertices[perm], inv[box.faces][rng.permutation(len(box.faces))][:, ::-1],
                               process=False)
    assert E.mesh_key(shuffled, norm) == key
    moved = trimesh.Trimesh(box.vertices * 7.0 + 3.0, box.faces, process=False)  # another frame, same unit mesh
    assert E.mesh_key(moved, Normalization.fit(moved.vertices)) == key
    bent = box.vertices.copy()
    bent[0] += 0.05
    assert E.mesh_key(trimesh.Trimesh(bent, box.faces, process=False), norm) != key


# ---- grouping and tables --------------------------------------------------------------------------
def _rows_two_groups() -> list[dict]:
    e = [0.5, 0.5, 0.5]
    return [_row("chair", e, e, "a", 0.02, 0.9), _row("chair", e, e, "b", 0.04, 0.7),  # beats bbox and hull
            _row("lamp", e, e, "c", 0.02, 0.4),  # lower Chamfer but lower F@0.05 than the hull: not a win
            _row("mug", e, None, "-", None, None)]  # no valid output


def test_family_table_groups_and_verdicts():
    fam = E.family_table(_rows_two_groups())
    assert list(fam) == ["chair", "lamp", "mug"]
    chair = fam["chair"]
    assert chair["n"] == 2 and chair["methods"]["model"]["chamfer"] == pytest.approx(0.03)
    assert chair["methods"]["model"]["fscore_005"] == pytest.approx(0.8)
    assert chair["methods"]["bbox"]["chamfer"] == pytest.approx(0.1)
    assert chair["model_beats_baselines"] is True
    assert fam["lamp"]["model_beats_baselines"] is False
    assert fam["mug"]["model_beats_baselines"] is False and fam["mug"]["methods"]["model"]["n_valid"] == 0
    no_hull = E.family_table([dict(_row("lamp", [1] * 3, [1] * 3, "c", 0.02, 0.6, hull=None))])
    assert no_hull["lamp"]["compared_with"] == ["bbox"] and no_hull["lamp"]["model_beats_baselines"] is True


def test_markdown_tables():
    rows = [dict(r, ref_faces=12) for r in _rows_two_groups()]
    for r in rows:  # the main table needs every metric; give the valid ones some numbers
        for key in ("model", "bbox", "hull"):
            if r[key] is not None:
                r[key].update(n_faces=12, watertight=True, normal_consistency=0.9, fscore_002=0.5, hausdorff=0.1)
    results = {"splits": {"procedural": {"summary": E.summarize(rows), "families": E.family_table(rows),
                                         "tracking": E.tracking_stats(rows)}}}
    text = E.markdown_report(results)
    assert "| procedural | bounding box | 4 |" in text and "| procedural | convex hull | 4 |" in text
    assert "model beats bbox & hull |" in text
    assert "| procedural | chair | 2 | 0.0300 | 0.1000 | 0.0500 | 0.800 | 0.500 | 0.750 | yes |" in text
    assert "| procedural | mug | 1 | — | 0.1000 | 0.0500 | — |" in text
    assert "| procedural | 4 | 3 | 3 / 4 | 0.75 | 0.75 |" in text  # distinct outputs, beats bbox 3/4, hull 3/4


def _write_dataset(root: Path) -> None:
    shapes = {"box": trimesh.creation.box(extents=(1.0, 0.5, 0.25)), "cone": trimesh.creation.cone(0.5, 1.0, sections=8),
              "cyl": trimesh.creation.cylinder(0.3, 1.0, sections=6)}
    recs = []
    for k, (fam, split) in enumerate([("box", "test"), ("cone", "test"), ("box", "test"), ("cyl", "train"),
                                      ("cyl", "test"), ("box", "test")]):
        rel = f"meshes/{split}/obj_{k:03d}.ply"
        mesh = canonicalize(shapes[fam].copy().apply_scale(1.0 + 0.3 * k))
        save_mesh(root / rel, mesh)
        recs.append({"id": f"obj_{k:03d}", "family": fam, "split": split, "n_faces": len(mesh.faces), "path": rel})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reversed(recs)))


def test_procedural_items_filters(tmp_path):
    _write_dataset(tmp_path)
    ids = [it.id for it in E.procedural_items(tmp_path, 10, 1000)]
    assert ids == ["obj_000", "obj_001", "obj_002", "obj_004", "obj_005"]  # test split, sorted by id
    assert [it.id for it in E.procedural_items(tmp_path, 2, 1000)] == ["obj_000", "obj_001"]
    assert [it.id for it in E.procedural_items(tmp_path, 10, 1000, families=["box"])] == ["obj_000", "obj_002",
                                                                                         "obj_005"]
    items = E.procedural_items(tmp_path, 10, 1000, per_family=1)
    assert [(it.id, it.group) for it in items] == [("obj_000", "box"), ("obj_001", "cone"), ("obj_004", "cyl")]
    assert [it.id for it in E.procedural_items(tmp_path, 10, 12)] == ["obj_000", "obj_002", "obj_005"]  # boxes
    assert E.procedural_items(tmp_path / "missing", 10, 1000) == []


def test_evaluate_items_with_a_stub_generator(tmp_path, monkeypatch):
    """Every input gets the same unit cube back: one distinct output, extents that do not follow the input."""
    _write_dataset(tmp_path)
    items = E.procedural_items(tmp_path, 3, 1000)
    cube = canonicalize(trimesh.creation.box(extents=(1.0, 1.0, 1.0)))
    calls = []

    def fake_generate(model, cloud, *, faces, seed, temperature, max_faces, **kw):
        calls.append(kw)
        norm = Normalization.fit(cloud.points)
        mesh = trimesh.Trimesh(norm.invert(cube.vertices), cube.faces, process=False)
        return GeneratedMesh(mesh, len(mesh.faces), "eos", 0, 0.0)

    monkeypatch.setattr(E, "generate_mesh", fake_generate)
    monkeypatch.setattr(E, "evaluate_mesh", lambda pred, ref, *, seed: evaluate_mesh(pred, ref, seed=seed,
                                                                                     n_samples=1000))
    res = E.evaluate_items(None, items, n_points=256, seed=0, temperature=0.5, log=lambda m: None,
                           baselines=False, gen_kwargs={"cfg_scale": 2.0}, save_dir=tmp_path / "out")
    assert calls == [{"cfg_scale": 2.0}] * 3
    for i, row in enumerate(res["items"]):  # --save-meshes: each output as it was scored
        saved = trimesh.load(row["saved"], process=False)
        assert Path(row["saved"]).name == f"{i:03d}.obj" and len(saved.faces) == 12
    assert list(res["summary"]) == ["model", "bbox"]
    assert res["tracking"]["distinct_outputs"] == 1 and res["tracking"]["distinct_references"] == 2  # two boxes: one shape scaled
    assert res["tracking"]["model_extents_std"]["x"] == pytest.approx(0.0, abs=1e-9)
    assert set(res["families"]) == {"box", "cone"} and res["families"]["box"]["n"] == 2
    assert "hull" not in res["items"][0] and "baseline" not in res["items"][0]
    full = E.evaluate_items(None, items, n_points=256, seed=0, temperature=0.5, log=lambda m: None)
    assert list(full["summary"]) == ["model", "baseline", "bbox", "hull", "floor"]
    for row in full["items"]:  # the reference on independent samples: above 0, not above any method
        others = min(row[k]["chamfer"] for k in ("model", "bbox", "hull"))
        assert 0 < row["floor"]["chamfer"] <= others and row["floor"]["fscore_005"] > 0.9
    old = {"seed": 0, "methods": ["model", "bbox"], "splits": {"procedural": res}}  # written before the floor row
    added = E.add_floor(json.loads(json.dumps(old)), tmp_path, tmp_path / "no-real")
    assert added["methods"][-1] == "floor" and "floor" in added["splits"]["procedural"]["summary"]
    assert [r["floor"] for r in added["splits"]["procedural"]["items"]] == [r["floor"] for r in full["items"]]
    # a box given back exactly (its bounding box) scores the floor: the same mesh on the same samplings
    assert all(r["bbox"]["chamfer"] == r["floor"]["chamfer"] for r in full["items"] if r["group"] == "box")


def test_generation_kwargs_check_free_samples_against_the_samples_drawn():
    """Checked against the samples that will be drawn (the default 8 when not given), before any model is
    loaded -- by the same function as meshgen generate and generate_mesh."""
    assert E.generation_kwargs(free_samples=8) == {"free_samples": 8}
    for bad in (dict(free_samples=9), dict(samples=4, free_samples=5), dict(samples=0), dict(free_samples=-1)):
        with pytest.raises(ValueError, match="samples"):
            E.generation_kwargs(**bad)


def test_generation_kwargs_only_forward_given_options(monkeypatch):
    from meshgen.guidance import GuidanceConfig

    def new_generate(model, cloud, *, faces=None, guidance=GuidanceConfig(), cfg_scale=1.0):
        return None

    monkeypatch.setattr(E, "generate_mesh", new_generate)
    assert E.generation_kwargs() == {}
    assert E.generation_kwargs(cfg_scale=3.0) == {"cfg_scale": 3.0}
    assert E.generation_kwargs(guidance=False) == {"guidance": None}
    assert E.generation_kwargs(min_coverage=0.5, guide_tol=0.03) == {
        "guidance": GuidanceConfig(tol=0.03, min_coverage=0.5)}
    assert E.effective_generation({})["cfg_scale"] == 1.0
    assert E.effective_generation({"guidance": None}) == {"guidance": None, "cfg_scale": 1.0}
    with pytest.raises(ValueError, match="need guidance"):
        E.generation_kwargs(guidance=False, min_coverage=0.5)
    with pytest.raises(ValueError, match="min_coverage"):
        E.generation_kwargs(min_coverage=2.0)

    def old_generate(model, cloud, *, faces=None):
        return None

    monkeypatch.setattr(E, "generate_mesh", old_generate)
    assert E.generation_kwargs() == {} and E.effective_generation({}) == {}  # the default path still works
    with pytest.raises(ValueError, match="cfg_scale"):
        E.generation_kwargs(cfg_scale=3.0)


def test_edges_once_option_is_checked_and_recorded():
    assert E.generation_kwargs(edges_once="all") == {"edges_once": "all"}
    assert E.effective_generation({"edges_once": "off"})["edges_once"] == "off"
    with pytest.raises(ValueError, match="--edges-once must be one of"):
        E.generation_kwargs(edges_once="some")


# ---- plot_training --------------------------------------------------------------------------------
def test_cumulative_hours_across_resumes():
    hours = P.cumulative_hours(np.array([360.0, 720.0, 180.0, 540.0, np.nan]))
    np.testing.assert_allclose(hours[:4], np.array([360, 720, 900, 1260]) / 3600)
    assert math.isnan(hours[4])


def test_nice_ticks():
    assert P.nice_ticks(0.0, 5100.0) == [0, 1000, 2000, 3000, 4000, 5000]
    assert P.nice_ticks(0.3, 1.0)[0] == pytest.approx(0.3)


@pytest.mark.parametrize("extra", [False, True])
def test_plot_training_writes_a_png(tmp_path, extra):
    head = "step,lr,loss,tokens_per_s,val_loss,elapsed_s" + (",val_new_vertex_loss,val_first_vertex_loss" if extra else "")
    lines = [head]
    for k, step in enumerate(range(10, 110, 10)):
        val = "nan" if step < 30 else f"{2.0 - step / 100:.4f}"
        row = f"{step},1e-3,{3.0 - step / 50:.4f},100.0,{val},{(k % 6) * 30.0 + 30:.1f}"
        lines.append(row + (f",{float(val) * 2:.4f},{float(val) * 3:.4f}" if extra else ""))
    log = tmp_path / "run" / "log.csv"
    log.parent.mkdir()
    log.write_text("\n".join(lines) + "\n")
    assert P.main([str(log.parent)]) == 0
    png = log.parent / "training.png"
    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape == (P.HEIGHT, P.WIDTH, 3)
    packed = np.unique(img.reshape(-1, 3).astype(np.int64) @ np.array([1 << 16, 1 << 8, 1]))
    colours = {((int(c) >> 16) & 255, (int(c) >> 8) & 255, int(c) & 255) for c in packed}
    for _, _, colour, _ in P.SERIES[: 4 if extra else 2]:
        assert colour in colours
    assert (P.SERIES[2][2] in colours) == extra
    assert not list(log.parent.glob(".training.png.*"))  # atomic: no temporary file left behind


# ---- ablate_decoding ------------------------------------------------------------------------------
def test_ablate_decoding_scores_every_rule_on_the_same_candidates(tmp_path, tiny_checkpoint, capsys):
    A = _load("ablate_decoding")
    _write_dataset(tmp_path / "data")
    out = tmp_path / "abl.json"
    assert A.main(["--checkpoint", str(tiny_checkpoint), "--procedural", str(tmp_path / "data"), "--n", "2",
                   "--max-faces", "12", "--guided", "2", "--free", "2", "--out", str(out),
                   "--grid", str(tmp_path / "grid.png"), "--grid-n", "1"]) == 0
    assert Image.open(tmp_path / "grid.png").size == (3 * 192, 192)  # reference, kept by fit, kept with open edges
    res = json.loads(out.read_text())
    assert [it["id"] for it in res["items"]] == ["obj_000", "obj_002"]
    assert all(len(it["candidates"]) == 4 for it in res["items"])
    rules = res["rules"]
    assert {"guided 1", "guided 2", "free 2", "guided 2 + free 2", "oracle (by the reference)"} <= set(rules)
    oracle = rules["oracle (by the reference)"]
    for name, r in rules.items():  # the oracle keeps the best candidate by the reference: no rule beats it
        if r["n"] == oracle["n"]:
            assert oracle["chamfer"] <= r["chamfer"] + 1e-12, name
    cands = [c for c in res["items"][0]["candidates"] if c is not None]
    assert all(c["fit"] >= 0 and 0 <= c["fscore_005"] <= 1 for c in cands)
    assert "| guided 2 + free 2 |" in out.with_suffix(".md").read_text()
    assert all(0 <= c["open_edge_share"] <= 1 and c["components"] >= 1 for c in cands)
    for w in A.OPEN_EDGE_WEIGHTS:  # counting open edges never keeps a candidate with more of them
        weighted = rules[f"guided 2 + free 2, open-edge weight {w:g}"]
        assert weighted["open_edge_share"] <= rules["guided 2 + free 2"]["open_edge_share"] + 1e-12
        assert weighted["chamfer"] >= oracle["chamfer"] - 1e-12
    assert A.main(["--checkpoint", str(tiny_checkpoint), "--procedural", str(tmp_path / "missing")]) == 2


# ---- ablate_refine --------------------------------------------------------------------------------
def test_ablate_refine_caches_candidates_and_scores_every_setting_on_them(tmp_path, tiny_checkpoint):
    A = _load("ablate_refine")
    _write_dataset(tmp_path / "data")
    out, cache = tmp_path / "ref.json", tmp_path / "cands"
    args = ["--checkpoint", str(tiny_checkpoint), "--procedural", str(tmp_path / "data"), "--n", "2",
            "--max-faces", "12", "--samples", "2", "--cache", str(cache), "--variants", "none", "default",
            "--out", str(out)]
    assert A.main(args) == 0
    first = json.loads(out.read_text())
    assert len(list(cache.glob("*.npz"))) == 2 and not list(cache.glob("*.tmp*"))
    assert set(first["table"]) == {"none", "default"} and len(first["hull_chamfer"]) == 2
    assert [r["id"] for r in first["items"]["none"]] == ["obj_000", "obj_002"]
    # a rerun reads the cached candidates (the model is never needed again) and scores them identically
    assert A.main([a if a != str(tiny_checkpoint) else str(tmp_path / "no-model") for a in args]) == 0
    again = json.loads(out.read_text())["items"]
    for name, rows in first["items"].items():
        assert [(r["id"], r["chamfer"], r["fscore_005"]) for r in rows] == \
            [(r["id"], r["chamfer"], r["fscore_005"]) for r in again[name]]
    assert "| default |" in out.with_suffix(".md").read_text()
    assert A.main(args[:6] + ["--procedural", str(tmp_path / "missing"), "--cache", str(cache)]) == 2


def test_ship_checkpoint_merges_per_split_evaluations():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import ship_checkpoint as S

    head = {"checkpoint": "c", "seed": 0, "temperature": 0.5, "n_points": 2048, "n": 24, "max_faces": 200}
    merged = S.merge_evals([{**head, "splits": {"procedural": {"a": 1}}}, {**head, "splits": {"real": {"b": 2}}}])
    assert merged["splits"] == {"procedural": {"a": 1}, "real": {"b": 2}} and merged["n"] == 24
    with pytest.raises(SystemExit, match="different settings"):
        S.merge_evals([{**head, "splits": {}}, {**head, "seed": 1, "splits": {}}])
    with pytest.raises(SystemExit, match="two of the evaluations"):
        S.merge_evals([{**head, "splits": {"real": {}}}, {**head, "splits": {"real": {}}}])
    assert S._family_text({}) == "15 families"
    assert S._family_text({"families": ["box", "cone", "pebble", "pebble"]}) == \
        "3 families drawn from a list of 4 (`pebble` x2)"
    gen = {"cfg_scale": 2.0, "samples": 8, "open_edge_weight": 0.5, "edges_once": "guided"}
    command = S._eval_command({**head, "generation": {**gen, "fill_budget": False}}, "CKPT")
    assert "--checkpoint CKPT --n 24 --max-faces 200" in command and command.endswith("--no-fill --out runs/eval.json --markdown")
    assert "--fill --out" in S._eval_command({**head, "generation": {**gen, "fill_budget": True}}, "CKPT")
    assert "fill" not in S._eval_command({**head, "generation": gen}, "CKPT")  # made before the fill default


def test_ship_checkpoint_refuses_an_evaluation_of_other_weights(tmp_path, tiny_checkpoint):
    """The card's numbers must be of the shipped weights: an evaluation with another digest (or none, as written
    before the digest was recorded) stops the ship before anything is written."""
    import shutil

    from tokenizers3d.checkpoint import model_digest

    sys.path.insert(0, str(SCRIPTS))
    import ship_checkpoint as S

    shutil.copytree(tiny_checkpoint, tmp_path / "run" / "best")
    head = {"checkpoint": "c", "seed": 0, "temperature": 0.5, "n_points": 2048, "n": 24, "max_faces": 200}
    for digest in ("0123456789abcdef", None):
        (tmp_path / "ev.json").write_text(json.dumps({**head, "digest": digest, "splits": {"real": {}}}))
        with pytest.raises(SystemExit, match=f"evaluates weights {digest}, not .*{model_digest(tiny_checkpoint)}"):
            S.main(["--run", str(tmp_path / "run"), "--eval", str(tmp_path / "ev.json"), "--dest", str(tmp_path / "d")])
        assert not (tmp_path / "d").exists()
