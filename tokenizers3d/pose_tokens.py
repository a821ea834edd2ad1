"""The 2D pose tokenizer: 17 COCO keypoints -> ``M`` discrete pose tokens and back (PCT-style, as PostoMETRO).

A pose is 17 keypoints in the image crop's frame (``x, y`` in ``[-1, 1]``) with a confidence per joint in
``[0, 1]`` (1 for a joint that is seen, 0 for one that is not known). The encoder embeds each joint (its
coordinates, its confidence, a learned joint embedding), mixes joints and channels with MLP-Mixer blocks and
maps the 17 joints to ``M`` token vectors; each token vector takes the nearest entry of one shared
codebook of ``K`` entries (:class:`~tokenizers3d.rvq.ResidualVQ`, one level, EMA updates, dead-code
restarts). The decoder maps the ``M`` code vectors back to 17 joints. Tokens are *compositional*: each
token describes the whole pose a little, no token belongs to one joint.

Training (``scripts/train_pose_tokenizer.py``) hides a random share of the joints from the encoder
(confidence 0, coordinates zeroed) and asks the decoder for all 17, so a pose with occluded joints still
tokenizes to a plausible whole pose; that is what the body-recovery model (``meshgen.hmr``) relies on when
its keypoint head cannot see a joint.

Typical use::

    tok = PoseTokenizer.from_pretrained("assets/checkpoints/pose-tokenizer")
    ids = tok.encode(keypoints, confidence)        # (B, M) int64
    vectors = tok.embed(ids)                       # (B, M, code_dim): what the body model attends to
    keypoints = tok.decode(ids)                    # (B, 17, 2)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .face_vqvae import TokenizerModel
from .rvq import ResidualVQ, RVQConfig

N_JOINTS = 17
# left/right COCO-17 pairs (for mirroring)
FLIP_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))


@dataclass(frozen=True)
class PoseTokenizerConfig:
    """Settings of :class:`PoseTokenizer` (frozen; saved as the checkpoint's ``config.json``)."""

    n_joints: int = N_JOINTS
    dim: int = 128
    blocks: int = 3
    n_tokens: int = 16
    code_dim: int = 32
    codebook_size: int = 256
    commitment: float = 0.25
    decay: float = 0.95
    dead_threshold: float = 0.05

    def __post_init__(self):
        if min(self.n_joints, self.dim, self.n_tokens, self.code_dim) < 1 or self.codebook_size < 2:
            raise ValueError(f"invalid pose tokenizer config {self}")


class MixerBlock(nn.Module):
    """Token mixing over the ``n`` rows, then channel mixing (MLP-Mixer)."""

    def __init__(self, n: int, dim: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.tokens = nn.Sequential(nn.Linear(n, 2 * n), nn.GELU(), nn.Linear(2 * n, n))
        self.channels = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channels(self.norm2(x))


@dataclass
class PoseTokenizerOutput:
    loss: torch.Tensor
    recon_loss: torch.Tensor
    commit_loss: torch.Tensor
    keypoints: torch.Tensor  # (B, J, 2) decoded
    codes: torch.Tensor  # (B, M)


class PoseTokenizer(TokenizerModel):
    """Keypoints (B, 17, 2) + confidence (B, 17) -> ``M`` codes of ``K`` -> keypoints (module docstring)."""

    config_class = PoseTokenizerConfig

    def __init__(self, config: PoseTokenizerConfig):
        super().__init__()
        self.config = c = config
        self.joint_embed = nn.Parameter(torch.randn(c.n_joints, c.dim) * 0.02)
        self.inp = nn.Linear(3, c.dim)
        self.enc = nn.Sequential(*[MixerBlock(c.n_joints, c.dim) for _ in range(c.blocks)])
        self.to_tokens = nn.Linear(c.n_joints, c.n_tokens)
        self.enc_out = nn.Sequential(nn.LayerNorm(c.dim), nn.Linear(c.dim, c.code_dim))
        self.quantizer = ResidualVQ(RVQConfig(dim=c.code_dim, depth=1, codebook_size=c.codebook_size, shared=True,
                                              ema=True, decay=c.decay, commitment=c.commitment,
                                              dead_threshold=c.dead_threshold))
        self.dec_in = nn.Linear(c.code_dim, c.dim)
        self.from_tokens = nn.Linear(c.n_tokens, c.n_joints)
        self.dec = nn.Sequential(*[MixerBlock(c.n_joints, c.dim) for _ in range(c.blocks)])
        self.out = nn.Sequential(nn.LayerNorm(c.dim), nn.Linear(c.dim, 2))

    # ---- pieces -------------------------------------------------------------------------------------
    def features(self, keypoints: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
        """(B, M, code_dim) continuous token vectors before quantization."""
        conf = confidence.clamp(0, 1)[..., None]
        x = self.inp(torch.cat([keypoints * conf, conf], dim=-1)) + self.joint_embed
        x = self.enc(x)  # (B, J, D)
        x = self.to_tokens(x.transpose(1, 2)).transpose(1, 2)  # (B, M, D)
        return self.enc_out(x)

    def decode_vectors(self, vectors: torch.Tensor) -> torch.Tensor:
        """(B, M, code_dim) code vectors -> (B, J, 2) keypoints."""
        x = self.dec_in(vectors)
        x = self.from_tokens(x.transpose(1, 2)).transpose(1, 2)  # (B, J, D)
        return self.out(self.dec(x))

    def forward(self, keypoints: torch.Tensor, confidence: torch.Tensor, target: torch.Tensor | None = None,
                weight: torch.Tensor | None = None) -> PoseTokenizerOutput:
        """Loss of reconstructing ``target`` (default ``keypoints``) from the tokens of the (masked) input;
        ``weight`` (B, J) weighs the joints of the L1 loss (default all 1)."""
        b, m = keypoints.shape[0], self.config.n_tokens
        z = self.features(keypoints, confidence)
        q = self.quantizer(z.reshape(b * m, -1))
        decoded = self.decode_vectors(q.quantized.reshape(b, m, -1))
        target = keypoints if target is None else target
        err = F.smooth_l1_loss(decoded, target, reduction="none", beta=0.02).sum(-1)  # (B, J)
        weight = torch.ones_like(err) if weight is None else weight
        recon = (err * weight).sum() / weight.sum().clamp_min(1.0)
        return PoseTokenizerOutput(recon + q.loss, recon, q.commit_loss, decoded, q.codes.reshape(b, m))

    # ---- the tokenizer ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, keypoints, confidence=None) -> torch.Tensor:
        """Keypoints (B, J, 2) in ``[-1, 1]`` (+ confidence (B, J), default 1) -> token ids (B, M) int64."""
        kp = torch.as_tensor(np.asarray(keypoints) if not torch.is_tensor(keypoints) else keypoints,
                             dtype=torch.float32)
        conf = torch.ones(kp.shape[:2]) if confidence is None else torch.as_tensor(confidence, dtype=torch.float32)
        self._check(kp, conf)
        z = self.features(kp, conf)
        b, m = z.shape[:2]
        return self.quantizer.nearest(z.reshape(b * m, -1), 0).reshape(b, m)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, M) -> code vectors (B, M, code_dim)."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.codebook_size):
            raise ValueError(f"pose token ids must lie in 0 .. {self.config.codebook_size - 1}")
        return F.embedding(ids, self.quantizer.codebook[0])

    @torch.no_grad()
    def decode(self, ids) -> torch.Tensor:
        """Token ids (B, M) -> keypoints (B, J, 2)."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.ndim != 2 or ids.shape[1] != self.config.n_tokens:
            raise ValueError(f"pose token ids must have shape (B, {self.config.n_tokens}), got {tuple(ids.shape)}")
        return self.decode_vectors(self.embed(ids))

    def _check(self, kp: torch.Tensor, conf: torch.Tensor) -> None:
        j = self.config.n_joints
        if kp.ndim != 3 or kp.shape[1:] != (j, 2):
            raise ValueError(f"keypoints must have shape (B, {j}, 2), got {tuple(kp.shape)}")
        if conf.shape != kp.shape[:2]:
            raise ValueError(f"confidence must have shape {tuple(kp.shape[:2])}, got {tuple(conf.shape)}")


def mask_joints(keypoints: torch.Tensor, visible: torch.Tensor, generator: torch.Generator,
                max_share: float = 0.4, noise: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Training input of the tokenizer: hide joints that are not ``visible`` (B, J) bool and a random share
    (up to ``max_share``) of the others; jitter the rest by ``noise``. Returns (keypoints, confidence)."""
    b, j = visible.shape
    share = torch.rand(b, 1, generator=generator) * max_share
    keep = visible & (torch.rand(b, j, generator=generator) >= share)
    kp = keypoints + noise * torch.randn(keypoints.shape, generator=generator)
    return kp * keep[..., None], keep.float()


def to_crop(uv: np.ndarray, size: float) -> np.ndarray:
    """Pixel coordinates (..., 2) of a ``size`` x ``size`` image -> the crop frame ``[-1, 1]``."""
    return np.asarray(uv, dtype=np.float64) * (2.0 / size) - 1.0


def from_crop(xy: np.ndarray, size: float) -> np.ndarray:
    """Inverse of :func:`to_crop`."""
    return (np.asarray(xy, dtype=np.float64) + 1.0) * (size / 2.0)


__all__ = ["FLIP_PAIRS", "N_JOINTS", "PoseTokenizer", "PoseTokenizerConfig", "PoseTokenizerOutput", "from_crop",
           "mask_joints", "to_crop"]
