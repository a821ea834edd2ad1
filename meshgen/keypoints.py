"""A 2D pose estimator of its own for the body-recovery model: image -> 17 COCO keypoints and their visibility.

PostoMETRO reads its pose tokens from a separate 2D pose estimator, trained on far more images than its mesh
model. :class:`KeypointNet` is that estimator here, trained from scratch on rendered bodies
(``scripts/train_keypoints.py``) with occluders pasted at training time, so that it learns where the hidden
joints are, not only the seen ones:

1. **Encoder**: four stride-2 stages of residual blocks (128 px -> 8 x 8), then a small self-attention block over
   the 8 x 8 cells (a global view of the body: which way it faces, where a hidden limb must be).
2. **Decoder**: two upsampling steps with skip connections back to 1/4 resolution (32 x 32 cells for 128 px).
3. **Heads**: 17 heatmaps -> soft-argmax -> keypoints in the crop frame ``[-1, 1]``; per joint three visibility
   logits (outside the image, inside but hidden, seen) from the heatmap-weighted decoder features.

Loss (:func:`keypoint_losses`): cross-entropy of each joint's heatmap against a Gaussian at its true position
(every joint inside the image, hidden ones too), L1 of the soft-argmax keypoints, and the visibility class.

:class:`meshgen.hmr.HMRModel` carries a trained net as a frozen part (``HMRConfig.keypoint_net``): its
keypoints, with the probability of being inside the image as confidence, are what the pose tokens read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from tokenizers3d.checkpoint import PretrainedMixin

OUTSIDE, HIDDEN, SEEN = 0, 1, 2  # visibility classes, as the datasets' keypoint flags


@dataclass(frozen=True)
class KeypointConfig:
    """Settings of :class:`KeypointNet`."""

    image_size: int = 128
    channels: tuple[int, ...] = (32, 64, 96, 160)
    blocks: int = 1  # residual blocks per encoder stage (after its stride-2 entry)
    decoder: int = 64  # decoder width
    attention_heads: int = 4
    n_joints: int = 17
    sigma: float = 1.0  # heatmap target std, in heatmap cells (4 px at 128 px)

    def __post_init__(self):
        if self.image_size % 16:
            raise ValueError(f"image_size must be a multiple of 16, got {self.image_size}")
        if len(self.channels) != 4:
            raise ValueError(f"channels must list 4 stages, got {self.channels}")
        if self.channels[3] % self.attention_heads:
            raise ValueError(f"channels[3] ({self.channels[3]}) must divide into {self.attention_heads} heads")


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class _Residual(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch),
                                  nn.ReLU(inplace=True), nn.Conv2d(ch, ch, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


def soft_argmax(heatmaps: torch.Tensor) -> torch.Tensor:
    """(B, J, H, W) logits -> (B, J, 2) expected ``x, y`` in ``[-1, 1]`` (pixel centres)."""
    b, j, h, w = heatmaps.shape
    p = heatmaps.flatten(2).softmax(-1).view(b, j, h, w)
    xs = (torch.arange(w, dtype=p.dtype, device=p.device) + 0.5) * (2.0 / w) - 1.0
    ys = (torch.arange(h, dtype=p.dtype, device=p.device) + 0.5) * (2.0 / h) - 1.0
    return torch.stack([(p.sum(2) * xs).sum(-1), (p.sum(3) * ys).sum(-1)], dim=-1)


@dataclass
class KeypointOutput:
    keypoints: torch.Tensor  # (B, J, 2) crop frame [-1, 1]
    heatmaps: torch.Tensor  # (B, J, H, W) logits
    visibility: torch.Tensor  # (B, J, 3) logits: outside, hidden, seen

    @property
    def inside(self) -> torch.Tensor:
        """(B, J) probability that each joint lies inside the image (hidden or seen)."""
        return 1.0 - self.visibility.softmax(-1)[..., OUTSIDE]

    @property
    def seen(self) -> torch.Tensor:
        """(B, J) probability that each joint is seen."""
        return self.visibility.softmax(-1)[..., SEEN]


class KeypointNet(nn.Module, PretrainedMixin):
    """Image -> 17 keypoints, heatmaps and visibility (module docstring)."""

    config_class = KeypointConfig

    def __init__(self, config: KeypointConfig):
        super().__init__()
        self.config = c = config
        ch = c.channels
        stages, cin = [], 3
        for cout in ch:
            stages.append(nn.Sequential(_conv(cin, cout, 2), *[_Residual(cout) for _ in range(c.blocks)]))
            cin = cout
        self.stages = nn.ModuleList(stages)
        n_cells = (c.image_size // 16) ** 2
        self.pos = nn.Parameter(torch.randn(n_cells, ch[3]) * 0.02)
        self.attention = nn.TransformerEncoderLayer(ch[3], c.attention_heads, 2 * ch[3], dropout=0.0,
                                                    batch_first=True, norm_first=True, activation="gelu")
        d = c.decoder
        self.up16 = _conv(ch[3] + ch[2], d)
        self.up8 = _conv(d + ch[1], d)
        self.refine = _Residual(d)
        self.heat = nn.Conv2d(d, c.n_joints, 1)
        self.vis = nn.Sequential(nn.Linear(d + ch[3], d), nn.GELU(), nn.Linear(d, 3))
        self.register_buffer("pixel_mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> KeypointOutput:
        """``images`` (B, 3, S, S) float in [0, 1]."""
        x = images - self.pixel_mean
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        f4, f8, f16 = feats[1], feats[2], feats[3]
        b, cdim, h, w = f16.shape
        t = self.attention(f16.flatten(2).transpose(1, 2) + self.pos)
        g = t.transpose(1, 2).reshape(b, cdim, h, w)
        y = self.up16(torch.cat([F.interpolate(g, size=f8.shape[-2:], mode="bilinear", align_corners=False), f8], 1))
        y = self.up8(torch.cat([F.interpolate(y, size=f4.shape[-2:], mode="bilinear", align_corners=False), f4], 1))
        y = self.refine(y)
        heat = self.heat(y)  # (B, J, S/4, S/4)
        p = heat.flatten(2).softmax(-1)  # each joint's features: its heatmap's weighted mean, with the global view
        local = torch.einsum("bjn,bdn->bjd", p, y.flatten(2))
        visibility = self.vis(torch.cat([local, t.mean(1)[:, None].expand(-1, self.config.n_joints, -1)], -1))
        return KeypointOutput(soft_argmax(heat), heat, visibility)


def heatmap_targets(keypoints: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """(B, J, 2) crop-frame keypoints -> (B, J, size * size) normalised Gaussians on the ``size`` x ``size`` grid of
    cell centres (``sigma`` in cells)."""
    centres = (torch.arange(size, dtype=keypoints.dtype, device=keypoints.device) + 0.5) * (2.0 / size) - 1.0
    cell = 2.0 / size
    dx = (centres[None, None, None, :] - keypoints[..., 0, None, None]) / cell
    dy = (centres[None, None, :, None] - keypoints[..., 1, None, None]) / cell
    g = torch.exp(-(dx ** 2 + dy ** 2) / (2 * sigma ** 2)).flatten(2)
    return g / g.sum(-1, keepdim=True).clamp_min(1e-12)


def keypoint_losses(out: KeypointOutput, keypoints: torch.Tensor, flags: torch.Tensor, sigma: float,
                    weights: tuple[float, float, float] = (1.0, 5.0, 0.2)) -> dict:
    """Loss terms for true ``keypoints`` (B, J, 2, crop frame) and visibility ``flags`` (B, J: 0 outside, 1
    hidden, 2 seen): heatmap cross-entropy and keypoint L1 on the joints inside the image, visibility
    cross-entropy on all; ``loss`` weighs them by ``weights``."""
    inside = (flags > 0).float()
    denom = inside.sum().clamp_min(1.0)
    size = out.heatmaps.shape[-1]
    target = heatmap_targets(keypoints, size, sigma)
    ce = -(target * out.heatmaps.flatten(2).log_softmax(-1)).sum(-1)
    terms = {"heatmap": (ce * inside).sum() / denom,
             "keypoints": ((out.keypoints - keypoints).abs().sum(-1) * inside).sum() / denom,
             "visibility": F.cross_entropy(out.visibility.reshape(-1, 3), flags.reshape(-1).long())}
    terms["loss"] = sum(w * terms[k] for w, k in zip(weights, ("heatmap", "keypoints", "visibility"), strict=True))
    return terms


__all__ = ["HIDDEN", "OUTSIDE", "SEEN", "KeypointConfig", "KeypointNet", "KeypointOutput", "heatmap_targets",
           "keypoint_losses", "soft_argmax"]
