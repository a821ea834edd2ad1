"""Fresh procedural training data, token kinds, grid conditioning and classifier-free-guidance training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meshgen.data import (
    FIRST_VERTEX,
    NEW_VERTEX,
    AugmentConfig,
    ProceduralStream,
    collate_examples,
    faces_budget,
    token_kinds,
)
from meshgen.encoder import EncoderConfig
from meshgen.hourglass import HourglassConfig, HourglassTransformer
from meshgen.modeling import Conditioning, coord_layout
from tokenizers3d.base import get_tokenizer
from tokenizers3d.procedural import FAMILIES

pytestmark = pytest.mark.usefixtures("one_thread")
VOCAB = coord_layout(7)


def _stream(**kw) -> ProceduralStream:
    args = dict(bits=7, window=90, n_points=64, max_faces=60, seed=3)
    args.update(kw)
    return ProceduralStream(**args)


def test_token_kinds_against_a_python_loop():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n_vert = 3 * int(rng.integers(1, 8))
        triples = rng.integers(0, 3, size=(n_vert, 3))  # small range: many repeats
        ids = np.concatenate([[VOCAB.bos], triples.reshape(-1), [VOCAB.eos]])
        kinds = token_kinds(ids)
        seen = set()
        for v, t in enumerate(map(tuple, triples)):
            want = (NEW_VERTEX if t not in seen else 0) | (FIRST_VERTEX if v == 0 else 0)
            seen.add(t)
            assert all(kinds[1 + 3 * v + a] == want for a in range(3))
        assert kinds[0] == 0 and kinds[-1] == 0


def test_stream_is_deterministic_decodes_and_respects_budget():
    a, b = iter(_stream()), iter(_stream())
    tok = get_tokenizer("coords", bits=7)
    for _ in range(6):
        x, y = next(a), next(b)
        assert torch.equal(x["tokens"], y["tokens"]) and torch.equal(x["points"], y["points"])
        assert x["points"].shape == (64, 6)
        if x["start"] == 0 and x["tokens"][-1] == tok.eos_id:
            qm, _ = tok.decode_quantized(x["tokens"].numpy(), strict=True)
            assert qm.n_faces <= 60
        assert len(x["kinds"]) == len(x["tokens"]) - 1


def test_stream_never_repeats_but_pool_does():
    fresh = [_stream().example(i, 60)["tokens"] for i in range(8)]
    assert len({tuple(t.tolist()) for t in fresh}) == 8
    pool = _stream(pool_size=3)
    # the same object (its first window), resampled points
    a, b = pool.example(1, 60, from_start=True), pool.example(4, 60, from_start=True)
    assert torch.equal(a["tokens"], b["tokens"]) and not torch.equal(a["points"], b["points"])


def test_curriculum_budget():
    cur = [[0, 20], [100, 60], [300, 200]]
    assert faces_budget(cur, 0, 200) == 20 and faces_budget(cur, 150, 200) == 60
    assert faces_budget(cur, 10**6, 120) == 120 and faces_budget(None, 5, 80) == 80
    s = _stream(curriculum=[[0, 12]], max_faces=200, families=["box", "cone", "pyramid"])
    for i in range(5):
        fam, mesh = s.mesh(i, 12)
        assert len(mesh.faces) <= 12 and fam in FAMILIES


def test_stream_workers_partition_the_objects():
    from torch.utils.data import DataLoader

    s = _stream()
    loader = DataLoader(s, batch_size=None, num_workers=2)
    got = []
    for i, ex in enumerate(loader):
        got.append(ex["tokens"])
        if i == 5:
            break
    want = [s.example(i, 60)["tokens"] for i in range(6)]  # worker w makes objects w, w + 2, ...; loader interleaves
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def test_augmentation_keeps_the_mesh_valid_and_changes_it():
    aug = AugmentConfig(scale=0.3, rotate90=1.0, rotate_any=0.0, permute_axes=0.0)
    m = aug.mesh_matrix(np.random.default_rng(1))
    assert np.linalg.det(m) > 0
    plain, augmented = _stream(), _stream(augment=AugmentConfig())
    diff = sum(not torch.equal(plain.example(i, 60)["tokens"], augmented.example(i, 60)["tokens"]) for i in range(6))
    assert diff >= 4
    pts = np.random.default_rng(0).uniform(-0.5, 0.5, (500, 3))
    out, keep = AugmentConfig(hole_p=1.0, noise_p=0.0).points(pts, np.random.default_rng(3))
    assert out.shape == pts.shape and len(np.unique(keep)) < len(pts)


def _grid_model(**enc) -> HourglassTransformer:
    torch.manual_seed(0)
    e = EncoderConfig(dim=16, n_heads=2, n_latents=4, n_layers=1, n_freqs=2, point_embedding="grid",
                      context_points=8, null_context=True, **enc)
    return HourglassTransformer(HourglassConfig(dim=32, n_heads=2, layers=(1, 1, 1), window=18, cross_every=1,
                                                encoder=e)).eval()


def test_grid_conditioning_uses_the_cells_and_null_context():
    model = _grid_model()
    pts = torch.rand(2, 16, 6) - 0.5
    ctx = model.encode(Conditioning(pts, torch.tensor([10, 20])))
    assert ctx.latents.shape == (2, 4 + 8, 16)
    # moving the points by one grid cell changes the context (the cell embedding is read)
    shifted = pts.clone()
    shifted[..., 2] += 1.0 / VOCAB.n
    ctx2 = model.encode(Conditioning(shifted, torch.tensor([10, 20])))
    assert not torch.allclose(ctx.latents, ctx2.latents)
    dropped = model.encode(Conditioning(pts, torch.tensor([10, 20]), drop=torch.tensor([True, False])))
    assert torch.equal(dropped.latents[0], model.encoder.null_tokens(1)[0])
    assert torch.allclose(dropped.latents[1], ctx.latents[1])
    # a dropped row does not depend on its points
    other = model.encode(Conditioning(torch.rand(2, 16, 6) - 0.5, torch.tensor([10, 20]), drop=torch.tensor([True, True])))
    assert torch.equal(other.latents[0], dropped.latents[0]) and torch.equal(other.cond_emb[0], dropped.cond_emb[0])


def test_cfg_training_batch_backprops_into_the_null_context(tmp_path):
    model = _grid_model().train()
    items = [_stream(window=18, n_points=16, drop_points=1.0 if i == 0 else 0.0).example(i, 60) for i in range(2)]
    batch = collate_examples(items, VOCAB.pad)
    assert batch.drop.tolist() == [True, False]
    from meshgen.train import forward_loss

    loss, n = forward_loss(model, batch, VOCAB.pad)
    loss.backward()
    assert n > 0 and model.encoder.null.grad is not None and model.encoder.null.grad.abs().sum() > 0
    model.save_pretrained(tmp_path / "m")
    again = type(model).from_pretrained(tmp_path / "m")
    assert again.config == model.config


def test_cached_decoding_equals_full_with_grid_context():
    model = _grid_model()
    cond = Conditioning(torch.rand(1, 16, 6) - 0.5, torch.tensor([4]))
    tok = torch.randint(0, VOCAB.n, (1, 19))
    tok[0, 0] = VOCAB.bos
    full = model(tok, cond=cond).logits
    cache = model.init_cache(cond)
    steps = torch.cat([model(tok[:, i : i + 1], cache=cache).logits for i in range(tok.shape[1])], dim=1)
    assert torch.allclose(full, steps, atol=1e-5)


def test_warm_start_copies_matching_weights(tmp_path):
    from meshgen.train import warm_start

    torch.manual_seed(1)
    old = HourglassTransformer(HourglassConfig(dim=32, n_heads=2, layers=(1, 1, 1), window=18, cross_every=2,
                                               encoder=EncoderConfig(dim=16, n_heads=2, n_latents=4, n_layers=1,
                                                                     n_freqs=2)))
    old.save_pretrained(tmp_path / "old")
    new = _grid_model()
    counts = warm_start(new, tmp_path / "old")
    assert counts["copied"] > 0 and counts["new"] > 0
    assert torch.equal(new.tok_emb.weight, old.tok_emb.weight)
    assert torch.equal(new.levels[2].down[0].attn.qkv.weight if hasattr(new.levels[2].down[0].attn, "qkv")
                       else new.levels[2].down[0].mlp.fc.weight,
                       old.levels[2].down[0].attn.qkv.weight if hasattr(old.levels[2].down[0].attn, "qkv")
                       else old.levels[2].down[0].mlp.fc.weight)
