"""What every mesh generator shares: vocabulary, conditioning, outputs, weight init, save / load.

* :class:`TokenLayout` -- what a generator's sequence is made of: one id scheme for any body vocabulary
  (``coords`` values, or the codes of a ``vqvae`` tokenizer), plus how tokens group into faces. A model's config
  names its tokenizer (``tokenizer``: ``None`` = ``coords`` at ``bits``; a ``vqvae`` tokenizer's config and its
  code layout otherwise); :func:`token_layout` reads it, :func:`sequence_tokenizer` builds the tokenizer that
  decodes the model's samples.
* :class:`Conditioning` -- what the user gives (point cloud with normals, requested face count);
  :meth:`MeshGenerator.encode` turns it into a :class:`Context` (encoder latents + a global embedding)
  that is computed once per mesh and reused by every decoding step.
* :class:`PretrainedMixin` -- ``save_pretrained(dir)`` writes ``config.json`` (class, format version,
  config fields) and ``model.safetensors``; ``from_pretrained(dir)`` rebuilds the model from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# save / load is the project's one checkpoint loader; its names are re-exported for the generators' callers
from tokenizers3d.checkpoint import (  # noqa: F401
    _MODEL_CLASSES,
    CONFIG_NAME,
    FORMAT_VERSION,
    WEIGHTS_NAME,
    PretrainedMixin,
    config_from_dict,
    config_to_dict,
    load_weights,
)

from .encoder import PointEncoder
from .layers import face_count_bucket


# ---- vocabulary -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenLayout:
    """Ids and grouping of a generator's sequence: ``0..n-1`` body values, ``PAD = n``, ``BOS = n + 1``,
    ``EOS = n + 2``; a face is ``prod(shorten)`` tokens, grouped from the token level up by ``shorten``.

    ``coords``: ``shorten = (3, 3)`` (3 coordinates a vertex, 3 vertices a face). ``vqvae`` with ``S`` slots of
    ``D`` codes: ``(D, S)`` (factors of 1 left out), so the hourglass shortens codes -> corners -> faces.
    """

    name: str
    n: int
    shorten: tuple[int, ...]

    @property
    def pad(self) -> int:
        return self.n

    @property
    def bos(self) -> int:
        return self.n + 1

    @property
    def eos(self) -> int:
        return self.n + 2

    @property
    def size(self) -> int:
        return self.n + 3

    @property
    def face_tokens(self) -> int:
        return math.prod(self.shorten)

    @property
    def is_coords(self) -> bool:
        return self.name == "coords"


def coord_layout(bits: int) -> TokenLayout:
    """Ids of the ``coords`` tokenizer at ``bits`` b: ``0..n-1`` coordinate values (``n = 2^b``), ``PAD = n``,
    ``BOS = n + 1``, ``EOS = n + 2``; 3 coordinates a vertex, 3 vertices a face."""
    return TokenLayout("coords", 1 << bits, (3, 3))


CODE_LAYOUT_KEYS = ("codebook_size", "slots", "depth")  # what a vqvae model config records besides the tokenizer's


def _coords_entry(tok: dict | None) -> bool:
    """Whether a config's ``tokenizer`` entry means ``coords`` (``None``, or named so)."""
    return tok is None or tok.get("name", "coords") == "coords"


def token_layout(config) -> TokenLayout:
    """The :class:`TokenLayout` of a generator config (its ``bits`` and ``tokenizer`` fields)."""
    tok = getattr(config, "tokenizer", None)
    if _coords_entry(tok):
        return coord_layout(config.bits)
    if tok.get("name") != "vqvae":
        raise ValueError(f"a generator works on 'coords' or 'vqvae' tokens, not {tok.get('name')!r}")
    missing = [k for k in CODE_LAYOUT_KEYS if k not in tok]
    if missing:
        raise ValueError(f"tokenizer config lacks {', '.join(missing)} (use vqvae_tokenizer_config)")
    shorten = tuple(int(s) for s in (tok["depth"], tok["slots"]) if int(s) > 1)
    return TokenLayout("vqvae", int(tok["codebook_size"]), shorten or (1,))


def vqvae_tokenizer_config(checkpoint=None) -> dict:
    """The ``tokenizer`` entry of a generator over a face VQ-VAE's codes: the tokenizer's config (checkpoint,
    digest, bits) and its code layout, read from the checkpoint (default: the bundled one)."""
    from tokenizers3d.base import get_tokenizer

    tok = get_tokenizer("vqvae", checkpoint=checkpoint)
    return {**tok.config, "codebook_size": tok.codebook_size, "slots": tok.slots, "depth": tok.depth}


def sequence_tokenizer(config):
    """The tokenizer that encodes a generator's training meshes and decodes its samples."""
    from tokenizers3d.base import get_tokenizer

    tok = getattr(config, "tokenizer", None)
    if _coords_entry(tok):
        return get_tokenizer("coords", bits=config.bits)
    args = {k: v for k, v in tok.items() if k not in CODE_LAYOUT_KEYS and k != "name"}
    return get_tokenizer(tok["name"], **args)


# ---- inputs and outputs ---------------------------------------------------------------------------
@dataclass
class Conditioning:
    """Model input besides the tokens.

    Attributes
    ----------
    points : (B, N, 6) float or None
        Point cloud in the unit cube ``[-0.5, 0.5]^3`` with unit normals (xyz, nx ny nz). ``None`` for an
        unconditional model (cross-attention is skipped).
    n_faces : (B,) int or None
        Requested face count; ``None`` or ``<= 0`` means unknown.
    drop : (B,) bool or None
        Rows whose point cloud is replaced by the learned null context (classifier-free guidance:
        dropped at random in training, the unconditional branch when sampling). Needs a model built
        with ``encoder.null_context``.
    """

    points: torch.Tensor | None = None
    n_faces: torch.Tensor | None = None
    drop: torch.Tensor | None = None

    @property
    def batch_size(self) -> int | None:
        for t in (self.points, self.n_faces):
            if t is not None:
                return t.shape[0]
        return None

    def repeat(self, k: int) -> Conditioning:
        """Each conditioning ``k`` times in a row (k samples per input)."""
        rep = None if self.points is None else self.points.repeat_interleave(k, dim=0)
        nf = None if self.n_faces is None else self.n_faces.repeat_interleave(k, dim=0)
        drop = None if self.drop is None else self.drop.repeat_interleave(k, dim=0)
        return Conditioning(rep, nf, drop)

    def to(self, device) -> Conditioning:
        return Conditioning(*(None if t is None else t.to(device) for t in (self.points, self.n_faces, self.drop)))


@dataclass
class Context:
    """Encoded conditioning: ``latents (B, L, Dc)`` (or None) and ``cond_emb (B, D)`` added to every token."""

    latents: torch.Tensor | None
    cond_emb: torch.Tensor


@dataclass
class ModelOutput:
    """``logits (B, T, V)``; ``loss`` (mean negative log-likelihood over non-PAD targets) when targets were given;
    ``hidden (B, T, D)`` the final hidden states the head reads; ``token_nll (B, T)`` per target (0 at PAD) when
    targets were given (with a copy head: the mixture's, :func:`meshgen.pointer.pointer_token_nll`)."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    token_nll: torch.Tensor | None = None


# ---- config (de)serialization ----------------------------------------------------------------------
# ---- base model -----------------------------------------------------------------------------------
class MeshGenerator(nn.Module, PretrainedMixin):
    """Shared parts of the decoders: token embedding, tied head, point encoder, face-count embedding.

    Subclasses build ``self.blocks``-like stacks and implement ``forward`` and ``init_cache``.
    """

    @classmethod
    def _import_models(cls) -> None:
        from .registry import _import_models

        _import_models()  # every generator class registers itself when its module is imported

    def _build_shared(self, config) -> None:
        self.layout = token_layout(config)
        self.vocab = self.layout  # ids: PAD / BOS / EOS after the body values
        if config.encoder.point_embedding == "grid" and not self.layout.is_coords:
            raise ValueError("encoder.point_embedding 'grid' embeds points through the coordinate-token table; "
                             f"a model over {self.layout.name!r} tokens needs 'fourier'")
        self.tok_emb = nn.Embedding(self.vocab.size, config.dim)
        self.face_count_emb = nn.Embedding(config.n_face_buckets, config.dim)
        self.encoder = PointEncoder(config.encoder)
        self.ln_f = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, self.vocab.size, bias=False)
        self.head.weight = self.tok_emb.weight  # tied
        self.pointer = None
        if getattr(config, "pointer_dim", 0) > 0:
            if not self.layout.is_coords:
                raise ValueError(f"pointer_dim: the copy head points at written vertices of coords tokens, not "
                                 f"{self.layout.name!r} codes")
            from .pointer import PointerHead

            self.pointer = PointerHead(config.dim, config.pointer_dim, self.layout.n)
        if config.encoder.point_embedding == "grid":
            # the points in the decoder's language: (z, y, x) cell ids through the coordinate-token table
            self.point_grid_proj = nn.Linear(3 * config.dim, config.encoder.dim)
            # the points' bounding box (min and max cell per axis) as a global conditioning vector
            self.bbox_proj = nn.Linear(6 * config.dim, config.dim)

    def init_weights(self, n_layers: int) -> None:
        """GPT-2 init: N(0, 0.02), residual projections scaled by ``1 / sqrt(2 n_layers)``."""
        std_res = 0.02 / math.sqrt(2 * max(n_layers, 1))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std_res if getattr(m, "is_residual", False) else 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
        if self.pointer is not None:
            self.pointer.reset_parameters()

    @property
    def context_dim(self) -> int:
        return self.encoder.dim

    def num_params(self, *, decoder_only: bool = False) -> int:
        """Parameters (tied ones counted once); ``decoder_only`` leaves the point encoder out."""
        params = {id(p): p for n, p in self.named_parameters() if not (decoder_only and n.startswith("encoder."))}
        return sum(p.numel() for p in params.values())

    def encode(self, cond: Conditioning | Context | None, *, batch_size: int | None = None) -> Context:
        """Run the point encoder and the face-count embedding once; a :class:`Context` passes through."""
        if isinstance(cond, Context):
            return cond
        cond = cond or Conditioning()
        B = cond.batch_size or batch_size
        if B is None:
            raise ValueError("batch size unknown: give a Conditioning with points or n_faces, or tokens")
        device = self.tok_emb.weight.device
        if cond.n_faces is None:
            bucket = torch.zeros(B, dtype=torch.long, device=device)
        else:
            bucket = face_count_bucket(cond.n_faces.to(device), self.config.n_face_buckets)
        count_emb = cond_emb = self.face_count_emb(bucket)  # (B, D)
        if cond.points is None:
            if cond.drop is not None and bool(cond.drop.any()):
                return Context(self.encoder.null_tokens(B), cond_emb)
            return Context(None, cond_emb)
        points = cond.points.to(device, self.tok_emb.weight.dtype)  # (B, N, 6)
        extra = None
        if self.config.encoder.point_embedding == "grid":
            q = self.point_cells(points[..., :3])  # (B, N, 3) as z, y, x
            extra = self.point_grid_proj(self.tok_emb(q).flatten(-2))  # (B, N, 3 D) -> (B, N, Dc)
            box = torch.cat([q.amin(dim=1), q.amax(dim=1)], dim=1)  # (B, 6)
            cond_emb = cond_emb + self.bbox_proj(self.tok_emb(box).flatten(-2))  # (B, 6 D) -> (B, D)
        latents = self.encoder(points, extra)  # (B, L + K, Dc)
        if cond.drop is not None:
            drop = cond.drop.to(device).bool()
            latents = torch.where(drop[:, None, None], self.encoder.null_tokens(B).to(latents.dtype), latents)
            if extra is not None:
                cond_emb = torch.where(drop[:, None], count_emb, cond_emb)
        return Context(latents, cond_emb)

    def point_cells(self, xyz: torch.Tensor) -> torch.Tensor:
        """Unit-cube points ``(..., 3)`` as x, y, z -> their grid cells ``(..., 3)`` long as z, y, x."""
        n = self.vocab.n
        q = torch.floor((xyz + 0.5) * n).long().clamp_(0, n - 1)
        return q.flip(-1)

    def _output(self, h: torch.Tensor, targets: torch.Tensor | None, inputs: torch.Tensor | None = None) -> ModelOutput:
        hidden = self.ln_f(h)  # (B, T, D)
        logits = self.head(hidden)  # (B, T, V)
        if targets is None:
            return ModelOutput(logits, None, hidden)
        pad = self.vocab.pad
        if self.pointer is not None and inputs is not None:
            from .pointer import pointer_token_nll

            nll = pointer_token_nll(self.pointer, hidden, logits, inputs, targets, n_values=self.vocab.n, pad=pad,
                                    eos=self.vocab.eos)  # (B, T)
        else:
            nll = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=pad, reduction="none")
        loss = nll.sum() / (targets != pad).sum().clamp(min=1)
        return ModelOutput(logits, loss, hidden, nll)


def start_positions(start_pos: int | torch.Tensor, batch: int, device, *, multiple: int = 1) -> torch.Tensor:
    """``start_pos`` (int or ``(B,)``) as a ``(1, 1)`` or ``(B, 1)`` long tensor; checks it is a ``multiple``."""
    if isinstance(start_pos, int):
        bad = start_pos < 0 or start_pos % multiple
        s = torch.full((1, 1), start_pos, dtype=torch.long, device=device)
    else:
        s = torch.as_tensor(start_pos, dtype=torch.long, device=device)
        s = s.reshape(1, 1) if s.numel() == 1 else s.reshape(batch, 1)
        bad = bool((s < 0).any()) or bool((s % multiple != 0).any())
    if bad:
        raise ValueError(f"start_pos must be >= 0 and a multiple of {multiple} (a face boundary), got {start_pos}")
    return s
