"""The body job behind ``meshgen body``: one image of a person -> an Anny body mesh and an overlay picture.

The image is padded to a square around its centre (edge colour) and scaled to the model's input size, so a
photo framed on one person, as person detectors crop them, is what the model expects (it was trained on
128 px crops of one whole body). The model (:class:`meshgen.hmr.HMRModel`; default the bundled
``assets/checkpoints/body-hmr``) predicts the coarse body, which its fixed map upsamples to Anny's full
mesh (13,718 vertices, 27,420 triangles, its faces saved with the weights: inference does not need the
``anny`` package). Outputs, written atomically together:

* the mesh (``.obj``, ``.ply``, ``.glb``...), pelvis at the origin, metres, ``x`` to the image right, ``y``
  up, ``z`` towards the viewer;
* ``<stem>.png`` beside it (unless ``preview=False``): the image with the mesh overlaid through the
  predicted camera, and the predicted 2D keypoints;
* ``<stem>.json``: 3D joints (COCO-17, same frame), 2D keypoints in the image's pixels, visibility
  probabilities, the weak-perspective camera, the pose token ids.

:func:`recover_folder` runs a folder of images: outputs go to ``out_dir/<image stem>.<ext>`` (``<stem>_<type>``
when two images differ only by their type, ``a.png`` and ``a.jpg``), images already
done are skipped (a killed run resumes), an unreadable image is recorded in ``failures.jsonl`` and the run
goes on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenizers3d.errors import MeshgenError, MeshInputError

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "checkpoints" / "body-hmr"
MESH_SUFFIXES = (".obj", ".ply", ".glb", ".stl", ".off")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def load_image(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file, upright by its EXIF orientation; 16-bit and float images scaled to
    8 bits, transparency composited over mid grey. One :class:`MeshInputError` for anything unreadable."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise MeshInputError(path, "file does not exist")
    if path.is_dir():
        raise MeshInputError(path, "is a directory, not an image")
    if path.stat().st_size == 0:
        raise MeshInputError(path, "file is empty")
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                a = np.asarray(im, dtype=np.float64)
                hi = 65535.0 if im.mode != "F" and a.max() > 255 else (a.max() if im.mode == "F" else 255.0)
                a = np.clip(a / max(hi, 1e-12) * 255.0, 0, 255).astype(np.uint8)
                im = Image.fromarray(a)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                grey = Image.new("RGBA", rgba.size, (128, 128, 128, 255))
                im = Image.alpha_composite(grey, rgba)
            rgb = np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError as exc:
        raise MeshInputError(path, f"image is too large to read safely ({exc})") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise MeshInputError(path, f"is not a readable image ({type(exc).__name__})") from exc
    if min(rgb.shape[:2]) < 8:
        raise MeshInputError(path, f"image is too small ({rgb.shape[1]} x {rgb.shape[0]} px)")
    return rgb


def square_crop(image: np.ndarray, size: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Scale ``image`` so its longer side is ``size``, pad it to a square (edge colour); returns the crop, the
    scale from crop pixels to image pixels and the (x, y) offset of the image inside the padded square, in image
    pixels."""
    from PIL import Image

    h, w = image.shape[:2]
    side = max(h, w)
    nh, nw = max(1, round(h * size / side)), max(1, round(w * size / side))
    small = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    py, px = (size - nh) // 2, (size - nw) // 2
    crop = np.pad(small, ((py, size - nh - py), (px, size - nw - px), (0, 0)), mode="edge")
    scale = side / size
    return crop, scale, (round(px * scale), round(py * scale))


def load_body_model(checkpoint: str | Path | None = None):
    """The HMR model of ``checkpoint`` (default the bundled one), in eval mode; a clear error when absent."""
    from meshgen.hmr import HMRModel

    path = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
    if checkpoint is None and not (path / "config.json").exists():
        raise MeshInputError(path, "the bundled body model is not installed; pass --checkpoint DIR (a model "
                                   "directory from scripts/train_hmr.py)")
    model = HMRModel.from_pretrained(path)
    if not bool((model.up_weight.abs().sum(dim=1) > 0).all()) or len(model.full_faces) == 0:
        raise MeshInputError(path, "holds a body model without its mesh topology (an untrained model?)")
    return model.eval()


@dataclass
class BodyResult:
    vertices: np.ndarray  # (V, 3) output frame (x right, y up, z to the viewer), metres
    faces: np.ndarray  # (F, 3)
    joints: np.ndarray  # (17, 3) same frame
    keypoints: np.ndarray  # (17, 2) image pixels
    visibility: np.ndarray  # (17,) probabilities
    camera: np.ndarray  # (3,) weak perspective in the crop frame
    pose_ids: list | None
    overlay: np.ndarray | None = None


def recover_body(model, image: np.ndarray, *, overlay: bool = True) -> BodyResult:
    """Run ``model`` on one RGB image (H, W, 3) uint8."""
    import torch

    size = model.config.image_size
    crop, scale, (ox, oy) = square_crop(image, size)
    x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        out = model(x)
        full = model.full_vertices(out.vertices)[0].numpy().astype(np.float64)
    flip = np.array([1.0, -1.0, -1.0])  # OpenCV camera axes -> x right, y up, z towards the viewer
    # the 2D pose the model read: its separate estimator's when it carries one, else its keypoint head's
    kp2d, seen = ((out.estimate.keypoints, out.estimate.seen) if out.estimate is not None
                  else (out.keypoints, torch.sigmoid(out.visibility)))
    kp = (kp2d[0].numpy() + 1.0) * (size / 2.0) * scale - np.array([ox, oy])
    result = BodyResult(full * flip, model.full_faces.numpy(), out.joints[0].numpy() * flip, kp,
                        seen[0].numpy(), out.camera[0].numpy(),
                        None if out.pose_ids is None else out.pose_ids[0].tolist())
    if overlay:
        result.overlay = overlay_image(image, full, result.faces, out.camera[0].numpy(), scale, (ox, oy), kp)
    return result


def overlay_image(image: np.ndarray, vertices_cam: np.ndarray, faces: np.ndarray, camera: np.ndarray,
                  scale: float, offset: tuple[int, int], keypoints: np.ndarray | None = None,
                  max_side: int = 512, colour=(120.0, 170.0, 235.0)) -> np.ndarray:
    """``image`` with the mesh (OpenCV camera axes, pelvis-relative) drawn through the weak-perspective
    ``camera`` (crop frame) at 60 % opacity, and ``keypoints`` (image pixels) as dots; the picture's longer
    side is ``max_side`` pixels."""
    import torch

    from renderers.render import rasterize_ndc

    h, w = image.shape[:2]
    side = max(h, w)
    px = int(max_side)
    s, tx, ty = (float(v) for v in camera)
    xy = s * vertices_cam[:, :2] + np.array([tx, ty])  # crop frame = padded square frame, [-1, 1]
    depth = vertices_cam[:, 2] - vertices_cam[:, 2].min() + 1.0
    ndc = np.stack([-xy[:, 0], -xy[:, 1], depth], axis=1)
    pix = rasterize_ndc(torch.as_tensor(ndc[faces], dtype=torch.float64), px)
    fn = np.cross(vertices_cam[faces[:, 1]] - vertices_cam[faces[:, 0]], vertices_cam[faces[:, 2]] - vertices_cam[faces[:, 0]])
    fn /= np.maximum(np.linalg.norm(fn, axis=1, keepdims=True), 1e-12)
    shade = 0.35 + 0.65 * np.abs(fn[:, 2])
    from PIL import Image

    ox, oy = offset
    f = px / side
    nh, nw = max(1, round(h * f)), max(1, round(w * f))
    small = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    py0, px0 = min(round(oy * f), px - nh), min(round(ox * f), px - nw)
    canvas = np.pad(small, ((py0, px - nh - py0), (px0, px - nw - px0), (0, 0)), mode="edge").astype(np.float64)
    fg = pix >= 0
    colour = np.asarray(colour, dtype=np.float64)
    canvas[fg] = 0.4 * canvas[fg] + 0.6 * shade[pix[fg]][:, None] * colour
    if keypoints is not None:
        k = (np.asarray(keypoints) + np.array([ox, oy])) * (px / side)
        for u, v in k:
            y0, x0 = int(round(v)), int(round(u))
            if 0 <= y0 < px and 0 <= x0 < px:
                canvas[max(y0 - 1, 0):y0 + 2, max(x0 - 1, 0):x0 + 2] = (255.0, 40.0, 40.0)
    return np.clip(canvas[py0:py0 + nh, px0:px0 + nw], 0, 255).astype(np.uint8)  # the padding cut off


def fit_weak_perspective(points: np.ndarray, crop_xy: np.ndarray) -> np.ndarray:
    """Least-squares weak-perspective camera ``(s, tx, ty)`` with ``crop_xy ~ s * points[:, :2] + t`` (OpenCV
    camera axes, crop frame)."""
    p = np.asarray(points, dtype=np.float64)
    a = np.concatenate([p[:, :2].reshape(-1, 1), np.tile(np.eye(2), (len(p), 1))], axis=1)
    return np.linalg.lstsq(a, np.asarray(crop_xy, dtype=np.float64).reshape(-1), rcond=None)[0]


def recover_body_file(image_path: str | Path, out_path: str | Path, *, model=None, checkpoint=None,
                      preview: bool = True) -> BodyResult:
    """Read ``image_path``, write the mesh to ``out_path`` and ``<stem>.json`` (+ ``<stem>.png``) atomically."""
    from renderers.preview import write_png
    from tokenizers3d.io import atomic_paths, check_output_path, refuse_overwrite, save_mesh

    out_path = Path(out_path)
    check_output_path(out_path)
    if out_path.suffix.lower() not in MESH_SUFFIXES:
        raise MeshInputError(out_path, f"output must be one of {', '.join(MESH_SUFFIXES)}")
    targets = [out_path, out_path.with_suffix(".json")] + ([out_path.with_suffix(".png")] if preview else [])
    for path in targets:  # e.g. `meshgen body p.png -o p.obj` would overwrite the image with the overlay
        refuse_overwrite(path, image_path)
        check_output_path(path)
    image = load_image(image_path)
    model = model if model is not None else load_body_model(checkpoint)
    res = recover_body(model, image, overlay=preview)
    import trimesh

    mesh = trimesh.Trimesh(res.vertices, res.faces, process=False)
    meta = {"image": str(image_path), "joints": res.joints.round(5).tolist(),
            "keypoints": res.keypoints.round(2).tolist(), "visibility": res.visibility.round(4).tolist(),
            "camera": res.camera.round(5).tolist(), "pose_tokens": res.pose_ids,
            "frame": "pelvis at the origin, metres; x image right, y up, z towards the viewer",
            "camera_model": "weak perspective in the square crop's frame [-1, 1] (x right, y down): "
                            "crop_x = s * x + tx, crop_y = -s * y + ty for a point (x, y, z) of the mesh"}
    with atomic_paths(*targets, suffixes=[out_path.suffix, ".json", ".png"][:len(targets)]) as tmps:
        save_mesh(tmps[0], mesh)
        Path(tmps[1]).write_text(json.dumps(meta, indent=1) + "\n")
        if preview:
            write_png(tmps[2], res.overlay)
    return res


def recover_folder(input_dir: str | Path, out_dir: str | Path, *, checkpoint=None, suffix: str = ".obj",
                   preview: bool = True, progress: bool = True) -> dict:
    """Every image under ``input_dir`` -> ``out_dir/<relative path>.<suffix>``; resumable, bad images recorded."""
    from tqdm import tqdm

    input_dir, out_dir = Path(input_dir), Path(out_dir)
    if not input_dir.is_dir():
        raise MeshInputError(input_dir, "is not a directory")
    images = sorted(p for p in input_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    out_dir.mkdir(parents=True, exist_ok=True)
    failures_path = out_dir / "failures.jsonl"
    model = load_body_model(checkpoint)
    done = skipped = 0
    failed = []
    stems: dict = {}
    for path in images:
        stems.setdefault(path.relative_to(input_dir).with_suffix(""), []).append(path)
    for path in tqdm(images, disable=not progress, desc="bodies", unit="img"):
        rel = path.relative_to(input_dir)
        stem = rel.with_suffix("")
        if len(stems[stem]) > 1:  # a.png and a.jpg: a_png.obj and a_jpg.obj
            stem = stem.with_name(f"{stem.name}_{path.suffix[1:].lower()}")
        target = out_dir / f"{stem}{suffix}"
        if target.exists() and target.with_suffix(".json").exists():
            skipped += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            recover_body_file(path, target, model=model, preview=preview)
            done += 1
        except MeshgenError as exc:  # a bad image or an output that cannot be written: record it, go on
            failed.append(str(rel))
            with open(failures_path, "a") as fh:
                fh.write(json.dumps({"image": str(rel), "error": str(exc)}) + "\n")
    return {"images": len(images), "done": done, "skipped": skipped, "failed": len(failed),
            "failures": str(failures_path) if failed else None, "out": str(out_dir)}


__all__ = ["BodyResult", "DEFAULT_CHECKPOINT", "load_body_model", "load_image", "overlay_image", "fit_weak_perspective", "recover_body",
           "recover_body_file", "recover_folder", "square_crop"]
