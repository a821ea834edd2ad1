"""Perceiver-style point-cloud encoder: (B, N, 6) points with normals -> (B, L, D) latents.

Each point's xyz and normal go through Fourier features and a linear layer; a fixed set of ``L``
learned latents cross-attends to the points once, then a few full (non-causal) self-attention
layers mix the latents. The cost is ``O(N L + L^2)``, so large point clouds are cheap, and the
decoders cross-attend to ``L`` latents instead of ``N`` points.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .layers import Block, FourierFeatures


@dataclass(frozen=True)
class EncoderConfig:
    dim: int = 256
    n_heads: int = 4
    n_latents: int = 128
    n_layers: int = 2  # self-attention layers after the cross-attention
    n_freqs: int = 8
    in_channels: int = 6  # xyz + normal
    mlp_ratio: int = 4
    dropout: float = 0.0

    def __post_init__(self):
        if self.dim % self.n_heads:
            raise ValueError(f"encoder dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_latents < 1 or self.n_layers < 0:
            raise ValueError("encoder needs n_latents >= 1 and n_layers >= 0")


class PointEncoder(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = c = config
        self.fourier = FourierFeatures(c.n_freqs)
        self.point_proj = nn.Linear(self.fourier.out_dim(c.in_channels), c.dim)
        self.ln_points = nn.LayerNorm(c.dim)
        self.latents = nn.Parameter(torch.randn(c.n_latents, c.dim) * 0.02)
        kw = dict(mlp_ratio=c.mlp_ratio, dropout=c.dropout)
        self.read = Block(c.dim, c.n_heads, self_attn=False, cross=True, context_dim=c.dim, **kw)
        self.layers = nn.ModuleList(Block(c.dim, c.n_heads, causal=False, **kw) for _ in range(c.n_layers))
        self.ln_f = nn.LayerNorm(c.dim)

    @property
    def dim(self) -> int:
        return self.config.dim

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """``points (B, N, in_channels)`` in the unit cube (normals unit length) -> latents ``(B, L, D)``."""
        if points.dim() != 3 or points.shape[-1] != self.config.in_channels:
            raise ValueError(f"points must be (B, N, {self.config.in_channels}), got {tuple(points.shape)}")
        B = points.shape[0]
        feats = self.ln_points(self.point_proj(self.fourier(points)))  # (B, N, D)
        x = self.latents.expand(B, -1, -1)  # (B, L, D)
        x = self.read(x, context=feats)
        for layer in self.layers:
            x = layer(x)
        return self.ln_f(x)
