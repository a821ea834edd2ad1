"""Building blocks shared by the point-cloud encoder and both decoders: MLP, transformer block, embeddings."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .attention import Attention, KVCache, Rope


class MLP(nn.Module):
    def __init__(self, dim: int, *, ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        self.fc = nn.Linear(dim, ratio * dim, bias=False)
        self.act = nn.GELU(approximate="tanh")
        self.proj = nn.Linear(ratio * dim, dim, bias=False)
        self.proj.is_residual = True
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(self.act(self.fc(x))))


@dataclass
class LayerCache:
    """Decoding cache of one :class:`Block`: rolling self-attention keys, fixed cross-attention keys."""

    self_kv: KVCache = field(default_factory=KVCache)
    cross_kv: KVCache = field(default_factory=lambda: KVCache(static=True))


class Block(nn.Module):
    """Pre-norm block: [self-attention] -> [cross-attention to a context] -> MLP, each with a residual."""

    def __init__(
        self,
        dim: int,
        n_heads: int,
        *,
        self_attn: bool = True,
        causal: bool = True,
        cross: bool = False,
        context_dim: int | None = None,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.has_self, self.has_cross = self_attn, cross
        if self_attn:
            self.ln1 = nn.LayerNorm(dim)
            self.attn = Attention(dim, n_heads, causal=causal, dropout=dropout)
        if cross:
            self.ln_x = nn.LayerNorm(dim)
            self.xattn = Attention(dim, n_heads, cross=True, context_dim=context_dim, dropout=dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, ratio=mlp_ratio, dropout=dropout)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        *,
        rope: Rope | None = None,
        window: int | None = None,
        context: torch.Tensor | None = None,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        """``x (B, T, C)``; ``context (B, L, Cc)`` is required by a cross block unless its cache holds it.

        A cross block given neither a context nor a filled cache (unconditional use) skips cross-attention.
        """
        if self.has_self:
            kv = None if cache is None else cache.self_kv
            x = x + self.drop(self.attn(self.ln1(x), rope=rope, window=window, cache=kv))
        if self.has_cross:
            kv = None if cache is None else cache.cross_kv
            if context is not None or (kv is not None and kv.k is not None):
                x = x + self.drop(self.xattn(self.ln_x(x), context=context, cache=kv))
        return x + self.mlp(self.ln2(x))


def run_blocks(
    blocks: nn.ModuleList,
    x: torch.Tensor,
    *,
    rope: Rope | None,
    window: int | None,
    context: torch.Tensor | None,
    caches: list[LayerCache] | None,
) -> torch.Tensor:
    for i, block in enumerate(blocks):
        x = block(x, rope=rope, window=window, context=context, cache=None if caches is None else caches[i])
    return x


def new_layer_caches(blocks: nn.ModuleList, window: int | None) -> list[LayerCache]:
    return [LayerCache(self_kv=KVCache(window=window)) for _ in blocks]


def role_ids(pos: torch.Tensor, period: int) -> torch.Tensor:
    """Role of absolute position ``pos`` in a sequence whose element 0 is a start token (BOS / start group).

    Returns ``(pos - 1) % period`` for ``pos >= 1`` and ``period`` for the start, so an embedding table
    needs ``period + 1`` rows. At the coordinate level (period 9) the role is which vertex and which
    axis the token is; at the vertex level (period 3) which vertex of the face.
    """
    return torch.where(pos == 0, torch.full_like(pos, period), (pos - 1) % period)


def face_count_bucket(n_faces: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """Log-bucket a requested face count: 0 = unknown (``n_faces <= 0``), else ``1 + round(2 log2 n)`` capped.

    Two buckets per octave; with 32 buckets counts up to ~2^15 faces are told apart.
    """
    n = n_faces.to(torch.float32)
    b = 1 + torch.round(2.0 * torch.log2(n.clamp(min=1.0))).long()
    b = b.clamp(max=n_buckets - 1)
    return torch.where(n > 0, b, torch.zeros_like(b))


class FourierFeatures(nn.Module):
    """``x (..., c)`` -> ``(..., c (2 F + 1))``: the raw values, then sin and cos at frequencies ``2^k pi``."""

    def __init__(self, n_freqs: int):
        super().__init__()
        freqs = (2.0 ** torch.arange(n_freqs, dtype=torch.float32)) * math.pi
        self.register_buffer("freqs", freqs, persistent=False)

    def out_dim(self, c: int) -> int:
        return c * (2 * len(self.freqs) + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ang = (x[..., None] * self.freqs).flatten(-2)  # (..., c * F)
        return torch.cat([x, ang.sin(), ang.cos()], dim=-1)  # (..., c (2F + 1))
