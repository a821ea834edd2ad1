"""The learned part-mask generator: network, loss, clustering, generator, checkpoints, training script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from renderers.mask_model import (
    LearnedMaskGenerator,
    PartMaskConfig,
    PartMaskNet,
    cluster_embeddings,
    discriminative_loss,
    view_features,
)
from renderers.masks import get_mask_generator
from renderers.render import MeshRenderer, RenderSettings
from tokenizers3d.errors import MeshInputError

ROOT = Path(__file__).resolve().parents[1]
TINY = PartMaskConfig(widths=(8, 16), embed_dim=4, groups=4, image_size=32)


def _partition_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Same partition of the pixels labelled >= 0 in both, up to renaming."""
    pairs = {(int(x), int(y)) for x, y in zip(a.reshape(-1), b.reshape(-1), strict=True) if x >= 0 or y >= 0}
    left = {x for x, _ in pairs}
    right = {y for _, y in pairs}
    return len(pairs) == len(left) == len(right) and -1 not in left and -1 not in right


def test_forward_shape_and_roundtrip(tmp_path):
    torch.manual_seed(0)
    net = PartMaskNet(TINY)
    x = torch.randn(2, 5, 32, 32)
    assert net(x).shape == (2, 4, 32, 32)
    net.save_pretrained(tmp_path / "m")
    again = PartMaskNet.from_pretrained(tmp_path / "m")
    assert again.config == TINY
    assert torch.equal(net(x), again(x))


def test_widths_must_divide_groups():
    with pytest.raises(ValueError, match="divisible"):
        PartMaskNet(PartMaskConfig(widths=(6, 12), groups=4))


def test_features_zero_off_object():
    normals = np.zeros((8, 8, 3), np.float32)
    normals[2:6, 2:6] = (0, 0, 1)
    depth = -np.ones((8, 8), np.float32)
    depth[2:6, 2:6] = 3.0
    depth[2:6, 4:6] = 3.5
    f = view_features(normals, depth)
    assert f.shape == (5, 8, 8)
    assert torch.all(f[:, 0, 0] == 0)
    assert f[4].sum() == 16  # foreground channel
    assert abs(float(f[3][f[4] > 0].mean())) < 1e-6  # depth is centred on the foreground mean
    assert float(f[3, 2, 5] - f[3, 2, 2]) == pytest.approx(1.0)  # 0.5 depth units -> 1.0


def test_discriminative_loss_zero_for_separated_tight_clusters():
    parts = torch.full((1, 6, 6), -1, dtype=torch.long)
    parts[0, :3] = 0
    parts[0, 3:] = 7
    emb = torch.zeros(1, 2, 6, 6)
    emb[0, 0, :3] = 2.0
    emb[0, 0, 3:] = -2.0  # means 4 apart > 2 delta_d = 3
    loss, terms = discriminative_loss(emb, parts, delta_v=0.5, delta_d=1.5, reg=0.0)
    assert float(loss) == 0.0 and terms["var"] == 0.0 and terms["dist"] == 0.0
    # the same parts on one embedding: pushed apart
    loss_same, terms_same = discriminative_loss(torch.zeros(1, 2, 6, 6), parts, reg=0.0)
    assert terms_same["dist"] == pytest.approx(9.0)  # (2 * 1.5 - 0)^2
    # parts of different images are not pushed apart
    two = torch.stack([parts[0].clamp_max(0).masked_fill(parts[0] < 0, -1)] * 2)
    loss_two, terms_two = discriminative_loss(torch.zeros(2, 2, 6, 6), two, reg=0.0)
    assert terms_two["dist"] == 0.0 and float(loss_two) == 0.0


def test_loss_gradient_pulls_pixels_to_their_mean():
    torch.manual_seed(0)
    parts = torch.zeros(1, 4, 4, dtype=torch.long)
    emb = (torch.randn(1, 3, 4, 4) * 3).requires_grad_()
    loss, _ = discriminative_loss(emb, parts, reg=0.0)
    loss.backward()
    spread0 = float(emb.detach().flatten(2).std(-1).mean())
    spread1 = float((emb - 0.1 * emb.grad).detach().flatten(2).std(-1).mean())
    assert spread1 < spread0


def test_clustering_recovers_planted_parts():
    rng = np.random.default_rng(0)
    truth = np.full((20, 20), -1)
    truth[2:10, 2:18] = 0
    truth[10:18, 2:9] = 1
    truth[10:18, 9:18] = 2
    centres = np.array([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0]])
    emb = np.zeros((3, 20, 20))
    fg = truth >= 0
    emb[:, fg] = (centres[truth[fg]] + rng.normal(scale=0.1, size=(fg.sum(), 3))).T
    labels = cluster_embeddings(emb, fg, radius=1.0, min_pixels=5)
    assert _partition_equal(labels, truth)
    assert np.all(labels[~fg] == -1)
    # deterministic for a seed
    assert np.array_equal(labels, cluster_embeddings(emb, fg, radius=1.0, min_pixels=5))


def test_clustering_drops_small_clusters():
    truth = np.full((10, 10), -1)
    truth[:, :8] = 0
    truth[0, 9] = 1
    fg = truth >= 0
    emb = np.zeros((2, 10, 10))
    emb[0][truth == 1] = 5.0
    labels = cluster_embeddings(emb, fg, radius=1.0, min_pixels=3)
    assert labels[0, 9] == -1 and np.all(labels[:, :8] == 0)


class _NormalNet(PartMaskNet):
    """Embeds every pixel at 3x its normal: faces of a box fall into separate clusters."""

    def forward(self, x):
        return torch.cat([x[:, :3] * 3.0, torch.zeros_like(x[:, :1])], dim=1)


def test_generator_end_to_end_on_a_render():
    box = trimesh.creation.box(extents=(1.0, 0.8, 0.6))
    out = MeshRenderer(RenderSettings(n_views=2, image_size=64)).render(box)
    gen = LearnedMaskGenerator(_NormalNet(TINY))
    for v in range(out.n_views):
        masks = gen.generate(out.image(v), normals=out.normals[v], depth=out.depth[v])
        fg = out.depth[v] > 0
        assert 2 <= len(masks) <= 3  # the visible faces of the box
        union = np.zeros_like(fg)
        for m in masks:
            assert m.mask.shape == fg.shape and 0 < m.score <= 1
            assert not (union & m.mask).any()  # a partition
            union |= m.mask
        assert not (union & ~fg).any()
        assert union.sum() > 0.9 * fg.sum()
    with pytest.raises(ValueError, match="normal and depth"):
        gen.generate(out.image(0))
    empty = gen.generate(out.image(0), normals=np.zeros_like(out.normals[0]), depth=-np.ones_like(out.depth[0]))
    assert empty == []


def test_registry_loads_a_checkpoint_and_refuses_a_bad_one(tmp_path):
    PartMaskNet(TINY).save_pretrained(tmp_path / "ok")
    gen = get_mask_generator("learned", checkpoint=tmp_path / "ok")
    assert isinstance(gen, LearnedMaskGenerator) and gen.model.config == TINY
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(MeshInputError, match="bad"):
        get_mask_generator("learned", checkpoint=tmp_path / "bad")


def test_training_script_runs_and_resumes(tmp_path):
    from renderers.part_views import DatasetConfig, write_part_views

    cfg = DatasetConfig(sets=("separate",), families=("table", "mug"), shapes={"train": 2, "val": 1},
                        views=2, image_size=32)
    write_part_views(tmp_path / "data", cfg)
    model = json.dumps({"widths": [8, 16], "embed_dim": 4, "groups": 4, "image_size": 32})
    cmd = [sys.executable, str(ROOT / "scripts" / "train_part_masks.py"), "--data", str(tmp_path / "data"),
           "--out", str(tmp_path / "run"), "--batch", "2", "--val-every", "2", "--ckpt-every", "2",
           "--model", model]
    first = subprocess.run([*cmd, "--steps", "2"], capture_output=True, text=True, cwd=ROOT)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "run" / "best" / "config.json").exists()
    assert json.loads(first.stdout.strip().splitlines()[-1])["step"] == 2
    second = subprocess.run([*cmd, "--steps", "4"], capture_output=True, text=True, cwd=ROOT)
    assert second.returncode == 0, second.stderr
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["2", "4"]  # resumed at step 2, no row repeated
    bad = subprocess.run([*cmd[:3], str(tmp_path / "nowhere"), *cmd[4:], "--steps", "1"], capture_output=True,
                         text=True, cwd=ROOT)
    assert bad.returncode == 2 and "index.json" in bad.stderr and "Traceback" not in bad.stderr


def test_ship_script_writes_card_and_refuses_other_weights(tmp_path):
    from renderers.part_views import DatasetConfig, write_part_views

    write_part_views(tmp_path / "data", DatasetConfig(sets=("separate",), families=("mug",),
                                                      shapes={"train": 1, "val": 1}, views=2, image_size=32))
    model = json.dumps({"widths": [8, 16], "embed_dim": 4, "groups": 4, "image_size": 32})
    run = tmp_path / "run"
    train = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_part_masks.py"), "--data",
                            str(tmp_path / "data"), "--out", str(run), "--batch", "2", "--steps", "2", "--val-every",
                            "2", "--model", model], capture_output=True, text=True, cwd=ROOT)
    assert train.returncode == 0, train.stderr
    rows = {"views: learned": {"12": {"miou": 0.5, "seconds": 1.0}}, "mesh: concave-cut": {"12": {"miou": 0.4,
                                                                                                    "seconds": 0.1}}}
    ev = {"settings": {"views": [12], "image_size": 64, "seeds": [0], "families": ["mug"], "split_components": True,
                       "mask_checkpoint": str(run / "best"), "command": "python scripts/eval_segmentation.py X"},
          "sets": {"fused": {"rows": rows, "objects": {"mug-0": {}}}}}
    (tmp_path / "ev.json").write_text(json.dumps(ev))
    ship = [sys.executable, str(ROOT / "scripts" / "ship_part_masks.py"), "--run", str(run), "--dest",
            str(tmp_path / "dest"), "--eval", str(tmp_path / "ev.json")]
    done = subprocess.run(ship, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    card = (tmp_path / "dest" / "README.md").read_text()
    assert "| views: learned | 0.500 |" in card and "python scripts/eval_segmentation.py X" in card
    assert PartMaskNet.from_pretrained(tmp_path / "dest").config.embed_dim == 4
    ev["settings"]["mask_checkpoint"] = str(tmp_path / "other")
    (tmp_path / "ev.json").write_text(json.dumps(ev))
    refused = subprocess.run(ship, capture_output=True, text=True, cwd=ROOT)
    assert refused.returncode == 2 and "not" in refused.stderr and "Traceback" not in refused.stderr


def test_shipped_checkpoint_is_the_default_and_finds_a_fused_chairs_parts(tmp_path):
    """The bundled weights load and are the default; on a fused chair (one piece, test seed) they find the parts
    the geometric masks merge (held out at 12 views, 256 px: 0.998 against 0.363)."""
    from renderers.mask_model import DEFAULT_CHECKPOINT, learned_available
    from renderers.masks import GeometricMaskGenerator
    from renderers.segment import MeshSegmenter, SegmentSettings, default_generator, segment_mesh_file
    from tokenizers3d.metrics import face_areas, matched_part_iou
    from tokenizers3d.part_sets import make_shape

    assert learned_available() and default_generator() == "learned"
    learned = LearnedMaskGenerator.from_pretrained()
    assert learned.model.config == PartMaskNet.from_pretrained(DEFAULT_CHECKPOINT).config
    shape = make_shape("fused", "chair", 0)
    settings = SegmentSettings(render=RenderSettings(n_views=6, image_size=128))
    areas = face_areas(shape.mesh)
    scores = {name: matched_part_iou(MeshSegmenter(gen, settings).segment(shape.mesh).labels, shape.face_labels,
                                     areas)[0]
              for name, gen in (("learned", learned), ("geometric", GeometricMaskGenerator()))}
    assert scores["learned"] >= 0.8 and scores["learned"] > scores["geometric"] + 0.2, scores
    box = tmp_path / "box.ply"
    trimesh.creation.box().export(box)
    res = segment_mesh_file(box, tmp_path / "seg.ply", views=2, image_size=64, preview=False)  # the default path
    assert res.n_masks > 0 and np.load(tmp_path / "seg.npy").shape == (len(res.labels),)


@pytest.mark.parametrize("args,match", [
    (["--generator", "sam"], "unknown --generator"),
    (["--generator", "learned", "--method", "mesh"], "needs --method views"),
    (["--generator", "geometric", "--sam-checkpoint", "x.pth"], "exclude each other"),
])
def test_generator_option_errors(tmp_path, args, match):
    box = tmp_path / "box.ply"
    trimesh.creation.box().export(box)
    proc = subprocess.run([sys.executable, "-m", "meshgen.cli", "segment", str(box), "-o", str(tmp_path / "o.ply"),
                           *args], capture_output=True, text=True, cwd=ROOT)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and match in lines[0], proc.stderr
    assert not (tmp_path / "o.ply").exists()
