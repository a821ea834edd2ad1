"""Attention masks, hourglass / flat decoders (causality, cached decoding), encoder, save / load, windows."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from conftest import assert_cached_equals_full, assert_causal

from meshgen.attention import attend, build_attn_mask
from meshgen.encoder import EncoderConfig, PointEncoder
from meshgen.generate import collate_windows, sample_training_window
from meshgen.hourglass import HourglassConfig, HourglassTransformer
from meshgen.modeling import Conditioning, MeshGenerator, coord_layout
from meshgen.transformer import Transformer, TransformerConfig, matched_transformer_config
from tokenizers3d.errors import MeshInputError

VOCAB = coord_layout(7)


pytestmark = pytest.mark.usefixtures("one_thread")
ENC = EncoderConfig(dim=16, n_heads=2, n_latents=4, n_layers=1, n_freqs=2)
HG = HourglassConfig(dim=32, n_heads=2, layers=(2, 2, 2), window=18, cross_every=2, encoder=ENC)
FLAT = TransformerConfig(dim=32, n_heads=2, n_layers=3, window=18, cross_every=2, encoder=ENC)


def _model(kind: str, seed: int = 0) -> MeshGenerator:
    torch.manual_seed(seed)
    model = HourglassTransformer(HG) if kind == "hourglass" else Transformer(FLAT)
    return model.eval()


def _cond(batch: int = 2, seed: int = 0) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    return Conditioning(torch.rand(batch, 8, 6, generator=g) - 0.5, torch.tensor([12, 300, 5, 40][:batch]))


def _tokens(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tok = torch.randint(0, VOCAB.n, (batch, length), generator=g)
    tok[:, 0] = VOCAB.bos
    return tok


# ---- attention --------------------------------------------------------------------------------------
MASK_CASES = [(7, 7, None), (7, 7, 3), (1, 9, None), (1, 9, 4), (3, 10, None), (3, 10, 4), (5, 12, 12), (4, 4, 1)]


@pytest.mark.parametrize("q_len,kv_len,window", MASK_CASES)
def test_xformers_bias_matches_sdpa_mask(q_len, kv_len, window):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pytest.importorskip("xformers.ops.fmha.attn_bias")
    from meshgen.attention import xformers_bias

    bias = xformers_bias(q_len, kv_len, causal=True, window=window)
    allowed = torch.ones(q_len, kv_len, dtype=torch.bool) if bias is None else bias.materialize((q_len, kv_len)) == 0
    assert torch.equal(allowed, build_attn_mask(q_len, kv_len, window))


def test_build_attn_mask_rule():
    m = build_attn_mask(2, 6, 3)  # queries at key indices 4 and 5
    assert m.tolist() == [[False, False, True, True, True, False], [False, False, False, True, True, True]]


@pytest.mark.parametrize("q_len,kv_len,window", MASK_CASES)
def test_sdpa_attend_matches_reference(q_len, kv_len, window):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, n, 2, 8, generator=g) for n in (q_len, kv_len, kv_len))  # (B, T, nh, hs)
    got = attend(q, k, v, causal=True, window=window, backend="sdpa")
    att = torch.einsum("bqhd,bkhd->bhqk", q, k) / 8**0.5
    att = att.masked_fill(~build_attn_mask(q_len, kv_len, window), float("-inf")).softmax(-1)
    ref = torch.einsum("bhqk,bkhd->bqhd", att, v)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


# ---- causality --------------------------------------------------------------------------------------
# coordinate-group boundaries (1, 3, 4), vertex / face boundaries (9, 10, 18, 19, 27, 28), mid-face
CHANGED = [1, 2, 3, 4, 8, 9, 10, 12, 18, 19, 27, 28, 36]


@pytest.mark.parametrize("kind", ["hourglass", "flat"])
def test_causality(kind):
    assert_causal(_model(kind), _cond(), _tokens(2, 46), CHANGED, n_values=VOCAB.n, shift=37)


def test_causality_in_window_with_offset():
    model, cond = _model("hourglass"), _cond()
    tok = _tokens(2, 40)
    tok[:, 0] = 5  # a window starting at the last token of a face
    with torch.no_grad():
        base = model(tok, cond=cond, start_pos=27).logits
        for t in (3, 9, 10, 19):
            alt = tok.clone()
            alt[:, t] = (alt[:, t] + 11) % VOCAB.n
            assert torch.allclose(model(alt, cond=cond, start_pos=27).logits[:, :t], base[:, :t], atol=1e-6)


def test_start_pos_only_matters_modulo_roles():
    """Rotary is relative and roles repeat every face, so windows at 9 and 36 give the same logits."""
    model, cond = _model("hourglass"), _cond()
    tok = _tokens(2, 30)
    tok[:, 0] = 3
    with torch.no_grad():
        a = model(tok, cond=cond, start_pos=9).logits
        b = model(tok, cond=cond, start_pos=torch.tensor([36, 36])).logits
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="multiple of 9"):
        model(tok, cond=cond, start_pos=4)


# ---- cached decoding ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["hourglass", "flat"])
def test_cached_decoding_equals_full_recompute(kind):
    """Longer than 3 windows (18 tokens): rolling caches at every level reproduce the window-masked forward."""
    model = _model(kind)
    # chunked prefill crossing group boundaries
    cache = assert_cached_equals_full(model, _cond(), _tokens(2, 64), (5, 1, 1, 7, 13, 2, 20, 15))
    assert all(n <= w - 1 for n, w in zip(cache.kv_lengths(), _kv_windows(model), strict=True))


def _kv_windows(model) -> list[int]:
    if isinstance(model, HourglassTransformer):
        w = HG.level_windows()
        return [w[i] for i in range(HG.n_levels) for _ in range(HG.layers[i])]
    return [FLAT.window] * FLAT.n_layers


@pytest.mark.parametrize("kind", ["hourglass", "flat"])
def test_greedy_cached_equals_greedy_recompute(kind):
    model, cond = _model(kind), _cond()
    coords_only = torch.full((VOCAB.size,), float("-inf"))
    coords_only[: VOCAB.n] = 0.0
    with torch.no_grad():
        cache = model.init_cache(cond)
        cached, cur = [torch.full((2, 1), VOCAB.bos)], torch.full((2, 1), VOCAB.bos)
        for _ in range(60):
            cur = (model(cur, cache=cache).logits[:, -1] + coords_only).argmax(-1, keepdim=True)
            cached.append(cur)
        seq = torch.full((2, 1), VOCAB.bos)
        for _ in range(60):
            nxt = (model(seq, cond=cond).logits[:, -1] + coords_only).argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(torch.cat(cached, dim=1), seq)


def test_cache_memory_is_bounded():
    model, cond = _model("hourglass"), _cond()
    with torch.no_grad():
        cache = model.init_cache(cond)
        tok = _tokens(2, 4 * HG.window + 5)
        for t in range(tok.shape[1]):
            model(tok[:, t : t + 1], cache=cache)
    windows = HG.level_windows()
    for i, st in enumerate(cache.levels):
        for layer in (st.down or []) + (st.up or []):
            assert layer.self_kv.k.shape[1] <= windows[i] - 1 and layer.self_kv.v.shape[1] <= windows[i] - 1
        if st.pending is not None:
            assert st.pending.shape[1] <= 2
    assert cache.pos == tok.shape[1]


# ---- training -----------------------------------------------------------------------------------------
def test_loss_ignores_pad_and_backprops():
    model = _model("hourglass").train()
    tok = _tokens(2, 28)
    targets = torch.roll(tok, -1, dims=1)
    targets[0, 10:] = VOCAB.pad
    out = model(tok, cond=_cond(), targets=targets)
    keep = targets != VOCAB.pad
    ref = torch.nn.functional.cross_entropy(out.logits[keep], targets[keep])
    torch.testing.assert_close(out.loss, ref)
    out.loss.backward()
    assert model.tok_emb.weight.grad is not None and model.encoder.latents.grad is not None


def test_training_windows_are_face_aligned():
    rng = np.random.default_rng(0)
    ids = np.concatenate([[VOCAB.bos], np.arange(9 * 20) % VOCAB.n, [VOCAB.eos]])  # 20 faces, 182 ids
    starts = set()
    for _ in range(200):
        w = sample_training_window(ids, 36, rng)
        assert w.start_pos % 9 == 0 and len(w.tokens) <= 37
        assert np.array_equal(w.tokens, ids[w.start_pos : w.start_pos + 37])
        starts.add(w.start_pos)
    assert 0 in starts and max(starts) + 37 >= len(ids)  # the EOS is reachable
    short = sample_training_window(ids[:30], 36, rng)
    assert short.start_pos == 0 and len(short.tokens) == 30
    batch = collate_windows([ids, ids[:30]], 36, rng, pad_id=VOCAB.pad)
    assert batch.inputs.shape == batch.targets.shape == (2, 36)
    assert (batch.targets[1, 29:] == VOCAB.pad).all() and batch.start_pos[1] == 0
    out = _model("hourglass")(batch.inputs, cond=_cond(), start_pos=batch.start_pos, targets=batch.targets)
    assert torch.isfinite(out.loss)


# ---- encoder, sizes -----------------------------------------------------------------------------------
def test_encoder_shape_and_point_order_invariance():
    torch.manual_seed(0)
    enc = PointEncoder(ENC).eval()
    pts = torch.rand(2, 10, 6) - 0.5
    with torch.no_grad():
        out = enc(pts)
        perm = enc(pts[:, torch.randperm(10)])
    assert out.shape == (2, ENC.n_latents, ENC.dim)
    torch.testing.assert_close(out, perm, atol=1e-5, rtol=1e-5)


def test_flat_baseline_matches_parameters():
    for hg in (HG, HourglassConfig()):
        flat = matched_transformer_config(hg)
        with torch.device("meta"):
            p_hg = HourglassTransformer(hg).num_params(decoder_only=True)
            p_flat = Transformer(flat).num_params(decoder_only=True)
        assert abs(p_flat - p_hg) / p_hg <= 0.1 and flat.dim == hg.dim and flat.window == hg.window


# ---- save / load, determinism -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["hourglass", "flat"])
def test_save_load_round_trip(kind, tmp_path):
    model, cond = _model(kind, seed=3), _cond()
    model.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["class"] == type(model).__name__ and meta["format_version"] == 1
    assert meta["tied"] == {"head.weight": "tok_emb.weight"}
    loaded = MeshGenerator.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model) and loaded.config == model.config
    assert loaded.head.weight.data_ptr() == loaded.tok_emb.weight.data_ptr()
    tok = _tokens(2, 20)
    with torch.no_grad():
        assert torch.equal(model(tok, cond=cond).logits, loaded(tok, cond=cond).logits)
    other = HourglassTransformer if kind == "flat" else Transformer
    with pytest.raises(MeshInputError, match="not a"):
        other.from_pretrained(tmp_path)


def test_same_seed_same_init_and_samples():
    from meshgen.generate import generate

    a, b = _model("hourglass", seed=7), _model("hourglass", seed=7)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    ra = generate(a, _cond(), max_faces=4, seed=11)
    rb = generate(b, _cond(), max_faces=4, seed=11)
    assert all(np.array_equal(x, y) for x, y in zip(ra.ids, rb.ids, strict=True))
