"""The face VQ-VAE of MeshGPT / MeshAnything: faces -> a few discrete codes each -> exact grid coordinates.

Input: canonical quantized meshes (:func:`tokenizers3d.mesh.prepare`; faces in canonical order, each
rotated to its lowest corner). Per face (:func:`face_features`): the 9 grid coordinates (corner by corner,
z y x, as in the ``coords`` tokenizer), embedded through a table of the ``2^bits`` levels (initialised with
cosine/sine features, :func:`fourier_levels`) and also given as normalized numbers, the unit normal, the
square root of twice the area and the three interior angles.

Encoder: a linear map of those features, then ``graph_layers`` GraphSAGE-style layers (mean over the faces
that share an edge, :func:`face_adjacency`), then one vector per **vertex slot** (``slots = 3``: MeshGPT)
or per face (``slots = 1``: MeshAnything), layer-normed (no affine: a fixed scale the codebooks can follow).
With ``vertex_average`` the slot vectors of one vertex are averaged over the faces around it before
quantization (MeshGPT), so a vertex gets the same codes in every face it belongs to; off by default, because
without it the copies of a vertex in neighbouring faces carry independent codes, which the decoder combines
(it learned faster in short runs, ``docs/tokenizers.md``).

Quantizer: :class:`~tokenizers3d.rvq.ResidualVQ` with ``depth`` levels, so a face is ``slots * depth``
codes (6 for the default, like MeshGPT).

Decoder: the quantized slot vectors of a face are concatenated and mapped to ``dim``; a stack of
``decoder_layers`` residual 1-D convolution blocks (kernel ``decoder_kernel``, dilations 1, 2, 4, 1, 2, 4,
...) runs over each mesh's face sequence; the head gives, for each of the face's 9 coordinates, logits over
the ``2^bits`` levels: with ``head = "tied"`` (default) a vector per coordinate scored against the encoder's
level-embedding table (dot product, plus a bias per level), with ``"linear"`` a plain linear map to
``9 * 2^bits`` logits. Decoding takes the argmax, so the output is exact grid coordinates. Residual
branches (graph layers, conv blocks) start at zero, so the untrained network passes its input through.

Loss: cross entropy of each coordinate against a target smoothed over neighbouring levels (weights
``exp(-d^2 / (2 sigma^2))`` for ``|d| <= 2``, renormalized; MeshGPT) plus the quantizer's commitment loss.

:class:`FaceVQVAE` saves and loads through :class:`~tokenizers3d.checkpoint.PretrainedMixin`
(``config.json`` + ``model.safetensors``). The ``vqvae`` tokenizer (:mod:`tokenizers3d.vqvae`) wraps it.
This module imports PyTorch at the top: it is loaded only when a learned tokenizer is built.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import PretrainedMixin
from .mesh import QuantizedMesh, validate_bits
from .rvq import ResidualVQ, RVQConfig

N_FEATURES = 16  # 9 normalized coordinates + normal (3) + sqrt(2 area) + 3 angles
COORDS_PER_FACE = 9


@dataclass(frozen=True)
class FaceVQVAEConfig:
    """Architecture of :class:`FaceVQVAE` (saved in ``config.json``).

    Attributes
    ----------
    bits : int
        Grid resolution of the meshes it reads and writes (``2^bits`` levels per axis).
    dim : int
        Width of the encoder and decoder.
    coord_dim : int
        Width of the embedding of one grid coordinate (even).
    graph_layers : int
        Graph convolutions over face adjacency.
    slots : int
        3: codes per vertex slot of each face (MeshGPT); 1: codes per face (MeshAnything).
    vertex_average : bool
        Average a vertex's slot vectors over its faces before quantization (``slots = 3`` only).
    decoder_layers, decoder_kernel : int
        Residual 1-D convolution blocks over the face sequence and their (odd) kernel size.
    label_sigma : float
        Width (in levels) of the label smoothing over neighbouring levels; 0 = plain cross entropy.
    head : str
        ``"tied"``: coordinate vectors scored against the level-embedding table; ``"linear"``: a linear head.
    rvq : RVQConfig
        The residual quantizer (its ``dim`` is the width of a slot vector).
    """

    bits: int = 7
    dim: int = 192
    coord_dim: int = 32
    graph_layers: int = 3
    slots: int = 3
    vertex_average: bool = False
    decoder_layers: int = 6
    decoder_kernel: int = 3
    label_sigma: float = 0.5
    head: str = "tied"
    rvq: RVQConfig = field(default_factory=RVQConfig)

    def __post_init__(self):
        validate_bits(self.bits)
        if self.slots not in (1, 3):
            raise ValueError(f"slots must be 1 (per face) or 3 (per vertex slot), got {self.slots}")
        if self.head not in ("tied", "linear"):
            raise ValueError(f"head must be 'tied' or 'linear', got {self.head!r}")
        if self.coord_dim % 2:
            raise ValueError(f"coord_dim must be even (cosine and sine pairs), got {self.coord_dim}")
        if self.decoder_kernel % 2 != 1:
            raise ValueError(f"decoder_kernel must be odd, got {self.decoder_kernel}")

    @property
    def levels(self) -> int:
        return 1 << self.bits

    @property
    def codes_per_face(self) -> int:
        return self.slots * self.rvq.depth


def fourier_levels(levels: int, dim: int) -> torch.Tensor:
    """Initial level embeddings ``(levels, dim)``: cosine and sine of ``2 pi q / period`` for ``dim / 2`` periods
    from 2 to ``2 * levels`` levels (geometric); every row has norm ``sqrt(dim / 2)``, nearby levels get similar
    vectors and every level is its own best match by dot product."""
    q = torch.arange(levels, dtype=torch.float64)[:, None]  # (L, 1)
    periods = 2.0 * levels ** (torch.arange(dim // 2, dtype=torch.float64) / max(dim // 2 - 1, 1))  # (dim / 2,)
    angle = 2 * math.pi * q / periods  # (L, dim / 2)
    return torch.cat([angle.cos(), angle.sin()], dim=1).float()


# ---- graph and features ------------------------------------------------------------------------------
def face_adjacency(faces: np.ndarray) -> np.ndarray:
    """Pairs of faces that share an edge (either winding), both directions.

    Parameters
    ----------
    faces : (F, 3) int

    Returns
    -------
    (2, E) int64
        ``[src; dst]``; on an edge shared by ``k > 2`` faces, the faces are linked in a chain (sorted by
        face index), not all pairs.
    """
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    n = int(faces.max()) + 1 if len(faces) else 1
    e = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)  # (3F, 2) undirected edges
    key = e[:, 0] * n + e[:, 1]
    fid = np.repeat(np.arange(len(faces), dtype=np.int64), 3)
    order = np.lexsort((fid, key))
    key, fid = key[order], fid[order]
    same = (key[1:] == key[:-1]) & (fid[1:] != fid[:-1])
    a, b = fid[:-1][same], fid[1:][same]
    pairs = np.unique(np.concatenate([np.stack([a, b], 1), np.stack([b, a], 1)]), axis=0)  # (E, 2)
    return pairs.T.reshape(2, -1).astype(np.int64)


def face_features(corners: torch.Tensor, bits: int) -> torch.Tensor:
    """Continuous per-face features.

    Parameters
    ----------
    corners : (N, 3, 3) int
        Grid coordinates of each face's corners (in winding order), each corner as z, y, x.
    bits : int

    Returns
    -------
    (N, 16) float32
        Normalized coordinates (9, in ``[-0.5, 0.5]``), unit normal (3, in the z y x frame),
        ``sqrt(2 * area)`` (1), interior angles / pi (3, at corners 0, 1, 2).
    """
    p = -0.5 + (corners.float() + 0.5) / (1 << bits)  # (N, 3, 3)
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    cross = torch.linalg.cross(e1, e2, dim=-1)  # (N, 3)
    double_area = cross.norm(dim=-1, keepdim=True)  # (N, 1)
    normal = cross / double_area.clamp_min(1e-12)
    angles = []
    for i in range(3):
        u = p[:, (i + 1) % 3] - p[:, i]
        v = p[:, (i + 2) % 3] - p[:, i]
        cos = (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1)).clamp_min(1e-12)
        angles.append(torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi)
    return torch.cat([p.reshape(len(p), 9), normal, double_area.sqrt(), torch.stack(angles, -1)], dim=-1)


@dataclass
class FaceBatch:
    """Faces of several canonical quantized meshes: flat for the encoder's graph, per mesh for the decoder.

    Attributes
    ----------
    corners : (N, 3, 3) int64
        Grid coordinates of every face's corners (canonical winding), each corner as z, y, x; faces of
        mesh 0 first, each mesh's faces in canonical order.
    vertex : (N, 3) int64
        Batch-wide vertex id of each corner.
    edges : (2, E) int64
        Face adjacency (:func:`face_adjacency`) with batch-wide face ids.
    n_faces : tuple of int
        Faces of each mesh (sums to N).
    n_vertices : int
        Vertices of all meshes.
    """

    corners: torch.Tensor
    vertex: torch.Tensor
    edges: torch.Tensor
    n_faces: tuple[int, ...]
    n_vertices: int

    @classmethod
    def from_meshes(cls, meshes: Sequence[QuantizedMesh], device="cpu") -> FaceBatch:
        """Batch canonical quantized meshes (the caller puts them in canonical order)."""
        corners, vertex, edges = [], [], []
        f_off = v_off = 0
        for qm in meshes:
            faces = np.asarray(qm.faces, dtype=np.int64).reshape(-1, 3)
            verts = np.asarray(qm.vertices, dtype=np.int64).reshape(-1, 3)
            corners.append(verts[:, ::-1][faces])  # (F, 3, 3) as z, y, x
            vertex.append(faces + v_off)
            edges.append(face_adjacency(faces) + f_off)
            f_off += len(faces)
            v_off += len(verts)

        def cat(parts, shape):
            return torch.from_numpy(np.concatenate(parts) if parts else np.zeros(shape, np.int64)).to(device)

        return cls(cat(corners, (0, 3, 3)), cat(vertex, (0, 3)),
                   torch.from_numpy(np.concatenate(edges, axis=1) if edges else np.zeros((2, 0), np.int64)).to(device),
                   tuple(int(qm.n_faces) for qm in meshes), v_off)

    @property
    def targets(self) -> torch.Tensor:
        """(N, 9) int64: the coordinates the decoder must give back, in ``coords`` order."""
        return self.corners.reshape(len(self.corners), COORDS_PER_FACE)


def sequence_layout(n_faces: Sequence[int], device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Mesh index (N,) and position within its mesh (N,) of every face of a flat batch."""
    counts = torch.as_tensor(list(n_faces), dtype=torch.long, device=device)
    mesh = torch.repeat_interleave(torch.arange(len(counts), device=device), counts)
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(len(mesh), device=device) - starts[mesh]
    return mesh, position


# ---- layers -------------------------------------------------------------------------------------------
class GraphLayer(nn.Module):
    """GraphSAGE with mean aggregation, pre-norm and a residual: ``h + MLP([h, mean_{j ~ i} h_j])``."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(2 * dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)
        nn.init.zeros_(self.fc2.weight)  # the layer starts as the identity
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """``h (N, D)``, ``edges (2, E)`` -> ``(N, D)``; a face without neighbours aggregates zeros."""
        x = self.norm(h)
        src, dst = edges
        agg = torch.zeros_like(x).index_add_(0, dst, x[src])  # (N, D) sum over neighbours
        degree = torch.bincount(dst, minlength=len(x)).clamp_min(1).to(x.dtype)
        agg = agg / degree[:, None]
        return h + self.fc2(F.gelu(self.fc1(torch.cat([x, agg], dim=-1))))


class ConvBlock(nn.Module):
    """Pre-norm residual block over a padded face sequence: LayerNorm, dilated conv, GELU, 1x1 conv."""

    def __init__(self, dim: int, kernel: int, dilation: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv1d(dim, dim, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation)
        self.mix = nn.Conv1d(dim, dim, 1)
        nn.init.zeros_(self.mix.weight)  # the block starts as the identity
        nn.init.zeros_(self.mix.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x (B, T, D)``, ``mask (B, T, 1)`` (1 on faces, 0 on padding) -> ``(B, T, D)``, zero on padding."""
        y = self.norm(x).transpose(1, 2)  # (B, D, T)
        y = self.mix(F.gelu(self.conv(y))).transpose(1, 2)  # (B, T, D)
        return (x + y) * mask


# ---- the model -----------------------------------------------------------------------------------------
@dataclass
class VQVAEOutput:
    """Result of :meth:`FaceVQVAE.forward`.

    Attributes
    ----------
    loss : () float
        ``recon_loss + quantizer loss``.
    recon_loss : () float
        Smoothed cross entropy per coordinate (nats).
    commit_loss : () float
    logits : (N, 9, L) float
        Per face and coordinate, over the ``L = 2^bits`` levels.
    codes : (N, slots, depth) int64
    residual_norms : (depth,) float
        Mean residual norm after each quantizer level.
    within_one : () float
        Share of faces whose 9 predicted coordinates (argmax) are all within one level of the truth.
    exact : () float
        Share of faces predicted exactly.
    """

    loss: torch.Tensor
    recon_loss: torch.Tensor
    commit_loss: torch.Tensor
    logits: torch.Tensor
    codes: torch.Tensor
    residual_norms: torch.Tensor
    within_one: torch.Tensor
    exact: torch.Tensor


class TokenizerModel(nn.Module, PretrainedMixin):
    """Base of the learned tokenizers' models: ``TokenizerModel.from_pretrained(dir)`` rebuilds whichever
    subclass was saved there; a directory holding another kind of model (a generator) is refused."""

    @classmethod
    def _import_models(cls) -> None:
        from . import face_vqvae, pose_tokens  # noqa: F401  (every learned tokenizer model registers when imported)


class FaceVQVAE(TokenizerModel):
    """Face graph encoder -> residual VQ -> 1-D conv decoder over the face sequence (module docstring)."""

    config_class = FaceVQVAEConfig

    def __init__(self, config: FaceVQVAEConfig):
        super().__init__()
        self.config = config
        d, c = config.dim, config.rvq.dim
        self.coord_embed = nn.Embedding(config.levels, config.coord_dim)  # (L, c); the tied head reads it too
        if not self.coord_embed.weight.is_meta:
            with torch.no_grad():
                self.coord_embed.weight.copy_(fourier_levels(config.levels, config.coord_dim))
        self.face_in = nn.Linear(COORDS_PER_FACE * config.coord_dim + N_FEATURES, d)
        self.graph = nn.ModuleList(GraphLayer(d) for _ in range(config.graph_layers))
        self.enc_norm = nn.LayerNorm(d)
        self.to_slots = nn.Linear(d, config.slots * c)
        self.quantizer = ResidualVQ(config.rvq)
        self.from_slots = nn.Linear(config.slots * c, d)
        self.decoder = nn.ModuleList(ConvBlock(d, config.decoder_kernel, 2 ** (i % 3))
                                     for i in range(config.decoder_layers))
        self.dec_norm = nn.LayerNorm(d)
        if config.head == "tied":
            self.head = nn.Linear(d, COORDS_PER_FACE * config.coord_dim)
            self.level_bias = nn.Parameter(torch.zeros(config.levels))
        else:
            self.head = nn.Linear(d, COORDS_PER_FACE * config.levels)

    # ---- parts ----------------------------------------------------------------------------------------
    def encode(self, batch: FaceBatch) -> torch.Tensor:
        """Slot vectors before quantization: ``(N, slots, C)``."""
        n = len(batch.corners)
        emb = self.coord_embed(batch.targets).reshape(n, -1)  # (N, 9 * coord_dim)
        h = self.face_in(torch.cat([emb, face_features(batch.corners, self.config.bits)], dim=-1))  # (N, D)
        for layer in self.graph:
            h = layer(h, batch.edges)
        z = self.to_slots(self.enc_norm(h))  # (N, slots * C)
        z = z.reshape(n, self.config.slots, self.config.rvq.dim)  # (N, S, C)
        return F.layer_norm(z, (z.shape[-1],))  # a fixed scale for the codebooks to follow

    def quantize(self, z: torch.Tensor, batch: FaceBatch):
        """Slot vectors ``(N, S, C)`` -> (quantized ``(N, S, C)``, :class:`~tokenizers3d.rvq.RVQOutput`
        with ``codes`` already gathered to ``(N, S, D)``)."""
        n, s, c = z.shape
        if self.config.vertex_average and s == 3:
            idx = batch.vertex.reshape(-1)  # (3N,)
            total = z.new_zeros(batch.n_vertices, c).index_add_(0, idx, z.reshape(-1, c))
            count = torch.bincount(idx, minlength=batch.n_vertices).clamp_min(1).to(z.dtype)
            out = self.quantizer(total / count[:, None])  # one vector per vertex (V, C)
            quantized = out.quantized[batch.vertex]  # (N, 3, C)
            out.codes = out.codes[batch.vertex]  # (N, 3, D)
        else:
            out = self.quantizer(z.reshape(n * s, c))
            quantized = out.quantized.reshape(n, s, c)
            out.codes = out.codes.reshape(n, s, -1)
        return quantized, out

    def decode(self, quantized: torch.Tensor, n_faces: Sequence[int]) -> torch.Tensor:
        """Quantized slot vectors ``(N, S, C)`` of meshes with ``n_faces`` faces -> logits ``(N, 9, L)``."""
        n = len(quantized)
        h = self.from_slots(quantized.reshape(n, -1))  # (N, D)
        mesh, pos = sequence_layout(n_faces, device=h.device)
        b, t = len(n_faces), max(n_faces, default=0)
        x = h.new_zeros(b, t, h.shape[-1])
        x[mesh, pos] = h  # (B, T, D)
        mask = h.new_zeros(b, t, 1)
        mask[mesh, pos] = 1.0
        for block in self.decoder:
            x = block(x, mask)
        y = self.head(self.dec_norm(x[mesh, pos]))  # (N, 9 * c) tied, (N, 9 * L) linear
        if self.config.head == "tied":  # each coordinate's vector against every level's embedding
            return y.reshape(n, COORDS_PER_FACE, -1) @ self.coord_embed.weight.T + self.level_bias  # (N, 9, L)
        return y.reshape(n, COORDS_PER_FACE, self.config.levels)

    def forward(self, batch: FaceBatch) -> VQVAEOutput:
        """Encode, quantize, decode and score ``batch`` against its own coordinates."""
        z = self.encode(batch)
        quantized, q = self.quantize(z, batch)
        logits = self.decode(quantized, batch.n_faces)
        target = batch.targets
        recon = smoothed_cross_entropy(logits, target, self.config.label_sigma)
        with torch.no_grad():
            err = (logits.argmax(-1) - target).abs().amax(-1)  # (N,) worst coordinate of each face
            within = (err <= 1).float().mean() if len(err) else logits.new_zeros(())
            exact = (err == 0).float().mean() if len(err) else logits.new_zeros(())
        return VQVAEOutput(recon + q.loss, recon, q.commit_loss, logits, q.codes, q.residual_norms, within, exact)

    # ---- tokenizer entry points (no gradient; evaluation mode for the call) -----------------------------
    @torch.no_grad()
    def encode_codes(self, meshes: Sequence[QuantizedMesh]) -> list[np.ndarray]:
        """Canonical quantized meshes -> codes ``(F, slots, depth)`` int64 of each."""
        if not meshes:
            return []
        was = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            batch = FaceBatch.from_meshes(meshes, device)
            _, q = self.quantize(self.encode(batch), batch)
        finally:
            self.train(was)
        codes = q.codes.cpu().numpy()
        return np.split(codes, np.cumsum(batch.n_faces)[:-1])

    @torch.no_grad()
    def decode_codes(self, codes: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Codes ``(F, slots, depth)`` of each mesh -> predicted grid corners ``(F, 3, 3)`` int64 (z y x)."""
        if not codes:
            return []
        was = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            n_faces = [len(c) for c in codes]
            s, dd = self.config.slots, self.config.rvq.depth
            flat = torch.from_numpy(np.concatenate([np.asarray(c, np.int64).reshape(-1, s, dd) for c in codes]))
            quantized = self.quantizer.lookup(flat.to(device))  # (N, S, C)
            pred = self.decode(quantized, n_faces).argmax(-1) if len(flat) else flat.new_zeros(0, 9)
        finally:
            self.train(was)
        pred = pred.cpu().numpy().reshape(-1, 3, 3)
        return np.split(pred, np.cumsum(n_faces)[:-1])


def smoothed_cross_entropy(logits: torch.Tensor, target: torch.Tensor, sigma: float) -> torch.Tensor:
    """Mean cross entropy of ``logits (..., L)`` against ``target (...)`` smoothed over levels ``target +- 2``.

    The target distribution puts weight ``exp(-d^2 / (2 sigma^2))`` on level ``target + d`` (``|d| <= 2``,
    inside ``0 .. L-1``), renormalized; ``sigma <= 0`` is plain cross entropy.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    if sigma <= 0:
        return -logp.gather(-1, target[..., None]).mean()
    offsets = torch.arange(-2, 3, device=target.device)  # (5,)
    idx = target[..., None] + offsets  # (..., 5)
    weight = torch.exp(-offsets.float() ** 2 / (2.0 * sigma**2)) * ((idx >= 0) & (idx < logits.shape[-1]))
    weight = weight / weight.sum(-1, keepdim=True)
    return -(logp.gather(-1, idx.clamp(0, logits.shape[-1] - 1)) * weight).sum(-1).mean()
