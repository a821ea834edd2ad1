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
