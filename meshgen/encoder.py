"""Perceiver-style point-cloud encoder: (B, N, 6) points with normals -> (B, L + K, D) context tokens.

Each point's xyz and normal go through Fourier features and a linear layer; a fixed set of ``L``
learned latents cross-attends to the points once, then a few full (non-causal) self-attention
layers mix the latents. The cost is ``O(N L + L^2)``, so large point clouds are cheap, and the
decoders cross-attend to ``L`` latents instead of ``N`` points.

Two options make the points speak the decoder's language (``point_embedding="grid"``): the caller
adds ``extra (B, N, D)`` features to every point -- the generator passes each point's *quantized*
coordinates embedded with the decoder's own coordinate-token table (see
:meth:`meshgen.modeling.MeshGenerator.encode`) -- and with ``context_points = K > 0`` the first ``K``
point features are appended to the latents, so the decoder can attend to individual points (where a
vertex can go) as well as to the pooled summary. ``null_context`` adds a learned "no points" context
for classifier-free guidance: rows dropped at training time, and the unconditional branch at sampling
time, see ``null (B, L + K, D)`` instead of the encoded points.
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
    point_embedding: str = "fourier"  # fourier | grid (grid: + the decoder's coordinate embeddings)
    context_points: int = 0  # K point features appended to the latents as decoder context
    null_context: bool = False  # learned unconditional context (classifier-free guidance)

    def __post_init__(self):
        if self.point_embedding not in ("fourier", "grid"):
            raise ValueError(f"point_embedding must be 'fourier' or 'grid', got {self.point_embedding!r}")
        if self.context_points < 0:
            raise ValueError("context_points must be >= 0")
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
        if c.context_points:
            self.ln_points_out = nn.LayerNorm(c.dim)
        if c.null_context:
            self.null = nn.Parameter(torch.zeros(c.dim))

    @property
    def n_context(self) -> int:
        """Context tokens per row: latents plus kept point features."""
        return self.config.n_latents + self.config.context_points

    def null_tokens(self, batch: int) -> torch.Tensor:
        """The unconditional context ``(B, L + K, D)`` (needs ``null_context``)."""
        if not self.config.null_context:
            raise ValueError("this encoder has no null context (train with encoder.null_context: true)")
        return self.null.expand(batch, self.n_context, -1)

    @property
    def dim(self) -> int:
        return self.config.dim

    def forward(self, points: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """``points (B, N, in_channels)`` in the unit cube (normals unit length) -> context ``(B, L + K, D)``.

        ``extra (B, N, D)``, when given, is added to each point's features before they are read.
        """
        if points.dim() != 3 or points.shape[-1] != self.config.in_channels:
            raise ValueError(f"points must be (B, N, {self.config.in_channels}), got {tuple(points.shape)}")
        B, N, _ = points.shape
        feats = self.point_proj(self.fourier(points))  # (B, N, D)
        if extra is not None:
            feats = feats + extra
        feats = self.ln_points(feats)
        x = self.latents.expand(B, -1, -1)  # (B, L, D)
        x = self.read(x, context=feats)
        for layer in self.layers:
            x = layer(x)
        x = self.ln_f(x)
        K = self.config.context_points
        if K:
            if N < K:
                raise ValueError(f"context_points={K} needs at least {K} points, got {N}")
            x = torch.cat([x, self.ln_points_out(feats[:, :K])], dim=1)  # (B, L + K, D)
        return x
