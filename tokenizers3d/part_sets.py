"""Meshes with known parts, for evaluating (and training) part segmentation.

Four sets, each a list of :class:`LabelledMesh` (a mesh and the part of every face):

``separate``
    The procedural composites (:data:`COMPOSITE_FAMILIES` of :mod:`tokenizers3d.procedural`), built from
    separate closed parts: connectivity alone separates the parts.
``fused``
    The same composites with their parts united into one surface by a boolean union
    (:func:`fuse_parts`, ``manifold3d`` through ``trimesh.boolean.union``). The union keeps the parts'
    surfaces (cut where they meet), so every face lies on one part: it takes the label of the part whose
    surface is nearest to its centroid (:func:`label_by_nearest_part`; 0 up to round-off).
``remeshed``
    The fused composites remeshed by marching cubes (:func:`remesh_marching_cubes`): the signed distance
    of the fused mesh on a grid of ``resolution`` cells along the longest side, ``skimage``'s marching
    cubes, then Open3D's quadric decimation to at most ``max_faces`` faces. The parts' triangulation is
    gone; creases survive only as well as the grid resolves them. Faces are labelled by the nearest
    original part.
``anny``
    Anny human bodies (optional ``pip install 'meshgen[human]'``) with random phenotypes and a random pose,
    6 parts from the skinning weights (:data:`ANNY_PARTS`): every face takes the part with the largest
    summed weight over its corners' bones. One closed body surface (plus the eyes).

Seeds
-----
Shapes are drawn by seed; each seed belongs to one split (:data:`SPLIT_SEEDS`): ``test`` 0-999 (the
evaluation: ``scripts/eval_segmentation.py`` uses seeds 0 and 1 by default), ``val`` 1000-1999,
``train`` 10000 and above (the mask-model dataset, ``scripts/make_segmentation_dataset.py``). A
composite of seed ``s`` is ``tokenizers3d.procedural.generate(family, s)``; the generator training streams
(``meshgen.data.ProceduralStream``) draw their own hashed seeds and never segment anything.

Typical use::

    shapes = make_set("fused", seeds=[0, 1])                 # 10 shapes: 5 families x 2 seeds
    shape = make_shape("remeshed", "chair", 3)               # LabelledMesh
    shape.mesh, shape.face_labels, shape.part_names
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import trimesh

SET_NAMES = ("separate", "fused", "remeshed", "anny")
COMPOSITE_FAMILIES = ("table", "chair", "shelf", "lamp", "mug")
SPLIT_SEEDS: dict[str, tuple[int, int]] = {"test": (0, 1000), "val": (1000, 2000), "train": (10_000, 2**31)}
ANNY_PARTS = ("torso", "head", "arm_left", "arm_right", "leg_left", "leg_right")
ANNY_INSTALL = "the 'anny' set needs the Anny body model: pip install 'meshgen[human]' (or pip install anny)"


@dataclass
class LabelledMesh:
    """One shape with its parts.

    Attributes
    ----------
    name : str
        ``"<set>/<family>-<seed>"``.
    mesh : trimesh.Trimesh
    face_labels : (F,) int64
        Part of every face, ``0..P-1`` (parts that left no face on the surface are dropped).
    part_names : list of str
        ``part_names[label]``.
    set_name, family : str
    seed : int
    """

    name: str
    mesh: trimesh.Trimesh
    face_labels: np.ndarray
    part_names: list[str]
    set_name: str
    family: str
    seed: int
    params: dict = field(default_factory=dict)

    @property
    def n_parts(self) -> int:
        return len(self.part_names)


def split_of_seed(seed: int) -> str:
    """The split (``train``, ``val``, ``test``) seed ``seed`` belongs to; ``ValueError`` between the ranges."""
    for split, (lo, hi) in SPLIT_SEEDS.items():
        if lo <= int(seed) < hi:
            return split
    ranges = ", ".join(f"{k}: {a}-{b - 1}" for k, (a, b) in SPLIT_SEEDS.items())
    raise ValueError(f"seed {seed} is in no split ({ranges})")


def split_seeds(split: str, n: int, *, start: int = 0) -> list[int]:
    """Seeds ``start .. start + n - 1`` of ``split`` (counted from the split's first seed)."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLIT_SEEDS)}")
    lo, hi = SPLIT_SEEDS[split]
    if start < 0 or lo + start + n > hi:
        raise ValueError(f"split {split!r} has seeds {lo}-{hi - 1}; asked for {n} from offset {start}")
    return list(range(lo + start, lo + start + n))


# --------------------------------------------------------------------------------------------- geometry


def composite_parts(mesh: trimesh.Trimesh, face_labels: np.ndarray) -> list[trimesh.Trimesh]:
    """One closed mesh per label ``0..max`` (faces of that label, vertices re-indexed)."""
    labels = np.asarray(face_labels)
    out = []
    for k in range(int(labels.max()) + 1):
        faces = np.asarray(mesh.faces)[labels == k]
        used, inverse = np.unique(faces, return_inverse=True)
        out.append(trimesh.Trimesh(np.asarray(mesh.vertices)[used], inverse.reshape(-1, 3), process=False))
    return out


def fuse_parts(parts: Sequence[trimesh.Trimesh]) -> trimesh.Trimesh:
    """Boolean union of closed parts into one surface (``manifold3d``).

    Raises
    ------
    ImportError
        Without ``manifold3d`` (a dependency of this package; ``pip install manifold3d``).
    """
    try:
        import manifold3d  # noqa: F401  (trimesh's "manifold" engine)
    except ImportError as exc:
        raise ImportError("fusing parts needs manifold3d: pip install manifold3d") from exc
    fused = trimesh.boolean.union(list(parts), engine="manifold")
    return trimesh.Trimesh(np.asarray(fused.vertices), np.asarray(fused.faces), process=False)


def raycasting_scene(mesh: trimesh.Trimesh):
    """An Open3D ``RaycastingScene`` of the mesh's triangles (distances, signed distances, occupancy)."""
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(np.asarray(mesh.vertices, dtype=np.float32)),
                        o3d.core.Tensor(np.asarray(mesh.faces, dtype=np.uint32)))
    return scene


def label_by_nearest_part(mesh: trimesh.Trimesh, parts: Sequence[trimesh.Trimesh]) -> np.ndarray:
    """Label (F,) int64 of every face of ``mesh``: the part whose surface is nearest to the face's centroid.

    Ties (a face on the coincident surfaces of two parts) go to the lower part index.
    """
    import open3d as o3d

    tri = np.asarray(mesh.vertices, dtype=np.float64)[np.asarray(mesh.faces)]
    query = o3d.core.Tensor(tri.mean(axis=1).astype(np.float32))
    dist = np.stack([raycasting_scene(p).compute_distance(query).numpy() for p in parts], axis=1)  # (F, P)
    return np.argmin(dist, axis=1).astype(np.int64)


def remesh_marching_cubes(mesh: trimesh.Trimesh, *, resolution: int = 96, max_faces: int | None = 10_000
                          ) -> trimesh.Trimesh:
    """Marching-cubes remesh of a closed mesh (its zero level set), decimated to at most ``max_faces``.

    Parameters
    ----------
    mesh : trimesh.Trimesh
        Closed (the sign of the distance comes from ray parity).
    resolution : int
        Grid cells along the longest side of the bounding box (two cells of margin on every side).
    max_faces : int or None
        Quadric decimation (Open3D) target; ``None`` keeps the marching-cubes faces.

    Returns
    -------
    trimesh.Trimesh
        Outward-wound (positive volume).
    """
    import open3d as o3d

    try:
        from skimage.measure import marching_cubes
    except ImportError as exc:
        raise ImportError("remeshing needs scikit-image: pip install scikit-image") from exc
    lo, hi = np.asarray(mesh.bounds, dtype=np.float64)
    pitch = float((hi - lo).max()) / int(resolution)
    axes = [np.arange(lo[i] - 2 * pitch, hi[i] + 2.5 * pitch, pitch) for i in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).astype(np.float32)  # (X, Y, Z, 3)
    sdf = raycasting_scene(mesh).compute_signed_distance(o3d.core.Tensor(grid)).numpy()  # (X, Y, Z), < 0 inside
    vertices, faces, _, _ = marching_cubes(sdf, 0.0, spacing=(pitch, pitch, pitch))
    vertices = vertices + np.array([a[0] for a in axes])
    if max_faces is not None and len(faces) > max_faces:
        om = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(vertices), o3d.utility.Vector3iVector(faces))
        om = om.simplify_quadric_decimation(int(max_faces))
        om.remove_degenerate_triangles()
        om.remove_unreferenced_vertices()
        vertices, faces = np.asarray(om.vertices), np.asarray(om.triangles)
    out = trimesh.Trimesh(vertices, np.asarray(faces, dtype=np.int64), process=False)
    if out.volume < 0:
        out = trimesh.Trimesh(vertices, np.asarray(faces, dtype=np.int64)[:, [0, 2, 1]], process=False)
    return out


def _compact(labels: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Renumber labels to ``0..P-1`` in their old order, dropping parts with no face."""
    used, inverse = np.unique(labels, return_inverse=True)
    return inverse.astype(np.int64), [names[int(k)] for k in used]


# --------------------------------------------------------------------------------------------- sets


def make_shape(set_name: str, family: str, seed: int, *, resolution: int = 96,
               max_faces: int | None = 10_000) -> LabelledMesh:
    """One shape of set ``set_name`` (see the module docstring); ``family`` is ignored for ``anny``.

    ``resolution`` and ``max_faces`` apply to ``remeshed`` (:func:`remesh_marching_cubes`).
    """
    if set_name == "anny":
        return anny_body(seed)
    if set_name not in SET_NAMES:
        raise ValueError(f"unknown part set {set_name!r}; choose from {', '.join(SET_NAMES)}")
    from .procedural import generate

    pm = generate(family, int(seed))
    name = f"{set_name}/{family}-{seed}"
    if set_name == "separate":
        labels, names = _compact(np.asarray(pm.face_labels, dtype=np.int64), pm.part_names)
        return LabelledMesh(name, pm.mesh, labels, names, set_name, family, int(seed))
    parts = composite_parts(pm.mesh, pm.face_labels)
    mesh = fuse_parts(parts)
    params = {}
    if set_name == "remeshed":
        mesh = remesh_marching_cubes(mesh, resolution=resolution, max_faces=max_faces)
        params = {"resolution": int(resolution), "max_faces": max_faces}
    labels, names = _compact(label_by_nearest_part(mesh, parts), pm.part_names)
    return LabelledMesh(name, mesh, labels, names, set_name, family, int(seed), params)


def make_set(set_name: str, seeds: Sequence[int], families: Sequence[str] = COMPOSITE_FAMILIES, *,
             resolution: int = 96, max_faces: int | None = 10_000) -> list[LabelledMesh]:
    """Every ``(family, seed)`` shape of a set, families outer; ``anny``: one body per seed."""
    if set_name == "anny":
        return [anny_body(s) for s in seeds]
    return [make_shape(set_name, fam, s, resolution=resolution, max_faces=max_faces)
            for fam in families for s in seeds]


# --------------------------------------------------------------------------------------------- Anny


def anny_available() -> bool:
    """Whether the optional ``anny`` package can be imported."""
    import importlib.util

    return importlib.util.find_spec("anny") is not None


# Random pose: rotation about a random axis by up to this many degrees, per bone (both sides).
ANNY_POSE_LIMITS = {"upperarm01": 70.0, "lowerarm01": 80.0, "upperleg01": 45.0, "lowerleg01": 70.0,
                    "spine03": 20.0, "neck01": 20.0, "head": 20.0}


def anny_part_of_bone(label: str) -> str:
    """One of :data:`ANNY_PARTS` for an Anny bone label (``"upperarm01.L"`` -> ``"arm_left"``)."""
    base, _, side = label.partition(".")
    limb = {"L": "left", "R": "right"}.get(side)
    if base.startswith(("neck", "head", "eye", "jaw", "tongue")):
        return "head"
    if limb and base.startswith(("shoulder", "upperarm", "lowerarm", "wrist", "finger", "metacarpal")):
        return f"arm_{limb}"
    if limb and base.startswith(("upperleg", "lowerleg", "foot", "toe")):
        return f"leg_{limb}"
    return "torso"  # root, spine, pelvis, clavicle, breast, ...


@functools.lru_cache(maxsize=1)
def _anny_model():
    try:
        import anny
    except ImportError as exc:
        raise ImportError(ANNY_INSTALL) from exc
    return anny.Anny()  # the first build in a fresh environment takes about a minute; cached on disk after


def anny_body(seed: int) -> LabelledMesh:
    """An Anny body with phenotypes ``U(0.1, 0.9)`` and a random pose (:data:`ANNY_POSE_LIMITS`), 6 parts.

    Raises
    ------
    ImportError
        Without the ``anny`` package (message says how to install it).
    """
    import torch

    model = _anny_model()
    rng = np.random.default_rng([int(seed), 0xA4])
    dtype = model.template_vertices.dtype
    pose = {}
    for bone in model.bone_labels:
        limit = ANNY_POSE_LIMITS.get(bone.split(".")[0])
        if limit is None:
            continue
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        transform = np.eye(4)
        transform[:3, :3] = axis_angle(axis, np.radians(rng.uniform(0.0, limit)))
        pose[bone] = torch.as_tensor(transform, dtype=dtype)[None]  # (1, 4, 4)
    phenotypes = {k: float(rng.uniform(0.1, 0.9)) for k in model.phenotype_labels}
    with torch.no_grad():
        out = model(pose_parameters=pose, phenotype_kwargs=phenotypes)
    vertices = out["vertices"][0].double().numpy()  # (V, 3)
    faces = model.get_triangular_faces().numpy().astype(np.int64)  # (F, 3)
    group = np.array([ANNY_PARTS.index(anny_part_of_bone(b)) for b in model.bone_labels])
    weights = model.vertex_bone_weights.double().numpy()  # (V, K)
    bones = model.vertex_bone_indices.numpy().astype(np.int64)  # (V, K)
    per_vertex = np.zeros((len(vertices), len(ANNY_PARTS)))
    np.add.at(per_vertex, (np.repeat(np.arange(len(vertices)), bones.shape[1]), group[bones].reshape(-1)),
              weights.reshape(-1))
    labels = per_vertex[faces].sum(axis=1).argmax(axis=1)  # (F,)
    labels, names = _compact(labels, ANNY_PARTS)
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    return LabelledMesh(f"anny/anny-{seed}", mesh, labels, names, "anny", "anny", int(seed),
                        {"phenotypes": phenotypes})


def axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation matrix (3, 3) about unit ``axis`` by ``angle`` radians (Rodrigues)."""
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + np.sin(angle) * k + (1.0 - np.cos(angle)) * (k @ k)


__all__ = [
    "SET_NAMES", "COMPOSITE_FAMILIES", "SPLIT_SEEDS", "ANNY_PARTS", "LabelledMesh", "split_of_seed", "split_seeds",
    "composite_parts", "fuse_parts", "label_by_nearest_part", "remesh_marching_cubes", "make_shape", "make_set",
    "anny_available", "anny_body", "anny_part_of_bone", "axis_angle",
]
