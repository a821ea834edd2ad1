"""Human mesh recovery from one image with pose tokens (PostoMETRO), on the open Anny body model.

:class:`HMRModel` (frozen :class:`HMRConfig`; ``save_pretrained`` / ``from_pretrained`` through
``tokenizers3d.checkpoint``):

1. **Image encoder**: a small CNN trained from scratch (four stride-2 stages, 128 px -> 8 x 8) -> 64 image
   tokens with learned positions.
2. **2D keypoint head**: 17 heatmaps at 1/4 resolution from the two finest stages, soft-argmax -> keypoints
   in the crop frame ``[-1, 1]``, and a visibility logit per joint.
3. **Pose tokens**: the predicted keypoints (detached) and their visibility -- or, when the model carries one
   (``HMRConfig.keypoint_net``, :func:`attach_keypoint_net`), the keypoints of a separate frozen 2D pose estimator
   (:class:`meshgen.keypoints.KeypointNet`, as PostoMETRO reads its tokens from one) -- go through the frozen 2D pose
   tokenizer (:class:`tokenizers3d.pose_tokens.PoseTokenizer`, its weights saved inside this model) -> ``M``
   discrete tokens -> their codebook vectors, projected to the model width. Off (``pose_tokens=False``) for
   the ablation: everything else is the same.
4. **Transformer** over ``[image tokens | pose tokens | camera query | 17 joint queries | Q vertex queries]``
   (METRO's learned queries); linear heads read 3D joints and vertices (pelvis-relative, OpenCV camera axes,
   metres) and a weak-perspective camera ``(s, tx, ty)``.
5. **Upsampling**: the ``Q`` coarse vertices (the first ``Q`` farthest-point samples of Anny's rest body,
   ``renderers.body_data.CoarseTopology``) -> the full 13,718-vertex Anny mesh by a fixed sparse linear
   map fitted on posed bodies (``up_index``, ``up_weight``; with Anny's faces ``full_faces``: buffers saved
   with the weights, so inference needs no ``anny``).

Losses (:func:`hmr_losses`): vertex and joint L1, 2D reprojection of the 3D joints through the predicted
camera, the keypoint head's L1 and visibility BCE, and edge-length and face-normal terms on the coarse mesh.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from tokenizers3d.checkpoint import PretrainedMixin
from tokenizers3d.pose_tokens import PoseTokenizer, PoseTokenizerConfig

from .keypoints import KeypointConfig, KeypointNet, KeypointOutput, soft_argmax


@dataclass(frozen=True)
class HMRConfig:
    """Settings of :class:`HMRModel`."""

    image_size: int = 128
    channels: tuple[int, ...] = (32, 64, 96, 128)
    width: int = 128
    layers: int = 4
    heads: int = 4
    n_joints: int = 17
    n_vertices: int = 256
    n_full_vertices: int = 13718
    n_full_faces: int = 27420
    n_coarse_faces: int = 0
    up_k: int = 4
    pose_tokens: bool = True
    pose_tokenizer: PoseTokenizerConfig = field(default_factory=PoseTokenizerConfig)
    dropout: float = 0.0
    keypoint_net: KeypointConfig | None = None  # a 2D pose estimator of its own (frozen) feeds the pose tokens

    def __post_init__(self):
        if self.image_size % 16:
            raise ValueError(f"image_size must be a multiple of 16, got {self.image_size}")
        if len(self.channels) != 4:
            raise ValueError(f"channels must list 4 stages, got {self.channels}")


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


@dataclass
class HMROutput:
    joints: torch.Tensor  # (B, J, 3) pelvis-relative, camera axes
    vertices: torch.Tensor  # (B, Q, 3) coarse
    camera: torch.Tensor  # (B, 3) weak perspective s, tx, ty
    keypoints: torch.Tensor  # (B, J, 2) keypoint head, crop frame
    visibility: torch.Tensor  # (B, J) logits
    pose_ids: torch.Tensor | None  # (B, M)
    estimate: KeypointOutput | None = None  # the model's own 2D pose estimator, when it carries one

    def project(self, points: torch.Tensor) -> torch.Tensor:
        """Weak-perspective projection of pelvis-relative points (B, N, 3) into the crop frame (B, N, 2)."""
        s, t = self.camera[:, None, :1], self.camera[:, None, 1:]
        return s * points[..., :2] + t


class HMRModel(nn.Module, PretrainedMixin):
    """Image -> 3D joints, coarse and full Anny vertices (module docstring)."""

    config_class = HMRConfig

    def __init__(self, config: HMRConfig):
        super().__init__()
        self.config = c = config
        ch = c.channels
        self.stages = nn.ModuleList([_stage(3, ch[0]), _stage(ch[0], ch[1]), _stage(ch[1], ch[2]),
                                     _stage(ch[2], ch[3])])
        self.kp_head = nn.Sequential(nn.Conv2d(ch[1] + ch[2], 64, 3, padding=1), nn.ReLU(inplace=True),
                                     nn.Conv2d(64, c.n_joints, 1))
        self.vis_head = nn.Linear(ch[3], c.n_joints)
        n_img = (c.image_size // 16) ** 2
        self.img_proj = nn.Linear(ch[3], c.width)
        self.img_pos = nn.Parameter(torch.randn(n_img, c.width) * 0.02)
        self.tokenizer = PoseTokenizer(c.pose_tokenizer)
        self.tokenizer.requires_grad_(False)
        self.keypoint_net = None
        if c.keypoint_net is not None:
            self.keypoint_net = KeypointNet(c.keypoint_net)
            self.keypoint_net.requires_grad_(False)
        m = c.pose_tokenizer.n_tokens
        self.pose_proj = nn.Linear(c.pose_tokenizer.code_dim, c.width)
        self.pose_pos = nn.Parameter(torch.randn(m, c.width) * 0.02)
        self.queries = nn.Parameter(torch.randn(1 + c.n_joints + c.n_vertices, c.width) * 0.02)
        layer = nn.TransformerEncoderLayer(c.width, c.heads, 2 * c.width, dropout=c.dropout, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.transformer = nn.TransformerEncoder(layer, c.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.width)
        self.cam_head = nn.Linear(c.width, 3)
        self.joint_head = nn.Linear(c.width, 3)
        self.vert_head = nn.Linear(c.width, 3)
        self.register_buffer("up_index", torch.zeros(c.n_full_vertices, c.up_k, dtype=torch.long))
        self.register_buffer("up_weight", torch.zeros(c.n_full_vertices, c.up_k))
        self.register_buffer("coarse_faces", torch.zeros(c.n_coarse_faces, 3, dtype=torch.long))
        self.register_buffer("full_faces", torch.zeros(c.n_full_faces, 3, dtype=torch.long))
        self.register_buffer("pixel_mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))

    def train(self, mode: bool = True):
        super().train(mode)
        self.tokenizer.eval()  # frozen: no EMA codebook updates, no dead-code restarts
        if self.keypoint_net is not None:
            self.keypoint_net.eval()  # frozen: its batch norms keep their statistics
        return self

    def forward(self, images: torch.Tensor, *, pose_keypoints: torch.Tensor | None = None,
                pose_confidence: torch.Tensor | None = None, pose_rows: torch.Tensor | None = None,
                image_hidden: torch.Tensor | None = None) -> HMROutput:
        """``images`` (B, 3, S, S) float in [0, 1].

        ``pose_keypoints`` (B, J, 2, crop frame) and ``pose_confidence`` (B, J, in [0, 1]) replace the keypoint
        head's output as the pose tokenizer's input (the head still runs and is returned): a diagnosis of what the
        pose tokens can carry, e.g. the true keypoints of a test image as an upper bound
        (``scripts/eval_body.py --pose-from truth``), or, in training, the true keypoints as a teacher
        (``scripts/train_hmr.py --pose-teacher``); ``pose_rows`` (B,) bool limits the replacement to those rows.

        ``image_hidden`` (B, (S/16)^2) bool hides those image tokens from the transformer (a key padding mask; the
        keypoint head still sees the whole image): modality dropout in training (``scripts/train_hmr.py
        --image-drop``), so the model learns what the pose tokens carry instead of reading everything off the
        image."""
        c = self.config
        x = images - self.pixel_mean
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        f4, f8, f16 = feats[1], feats[2], feats[3]
        up = F.interpolate(f8, size=f4.shape[-2:], mode="bilinear", align_corners=False)
        heat = self.kp_head(torch.cat([f4, up], dim=1))  # (B, J, S/4, S/4)
        keypoints = soft_argmax(heat)
        visibility = self.vis_head(f16.mean(dim=(2, 3)))
        tokens = [self.img_proj(f16.flatten(2).transpose(1, 2)) + self.img_pos]
        pose_ids = estimate = None
        if c.pose_tokens:
            kp, conf = keypoints.detach(), visibility.detach().sigmoid()
            if self.keypoint_net is not None:
                with torch.no_grad():
                    estimate = self.keypoint_net(images)
                kp, conf = estimate.keypoints, estimate.inside
            if pose_keypoints is not None:
                rows = torch.ones(kp.shape[0], dtype=torch.bool) if pose_rows is None else pose_rows
                kp = torch.where(rows[:, None, None], pose_keypoints, kp)
                conf = torch.where(rows[:, None], pose_confidence, conf)
            pose, pose_ids = self._pose_tokens(kp, conf)
            tokens.append(pose)
        mask = None
        if image_hidden is not None:
            n_rest = sum(t.shape[1] for t in tokens) + self.queries.shape[0] - image_hidden.shape[1]
            rest = torch.zeros(images.shape[0], n_rest, dtype=torch.bool, device=images.device)
            mask = torch.cat([image_hidden.to(device=images.device, dtype=torch.bool), rest], dim=1)
        joints, vertices, camera = self._decode(tokens, mask)
        return HMROutput(joints, vertices, camera, keypoints, visibility, pose_ids, estimate)

    def lift(self, pose_keypoints: torch.Tensor, pose_confidence: torch.Tensor) -> HMROutput:
        """The 3D body from a 2D pose alone: ``pose_keypoints`` (B, J, 2, crop frame) and ``pose_confidence``
        (B, J) -> pose tokens -> the transformer with no image tokens at all -> joints, coarse vertices, camera.
        The same as :meth:`forward` with every image token hidden and these keypoints as the tokens' input, without
        the CNN: pose-only training (``scripts/train_hmr.py --pose-only-batch``) teaches the tokens -> 3D path on
        poses that need no rendering. The returned ``keypoints`` are the input, ``visibility`` zeros."""
        if not self.config.pose_tokens:
            raise ValueError("the model without pose tokens has no 2D pose input to lift")
        pose, pose_ids = self._pose_tokens(pose_keypoints, pose_confidence)
        joints, vertices, camera = self._decode([pose], None)
        return HMROutput(joints, vertices, camera, pose_keypoints, pose_confidence.new_zeros(pose_confidence.shape),
                         pose_ids)

    def _pose_tokens(self, keypoints: torch.Tensor, confidence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keypoints and confidences through the frozen tokenizer -> (pose tokens at the model width (B, M, D),
        their ids (B, M))."""
        with torch.no_grad():
            z = self.tokenizer.features(keypoints.detach(), confidence.detach())
            b, m = z.shape[:2]
            pose_ids = self.tokenizer.quantizer.nearest(z.reshape(b * m, -1), 0).reshape(b, m)
            vectors = self.tokenizer.embed(pose_ids)
        return self.pose_proj(vectors) + self.pose_pos, pose_ids

    def _decode(self, context: list[torch.Tensor], mask: torch.Tensor | None):
        """Context tokens (image and / or pose, each (B, n, D)) + the learned queries -> transformer ->
        (joints (B, J, 3), coarse vertices (B, Q, 3), camera (B, 3)); ``mask`` hides context keys."""
        c = self.config
        n_ctx = sum(t.shape[1] for t in context)
        x = torch.cat([*context, self.queries.expand(context[0].shape[0], -1, -1)], dim=1)
        h = self.norm(self.transformer(x, src_key_padding_mask=mask))[:, n_ctx:]
        cam = self.cam_head(h[:, 0])
        camera = torch.cat([F.softplus(cam[:, :1] + 0.5), cam[:, 1:]], dim=-1)
        return self.joint_head(h[:, 1:1 + c.n_joints]), self.vert_head(h[:, 1 + c.n_joints:]), camera

    def full_vertices(self, coarse: torch.Tensor) -> torch.Tensor:
        """Coarse vertices (B, Q, 3) -> full Anny vertices (B, V, 3) by the fixed upsampling map."""
        return (coarse[:, self.up_index] * self.up_weight[None, :, :, None]).sum(dim=2)

    def set_topology(self, up_index, up_weight, coarse_faces, full_faces) -> None:
        """Install the upsampling map, the coarse and the full faces (training start; saved with the weights)."""
        self.full_faces.copy_(torch.as_tensor(full_faces, dtype=torch.long))
        self.up_index.copy_(torch.as_tensor(up_index, dtype=torch.long))
        self.up_weight.copy_(torch.as_tensor(up_weight, dtype=torch.float32))
        self.coarse_faces.copy_(torch.as_tensor(coarse_faces, dtype=torch.long))


@dataclass(frozen=True)
class LossWeights:
    vertices: float = 1.0
    joints: float = 1.0
    reprojection: float = 1.0
    keypoints: float = 1.0
    visibility: float = 0.05
    edges: float = 1.0
    normals: float = 0.1


def _face_normals(v: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    a, b, c = v[:, faces[:, 0]], v[:, faces[:, 1]], v[:, faces[:, 2]]
    return F.normalize(torch.cross(b - a, c - a, dim=-1), dim=-1)


def hmr_losses(out: HMROutput, batch: dict, model: HMRModel, weights: LossWeights = LossWeights()) -> dict:
    """Every loss term (and the weighted ``loss``) for a batch of tensors: ``joints`` (B, J, 3) and
    ``vertices`` (B, Q, 3) pelvis-relative; ``keypoints`` (B, J, 2) crop frame; ``inside`` (B, J) bool (in the
    image) and ``visible`` (B, J) bool."""
    tv, tj = batch["vertices"], batch["joints"]
    terms = {
        "vertices": (out.vertices - tv).abs().sum(-1).mean(),
        "joints": (out.joints - tj).abs().sum(-1).mean(),
    }
    inside = batch["inside"].float()
    denom = inside.sum().clamp_min(1.0)
    terms["reprojection"] = ((out.project(out.joints) - batch["keypoints"]).abs().sum(-1) * inside).sum() / denom
    terms["keypoints"] = ((out.keypoints - batch["keypoints"]).abs().sum(-1) * inside).sum() / denom
    terms["visibility"] = F.binary_cross_entropy_with_logits(out.visibility, batch["visible"].float())
    faces = model.coarse_faces
    if len(faces):
        edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
        pl = (out.vertices[:, edges[:, 0]] - out.vertices[:, edges[:, 1]]).norm(dim=-1)
        tl = (tv[:, edges[:, 0]] - tv[:, edges[:, 1]]).norm(dim=-1)
        terms["edges"] = (pl - tl).abs().mean()
        terms["normals"] = (1.0 - (_face_normals(out.vertices, faces) * _face_normals(tv, faces)).sum(-1)).mean()
    else:
        terms["edges"] = terms["normals"] = tv.new_zeros(())
    terms["loss"] = sum(getattr(weights, k) * v for k, v in terms.items())
    return terms


def colour_jitter(rng, images: torch.Tensor) -> torch.Tensor:
    """Training augmentation of (B, 3, S, S) floats in [0, 1], per image: a gain per channel (0.8-1.2), brightness
    (+-0.1), contrast (0.7-1.3) and pixel noise (std 0.02), drawn from the numpy generator ``rng``."""
    b = images.shape[0]
    gain = torch.as_tensor(rng.uniform(0.8, 1.2, (b, 3, 1, 1)), dtype=torch.float32)
    bright = torch.as_tensor(rng.uniform(-0.1, 0.1, (b, 1, 1, 1)), dtype=torch.float32)
    contrast = torch.as_tensor(rng.uniform(0.7, 1.3, (b, 1, 1, 1)), dtype=torch.float32)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean) * contrast + mean + bright
    images = images * gain + torch.as_tensor(rng.normal(0, 0.02, images.shape), dtype=torch.float32)
    return images.clamp(0, 1)


def attach_keypoint_net(model: HMRModel, net: KeypointNet) -> HMRModel:
    """A copy of ``model`` (with pose tokens) whose pose tokens read ``net``'s keypoints, with the probability of
    being inside the image as confidence, instead of the keypoint head's; the net is frozen inside it and saved with
    its weights. Replaces a net the model already carries."""
    from dataclasses import replace

    if not model.config.pose_tokens:
        raise ValueError("a model without pose tokens has nothing to feed a 2D pose estimator's keypoints to")
    if net.config.image_size != model.config.image_size or net.config.n_joints != model.config.n_joints:
        raise ValueError(f"the keypoint net takes {net.config.image_size} px images and {net.config.n_joints} "
                         f"joints, the body model {model.config.image_size} px and {model.config.n_joints}")
    out = HMRModel(replace(model.config, keypoint_net=net.config))
    out.load_state_dict(with_keypoint_net(model.state_dict(), net))
    return out.train(model.training)


def with_keypoint_net(state: dict, net: KeypointNet | None) -> dict:
    """A body model's ``state`` dict with ``net``'s weights as its ``keypoint_net`` in place of any it held (none
    when ``net`` is None)."""
    out = {k: v for k, v in state.items() if not k.startswith("keypoint_net.")}
    if net is not None:
        out.update({f"keypoint_net.{k}": v for k, v in net.state_dict().items()})
    return out


__all__ = ["HMRConfig", "HMRModel", "HMROutput", "LossWeights", "attach_keypoint_net", "colour_jitter", "hmr_losses", "soft_argmax",
           "with_keypoint_net"]
