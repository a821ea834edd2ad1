"""Segment Anything (SAM) as a :class:`~renderers.masks.MaskGenerator`.

Needs the optional ``segment-anything`` package (``pip install 'meshgen[sam]'``) and a checkpoint file
from the user: the official ``sam_vit_b_01ec64.pth`` / ``vit_l`` / ``vit_h`` weights, or the same state
dict saved as ``.safetensors``. Checkpoints are read with ``torch.load(..., weights_only=True)`` (never
unpickling arbitrary objects) or ``safetensors``; the model is built with ``segment_anything``'s own
``sam_model_registry`` and the weights loaded into it, after checking every key and shape so that a
wrong file gets an error naming what it looks like instead of a wall of missing keys.

Two modes (:class:`SamSettings`):

``auto``
    ``SamAutomaticMaskGenerator``: a grid of point prompts over the whole image, filtered by predicted
    IoU and stability, non-maximum suppressed. Score = predicted IoU x stability score.
``points``
    ``SamPredictor`` prompted with a grid of single points that land on the object (from the depth
    map), best of SAM's three multimask outputs per point, duplicates (IoU above ``dedupe_iou``) dropped.

Masks are clipped to the rendered object; overlapping masks are fine (the segmenter paints smaller
masks over larger ones).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from tokenizers3d.checkpoint import check_state_dict
from tokenizers3d.checkpoint import read_state_dict as read_state_dict_file
from tokenizers3d.errors import ConfigError, MeshInputError

from .masks import Mask, MaskGenerator

INSTALL_HINT = "SAM needs the optional package segment-anything: pip install 'meshgen[sam]' " \
               "(segment-anything==1.0 torchvision==0.27.1)"


def _segment_anything():
    try:
        import segment_anything
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return segment_anything


@dataclass(frozen=True)
class SamArchitecture:
    """Hyper-parameters that fix the shapes of a SAM model (the three official ones are in :data:`SAM_ARCHITECTURES`).

    Attributes
    ----------
    encoder_embed_dim, encoder_depth, encoder_num_heads : int
        ViT image encoder width, blocks and heads.
    encoder_global_attn_indexes : tuple of int
        Blocks with global (not windowed) attention.
    image_size : int
        Input side the encoder expects (images are resized to it).
    patch_size, window_size : int
    prompt_embed_dim : int
        Width of prompt embeddings and of the mask decoder.
    decoder_depth, decoder_mlp_dim, decoder_num_heads : int
        Two-way transformer of the mask decoder.
    iou_head_hidden_dim, mask_in_chans : int
    """

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16


SAM_ARCHITECTURES = {
    "vit_b": SamArchitecture(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamArchitecture(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamArchitecture(1280, 32, 16, (7, 15, 23, 31)),
}


def build_sam(model_type: str | SamArchitecture = "vit_b"):
    """A SAM model with random weights: ``sam_model_registry[name]`` for the official types, otherwise
    assembled from ``segment_anything``'s modules (``ImageEncoderViT``, ``PromptEncoder``, ``MaskDecoder``
    with a ``TwoWayTransformer``) with the shapes of a :class:`SamArchitecture` (e.g. a tiny one for tests).
    """
    sa = _segment_anything()
    if isinstance(model_type, str):
        if model_type not in SAM_ARCHITECTURES:
            raise ConfigError(f"unknown SAM model type {model_type!r}; expected one of {', '.join(SAM_ARCHITECTURES)}")
        return sa.sam_model_registry[model_type](checkpoint=None).eval()
    a = model_type
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = a.image_size // a.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=a.encoder_depth, embed_dim=a.encoder_embed_dim, img_size=a.image_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=a.encoder_num_heads,
            patch_size=a.patch_size, qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=tuple(a.encoder_global_attn_indexes), window_size=a.window_size,
            out_chans=a.prompt_embed_dim),
        prompt_encoder=PromptEncoder(embed_dim=a.prompt_embed_dim, image_embedding_size=(grid, grid),
                                     input_image_size=(a.image_size, a.image_size), mask_in_chans=a.mask_in_chans),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=a.decoder_depth, embedding_dim=a.prompt_embed_dim,
                                          mlp_dim=a.decoder_mlp_dim, num_heads=a.decoder_num_heads),
            transformer_dim=a.prompt_embed_dim, iou_head_depth=3, iou_head_hidden_dim=a.iou_head_hidden_dim),
    ).eval()


# official checkpoint names carry the first 6 hex digits of the file's SHA-256
OFFICIAL_NAME = re.compile(r"^sam_(vit_[bhl])_([0-9a-f]{6})\.pth$")


def read_state_dict(path: str | Path, *, verify_name: bool = True) -> dict[str, torch.Tensor]:
    """Tensors of a SAM checkpoint file through the project's one loader
    (:func:`tokenizers3d.checkpoint.read_state_dict`: ``.safetensors``, or a ``torch.save``d state dict read with
    ``weights_only=True``; never unpickled). A file named like an official release (``sam_vit_b_01ec64.pth``)
    must have a SHA-256 that starts with the hex digits in its name.

    Raises
    ------
    MeshInputError
        Missing, empty, corrupt or pickled file, no tensors in it, or a SHA-256 that contradicts its name.
    """
    path = Path(path)
    state = read_state_dict_file(path, what="SAM checkpoint")
    match = OFFICIAL_NAME.match(path.name)
    if verify_name and match:
        digest = _sha256(path)
        if not digest.startswith(match.group(2)):
            raise MeshInputError(path, f"SHA-256 starts with {digest[:6]}, but the official file of this name "
                                       f"starts with {match.group(2)}: the download is corrupt or not the official "
                                       "checkpoint")
    return state


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def describe_state_dict(state: Mapping[str, torch.Tensor]) -> str:
    """What a state dict looks like: ``"SAM vit_l"``, ``"a SAM-like model (embed dim 64, 2 encoder blocks)"``
    or ``"not a SAM checkpoint"``."""
    w = state.get("image_encoder.patch_embed.proj.weight")
    if w is None or w.ndim != 4:
        return "not a SAM checkpoint (no image_encoder.patch_embed weights)"
    dim = int(w.shape[0])
    blocks = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    for name, arch in SAM_ARCHITECTURES.items():
        if arch.encoder_embed_dim == dim and arch.encoder_depth == blocks:
            return f"SAM {name}"
    return f"a SAM-like model (embed dim {dim}, {blocks} encoder blocks)"


def load_sam(checkpoint: str | Path, model_type: str | SamArchitecture = "vit_b", *, device: str | torch.device = "cpu"):
    """Build SAM ``model_type`` and load ``checkpoint`` into it (every key and shape checked first).

    Raises
    ------
    MeshInputError
        Unreadable checkpoint, or one that does not fit ``model_type`` (the message says what it looks like).
    ImportError
        ``segment-anything`` is not installed.
    """
    if isinstance(model_type, str) and model_type not in SAM_ARCHITECTURES:  # before reading a large file
        raise ConfigError(f"unknown SAM model type {model_type!r}; expected one of {', '.join(SAM_ARCHITECTURES)}")
    state = read_state_dict(checkpoint)
    with torch.device("meta"):  # shapes only, no memory or random init
        expected = build_sam(model_type).state_dict()
    name = model_type if isinstance(model_type, str) else "the given architecture"
    try:
        check_state_dict(expected, state, checkpoint, name=f"SAM {name}")
    except MeshInputError as exc:
        looks = describe_state_dict(state)
        hint = f"; pass model type {looks.split()[-1]}" if looks.startswith("SAM ") else ""
        raise MeshInputError(checkpoint, f"{exc.problem}; it looks like {looks}{hint}") from None
    model = build_sam(model_type)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


@dataclass(frozen=True)
class SamSettings:
    """How :class:`SamMaskGenerator` prompts SAM.

    Attributes
    ----------
    mode : str
        ``"auto"`` (automatic mask generator) or ``"points"`` (predictor with point prompts on the object).
    points_per_side : int
        Prompt grid size (``points_per_side ** 2`` points).
    points_per_batch : int
        Prompts run together.
    pred_iou_thresh, stability_score_thresh, box_nms_thresh : float
        ``auto`` filters (SAM's defaults are 0.88, 0.95, 0.7).
    min_mask_region_area : int
        ``auto``: remove small islands and holes (pixels; 0 keeps everything, needs OpenCV otherwise).
    dedupe_iou : float
        ``points``: a mask overlapping a better-scoring kept one by more than this is dropped.
    min_score : float
        ``points``: masks whose predicted IoU is lower are dropped.
    """

    mode: str = "auto"
    points_per_side: int = 16
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.86
    stability_score_thresh: float = 0.9
    box_nms_thresh: float = 0.7
    min_mask_region_area: int = 0
    dedupe_iou: float = 0.8
    min_score: float = 0.5

    def __post_init__(self):
        if self.mode not in ("auto", "points"):
            raise ValueError(f"SAM mode must be 'auto' or 'points', got {self.mode!r}")


def _as_uint8_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {image.shape}")
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    return np.clip(np.round(image.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


class SamMaskGenerator(MaskGenerator):
    """SAM masks of a rendered view.

    Parameters
    ----------
    model : segment_anything.modeling.Sam
        Any SAM (e.g. :func:`load_sam`, or :func:`build_sam` for a random one in tests).
    settings : SamSettings
    """

    def __init__(self, model, settings: SamSettings | None = None):
        self.model = model
        self.settings = settings or SamSettings()
        self._auto = None
        self._predictor = None

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, *, model_type: str | SamArchitecture = "vit_b",
                        settings: SamSettings | None = None, device: str | torch.device = "cpu") -> SamMaskGenerator:
        """Load weights with :func:`load_sam` (clear :class:`MeshInputError` on a bad file)."""
        return cls(load_sam(checkpoint, model_type, device=device), settings)

    def generate(self, image: np.ndarray, *, normals: np.ndarray | None = None, depth: np.ndarray | None = None,
                 points: np.ndarray | None = None) -> list[Mask]:
        rgb = _as_uint8_rgb(image)
        fg = np.asarray(depth) > 0 if depth is not None else np.ones(rgb.shape[:2], dtype=bool)
        with torch.no_grad():
            raw = self._generate_auto(rgb) if self.settings.mode == "auto" else self._generate_points(rgb, fg)
        out = []
        for mask, score in raw:
            m = np.asarray(mask, dtype=bool) & fg
            if m.any():
                out.append(Mask(mask=m, score=float(np.clip(score, 0.0, 1.0))))
        return out

    def _generate_auto(self, rgb: np.ndarray):
        if self._auto is None:
            sa = _segment_anything()
            s = self.settings
            self._auto = sa.SamAutomaticMaskGenerator(
                self.model, points_per_side=s.points_per_side, points_per_batch=s.points_per_batch,
                pred_iou_thresh=s.pred_iou_thresh, stability_score_thresh=s.stability_score_thresh,
                box_nms_thresh=s.box_nms_thresh, min_mask_region_area=s.min_mask_region_area)
        records = self._auto.generate(rgb)
        return [(r["segmentation"], r["predicted_iou"] * r["stability_score"]) for r in records]

    def _generate_points(self, rgb: np.ndarray, fg: np.ndarray):
        if self._predictor is None:
            self._predictor = _segment_anything().SamPredictor(self.model)
        s = self.settings
        h, w = fg.shape
        step_y, step_x = h / s.points_per_side, w / s.points_per_side
        ys = ((np.arange(s.points_per_side) + 0.5) * step_y).astype(int)
        xs = ((np.arange(s.points_per_side) + 0.5) * step_x).astype(int)
        grid = np.array([(x, y) for y in ys for x in xs if fg[y, x]], dtype=np.float64).reshape(-1, 2)
        if len(grid) == 0:
            return []
        predictor = self._predictor
        predictor.set_image(rgb)
        device = predictor.device
        found = []
        for start in range(0, len(grid), s.points_per_batch):
            pts = grid[start:start + s.points_per_batch]
            coords = torch.as_tensor(predictor.transform.apply_coords(pts, (h, w)), dtype=torch.float32,
                                     device=device)[:, None, :]
            labels = torch.ones(len(pts), 1, dtype=torch.int64, device=device)
            masks, iou, _ = predictor.predict_torch(coords, labels, multimask_output=True)
            best = iou.argmax(dim=1)
            rows = torch.arange(len(pts), device=device)
            for m, q in zip(masks[rows, best].cpu().numpy(), iou[rows, best].cpu().numpy(), strict=True):
                if q >= s.min_score and m.any():
                    found.append((m, float(q)))
        found.sort(key=lambda t: -t[1])
        kept: list = []
        for m, q in found:
            if all((m & k).sum() <= s.dedupe_iou * (m | k).sum() for k, _ in kept):
                kept.append((m, q))
        return kept
