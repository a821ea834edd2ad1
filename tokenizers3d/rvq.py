"""Residual vector quantization (RVQ): a vector as the sum of ``depth`` codebook entries.

Level 0 quantizes the input ``x``; level ``l`` quantizes the residual the levels before it left,
``r_l = x - (q_0 + ... + q_{l-1})``; the code of a vector is the ``depth`` indices ``(c_0, ..., c_{D-1})``
and its quantized value ``q_0 + ... + q_{D-1}``. As in SoundStream / MeshGPT / MeshAnything:

* **Straight-through gradient**: the output is ``x + sg(q - x)`` (``sg`` = stop-gradient), so the
  encoder receives the decoder's gradient unchanged.
* **Commitment loss** ``mean_l ||r_l - sg(q_l)||^2`` pulls the encoder towards its codes.
* **Codebook updates**: ``ema=True`` (default) moves every code to the exponential moving average of
  the residuals assigned to it (decay ``decay``, Laplace-smoothed counts), with no gradient; ``ema=False``
  learns the codebook by gradient through the codebook loss ``mean_l ||sg(r_l) - q_l||^2``.
* **Data initialisation**: on the first training batch each level's codes are set to random residuals
  of that level.
* **Dead-code restarts**: a code whose moving-average usage falls below ``dead_threshold`` vectors per
  step is replaced by a random residual of the current batch (of any level that uses its codebook), so
  that codes left behind by the encoder come back into use; ``restarts`` counts them.
* ``shared=True`` uses one codebook for every level (MeshAnything: 3 levels of one 8,192-code book);
  otherwise each level has its own.

Tensors here are plain ``(N, C)`` rows; the face VQ-VAE (:mod:`tokenizers3d.face_vqvae`) decides what a
row is. This module imports PyTorch at the top: it is loaded only when a learned tokenizer is built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class RVQConfig:
    """Settings of :class:`ResidualVQ`.

    Attributes
    ----------
    dim : int
        Width of the quantized vectors.
    depth : int
        Codes per vector (levels).
    codebook_size : int
        Entries per codebook (``K``); a code is an id in ``0 .. K-1``.
    shared : bool
        One codebook for all levels.
    ema : bool
        Exponential-moving-average codebook updates (else learned by gradient).
    decay : float
        EMA decay per training step.
    commitment : float
        Weight of the commitment loss in :attr:`RVQOutput.loss`.
    dead_threshold : float
        Restart a code whose EMA usage (vectors per step) falls below this; 0 turns restarts off.
    """

    dim: int = 16
    depth: int = 2
    codebook_size: int = 2048
    shared: bool = False
    ema: bool = True
    decay: float = 0.95
    commitment: float = 0.25
    dead_threshold: float = 0.1

    def __post_init__(self):
        if self.depth < 1 or self.codebook_size < 2 or self.dim < 1:
            raise ValueError(f"RVQ needs depth >= 1, codebook_size >= 2 and dim >= 1, got {self}")
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"RVQ decay must lie in (0, 1), got {self.decay}")


@dataclass
class RVQOutput:
    """Result of :meth:`ResidualVQ.forward`.

    Attributes
    ----------
    quantized : (N, C) float
        ``x + sg(q - x)``: the quantized value with the straight-through gradient to ``x``.
    codes : (N, D) int64
        Code of each level.
    loss : () float
        ``commitment * commit_loss`` (+ ``codebook_loss`` when ``ema=False``).
    commit_loss : () float
        ``mean_l ||r_l - sg(q_l)||^2`` (mean over rows and channels).
    residual_norms : (D,) float
        Mean norm of ``x - (q_0 + ... + q_l)`` after each level ``l`` (detached).
    """

    quantized: torch.Tensor
    codes: torch.Tensor
    loss: torch.Tensor
    commit_loss: torch.Tensor
    residual_norms: torch.Tensor


class ResidualVQ(nn.Module):
    """Residual vector quantizer (see the module docstring).

    Buffers (all saved): ``codebook (Q, K, C)`` (a parameter when ``ema=False``), ``ema_count (Q, K)``,
    ``ema_sum (Q, K, C)``, ``initialized ()`` and ``restarts ()``; ``Q = 1`` when shared, else ``depth``.
    """

    def __init__(self, config: RVQConfig):
        super().__init__()
        self.config = config
        q, k, c = (1 if config.shared else config.depth), config.codebook_size, config.dim
        book = torch.randn(q, k, c) / c**0.5
        if config.ema:
            self.register_buffer("codebook", book)
        else:
            self.codebook = nn.Parameter(book)
        self.register_buffer("ema_count", torch.zeros(q, k))
        self.register_buffer("ema_sum", book.detach().clone())
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("restarts", torch.zeros((), dtype=torch.long))

    def book_of(self, level: int) -> int:
        """Index into ``codebook`` of the book used at ``level``."""
        return 0 if self.config.shared else level

    # ---- lookups ----------------------------------------------------------------------------------
    def nearest(self, residual: torch.Tensor, level: int) -> torch.Tensor:
        """Index (N,) int64 of the nearest code (Euclidean) of ``level``'s book for each row of ``residual (N, C)``."""
        book = self.codebook[self.book_of(level)].detach()  # (K, C)
        book_sq = (book * book).sum(-1)  # (K,)
        out = []
        for chunk in residual.detach().split(16384):  # (n, K) distances stay small for big meshes
            d = (chunk * chunk).sum(-1, keepdim=True) - 2.0 * chunk @ book.T + book_sq  # (n, K)
            out.append(d.argmin(-1))
        return torch.cat(out) if out else residual.new_zeros(0, dtype=torch.long)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (..., D) int -> quantized vectors (..., C): the sum of the levels' entries."""
        out = F.embedding(codes[..., 0], self.codebook[self.book_of(0)])
        for level in range(1, self.config.depth):
            out = out + F.embedding(codes[..., level], self.codebook[self.book_of(level)])
        return out

    # ---- forward ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> RVQOutput:
        """Quantize ``x (N, C)``; in training mode also initialise (first call), update and restart codes."""
        cfg = self.config
        if self.training and len(x) and not bool(self.initialized):
            self._initialize(x.detach())
        residual = x
        total = torch.zeros_like(x)
        codes, residuals, norms = [], [], []
        commit = x.new_zeros(())
        book_loss = x.new_zeros(())
        for level in range(cfg.depth):
            idx = self.nearest(residual, level)  # (N,)
            q = F.embedding(idx, self.codebook[self.book_of(level)])  # (N, C); gradient to the book when learned
            if len(x):
                commit = commit + F.mse_loss(residual, q.detach())
                if not cfg.ema:
                    book_loss = book_loss + F.mse_loss(q, residual.detach())
            residuals.append(residual.detach())
            residual = residual - q.detach()
            total = total + q.detach()
            codes.append(idx)
            norms.append(residual.detach().norm(dim=-1).mean() if len(x) else x.new_zeros(()))
        codes_t = torch.stack(codes, dim=-1) if len(x) else x.new_zeros(0, cfg.depth, dtype=torch.long)
        if self.training and len(x):
            self._update(residuals, [codes_t[:, level] for level in range(cfg.depth)])
        commit = commit / cfg.depth
        loss = cfg.commitment * commit + book_loss / cfg.depth
        quantized = x + (total - x).detach()  # straight-through
        return RVQOutput(quantized, codes_t, loss, commit, torch.stack(norms))

    # ---- training-time codebook maintenance ----------------------------------------------------------
    @torch.no_grad()
    def _initialize(self, x: torch.Tensor) -> None:
        """Codes of each level from random residuals of that level (a shared book from the inputs)."""
        k = self.config.codebook_size
        residual = x
        for level in range(1 if self.config.shared else self.config.depth):
            pick = torch.randint(len(residual), (k,), device=x.device)
            noise = 1e-3 * residual.std().clamp_min(1e-6) * torch.randn(k, x.shape[1], device=x.device)
            self.codebook.data[level] = residual[pick] + noise  # duplicates differ a little
            residual = residual - self.codebook[level][self.nearest(residual, level)]
        self.ema_sum.copy_(self.codebook.data)
        self.ema_count.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _update(self, residuals: list[torch.Tensor], codes: list[torch.Tensor]) -> None:
        """EMA statistics (and, with ``ema``, the codebook) from this batch; then dead-code restarts.

        ``residuals[l] (N_l, C)`` were quantized at level ``l`` to ``codes[l] (N_l,)`` (levels may hold different
        numbers of rows: :class:`~tokenizers3d.msrq.MultiScaleRQ` quantizes fewer vectors at coarse scales).
        """
        cfg = self.config
        k = cfg.codebook_size
        counts = torch.zeros_like(self.ema_count)  # (Q, K)
        sums = torch.zeros_like(self.ema_sum)  # (Q, K, C)
        for level, (r, c) in enumerate(zip(residuals, codes, strict=True)):
            b = self.book_of(level)
            counts[b] += torch.bincount(c, minlength=k).to(counts.dtype)
            sums[b].index_add_(0, c, r.to(sums.dtype))
        self.ema_count.mul_(cfg.decay).add_(counts, alpha=1.0 - cfg.decay)
        self.ema_sum.mul_(cfg.decay).add_(sums, alpha=1.0 - cfg.decay)
        if cfg.ema:
            n = self.ema_count.sum(-1, keepdim=True)  # (Q, 1)
            eps = 1e-5
            smoothed = (self.ema_count + eps) / (n + k * eps) * n  # Laplace smoothing: no division by 0
            self.codebook.data.copy_(self.ema_sum / smoothed.unsqueeze(-1))
        if cfg.dead_threshold > 0:
            self._restart_dead(residuals)

    @torch.no_grad()
    def _restart_dead(self, residuals: list[torch.Tensor]) -> None:
        cfg = self.config
        for b in range(self.codebook.shape[0]):
            dead = torch.nonzero(self.ema_count[b] < cfg.dead_threshold).flatten()
            if not len(dead):
                continue
            pool = torch.cat([r for level, r in enumerate(residuals) if self.book_of(level) == b])  # (M, C)
            pick = pool[torch.randint(len(pool), (len(dead),), device=pool.device)]
            self.codebook.data[b, dead] = pick
            self.ema_sum[b, dead] = pick
            self.ema_count[b, dead] = 1.0  # a fresh code gets a few hundred steps before it can die again
            self.restarts += len(dead)


def code_usage(codes: torch.Tensor, codebook_size: int, *, shared: bool) -> tuple[float, float]:
    """Share of the codes used and perplexity of the code distribution.

    Parameters
    ----------
    codes : (N, D) int
        Codes of ``N`` vectors.
    codebook_size : int
    shared : bool
        One book for all levels: usage and perplexity over all codes together. Otherwise each level's are
        computed and averaged.

    Returns
    -------
    usage : float
        Distinct codes used / codebook size (mean over books).
    perplexity : float
        ``exp(entropy)`` of the empirical code distribution (mean over books); at most ``codebook_size``.
    """
    codes = torch.as_tensor(codes).reshape(len(codes), -1) if len(codes) else torch.zeros(0, 1, dtype=torch.long)
    groups = [codes.reshape(-1)] if shared else [codes[:, level] for level in range(codes.shape[1])]
    usage, perplexity = [], []
    for g in groups:
        counts = torch.bincount(g.long(), minlength=codebook_size).double()
        total = counts.sum()
        if total == 0:
            usage.append(0.0)
            perplexity.append(0.0)
            continue
        p = counts[counts > 0] / total
        usage.append(float((counts > 0).sum()) / codebook_size)
        perplexity.append(float(torch.exp(-(p * p.log()).sum())))
    return sum(usage) / len(usage), sum(perplexity) / len(perplexity)
