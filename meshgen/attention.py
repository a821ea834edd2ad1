"""The one attention module: causal (optionally local) self-attention, full self-attention and cross-attention.

Layout: every tensor here is ``(B, T, nh, hs)`` (batch, time, heads, head size), the layout xformers
wants; PyTorch SDPA gets transposed views ``(B, nh, T, hs)``.

Masking rule (the same for both backends). Queries are aligned to the *bottom right* of the keys: with
``q_len`` queries and ``kv_len`` keys, query ``i`` sits at key index ``q_offset + i`` where
``q_offset = kv_len - q_len`` (the cached keys come first). Query ``i`` may attend to key ``j`` iff::

    j <= q_offset + i                      (causal)
    j >  q_offset + i - window             (local window: itself and the previous window - 1 keys)

Backends: on CUDA, xformers ``memory_efficient_attention`` with ``LowerTriangularMask``,
``LowerTriangularFromBottomRightMask`` or ``LowerTriangularFromBottomRightLocalAttentionMask(window)``;
elsewhere (or when xformers is missing or cannot run) ``F.scaled_dot_product_attention`` with
``is_causal=True`` for the plain square causal case and an explicit boolean mask from
:func:`build_attn_mask` otherwise. xformers is imported lazily, only when a CUDA tensor arrives.

Rotary position embeddings (GPT-NeoX half rotation) are applied to queries and keys at their *absolute*
positions before keys enter the cache, so cached decoding and full recomputation see the same numbers.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

BACKENDS = ("auto", "sdpa", "xformers")
_xformers_broken = False


# ---- masks ----------------------------------------------------------------------------------------
def build_attn_mask(
    q_len: int, kv_len: int, window: int | None = None, q_offset: int | None = None, *, device=None
) -> torch.Tensor:
    """Boolean mask ``(q_len, kv_len)``, True = may attend (see the module docstring for the rule).

    ``q_offset`` defaults to ``kv_len - q_len`` (queries are the last ``q_len`` positions).
    """
    if q_offset is None:
        q_offset = kv_len - q_len
    qi = torch.arange(q_len, device=device)[:, None] + q_offset  # (q_len, 1) absolute key index of each query
    kj = torch.arange(kv_len, device=device)[None, :]  # (1, kv_len)
    mask = kj <= qi
    if window is not None:
        mask &= kj > qi - window
    return mask


@functools.lru_cache(maxsize=64)
def _cached_mask(q_len: int, kv_len: int, window: int | None, device: str) -> torch.Tensor:
    return build_attn_mask(q_len, kv_len, window, device=torch.device(device))


def window_matters(kv_len: int, window: int | None) -> bool:
    """False when every query's window already reaches key 0 (then the mask is plain causal)."""
    return window is not None and window < kv_len


def xformers_bias(q_len: int, kv_len: int, *, causal: bool = True, window: int | None = None):
    """The xformers attention bias equivalent to :func:`build_attn_mask` (``None`` = attend everywhere)."""
    from xformers.ops.fmha import attn_bias as xb

    if not causal:
        return None
    if window_matters(kv_len, window):
        return xb.LowerTriangularFromBottomRightLocalAttentionMask(window)
    if q_len == kv_len:
        return xb.LowerTriangularMask()
    if q_len == 1:
        return None  # the last query sees every key
    return xb.LowerTriangularFromBottomRightMask()


@functools.cache
def _xformers_ops():
    try:
        import xformers.ops as xops
    except ImportError:
        return None
    return xops


def _use_xformers(q: torch.Tensor, backend: str) -> bool:
    if backend == "sdpa" or _xformers_broken or not q.is_cuda:
        return False
    ok = _xformers_ops() is not None
    if backend == "xformers" and not ok:
        raise RuntimeError("backend='xformers' requested but xformers is not installed")
    return ok


# ---- core -----------------------------------------------------------------------------------------
def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    window: int | None = None,
    dropout_p: float = 0.0,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention of ``q (B, Tq, nh, hs)`` over ``k, v (B, Tk, nh, hs)`` -> ``(B, Tq, nh, hs)``."""
    global _xformers_broken
    q_len, kv_len = q.shape[1], k.shape[1]
    if _use_xformers(q, backend):
        xops = _xformers_ops()
        bias = xformers_bias(q_len, kv_len, causal=causal, window=window)
        try:
            return xops.memory_efficient_attention(q, k, v, attn_bias=bias, p=dropout_p)
        except NotImplementedError as err:  # no kernel for this build / dtype / shape
            if backend == "xformers":
                raise
            warnings.warn(f"xformers cannot run here ({err}); using PyTorch SDPA from now on", stacklevel=2)
            _xformers_broken = True
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
    mask, is_causal = None, False
    if causal:
        if window_matters(kv_len, window) or q_len not in (1, kv_len):
            mask = _cached_mask(q_len, kv_len, window, str(q.device))
        elif q_len == kv_len and q_len > 1:
            is_causal = True
    y = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p)
    return y.transpose(1, 2)  # (B, Tq, nh, hs)


# ---- rotary ---------------------------------------------------------------------------------------
@dataclass
class Rope:
    """cos and sin tables ``(B or 1, T, 1, hs/2)`` for one set of absolute positions."""

    cos: torch.Tensor
    sin: torch.Tensor


class RotaryEmbedding(nn.Module):
    """Rotary tables for integer positions ``(T,)`` or ``(B, T)``."""

    def __init__(self, head_dim: int, *, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary needs an even head size, got {head_dim}")
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, pos: torch.Tensor) -> Rope:
        pos = pos if pos.dim() == 2 else pos[None]  # (B or 1, T)
        ang = pos.to(torch.float32)[..., None] * self.inv_freq  # (B, T, hs/2)
        ang = ang[:, :, None, :]  # (B, T, 1, hs/2)
        return Rope(ang.cos(), ang.sin())


def apply_rotary(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """Rotate ``x (B, T, nh, hs)`` by its positions' angles (first half / second half pairing)."""
    half = x.shape[-1] // 2
    xf = x if x.dtype == rope.cos.dtype else x.float()  # rotate in float32 under autocast
    x1, x2 = xf[..., :half], xf[..., half:]
    out = torch.cat([x1 * rope.cos - x2 * rope.sin, x2 * rope.cos + x1 * rope.sin], dim=-1)
    return out.to(x.dtype)


# ---- cache ----------------------------------------------------------------------------------------
@dataclass
class KVCache:
    """Keys and values ``(B, S, nh, hs)`` of one attention layer.

    A self-attention cache keeps at most ``window - 1`` keys (the next query adds itself, making ``window``);
    ``window=None`` keeps everything. A cross-attention cache (``static=True``) is filled once from the context.
    """

    window: int | None = None
    static: bool = False
    k: torch.Tensor | None = None
    v: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[1]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (cached + new) keys and values for this step and keep the last ``window - 1``."""
        if self.k is not None:
            k, v = torch.cat([self.k, k], dim=1), torch.cat([self.v, v], dim=1)  # (B, S + T, nh, hs)
        keep = k.shape[1] if self.window is None else min(k.shape[1], self.window - 1)
        self.k, self.v = k[:, k.shape[1] - keep :], v[:, v.shape[1] - keep :]
        return k, v


# ---- module ---------------------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head attention.

    * ``cross=False, causal=True``: causal self-attention, local window optional, rotary positions.
    * ``cross=False, causal=False``: full self-attention (point-cloud encoder), no positions.
    * ``cross=True``: queries from ``x`` attend to every element of ``context`` (no mask, no positions).
    """

    def __init__(
        self,
        dim: int,
        n_heads: int,
        *,
        cross: bool = False,
        causal: bool = True,
        context_dim: int | None = None,
        dropout: float = 0.0,
        backend: str = "auto",
    ):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} is not divisible by n_heads {n_heads}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.cross, self.causal = cross, causal and not cross
        self.dropout, self.backend = dropout, backend
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear((context_dim or dim) if cross else dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.proj.is_residual = True  # scaled init (see modeling.init_weights)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(*t.shape[:2], self.n_heads, self.head_dim)  # (B, T, nh, hs)

    def forward(
        self,
        x: torch.Tensor,
        *,
        rope: Rope | None = None,
        window: int | None = None,
        context: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """``x (B, T, C)`` -> ``(B, T, C)``. ``cache`` is updated in place."""
        B, T, C = x.shape
        q = self._heads(self.q(x))  # (B, T, nh, hs)
        if self.cross and cache is not None and cache.k is not None:
            k, v = cache.k, cache.v
        else:
            src = context if self.cross else x
            k, v = (self._heads(t) for t in self.kv(src).split(C, dim=2))  # (B, S, nh, hs)
            if rope is not None and not self.cross:
                k = apply_rotary(k, rope)
            if cache is not None:
                if self.cross:
                    cache.k, cache.v = k, v
                else:
                    k, v = cache.append(k, v)  # (B, S_cached + T, nh, hs)
        if rope is not None and not self.cross:
            q = apply_rotary(q, rope)
        y = attend(
            q,
            k,
            v,
            causal=self.causal,
            window=window,
            dropout_p=self.dropout if self.training else 0.0,
            backend=self.backend,
        )
        return self.proj(y.reshape(B, T, C))  # (B, T, nh * hs)
