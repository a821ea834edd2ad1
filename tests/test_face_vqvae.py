"""The face VQ-VAE and the `vqvae` tokenizer: quantizer, graph, save/load, overfitting, tokenizer, CLI, training."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from tokenizers3d.base import get_tokenizer, list_tokenizers
from tokenizers3d.errors import ConfigError, MeshInputError, TokenizationError
from tokenizers3d.face_vqvae import (
    FaceBatch,
    FaceVQVAE,
    FaceVQVAEConfig,
    face_adjacency,
    face_features,
    fourier_levels,
)
from tokenizers3d.mesh import prepare
from tokenizers3d.procedural import generate
from tokenizers3d.rvq import ResidualVQ, RVQConfig, code_usage

ROOT = Path(__file__).resolve().parent.parent
SHAPES = [("box", 0), ("pyramid", 1), ("prism", 2), ("cone", 3)]  # 12, 10, 16 and 6 faces at 7 bits


def _meshes():
    return [generate(family, seed).mesh for family, seed in SHAPES]


def _tiny_config(**kw) -> FaceVQVAEConfig:
    rvq = RVQConfig(dim=16, depth=2, codebook_size=64, decay=0.9, dead_threshold=0.0)
    return FaceVQVAEConfig(**{"bits": 7, "dim": 64, "coord_dim": 8, "graph_layers": 1, "decoder_layers": 2,
                              "label_sigma": 0.0, "rvq": rvq, **kw})


def _corners(qm) -> np.ndarray:
    return FaceBatch.from_meshes([qm]).corners.numpy()


# ---- quantizer ----------------------------------------------------------------------------------------------
def test_straight_through_gradient_and_forward_value(one_thread):
    torch.manual_seed(0)
    rvq = ResidualVQ(RVQConfig(dim=8, depth=3, codebook_size=16))
    x = torch.randn(50, 8, requires_grad=True)
    out = rvq(x)  # training mode: initialises and updates the books
    w = torch.randn(50, 8)
    (out.quantized * w).sum().backward()
    assert torch.allclose(x.grad, w)  # the decoder's gradient reaches the encoder unchanged
    rvq.eval()
    out = rvq(x.detach())
    assert torch.allclose(out.quantized, rvq.lookup(out.codes), atol=1e-6)  # value: the sum of the codes


def test_codes_match_a_plain_numpy_greedy_residual_search(one_thread):
    torch.manual_seed(1)
    rvq = ResidualVQ(RVQConfig(dim=4, depth=3, codebook_size=8)).eval()
    x = torch.randn(40, 4)
    codes = rvq(x).codes.numpy()
    books = rvq.codebook.numpy().astype(np.float64)  # (3, 8, 4)
    residual = x.numpy().astype(np.float64)
    for level in range(3):
        for i, r in enumerate(residual):
            dist = [float(((r - c) ** 2).sum()) for c in books[level]]
            assert codes[i, level] == int(np.argmin(dist))
        residual = residual - books[level][codes[:, level]]


def test_residual_shrinks_with_depth(one_thread):
    torch.manual_seed(2)
    rvq = ResidualVQ(RVQConfig(dim=8, depth=4, codebook_size=32, decay=0.8))
    x = torch.randn(1024, 8)
    for _ in range(20):  # EMA k-means steps
        rvq(x)
    rvq.eval()
    norms = rvq(x).residual_norms
    assert torch.all(norms[1:] < norms[:-1]), norms
    assert norms[-1] < 0.6 * norms[0] < 0.6 * x.norm(dim=-1).mean()


def test_dead_code_restart_fires(one_thread):
    torch.manual_seed(3)
    rvq = ResidualVQ(RVQConfig(dim=4, depth=1, codebook_size=16, decay=0.5, dead_threshold=0.5))
    x = torch.randn(256, 4)
    rvq(x)  # initialise from the data
    rvq.codebook[0, :8] = 100.0  # eight codes far from every input: never chosen again
    rvq.ema_sum[0, :8] = 100.0
    before = int(rvq.restarts)
    for _ in range(8):  # their usage decays by half a step (from about 8 vectors a step) below 0.5
        rvq(x)
    assert int(rvq.restarts) - before >= 8
    assert float(rvq.codebook[0, :8].abs().max()) < 10.0  # moved back among the data
    rvq.eval()
    used = set(rvq(x).codes[:, 0].tolist())
    assert len(used & set(range(8))) >= 4  # and in use again


def test_learned_codebook_gets_a_gradient(one_thread):
    torch.manual_seed(4)
    rvq = ResidualVQ(RVQConfig(dim=4, depth=2, codebook_size=8, ema=False))
    assert isinstance(rvq.codebook, torch.nn.Parameter)
    out = rvq(torch.randn(32, 4))
    out.loss.backward()
    assert rvq.codebook.grad is not None and rvq.codebook.grad.abs().sum() > 0


def test_code_usage_and_perplexity_exact():
    codes = torch.tensor([[0, 1], [1, 1], [2, 1], [3, 1]])  # level 0: 4 codes evenly; level 1: one code
    usage, ppl = code_usage(codes, 8, shared=False)
    assert usage == pytest.approx((4 / 8 + 1 / 8) / 2) and ppl == pytest.approx((4.0 + 1.0) / 2)
    usage, ppl = code_usage(codes, 8, shared=True)  # 0, 2, 3 once each, 1 five times
    p = np.array([1, 5, 1, 1]) / 8
    assert usage == pytest.approx(4 / 8) and ppl == pytest.approx(float(np.exp(-(p * np.log(p)).sum())))


# ---- graph and features -----------------------------------------------------------------------------------
def test_face_adjacency_matches_brute_force():
    qm, _ = prepare(generate("chair", 5).mesh, 7)
    edges = [{frozenset((a, b)), frozenset((b, c)), frozenset((c, a))} for a, b, c in qm.faces.tolist()]
    expected = {(i, j) for i, j in combinations(range(len(edges)), 2) if edges[i] & edges[j]}
    expected |= {(j, i) for i, j in expected}
    got = set(map(tuple, face_adjacency(qm.faces).T.tolist()))
    assert got == expected and len(got) == 3 * len(edges)  # closed manifold: 3 neighbours each


def test_face_features_of_a_right_triangle():
    corners = torch.tensor([[[0, 0, 0], [0, 0, 64], [0, 64, 0]]])  # z y x: legs of half the cube along x and y
    f = face_features(corners, 7)[0]
    assert f.shape == (16,)
    assert torch.allclose(f[9:12].abs(), torch.tensor([1.0, 0.0, 0.0]))  # normal along z
    assert f[12] == pytest.approx(0.5)  # sqrt(2 * area) with legs 0.5
    assert torch.allclose(f[13:], torch.tensor([0.5, 0.25, 0.25]))  # angles / pi
    assert f[13:].sum() == pytest.approx(1.0)


# ---- the model ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def overfit(tmp_path_factory, one_thread):
    """A tiny face VQ-VAE trained to reconstruct the four SHAPES exactly, saved with save_pretrained."""
    torch.manual_seed(0)
    quantized = [prepare(m, 7)[0] for m in _meshes()]
    model = FaceVQVAE(_tiny_config())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = FaceBatch.from_meshes(quantized)
    for _ in range(150):
        out = model(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("fvq") / "tiny"
    model.eval().save_pretrained(path)
    return model, quantized, path


def test_tiny_model_overfits_four_meshes_exactly(overfit):
    model, quantized, _ = overfit
    codes = model.encode_codes(quantized)
    assert [c.shape for c in codes] == [(qm.n_faces, 3, 2) for qm in quantized]
    for qm, corners in zip(quantized, model.decode_codes(codes), strict=True):
        assert np.array_equal(corners, _corners(qm))


def test_save_load_round_trip_gives_identical_codes(overfit, tmp_path):
    model, quantized, path = overfit
    loaded = FaceVQVAE.from_pretrained(path)
    assert loaded.config == model.config
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # EMA codebooks and counters included
    more = [prepare(generate(f, 7).mesh, 7)[0] for f in ("torus", "stairs")]  # unseen meshes too
    for a, b in zip(model.encode_codes(quantized + more), loaded.encode_codes(quantized + more), strict=True):
        assert np.array_equal(a, b)
    # encoding one mesh alone or in a batch gives the same codes
    assert np.array_equal(loaded.encode_codes([more[0]])[0], loaded.encode_codes(quantized + more)[-2])


def test_level_table_prefers_each_level_and_its_neighbours():
    table = fourier_levels(128, 32).double()  # (128, 32)
    sim = table @ table.T
    assert torch.equal(sim.argmax(1), torch.arange(128))  # every level is its own best match by dot product
    assert torch.allclose(table.norm(dim=1), torch.full((128,), 4.0, dtype=torch.float64))
    near = sim[torch.arange(0, 120), torch.arange(1, 121)]  # a level and the next
    far = sim[torch.arange(0, 120), torch.arange(8, 128)]  # a level and the eighth next
    assert torch.all(near > far)


def test_vertex_averaging_gives_a_vertex_one_code_and_the_linear_head_works(one_thread):
    torch.manual_seed(5)
    qm, _ = prepare(generate("prism", 4).mesh, 7)
    model = FaceVQVAE(_tiny_config(vertex_average=True, head="linear")).eval()
    codes = model.encode_codes([qm])[0]  # (F, 3, 2)
    for v in range(len(qm.vertices)):
        at = codes[qm.faces == v]  # every slot of vertex v
        assert (at == at[0]).all()
    assert model.decode_codes([codes])[0].shape == (qm.n_faces, 3, 3)


def test_config_validation():
    with pytest.raises(ValueError, match="slots"):
        FaceVQVAEConfig(slots=2)
    with pytest.raises(ValueError, match="odd"):
        FaceVQVAEConfig(decoder_kernel=4)


# ---- the tokenizer ------------------------------------------------------------------------------------------
def test_tokenizer_round_trip_and_layout(overfit):
    _, quantized, path = overfit
    tok = get_tokenizer("vqvae", checkpoint=path)
    assert "vqvae" in list_tokenizers() and tok.lossless is False
    assert tok.vocab_size == 64 + 3 and tok.special_tokens == {"pad": 64, "bos": 65, "eos": 66}
    assert tok.config == {"name": "vqvae", "bits": 7, "checkpoint": str(path.resolve()),
                          "checkpoint_sha256": tok.digest}
    meshes = _meshes()
    for mesh, qm in zip(meshes, quantized, strict=True):
        enc = tok.encode(mesh)
        assert enc.ids[0] == tok.bos_id and enc.ids[-1] == tok.eos_id and len(enc.ids) == 6 * qm.n_faces + 2
        assert enc.ids[1:-1].max() < 64 and enc.tokens_per_face == 6
        back, report = tok.decode_quantized(enc.ids)
        assert back.face_set() == qm.face_set() and report.error is None and report.dropped_faces == 0
        assert np.array_equal(get_tokenizer(**tok.config).encode(mesh).ids, enc.ids)
    batch = tok.encode_batch(meshes)
    assert all(np.array_equal(b.ids, tok.encode(m).ids) for b, m in zip(batch, meshes, strict=True))
    decoded = tok.decode_batch([b.ids for b in batch])
    assert [len(m.faces) for m in decoded] == [qm.n_faces for qm in quantized]
    roles = tok.token_roles(8)
    assert roles[0].tolist() == [-1, -1, -1] and roles[1:].tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1],
                                                                        [0, 2, 0], [0, 2, 1], [1, 0, 0]]


def test_tokenizer_strict_and_lenient_decoding(overfit):
    _, quantized, path = overfit
    tok = get_tokenizer("vqvae", checkpoint=path)
    ids = tok.encode_quantized(quantized[0])  # the box: 12 faces
    bad = ids.copy()
    bad[1 + 6 * 5 + 2] = tok.pad_id  # a special inside face 5
    with pytest.raises(TokenizationError, match="special token") as err:
        tok.decode_quantized(bad)
    assert err.value.position == 1 + 6 * 5 + 2
    qm, report = tok.decode_quantized(bad, strict=False)
    assert report.error_position == 1 + 6 * 5 + 2 and qm.n_faces <= 5
    cut = np.concatenate([ids[:-4], ids[-1:]])  # last face cut short
    with pytest.raises(TokenizationError, match="multiple of 6"):
        tok.decode_quantized(cut)
    with pytest.raises(TokenizationError, match="without EOS"):
        tok.decode_quantized(ids[:-1])
    qm, report = tok.decode_quantized(ids[:-1], strict=False)
    assert qm.n_faces == 12 and report.error_position == len(ids) - 1


def test_tokenizer_refuses_wrong_bits_other_weights_and_missing_checkpoint(overfit, tmp_path, monkeypatch):
    _, _, path = overfit
    with pytest.raises(ConfigError, match="works at 7 bits, not 10"):
        get_tokenizer("vqvae", checkpoint=path, bits=10)
    with pytest.raises(MeshInputError, match="weights differ"):
        get_tokenizer("vqvae", checkpoint=path, checkpoint_sha256="0" * 16)
    import tokenizers3d.vqvae as vqvae_mod

    monkeypatch.setattr(vqvae_mod, "DEFAULT_CHECKPOINT", tmp_path / "face-vqvae")
    with pytest.raises(MeshInputError, match="no bundled face VQ-VAE checkpoint.*train_face_vqvae.py"):
        get_tokenizer("vqvae")


def test_batch_tokenize_to_shards(overfit, tmp_path):
    from tokenizers3d.batch import batch_tokenize
    from tokenizers3d.shards import TokenShardDataset

    _, quantized, path = overfit
    src = tmp_path / "meshes"
    src.mkdir()
    for (family, _), mesh in zip(SHAPES, _meshes(), strict=True):
        mesh.export(src / f"{family}.ply")
    batch_tokenize(src, tmp_path / "shards", tokenizer="vqvae", tokenizer_config={"checkpoint": str(path)},
                   progress=False)
    data = TokenShardDataset(tmp_path / "shards", shuffle=False)
    tok = data.tokenizer()
    rows = {r["id"]: r for r in data}
    for (family, _), qm in zip(SHAPES, quantized, strict=True):
        assert tok.decode_quantized(rows[f"{family}.ply"]["ids"])[0].face_set() == qm.face_set()


# ---- command line -------------------------------------------------------------------------------------------
def test_cli_round_trip(overfit, tmp_path):
    _, quantized, path = overfit
    mesh = _meshes()[0].copy()
    mesh.apply_scale(3.0)
    mesh.apply_translation([5.0, -2.0, 1.0])
    src, npz, out = tmp_path / "box.obj", tmp_path / "t.npz", tmp_path / "back.obj"
    mesh.export(src)
    run = [sys.executable, "-m", "meshgen.cli"]
    proc = subprocess.run([*run, "tokenize", str(src), "-t", "vqvae", "--checkpoint", str(path), "-o", str(npz)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert stats["tokens_per_face"] == 6 and stats["tokenizer"]["bits"] == 7
    proc = subprocess.run([*run, "detokenize", str(npz), "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    back = trimesh.load(out, process=False)
    assert len(back.faces) == 12
    cell = 3.0 * np.ptp(np.asarray(_meshes()[0].vertices), axis=0).max() / 128
    assert np.allclose(np.sort(back.vertices, axis=0), np.sort(mesh.vertices, axis=0), atol=cell)


def _main_exit(capsys, *args) -> tuple[int, str]:
    from meshgen.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return exc.value.code, capsys.readouterr().err


def test_cli_checkpoint_missing_or_of_the_wrong_kind_exit_2(tmp_path, capsys, tiny_checkpoint):
    src = tmp_path / "box.ply"
    _meshes()[0].export(src)
    cases = [(tmp_path / "nothing", "face VQ-VAE checkpoint does not exist"),
             (tiny_checkpoint, "not a FaceVQVAE"),  # a generator directory
             (src, "is a file, expected a model directory")]
    for ckpt, match in cases:
        code, err = _main_exit(capsys, "tokenize", src, "-t", "vqvae", "--checkpoint", ckpt, "-o", tmp_path / "t.npz")
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], err
        assert str(ckpt) in lines[0]
    code, err = _main_exit(capsys, "tokenize", src, "-t", "coords", "--checkpoint", tmp_path, "-o", tmp_path / "t.npz")
    assert code == 2 and "--checkpoint is for the learned tokenizer" in err
    assert not (tmp_path / "t.npz").exists()


def test_rule_based_tokenizers_still_load_without_torch():
    code = ("import sys\nfrom tokenizers3d.base import get_tokenizer, list_tokenizers\n"
            "get_tokenizer('blocks', bits=7); print(list_tokenizers(), 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "['adjacent', 'blocks', 'coords', 'vat', 'vqvae'] False", proc.stderr


# ---- training script ----------------------------------------------------------------------------------------
def _train_module():
    spec = importlib.util.spec_from_file_location("train_face_vqvae", ROOT / "scripts" / "train_face_vqvae.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def test_training_script_resumes(tmp_path, one_thread):
    train = _train_module()
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "model: {bits: 7, dim: 32, coord_dim: 4, graph_layers: 1, decoder_layers: 1,\n"
        "        rvq: {dim: 8, depth: 2, codebook_size: 32}}\n"
        "data: {max_faces: 60, faces_per_batch: 60, val_meshes: 3, families: [box, pyramid, prism]}\n"
        "train: {steps: 3, log_every: 1, val_every: 2, ckpt_every: 2, warmup_steps: 1, threads: 1}\n")
    out = tmp_path / "run"
    first = train.main(["--config", str(cfg), "--out-dir", str(out)])
    assert first["step"] == 3 and (out / "last" / "trainer_state.pt").exists() and (out / "best" / "config.json").exists()
    second = train.main(["--config", str(cfg), "--out-dir", str(out), "--steps", "5"])
    assert second["step"] == 5 and second["steps_this_run"] == 2
    rows = (out / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,lr,loss") and [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4", "5"]
    model = FaceVQVAE.from_pretrained(out / "last")
    assert bool(model.quantizer.initialized)
    # batches are a function of (seed, index): a resumed run draws the batch a straight run would have drawn
    data = train.DataSection(max_faces=60, faces_per_batch=60, families=["box", "pyramid", "prism"])
    a = train.MeshBatches(model.config, data).meshes(4)
    b = train.MeshBatches(model.config, data, start=4).meshes(4)
    assert [m.face_set() for m in a] == [m.face_set() for m in b]


# ---- evaluation script --------------------------------------------------------------------------------------
def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_coarser_grid_baseline_against_brute_force():
    ev = _script("eval_face_vqvae")
    rng = np.random.default_rng(0)
    corners = rng.integers(0, 128, size=(200, 3, 3))
    corners[:20, 1] = corners[:20, 0] ^ 1  # corners one level apart: they merge on the 6-bit grid for even pairs
    back, alive = ev.coarser_corners(corners, 7)
    for f in range(len(corners)):
        coarse = [[int(c) // 2 for c in corner] for corner in corners[f].tolist()]  # 6-bit cell of each coordinate
        assert back[f].tolist() == [[2 * c + 1 for c in corner] for corner in coarse]  # its centre, read at 7 bits
        a, b, c = (np.array(x) for x in coarse)
        assert alive[f] == bool(np.any(np.cross(b - a, c - a)))
    assert np.abs(back - corners).max() <= 1 and not alive[:20].all()


def test_evaluation_rows_on_the_overfitted_model(overfit, tmp_path):
    ev = _script("eval_face_vqvae")
    _, quantized, path = overfit
    items = []
    for (family, _), mesh in zip(SHAPES, _meshes(), strict=True):
        mesh.export(tmp_path / f"{family}.ply")
        items.append((family, tmp_path / f"{family}.ply", family))
    toks = {"vqvae": get_tokenizer("vqvae", checkpoint=path), "coords@7": get_tokenizer("coords", bits=7),
            "coords@6": get_tokenizer("coords", bits=6)}
    rows = ev.evaluate_set(items, toks, bits=7, samples=500, seed=0, log=lambda m: None)
    faces = sum(qm.n_faces for qm in quantized)
    assert rows["vqvae"]["faces"] == faces and rows["vqvae"]["within_one"] == rows["vqvae"]["exact"] == 1.0
    assert rows["vqvae"]["tokens_per_face"] == 6 and rows["vqvae"]["faces_kept"] == 1.0
    assert rows["vqvae"]["within_one_by_group"] == {"box": 1.0, "cone": 1.0, "prism": 1.0, "pyramid": 1.0}
    assert rows["coords@7"]["exact"] == 1.0 and rows["coords@7"]["tokens_per_face"] == 9
    assert rows["vqvae"]["chamfer"] == pytest.approx(rows["coords@7"]["chamfer"])  # the same decoded meshes
    assert 0 < rows["coords@6"]["within_one"] <= 1.0 and rows["coords@6"]["exact"] < 1.0
