"""VAT: a variational shape tokenizer -- a whole shape as a few hundred coarse-to-fine tokens (the model).

After "3D representation in 512-Byte: Variational tokenizer is the key for autoregressive 3D generation":

* **Encoder**: ``n_points`` surface points with normals, Fourier-embedded, and ``L`` learned query tokens.
  ``encoder="in_context"`` (the paper's): queries and points go through one transformer together (the same
  self-attention); ``encoder="perceiver"``: the queries read the points by one cross-attention, then
  self-attend among themselves (attention cost ``L x N + L^2`` instead of ``(L + N)^2`` per layer). The queries'
  outputs are the ``L`` latents. ``queries="points"`` anchors each query at one of ``L`` farthest-point samples of
  the input (its embedding plus the learned query of its slot; samples in Morton order, so a run of the latent
  line is a region of space and the coarse scales average regions): learned queries alone start almost equal, so
  the first cross-attention is uniform and every latent reads the same average of the points (measured: a
  max / min attention weight of 1.008 at initialisation).
* **Variational bottleneck**: each latent becomes a Gaussian (mean, log-variance; KL to N(0, I)); the sample
  (the mean at inference) is quantized by **multi-scale residual quantization**
  (:class:`~tokenizers3d.msrq.MultiScaleRQ`, scales e.g. 1, 4, 16, 64, 256 tokens of one shared codebook).
* **Decoder**: the quantized line -> transformer -> a **triplane** (three ``C x R x R`` feature planes: learned
  plane queries read the latents by cross-attention at ``R0 x R0``, then transposed convolutions double the
  resolution up to ``R``) -> a small MLP maps the sum of the three bilinear plane features at a query point to
  an occupancy logit -> marching cubes at any resolution -> a watertight mesh.
* ``decoder="cross"`` replaces the triplane by a cross-attention field (3DShape2VecSet style): each query point,
  Fourier-embedded, reads the decoded latent tokens by one cross-attention, and an MLP gives its logit. Slower to
  evaluate on a marching-cubes grid (every grid point attends to all ``L`` tokens), and kept as the measured
  alternative to the triplane (docs/tokenizers.md, "VAT").
* **Coarse to fine**: any prefix of the scales decodes to a complete, coarser shape (:meth:`VATModel.decode_ids`
  with ``scales=K``), so one token file serves every byte budget.

Coordinates are in the normalized frame of :class:`~tokenizers3d.mesh.Normalization` (bounding box centred,
longest side 1), so occupancy is learned in ``[-0.5, 0.5]^3`` (queries reach ``+-0.55``).
:func:`occupancy_targets` makes the training targets (uniform and near-surface points, inside or not, from
Open3D's ray-parity occupancy of a closed mesh). The model saves and loads through
:class:`~tokenizers3d.checkpoint.PretrainedMixin`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import PretrainedMixin
from .msrq import MSRQConfig, MultiScaleRQ

BOX = 0.55  # half side of the cube the occupancy field covers (the normalized mesh spans +-0.5)


@dataclass(frozen=True)
class VATConfig:
    """Shape of :class:`VATModel` and its loss weights.

    Attributes
    ----------
    dim, heads : int
        Transformer width and heads (encoder and decoder).
    enc_layers, dec_layers : int
    encoder : str
        ``"in_context"`` or ``"perceiver"`` (see the module docstring).
    n_freqs : int
        Fourier frequencies per coordinate of the point embedding.
    quantizer : MSRQConfig
        Latent width, scales (the last is the number of latents ``L``) and codebook.
    plane_base : int
        Resolution ``R0`` at which plane queries read the latents.
    plane_res : int
        Final triplane resolution ``R`` (``R0`` times a power of two).
    plane_channels : int
    mlp_hidden : int
    decoder : str
        ``"triplane"`` (the paper's) or ``"cross"`` (query points cross-attend to the decoded latent tokens).
    queries : str
        ``"learned"`` (one learned vector per latent slot) or ``"points"`` (anchored at farthest-point samples of
        the input, plus the learned vector; see the module docstring).
    plane_pos : bool
        Add a fixed sinusoidal embedding of (plane, row, column) to the plane queries. Without it the learned
        queries start almost equal (initialised at 0.02), so every plane cell reads the same mix of the latents,
        the triplane is spatially flat and the decoder can only predict the average occupancy: the configuration
        of ``configs/vat_cpu_perceiver.yaml`` predicted "outside" everywhere for 150 steps even with 8 fixed shapes
        and continuous latents (docs/tokenizers.md, "VAT").
    query_blocks : int
        ``decoder="cross"`` only: further reads of the decoded tokens by the query points after the first
        (:class:`QueryBlock`: cross-attention and an MLP, pre-norm, residual). Their output projections start at
        zero, so a trained model grown by them (``train.init_from``) computes exactly what it did until they learn.
    kl_weight, commit_weight : float
    """

    dim: int = 192
    heads: int = 4
    enc_layers: int = 3
    dec_layers: int = 3
    n_freqs: int = 8
    encoder: str = "in_context"
    quantizer: MSRQConfig = field(default_factory=MSRQConfig)
    plane_base: int = 8
    plane_res: int = 64
    plane_channels: int = 32
    mlp_hidden: int = 64
    plane_pos: bool = True
    decoder: str = "triplane"
    queries: str = "learned"
    query_blocks: int = 0
    kl_weight: float = 1e-4
    commit_weight: float = 1.0

    def __post_init__(self):
        if self.encoder not in ("in_context", "perceiver"):
            raise ValueError(f"encoder must be in_context or perceiver, got {self.encoder!r}")
        if self.decoder not in ("triplane", "cross"):
            raise ValueError(f"decoder must be triplane or cross, got {self.decoder!r}")
        if self.queries not in ("learned", "points"):
            raise ValueError(f"queries must be learned or points, got {self.queries!r}")
        if self.query_blocks < 0 or (self.query_blocks and self.decoder != "cross"):
            raise ValueError(f"query_blocks must be 0 or more, and only with decoder='cross' (got {self.query_blocks}"
                             f" with {self.decoder!r})")
        ratio = self.plane_res / self.plane_base
        if ratio < 1 or ratio != 2 ** round(math.log2(ratio)):
            raise ValueError(f"plane_res {self.plane_res} must be plane_base {self.plane_base} times a power of two")

    @property
    def bits_per_token(self) -> int:
        return max(1, math.ceil(math.log2(self.quantizer.codebook_size)))

    def bytes_for(self, scales: int) -> int:
        """Packed size of the ids of the first ``scales`` scales."""
        return math.ceil(sum(self.quantizer.scales[:scales]) * self.bits_per_token / 8)


def fourier(x: torch.Tensor, n_freqs: int) -> torch.Tensor:
    """``(..., 3)`` -> ``(..., 3 + 6 n_freqs)``: the coordinates and their sines and cosines at octaves of pi."""
    freqs = (2.0 ** torch.arange(n_freqs, device=x.device, dtype=x.dtype)) * math.pi
    ang = x[..., None] * freqs  # (..., 3, F)
    return torch.cat([x, ang.sin().flatten(-2), ang.cos().flatten(-2)], dim=-1)


def plane_embedding(base: int, dim: int) -> torch.Tensor:
    """``(3 base^2, dim)`` fixed sinusoidal features of each triplane cell's (plane, row, column), in the order of
    the plane queries; ``dim // 6`` frequencies per index (sine and cosine), zero-padded to ``dim``."""
    k = max(1, dim // 6)
    plane, row, col = torch.meshgrid(torch.arange(3.0), torch.arange(float(base)), torch.arange(float(base)),
                                     indexing="ij")
    idx = torch.stack([plane / 3, row / base, col / base], dim=-1).reshape(-1, 3)  # (3 base^2, 3) in [0, 1)
    ang = idx[..., None] * (math.pi * torch.arange(1, k + 1.0))  # (T, 3, k)
    feats = torch.cat([ang.sin(), ang.cos()], dim=-1).reshape(len(idx), -1)[:, :dim]
    return F.pad(feats, (0, dim - feats.shape[1]))


def morton_order(points: torch.Tensor, bits: int = 10) -> torch.Tensor:
    """``(B, L, 3)`` points in ``[-0.5, 0.5]^3`` -> ``(B, L)`` indices that sort each row along the Z-order curve."""
    n = 1 << bits
    q = ((points + 0.5).clamp(0, 1 - 1e-6) * n).long()  # (B, L, 3) cells
    code = torch.zeros(q.shape[:-1], dtype=torch.long, device=points.device)
    for b in range(bits):
        for a in range(3):
            code |= ((q[..., a] >> b) & 1) << (3 * b + a)
    return code.argsort(dim=-1)


def farthest_points(points: torch.Tensor, k: int) -> torch.Tensor:
    """``(B, N, 3)`` -> ``(B, k)`` indices of ``k`` farthest-point samples (deterministic: the first is the point
    farthest from the centroid), returned in Morton order of the chosen points."""
    b, n, _ = points.shape
    if k > n:
        raise ValueError(f"{k} anchor points requested from a cloud of {n}")
    idx = torch.empty(b, k, dtype=torch.long, device=points.device)
    rows = torch.arange(b, device=points.device)
    dist = (points - points.mean(1, keepdim=True)).pow(2).sum(-1)  # (B, N)
    cur = dist.argmax(-1)
    dist = torch.full((b, n), float("inf"), device=points.device)
    for i in range(k):
        idx[:, i] = cur
        dist = torch.minimum(dist, (points - points[rows, cur][:, None]).pow(2).sum(-1))
        cur = dist.argmax(-1)
    chosen = points[rows[:, None], idx]  # (B, k, 3)
    return torch.gather(idx, 1, morton_order(chosen))


def _encoder(dim: int, heads: int, layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class QueryBlock(nn.Module):
    """One more read of the decoded latent tokens by the query points of the cross-attention field: pre-norm
    cross-attention, then a pre-norm MLP, each added to the query's features. Both output projections start at
    zero: a block added to a trained decoder changes nothing until training moves them (the decoder grows
    without losing what it knew)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim))
        for layer in (self.attn.out_proj, self.mlp[-1]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, h: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(h)
        h = h + self.attn(x, tokens, tokens, need_weights=False)[0]
        return h + self.mlp(self.mlp_norm(h))


@dataclass
class VATOutput:
    """What :meth:`VATModel.forward` returns (losses are scalars)."""

    logits: torch.Tensor
    loss: torch.Tensor
    occupancy_loss: torch.Tensor
    kl: torch.Tensor
    commit: torch.Tensor
    codes: list
    accuracy: torch.Tensor


class VATModel(nn.Module, PretrainedMixin):
    """The VAT tokenizer network (see the module docstring)."""

    config_class = VATConfig

    def __init__(self, config: VATConfig | None = None):
        super().__init__()
        self.config = cfg = config or VATConfig()
        q = cfg.quantizer
        d = cfg.dim
        self.point_in = nn.Linear(2 * (3 + 6 * cfg.n_freqs), d)  # position and normal, each embedded
        self.queries = nn.Parameter(torch.randn(q.length, d) * 0.02)
        self.encoder = _encoder(d, cfg.heads, cfg.enc_layers)
        if cfg.encoder == "perceiver":
            self.read_points = nn.MultiheadAttention(d, cfg.heads, batch_first=True)
            self.read_norm = nn.LayerNorm(d)
        self.to_gauss = nn.Linear(d, 2 * q.dim)
        self.quantizer = MultiScaleRQ(q)
        self.from_latent = nn.Linear(q.dim, d)
        self.latent_pos = nn.Parameter(torch.randn(q.length, d) * 0.02)
        self.decoder = _encoder(d, cfg.heads, cfg.dec_layers)
        if cfg.decoder == "cross":
            self.query_in = nn.Linear(3 + 6 * cfg.n_freqs, d)
            self.query_attn = nn.MultiheadAttention(d, cfg.heads, batch_first=True)
            self.query_norm = nn.LayerNorm(d)
            self.query_mlp = nn.Sequential(nn.Linear(d, cfg.mlp_hidden), nn.SiLU(), nn.Linear(cfg.mlp_hidden, 1))
            self.query_blocks = nn.ModuleList(QueryBlock(d, cfg.heads) for _ in range(cfg.query_blocks))
            return
        self.plane_queries = nn.Parameter(torch.randn(3 * cfg.plane_base ** 2, d) * 0.02)
        self.register_buffer("plane_pos", plane_embedding(cfg.plane_base, d) if cfg.plane_pos
                             else torch.zeros(3 * cfg.plane_base ** 2, d), persistent=False)
        self.plane_attn = nn.MultiheadAttention(d, cfg.heads, batch_first=True)
        self.plane_norm = nn.LayerNorm(d)
        ups, ch = [], d
        for _ in range(int(round(math.log2(cfg.plane_res / cfg.plane_base)))):
            ups += [nn.ConvTranspose2d(ch, cfg.plane_channels, 4, stride=2, padding=1), nn.SiLU()]
            ch = cfg.plane_channels
        ups.append(nn.Conv2d(ch, cfg.plane_channels, 3, padding=1))
        self.plane_up = nn.Sequential(*ups)
        self.mlp = nn.Sequential(nn.Linear(cfg.plane_channels, cfg.mlp_hidden), nn.SiLU(),
                                 nn.Linear(cfg.mlp_hidden, cfg.mlp_hidden), nn.SiLU(), nn.Linear(cfg.mlp_hidden, 1))

    def encoder_side(self) -> list[nn.Module]:
        """The modules that turn points into ids: the point embedding, encoder, Gaussian head and the quantizer
        with its codebook (with the learned ``queries``, what :meth:`freeze_encoder_side` holds fixed)."""
        names = ("point_in", "encoder", "read_points", "read_norm", "to_gauss", "quantizer")
        return [getattr(self, n) for n in names if hasattr(self, n)]

    def freeze_encoder_side(self) -> None:
        """No gradient for the encoder side and the learned queries (``train.freeze_encoder``: only the decoder
        learns, so a shape keeps its ids); the trainer keeps :meth:`encoder_side` in evaluation mode too, so the
        codebook takes no EMA update."""
        for module in self.encoder_side():
            module.requires_grad_(False)
        self.queries.requires_grad_(False)

    # ---- encoder ----------------------------------------------------------------------------------------
    def encode_gaussian(self, points: torch.Tensor, normals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance ``(B, L, c)`` of the latents of point clouds ``(B, N, 3)`` with normals."""
        cfg = self.config
        tokens = self.point_in(torch.cat([fourier(points, cfg.n_freqs), fourier(normals, cfg.n_freqs)], -1))
        b = points.shape[0]
        q = self.queries.expand(b, -1, -1)
        if cfg.queries == "points":
            with torch.no_grad():
                anchors = farthest_points(points, cfg.quantizer.length)  # (B, L)
            q = q + torch.gather(tokens, 1, anchors[..., None].expand(-1, -1, tokens.shape[-1]))
        if cfg.encoder == "perceiver":
            x = self.encoder(self.read_norm(q + self.read_points(q, tokens, tokens, need_weights=False)[0]))
        else:
            x = self.encoder(torch.cat([q, tokens], dim=1))[:, : cfg.quantizer.length]
        mean, logvar = self.to_gauss(x).chunk(2, dim=-1)
        return mean, logvar.clamp(-10.0, 5.0)

    @torch.no_grad()
    def encode(self, points: torch.Tensor, normals: torch.Tensor) -> list[torch.Tensor]:
        """Per-scale token ids (coarse to fine) of point clouds ``(B, N, 3)`` in the normalized frame."""
        return self.codes_of(self.encode_gaussian(points, normals)[0])

    @torch.no_grad()
    def codes_of(self, mean: torch.Tensor) -> list[torch.Tensor]:
        """Per-scale token ids of latent means ``(B, L, c)`` (the quantizer in inference mode: no codebook update)."""
        was = self.quantizer.training
        self.quantizer.eval()
        codes = self.quantizer(mean).codes
        self.quantizer.train(was)
        return codes

    # ---- decoder ----------------------------------------------------------------------------------------
    def decoded_tokens(self, latent: torch.Tensor) -> torch.Tensor:
        """Quantized latent line ``(B, L, c)`` -> the decoder transformer's tokens ``(B, L, D)``."""
        return self.decoder(self.from_latent(latent) + self.latent_pos)

    def field(self, latent: torch.Tensor) -> torch.Tensor:
        """What :meth:`occupancy_logits` reads: triplanes ``(B, 3, C, R, R)``, or (``decoder="cross"``) the decoded
        tokens ``(B, L, D)``."""
        return self.decoded_tokens(latent) if self.config.decoder == "cross" else self.triplanes(latent)

    def plane_tokens(self, latent: torch.Tensor) -> torch.Tensor:
        """Quantized latent line ``(B, L, c)`` -> one feature per triplane cell at the base resolution
        ``(B, 3 R0^2, D)``: the plane queries (with their positional embedding) read the decoded latents."""
        x = self.decoded_tokens(latent)
        q = (self.plane_queries + self.plane_pos).expand(latent.shape[0], -1, -1)
        return self.plane_norm(q + self.plane_attn(q, x, x, need_weights=False)[0])

    def triplanes(self, latent: torch.Tensor) -> torch.Tensor:
        """Quantized latent line ``(B, L, c)`` -> triplane features ``(B, 3, C, R, R)``."""
        cfg = self.config
        b = latent.shape[0]
        planes = self.plane_tokens(latent)  # (B, 3 R0^2, D)
        r0 = cfg.plane_base
        planes = planes.reshape(b * 3, r0, r0, cfg.dim).permute(0, 3, 1, 2)
        planes = self.plane_up(planes)
        return planes.reshape(b, 3, cfg.plane_channels, cfg.plane_res, cfg.plane_res)

    def occupancy_logits(self, planes: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Occupancy logits ``(B, M)`` at points ``(B, M, 3)`` (normalized frame) from a :meth:`field`: triplanes
        ``(B, 3, C, R, R)``, or the decoded tokens ``(B, L, D)`` of the cross-attention decoder."""
        if self.config.decoder == "cross":
            q = self.query_in(fourier(queries, self.config.n_freqs))  # (B, M, D)
            h = self.query_norm(q + self.query_attn(q, planes, planes, need_weights=False)[0])
            for block in self.query_blocks:
                h = block(h, planes)
            return self.query_mlp(h).squeeze(-1)
        b, m, _ = queries.shape
        uv = (queries / BOX).clamp(-1.0, 1.0)
        coords = torch.stack([uv[..., [0, 1]], uv[..., [0, 2]], uv[..., [1, 2]]], dim=1)  # (B, 3, M, 2)
        feats = F.grid_sample(planes.flatten(0, 1), coords.reshape(b * 3, m, 1, 2), mode="bilinear",
                              align_corners=False)  # (B*3, C, M, 1)
        feats = feats.reshape(b, 3, -1, m).sum(1).transpose(1, 2)  # (B, M, C)
        return self.mlp(feats).squeeze(-1)

    def decode_ids(self, codes: list[torch.Tensor], *, scales: int | None = None) -> torch.Tensor:
        """The :meth:`field` of per-scale ids; ``scales=K`` decodes only the first ``K`` (a coarser shape)."""
        return self.field(self.quantizer.decode(codes, scales=scales))

    # ---- training ---------------------------------------------------------------------------------------
    def forward(self, points: torch.Tensor, normals: torch.Tensor, queries: torch.Tensor,
                occupancy: torch.Tensor, *, noise: float = 1.0, quantize: bool = True,
                prefix: int | None = None) -> VATOutput:
        """Losses of a batch: surface points ``(B, N, 3)`` + normals, query points ``(B, M, 3)`` and their
        occupancy ``(B, M)`` in {0, 1}.

        The warm-up of a training run (``scripts/train_vat.py``) can scale the posterior's sampling noise
        (``noise``, 0 = the mean) and bypass the quantizer (``quantize=False``: the decoder reads the continuous
        latent, no commitment, codebook untouched -- it is initialised from the latents when quantization starts):
        without both, the first steps' noise hides the shape from the decoder, which learns the average occupancy,
        and the commitment term then pulls every latent onto one code (docs/tokenizers.md, "VAT").

        ``prefix=K`` (tail drop, with ``quantize``) adds the occupancy loss of the shape decoded from the first ``K``
        scales only (the decoder learns to decode every prefix; the prefix latent carries no gradient to the
        encoder), so a file cut to ``K`` scales still decodes to a coarse shape."""
        cfg = self.config
        mean, logvar = self.encode_gaussian(points, normals)
        z = mean + noise * torch.randn_like(mean) * (0.5 * logvar).exp() if self.training and noise > 0 else mean
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1).mean()
        if quantize:
            q = self.quantizer(z)
            latent, commit, codes, q_loss = q.quantized, q.commit, q.codes, q.loss
        else:
            latent, commit, codes, q_loss = z, z.new_zeros(()), [], z.new_zeros(())
        logits = self.occupancy_logits(self.field(latent), queries)
        occ = F.binary_cross_entropy_with_logits(logits, occupancy.float())
        loss = occ + cfg.kl_weight * kl + cfg.commit_weight * q_loss
        if prefix is not None and quantize and prefix < len(codes):
            coarse = self.occupancy_logits(self.field(self.quantizer.decode(codes, scales=prefix)), queries)
            loss = loss + F.binary_cross_entropy_with_logits(coarse, occupancy.float())
        acc = ((logits > 0) == (occupancy > 0.5)).float().mean()
        return VATOutput(logits, loss, occ, kl, commit, codes, acc)

    # ---- meshes -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def occupancy_grid(self, planes: torch.Tensor, resolution: int, *, chunk: int = 65536) -> np.ndarray:
        """Occupancy probabilities on a ``resolution^3`` grid over ``[-BOX, BOX]^3`` (one shape: ``planes[0]``, a
        :meth:`field`)."""
        axis = torch.linspace(-BOX, BOX, resolution, device=planes.device)
        grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(1, -1, 3)
        out = [torch.sigmoid(self.occupancy_logits(planes[:1], part)) for part in grid.split(chunk, dim=1)]
        return torch.cat(out, dim=1).reshape(resolution, resolution, resolution).cpu().numpy()


def grid_to_mesh(occupancy: np.ndarray, *, level: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes of an occupancy grid over ``[-BOX, BOX]^3`` -> ``(vertices (V, 3), faces (F, 3))``, outward
    wound; empty arrays when the level is not crossed (no shape)."""
    from skimage.measure import marching_cubes

    occ = np.pad(np.asarray(occupancy, dtype=np.float32), 1, constant_values=0.0)  # closed at the box
    if occ.max() <= level or occ.min() >= level:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    res = occupancy.shape[0]
    step = 2 * BOX / (res - 1)
    vertices, faces, _, _ = marching_cubes(occ, level, spacing=(step, step, step))
    vertices = vertices - step - BOX  # the pad's extra cell
    return vertices, faces[:, ::-1].astype(np.int64)  # skimage winds inward for "inside = high"


def occupancy_targets(vertices: np.ndarray, faces: np.ndarray, rng: np.random.Generator, *, n_uniform: int = 2048,
                      n_near: int = 2048, sigma: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """Query points ``(M, 3)`` float32 and their occupancy ``(M,)`` float32 for a mesh of closed pieces in the
    normalized frame: ``n_uniform`` uniform in ``[-BOX, BOX]^3`` and ``n_near`` surface samples moved by
    ``N(0, sigma)``. A point is inside when it is inside any connected piece (Open3D's ray parity per piece, so
    overlapping parts -- a chair's legs through its seat -- count as their union: :func:`mesh_occupancy`)."""
    v = np.asarray(vertices, dtype=np.float32)
    f = np.asarray(faces, dtype=np.int64)
    tri = v[f]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    pick = rng.choice(len(f), n_near, p=area / area.sum())
    r1, r2 = np.sqrt(rng.random(n_near)), rng.random(n_near)
    w = np.stack([1 - r1, r1 * (1 - r2), r1 * r2], axis=1)
    near = (tri[pick] * w[:, :, None]).sum(1) + rng.normal(scale=sigma, size=(n_near, 3))
    uniform = rng.uniform(-BOX, BOX, size=(n_uniform, 3))
    queries = np.concatenate([uniform, near]).astype(np.float32)
    return queries, mesh_occupancy(v, f, queries).astype(np.float32)


def mesh_occupancy(vertices: np.ndarray, faces: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Whether each of ``queries (M, 3)`` lies inside the mesh ``(M,)`` bool: inside any connected piece (Open3D's
    ray parity per piece, so overlapping parts count as their union; meaningful for closed pieces)."""
    import open3d as o3d
    import trimesh

    from .mesh import ArrayMesh
    from .part_sets import raycasting_scene

    v = np.asarray(vertices, dtype=np.float32)
    f = np.asarray(faces, dtype=np.int64)
    mesh = trimesh.Trimesh(v, f, process=False)
    pieces = trimesh.graph.connected_components(mesh.face_adjacency, nodes=np.arange(len(f)), min_len=1)
    occ = np.zeros(len(queries), dtype=bool)
    q = o3d.core.Tensor(np.asarray(queries, dtype=np.float32))
    for piece in pieces:
        occ |= raycasting_scene(ArrayMesh(v, f[np.asarray(piece)])).compute_occupancy(q).numpy().astype(bool)
    return occ
