"""Labelled renders for training a mask model: geometry maps in, part instances out.

For every shape of the part sets (:mod:`tokenizers3d.part_sets`) :func:`render_part_views` renders
random views with :class:`~renderers.render.MeshRenderer` and keeps, per view, what a mask model reads
(normal map, depth) and what it must predict (the part instance of every pixel, the true label of the face
``pix_to_face`` shows). :func:`write_part_views` writes a dataset of them, one compressed ``.npz`` per shape,
resumable, split into train / val / test by seed (:data:`tokenizers3d.part_sets.SPLIT_SEEDS`).

Layout::

    OUT/config.json                           the DatasetConfig (a resume must match it)
    OUT/index.json                            {"config": ..., "shapes": [{id, split, set, family, seed, path,
                                              n_faces, n_parts, part_names, views}, ...]}
    OUT/<split>/<set>/<family>-<seed>.npz     arrays below

Arrays of one shape (``V`` views of ``S x S`` pixels):

==================  ====================  ==========================================================
``normals``         (V, S, S, 3) float16  world-space unit normal of the visible face, facing the camera; 0 off
``depth``           (V, S, S) float16     distance along the optical axis (normalized frame); -1 off
``parts``           (V, S, S) int16       part instance of the visible face (``face_labels[pix_to_face]``); -1 off
``pix_to_face``     (V, S, S) int32       visible face; -1 off
``eyes``            (V, 3) float32        camera centres (normalized frame: bounding box centred, longest side 1)
``fov``             () float32            vertical field of view, degrees (cameras look at the origin, +z up)
``vertices``        (N, 3) float32        the mesh, in the normalized frame
``faces``           (F, 3) int32
``face_labels``     (F,) int16            part of every face, 0..P-1
==================  ====================  ==========================================================

Every file and the index are written atomically (:func:`tokenizers3d.io.atomic_path`); a shape listed in the
index whose file exists is skipped on resume, so an interrupted run goes on where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tokenizers3d.io import atomic_path, atomic_write_text
from tokenizers3d.mesh import Normalization
from tokenizers3d.part_sets import COMPOSITE_FAMILIES, LabelledMesh, make_shape, split_seeds

from .cameras import framing_distance, rig_from_eyes
from .render import MeshRenderer, RenderSettings

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetConfig:
    """What :func:`write_part_views` renders.

    Attributes
    ----------
    sets : tuple of str
        Part sets (``separate``, ``fused``, ``remeshed``, ``anny``).
    families : tuple of str
        Composite families, cycled over the shapes of a split (``anny`` ignores them).
    shapes : dict
        Shapes per set and split, e.g. ``{"train": 1000, "val": 50, "test": 50}``; shape ``i`` of a split has
        the split's ``i``-th seed (:func:`tokenizers3d.part_sets.split_seeds`) and family ``families[i % n]``.
    views : int
        Random views per shape (directions uniform on the sphere, at the distance that frames the mesh).
    image_size : int
    fov : float
    seed : int
        Seeds the view directions (with the set, split and shape seed).
    resolution, max_faces : int
        ``remeshed`` set (:func:`tokenizers3d.part_sets.remesh_marching_cubes`).
    """

    sets: tuple = ("separate", "fused", "remeshed")
    families: tuple = COMPOSITE_FAMILIES
    shapes: dict = field(default_factory=lambda: {"train": 1000, "val": 50, "test": 50})
    views: int = 8
    image_size: int = 256
    fov: float = 40.0
    seed: int = 0
    resolution: int = 96
    max_faces: int = 10_000

    def __post_init__(self):
        if set(self.shapes) - set(SPLITS):
            raise ValueError(f"shapes: unknown split(s) {sorted(set(self.shapes) - set(SPLITS))}; use {SPLITS}")
        if self.views < 1 or self.image_size < 8:
            raise ValueError(f"need at least 1 view and 8 px, got {self.views} views of {self.image_size} px")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sets"], d["families"] = list(self.sets), list(self.families)
        return d


def random_directions(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` unit vectors (n, 3) uniform on the sphere."""
    v = rng.normal(size=(n, 3))
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def render_part_views(shape: LabelledMesh, *, views: int, image_size: int, rng: np.random.Generator,
                      fov: float = 40.0, device: str = "cpu") -> dict[str, np.ndarray]:
    """The arrays of one shape (see the module docstring) from ``views`` random views."""
    renderer = MeshRenderer(RenderSettings(n_views=views, image_size=image_size, fov=fov), device=device)
    vertices = np.asarray(shape.mesh.vertices, dtype=np.float64)
    unit = Normalization.fit(vertices).apply(vertices)
    radius = max(float(np.linalg.norm(unit, axis=1).max()), 1e-3)
    eyes = random_directions(views, rng) * framing_distance(fov, radius)
    out = renderer.render(shape.mesh, rig=rig_from_eyes(eyes, fov=fov))
    p2f = out.pix_to_face  # (V, S, S)
    labels = np.asarray(shape.face_labels, dtype=np.int64)
    parts = np.where(p2f >= 0, labels[np.maximum(p2f, 0)], -1)
    return {
        "normals": out.normals.astype(np.float16), "depth": out.depth.astype(np.float16),
        "parts": parts.astype(np.int16), "pix_to_face": p2f.astype(np.int32), "eyes": eyes.astype(np.float32),
        "fov": np.float32(fov), "vertices": unit.astype(np.float32),
        "faces": np.asarray(shape.mesh.faces, dtype=np.int32), "face_labels": labels.astype(np.int16),
    }


def planned_shapes(config: DatasetConfig) -> list[tuple[str, str, str, int]]:
    """``(split, set, family, seed)`` of every shape the config asks for, in writing order."""
    plan = []
    for split in SPLITS:
        seeds = split_seeds(split, int(config.shapes.get(split, 0)))
        for set_name in config.sets:
            for i, seed in enumerate(seeds):
                family = "anny" if set_name == "anny" else config.families[i % len(config.families)]
                plan.append((split, set_name, family, seed))
    return plan


def write_part_views(out_dir: str | Path, config: DatasetConfig, *, device: str = "cpu", limit: int | None = None,
                     progress=None) -> dict:
    """Write (or resume) the dataset; returns the index.

    Parameters
    ----------
    out_dir : str or Path
    config : DatasetConfig
        Must equal the one in ``out_dir/config.json`` when that exists.
    limit : int, optional
        Render at most this many new shapes (then return; run again to go on).
    progress : callable, optional
        ``progress(done, total)`` after each shape.

    Raises
    ------
    ValueError
        ``out_dir`` holds a dataset made with another config.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_path, index_path = out / "config.json", out / "index.json"
    if config_path.exists():
        old = json.loads(config_path.read_text())
        if old != config.to_dict():
            raise ValueError(f"{out} holds a dataset made with another config ({config_path}); use a new folder")
    else:
        atomic_write_text(config_path, json.dumps(config.to_dict(), indent=1) + "\n")
    index = json.loads(index_path.read_text()) if index_path.exists() else {"config": config.to_dict(), "shapes": []}
    done = {row["id"]: row for row in index["shapes"] if (out / row["path"]).exists()}
    plan = planned_shapes(config)
    rendered = 0
    for k, (split, set_name, family, seed) in enumerate(plan):
        shape_id = f"{split}/{set_name}/{family}-{seed}"
        if shape_id in done:
            continue
        if limit is not None and rendered >= limit:
            break
        shape = make_shape(set_name, family, seed, resolution=config.resolution, max_faces=config.max_faces)
        set_index = ("separate", "fused", "remeshed", "anny").index(set_name)
        rng = np.random.default_rng([int(config.seed), set_index, int(seed)])
        arrays = render_part_views(shape, views=config.views, image_size=config.image_size, rng=rng,
                                   fov=config.fov, device=device)
        rel = f"{shape_id}.npz"
        with atomic_path(out / rel, suffix=".npz") as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        done[shape_id] = {"id": shape_id, "split": split, "set": set_name, "family": family, "seed": int(seed),
                          "path": rel, "n_faces": int(len(shape.mesh.faces)), "n_parts": shape.n_parts,
                          "part_names": list(shape.part_names), "views": config.views}
        index = {"config": config.to_dict(), "shapes": [done[i] for i in _ordered(done, plan)]}
        atomic_write_text(index_path, json.dumps(index, indent=1) + "\n")
        rendered += 1
        if progress is not None:
            progress(k + 1, len(plan))
    return {"config": config.to_dict(), "shapes": [done[i] for i in _ordered(done, plan)]}


def _ordered(done: dict, plan) -> list[str]:
    ids = [f"{split}/{s}/{fam}-{seed}" for split, s, fam, seed in plan]
    return [i for i in ids if i in done]
