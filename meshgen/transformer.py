"""Flat decoder-only transformer over the ``coords`` (or ``vqvae``) sequence: the baseline for the hourglass.

Same width, embeddings (token, role within the face, face-count), rotary positions, local attention
window, cross-attention every ``cross_every``-th block, cache and call signature as
:class:`meshgen.hourglass.HourglassTransformer`; only the depth differs, picked by
:func:`matched_transformer_config` so both have the same number of decoder parameters.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .attention import RotaryEmbedding
from .encoder import EncoderConfig
from .layers import Block, LayerCache, new_layer_caches, role_ids, run_blocks
from .modeling import Conditioning, Context, MeshGenerator, ModelOutput, start_positions, token_layout


@dataclass(frozen=True)
class TransformerConfig:
    bits: int = 7
    dim: int = 256
    n_heads: int = 4
    n_layers: int = 10
    window: int = 1152  # attention window in tokens (multiple of 9)
    cross_every: int = 4
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
        if self.n_layers < 1:
            raise ValueError("n_layers must be >= 1")
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 2:
            raise ValueError("dim / n_heads must be an even integer (rotary)")
        if self.window < self.group or self.window % self.group:
            raise ValueError(f"window must be a positive multiple of {self.group}, got {self.window}")

    @property
    def group(self) -> int:
        """Tokens per face (9 for ``coords``, ``S * D`` for ``vqvae``): the window alignment."""
        return token_layout(self).face_tokens


@dataclass
class TransformerCache:
    context: Context
    layers: list[LayerCache]
    window: int
    start_pos: int = 0
    pos: int = 0

    def kv_lengths(self) -> list[int]:
        return [c.self_kv.length for c in self.layers]


class Transformer(MeshGenerator):
    config_class = TransformerConfig

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self._build_shared(config)
        self.role_emb = nn.Embedding(config.group + 1, config.dim)
        self.blocks = nn.ModuleList(
            Block(
                config.dim,
                config.n_heads,
                cross=config.cross_every > 0 and i % config.cross_every == 0,
                context_dim=config.encoder.dim,
                mlp_ratio=config.mlp_ratio,
                dropout=config.dropout,
            )
            for i in range(config.n_layers)
        )
        self.rotary = RotaryEmbedding(config.dim // config.n_heads, base=config.rope_base)
        self.init_weights(config.n_layers)

    def init_cache(
        self, cond: Conditioning | Context, *, window: int | None = None, batch_size: int | None = None
    ) -> TransformerCache:
        w = self.config.window if window is None else window
        if w < self.config.group or w % self.config.group:
            raise ValueError(f"window must be a positive multiple of {self.config.group}, got {w}")
        ctx = self.encode(cond, batch_size=batch_size)
        return TransformerCache(ctx, new_layer_caches(self.blocks, w), w)

    def forward(
        self,
        tokens: torch.Tensor,
        *,
        cond: Conditioning | Context | None = None,
        start_pos: int | torch.Tensor = 0,
        cache: TransformerCache | None = None,
        targets: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Same contract as :meth:`HourglassTransformer.forward`."""
        B, T = tokens.shape
        if cache is None:
            ctx, caches, window, q0 = self.encode(cond, batch_size=B), None, self.config.window, 0
        else:
            ctx, caches, window, q0, start_pos = cache.context, cache.layers, cache.window, cache.pos, cache.start_pos
        start = start_positions(start_pos, B, tokens.device, multiple=self.config.group)  # (1 or B, 1)
        pos = start + q0 + torch.arange(T, device=tokens.device)  # (1 or B, T)
        x = self.tok_emb(tokens) + self.role_emb(role_ids(pos, self.config.group)) + ctx.cond_emb[:, None, :]  # (B, T, D)
        h = run_blocks(self.blocks, x, rope=self.rotary(pos), window=window, context=ctx.latents, caches=caches)
        if cache is not None:
            cache.pos += T
        return self._output(h, targets, tokens)


def _meta_params(module_fn) -> int:
    with torch.device("meta"):
        m = module_fn()
    params = {id(p): p for n, p in m.named_parameters() if not n.startswith("encoder.")}
    return sum(p.numel() for p in params.values())


def _decoder_params_fn(config: TransformerConfig):
    """Decoder parameters as a function of depth (built once per block kind on the meta device)."""
    one = _meta_params(lambda: Transformer(dataclasses.replace(config, n_layers=1, cross_every=0)))
    kw = dict(context_dim=config.encoder.dim, mlp_ratio=config.mlp_ratio)
    plain = _meta_params(lambda: Block(config.dim, config.n_heads, cross=False, **kw))
    cross = _meta_params(lambda: Block(config.dim, config.n_heads, cross=True, **kw))

    def params(n: int) -> int:
        n_cross = 0 if config.cross_every <= 0 else -(-n // config.cross_every)
        return one - plain + (n - n_cross) * plain + n_cross * cross

    return params


def matched_transformer_config(reference, *, tolerance: float = 0.1) -> TransformerConfig:
    """A :class:`TransformerConfig` with the reference's width and settings and the depth whose decoder
    parameter count (point encoder excluded) is closest to the reference's; raises if not within ``tolerance``.

    ``reference`` is a model or a config with the shared fields (e.g. a ``HourglassConfig``).
    """
    if isinstance(reference, MeshGenerator):
        ref_cfg, target = reference.config, reference.num_params(decoder_only=True)
    else:
        from .hourglass import HourglassConfig, HourglassTransformer  # lazy: hourglass is a sibling

        ref_cfg = reference
        model_cls = HourglassTransformer if isinstance(reference, HourglassConfig) else Transformer
        target = _meta_params(lambda: model_cls(reference))
    shared = {f.name: getattr(ref_cfg, f.name) for f in dataclasses.fields(TransformerConfig) if hasattr(ref_cfg, f.name)}
    shared.pop("n_layers", None)
    base = TransformerConfig(**shared)
    params = _decoder_params_fn(base)
    n = min(range(1, 257), key=lambda k: abs(params(k) - target))
    err = abs(params(n) - target) / target
    if err > tolerance:
        raise ValueError(f"no depth matches {target} decoder parameters within {tolerance:.0%} (best {err:.1%})")
    return dataclasses.replace(base, n_layers=n)
