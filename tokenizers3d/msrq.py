"""Multi-scale residual quantization (VAR-style next-scale tokens) over a line of latent vectors.

A latent line ``z`` of ``L`` vectors (``L`` = the last scale) is written as the sum of ``S`` scales. Scale ``s``
holds ``n_s`` tokens (e.g. 1, 4, 16, 64, 256; counts grow with the scale): the residual the coarser scales left
is resampled to ``n_s`` vectors (area average along the line), each is replaced by its nearest code of the one
shared codebook, and the codes are resampled back to ``L`` vectors (linear interpolation) and subtracted::

    r_0 = z;   q_s = up_L(codebook[nearest(down_{n_s}(r_s))]);   r_{s+1} = r_s - q_s;   z_hat = q_0 + ... + q_{S-1}

So any prefix of the scales decodes to a coarser but complete latent line (drop the tail for a smaller byte
budget). The codebook, its EMA updates, data initialisation and dead-code restarts are those of
:class:`~tokenizers3d.rvq.ResidualVQ` (one shared book); the gradient is straight-through,
``z + sg(z_hat - z)``, with the commitment loss ``mean_s ||down(r_s) - sg(codes_s)||^2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .rvq import ResidualVQ, RVQConfig


def check_scales(scales) -> None:
    """``ValueError`` unless ``scales`` (tokens per scale, coarse to fine) is non-empty, positive, non-decreasing."""
    sc = tuple(int(n) for n in scales)
    if not sc or min(sc) < 1 or any(b < a for a, b in zip(sc[:-1], sc[1:], strict=True)):
        raise ValueError(f"scales must be positive and non-decreasing, got {scales}")


@dataclass(frozen=True)
class MSRQConfig:
    """Settings of :class:`MultiScaleRQ`.

    Attributes
    ----------
    dim : int
        Width of the latent vectors and the codes.
    scales : tuple of int
        Tokens per scale, coarse to fine, non-decreasing; the last is the latent line's length.
    codebook_size, ema, decay, commitment, dead_threshold
        As :class:`~tokenizers3d.rvq.RVQConfig` (one shared book).
    """

    dim: int = 16
    scales: tuple[int, ...] = (1, 4, 16, 64, 256)
    codebook_size: int = 4096
    ema: bool = True
    decay: float = 0.95
    commitment: float = 0.25
    dead_threshold: float = 0.05

    def __post_init__(self):
        check_scales(self.scales)

    @property
    def length(self) -> int:
        return int(self.scales[-1])

    @property
    def n_tokens(self) -> int:
        return int(sum(self.scales))


def resample(x: torch.Tensor, n: int) -> torch.Tensor:
    """``x (B, L, C)`` -> ``(B, n, C)`` along the line: area average down, linear interpolation up."""
    if x.shape[1] == n:
        return x
    t = x.transpose(1, 2)
    t = F.interpolate(t, size=n, mode="area") if n < x.shape[1] else F.interpolate(t, size=n, mode="linear",
                                                                                   align_corners=False)
    return t.transpose(1, 2)


@dataclass
class MSRQOutput:
    """Result of :meth:`MultiScaleRQ.forward`.

    Attributes
    ----------
    quantized : (B, L, C)
        Straight-through quantized line.
    codes : list of (B, n_s) int64
        Token ids per scale, coarse to fine.
    loss : scalar
        ``commitment x commit`` (+ the codebook loss when the book is learned by gradient).
    commit : scalar
    residual_norms : (S,)
        Mean norm of the residual after each scale.
    """

    quantized: torch.Tensor
    codes: list
    loss: torch.Tensor
    commit: torch.Tensor
    residual_norms: torch.Tensor


class MultiScaleRQ(ResidualVQ):
    """Multi-scale residual quantizer (see the module docstring); one shared codebook."""

    def __init__(self, config: MSRQConfig):
        self.ms_config = config
        super().__init__(RVQConfig(dim=config.dim, depth=len(config.scales), codebook_size=config.codebook_size,
                                   shared=True, ema=config.ema, decay=config.decay, commitment=config.commitment,
                                   dead_threshold=config.dead_threshold))

    def forward(self, x: torch.Tensor) -> MSRQOutput:  # type: ignore[override]
        """Quantize ``x (B, L, C)``; in training mode also initialise (first call), update and restart codes."""
        cfg = self.ms_config
        b, length, c = x.shape
        if length != cfg.length:
            raise ValueError(f"latent line has {length} vectors, the scales end at {cfg.length}")
        if self.training and not bool(self.initialized):
            self._initialize(x.detach().reshape(-1, c))
        residual = x.detach()
        total = torch.zeros_like(x)
        codes, rows, norms = [], [], []
        commit = x.new_zeros(())
        book_loss = x.new_zeros(())
        for n in cfg.scales:
            down = resample(residual, n)  # (B, n, C)
            flat = down.reshape(-1, c)
            idx = self.nearest(flat, 0)
            q = F.embedding(idx, self.codebook[0]).reshape(b, n, c)
            commit = commit + F.mse_loss(resample(x - total.detach(), n), q.detach())
            if not self.config.ema:
                book_loss = book_loss + F.mse_loss(q, down.detach())
            up = resample(q.detach(), length)
            rows.append(flat)
            codes.append(idx.reshape(b, n))
            total = total + up
            residual = residual - up
            norms.append(residual.norm(dim=-1).mean())
        if self.training:
            self._update(rows, [cd.reshape(-1) for cd in codes])
        s = len(cfg.scales)
        commit = commit / s
        loss = self.config.commitment * commit + book_loss / s
        return MSRQOutput(x + (total - x).detach(), codes, loss, commit, torch.stack(norms))

    def decode(self, codes: list[torch.Tensor], *, scales: int | None = None) -> torch.Tensor:
        """Latent line ``(B, L, C)`` from the codes of the first ``scales`` scales (all given when None)."""
        k = len(codes) if scales is None else int(scales)
        if not 1 <= k <= len(self.ms_config.scales) or k > len(codes):
            raise ValueError(f"can decode 1 to {len(codes)} scales, asked for {k}")
        out = None
        for n, cd in zip(self.ms_config.scales[:k], codes[:k], strict=True):
            if cd.shape[-1] != n:
                raise ValueError(f"scale of {n} tokens got {cd.shape[-1]} ids")
            up = resample(F.embedding(cd, self.codebook[0]), self.ms_config.length)
            out = up if out is None else out + up
        return out

    def flatten(self, codes: list[torch.Tensor]) -> torch.Tensor:
        """Per-scale codes -> ``(B, sum n_s)`` ids in next-scale order."""
        return torch.cat(codes, dim=-1)

    def split(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """``(B, T)`` ids in next-scale order (``T`` = a whole number of scales) -> per-scale codes."""
        out, start = [], 0
        for n in self.ms_config.scales:
            if start + n > ids.shape[-1]:
                break
            out.append(ids[..., start:start + n])
            start += n
        if start != ids.shape[-1]:
            raise ValueError(f"{ids.shape[-1]} ids are not a whole number of scales {self.ms_config.scales}")
        return out


__all__ = ["MSRQConfig", "MSRQOutput", "MultiScaleRQ", "resample"]
