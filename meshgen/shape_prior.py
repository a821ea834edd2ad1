"""A class-conditioned prior over VAT shape tokens, predicted scale by scale (next-scale prediction, as in VAR).

A VAT checkpoint (:mod:`tokenizers3d.vat`) turns a shape into per-scale token ids ``codes[s]`` of lengths
``n_1 < n_2 < ... < n_S`` (default 1, 4, 16, 64, 256), each scale quantizing what the coarser ones left of one
latent line of length ``L = n_S`` (:class:`tokenizers3d.msrq.MultiScaleRQ`). :class:`ShapePrior` models

    p(codes | family) = prod_s p(codes[s] | codes[<s], family)

with one transformer pass per scale: the input of scale ``s`` is the line the coarser scales have already
reconstructed (the sum of their upsampled code vectors, read from a copy of the VAT's codebook), resampled to
``n_s`` positions and projected, plus a scale and a position embedding; the family is one extra token in front
(``null`` when dropped: classifier-free guidance). Attention is block-causal: a position sees the family token and
every position of its own and coarser scales, never a finer one, so a whole scale is predicted at once and sampling
a shape costs ``S`` passes (5 by default), not one per token.

Every sampled id is a code of the book (the head has exactly ``codebook_size`` outputs), so every sample decodes
(:func:`decode_shape`: the VAT's field, marching cubes); the prior stores the digest of the VAT weights it was
trained on and refuses another VAT (:func:`load_prior_and_vat`).

:func:`generate_shape_file` is the job behind ``meshgen generate --family F``; ``scripts/train_shape_prior.py``
trains a prior, ``scripts/eval_shape_prior.py`` measures coverage and minimum matching distance per family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from meshgen.sampling import cfg_mix, filter_logits
from tokenizers3d.checkpoint import PretrainedMixin
from tokenizers3d.errors import ConfigError, MeshInputError
from tokenizers3d.msrq import check_scales, resample


@dataclass(frozen=True)
class ShapePriorConfig:
    """Settings of :class:`ShapePrior`.

    Attributes
    ----------
    scales : tuple of int
        Tokens per scale of the VAT the prior serves (coarse to fine).
    codebook_size, code_dim : int
        The VAT quantizer's book: ids per token, width of a code vector.
    families : tuple of str
        Class labels, in order (label ``i`` is ``families[i]``; ``len(families)`` is the null label).
    dim, heads, layers, mlp_ratio : int
        Transformer width, heads, blocks, feed-forward ratio.
    dropout : float
    vat_digest : str
        :func:`tokenizers3d.checkpoint.model_digest` of the VAT weights the ids come from ("" = not checked).
    """

    scales: tuple[int, ...] = (1, 4, 16, 64, 256)
    codebook_size: int = 4096
    code_dim: int = 16
    families: tuple[str, ...] = ("box",)
    dim: int = 192
    heads: int = 4
    layers: int = 6
    mlp_ratio: int = 4
    dropout: float = 0.0
    vat_digest: str = ""

    def __post_init__(self):
        check_scales(self.scales)
        if not self.families or len(set(self.families)) != len(self.families):
            raise ValueError(f"families must be distinct and at least one, got {self.families}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not a multiple of heads {self.heads}")

    @property
    def n_tokens(self) -> int:
        return int(sum(self.scales))


@dataclass
class PriorSample:
    """Result of :meth:`ShapePrior.sample`: ``codes`` per scale ``(B, n_s)`` and ``ids`` ``(B, T)`` in next-scale
    order."""

    codes: list = field(default_factory=list)
    ids: torch.Tensor | None = None


class ShapePrior(nn.Module, PretrainedMixin):
    """Next-scale prediction of VAT token ids given a family (module docstring)."""

    config_class = ShapePriorConfig

    def __init__(self, config: ShapePriorConfig):
        super().__init__()
        self.config = c = config
        self.register_buffer("codebook", torch.zeros(c.codebook_size, c.code_dim))  # the VAT's, copied in
        self.family_emb = nn.Embedding(len(c.families) + 1, c.dim)  # last row: the null label
        self.inp = nn.Linear(c.code_dim, c.dim)
        self.scale_emb = nn.Embedding(len(c.scales), c.dim)
        self.pos_emb = nn.Parameter(torch.randn(c.n_tokens, c.dim) * 0.02)
        layer = nn.TransformerEncoderLayer(c.dim, c.heads, c.mlp_ratio * c.dim, dropout=c.dropout, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.blocks = nn.TransformerEncoder(layer, c.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, c.codebook_size)
        starts = np.cumsum([0, *c.scales])
        self.register_buffer("scale_of", torch.as_tensor(np.repeat(np.arange(len(c.scales)), c.scales)),
                             persistent=False)
        self._starts = [int(s) for s in starts]

    @property
    def null_label(self) -> int:
        return len(self.config.families)

    def label(self, family: str) -> int:
        try:
            return self.config.families.index(family)
        except ValueError:
            raise ConfigError(f"unknown family {family!r}; this prior knows {', '.join(self.config.families)}") from None

    def set_codebook(self, codebook: torch.Tensor) -> None:
        """Copy the VAT quantizer's codebook ``(codebook_size, code_dim)`` in (before training)."""
        if tuple(codebook.shape) != tuple(self.codebook.shape):
            raise ValueError(f"codebook of shape {tuple(codebook.shape)}, the prior expects {tuple(self.codebook.shape)}")
        self.codebook.copy_(codebook.detach())

    # ---- the sequence ---------------------------------------------------------------------------------
    def scale_inputs(self, codes: list[torch.Tensor], upto: int, batch: int) -> torch.Tensor:
        """Inputs ``(batch, n_1 + ... + n_upto, code_dim)`` of scales ``1..upto`` from the codes of scales
        ``< upto``: scale ``s`` reads the line the coarser scales reconstruct, resampled to ``n_s`` (zeros for the
        first)."""
        c = self.config
        length = c.scales[-1]
        total = self.codebook.new_zeros(batch, length, c.code_dim)
        out = []
        for s in range(upto):
            out.append(resample(total, c.scales[s]))
            if s < upto - 1:
                total = total + resample(F.embedding(codes[s], self.codebook), length)
        return torch.cat(out, dim=1)

    def _mask(self, n: int, device) -> torch.Tensor:
        """Block-causal attention mask over the family token + the first ``n`` positions (True = blocked)."""
        scale = torch.cat([self.scale_of.new_full((1,), -1), self.scale_of[:n]]).to(device)
        return scale[None, :] > scale[:, None]  # the family token (scale -1) sees only itself

    def logits(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``(B, n, code_dim)`` scale inputs and ``(B,)`` labels -> logits ``(B, n, codebook_size)``."""
        n = inputs.shape[1]
        x = self.inp(inputs) + self.pos_emb[:n] + self.scale_emb(self.scale_of[:n])
        x = torch.cat([self.family_emb(labels)[:, None], x], dim=1)
        h = self.blocks(x, mask=self._mask(n, x.device))
        return self.head(self.norm(h[:, 1:]))

    def forward(self, codes: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy (nats per token) of teacher-forced per-scale ``codes`` given ``labels``."""
        logits = self.logits(self.scale_inputs(codes, len(self.config.scales), labels.shape[0]), labels)
        target = torch.cat(codes, dim=1)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, *, temperature: float = 1.0, top_k: int = 0, cfg_scale: float = 1.0,
               generator: torch.Generator | None = None) -> PriorSample:
        """Sample per-scale ids for ``labels`` ``(B,)``: one pass per scale; ``cfg_scale > 1`` mixes the logits
        with the null label's (``null + s (cond - null)``); ``top_k > 0`` keeps the k likeliest codes."""
        c = self.config
        b = labels.shape[0]
        codes: list[torch.Tensor] = []
        for s in range(len(c.scales)):
            inputs = self.scale_inputs(codes, s + 1, b)
            lo, hi = self._starts[s], self._starts[s + 1]
            if cfg_scale != 1.0:  # conditional rows, then the same inputs with the null label (meshgen.sampling)
                both = self.logits(inputs.repeat(2, 1, 1), torch.cat([labels, labels.new_full((b,), self.null_label)]))
                logits = cfg_mix(both[:, lo:hi].reshape(2 * b * (hi - lo), -1), cfg_scale)
            else:
                logits = self.logits(inputs, labels)[:, lo:hi].reshape(b * (hi - lo), -1)
            logits = filter_logits(logits, temperature=float(temperature), top_k=top_k or None)
            codes.append(torch.multinomial(logits.softmax(-1), 1, generator=generator).reshape(b, hi - lo))
        return PriorSample(codes, torch.cat(codes, dim=1))


# ---- loading and the job ------------------------------------------------------------------------------------
#: Where a shipped prior lives (with its VAT in ``vat/``); none is shipped yet.
DEFAULT_PRIOR = Path(__file__).resolve().parents[1] / "assets" / "checkpoints" / "shape-prior"


def resolve_prior(prior: str | Path | None) -> Path:
    """``prior``, or the bundled one; :class:`MeshInputError` with what to do when none is installed."""
    if prior is not None:
        return Path(prior)
    if not (DEFAULT_PRIOR / "config.json").exists():
        raise MeshInputError(DEFAULT_PRIOR, "no shape prior is bundled yet; train one with 'python "
                                            "scripts/train_shape_prior.py --vat VAT_DIR --out runs/shape_prior' "
                                            "and pass --prior runs/shape_prior/best")
    return DEFAULT_PRIOR


def load_prior_and_vat(prior_dir: str | Path, vat_dir: str | Path | None = None, *, device: str = "cpu"):
    """``(prior, vat)`` in evaluation mode. ``vat_dir`` defaults to ``prior_dir/vat`` (a shipped prior) or else
    ``prior_dir/../vat`` (a run folder of ``scripts/train_shape_prior.py``, which copies the VAT it was trained on
    there); the VAT's digest must be the prior's."""
    from tokenizers3d.compress import load_vat_model

    prior_dir = Path(prior_dir)
    prior = ShapePrior.from_pretrained(prior_dir, map_location=device).eval()
    if vat_dir is None:
        vat_dir = prior_dir / "vat" if (prior_dir / "vat").exists() else prior_dir.parent / "vat"
    vat_dir = Path(vat_dir)
    if not vat_dir.exists():
        raise MeshInputError(vat_dir, "no VAT model here; pass the VAT checkpoint the prior was trained on (--vat)")
    vat, digest = load_vat_model(vat_dir, device=device)
    q = vat.config.quantizer
    if tuple(q.scales) != tuple(prior.config.scales) or q.codebook_size != prior.config.codebook_size:
        raise MeshInputError(vat_dir, f"VAT scales {tuple(q.scales)} / {q.codebook_size} codes do not match the "
                                      f"prior's {tuple(prior.config.scales)} / {prior.config.codebook_size}")
    if prior.config.vat_digest and digest != prior.config.vat_digest:
        raise MeshInputError(vat_dir, f"VAT weights {digest} are not the ones the prior was trained on "
                                      f"({prior.config.vat_digest})")
    return prior, vat


@torch.no_grad()
def decode_shape(vat, codes: list[torch.Tensor], *, resolution: int = 64):
    """One shape's per-scale ids ``(1, n_s)`` -> a closed ``trimesh.Trimesh`` in the VAT's normalized frame, or
    None when the decoded field has no surface (all inside or all outside)."""
    import trimesh

    from tokenizers3d.vat import grid_to_mesh

    grid = vat.occupancy_grid(vat.decode_ids(codes), resolution)
    vertices, faces = grid_to_mesh(grid)
    if len(faces) == 0:
        return None
    return trimesh.Trimesh(vertices, faces, process=False)


@dataclass
class ShapeResult:
    out: Path
    family: str
    faces: int
    seconds: float
    artist: bool


def generate_shape_file(family: str, out: str | Path, *, prior: str | Path, vat: str | Path | None = None,
                        seed: int = 0, temperature: float = 1.0, top_k: int = 0, cfg_scale: float = 2.0,
                        resolution: int = 64, artist: bool = False, artist_kwargs: dict | None = None,
                        preview: bool = True, tries: int = 4) -> ShapeResult:
    """Sample a shape of ``family`` from a prior, decode it and write it to ``out`` (temp file, then rename);
    ``artist=True`` hands the decoded surface to the point-cloud -> artist-mesh generator
    (:func:`meshgen.pipeline.generate_mesh`, ``artist_kwargs`` passed on). A sample whose field has no surface is
    redrawn (next seed) up to ``tries`` times, then :class:`MeshInputError`."""
    import time

    from meshgen.pipeline import _write_mesh_and_preview
    from tokenizers3d.io import check_output_path

    t0 = time.time()
    check_output_path(Path(out))  # a bad target fails before any sampling
    model, vat_model = load_prior_and_vat(prior, vat)
    label = torch.tensor([model.label(family)])
    mesh = None
    for attempt in range(max(1, tries)):
        gen = torch.Generator().manual_seed(int(seed) + attempt)
        sample = model.sample(label, temperature=temperature, top_k=top_k, cfg_scale=cfg_scale, generator=gen)
        mesh = decode_shape(vat_model, sample.codes, resolution=resolution)
        if mesh is not None:
            break
    if mesh is None:
        raise MeshInputError(Path(prior), f"{tries} samples of {family!r} decoded to no surface")
    if artist:
        from meshgen.pipeline import generate_mesh, load_generator
        from tokenizers3d.sample import sample_surface

        kwargs = dict(artist_kwargs or {})
        generator = load_generator(kwargs.pop("checkpoint", None))
        made = generate_mesh(generator, sample_surface(mesh, 2048, seed=seed), seed=seed, **kwargs)
        if made.mesh is None:
            raise MeshInputError(Path(out), "the artist-mesh generator gave no valid mesh for the sampled shape")
        mesh = made.mesh
    out = Path(out)
    outputs = [out] + ([out.with_suffix(".png")] if preview else [])
    _write_mesh_and_preview(mesh, outputs)
    return ShapeResult(out, family, len(mesh.faces), time.time() - t0, artist)


def coverage_mmd(distances: np.ndarray) -> dict:
    """``distances[i, j]``: Chamfer between sample ``i`` and reference ``j`` -> coverage (share of references that
    are some sample's nearest) and minimum matching distance (mean over references of the closest sample)."""
    d = np.asarray(distances, dtype=np.float64)
    if d.ndim != 2 or not d.size:
        raise ValueError(f"need a (samples, references) matrix, got shape {d.shape}")
    matched = np.unique(d.argmin(axis=1))
    return {"cov": float(len(matched) / d.shape[1]), "mmd": float(d.min(axis=0).mean()),
            "n_samples": int(d.shape[0]), "n_references": int(d.shape[1])}


__all__ = ["DEFAULT_PRIOR", "resolve_prior", "ShapePriorConfig", "ShapePrior", "PriorSample", "load_prior_and_vat",
           "decode_shape", "ShapeResult", "generate_shape_file", "coverage_mmd"]
