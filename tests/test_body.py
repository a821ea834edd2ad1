"""Body recovery (issue 12): synthetic data, the 2D pose tokenizer, the HMR model, ``meshgen body``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from meshgen.hmr import HMRConfig, HMRModel, hmr_losses, soft_argmax
from tokenizers3d.pose_tokens import PoseTokenizer, PoseTokenizerConfig, mask_joints, to_crop

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "assets" / "body" / "samples.npz"
POSE_CKPT = ROOT / "assets" / "checkpoints" / "pose-tokenizer"


def tiny_config(**kw) -> HMRConfig:
    base = dict(image_size=64, channels=(8, 16, 24, 32), width=32, layers=1, heads=2, n_vertices=32,
                n_full_vertices=40, n_full_faces=12, n_coarse_faces=0,
                pose_tokenizer=PoseTokenizerConfig(dim=16, blocks=1, n_tokens=4, code_dim=8, codebook_size=16))
    base.update(kw)
    return HMRConfig(**base)


def tiny_model(seed: int = 0, **kw) -> HMRModel:
    torch.manual_seed(seed)
    model = HMRModel(tiny_config(**kw))
    rng = np.random.default_rng(seed)
    c = model.config
    model.set_topology(rng.integers(0, c.n_vertices, (c.n_full_vertices, c.up_k)),
                       np.full((c.n_full_vertices, c.up_k), 1.0 / c.up_k), np.zeros((0, 3), dtype=np.int64),
                       rng.integers(0, c.n_full_vertices, (c.n_full_faces, 3)))
    return model


# ---- synthetic data (needs anny) ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def renderer():
    pytest.importorskip("anny")
    from renderers.body_data import BodyRenderer, BodyRenderSettings

    return BodyRenderer(BodyRenderSettings(image_size=96))


def test_body_examples_are_deterministic_by_seed(renderer, one_thread):
    a, b = renderer.example(10_003), renderer.example(10_003)
    for key in ("image", "keypoints", "joints", "vertices", "camera"):
        np.testing.assert_array_equal(a[key], b[key])
    c = renderer.example(10_004)
    assert not np.array_equal(a["image"], c["image"])


def test_keypoints_project_onto_the_rendered_body(renderer, one_thread):
    from renderers.body_data import project
    from tokenizers3d.part_sets import ANNY_PARTS

    LIMB_PART = {j: ANNY_PARTS.index(p) for j, p in {7: "arm_left", 8: "arm_right", 9: "arm_left", 10: "arm_right",
                                                        13: "leg_left", 14: "leg_right", 15: "leg_left",
                                                        16: "leg_right"}.items()}
    hits = total = limb_hits = limb_total = 0
    for seed in range(10_000, 10_012):
        ex = renderer.example(seed, occluded=False)
        uv, vis = ex["keypoints"][:, :2], ex["keypoints"][:, 2]
        np.testing.assert_allclose(uv, project(ex["joints"].astype(np.float64), ex["camera"].astype(np.float64)),
                                   atol=1e-3)
        mask = ex["mask"]
        face_part = renderer.parts[renderer.faces]  # (F, 3) part of each corner
        for j, ((u, v), s) in enumerate(zip(uv, vis, strict=True)):
            if s != 2:
                continue
            y, x = int(v), int(u)
            total += 1
            hits += bool(mask[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2].any())
            if j in LIMB_PART and ex["face_map"][y, x] >= 0:  # a wrist, elbow, knee or ankle: its own limb, its side
                limb_total += 1
                limb_hits += LIMB_PART[j] in face_part[ex["face_map"][y, x]]
    assert total > 40 and hits / total >= 0.95
    assert limb_total > 10 and limb_hits / limb_total >= 0.8, (limb_hits, limb_total)  # a mirrored x fails here


def test_occluders_hide_the_requested_share(renderer, one_thread):
    for seed in range(10_010, 10_014):
        clean, occ = renderer.example(seed, occluded=False), renderer.example(seed, occluded=True)
        assert clean["occlusion"] == 0.0
        assert 0.1 <= occ["occlusion"] <= 0.5
        np.testing.assert_array_equal(clean["vertices"], occ["vertices"])  # same body and camera


def test_coarse_topology_is_nested_and_upsamples_closely(renderer, one_thread):
    from renderers.body_data import CoarseTopology, farthest_points, upsample

    pts = np.random.default_rng(0).normal(size=(500, 3))
    np.testing.assert_array_equal(farthest_points(pts, 40)[:10], farthest_points(pts, 10))
    topo = CoarseTopology.build(renderer.body, 128)
    assert len(topo.faces) > 100 and topo.faces.max() < 128
    fit = renderer.full_vertices(range(10_020, 10_028))
    held = renderer.full_vertices(range(10_030, 10_032))
    nbr, w = topo.upsample_map(fit, 128, renderer.body.template)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-5)
    err = np.linalg.norm(upsample(held[:, topo.index[:128]], nbr, w) - held, axis=-1).mean()
    assert err < 0.01  # metres


def test_frozen_topology_is_the_bundled_models_and_datasets_record_it(renderer, tmp_path, one_thread):
    """The coarse vertices a dataset holds are those the bundled model's upsampling map was fitted for: true coarse
    vertices through its map land within a few mm of the true full body (the map's floor; with a recomputed set
    it was 16.5 mm). A dataset made with another topology is refused with one clear error."""
    import torch

    import renderers.body_data as bd
    from meshgen.hmr import HMRModel
    from tokenizers3d.errors import MeshInputError

    checkpoint = ROOT / "assets" / "checkpoints" / "body-hmr"
    if not (checkpoint / "model.safetensors").exists():
        pytest.skip("no bundled body weights")
    model = HMRModel.from_pretrained(checkpoint)
    q = model.config.n_vertices
    index = bd.frozen_coarse_index(len(renderer.body.template))
    assert len(set(index.tolist())) == len(index) == bd.COARSE_VERTICES
    np.testing.assert_array_equal(renderer.topology.index, index)
    full = renderer.full_vertices([bd.split_seed("test", i) for i in range(4)])
    pelvis_free = torch.as_tensor(full[:, index[:q]], dtype=torch.float32)
    floor = np.linalg.norm(model.full_vertices(pelvis_free).numpy() - full, axis=-1).mean()
    assert floor < 0.005, floor  # metres
    bd.write_body_dataset(tmp_path / "d", "val", 2, shard_size=2, settings=bd.BodyRenderSettings(image_size=64),
                          progress=False)
    assert len(bd.load_body_split(tmp_path / "d", "val")["seed"]) == 2
    meta = json.loads((tmp_path / "d" / "index.json").read_text())
    meta["meta"]["coarse_topology"] = "0" * 16
    (tmp_path / "d" / "index.json").write_text(json.dumps(meta))
    with pytest.raises(MeshInputError, match="another coarse body topology"):
        bd.load_body_split(tmp_path / "d", "val")


def test_overlay_of_the_true_body_covers_its_silhouette(renderer, one_thread):
    from meshgen.body import fit_weak_perspective, overlay_image
    from renderers.body_data import root_relative
    from tokenizers3d.pose_tokens import to_crop as crop

    seed = 10_040
    ex = renderer.example(seed, occluded=False)
    full = renderer.full_vertices([seed])[0]
    joints = root_relative(ex["joints"].astype(np.float64), ex["joints"].astype(np.float64))
    cam = fit_weak_perspective(joints, crop(ex["keypoints"][:, :2], 96))
    black = np.zeros((96, 96, 3), dtype=np.uint8)
    drawn = overlay_image(black, full, renderer.faces, cam, 1.0, (0, 0), max_side=96).sum(-1) > 0
    inter, union = (drawn & ex["mask"]).sum(), (drawn | ex["mask"]).sum()
    assert inter / union > 0.7


def test_missing_anny_is_a_clear_error(monkeypatch):
    import renderers.body_data as bd

    bd._anny.cache_clear()
    monkeypatch.setitem(sys.modules, "anny", None)
    with pytest.raises(ImportError, match="pip install 'meshgen\\[human\\]'"):
        bd.BodyModel()
    bd._anny.cache_clear()
    monkeypatch.setattr(bd, "human_available", lambda: False)
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import make_body_dataset
    finally:
        sys.path.pop(0)
    assert make_body_dataset.main(["-o", "unused"]) == 2


def test_dataset_shards_resume(renderer, tmp_path, one_thread, monkeypatch):
    import renderers.body_data as bd

    monkeypatch.setattr(bd, "BodyRenderer", lambda settings: renderer)
    settings = bd.BodyRenderSettings(image_size=96)
    bd.write_body_dataset(tmp_path, "val", 3, shard_size=2, settings=settings, progress=False)
    first = (tmp_path / "val" / "shard-00000.npz").stat().st_mtime_ns
    (tmp_path / "val" / "shard-00001.npz").unlink()  # as if killed before the last shard
    bd.write_body_dataset(tmp_path, "val", 3, shard_size=2, settings=settings, progress=False)
    assert (tmp_path / "val" / "shard-00000.npz").stat().st_mtime_ns == first
    data = bd.load_body_split(tmp_path, "val")
    assert data["image"].shape == (3, 96, 96, 3) and list(data["seed"]) == [1000, 1001, 1002]
    bd.write_body_dataset(tmp_path, "val", 4, shard_size=2, settings=settings, progress=False)  # n grows
    assert list(bd.load_body_split(tmp_path, "val")["seed"]) == [1000, 1001, 1002, 1003]
    bd.write_body_dataset(tmp_path, "val", 2, shard_size=2, settings=settings, progress=False)  # n shrinks
    assert list(bd.load_body_split(tmp_path, "val")["seed"]) == [1000, 1001]
    with pytest.raises(ValueError, match="shards of 2"):
        bd.write_body_dataset(tmp_path, "val", 2, shard_size=3, settings=settings, progress=False)
    with pytest.raises(ValueError, match="past its end"):
        bd.write_body_dataset(tmp_path, "test", 1001, settings=settings, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        bd.write_body_dataset(tmp_path, "val", 3, settings=bd.BodyRenderSettings(image_size=64), progress=False)


def test_pose_examples_are_the_labels_without_the_image(renderer, tmp_path, one_thread, monkeypatch):
    """The ``poses`` split: the labels of the rendered example of the same seed (bodies posed in one batch), every
    joint in the image visible (no occlusion test without rendering), its own train seeds, no image array."""
    import renderers.body_data as bd

    a = renderer.example(10_003)
    b, c = renderer.pose_examples([10_003, 10_004])
    for key in ("joints", "vertices", "camera"):
        np.testing.assert_allclose(a[key], b[key], atol=1e-5)
    np.testing.assert_allclose(a["keypoints"][:, :2], b["keypoints"][:, :2], atol=1e-3)
    assert np.array_equal(b["keypoints"][:, 2], np.where(a["keypoints"][:, 2] > 0, 2.0, 0.0))
    assert not np.allclose(b["joints"], c["joints"])
    monkeypatch.setattr(bd, "BodyRenderer", lambda settings: renderer)
    bd.write_body_dataset(tmp_path, "poses", 3, shard_size=2, settings=bd.BodyRenderSettings(image_size=96),
                          progress=False)
    data = bd.load_body_split(tmp_path, "poses")
    assert "image" not in data and data["vertices"].shape[0] == 3
    assert list(data["seed"]) == [bd.POSE_SEED_OFFSET + 10_000 + i for i in range(3)]


# ---- pose tokenizer --------------------------------------------------------------------------------------
def test_pose_tokenizer_shapes_and_save_load(tmp_path, one_thread):
    torch.manual_seed(0)
    tok = PoseTokenizer(PoseTokenizerConfig(dim=32, blocks=1, n_tokens=8, codebook_size=32)).eval()
    kp = torch.rand(5, 17, 2) * 2 - 1
    ids = tok.encode(kp)
    assert ids.shape == (5, 8) and ids.dtype == torch.long and int(ids.max()) < 32
    assert tok.decode(ids).shape == (5, 17, 2)
    tok.save_pretrained(tmp_path / "tok")
    again = PoseTokenizer.from_pretrained(tmp_path / "tok")
    assert torch.equal(again.encode(kp), ids)
    with pytest.raises(ValueError):
        tok.decode(torch.full((1, 8), 32))
    with pytest.raises(ValueError):
        tok.encode(torch.zeros(2, 16, 2))


def test_mask_joints_hides_invisible_joints():
    g = torch.Generator().manual_seed(0)
    kp = torch.rand(64, 17, 2)
    visible = torch.rand(64, 17) > 0.3
    inp, conf = mask_joints(kp, visible, g, max_share=0.4, noise=0.0)
    assert not bool(conf[~visible].any())
    assert bool((inp[conf == 0] == 0).all())
    assert 0.5 < float(conf[visible].mean()) < 1.0


def test_pose_tokenizer_overfits_poses(one_thread):
    torch.manual_seed(0)
    tok = PoseTokenizer(PoseTokenizerConfig(dim=64, blocks=2, n_tokens=8, codebook_size=64))
    kp = torch.rand(16, 17, 2) * 1.6 - 0.8
    opt = torch.optim.AdamW(tok.parameters(), lr=3e-3)
    for _ in range(300):
        out = tok(kp, torch.ones(16, 17))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    tok.eval()
    err = (tok.decode(tok.encode(kp)) - kp).norm(dim=-1).mean()
    assert float(err) < 0.08  # < 5 px at 128 px


@pytest.mark.skipif(not (POSE_CKPT / "config.json").exists() or not SAMPLES.exists(),
                    reason="the shipped pose tokenizer and samples")
def test_shipped_pose_tokenizer_round_trip_within_a_few_pixels():
    tok = PoseTokenizer.from_pretrained(POSE_CKPT).eval()
    poses = np.load(SAMPLES)["poses"]
    size = 128.0
    kp = torch.as_tensor(to_crop(poses[..., :2], size), dtype=torch.float32)
    err_px = (tok.decode(tok.encode(kp)) - kp).norm(dim=-1).mean() * size / 2
    assert float(err_px) < 4.0


# ---- the HMR model ---------------------------------------------------------------------------------------
def test_soft_argmax_finds_the_peak():
    h = torch.full((1, 2, 16, 16), -30.0)
    h[0, 0, 3, 12] = 30.0
    h[0, 1, 15, 0] = 30.0
    xy = soft_argmax(h)
    np.testing.assert_allclose(xy[0, 0].numpy(), [(12.5 / 8) - 1, (3.5 / 8) - 1], atol=1e-4)
    np.testing.assert_allclose(xy[0, 1].numpy(), [(0.5 / 8) - 1, (15.5 / 8) - 1], atol=1e-4)


def test_hmr_shapes_and_pose_token_ablation(one_thread):
    x = torch.rand(2, 3, 64, 64)
    with_tokens, without = tiny_model(pose_tokens=True).eval(), tiny_model(pose_tokens=False).eval()
    a, b = with_tokens(x), without(x)
    assert a.joints.shape == (2, 17, 3) and a.vertices.shape == (2, 32, 3) and a.camera.shape == (2, 3)
    assert a.pose_ids.shape == (2, 4) and b.pose_ids is None
    assert with_tokens.full_vertices(a.vertices).shape == (2, 40, 3)
    # the pose arm reads the tokens (another codebook changes its output); the ablation never does
    with torch.no_grad():
        for m in (with_tokens, without):
            m.tokenizer.quantizer.codebook.mul_(-3.0)
    assert not torch.allclose(with_tokens(x).joints, a.joints)
    assert torch.equal(without(x).joints, b.joints)
    # training mode keeps the tokenizer frozen: no EMA update, no dead-code restart
    with_tokens.train()
    book = with_tokens.tokenizer.quantizer.codebook.clone()
    for _ in range(3):
        with_tokens(x)
    assert not with_tokens.tokenizer.training and torch.equal(book, with_tokens.tokenizer.quantizer.codebook)


def test_pose_tokens_from_given_keypoints(one_thread):
    """The diagnosis path of eval_body --pose-from: given keypoints replace the head's as the tokens' input."""
    torch.manual_seed(0)
    model = tiny_model(pose_tokens=True).eval()
    x = torch.rand(2, 3, 64, 64)
    own = model(x)
    same = model(x, pose_keypoints=own.keypoints, pose_confidence=own.visibility.sigmoid())
    assert torch.equal(same.pose_ids, own.pose_ids) and torch.allclose(same.joints, own.joints)
    far = torch.tensor([[0.9, -0.9]]).repeat(2, 17, 1)
    other = model(x, pose_keypoints=far, pose_confidence=torch.ones(2, 17))
    assert torch.equal(other.keypoints, own.keypoints)  # the head still runs and is reported
    assert not torch.equal(other.pose_ids, own.pose_ids) or not torch.allclose(other.joints, own.joints)
    mixed = model(x, pose_keypoints=far, pose_confidence=torch.ones(2, 17), pose_rows=torch.tensor([True, False]))
    assert torch.equal(mixed.pose_ids[0], other.pose_ids[0]) and torch.equal(mixed.pose_ids[1], own.pose_ids[1])
    assert torch.allclose(mixed.joints[1], own.joints[1], atol=1e-5)  # per-row teacher (train_hmr --pose-teacher)


def test_hidden_image_tokens(one_thread):
    """Modality dropout (train_hmr --image-drop): hidden image tokens cannot change the output; others can."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from train_hmr import hidden_image_tokens

    torch.manual_seed(0)
    model = tiny_model(pose_tokens=True).eval()
    n_img = (model.config.image_size // 16) ** 2
    x = torch.rand(2, 3, 64, 64)
    none = torch.zeros(2, n_img, dtype=torch.bool)
    assert torch.allclose(model(x, image_hidden=none).joints, model(x).joints, atol=1e-6)
    hidden = none.clone()
    hidden[:, 0] = True
    a = model(x, image_hidden=hidden)
    with torch.no_grad():
        model.img_pos[0] += 5.0  # moves only the hidden token
    assert torch.allclose(model(x, image_hidden=hidden).joints, a.joints, atol=1e-5)
    assert not torch.allclose(model(x).joints, a.joints, atol=1e-4)
    rows = hidden_image_tokens(np.random.default_rng(0), 400, n_img, 0.5)
    assert rows.shape == (400, n_img) and rows.dtype == torch.bool
    share = rows.any(1).float().mean().item()
    assert 0.4 < share < 0.6 and rows[rows.any(1)].float().mean() > 0.5


def test_train_hmr_with_pose_only_batches(renderer, tmp_path, one_thread, monkeypatch):
    """scripts/train_hmr.py --pose-only-batch: a tiny run on a tiny dataset trains with pose-only batches (their
    loss is logged) and keeps the checkpoints; the ablation refuses them; a dataset without poses is one line."""
    import csv
    import sys

    import renderers.body_data as bd
    from tokenizers3d.pose_tokens import PoseTokenizer

    sys.path.insert(0, str(ROOT / "scripts"))
    import train_hmr

    monkeypatch.setattr(bd, "BodyRenderer", lambda settings=None: renderer)
    settings = bd.BodyRenderSettings(image_size=96)
    for split, n in (("train", 4), ("val", 2)):
        bd.write_body_dataset(tmp_path / "data", split, n, shard_size=4, settings=settings, progress=False)
    torch.manual_seed(0)
    PoseTokenizer(tiny_config().pose_tokenizer).save_pretrained(tmp_path / "tok")
    model = json.dumps({"image_size": 96, "channels": [8, 16, 24, 32], "width": 32, "layers": 1, "heads": 2,
                        "n_vertices": 32})
    base = ["--data", str(tmp_path / "data"), "--tokenizer", str(tmp_path / "tok"), "--batch", "2", "--steps", "2",
            "--val-every", "2", "--threads", "1", "--model", model, "--pose-only-batch", "4"]
    assert train_hmr.main([*base, "--out", str(tmp_path / "none")]) == 2  # no poses split yet
    bd.write_body_dataset(tmp_path / "data", "poses", 8, shard_size=4, settings=settings, progress=False)
    assert train_hmr.main([*base, "--out", str(tmp_path / "run")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert rows and float(rows[-1]["pose_only"]) > 0
    assert (tmp_path / "run" / "best" / "config.json").exists()
    assert train_hmr.main([*base, "--out", str(tmp_path / "ablation"), "--no-pose-tokens"]) == 2
    # The ablation may start from the pose run's weights (both arms share the earlier stages); other configs may not.
    plain = [a for a in base if a not in ("--pose-only-batch", "4")]
    init = ["--init-from", str(tmp_path / "run" / "best"), "--steps", "1", "--val-every", "1"]
    assert train_hmr.main([*plain, *init, "--out", str(tmp_path / "abl2"), "--no-pose-tokens"]) == 0
    from meshgen.hmr import HMRModel
    start, abl = HMRModel.from_pretrained(tmp_path / "run" / "best"), HMRModel.from_pretrained(tmp_path / "abl2" / "best")
    assert not abl.config.pose_tokens and start.config.pose_tokens
    for name, value in start.tokenizer.state_dict().items():  # loaded, then left unused
        assert torch.equal(abl.tokenizer.state_dict()[name], value)
    wider = plain[:plain.index("--model")] + ["--model", model.replace('"width": 32', '"width": 48')]
    assert train_hmr.main([*wider, *init, "--out", str(tmp_path / "other")]) == 2
    # --keypoint-net: a separate 2D pose estimator, installed frozen into the model (its weights as given)
    from meshgen.keypoints import KeypointConfig, KeypointNet

    torch.manual_seed(2)
    net = KeypointNet(KeypointConfig(image_size=96, channels=(8, 16, 16, 16), decoder=16, attention_heads=2))
    net.save_pretrained(tmp_path / "net")
    with_net = [*plain, *init, "--keypoint-net", str(tmp_path / "net")]
    assert train_hmr.main([*with_net, "--out", str(tmp_path / "kp")]) == 0
    carried = HMRModel.from_pretrained(tmp_path / "kp" / "best")
    assert carried.config.keypoint_net == net.config
    for name, value in net.state_dict().items():
        assert torch.equal(carried.keypoint_net.state_dict()[name], value)
    assert train_hmr.main([*with_net, "--out", str(tmp_path / "kp_abl"), "--no-pose-tokens"]) == 2


def test_lift_is_the_model_without_its_image(one_thread):
    """HMRModel.lift (pose-only training): the body from a 2D pose alone equals the full forward with every image
    token hidden and the same keypoints as the tokens' input; the ablation has nothing to lift."""
    torch.manual_seed(0)
    model = tiny_model(pose_tokens=True).eval()
    n_img = (model.config.image_size // 16) ** 2
    kp, conf = torch.rand(2, 17, 2) * 2 - 1, (torch.rand(2, 17) > 0.3).float()
    lifted = model.lift(kp, conf)
    full = model(torch.rand(2, 3, 64, 64), pose_keypoints=kp, pose_confidence=conf,
                 image_hidden=torch.ones(2, n_img, dtype=torch.bool))
    assert torch.equal(lifted.pose_ids, full.pose_ids)
    for name in ("joints", "vertices", "camera"):
        torch.testing.assert_close(getattr(lifted, name), getattr(full, name), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(model.lift(kp.flip(1), conf).joints, lifted.joints)
    with pytest.raises(ValueError, match="no 2D pose"):
        tiny_model(pose_tokens=False).lift(kp, conf)


def test_pose_only_inputs_hide_the_joints_under_a_box():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from train_hmr import pose_only_inputs

    rng = np.random.default_rng(0)
    truth = torch.rand(400, 17, 2) * 1.6 - 0.8
    inside = torch.ones(400, 17, dtype=torch.bool)
    inside[:, 0] = False
    kp, conf = pose_only_inputs(rng, truth, inside, 0.01)
    assert kp.shape == truth.shape and 0.005 < float((kp - truth).std()) < 0.02
    assert (conf[:, 0] == 0).all()  # outside the image: never confident
    boxed = (conf[:, 1:] == 0).any(1)
    assert 0.35 < float(boxed.float().mean()) <= 0.5  # only the boxed half hides joints (a box may catch none)
    assert 0.03 < float((conf[boxed, 1:] == 0).float().mean()) < 0.8


def test_eval_body_pose_sources_and_prediction(one_thread):
    """scripts/eval_body.py --pose-from: true keypoints (confidence 1 inside the image), another image's keypoints,
    or the head's; predictions come back as arrays whichever the tokens read."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from eval_body import pose_inputs, predict

    rng = np.random.default_rng(0)
    kp = np.concatenate([rng.uniform(0, 64, (3, 17, 2)), rng.integers(0, 3, (3, 17, 1))], axis=-1)
    data = {"keypoints": kp.astype(np.float32), "camera": np.tile([0, 0, 0, 64.0], (3, 1)).astype(np.float32)}
    assert pose_inputs(data, "head") is None
    truth, conf = pose_inputs(data, "truth")
    assert truth.shape == (3, 17, 2) and np.abs(truth).max() <= 1.0
    assert np.array_equal(conf, (kp[..., 2] > 0).astype(np.float32))
    shuffled, _ = pose_inputs(data, "shuffled")
    assert np.array_equal(shuffled[1], truth[0]) and np.array_equal(shuffled[0], truth[2])
    model = tiny_model(pose_tokens=True).eval()
    images = rng.integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    own, given = predict(model, images), predict(model, images, pose=(truth, conf))
    assert own["joints"].shape == given["joints"].shape == (3, 17, 3)
    assert np.array_equal(own["keypoints"], given["keypoints"])  # the head is reported either way
    # head-hard: the head's own keypoints, the joints it calls hidden masked (confidence 0)
    assert pose_inputs(data, "head-hard") is None
    hard = predict(model, images, hard_visibility=True)
    with torch.no_grad():
        out = model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0)
    mask = (out.visibility > 0).float().numpy()
    explicit = predict(model, images, pose=(out.keypoints.numpy(), mask))
    assert np.allclose(hard["joints"], explicit["joints"], atol=1e-5)


def test_tiny_hmr_overfits_eight_images(one_thread):
    data = np.load(SAMPLES) if SAMPLES.exists() else pytest.skip("assets/body/samples.npz")
    from renderers.body_data import root_relative

    torch.manual_seed(0)
    model = HMRModel(tiny_config(image_size=128, n_vertices=64, layers=2, width=64, channels=(16, 24, 32, 64)))
    img = torch.as_tensor(data["image"]).permute(0, 3, 1, 2).float() / 255.0
    vis = data["keypoints"][..., 2]
    batch = {"images": img,
             "joints": torch.as_tensor(root_relative(data["joints"], data["joints"]), dtype=torch.float32),
             "vertices": torch.as_tensor(root_relative(data["vertices"][:, :64], data["joints"]), dtype=torch.float32),
             "keypoints": torch.as_tensor(to_crop(data["keypoints"][..., :2], 128), dtype=torch.float32),
             "inside": torch.as_tensor(vis > 0), "visible": torch.as_tensor(vis == 2)}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    for _ in range(250):
        terms = hmr_losses(model(batch["images"]), batch, model)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        out = model(batch["images"])
    pve = float((out.vertices - batch["vertices"]).norm(dim=-1).mean())
    mean_pose = float((batch["vertices"].mean(0) - batch["vertices"]).norm(dim=-1).mean())
    assert pve < 0.35 * mean_pose, (pve, mean_pose)


# ---- meshgen body ----------------------------------------------------------------------------------------
def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "meshgen.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def tiny_body_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("body") / "hmr"
    tiny_model(image_size=64).eval().save_pretrained(path)
    return path


def test_body_command_writes_mesh_json_and_overlay(tiny_body_checkpoint, tmp_path):
    from PIL import Image

    img = tmp_path / "person.png"
    Image.fromarray((np.random.default_rng(0).random((80, 50, 3)) * 255).astype(np.uint8)).save(img)
    out = tmp_path / "body.obj"
    r = _cli("body", str(img), "-o", str(out), "--checkpoint", str(tiny_body_checkpoint))
    assert r.returncode == 0, r.stderr
    meta = json.loads(out.with_suffix(".json").read_text())
    assert len(meta["joints"]) == 17 and len(meta["keypoints"]) == 17 and len(meta["pose_tokens"]) == 4
    import trimesh

    mesh = trimesh.load(out, process=False)
    assert len(mesh.faces) == 12  # the tiny model's 12 (random) faces; unused vertices are not written
    overlay = np.asarray(Image.open(out.with_suffix(".png")))
    assert abs(overlay.shape[0] / overlay.shape[1] - 80 / 50) < 0.05


@pytest.mark.parametrize("content", [b"", b"this is not an image"])
def test_body_command_refuses_bad_images(tiny_body_checkpoint, tmp_path, content):
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    out = tmp_path / "out.obj"
    r = _cli("body", str(bad), "-o", str(out), "--checkpoint", str(tiny_body_checkpoint))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "bad.png" in r.stderr
    assert not out.exists() and not list(tmp_path.glob("out*"))


def test_load_image_reads_grey_rgba_16_bit_and_rotated_images(tmp_path):
    from PIL import Image

    from meshgen.body import load_image, square_crop

    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((20, 30), 100, dtype=np.uint8)).save(grey)
    assert load_image(grey).shape == (20, 30, 3) and int(load_image(grey)[0, 0, 0]) == 100
    rgba = np.zeros((20, 30, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red, fully transparent: the grey behind shows
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert tuple(load_image(tmp_path / "rgba.png")[0, 0]) == (128, 128, 128)
    Image.fromarray(np.full((20, 30), 30000, dtype=np.uint16)).save(tmp_path / "deep.png")
    assert abs(int(load_image(tmp_path / "deep.png")[0, 0, 0]) - round(30000 / 65535 * 255)) <= 1
    im = Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6  # rotated 90 degrees: the upright picture is 30 high, 20 wide
    im.save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").shape[:2] == (30, 20)
    crop, scale, offset = square_crop(np.zeros((200, 50, 3), dtype=np.uint8), 64)
    assert crop.shape == (64, 64, 3) and scale == 200 / 64 and offset == (75, 0)


def test_body_command_never_overwrites_its_image(tiny_body_checkpoint, tmp_path):
    from PIL import Image

    img = tmp_path / "p.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(img)
    before = img.read_bytes()
    r = _cli("body", str(img), "-o", str(tmp_path / "p.obj"), "--checkpoint", str(tiny_body_checkpoint))
    assert r.returncode == 2 and "p.png" in r.stderr
    assert img.read_bytes() == before and not (tmp_path / "p.obj").exists()
    r = _cli("body", str(img), "-o", str(tmp_path / "q.png"), "--checkpoint", str(tiny_body_checkpoint))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_body_command_refuses_missing_or_wrong_checkpoints(tmp_path):
    from PIL import Image

    img = tmp_path / "p.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(img)
    r = _cli("body", str(img), "-o", str(tmp_path / "o.obj"), "--checkpoint", str(tmp_path / "nope"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    torch.manual_seed(0)
    PoseTokenizer(PoseTokenizerConfig(dim=16, blocks=1, n_tokens=4, codebook_size=8)).save_pretrained(tmp_path / "tok")
    r = _cli("body", str(img), "-o", str(tmp_path / "o.obj"), "--checkpoint", str(tmp_path / "tok"))
    assert r.returncode == 2 and "HMRModel" in r.stderr


def test_body_folder_survives_bad_images_and_resumes(tiny_body_checkpoint, tmp_path):
    from PIL import Image

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    for name in ("a.png", "a.jpg", "sub/b.jpg"):
        Image.fromarray((np.random.default_rng(1).random((40, 40, 3)) * 255).astype(np.uint8)).save(src / name)
    (src / "broken.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "out"
    r = _cli("body", str(src), "-o", str(out), "--checkpoint", str(tiny_body_checkpoint), "--no-preview")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["done"] == 3 and report["failed"] == 1
    assert (out / "a_png.obj").exists() and (out / "a_jpg.obj").exists() and (out / "sub" / "b.obj").exists()
    assert "broken.png" in (out / "failures.jsonl").read_text()
    r = _cli("body", str(src), "-o", str(out), "--checkpoint", str(tiny_body_checkpoint), "--no-preview")
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["done"] == 0 and report["skipped"] == 3


@pytest.mark.skipif(not (ROOT / "assets" / "checkpoints" / "body-hmr" / "config.json").exists() or not SAMPLES.exists(),
                    reason="the shipped body model and samples")
def test_shipped_body_model_beats_the_mean_body_on_the_samples(one_thread):
    from meshgen.body import load_body_model
    from renderers.body_data import root_relative

    data = np.load(SAMPLES)
    model = load_body_model(None)
    q = model.config.n_vertices
    with torch.no_grad():
        out = model(torch.as_tensor(data["image"]).permute(0, 3, 1, 2).float() / 255.0)
    pred = out.vertices.numpy() - out.joints.numpy()[:, 11:13].mean(axis=1, keepdims=True)
    true = root_relative(data["vertices"][:, :q], data["joints"])
    model_err = np.linalg.norm(pred - true, axis=-1).mean()
    mean_err = np.linalg.norm(true.mean(axis=0) - true, axis=-1).mean()  # the best single body for these 8
    assert model_err < 0.9 * mean_err, (model_err, mean_err)


def test_ship_body_carries_the_bundled_cards_history():
    """scripts/ship_body.py: a run warm-started from the bundled weights keeps the earlier stages and their commands
    from the bundled card (the runs that made them may be long gone)."""
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    from ship_body import card_history

    card = (ROOT / "assets" / "checkpoints" / "body-hmr" / "README.md").read_text()
    stages, cmds = card_history(card)
    assert len(stages) >= 1 and len(cmds) == len(stages)
    assert all("--no-pose-tokens" not in c and c.startswith("python scripts/train_hmr.py") for c in cmds)
    assert all(c.rstrip()[-1] != "\\" for c in cmds)  # whole commands, continuation lines included
    made = "* Stages: 1 (runs/a): 10 steps; 2 (runs/b, warm-started from the previous stage): 5 steps; the last " \
           "stage is this run.\n\n## Reproduce\n\n```bash\npython scripts/train_hmr.py --out runs/a \\\n    --lr 1\n" \
           "python scripts/train_hmr.py --out runs/a_nopose --no-pose-tokens\n" \
           "python scripts/train_hmr.py --out runs/b --init-from runs/a/best\n```\n"
    assert card_history(made) == (["runs/a): 10 steps", "runs/b, warm-started from the previous stage): 5 steps"],
                                  ["python scripts/train_hmr.py --out runs/a \\\n    --lr 1",
                                   "python scripts/train_hmr.py --out runs/b --init-from runs/a/best"])
    assert card_history("# a card without stages\n") == ([], [])
    from ship_body import drop_chain_stages

    stages, cmds = card_history(made)  # a card made from runs/b, then runs/b -> runs/c shipped: runs/b once
    assert drop_chain_stages(stages, cmds, [Path("runs/b"), Path("runs/c")]) == (
        ["runs/a): 10 steps"], ["python scripts/train_hmr.py --out runs/a \\\n    --lr 1"])
