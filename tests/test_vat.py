"""VAT shape tokenizer (model half): multi-scale residual quantization, the network, occupancy, meshes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from tokenizers3d.msrq import MSRQConfig, MultiScaleRQ, resample
from tokenizers3d.vat import BOX, VATConfig, VATModel, grid_to_mesh, occupancy_targets

TINY_Q = MSRQConfig(dim=4, scales=(1, 2, 4, 8), codebook_size=16)
TINY = VATConfig(dim=32, heads=2, enc_layers=1, dec_layers=1, n_freqs=4, quantizer=TINY_Q, plane_base=4,
                 plane_res=16, plane_channels=8, mlp_hidden=16)


def test_scales_must_grow():
    with pytest.raises(ValueError, match="non-decreasing"):
        MSRQConfig(scales=(4, 1))
    with pytest.raises(ValueError, match="power of two"):
        VATConfig(plane_base=8, plane_res=24)


def test_resample_keeps_the_mean_and_constant_lines():
    x = torch.randn(2, 8, 3)
    assert torch.allclose(resample(x, 1)[:, 0], x.mean(1), atol=1e-6)
    c = torch.ones(1, 2, 3)
    assert torch.allclose(resample(c, 8), torch.ones(1, 8, 3))


def test_msrq_prefixes_and_ids():
    torch.manual_seed(0)
    q = MultiScaleRQ(TINY_Q)
    x = torch.randn(3, 8, 4)
    q.train()
    out = q(x)  # first call initialises the book from x and updates it
    assert [c.shape for c in out.codes] == [(3, 1), (3, 2), (3, 4), (3, 8)]
    assert bool(q.initialized)
    q.eval()
    out = q(x)
    full = q.decode(out.codes)
    assert torch.allclose(full, out.quantized, atol=1e-5)  # the forward value is the sum of the scales
    errors = [float((q.decode(out.codes, scales=k) - x).pow(2).mean()) for k in range(1, 5)]
    assert errors[-1] < errors[0]  # finer scales reconstruct better
    ids = q.flatten(out.codes)
    assert ids.shape == (3, TINY_Q.n_tokens)
    assert all(torch.equal(a, b) for a, b in zip(q.split(ids), out.codes, strict=True))
    assert len(q.split(ids[:, :3])) == 2  # a prefix of whole scales
    with pytest.raises(ValueError, match="whole number of scales"):
        q.split(ids[:, :2])
    with pytest.raises(ValueError, match="latent line"):
        q(torch.randn(1, 5, 4))


def test_msrq_straight_through_gradient():
    q = MultiScaleRQ(TINY_Q).eval()
    x = torch.randn(2, 8, 4, requires_grad=True)
    out = q(x)
    (out.quantized.sum() + out.loss).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def _box_batch(rng):
    box = trimesh.creation.box(extents=(0.8, 0.5, 0.3))
    pts, idx = trimesh.sample.sample_surface(box, 256, seed=0)
    queries, occ = occupancy_targets(box.vertices, box.faces, rng, n_uniform=256, n_near=256)
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)[None]  # noqa: E731
    return t(pts), t(box.face_normals[idx]), t(queries), t(occ)


def test_occupancy_targets_of_a_box():
    rng = np.random.default_rng(0)
    box = trimesh.creation.box(extents=(0.8, 0.5, 0.3))
    queries, occ = occupancy_targets(box.vertices, box.faces, rng, n_uniform=500, n_near=500)
    inside = np.all(np.abs(queries) < np.array([0.4, 0.25, 0.15]), axis=1)
    assert queries.shape == (1000, 3) and np.abs(queries[:500]).max() <= BOX
    assert np.array_equal(occ.astype(bool), inside)


def test_forward_backward_and_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = VATModel(TINY)
    out = model(*_box_batch(np.random.default_rng(0)))
    assert out.logits.shape == (1, 512) and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.queries.grad is not None and model.mlp[0].weight.grad is not None
    model.eval()
    model.save_pretrained(tmp_path / "vat")
    again = VATModel.from_pretrained(tmp_path / "vat").eval()
    pts, nrm, *_ = _box_batch(np.random.default_rng(0))
    codes = model.encode(pts, nrm)
    assert all(torch.equal(a, b) for a, b in zip(codes, again.encode(pts, nrm), strict=True))
    for k in range(1, len(TINY_Q.scales) + 1):  # every prefix decodes to planes
        planes = again.decode_ids(codes, scales=k)
        assert planes.shape == (1, 3, TINY.plane_channels, TINY.plane_res, TINY.plane_res)
    assert TINY.bytes_for(4) == 8  # 15 tokens of 4 bits


def test_cross_attention_decoder_option(tmp_path):
    """decoder="cross": query points read the decoded tokens; same training, prefix decoding, save / load and
    marching cubes as the triplane, and no plane parameters."""
    torch.manual_seed(0)
    cfg = replace(TINY, decoder="cross")
    model = VATModel(cfg)
    assert not any(n.startswith("plane_") for n, _ in model.named_parameters())
    out = model(*_box_batch(np.random.default_rng(0)))
    out.loss.backward()
    assert out.logits.shape == (1, 512) and model.query_in.weight.grad is not None
    model.eval()
    model.save_pretrained(tmp_path / "vat")
    again = VATModel.from_pretrained(tmp_path / "vat").eval()
    pts, nrm, queries, _ = _box_batch(np.random.default_rng(0))
    codes = again.encode(pts, nrm)
    for k in range(1, len(TINY_Q.scales) + 1):
        field = again.decode_ids(codes, scales=k)
        assert field.shape == (1, TINY_Q.length, cfg.dim)
        torch.testing.assert_close(again.occupancy_logits(field, queries),
                                   model.occupancy_logits(model.decode_ids(codes, scales=k), queries))
    assert again.occupancy_grid(field, 8).shape == (8, 8, 8)
    with pytest.raises(ValueError, match="triplane or cross"):
        VATConfig(decoder="mlp")


def test_point_anchored_queries(one_thread):
    """queries="points": farthest-point anchors in Morton order make the latent slots differ from the start."""
    from tokenizers3d.vat import farthest_points, morton_order

    torch.manual_seed(0)
    pts = torch.rand(2, 300, 3) - 0.5
    idx = farthest_points(pts, 32)
    assert idx.shape == (2, 32) and all(len(set(r.tolist())) == 32 for r in idx)
    assert torch.equal(idx, farthest_points(pts, 32))  # deterministic
    chosen = pts[0, idx[0]]
    gap = torch.cdist(chosen, chosen).fill_diagonal_(9).min()
    rand = pts[0, :32]
    assert gap > torch.cdist(rand, rand).fill_diagonal_(9).min()  # spread out, unlike any 32 points
    assert torch.equal(morton_order(chosen[None])[0], torch.arange(32))  # already in Morton order
    grid = torch.tensor([[[0.4, 0.4, 0.4], [-0.4, -0.4, -0.4], [0.4, -0.4, -0.4]]])
    assert morton_order(grid)[0].tolist() == [1, 2, 0]  # x is the lowest bit
    with pytest.raises(ValueError, match="anchor points"):
        farthest_points(pts, 301)
    spreads = {}
    for q in ("learned", "points"):
        model = VATModel(replace(TINY, encoder="perceiver", queries=q)).eval()
        pts_, nrm, *_ = _box_batch(np.random.default_rng(0))
        with torch.no_grad():
            mean, _ = model.encode_gaussian(pts_, nrm)
        spreads[q] = float(mean[0].std(0).mean() / mean.abs().mean())
    assert spreads["points"] > 2 * spreads["learned"]
    with pytest.raises(ValueError, match="learned or points"):
        VATConfig(queries="fps")


def test_tail_drop_adds_the_loss_of_a_prefix(one_thread):
    """forward(prefix=K): the loss also scores the shape decoded from the first K scales; the prefix path trains the
    decoder only (the encoder's gradient is the full-scale one)."""
    batch = _box_batch(np.random.default_rng(0))
    losses, grads = {}, {}
    for prefix in (None, 1):
        torch.manual_seed(0)
        model = VATModel(TINY).eval()  # eval: no posterior noise, no codebook update, same codes both times
        out = model(*batch, prefix=prefix)
        out.loss.backward()
        losses[prefix], grads[prefix] = float(out.loss.detach()), (model.queries.grad.clone(), model.mlp[0].weight.grad.clone())
    assert losses[1] > losses[None]
    torch.testing.assert_close(grads[1][0], grads[None][0])  # encoder: unchanged
    assert not torch.allclose(grads[1][1], grads[None][1])  # decoder: also learns the prefix


def test_warm_up_forward_plane_embedding_and_its_effect():
    """Warm-up switches: no noise gives the mean's loss; a bypassed quantizer returns no codes, no commitment and
    leaves the codebook uninitialised. The plane embedding gives every triplane cell its own query, so the planes
    vary across cells at initialisation (without it they are nearly flat: the collapse of docs/tokenizers.md)."""
    from tokenizers3d.vat import plane_embedding

    torch.manual_seed(0)
    model = VATModel(TINY)
    batch = _box_batch(np.random.default_rng(0))
    a = model(*batch, noise=0.0, quantize=False)
    b = model(*batch, noise=0.0, quantize=False)
    assert torch.equal(a.loss, b.loss) and a.codes == [] and float(a.commit) == 0.0
    assert not bool(model.quantizer.initialized)
    assert model(*batch).codes and bool(model.quantizer.initialized)
    emb = plane_embedding(8, 48)
    assert emb.shape == (3 * 64, 48) and len(torch.unique(emb, dim=0)) == 3 * 64
    spreads = {}
    for pos in (False, True):
        torch.manual_seed(0)
        net = VATModel(replace(TINY, plane_pos=pos)).eval()
        with torch.no_grad():
            tokens = net.plane_tokens(torch.randn(1, TINY_Q.length, TINY_Q.dim))
        spreads[pos] = float(tokens.std(dim=1).mean() / tokens.abs().mean())  # across cells, relative
    assert spreads[True] > 3 * spreads[False]  # measured 0.94 vs 0.13 with the configs/vat_cpu_perceiver.yaml model


def test_grid_to_mesh_is_a_closed_outward_sphere():
    res = 24
    axis = np.linspace(-BOX, BOX, res)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    occ = (np.sqrt(x**2 + y**2 + z**2) < 0.3).astype(np.float32)
    v, f = grid_to_mesh(occ)
    mesh = trimesh.Trimesh(v, f)
    assert mesh.is_watertight and mesh.volume > 0
    assert abs(np.linalg.norm(v, axis=1).mean() - 0.3) < 0.03
    empty_v, empty_f = grid_to_mesh(np.zeros((8, 8, 8)))
    assert len(empty_v) == 0 and len(empty_f) == 0


def test_tiny_model_overfits_two_shapes(one_thread):
    """The whole path -- points in, tokens, triplane, occupancy, marching cubes -- can represent shapes: a small
    model trained on a box and a cylinder for 600 steps decodes both from their tokens at F@0.05 >= 0.95."""
    from tokenizers3d.metrics import evaluate_mesh

    torch.manual_seed(0)
    cfg = VATConfig(dim=64, heads=4, enc_layers=2, dec_layers=2, n_freqs=6,
                    quantizer=MSRQConfig(dim=8, scales=(1, 4, 16, 64), codebook_size=256), plane_base=8,
                    plane_res=32, plane_channels=16, mlp_hidden=32)
    shapes = [trimesh.creation.box(extents=(0.9, 0.5, 0.3)),
              trimesh.creation.cylinder(radius=0.3, height=0.8, sections=24)]
    rng = np.random.default_rng(0)
    samples = [trimesh.sample.sample_surface(m, 512, seed=0) for m in shapes]
    points = torch.tensor(np.array([p for p, _ in samples]), dtype=torch.float32)
    normals = torch.tensor(np.array([m.face_normals[i] for m, (_, i) in zip(shapes, samples, strict=True)]),
                           dtype=torch.float32)
    model = VATModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
    for _ in range(600):
        targets = [occupancy_targets(m.vertices, m.faces, rng, n_uniform=1024, n_near=1024) for m in shapes]
        out = model(points, normals, torch.tensor(np.array([q for q, _ in targets])),
                    torch.tensor(np.array([o for _, o in targets])))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    model.eval()
    codes = model.encode(points, normals)
    for i, ref in enumerate(shapes):
        v, f = grid_to_mesh(model.occupancy_grid(model.decode_ids([c[i:i + 1] for c in codes]), 40))
        mesh = trimesh.Trimesh(v, f)
        assert mesh.is_watertight
        assert evaluate_mesh(mesh, ref).fscore_005 >= 0.95


def test_occupancy_of_overlapping_pieces_is_their_union():
    a = trimesh.creation.box(extents=(0.6, 0.2, 0.2))
    b = trimesh.creation.box(extents=(0.2, 0.6, 0.2))  # crosses a at the origin: ray parity of both would cancel
    both = trimesh.util.concatenate([a, b])
    queries, occ = occupancy_targets(both.vertices, both.faces, np.random.default_rng(0), n_uniform=2000, n_near=0)
    inside = np.all(np.abs(queries) < [0.3, 0.1, 0.1], axis=1) | np.all(np.abs(queries) < [0.1, 0.3, 0.1], axis=1)
    assert inside[np.all(np.abs(queries) < 0.1, axis=1)].any()  # some points in the overlap were drawn
    assert np.array_equal(occ.astype(bool), inside)


def test_query_blocks_grow_a_trained_decoder(tmp_path, one_thread):
    """``query_blocks``: a cross-attention decoder grown by more reads of its tokens decodes exactly as before
    (zero-initialised outputs) until training moves them; the new blocks get gradients; the triplane refuses them."""
    from meshgen.train import warm_start

    torch.manual_seed(0)
    old = VATModel(replace(TINY, decoder="cross")).eval()
    old.save_pretrained(tmp_path / "old")
    grown = VATModel(replace(TINY, decoder="cross", query_blocks=2))
    assert warm_start(grown, tmp_path / "old")["new"] == 2 * len(grown.query_blocks[0].state_dict())
    grown.eval()
    pts, nrm, queries, occ = _box_batch(np.random.default_rng(0))
    codes = old.encode(pts, nrm)
    with torch.no_grad():
        torch.testing.assert_close(grown.occupancy_logits(grown.decode_ids(codes), queries),
                                   old.occupancy_logits(old.decode_ids(codes), queries), rtol=0, atol=0)
    grown.train()
    grown(pts, nrm, queries, occ).loss.backward()
    for block in grown.query_blocks:
        assert block.attn.out_proj.weight.grad.abs().sum() > 0 and block.mlp[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="query_blocks"):
        VATConfig(query_blocks=1, decoder="triplane")


def test_freeze_encoder_trains_the_decoder_only(tmp_path, one_thread):
    """``train.freeze_encoder``: after training steps the encoder side (embedding, queries, encoder, Gaussian head,
    codebook) is what ``init_from`` held -- every shape keeps its ids -- and the decoder has moved."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from train_vat import VATTrainer, load_run_config

    torch.manual_seed(0)
    VATModel(replace(TINY, decoder="cross")).eval().save_pretrained(tmp_path / "init")
    cfg = tmp_path / "frozen.yaml"
    cfg.write_text(f"""
model: {{dim: 32, heads: 2, enc_layers: 1, dec_layers: 1, n_freqs: 4, mlp_hidden: 16, decoder: cross, query_blocks: 1,
        quantizer: {{dim: 4, scales: [1, 2, 4, 8], codebook_size: 16}}}}
data: {{max_faces: 300, n_points: 128, n_uniform: 128, n_near: 128, val_shapes: 2, fixed_shapes: 2}}
train: {{batch: 2, steps: 3, val_every: 3, ckpt_every: 3, log_every: 3, threads: 1, lr: 1.0e-2,
        init_from: {tmp_path / "init"}, freeze_encoder: true, out_dir: {tmp_path / "run"}}}
""")
    trainer = VATTrainer(load_run_config(cfg), log=lambda *_: None)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    after = trainer.model.state_dict()
    encoder_side = ("point_in.", "queries", "encoder.", "read_points.", "read_norm.", "to_gauss.", "quantizer.")
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and not any(k.startswith(encoder_side) for k in moved), sorted(moved)
    assert any(k.startswith("query_blocks.") for k in moved) and any(k.startswith("decoder.") for k in moved)


def test_training_script_runs_resumes_and_refuses_bad_configs(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("""
model: {dim: 32, heads: 2, enc_layers: 1, dec_layers: 1, n_freqs: 4, plane_base: 4, plane_res: 8, plane_channels: 8,
        mlp_hidden: 16, quantizer: {dim: 4, scales: [1, 2, 4], codebook_size: 16}}
data: {max_faces: 300, n_points: 128, n_uniform: 128, n_near: 128, val_shapes: 2, fixed_shapes: 2}
train: {batch: 2, val_every: 2, ckpt_every: 1, log_every: 1, threads: 1, noise_warmup_steps: 2, quantize_after: 1}
""")
    cmd = [sys.executable, str(root / "scripts" / "train_vat.py"), "--config", str(cfg), "--out-dir", str(tmp_path / "run")]
    first = subprocess.run([*cmd, "--steps", "2"], capture_output=True, text=True, cwd=root)
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout.strip().splitlines()[-1])
    assert result["step"] == 2 and len(result["val"]["iou_by_scales"]) == 3
    assert 0 <= result["val"]["iou_continuous"] <= 1 and result["val"]["codes"] >= 1
    assert (tmp_path / "run" / "best" / "config.json").exists()
    second = subprocess.run([*cmd, "--steps", "3"], capture_output=True, text=True, cwd=root)
    assert second.returncode == 0, second.stderr
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]
    assert VATModel.from_pretrained(tmp_path / "run" / "last").config.plane_res == 8
    cfg.write_text("model: {plane_base: 8, plane_res: 24}\n")
    bad = subprocess.run([*cmd, "--steps", "1"], capture_output=True, text=True, cwd=root)
    assert bad.returncode == 2 and "power of two" in bad.stderr and "Traceback" not in bad.stderr
    _ship_the_run(tmp_path, root)


def _ship_the_run(tmp_path, root):
    """scripts/ship_vat.py writes the card from the run's files and an evaluation of these very weights, and
    refuses an evaluation of other weights without touching the destination."""
    import subprocess
    import sys

    from tokenizers3d.checkpoint import model_digest

    run, dest = tmp_path / "run", tmp_path / "dest"
    rows = [{"scales": k + 1, "bytes": b, "tokens": n, "vat_fscore_002": 0.1 * k, "vat_fscore_005": 0.2 + 0.3 * k,
             "vat_chamfer": 0.05, "vat_normal_consistency": 0.8, "vat_valid": 1.0, "draco_fscore_005": 0.9,
             "draco_fits": float(k == 2)} for k, (b, n) in enumerate([(1, 1), (2, 3), (4, 7)])]
    ev = {"checkpoint": str(run / "best"), "digest": model_digest(run / "best"),
          "settings": {"checkpoint": str(run / "best"), "procedural": "data/procedural", "real": "data/real", "n": 2,
                       "max_faces": 5000, "points": 2048, "resolution": 96, "threads": 1, "draco_bits": [8],
                       "out": "runs/x.json", "markdown_out": None, "plot": None},
          "splits": {"procedural": {"n": 2, "rows": rows, "compression_ratio": {"obj": 300.0}}}}
    (tmp_path / "ev.json").write_text(json.dumps(ev))
    ship = [sys.executable, str(root / "scripts" / "ship_vat.py"), "--run", str(run), "--eval", str(tmp_path / "ev.json"),
            "--dest", str(dest), "--no-demo"]
    done = subprocess.run(ship, capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr
    card = (dest / "README.md").read_text()
    assert "| 3 | 4 | 0.200 | 0.800 | 0.0500 | 0.900 |" in card and "| 1 | 1 | 0.000 | 0.200 | 0.0500 | -- |" in card
    assert "F@0.05 >= 0.95 (0.800 here: not met)" in card and "--draco-bits 8 --out runs/x.json" in card
    assert "shipped weights (best, step " in card and " with 1-3 scales kept" in card and "3 steps in" in card
    assert VATModel.from_pretrained(dest).config.plane_res == 8
    # one JSON per split (as the evaluation is run, one process each): merged, each command printed
    ev2 = {**ev, "settings": {**ev["settings"], "procedural": "/tmp/none", "fit_steps": 150, "level": "auto",
                              "out": "runs/y.json"},
           "splits": {"real": {"n": 2, "rows": [{k: v for k, v in r.items() if not k.startswith("draco")}
                                                for r in rows], "compression_ratio": {"obj": 30.0}}}}
    (tmp_path / "ev2.json").write_text(json.dumps(ev2))
    done = subprocess.run([*ship[:5], str(tmp_path / "ev.json"), str(tmp_path / "ev2.json"), *ship[6:]],
                          capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr
    card = (dest / "README.md").read_text()
    assert "| 3 | 4 | 0.200 | 0.800 | 0.0500 | 0.900 | 0.200 | 0.800 | 0.0500 | -- |" in card
    assert "--fit-steps 150 --level auto --out runs/y.json" in card and "--out runs/x.json" in card
    # an evaluation with the offset layer (eval_vat --offsets): its columns, its command and its own verdict
    off_rows = [{**r, "off_bytes": r["bytes"] + 504, "off_fscore_002": 0.85, "off_fscore_005": 0.97, "off_kept": 1.0}
                for r in rows]
    ev3 = {**ev, "settings": {**ev["settings"], "offsets": 10, "out": "runs/z.json"},
           "splits": {"procedural": {**ev["splits"]["procedural"], "rows": off_rows}}}
    (tmp_path / "ev3.json").write_text(json.dumps(ev3))
    done = subprocess.run([*ship[:5], str(tmp_path / "ev3.json"), *ship[6:]], capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr
    card = (dest / "README.md").read_text()
    assert "| 3 | 4 | 0.200 | 0.800 | 0.0500 | 0.900 | 508 | 0.850 | 0.970 |" in card and "--offsets 10" in card
    assert "F@0.05 >= 0.95 (0.800 here: not met)" in card and "With the offset layer" in card
    assert "F@0.05 0.970 (met); F@0.02 0.850 (met)" in card
    twice = subprocess.run([*ship[:5], str(tmp_path / "ev.json"), str(tmp_path / "ev.json"), *ship[6:]],
                           capture_output=True, text=True, cwd=root)
    assert twice.returncode == 2 and "in two of the evaluation files" in twice.stderr
    ev["digest"] = "0" * 16
    (tmp_path / "ev.json").write_text(json.dumps(ev))
    (dest / "README.md").write_text("kept")
    refused = subprocess.run(ship, capture_output=True, text=True, cwd=root)
    assert refused.returncode == 2 and "evaluates weights 0000000000000000" in refused.stderr
    assert "Traceback" not in refused.stderr and (dest / "README.md").read_text() == "kept"


# ---- the .vat file and the compress job ----------------------------------------------------------------------
def test_pack_unpack_ids_round_trip():
    from tokenizers3d.vatfile import pack_ids, unpack_ids

    rng = np.random.default_rng(0)
    for bits in (1, 4, 12, 13):
        ids = rng.integers(0, 1 << bits, size=341)
        data = pack_ids(ids, bits)
        assert len(data) == -(-341 * bits // 8)
        assert np.array_equal(unpack_ids(data, bits, 341), ids)
    with pytest.raises(ValueError):
        pack_ids(np.array([16]), 4)


@pytest.fixture(scope="module")
def tiny_vat(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("vat") / "model"
    VATModel(TINY).save_pretrained(d)
    return d


def _box_file(tmp_path):
    path = tmp_path / "box.ply"
    trimesh.creation.box(extents=(2.0, 1.0, 0.5)).apply_translation((5, 0, 0)).export(path)
    return path


def test_vat_file_round_trip_and_damage(tmp_path, tiny_vat):
    from tokenizers3d.compress import compress_file
    from tokenizers3d.errors import MeshInputError
    from tokenizers3d.vatfile import HEADER_BYTES, read_vat

    res = compress_file(_box_file(tmp_path), tmp_path / "s.vat", checkpoint=tiny_vat)
    assert res.tokens == TINY_Q.n_tokens and res.payload_bytes == TINY.bytes_for(len(TINY_Q.scales))
    assert res.file_bytes == HEADER_BYTES + res.payload_bytes + 4 == (tmp_path / "s.vat").stat().st_size
    f = read_vat(tmp_path / "s.vat", scales=TINY_Q.scales)
    assert f.normalization.scale == pytest.approx(2.0) and f.normalization.center[0] == pytest.approx(5.0)
    small = compress_file(_box_file(tmp_path), tmp_path / "k2.vat", checkpoint=tiny_vat, scales=2)
    assert small.tokens == 3 and read_vat(tmp_path / "k2.vat", scales=TINY_Q.scales).scales_kept == 2
    data = (tmp_path / "s.vat").read_bytes()
    cases = {"short": data[:20], "cut": data[:-3], "flip": data[:40] + bytes([data[40] ^ 1]) + data[41:],
             "magic": b"XXXX" + data[4:], "empty": b""}
    for name, bad in cases.items():
        (tmp_path / f"{name}.vat").write_bytes(bad)
        with pytest.raises(MeshInputError, match=f"{name}.vat"):
            read_vat(tmp_path / f"{name}.vat")
    with pytest.raises(MeshInputError, match="scales"):
        read_vat(tmp_path / "s.vat", scales=(1, 2))


def test_vat_file_stores_the_surface_level(tmp_path):
    """The level lives in the two header bytes that were reserved: 0.5 writes them as 0 (byte for byte the old
    format), any other level to 1 / 65535; a stored level of 1 is refused, a VatFile outside (0, 1) too."""
    import struct
    import zlib

    from tokenizers3d.errors import MeshInputError
    from tokenizers3d.mesh import Normalization
    from tokenizers3d.vatfile import VatFile, encode_vat, read_vat

    norm = Normalization(center=(1.0, 2.0, 3.0), scale=4.0)
    base = dict(ids=np.arange(5), bits=4, model_scales=2, scales_kept=2, digest="00" * 8, normalization=norm)
    half = encode_vat(VatFile(**base))
    assert half[36:38] == b"\x00\x00" and encode_vat(VatFile(**base, level=0.5)) == half
    for level in (0.2, 0.35, 0.8):
        (tmp_path / "l.vat").write_bytes(encode_vat(VatFile(**base, level=level)))
        f = read_vat(tmp_path / "l.vat")
        assert f.level == pytest.approx(level, abs=1 / 65535) and f.level != 0.5
    (tmp_path / "h.vat").write_bytes(half)
    assert read_vat(tmp_path / "h.vat").level == 0.5
    body = half[:36] + struct.pack("<H", 65535) + half[38:-4]
    (tmp_path / "one.vat").write_bytes(body + struct.pack("<I", zlib.crc32(body)))
    with pytest.raises(MeshInputError, match="one.vat.*level"):
        read_vat(tmp_path / "one.vat")
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="level"):
            VatFile(**base, level=bad)


def test_choose_level_finds_the_level_of_the_mesh():
    """A field that falls off linearly with the radius (0.5 at r = 0.3, 4 per unit): a sphere of radius 0.35 is
    its 0.3 level and one of radius 0.3 its 0.5 level; the chooser finds each among its candidates."""
    from tokenizers3d.vat import BOX
    from tokenizers3d.vat_fit import LEVELS, choose_level

    axis = np.linspace(-BOX, BOX, 48)
    r = np.linalg.norm(np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1), axis=-1)
    grid = np.clip(0.5 - 4.0 * (r - 0.3), 0.0, 1.0)
    for radius, want in ((0.35, 0.3), (0.3, 0.5)):
        sphere = trimesh.creation.icosphere(subdivisions=3, radius=radius)
        level, scores = choose_level(grid, sphere.vertices, sphere.faces, n_samples=2048)
        assert level == pytest.approx(want) and set(scores) == set(LEVELS)
        assert scores[level] < scores[0.8] and np.isfinite(scores[level])
    empty, scores = choose_level(np.zeros((16, 16, 16)), sphere.vertices, sphere.faces, n_samples=256)
    assert empty == 0.5 and all(v == float("inf") for v in scores.values())


def test_compress_and_decompress_commands(tmp_path, tiny_vat):
    import subprocess
    import sys

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "meshgen.cli", *map(str, args)], capture_output=True, text=True)

    box = _box_file(tmp_path)
    done = cli("compress", box, "-o", tmp_path / "b.vat", "--checkpoint", tiny_vat)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tokens"] == TINY_Q.n_tokens
    out = cli("decompress", tmp_path / "b.vat", "-o", tmp_path / "b.obj", "--checkpoint", tiny_vat,
              "--resolution", "16")
    if out.returncode == 0:  # a random model may decode to a shape ...
        assert trimesh.load(tmp_path / "b.obj").is_watertight
    else:  # ... or to nothing, which is said in one line
        assert out.returncode == 2 and "empty shape" in out.stderr
    other = tmp_path / "other"
    torch.manual_seed(1)
    VATModel(TINY).save_pretrained(other)
    wrong = cli("decompress", tmp_path / "b.vat", "-o", tmp_path / "w.obj", "--checkpoint", other)
    assert wrong.returncode == 2 and "not by these" in wrong.stderr and not (tmp_path / "w.obj").exists()
    foreign = cli("compress", box, "-o", tmp_path / "f.vat", "--checkpoint",
                  Path(__file__).resolve().parents[1] / "assets" / "checkpoints" / "part-masks")
    assert foreign.returncode == 2 and "VATModel" in foreign.stderr and not (tmp_path / "f.vat").exists()
    missing = cli("compress", box, "-o", tmp_path / "m.vat", "--checkpoint", tmp_path / "no-such-run")
    assert missing.returncode == 2 and "no-such-run" in missing.stderr and "does not exist" in missing.stderr
    bad_scales = cli("compress", box, "-o", tmp_path / "s.vat", "--checkpoint", tiny_vat, "--scales", "9")
    assert bad_scales.returncode == 2 and "--scales" in bad_scales.stderr
    bad_level = cli("compress", box, "-o", tmp_path / "l.vat", "--checkpoint", tiny_vat, "--level", "1.5")
    assert bad_level.returncode == 2 and "--level" in bad_level.stderr and not (tmp_path / "l.vat").exists()
    fixed = cli("compress", box, "-o", tmp_path / "f5.vat", "--checkpoint", tiny_vat, "--level", "0.5",
                "--fit-steps", "0")
    assert fixed.returncode == 0 and json.loads(fixed.stdout)["level"] == 0.5
    assert (tmp_path / "f5.vat").read_bytes()[36:38] == bytes(2)
    (tmp_path / "junk.vat").write_bytes(b"not a vat file at all, really not")
    junk = cli("decompress", tmp_path / "junk.vat", "-o", tmp_path / "j.obj", "--checkpoint", tiny_vat)
    assert junk.returncode == 2 and len(junk.stderr.strip().splitlines()) == 1 and "junk.vat" in junk.stderr
    for proc in (wrong, foreign, missing, bad_scales, bad_level, junk):
        assert "Traceback" not in proc.stderr


def test_perceiver_encoder_option():
    import dataclasses

    torch.manual_seed(0)
    model = VATModel(dataclasses.replace(TINY, encoder="perceiver"))
    out = model(*_box_batch(np.random.default_rng(0)))
    assert out.logits.shape == (1, 512) and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.read_points.in_proj_weight.grad is not None
    with pytest.raises(ValueError, match="in_context or perceiver"):
        dataclasses.replace(TINY, encoder="flat")


# ---- scripts/eval_vat.py: VAT rows per scale count and the Draco baseline at the same budgets ----------------
def _eval_vat():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    try:
        import eval_vat
    finally:
        sys.path.pop(0)
    return eval_vat


def test_draco_baseline_fits_the_budget():
    pytest.importorskip("DracoPy")
    ev = _eval_vat()
    sphere = trimesh.creation.icosphere(3)  # 1,280 faces
    v, f, size = ev.draco_within(sphere.vertices, sphere.faces, 400, 8)
    assert size <= 400 and 4 <= len(f) < len(sphere.faces)
    assert ev.draco_within(sphere.vertices, sphere.faces, 10, 8) is None  # nothing fits in 10 bytes
    big = ev.draco_within(sphere.vertices, sphere.faces, 10**6, 12)
    assert len(big[1]) == len(sphere.faces)  # a generous budget keeps every face
    unit = trimesh.Trimesh(sphere.vertices / 2, sphere.faces, process=False)
    row = ev.draco_baseline(unit, 600, (6, 10))
    assert row["bytes"] <= 600 and row["fscore_005"] > 0.9


def test_eval_vat_rows_summary_table_and_plot(tiny_vat, tmp_path, one_thread):
    pytest.importorskip("DracoPy")
    from tokenizers3d.compress import load_vat_model

    ev = _eval_vat()
    model, _ = load_vat_model(tiny_vat)
    path = _box_file(tmp_path)
    res = ev.evaluate(model, [path], n_points=256, resolution=16, draco=(8,), log=lambda s: None)
    rows = res["rows"]
    assert [r["scales"] for r in rows] == [1, 2, 3, 4]
    assert [r["bytes"] for r in rows] == [TINY.bytes_for(k) for k in range(1, 5)]
    assert all(r["draco_faces"] == 0 or r["bytes"] >= 4 for r in rows)
    assert res["compression_ratio"]["obj"] > 1
    assert "| 4 | 15 |" in ev.markdown("procedural", res)
    ev.plot({"procedural": res}, tmp_path / "plot.png")
    from PIL import Image

    assert Image.open(tmp_path / "plot.png").size == (900, 520)
    # --offsets: each prefix also scored with the offset grid compress would write (or without, when not kept)
    off = ev.evaluate(model, [path], n_points=256, resolution=16, draco=None, log=lambda s: None, level="0.5",
                      offsets=4)
    for r, o in zip(rows, off["rows"], strict=True):
        assert o["off_bytes"] == r["bytes"] + 4 + 32 and o["off_kept"] == 1.0  # a fixed level keeps them
        assert 0.0 <= o["off_fscore_005"] <= 1.0
    assert "+offsets" in ev.markdown("procedural", off)
    ev.plot({"procedural": off}, tmp_path / "off.png")
    # --draco-only: the same budgets and Draco scores, no VAT decoding
    only = ev.evaluate(model, [path], n_points=256, resolution=16, draco=(8,), log=lambda s: None, vat=False)
    assert [r["bytes"] for r in only["rows"]] == [r["bytes"] for r in rows]
    assert [r["draco_fscore_005"] for r in only["rows"]] == [r["draco_fscore_005"] for r in rows]
    assert "vat_fscore_005" not in only["rows"][0] and "VAT" not in ev.markdown("procedural", only)
    ev.plot({"procedural": only}, tmp_path / "draco.png")


# ---- the `vat` tokenizer ---------------------------------------------------------------------------------
def test_vat_tokenizer_sequences_prefixes_and_errors(tiny_vat, tmp_path, one_thread):
    from tokenizers3d.base import get_tokenizer, list_tokenizers
    from tokenizers3d.errors import TokenizationError
    from tokenizers3d.tokenfile import load_tokens, save_tokens

    assert "vat" in list_tokenizers()
    tok = get_tokenizer("vat", checkpoint=str(tiny_vat), resolution=16, n_points=256)
    assert tok.lossless is False and tok.vocab_size == TINY_Q.codebook_size + 3
    box = trimesh.creation.box(extents=(2.0, 1.0, 0.5))
    enc = tok.encode(box)
    assert len(enc.ids) == 2 + TINY_Q.n_tokens and enc.ids[0] == tok.bos_id and enc.ids[-1] == tok.eos_id
    assert enc.ids[1:-1].max() < TINY_Q.codebook_size
    np.testing.assert_array_equal(tok.encode(box).ids, enc.ids)  # deterministic (seeded sampling)
    qm, report = tok.decode_quantized(enc.ids)
    assert report.error is None and report.dropped_tokens == 0 and qm.bits == 10
    coarse = get_tokenizer("vat", checkpoint=str(tiny_vat), resolution=16, n_points=256, scales=2).encode(box)
    np.testing.assert_array_equal(coarse.ids[1:-1], enc.ids[1:4])  # the first two scales: 1 + 2 ids
    tok.decode_quantized(coarse.ids)  # a prefix of whole scales decodes
    with pytest.raises(TokenizationError, match="whole number of scales"):
        tok.decode_quantized(np.concatenate([enc.ids[:3], [tok.eos_id]]))  # 2 ids: scale 2 cut
    _, lenient = tok.decode_quantized(np.concatenate([enc.ids[:3], [tok.eos_id]]), strict=False)
    assert lenient.error is not None and lenient.dropped_tokens > 0
    bad = enc.ids.copy()
    bad[2] = TINY_Q.codebook_size  # the PAD id inside the body
    with pytest.raises(TokenizationError):
        tok.decode_quantized(bad)
    # token files record the checkpoint and its digest, and decode again
    save_tokens(tmp_path / "t.npz", enc, tok)
    back = load_tokens(tmp_path / "t.npz")
    assert back.tokenizer.config == tok.config
    assert back.decode().quantized.bits == 10


def test_bundled_weights_compress_the_demo_table(tmp_path, one_thread):
    """The shipped checkpoint is the default: the demo table becomes a 512-byte payload whose decoded surface is a
    closed mesh near the table (its card reports F@0.05 0.858 at resolution 64; a broken or untrained model is far
    below the bound asserted here)."""
    from tokenizers3d.compress import DEFAULT_CHECKPOINT, compress_file, decompress_file
    from tokenizers3d.io import load_mesh
    from tokenizers3d.metrics import evaluate_mesh

    if not (DEFAULT_CHECKPOINT / "model.safetensors").exists():
        pytest.skip("no bundled VAT weights")
    table = Path(__file__).resolve().parents[1] / "assets" / "demo" / "table.ply"
    res = compress_file(table, tmp_path / "t.vat")
    assert res.tokens == 341 and res.payload_bytes == 512
    decompress_file(tmp_path / "t.vat", tmp_path / "t.obj", resolution=48)
    out = load_mesh(tmp_path / "t.obj")
    m = evaluate_mesh(out, load_mesh(table))
    assert out.is_watertight and m.fscore_005 > 0.6, m


def test_decompress_extracts_the_surface_at_the_stored_level(tmp_path, one_thread):
    """Bundled weights, the demo table, the encoder's ids: the level chosen at compression is written and
    decompression uses it -- the file at the chosen level decodes to another, closer surface than the same ids at
    0.5 (measured at resolution 96: level 0.8, F@0.05 0.929 against 0.760)."""
    from tokenizers3d.compress import DEFAULT_CHECKPOINT, compress_file, decompress_file
    from tokenizers3d.io import load_mesh
    from tokenizers3d.metrics import evaluate_mesh
    from tokenizers3d.vatfile import read_vat

    if not (DEFAULT_CHECKPOINT / "model.safetensors").exists():
        pytest.skip("no bundled VAT weights")
    table = Path(__file__).resolve().parents[1] / "assets" / "demo" / "table.ply"
    chosen = compress_file(table, tmp_path / "auto.vat", fit_steps=0)
    fixed = compress_file(table, tmp_path / "half.vat", fit_steps=0, level=0.5)
    assert fixed.level == 0.5 and fixed.payload_bytes == chosen.payload_bytes
    a, b = read_vat(tmp_path / "auto.vat"), read_vat(tmp_path / "half.vat")
    assert np.array_equal(a.ids, b.ids) and b.level == 0.5
    assert a.level == pytest.approx(chosen.level, abs=1e-4) and a.level != 0.5
    scores = {}
    for name in ("auto", "half"):
        decompress_file(tmp_path / f"{name}.vat", tmp_path / f"{name}.obj", resolution=64)
        scores[name] = evaluate_mesh(load_mesh(tmp_path / f"{name}.obj"), load_mesh(table))
    assert scores["auto"].chamfer < scores["half"].chamfer and scores["auto"].fscore_005 > scores["half"].fscore_005
