"""Synthetic human images with known 3D bodies: the data of the body-recovery model (``meshgen body``).

Every example is drawn from one integer seed (test 0-999, val 1000-1999, train 10000 and above, as
:data:`tokenizers3d.part_sets.SPLIT_SEEDS`), so the same seed always gives the same image and labels:

* an Anny body (:class:`BodyModel`; optional extra ``human``): phenotypes (gender, age, muscle, weight, height,
  proportions) uniform in plausible ranges, a random pose (:data:`POSE_LIMITS`: a rotation about a random axis
  per limb, spine, neck and head bone), any heading about the vertical and a small tilt;
* a perspective camera (vertical field of view :data:`FOV`) looking at the body from up to 20 degrees above or
  below, at a distance that makes the body fill about 75-95 % of the image height, centre jittered;
* a rendered RGB image (the project's rasterizer, :func:`renderers.render.rasterize`): smooth Lambert shading
  with a random light, skin, shirt and trousers colours from the skinning weights, a random background
  (gradient, blobs and bars);
* on a share of images, **occluders**: 1-3 textured rectangles pasted over the body until 10-50 % of its
  pixels are hidden (``occlusion`` records the share).

Labels, in the camera frame of OpenCV (``X`` right, ``Y`` down, ``Z`` forward; metres):

``keypoints`` (17, 3)
    COCO-17 pixel coordinates ``u, v`` (pixel ``j`` spans ``[j, j + 1)``) and visibility: 2 visible, 1 hidden
    (behind the body, an occluder) but inside the image, 0 outside the image.
``joints`` (17, 3)
    The same keypoints in 3D (Anny's COCO regressor), camera frame.
``vertices`` (C, 3)
    The body on the coarse topology (:class:`CoarseTopology`, C = 1,024 farthest-point samples of Anny's
    13,718 vertices), camera frame.
``camera`` (4,)
    ``f, cx, cy, size``: focal length and principal point in pixels, image side.

The ``poses`` split holds labels without images (:meth:`BodyRenderer.pose_examples`: the same body, camera and
projection, no rendering, so tens of thousands cost minutes): train seeds from :data:`POSE_SEED_OFFSET` on, far
past any image's, for training the pose tokens -> 3D path of the model on poses alone; with no rendering there is
no self-occlusion test, so every joint in the image has visibility 2.

Datasets (:func:`write_body_dataset`, ``scripts/make_body_dataset.py``) are ``.npz`` shards of
``shard_size`` examples per split, each written to a temporary file and renamed, so a killed run resumes at
the first missing shard and never leaves half a shard; ``index.json`` records the settings.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tokenizers3d.part_sets import ANNY_PARTS, SPLIT_SEEDS, anny_part_of_bone, axis_angle

from .cameras import look_at_rotations

COCO_KEYPOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                  "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                  "right_knee", "left_ankle", "right_ankle")
HUMAN_INSTALL = "body recovery needs the Anny body model: pip install 'meshgen[human]' (or pip install anny)"
FOV = 40.0  # vertical field of view of every synthetic camera, degrees
COARSE_VERTICES = 1024
TOPOLOGY_FILE = Path(__file__).resolve().parents[1] / "assets" / "body" / "coarse_topology.json"
# Random pose: rotation about a random axis by up to this many degrees, per bone (both sides).
POSE_LIMITS = {"upperarm01": 75.0, "lowerarm01": 85.0, "upperleg01": 50.0, "lowerleg01": 75.0,
               "spine03": 25.0, "spine01": 15.0, "neck01": 25.0, "head": 25.0}
SKIN_TONES = np.array([[0.96, 0.80, 0.69], [0.90, 0.71, 0.56], [0.78, 0.57, 0.44], [0.60, 0.42, 0.31],
                       [0.42, 0.29, 0.21], [0.30, 0.20, 0.15]])


# ---- the body model ------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _anny():
    try:
        import anny
    except ImportError as exc:
        raise ImportError(HUMAN_INSTALL) from exc
    model = anny.Anny()  # first build in a fresh environment about a minute; cached on disk after
    regressor = anny.KeypointsRegressor.coco(model, labels=list(COCO_KEYPOINTS))
    return model, regressor


def human_available() -> bool:
    """Whether the optional ``anny`` package can be imported."""
    import importlib.util

    return importlib.util.find_spec("anny") is not None


@dataclass(frozen=True)
class BodyParams:
    """One body: ``phenotypes`` (6,) in Anny's order, ``rotations`` {bone: (3, 3)}, ``heading`` (3, 3) world
    rotation applied about the pelvis after posing."""

    phenotypes: np.ndarray
    rotations: dict
    heading: np.ndarray


def sample_body(seed: int) -> BodyParams:
    """The body of seed ``seed`` (deterministic)."""
    model, _ = _anny()
    rng = np.random.default_rng([int(seed), 0xB0D1])
    ranges = {"age": (0.35, 0.9), "height": (0.15, 0.85)}
    phen = np.array([rng.uniform(*ranges.get(k, (0.1, 0.9))) for k in model.phenotype_labels])
    rotations = {}
    for bone in model.bone_labels:
        limit = POSE_LIMITS.get(bone.split(".")[0])
        if limit is None:
            continue
        axis = rng.normal(size=3)
        rotations[bone] = axis_angle(axis / np.linalg.norm(axis), math.radians(rng.uniform(0.0, limit)))
    yaw = rng.uniform(0.0, 2.0 * math.pi)
    # a horizontal tilt axis (two independent angles, normalized below: kept, as the datasets were drawn so)
    tilt_axis = np.array([math.cos(rng.uniform(0, 2 * math.pi)), math.sin(rng.uniform(0, 2 * math.pi)), 0.0])
    tilt = axis_angle(tilt_axis / max(np.linalg.norm(tilt_axis), 1e-9), math.radians(rng.uniform(0.0, 10.0)))
    heading = tilt @ axis_angle(np.array([0.0, 0.0, 1.0]), yaw)
    return BodyParams(phen, rotations, heading)


class BodyModel:
    """Anny posed from :class:`BodyParams`, in batches: full vertices (B, 13718, 3) and COCO joints (B, 17, 3),
    world frame (z up, metres), pelvis (mid-hip) at the origin."""

    def __init__(self):
        self.model, self.regressor = _anny()

    @property
    def faces(self) -> np.ndarray:
        return self.model.get_triangular_faces().numpy().astype(np.int64)

    @functools.cached_property
    def template(self) -> np.ndarray:
        """(V, 3) vertices of the default body in its rest pose."""
        return self.forward([BodyParams(np.full(len(self.model.phenotype_labels), 0.5), {}, np.eye(3))])[0][0]

    @functools.cached_property
    def vertex_parts(self) -> np.ndarray:
        """(V,) index into :data:`~tokenizers3d.part_sets.ANNY_PARTS` of each vertex (largest skinning weight)."""
        group = np.array([ANNY_PARTS.index(anny_part_of_bone(b)) for b in self.model.bone_labels])
        weights = self.model.vertex_bone_weights.double().numpy()
        bones = self.model.vertex_bone_indices.numpy().astype(np.int64)
        per = np.zeros((len(weights), len(ANNY_PARTS)))
        np.add.at(per, (np.repeat(np.arange(len(weights)), bones.shape[1]), group[bones].reshape(-1)),
                  weights.reshape(-1))
        return per.argmax(axis=1)

    def forward(self, params: Sequence[BodyParams]) -> tuple[np.ndarray, np.ndarray]:
        import torch

        model = self.model
        dtype = model.template_vertices.dtype
        n_bones = len(model.bone_labels)
        pose = torch.eye(4, dtype=dtype).repeat(len(params), n_bones, 1, 1)
        index = {b: i for i, b in enumerate(model.bone_labels)}
        for i, p in enumerate(params):
            for bone, rot in p.rotations.items():
                pose[i, index[bone], :3, :3] = torch.as_tensor(rot, dtype=dtype)
        phen = torch.as_tensor(np.stack([p.phenotypes for p in params]), dtype=dtype)
        with torch.no_grad():
            out = model(pose_parameters=pose, phenotype_kwargs=phen)
            joints = self.regressor(out)
        verts, joints = out["vertices"].double().numpy(), joints.double().numpy()
        pelvis = joints[:, 11:13].mean(axis=1, keepdims=True)
        heading = np.stack([p.heading for p in params])
        verts = np.einsum("bij,bvj->bvi", heading, verts - pelvis)
        joints = np.einsum("bij,bvj->bvi", heading, joints - pelvis)
        return verts, joints


# ---- coarse topology -----------------------------------------------------------------------------------
def farthest_points(points: np.ndarray, n: int, start: int = 0) -> np.ndarray:
    """Indices of ``n`` farthest-point samples of ``points`` (N, 3), greedy from ``start``; every prefix of
    the result is itself a farthest-point sample."""
    points = np.asarray(points, dtype=np.float64)
    chosen = np.empty(n, dtype=np.int64)
    dist = np.full(len(points), np.inf)
    current = int(start)
    for i in range(n):
        chosen[i] = current
        dist = np.minimum(dist, ((points - points[current]) ** 2).sum(axis=1))
        current = int(dist.argmax())
    return chosen


@dataclass
class CoarseTopology:
    """A coarse Anny mesh and the fixed linear map back to the full one.

    ``index`` (C,) full-mesh vertices kept (farthest points of the rest body, nested: the first ``q`` are
    the farthest ``q``); ``faces`` (Fc, 3) coarse triangles (full faces whose corners fall in three
    different Voronoi cells of the kept vertices); :meth:`upsample_map` fits ``full ~ W @ coarse[:q]``.
    """

    index: np.ndarray
    faces: np.ndarray
    cell: np.ndarray  # (V,) the kept vertex (position in ``index``) nearest each full vertex

    @classmethod
    def build(cls, body: BodyModel, n: int = COARSE_VERTICES) -> CoarseTopology:
        """The first ``n`` vertices of the frozen index (:func:`frozen_coarse_index`), their Voronoi cells on the
        rest body and the coarse faces between them."""
        from scipy.spatial import cKDTree

        rest = body.template
        frozen = frozen_coarse_index(len(rest))
        if not 1 <= n <= len(frozen):
            raise ValueError(f"a coarse topology of {n} vertices: the frozen index has {len(frozen)}")
        index = frozen[:n]
        cell = cKDTree(rest[index]).query(rest)[1]
        c = cell[body.faces]
        keep = (c[:, 0] != c[:, 1]) & (c[:, 1] != c[:, 2]) & (c[:, 0] != c[:, 2])
        tri = c[keep]
        rolled = np.take_along_axis(tri, (tri.argmin(axis=1)[:, None] + np.arange(3)[None]) % 3, axis=1)
        faces = np.unique(rolled, axis=0)
        return cls(index.astype(np.int64), faces.astype(np.int64), cell.astype(np.int64))

    def edges(self, q: int | None = None) -> np.ndarray:
        """(E, 2) unique edges of the coarse faces among the first ``q`` kept vertices (all by default)."""
        e = np.concatenate([self.faces[:, [0, 1]], self.faces[:, [1, 2]], self.faces[:, [2, 0]]])
        e = np.unique(np.sort(e, axis=1), axis=0)
        if q is not None:
            e = e[(e < q).all(axis=1)]
        return e

    def upsample_map(self, full: np.ndarray, q: int, rest: np.ndarray, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
        """Fit ``full[b, v] ~ sum_j w[v, j] coarse[b, nbr[v, j]]`` over bodies ``full`` (B, V, 3).

        Each full vertex uses its ``k`` nearest kept vertices among the first ``q`` in the ``rest`` body; the
        weights (summing to 1) are the least-squares fit over the bodies, shrunk towards inverse-distance
        weights. Returns ``nbr`` (V, k) int64 and ``w`` (V, k) float32.
        """
        from scipy.spatial import cKDTree

        full = np.asarray(full, dtype=np.float64)
        kept = self.index[:q]
        d, nbr = cKDTree(rest[kept]).query(rest, k=k)
        idw = 1.0 / np.maximum(d, 1e-4)
        idw /= idw.sum(axis=1, keepdims=True)
        # w = idw + dw with sum(dw) = 0: dw = P a, P (k, k-1) spans the zero-sum vectors.
        p = np.vstack([np.eye(k - 1), -np.ones((1, k - 1))])
        nb = full[:, kept][:, nbr]  # (B, V, k, 3)
        resid = full - np.einsum("vk,bvkc->bvc", idw, nb)  # (B, V, 3)
        a_mat = np.einsum("bvkc,kj->vbcj", nb, p).reshape(len(rest), -1, k - 1)  # (V, B*3, k-1)
        rhs = resid.transpose(1, 0, 2).reshape(len(rest), -1)  # (V, B*3)
        lam = 1e-4
        ata = np.einsum("vni,vnj->vij", a_mat, a_mat) + lam * np.eye(k - 1)
        atb = np.einsum("vni,vn->vi", a_mat, rhs)
        alpha = np.linalg.solve(ata, atb[..., None])[..., 0]
        w = idw + alpha @ p.T
        return nbr.astype(np.int64), w.astype(np.float32)


def upsample(coarse, nbr, w):
    """``coarse`` (B, q, 3) (numpy or torch) -> full (B, V, 3) through a map of :meth:`CoarseTopology.upsample_map`."""
    return (coarse[:, nbr] * w[None, :, :, None]).sum(axis=2) if isinstance(coarse, np.ndarray) \
        else (coarse[:, nbr] * w[None, :, :, None]).sum(dim=2)


@functools.lru_cache(maxsize=1)
def _topology_file() -> dict:
    return json.loads(TOPOLOGY_FILE.read_text())


def frozen_coarse_index(n_full_vertices: int | None = None) -> np.ndarray:
    """The kept full-mesh vertices of the coarse topology, nested (``assets/body/coarse_topology.json``; the first
    256 are the bundled body model's). Frozen rather than recomputed: farthest points of Anny's rest body came out
    as another set on another install, and a dataset whose coarse labels are other vertices than a model's
    upsampling map expects trains that model towards the wrong points (docs/body.md)."""
    data = _topology_file()
    if n_full_vertices is not None and data["n_full_vertices"] != n_full_vertices:
        raise ValueError(f"{TOPOLOGY_FILE} is for an Anny mesh of {data['n_full_vertices']} vertices, this one has "
                         f"{n_full_vertices}")
    return np.asarray(data["index"], dtype=np.int64)


def coarse_index_digest(n: int = COARSE_VERTICES) -> str:
    """16 hex digits naming the first ``n`` vertices of the frozen coarse index (a dataset records it)."""
    import hashlib

    return hashlib.sha256(frozen_coarse_index()[:n].tobytes()).hexdigest()[:16]


@functools.lru_cache(maxsize=2)
def coarse_topology(n: int = COARSE_VERTICES) -> CoarseTopology:
    return CoarseTopology.build(BodyModel(), n)


# ---- camera, image -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BodyRenderSettings:
    image_size: int = 128
    occluded_share: float = 0.5  # share of images with occluders (None of them when 0)
    occlusion_range: tuple[float, float] = (0.1, 0.5)


def to_opencv(view_points: np.ndarray) -> np.ndarray:
    """PyTorch3D view coordinates (x left, y up, z forward) -> OpenCV camera frame (X right, Y down, Z fwd)."""
    return view_points * np.array([-1.0, -1.0, 1.0])


def project(points_cam: np.ndarray, camera: np.ndarray) -> np.ndarray:
    """OpenCV camera-frame points (..., 3) -> pixel coordinates (..., 2) through ``camera = f, cx, cy, size``."""
    f, cx, cy = camera[..., 0:1], camera[..., 1:2], camera[..., 2:3]
    z = np.maximum(points_cam[..., 2:3], 1e-6)
    return np.concatenate([f * points_cam[..., 0:1] / z + cx, f * points_cam[..., 1:2] / z + cy], axis=-1)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / float(size)
    c0, c1 = rng.uniform(0.0, 1.0, 3), rng.uniform(0.0, 1.0, 3)
    angle = rng.uniform(0, 2 * math.pi)
    t = np.clip(0.5 + (xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle), 0, 1)[..., None]
    img = c0 * (1 - t) + c1 * t
    for _ in range(rng.integers(2, 7)):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.35)
        blob = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (r * r)))[..., None]
        img = img * (1 - 0.8 * blob) + 0.8 * blob * rng.uniform(0, 1, 3)
    for _ in range(rng.integers(0, 4)):
        x0, y0 = rng.integers(0, size, 2)
        w, h = rng.integers(2, size // 2, 2)
        img[y0:y0 + h, x0:x0 + w] = rng.uniform(0, 1, 3) * 0.7 + 0.3 * img[y0:y0 + h, x0:x0 + w]
    return img


def _occluders(rng: np.random.Generator, mask: np.ndarray, lo: float, hi: float):
    """Rectangles (list of (y0, y1, x0, x1)) hiding a share in [lo, hi] of ``mask``'s pixels, and that share."""
    size = mask.shape[0]
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return [], 0.0
    y_lo, y_hi, x_lo, x_hi = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    target = rng.uniform(lo, hi)
    best, best_share = [], 0.0
    for _ in range(40):
        rects, cover = [], np.zeros_like(mask)
        for _ in range(int(rng.integers(1, 4))):
            h = int(rng.uniform(0.15, 0.7) * (y_hi - y_lo)) + 2
            w = int(rng.uniform(0.3, 1.2) * (x_hi - x_lo)) + 2
            y0 = int(rng.integers(y_lo - h // 2, max(y_hi - h // 2, y_lo - h // 2 + 1)))
            x0 = int(rng.integers(x_lo - w // 2, max(x_hi - w // 2, x_lo - w // 2 + 1)))
            r = (max(y0, 0), min(y0 + h, size), max(x0, 0), min(x0 + w, size))
            rects.append(r)
            cover[r[0]:r[1], r[2]:r[3]] = True
            share = float((cover & mask).sum()) / len(ys)
            if share >= target:
                break
        if lo <= share <= hi:
            return rects, share
        if abs(share - target) < abs(best_share - target):
            best, best_share = rects, share
    return best, best_share


def paint_occluders(rng: np.random.Generator, img: np.ndarray, rects) -> None:
    """Paint rectangles ``rects`` ((y0, y1, x0, x1) each) into ``img`` (S, S, 3 floats in [0, 1], in place), each
    plain, striped or noisy in random colours: the occluders of the dataset and of ``train_keypoints.py``'s
    pasted ones."""
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size]
    for y0, y1, x0, x1 in rects:
        base = rng.uniform(0, 1, 3)
        kind = rng.integers(0, 3)
        patch = np.broadcast_to(base, (y1 - y0, x1 - x0, 3)).copy()
        if kind == 1:  # stripes
            period = rng.integers(3, 12)
            stripe = ((xx[y0:y1, x0:x1] + yy[y0:y1, x0:x1]) // period) % 2 == 0
            patch[stripe] = rng.uniform(0, 1, 3)
        elif kind == 2:  # noise
            patch = np.clip(patch + rng.normal(0, 0.15, patch.shape), 0, 1)
        img[y0:y1, x0:x1] = patch


class BodyRenderer:
    """Renders :func:`sample_body` bodies into labelled images (see the module docstring)."""

    def __init__(self, settings: BodyRenderSettings | None = None, *, coarse: int = COARSE_VERTICES):
        self.settings = settings or BodyRenderSettings()
        self.body = BodyModel()
        self.topology = coarse_topology(coarse)
        self.faces = self.body.faces
        self.parts = self.body.vertex_parts

    def frame(self, seed: int) -> dict:
        """The posed body of ``seed`` in its camera's frame: full ``vertices`` (V, 3) and ``joints`` (17, 3)
        (OpenCV camera frame, metres), ``camera`` (f, cx, cy, size), and the rig (``eye``, ``R``, ``target``,
        world frame) that renders it."""
        return self.frames([seed])[0]

    def frames(self, seeds: Sequence[int]) -> list[dict]:
        """:meth:`frame` of several seeds, the bodies posed in one batch (same values up to float rounding)."""
        verts, joints = self.body.forward([sample_body(int(seed)) for seed in seeds])
        return [self._place(int(seed), v, j) for seed, v, j in zip(seeds, verts, joints, strict=True)]

    def _place(self, seed: int, verts: np.ndarray, joints: np.ndarray) -> dict:
        size = self.settings.image_size
        rng = np.random.default_rng([int(seed), 0xCA3])
        # look at the body's box centre (jittered) from elevation +-20 deg; the body fills 75-95 % of the frame
        lo, hi = verts.min(axis=0), verts.max(axis=0)
        centre, extent = (lo + hi) / 2, hi - lo
        elev = math.radians(rng.uniform(-20.0, 20.0))
        direction = np.array([0.0, -math.cos(elev), math.sin(elev)])  # camera on -y, looking at +y
        fill = rng.uniform(0.75, 0.95)
        half = max(extent[2], 0.6 * max(extent[0], extent[1])) / 2
        distance = half / (fill * math.tan(math.radians(FOV) / 2)) + extent[1] / 2
        target = centre + rng.uniform(-0.05, 0.05, 3) * extent[2]
        eye = target + distance * direction
        R = look_at_rotations((eye - target)[None], up=(0.0, 0.0, 1.0))[0]  # columns: left, up, forward
        f = size / 2 / math.tan(math.radians(FOV) / 2)
        return {"vertices": to_opencv((verts - eye) @ R), "joints": to_opencv((joints - eye) @ R),
                "camera": np.array([f, size / 2, size / 2, size]), "world_vertices": verts,
                "eye": eye, "R": R, "target": target}

    def example(self, seed: int, *, occluded: bool | None = None) -> dict:
        """The example of ``seed``; ``occluded`` forces occluders on (True) or off (False); None draws them
        with probability ``occluded_share``."""
        import torch

        from .cameras import ViewRig
        from .render import RenderSettings, rasterize

        s = self.settings
        size = s.image_size
        fr = self.frame(seed)
        verts, R, eye, target = fr["world_vertices"], fr["R"], fr["eye"], fr["target"]
        verts_cam, joints_cam, camera = fr["vertices"], fr["joints"], fr["camera"]
        rng = np.random.default_rng([int(seed), 0x1A6])

        rig = ViewRig(eyes=(eye - target)[None], R=R[None], fov=FOV)
        vt = torch.as_tensor(verts - target, dtype=torch.float32)
        ft = torch.as_tensor(self.faces)
        with torch.no_grad():
            pix, zbuf, bary, _ = rasterize(vt, ft, rig, RenderSettings(image_size=size, n_views=1, fov=FOV,
                                                                        normalize=False))
        pix, zbuf, bary = pix[0, ..., 0].numpy(), zbuf[0, ..., 0].numpy(), bary[0, ..., 0, :].numpy()
        mask = pix >= 0
        # shading: smooth normals, one random light from the camera's side, skin/shirt/trousers colours
        fn = np.cross(verts[self.faces[:, 1]] - verts[self.faces[:, 0]], verts[self.faces[:, 2]] - verts[self.faces[:, 0]])
        vn = np.zeros_like(verts)
        for k in range(3):
            np.add.at(vn, self.faces[:, k], fn)
        vn /= np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)
        skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.9, 1.1)
        shirt, trousers = rng.uniform(0.05, 0.95, 3), rng.uniform(0.05, 0.8, 3)
        albedo = np.tile(skin, (len(verts), 1))
        torso = self.parts == ANNY_PARTS.index("torso")
        legs = np.isin(self.parts, [ANNY_PARTS.index("leg_left"), ANNY_PARTS.index("leg_right")])
        albedo[torso] = shirt
        albedo[legs] = trousers
        light = -R[:, 2] + rng.uniform(-0.8, 0.8) * R[:, 0] + rng.uniform(-0.2, 0.9) * R[:, 1]
        light /= np.linalg.norm(light)
        fy, fx = np.nonzero(mask)
        corners = self.faces[pix[fy, fx]]
        b = bary[fy, fx][..., None]
        n = (vn[corners] * b).sum(axis=1)
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        n *= np.where((n @ R[:, 2]) > 0, -1.0, 1.0)[:, None]  # face the camera
        ambient = rng.uniform(0.25, 0.45)
        shade = ambient + (1 - ambient) * np.clip(n @ light, 0, None)
        img = _background(rng, size)
        img[fy, fx] = np.clip((albedo[corners] * b).sum(axis=1) * shade[:, None] * rng.uniform(0.8, 1.2), 0, 1)
        # occluders
        draw = rng.uniform() < s.occluded_share if occluded is None else bool(occluded)
        rects, share = _occluders(rng, mask, *s.occlusion_range) if draw else ([], 0.0)
        paint_occluders(rng, img, rects)
        img = np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1)
        # keypoints and visibility
        uv = project(joints_cam, camera)
        inside = (uv >= 0).all(axis=1) & (uv < size).all(axis=1)
        vis = np.where(inside, 2, 0)
        px = np.clip(uv.astype(np.int64), 0, size - 1)
        for j in np.nonzero(inside)[0]:
            y, x = px[j, 1], px[j, 0]
            covered = any(r[0] <= y < r[1] and r[2] <= x < r[3] for r in rects)
            behind = mask[y, x] and joints_cam[j, 2] > zbuf[y, x] + 0.12
            if covered or behind:
                vis[j] = 1
        coarse = verts_cam[self.topology.index]
        return {
            "image": np.round(img * 255).astype(np.uint8),
            "keypoints": np.concatenate([uv, vis[:, None]], axis=1).astype(np.float32),
            "joints": joints_cam.astype(np.float32),
            "vertices": coarse.astype(np.float32),
            "camera": camera.astype(np.float32),
            "occlusion": np.float32(share),
            "mask": mask,
            "face_map": pix,  # (S, S) index of the visible Anny face, -1 on the background
            "seed": np.int64(seed),
        }

    def pose_examples(self, seeds: Sequence[int]) -> list[dict]:
        """The labels of ``seeds`` without their images (the ``poses`` split; bodies posed in one batch):
        ``keypoints`` (visibility 2 in the image, 0 outside: no rendering, no occlusion test), ``joints``,
        ``vertices`` (coarse), ``camera``, ``seed`` -- :meth:`example`'s for the same seed (up to float rounding)
        but the visibility of hidden joints."""
        size = self.settings.image_size
        out = []
        for seed, fr in zip(seeds, self.frames(seeds), strict=True):
            uv = project(fr["joints"], fr["camera"])
            inside = (uv >= 0).all(axis=1) & (uv < size).all(axis=1)
            vis = np.where(inside, 2, 0)
            out.append({"keypoints": np.concatenate([uv, vis[:, None]], axis=1).astype(np.float32),
                        "joints": fr["joints"].astype(np.float32),
                        "vertices": fr["vertices"][self.topology.index].astype(np.float32),
                        "camera": fr["camera"].astype(np.float32), "seed": np.int64(seed)})
        return out

    def full_vertices(self, seeds: Sequence[int]) -> np.ndarray:
        """(B, V, 3) full-mesh vertices of the bodies of ``seeds``, pelvis-relative in their cameras' frames
        (the frame the model predicts in)."""
        out = []
        for seed in seeds:
            fr = self.frame(int(seed))
            out.append(root_relative(fr["vertices"], fr["joints"]))
        return np.stack(out)


def root_relative(points: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """``points`` minus the pelvis (mid-hip of COCO ``joints``), batched on the leading axes."""
    return points - joints[..., 11:13, :].mean(axis=-2, keepdims=True)


# ---- datasets -------------------------------------------------------------------------------------------
ARRAYS = ("image", "keypoints", "joints", "vertices", "camera", "occlusion", "seed")
POSE_ARRAYS = ("keypoints", "joints", "vertices", "camera", "seed")  # the ``poses`` split: no image
POSE_SEED_OFFSET = 1_000_000  # the ``poses`` split's first seed past the train range's start


def split_seed(split: str, i: int) -> int:
    """Seed of example ``i`` of ``split`` (``test_occluded`` shares ``test``'s; ``poses`` are train seeds from
    :data:`POSE_SEED_OFFSET` on); ``ValueError`` past the split."""
    base = {"test_occluded": "test", "poses": "train"}.get(split, split)
    if base not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; choose from train, val, test, test_occluded, poses")
    lo, hi = SPLIT_SEEDS[base]
    if split == "poses":
        lo += POSE_SEED_OFFSET
    if not 0 <= int(i) < hi - lo:
        raise ValueError(f"split {split!r} has {hi - lo} seeds; example {i} is past its end")
    return lo + int(i)


def _shard_done(path: Path, seeds: list[int]) -> bool:
    """Whether the shard at ``path`` exists and holds exactly the examples of ``seeds``."""
    if not path.exists():
        return False
    try:
        with np.load(path) as z:
            return np.array_equal(z["seed"], np.asarray(seeds))
    except (OSError, ValueError, KeyError, EOFError):
        return False  # unreadable: render it again


def write_body_dataset(out: str | Path, split: str, n: int, *, shard_size: int = 256,
                       settings: BodyRenderSettings | None = None, progress: bool = True) -> Path:
    """Write ``n`` examples of ``split`` as shards ``out/split/shard-KKKKK.npz`` (resumable).

    ``test`` has no occluders and ``test_occluded`` the same bodies and cameras with occluders on every
    image; ``train`` and ``val`` draw them on ``settings.occluded_share`` of the images; ``poses`` has labels and
    no images (:meth:`BodyRenderer.pose_examples`). A shard is kept when it
    holds exactly its seeds (so a run with a larger ``n`` completes a short last shard); the index lists the
    ``n`` examples' shards, which is what :func:`load_body_split` reads.
    """
    from tokenizers3d.io import atomic_path, atomic_write_text

    settings = settings or BodyRenderSettings()
    out = Path(out)
    folder = out / split
    split_seed(split, max(n - 1, 0))  # the split has room for n examples
    index_path = out / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    meta = json.loads(json.dumps({"settings": asdict(settings), "coarse_vertices": COARSE_VERTICES, "fov": FOV,
                                  "keypoints": list(COCO_KEYPOINTS), "coarse_topology": coarse_index_digest()}))
    if index.get("meta", meta) != meta:
        raise ValueError(f"{out}: was written with other settings ({index['meta']}); use another folder")
    old = index.get("splits", {}).get(split)
    if old is not None and old["shard_size"] != shard_size:
        raise ValueError(f"{out}: split {split!r} was written in shards of {old['shard_size']}, not {shard_size}")
    folder.mkdir(parents=True, exist_ok=True)
    n_shards = (n + shard_size - 1) // shard_size
    seeds = [[split_seed(split, i) for i in range(k * shard_size, min(n, (k + 1) * shard_size))]
             for k in range(n_shards)]
    todo = [k for k in range(n_shards) if not _shard_done(folder / f"shard-{k:05d}.npz", seeds[k])]
    from tqdm import tqdm

    bar = tqdm(total=n, initial=n - sum(len(seeds[k]) for k in todo), disable=not progress,
               desc=f"bodies {split}", unit="img")
    renderer = BodyRenderer(settings) if todo else None
    force = {"test": False, "test_occluded": True}.get(split)
    for k in todo:
        if split == "poses":
            rows = renderer.pose_examples(seeds[k])
            bar.update(len(rows))
        else:
            rows = []
            for seed in seeds[k]:
                rows.append(renderer.example(seed, occluded=force))
                bar.update(1)
        arrays = {name: np.stack([r[name] for r in rows]) for name in (POSE_ARRAYS if split == "poses" else ARRAYS)}
        with atomic_path(folder / f"shard-{k:05d}.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
    bar.close()
    index["meta"] = meta
    index.setdefault("splits", {})[split] = {"n": n, "shard_size": shard_size,
                                             "shards": [f"shard-{k:05d}.npz" for k in range(n_shards)]}
    atomic_write_text(index_path, json.dumps(index, indent=1))
    return folder


def load_body_split(root: str | Path, split: str) -> dict:
    """The examples of ``split`` that the dataset's ``index.json`` lists, concatenated: {name: array}
    (see :data:`ARRAYS`)."""
    root = Path(root)
    index_path = root / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    entry = index.get("splits", {}).get(split)
    if not entry or not entry["shards"]:
        raise FileNotFoundError(f"{root}: no {split} split (make one with scripts/make_body_dataset.py)")
    if index.get("meta", {}).get("coarse_topology") != coarse_index_digest():
        from tokenizers3d.errors import MeshInputError

        raise MeshInputError(root, "holds coarse vertices of another coarse body topology than "
                                   f"{TOPOLOGY_FILE.name} (made before it was frozen, or with another one); rebuild it "
                                   "with scripts/make_body_dataset.py into a new folder")
    parts = []
    for name in entry["shards"]:
        with np.load(root / split / name) as z:
            parts.append({k: z[k] for k in z.files})
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


__all__ = [
    "COCO_KEYPOINTS", "FOV", "COARSE_VERTICES", "HUMAN_INSTALL", "POSE_SEED_OFFSET", "BodyParams", "BodyModel", "BodyRenderer",
    "BodyRenderSettings", "CoarseTopology", "coarse_index_digest", "coarse_topology", "frozen_coarse_index", "farthest_points", "human_available", "load_body_split", "paint_occluders",
    "project", "root_relative", "sample_body", "split_seed", "to_opencv", "upsample", "write_body_dataset",
]
