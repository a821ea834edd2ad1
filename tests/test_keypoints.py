"""The body model's own 2D pose estimator (meshgen.keypoints), its training script and its place in HMRModel."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from meshgen.hmr import HMRModel, attach_keypoint_net
from meshgen.keypoints import (
    HIDDEN,
    OUTSIDE,
    SEEN,
    KeypointConfig,
    KeypointNet,
    heatmap_targets,
    keypoint_losses,
    soft_argmax,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import train_keypoints  # noqa: E402

sys.path.pop(0)
TINY = KeypointConfig(image_size=64, channels=(8, 16, 16, 16), decoder=16, attention_heads=2)


def test_heatmap_targets_peak_on_the_keypoint_and_soft_argmax_reads_it_back():
    kp = torch.tensor([[[0.1, -0.3], [-0.62, 0.5]]])
    t = heatmap_targets(kp, 32, 1.0)
    assert t.shape == (1, 2, 1024)
    torch.testing.assert_close(t.sum(-1), torch.ones(1, 2))
    back = soft_argmax(torch.log(t.clamp_min(1e-30)).view(1, 2, 32, 32))
    torch.testing.assert_close(back, kp, atol=2e-3, rtol=0)
    cell = int(t[0, 0].argmax())
    assert abs((cell % 32 + 0.5) / 16 - 1 - 0.1) <= 1 / 32 and abs((cell // 32 + 0.5) / 16 - 1 + 0.3) <= 1 / 32


def test_losses_count_hidden_joints_and_skip_those_outside():
    torch.manual_seed(0)
    net = KeypointNet(TINY).eval()
    out = net(torch.rand(2, 3, 64, 64))
    assert out.keypoints.shape == (2, 17, 2) and out.heatmaps.shape == (2, 17, 16, 16)
    assert out.visibility.shape == (2, 17, 3) and bool(((out.inside >= 0) & (out.inside <= 1)).all())
    truth = torch.rand(2, 17, 2) * 2 - 1
    flags = torch.full((2, 17), SEEN)
    base = keypoint_losses(out, truth, flags, 1.0)
    moved = truth.clone()
    moved[:, 3] += 0.5
    flags_hidden = flags.clone()
    flags_hidden[:, 3] = HIDDEN
    assert keypoint_losses(out, moved, flags_hidden, 1.0)["keypoints"] != base["keypoints"]  # hidden: still a target
    flags_out = flags.clone()
    flags_out[:, 3] = OUTSIDE
    a, b = keypoint_losses(out, truth, flags_out, 1.0), keypoint_losses(out, moved, flags_out, 1.0)
    assert a["keypoints"] == b["keypoints"] and a["heatmap"] == b["heatmap"]  # outside: no position target


def test_a_tiny_net_learns_eight_images(one_thread):
    """Eight images, each a bright dot per joint: the net's error falls well below its start."""
    rng = np.random.default_rng(0)
    kp = rng.uniform(-0.8, 0.8, (8, 17, 2)).astype(np.float32)
    images = np.zeros((8, 3, 64, 64), dtype=np.float32)
    for i in range(8):
        for j in range(17):
            x, y = ((kp[i, j] + 1) * 32).astype(int)
            images[i, j % 3, y - 1:y + 2, x - 1:x + 2] = 1.0
    torch.manual_seed(0)
    net = KeypointNet(TINY)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x, t, f = torch.from_numpy(images), torch.from_numpy(kp), torch.full((8, 17), SEEN)
    with torch.no_grad():
        start = float((net.eval()(x).keypoints - t).abs().mean())
    net.train()
    for _ in range(150):
        opt.zero_grad()
        keypoint_losses(net(x), t, f, 1.0, (1.0, 5.0, 0.2))["loss"].backward()
        opt.step()
    with torch.no_grad():
        end = float((net.eval()(x).keypoints - t).abs().mean())
    assert end < 0.5 * start


def test_paste_occluders_hides_the_seen_joints_under_them():
    images = np.full((64, 32, 32, 3), 7, dtype=np.uint8)
    kp = np.random.default_rng(2).uniform(4, 28, (64, 17, 2))
    flags = np.full((64, 17), SEEN)
    flags[:, 0] = OUTSIDE
    flags[:, 1] = HIDDEN
    out, new = train_keypoints.paste_occluders(np.random.default_rng(3), images, kp, flags, 0.5)
    assert (images == 7).all()  # the input is not modified
    changed = (out != 7).any(axis=(1, 2, 3))
    assert 0.25 < changed.mean() < 0.75
    assert (new[:, 0] == OUTSIDE).all() and (new[:, 1] == HIDDEN).all()
    assert (new[~changed] == flags[~changed]).all()
    assert (new[changed] == HIDDEN).sum() > (flags[changed] == HIDDEN).sum()
    for i in np.nonzero(changed)[0]:  # a joint is newly hidden only where the picture changed under it
        for j in np.nonzero((new[i] == HIDDEN) & (flags[i] == SEEN))[0]:
            x, y = kp[i, j].astype(int)
            assert (out[i, y, x] != 7).any()
    again = train_keypoints.paste_occluders(np.random.default_rng(3), images, kp, flags, 0.5)
    assert np.array_equal(again[0], out) and np.array_equal(again[1], new)


def test_training_batch_flips_image_and_joints_together():
    """A dot at the left shoulder: on a flipped row it sits, mirrored, at the right shoulder's label."""
    n, size = 32, 64
    img = np.zeros((n, size, size, 3), dtype=np.uint8)
    img[:, 20, 10] = 255
    kp = np.zeros((n, 17, 3), dtype=np.float32)
    kp[..., :2] = 40.0
    kp[:, 5, :2] = (10.5, 20.5)
    kp[..., 2] = SEEN
    data = {"image": img, "keypoints": kp}
    b = train_keypoints.training_batch(data, np.arange(n), np.random.default_rng(0), 0.0)
    flipped = b["keypoints"][:, 6, 0] > 0.5
    assert 0 < flipped.sum() < n
    for i in range(n):
        j = 6 if flipped[i] else 5
        px = ((b["keypoints"][i, j] + 1) * size / 2).long()
        assert b["images"][i].sum(0)[px[1], px[0]] == b["images"][i].sum(0).max()
        assert b["flags"][i, j] == SEEN


def _fake_body_dataset(root: Path, size: int = 64, n: int = 8) -> None:
    """A body dataset's files without rendering: a dot per joint on random images."""
    from renderers.body_data import COARSE_VERTICES, FOV, coarse_index_digest
    from tokenizers3d.pose_tokens import N_JOINTS

    rng = np.random.default_rng(0)
    index = {"meta": {"coarse_topology": coarse_index_digest(), "coarse_vertices": COARSE_VERTICES, "fov": FOV},
             "splits": {}}
    for split, seed0 in (("train", 10_000), ("val", 1000)):
        kp = np.concatenate([rng.uniform(8, size - 8, (n, N_JOINTS, 2)), np.full((n, N_JOINTS, 1), SEEN)], -1)
        images = rng.integers(0, 60, (n, size, size, 3)).astype(np.uint8)
        for i in range(n):
            for x, y in kp[i, :, :2].astype(int):
                images[i, y - 1:y + 2, x - 1:x + 2] = 255
        (root / split).mkdir(parents=True)
        np.savez(root / split / "shard-00000.npz", image=images, keypoints=kp.astype(np.float32),
                 joints=np.zeros((n, N_JOINTS, 3), np.float32), vertices=np.zeros((n, 4, 3), np.float32),
                 camera=np.tile([[100.0, size / 2, size / 2, size]], (n, 1)).astype(np.float32),
                 occlusion=(np.arange(n) % 2).astype(np.float32), seed=np.arange(seed0, seed0 + n))
        index["splits"][split] = {"n": n, "shard_size": n, "shards": ["shard-00000.npz"]}
    (root / "index.json").write_text(json.dumps(index))


def test_train_keypoints_runs_resumes_and_refuses_bad_input(tmp_path, one_thread):
    _fake_body_dataset(tmp_path / "data")
    model = json.dumps({"image_size": 64, "channels": [8, 16, 16, 16], "decoder": 16, "attention_heads": 2})
    base = ["--data", str(tmp_path / "data"), "--batch", "4", "--val-every", "2", "--threads", "1", "--model", model]
    out = tmp_path / "run"
    assert train_keypoints.main([*base, "--steps", "2", "--out", str(out)]) == 0
    assert train_keypoints.main([*base, "--steps", "4", "--out", str(out)]) == 0  # resumes at step 2
    sessions = [json.loads(line) for line in open(out / "sessions.jsonl")]
    assert [s["from_step"] for s in sessions] == [0, 2]
    val = json.loads((out / "best" / "val.json").read_text())
    assert val["step"] in (2, 4) and val["px_clean"] > 0 and val["px_occluded"] > 0
    net = KeypointNet.from_pretrained(out / "best")
    assert net.config.channels == (8, 16, 16, 16)
    # the body model's card names the estimator its last stage installed, with its figures and command
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from ship_body import estimator_text
    finally:
        sys.path.pop(0)
    line, cmd = estimator_text([(tmp_path / "hmr", {"cfg": {"keypoint_net": str(out / "best")}})])
    assert f"{val['px_clean']:.2f} px clean" in line and f"step {val['step']}" in line
    assert cmd.startswith("python scripts/train_keypoints.py") and "--steps 4" in cmd and '"decoder": 16' in cmd
    assert estimator_text([(tmp_path / "hmr", {"cfg": {}})]) == ("", "")
    wrong = model.replace('"image_size": 64', '"image_size": 96')
    assert train_keypoints.main(["--data", str(tmp_path / "data"), "--model", wrong, "--out", str(tmp_path / "w")]) == 2
    assert train_keypoints.main(["--data", str(tmp_path / "none"), "--out", str(tmp_path / "n")]) == 2


def test_attached_estimator_feeds_the_pose_tokens_and_is_saved(tmp_path, one_thread):
    from test_body import tiny_model

    body = tiny_model(pose_tokens=True).eval()
    torch.manual_seed(1)
    net = KeypointNet(TINY).eval()
    model = attach_keypoint_net(body, net).eval()
    x = torch.rand(3, 3, 64, 64)
    out = model(x)
    est = net(x)
    torch.testing.assert_close(out.estimate.keypoints, est.keypoints)
    assert torch.equal(out.pose_ids, body(x, pose_keypoints=est.keypoints, pose_confidence=est.inside).pose_ids)
    torch.testing.assert_close(out.keypoints, body(x).keypoints)  # the head still runs
    assert not any(p.requires_grad for p in model.keypoint_net.parameters())
    model.train()
    assert not model.keypoint_net.training  # frozen batch norms
    model.save_pretrained(tmp_path / "m")
    again = HMRModel.from_pretrained(tmp_path / "m").eval()
    assert again.config == model.config and again.config.keypoint_net == TINY
    torch.testing.assert_close(again(x).joints, model.eval()(x).joints)
    with pytest.raises(ValueError, match="without pose tokens"):
        attach_keypoint_net(tiny_model(pose_tokens=False), net)
    with pytest.raises(ValueError, match="px images"):
        attach_keypoint_net(body, KeypointNet(KeypointConfig(image_size=96, channels=(8, 16, 16, 16), decoder=16,
                                                             attention_heads=2)))


def test_meshgen_body_reports_the_estimators_keypoints(one_thread):
    """recover_body (the job behind `meshgen body`): with an estimator inside the model, body.json's keypoints and
    visibility are the estimator's (mapped back to the image's pixels), not the auxiliary head's."""
    from test_body import tiny_model

    from meshgen.body import recover_body, square_crop

    torch.manual_seed(1)
    model = attach_keypoint_net(tiny_model(pose_tokens=True), KeypointNet(TINY)).eval()
    image = np.random.default_rng(0).integers(0, 255, (80, 64, 3)).astype(np.uint8)
    res = recover_body(model, image, overlay=False)
    crop, scale, (ox, oy) = square_crop(image, 64)
    with torch.no_grad():
        est = model.keypoint_net(torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255.0)
    expect = (est.keypoints[0].numpy() + 1.0) * 32.0 * scale - np.array([ox, oy])
    np.testing.assert_allclose(res.keypoints, expect, atol=1e-4)
    np.testing.assert_allclose(res.visibility, est.seen[0].numpy(), atol=1e-6)
