"""Hourglass decoder over the ``coords`` sequence (Meshtron): coordinates -> vertices -> faces -> back up.

The same network runs over a ``vqvae`` code sequence (``HourglassConfig.tokenizer``): there the levels are
codes -> corners (``D`` residual codes each) -> faces (``S`` corners), i.e. the shortening factors are the
layout's ``(D, S)`` instead of ``(3, 3)`` (:class:`~meshgen.modeling.TokenLayout`); everything below holds
with ``3`` read as the level's factor ``s`` (groups of ``s`` with ``s - 1`` pads in front).

Levels (``layers = (n_coord, n_vertex, n_face)``, Meshtron uses 4-8-12, our small model 2-2-4):

    tokens --emb--> [coord down: n_coord // 2 blocks] --pool 3->1--> [vertex down: n_vertex // 2]
        --pool 3->1--> [face: n_face blocks] --unpool 1->3--> (+ vertex residual) [vertex up: rest]
        --unpool 1->3--> (+ coord residual) [coord up: rest] --> logits

Every level is a causal transformer over its own sequence with rotary positions (the element index
at that level) and a local attention window (``window`` tokens, ``window / 3`` vertices,
``window / 9`` faces). Cross-attention to the point-cloud latents is in every ``cross_every``-th block,
counted in execution order from the first coordinate block.

Alignment (why BOS needs no special case). Element 0 of every level is a *start* element: BOS at the
coordinate level. Groups of three are taken with two zero vectors padded on the left, so group ``u``
holds elements ``3u-2, 3u-1, 3u`` and group 0 is ``(pad, pad, start)``. At the coordinate level
group ``u >= 1`` is exactly vertex ``u - 1`` (tokens ``3u-2..3u`` = body tokens ``3(u-1)..3(u-1)+2``)
and group 0 is the vertex level's own start element; the same rule one level up makes group ``w`` of
the vertex level face ``w - 1``. So coordinate token ``p`` belongs to vertex ``ceil(p / 3) - 1`` and
face ``ceil(p / 9) - 1``.

Causality (the shift). The output at element ``q`` predicts element ``q + 1``. Element ``q`` is given
the coarse output of group ``q // 3``: that group ends at element ``3 (q // 3) <= q``, so nothing later
leaks in, and the last element of each group already sees its own completed group (the position that
predicts the first token of the next vertex knows the whole current vertex at the vertex level; the
one predicting the next face knows the whole current face at the face level). This is the hourglass
"shift by k - 1" done by indexing. The unpooling is linear (one projection per position in the group).

Windows and caches. A training window must start at a multiple of 9 (``start_pos``): at BOS, or at the
last token of a face, which then plays the start element's role. Cached decoding keeps at most
``window_level - 1`` keys per self-attention layer at each level plus at most two pending vectors per
level, so memory does not grow with the mesh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .attention import RotaryEmbedding
from .encoder import EncoderConfig
from .layers import Block, LayerCache, new_layer_caches, role_ids, run_blocks
from .modeling import Conditioning, Context, MeshGenerator, ModelOutput, start_positions, token_layout


@dataclass(frozen=True)
class HourglassConfig:
    bits: int = 7  # coordinate quantization; vocabulary 2^bits + 3
    dim: int = 256
    n_heads: int = 4
    layers: tuple[int, ...] = (2, 2, 4)  # coordinate, vertex, face (outer levels split down / up)
    window: int = 1152  # attention window in tokens (multiple of 9); levels get window / 3^i
    cross_every: int = 4  # cross-attention in blocks 0, k, 2k, ... (execution order); 0 = none
    mlp_ratio: int = 4
    dropout: float = 0.0
    rope_base: float = 10000.0
    n_face_buckets: int = 32
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    tokenizer: dict | None = None  # None: coords at `bits`; else meshgen.modeling.vqvae_tokenizer_config(...)
    pointer_dim: int = 0  # > 0: a copy head over written vertices of this key width (meshgen.pointer; coords only)

    def __post_init__(self):
        if not 6 <= self.bits <= 12:
            raise ValueError(f"bits must be 6..12, got {self.bits}")
        if len(self.layers) < 1 or any(n < 1 for n in self.layers):
            raise ValueError(f"layers needs >= 1 block per level, got {self.layers}")
        if len(self.layers) - 1 > len(token_layout(self).shorten):
            raise ValueError(f"{len(self.layers)} levels, but {token_layout(self).name} tokens group only "
                             f"{len(token_layout(self).shorten)} times ({token_layout(self).shorten})")
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 2:
            raise ValueError("dim / n_heads must be an even integer (rotary)")
        if self.window < self.group or self.window % self.group:
            raise ValueError(f"window must be a positive multiple of {self.group}, got {self.window}")

    @property
    def n_levels(self) -> int:
        return len(self.layers)

    @property
    def shorten(self) -> tuple[int, ...]:
        """Shortening factor between level ``i`` and ``i + 1`` (``(3, 3)`` for ``coords``)."""
        return token_layout(self).shorten[: self.n_levels - 1]

    def span(self, level: int) -> int:
        """Tokens per element of ``level`` (1 at the token level)."""
        return math.prod(self.shorten[:level])

    @property
    def group(self) -> int:
        """Tokens per element of the innermost level (9 for three ``coords`` levels): the window alignment."""
        return self.span(self.n_levels - 1)

    @property
    def n_layers(self) -> int:
        return sum(self.layers)

    def split(self, level: int) -> tuple[int, int]:
        """(down, up) block counts of a level; the innermost level has only 'down'."""
        n = self.layers[level]
        return (n, 0) if level == self.n_levels - 1 else (n // 2, n - n // 2)

    def level_windows(self, window: int | None = None) -> tuple[int, ...]:
        w = self.window if window is None else window
        if w < self.group or w % self.group:
            raise ValueError(f"window must be a positive multiple of {self.group}, got {w}")
        return tuple(w // self.span(i) for i in range(self.n_levels))


@dataclass
class LevelState:
    """Per-level decoding state (also used, throw-away, by the uncached forward)."""

    n: int = 0  # elements of this level seen so far
    pending: torch.Tensor | None = None  # (B, m<=2, D) down outputs of the open group; None = two zero pads
    last_up: torch.Tensor | None = None  # (B, 1, D) output of the newest coarse element
    down: list[LayerCache] | None = None
    up: list[LayerCache] | None = None


@dataclass
class HourglassCache:
    context: Context
    levels: list[LevelState]
    windows: tuple[int, ...]
    start_pos: int = 0

    @property
    def pos(self) -> int:
        """Tokens consumed so far (the next token's position relative to ``start_pos``)."""
        return self.levels[0].n

    def kv_lengths(self) -> list[int]:
        """Cached keys per self-attention layer, level by level (for memory checks)."""
        return [c.self_kv.length for st in self.levels for c in (st.down or []) + (st.up or [])]


class HourglassLevel(nn.Module):
    def __init__(self, config: HourglassConfig, level: int, cross_down: list[bool], cross_up: list[bool]):
        super().__init__()
        D = config.dim
        self.period = config.group // config.span(level)  # elements of this level per innermost element
        self.factor = config.shorten[level] if level < config.n_levels - 1 else 1  # elements per coarse element
        self.innermost = level == config.n_levels - 1
        self.role_emb = nn.Embedding(self.period + 1, D)

        def block(cross: bool) -> Block:
            return Block(
                D,
                config.n_heads,
                cross=cross,
                context_dim=config.encoder.dim,
                mlp_ratio=config.mlp_ratio,
                dropout=config.dropout,
            )

        self.down = nn.ModuleList(block(c) for c in cross_down)
        self.up = nn.ModuleList(block(c) for c in cross_up)
        if not self.innermost:
            self.pool = nn.Linear(self.factor * D, D)
            self.unpool = nn.Linear(D, self.factor * D)
            self.unpool.is_residual = True


class HourglassTransformer(MeshGenerator):
    config_class = HourglassConfig

    def __init__(self, config: HourglassConfig):
        super().__init__()
        self.config = config
        self._build_shared(config)
        L = config.n_levels
        order = [("down", i) for i in range(L)] + [("up", i) for i in reversed(range(L - 1))]
        flags: dict[tuple[str, int], list[bool]] = {}
        k = 0
        for part, i in order:
            n = config.split(i)[0 if part == "down" else 1]
            flags[(part, i)] = [config.cross_every > 0 and (k + j) % config.cross_every == 0 for j in range(n)]
            k += n
        self.levels = nn.ModuleList(
            HourglassLevel(config, i, flags[("down", i)], flags.get(("up", i), [])) for i in range(L)
        )
        self.rotary = RotaryEmbedding(config.dim // config.n_heads, base=config.rope_base)
        self.init_weights(config.n_layers)

    # ---- decoding cache ------------------------------------------------------------------------
    def init_cache(
        self, cond: Conditioning | Context, *, window: int | None = None, batch_size: int | None = None
    ) -> HourglassCache:
        """Empty cache for decoding from BOS; ``window`` (tokens, multiple of 9) defaults to the config's."""
        ctx = self.encode(cond, batch_size=batch_size)
        windows = self.config.level_windows(window)
        levels = [
            LevelState(down=new_layer_caches(lvl.down, w), up=new_layer_caches(lvl.up, w))
            for lvl, w in zip(self.levels, windows, strict=True)
        ]
        return HourglassCache(ctx, levels, windows)

    # ---- forward -------------------------------------------------------------------------------
    def forward(
        self,
        tokens: torch.Tensor,
        *,
        cond: Conditioning | Context | None = None,
        start_pos: int | torch.Tensor = 0,
        cache: HourglassCache | None = None,
        targets: torch.Tensor | None = None,
    ) -> ModelOutput:
        """``tokens (B, T)`` -> logits ``(B, T, V)`` (position t predicts token t + 1).

        Parameters
        ----------
        cond : Conditioning or Context
            Ignored when ``cache`` is given (the cache holds the encoded context).
        start_pos : int or (B,) tensor
            Absolute position of ``tokens[:, 0]`` in the full sequence (multiple of 9; see module doc).
        cache : HourglassCache
            Continue decoding: ``tokens`` follow the cached ones; the cache is updated in place.
        targets : (B, T) or None
            Next-token targets; PAD targets are ignored by the loss.
        """
        B, T = tokens.shape
        if cache is None:
            ctx = self.encode(cond, batch_size=B)
            states = [LevelState() for _ in self.levels]
            windows = self.config.level_windows()
        else:
            ctx, states, windows, start_pos = cache.context, cache.levels, cache.windows, cache.start_pos
        start = start_positions(start_pos, B, tokens.device, multiple=self.config.group)  # (1 or B, 1)
        x = self.tok_emb(tokens) + ctx.cond_emb[:, None, :]  # (B, T, D)
        h = self._level(0, x, start=start, ctx=ctx, states=states, windows=windows)
        return self._output(h, targets, tokens)

    def _level(
        self,
        i: int,
        x: torch.Tensor,
        *,
        start: torch.Tensor,
        ctx: Context,
        states: list[LevelState],
        windows: tuple[int, ...],
    ) -> torch.Tensor:
        """Run level ``i`` (and, recursively, the coarser ones) on ``x (B, n, D)``, its next ``n`` elements."""
        lvl, st = self.levels[i], states[i]
        B, n, D = x.shape
        pos = start // self.config.span(i) + st.n + torch.arange(n, device=x.device)  # (1 or B, n) absolute index
        x = x + lvl.role_emb(role_ids(pos, lvl.period))
        kw = dict(rope=self.rotary(pos), window=windows[i], context=ctx.latents)
        h = run_blocks(lvl.down, x, caches=st.down, **kw)  # (B, n, D)
        if lvl.innermost:
            st.n += n
            return h

        # shorten: groups of s with s - 1 zero pads in front of element 0 (group u = elements su-s+1..su)
        s = lvl.factor
        pending = h.new_zeros(B, s - 1, D) if st.pending is None else st.pending
        buf = torch.cat([pending, h], dim=1)  # (B, m + n, D)
        g = buf.shape[1] // s  # groups completed by this chunk
        last_up = h.new_zeros(B, 1, D) if st.last_up is None else st.last_up
        u_first = states[i + 1].n - 1  # coarse index of last_up (-1 before the first group)
        if g:
            pooled = lvl.pool(buf[:, : s * g].reshape(B, g, s * D))  # (B, g, D)
            coarse = self._level(i + 1, pooled, start=start, ctx=ctx, states=states, windows=windows)
            src = torch.cat([last_up, coarse], dim=1)  # (B, g + 1, D) coarse indices u_first..
        else:
            src = last_up

        # upsample: element q takes coarse group q // s, projected for its slot q % s
        up = lvl.unpool(src).reshape(B, s * src.shape[1], D)  # (B, s (g + 1), D) row = q - s u_first
        off = st.n - s * u_first
        y = run_blocks(lvl.up, h + up[:, off : off + n], caches=st.up, **kw)  # (B, n, D)

        st.pending = buf[:, s * g :].clone()
        st.last_up = src[:, -1:].clone()
        st.n += n
        return y
