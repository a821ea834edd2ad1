"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest (and do not fight other jobs) on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A random-weight hourglass saved with ``save_pretrained``: small enough to sample a few faces in a second."""
    from meshgen.encoder import EncoderConfig
    from meshgen.hourglass import HourglassConfig, HourglassTransformer

    torch.manual_seed(0)
    cfg = HourglassConfig(bits=7, dim=32, n_heads=2, layers=(1, 1, 1), window=90,
                          encoder=EncoderConfig(dim=32, n_heads=2, n_latents=8, n_layers=1))
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    HourglassTransformer(cfg).eval().save_pretrained(path)
    return path


def assert_causal(model, cond, tok, changed, *, n_values: int, shift: int) -> None:
    """Changing token ``t`` (to ``(t + shift) % n_values``) leaves every earlier output unchanged and changes its own."""
    with torch.no_grad():
        base = model(tok, cond=cond).logits
        for t in changed:
            alt = tok.clone()
            alt[:, t] = (alt[:, t] + shift) % n_values
            out = model(alt, cond=cond).logits
            assert torch.allclose(out[:, :t], base[:, :t], atol=1e-6), f"token {t} leaked into earlier logits"
            assert not torch.allclose(out[:, t], base[:, t]), f"token {t} does not affect its own output"


def assert_cached_equals_full(model, cond, tok, chunk_sizes) -> object:
    """One-token cached decoding and chunked prefill (``chunk_sizes``) reproduce the windowed forward of ``tok``;
    returns the one-token run's cache (for memory checks)."""
    with torch.no_grad():
        full = model(tok, cond=cond).logits
        cache = model.init_cache(cond)
        steps = torch.cat([model(tok[:, t : t + 1], cache=cache).logits for t in range(tok.shape[1])], dim=1)
        torch.testing.assert_close(steps, full, atol=1e-4, rtol=1e-4)
        chunked, chunks, i = model.init_cache(cond), [], 0
        for n in chunk_sizes:
            chunks.append(model(tok[:, i : i + n], cache=chunked).logits)
            i += n
        assert i == tok.shape[1]
        torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-4, rtol=1e-4)
    return cache
