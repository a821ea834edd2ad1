"""A learned part-mask generator that needs no downloaded weights: per-pixel embeddings from geometry maps.

SAM's weights cannot be fetched here, but this project can render unlimited part-labelled views
(:mod:`renderers.part_views`). :class:`PartMaskNet` is a small U-Net trained on them: it reads what the
renderer produces for a view -- camera-facing unit normals and depth -- and maps every pixel to a point in a
low-dimensional *embedding* space, trained with the discriminative loss of De Brabandere et al. (2017):
pixels of one part are pulled to within ``delta_v`` of their part's mean, the means of different parts of a
view are pushed at least ``2 delta_d`` apart. Parts are class-agnostic (a chair's leg and a lamp's shade
are just "a part"), so one network serves every shape family and any number of parts.

:class:`LearnedMaskGenerator` plugs the network in behind :class:`~renderers.masks.MaskGenerator`: the
foreground pixels' embeddings are clustered (:func:`cluster_embeddings`: densest seed, mean-shift steps
within ``radius``, remove, repeat) and every cluster becomes a :class:`~renderers.masks.Mask` scored like
the geometric generator's regions (:func:`~renderers.masks.regions_to_masks`). The views are then revoted
on the mesh as for any generator.

Inputs (:func:`view_features`), 5 channels at the network's ``image_size`` (views of another size are
resampled, nearest, and the embeddings resampled back):

* the normals (3; world frame of the normalized mesh, 0 off the object): both the training renders and the
  segmenter use the same normalized, +z-up frame;
* depth minus the view's mean foreground depth, times 2 (1; 0 off the object): the normalized mesh spans
  about one unit, so this is of order one;
* the foreground mask (1).

Checkpoints save and load through :class:`~tokenizers3d.checkpoint.PretrainedMixin`
(``config.json`` + ``model.safetensors``). The shipped one lives in :data:`DEFAULT_CHECKPOINT`; its card is
the ``README.md`` beside it, and ``scripts/train_part_masks.py`` reproduces it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tokenizers3d.checkpoint import PretrainedMixin

from .masks import Mask, MaskGenerator, regions_to_masks

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "checkpoints" / "part-masks"
IN_CHANNELS = 5


@dataclass(frozen=True)
class PartMaskConfig:
    """Shape of :class:`PartMaskNet` and its loss / clustering constants.

    Attributes
    ----------
    widths : tuple of int
        Channels per U-Net level (full resolution first); each level halves the resolution.
    embed_dim : int
        Embedding dimensions per pixel.
    groups : int
        GroupNorm groups (every width must be divisible).
    image_size : int
        Views are resampled to this size (what the network was trained on).
    delta_v, delta_d : float
        Discriminative loss margins: pull within ``delta_v`` of the part mean, push means ``2 delta_d`` apart.
    radius : float
        Clustering radius in embedding space (between ``delta_v`` and ``2 delta_d - delta_v``).
    min_pixels : int
        Clusters with fewer pixels (at the view's size) become no mask.
    """

    widths: tuple[int, ...] = (16, 32, 64, 96)
    embed_dim: int = 8
    groups: int = 8
    image_size: int = 128
    delta_v: float = 0.5
    delta_d: float = 1.5
    radius: float = 1.0
    min_pixels: int = 12


class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.SiLU())


class PartMaskNet(nn.Module, PretrainedMixin):
    """U-Net: (B, 5, H, W) view features -> (B, embed_dim, H, W) per-pixel embeddings (H, W divisible by
    ``2^(levels - 1)``)."""

    config_class = PartMaskConfig

    def __init__(self, config: PartMaskConfig | None = None):
        super().__init__()
        self.config = config = config or PartMaskConfig()
        w, g = tuple(config.widths), int(config.groups)
        if any(c % g for c in w):
            raise ValueError(f"every width {w} must be divisible by groups={g}")
        self.down = nn.ModuleList([_Block(IN_CHANNELS if i == 0 else w[i - 1], w[i], g) for i in range(len(w))])
        self.up = nn.ModuleList([_Block(w[i + 1] + w[i], w[i], g) for i in reversed(range(len(w) - 1))])
        self.head = nn.Conv2d(w[0], config.embed_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = block(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="nearest"), skip], dim=1))
        return self.head(x)


# ------------------------------------------------------------------------------------------------ features
def view_features(normals: np.ndarray | torch.Tensor, depth: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(..., 5, H, W) float32 network input from normals (..., H, W, 3) and depth (..., H, W) (<= 0 off the
    object); see the module docstring."""
    n = torch.as_tensor(normals).float()
    d = torch.as_tensor(depth).float()
    fg = (d > 0).float()
    count = fg.sum(dim=(-2, -1), keepdim=True).clamp_min(1.0)
    mean = (d * fg).sum(dim=(-2, -1), keepdim=True) / count
    rel = (d - mean) * 2.0 * fg
    n = n * fg.unsqueeze(-1)
    return torch.cat([n.movedim(-1, -3), rel.unsqueeze(-3), fg.unsqueeze(-3)], dim=-3)


# ---------------------------------------------------------------------------------------------------- loss
def discriminative_loss(emb: torch.Tensor, parts: torch.Tensor, *, delta_v: float = 0.5, delta_d: float = 1.5,
                        reg: float = 1e-3) -> tuple[torch.Tensor, dict]:
    """The discriminative loss over a batch.

    Parameters
    ----------
    emb : (B, D, H, W) float
    parts : (B, H, W) int
        Part instance per pixel (any non-negative ids, compared within one image); < 0 off the object.

    Returns
    -------
    loss : scalar tensor
        ``var + dist + reg * norm``, each averaged over the batch's parts (``dist`` over the pairs of parts of
        one image; 0 when no image has two).
    terms : dict of float
        ``var``, ``dist``, ``norm``.
    """
    b, d = emb.shape[:2]
    e = emb.movedim(1, -1).reshape(-1, d)
    p = parts.reshape(b, -1).long()
    keep = (p >= 0).reshape(-1)
    width = int(p.max().clamp_min(0)) + 1
    inst = (torch.arange(b, device=p.device)[:, None] * width + p.clamp_min(0)).reshape(-1)[keep]
    e = e[keep]
    if len(e) == 0:
        zero = emb.sum() * 0.0
        return zero, {"var": 0.0, "dist": 0.0, "norm": 0.0}
    ids, inst = torch.unique(inst, return_inverse=True)
    k = len(ids)
    counts = torch.bincount(inst, minlength=k).float()
    means = torch.zeros(k, d, dtype=e.dtype, device=e.device).index_add_(0, inst, e) / counts[:, None]
    pull = F.relu((e - means[inst]).norm(dim=1) - delta_v) ** 2
    var = (torch.zeros(k, dtype=e.dtype, device=e.device).index_add_(0, inst, pull) / counts).mean()
    image = ids // width
    same = (image[:, None] == image[None, :]) & ~torch.eye(k, dtype=torch.bool, device=e.device)
    if same.any():
        gap = torch.cdist(means, means)[same]
        dist = (F.relu(2.0 * delta_d - gap) ** 2).mean()
    else:
        dist = means.sum() * 0.0
    norm = means.norm(dim=1).mean()
    loss = var + dist + reg * norm
    return loss, {"var": var.item(), "dist": dist.item(), "norm": norm.item()}


# ---------------------------------------------------------------------------------------------- clustering
def cluster_embeddings(emb: np.ndarray, fg: np.ndarray, *, radius: float = 1.0, min_pixels: int = 12,
                       candidates: int = 64, seed: int = 0) -> np.ndarray:
    """Label image (H, W) int64 from embeddings (D, H, W) of the foreground ``fg`` (H, W) bool; -1 elsewhere.

    Repeatedly: among ``candidates`` random unassigned pixels, the one with most unassigned pixels within
    ``radius`` seeds a cluster; three mean-shift steps (mean of the unassigned pixels within ``radius``) move
    its centre; the unassigned pixels within ``radius`` of the centre form the cluster. A cluster smaller
    than ``min_pixels`` is left unlabelled (-1). Stops when fewer than ``min_pixels`` pixels are unassigned.
    """
    h, w = fg.shape
    labels = np.full(h * w, -1, dtype=np.int64)
    idx = np.flatnonzero(fg.reshape(-1))
    if len(idx) < min_pixels:
        return labels.reshape(h, w)
    e = np.asarray(emb, dtype=np.float32).reshape(emb.shape[0], -1)[:, idx].T  # (N, D)
    rng = np.random.default_rng(seed)
    free = np.ones(len(idx), dtype=bool)
    r2 = float(radius) ** 2
    next_label = 0
    while free.sum() >= min_pixels:
        pool = np.flatnonzero(free)
        cand = pool if len(pool) <= candidates else rng.choice(pool, candidates, replace=False)
        ef = e[pool]
        d2 = ((e[cand, None, :] - ef[None, :, :]) ** 2).sum(-1)  # (C, N_free)
        centre = e[cand[int(np.argmax((d2 < r2).sum(1)))]]
        for _ in range(3):
            near = ((ef - centre) ** 2).sum(1) < r2
            if not near.any():
                break
            centre = ef[near].mean(0)
        members = pool[((ef - centre) ** 2).sum(1) < r2]
        if len(members) == 0:  # the centre drifted off every pixel: drop its seed's neighbourhood
            members = pool[:1]
        free[members] = False
        if len(members) >= min_pixels:
            labels[idx[members]] = next_label
            next_label += 1
    return labels.reshape(h, w)


# ------------------------------------------------------------------------------------------------ generator
class LearnedMaskGenerator(MaskGenerator):
    """Masks from a trained :class:`PartMaskNet` (the default of ``meshgen segment`` when its checkpoint is
    present).

    Parameters
    ----------
    model : PartMaskNet
    device : str
    seed : int
        Seeds the clustering's candidate draws.
    """

    def __init__(self, model: PartMaskNet, *, device: str = "cpu", seed: int = 0):
        self.model = model.to(device).eval()
        self.device = device
        self.seed = int(seed)

    @classmethod
    def from_pretrained(cls, directory: str | Path | None = None, *, device: str = "cpu", seed: int = 0
                        ) -> LearnedMaskGenerator:
        """Load ``directory`` (default :data:`DEFAULT_CHECKPOINT`); a bad one raises
        :class:`~tokenizers3d.errors.MeshInputError` naming it."""
        return cls(PartMaskNet.from_pretrained(DEFAULT_CHECKPOINT if directory is None else directory),
                   device=device, seed=seed)

    @torch.no_grad()
    def embed(self, normals: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """(D, H, W) float32 embeddings of one view (resampled to the network's size and back)."""
        x = view_features(normals, depth)[None].to(self.device)
        h, w = x.shape[-2:]
        size = int(self.model.config.image_size)
        levels = 2 ** (len(self.model.config.widths) - 1)
        if (h, w) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="nearest")
        elif h % levels or w % levels:
            raise ValueError(f"view size {h}x{w} must be divisible by {levels}")
        out = self.model(x)
        if out.shape[-2:] != (h, w):
            out = F.interpolate(out, size=(h, w), mode="nearest")
        return out[0].float().cpu().numpy()

    def generate(self, image: np.ndarray, *, normals: np.ndarray | None = None, depth: np.ndarray | None = None,
                 points: np.ndarray | None = None) -> list[Mask]:
        if normals is None or depth is None:
            raise ValueError("the learned mask generator needs the normal and depth maps of the view")
        depth = np.asarray(depth)
        fg = depth > 0
        if not fg.any():
            return []
        cfg = self.model.config
        emb = self.embed(normals, depth)
        scale = (depth.shape[0] * depth.shape[1]) / float(cfg.image_size ** 2)
        min_pixels = max(1, int(round(cfg.min_pixels * scale)))
        labels = cluster_embeddings(emb, fg, radius=cfg.radius, min_pixels=min_pixels, seed=self.seed)
        return regions_to_masks(labels, min_pixels=min_pixels, full_score_pixels=max(1, int(400 * scale)))


def learned_available(directory: str | Path | None = None) -> bool:
    """Whether a learned mask checkpoint exists (default: the shipped one)."""
    return (Path(DEFAULT_CHECKPOINT if directory is None else directory) / "config.json").exists()
