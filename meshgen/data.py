"""Training examples for the generator: token windows plus the point cloud they are conditioned on.

Two sources give the same examples (:class:`ExampleBatch`):

* :class:`ProceduralStream` -- fresh procedural meshes made on the fly in the DataLoader workers (a
  few ms each), never repeated, with augmentation of the mesh (anisotropic scale, rotation about the up
  axis, axis permutation) and of the points (noise, holes); ``pool_size`` cycles over a fixed set
  instead (what a finite dataset gives, for ablations), and a face-count curriculum grows the budget
  with the training step.
* :class:`GeneratorExamples` -- rows of tokenized shards.

Shards: rows come from :class:`tokenizers3d.shards.TokenShardDataset` (Parquet shards of ``coords`` ids). For each
row the mesh is decoded from its own ids, ``n_points`` oriented points are sampled from its surface (so the
shards need not store point clouds), and one training window of at most ``window`` tokens, aligned to a
face boundary, is cut from the sequence (:func:`meshgen.generate.sample_training_window`).
"""

from __future__ import annotations

import functools
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset

from tokenizers3d.errors import MeshInputError
from tokenizers3d.sample import sample_surface
from tokenizers3d.shards import TokenShardDataset


@dataclass
class ExampleBatch:
    """A collated batch.

    Attributes
    ----------
    tokens : (B, T + 1) int64, PAD on the right; inputs are ``tokens[:, :-1]``, targets ``tokens[:, 1:]``
    start : (B,) int64, position of ``tokens[:, 0]`` in its full sequence
    points : (B, N, 6) float32, xyz and normals in the unit cube
    n_faces : (B,) int64, face count of each full mesh
    kinds : (B, T) uint8, per target token: bit 0 = a coordinate of a vertex not seen earlier in the
        sequence ("new vertex"), bit 1 = a coordinate of the mesh's first vertex (0 on PAD)
    drop : (B,) bool, rows trained without their points (classifier-free guidance)
    """

    tokens: torch.Tensor
    start: torch.Tensor
    points: torch.Tensor
    n_faces: torch.Tensor
    kinds: torch.Tensor | None = None
    drop: torch.Tensor | None = None

    def to(self, device) -> ExampleBatch:
        return ExampleBatch(*(None if t is None else t.to(device) for t in (
            self.tokens, self.start, self.points, self.n_faces, self.kinds, self.drop)))


NEW_VERTEX, FIRST_VERTEX = 1, 2


def token_kinds(ids: np.ndarray, *, vertex_tokens: int = 3, coords: bool = True) -> np.ndarray:
    """Kind flags of every position of a full sequence ``ids (T,)`` (BOS .. EOS).

    Returns ``(T,)`` uint8. ``coords``: ``NEW_VERTEX`` on the three tokens of a vertex whose (z, y, x) did not
    occur earlier in the sequence, ``FIRST_VERTEX`` on the first vertex's tokens; 0 on BOS / EOS. Codes
    (``coords=False``): ``FIRST_VERTEX`` on the ``vertex_tokens`` codes of the first face's first corner (the
    mesh's lowest vertex); "new vertex" has no meaning there (a corner's codes also depend on its face).
    """
    ids = np.asarray(ids, dtype=np.int64)
    out = np.zeros(len(ids), dtype=np.uint8)
    if not coords:
        out[1 : min(1 + vertex_tokens, max(len(ids) - 1, 1))] = FIRST_VERTEX
        return out
    n_vert = (len(ids) - 2) // 3
    if n_vert <= 0:
        return out
    triples = ids[1 : 1 + 3 * n_vert].reshape(n_vert, 3)  # (V, 3) z, y, x per vertex slot
    _, first, inverse = np.unique(triples, axis=0, return_index=True, return_inverse=True)
    new = first[inverse.reshape(-1)] == np.arange(n_vert)  # (V,)
    out[1 : 1 + 3 * n_vert] = np.repeat(new, 3).astype(np.uint8) * NEW_VERTEX
    out[1:4] |= FIRST_VERTEX
    return out


def _at_most_faces(row: dict, *, max_faces: int) -> bool:
    return row["n_faces"] <= max_faces


class GeneratorExamples(IterableDataset):
    """Endless (``repeat=True``) or one-pass stream of training examples from a shard directory.

    Parameters
    ----------
    root : str
        Shard directory written with the ``coords`` tokenizer.
    window : int
        Tokens per window (whole faces); sequences shorter than that are used whole.
    n_points : int
        Conditioning points per example.
    max_faces : int
        Rows with more faces are skipped.
    seed : int
    repeat : bool
        Loop over epochs forever (training) or stop after one (validation).
    drop_face_count : float
        Share of examples whose requested face count is replaced by 0 ("unknown"), so the model also learns
        to choose a face count itself (what ``meshgen generate`` does without ``--faces``).
    rank, world_size : int, optional
        DDP position (default from ``torch.distributed``).
    """

    def __init__(self, root: str, *, window: int, n_points: int = 2048, max_faces: int = 800, seed: int = 0,
                 repeat: bool = True, shuffle: bool = True, shuffle_buffer: int = 256, rank: int | None = None,
                 world_size: int | None = None, drop_face_count: float = 0.0):
        super().__init__()
        self.rows = TokenShardDataset(root, shuffle=shuffle, shuffle_buffer=shuffle_buffer, seed=seed, rank=rank,
                                      world_size=world_size, filter_fn=functools.partial(_at_most_faces, max_faces=max_faces))
        self.tokenizer = self.rows.tokenizer()
        if self.tokenizer.name not in ("coords", "vqvae"):
            raise ValueError(f"the generator trains on 'coords' or 'vqvae' shards, {root} holds {self.tokenizer.name!r}")
        self.face_tokens = getattr(self.tokenizer, "tokens_per_face", 9)
        self.window, self.n_points, self.seed, self.repeat = window, n_points, seed, repeat
        self.drop_face_count = drop_face_count

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id

    def example(self, row: dict, epoch: int) -> dict:
        """One example from one shard row (deterministic by row id, epoch and seed)."""
        from meshgen.generate import sample_training_window

        key = zlib.crc32(row["id"].encode())
        rng = np.random.default_rng([self.seed, epoch, key])
        ids = np.asarray(row["ids"], dtype=np.int64)
        qm, _ = self.tokenizer.decode_quantized(ids, strict=True)  # vqvae: the decoder's (lossy) reconstruction
        cloud = sample_surface(qm.to_trimesh(), self.n_points, seed=int(rng.integers(2**31)))
        win = sample_training_window(ids, self.window, rng, face_tokens=self.face_tokens)
        n_faces = 0 if rng.random() < self.drop_face_count else int(row["n_faces"])
        return _example(ids, win, cloud.points, cloud.normals, n_faces, drop=False, tokenizer=self.tokenizer)

    def __iter__(self) -> Iterator[dict]:
        epoch = 0
        while True:
            self.rows.set_epoch(epoch)
            n = 0
            for row in self.rows:
                n += 1
                yield self.example(row, epoch)
            if n == 0:
                raise MeshInputError(self.rows.root, "no row for this consumer passes the face-count filter "
                                                     "(too few rows for the ranks x workers, or max_faces too low)")
            epoch += 1
            if not self.repeat:
                return


def _example(ids: np.ndarray, win, points: np.ndarray, normals: np.ndarray, n_faces: int, *, drop: bool,
             tokenizer) -> dict:
    coords = tokenizer.name == "coords"
    kinds = token_kinds(ids, coords=coords, vertex_tokens=3 if coords else tokenizer.depth)
    kinds = kinds[win.start_pos + 1 : win.start_pos + len(win.tokens)]  # aligned with the targets
    return {
        "tokens": torch.as_tensor(win.tokens, dtype=torch.long),
        "start": int(win.start_pos),
        "points": torch.from_numpy(np.concatenate([points, normals], axis=1).astype(np.float32)),
        "n_faces": int(n_faces),
        "kinds": torch.from_numpy(kinds),
        "drop": bool(drop),
    }


def collate_examples(items: list[dict], pad_id: int) -> ExampleBatch:
    """Right-pad token windows with ``pad_id`` (kinds with 0) and stack the rest."""
    length = max(len(it["tokens"]) for it in items)
    tokens = torch.full((len(items), length), pad_id, dtype=torch.long)
    kinds = torch.zeros((len(items), length - 1), dtype=torch.uint8)
    for i, it in enumerate(items):
        tokens[i, : len(it["tokens"])] = it["tokens"]
        kinds[i, : len(it["kinds"])] = it["kinds"]
    return ExampleBatch(
        tokens=tokens,
        start=torch.tensor([it["start"] for it in items], dtype=torch.long),
        points=torch.stack([it["points"] for it in items]).float(),  # (B, N, 6)
        n_faces=torch.tensor([it["n_faces"] for it in items], dtype=torch.long),
        kinds=kinds,
        drop=torch.tensor([it.get("drop", False) for it in items], dtype=torch.bool),
    )


# ---- fresh procedural data ------------------------------------------------------------------------
@dataclass(frozen=True)
class AugmentConfig:
    """Random changes to each streamed mesh (before normalization) and to its point cloud.

    Attributes
    ----------
    scale : float
        Each axis is scaled by ``exp(U(-scale, scale))``.
    rotate90 : float
        Probability of a rotation by a random multiple of 90 degrees about the up axis (z), which keeps
        axis-aligned faces axis-aligned.
    rotate_any : float
        Probability of a rotation by a uniform angle about z (applied instead of ``rotate90``).
    permute_axes : float
        Probability of a cyclic axis permutation (another axis becomes up), for inputs that are y-up.
    noise : float
        Largest standard deviation of Gaussian noise added to the points (unit-cube units); each
        example draws ``U(0, noise)``, with probability ``noise_p``.
    hole_p : float
        Probability of removing the points within a random ball (radius 0.1-0.25) -- a hole in a scan --
        and refilling the cloud to its size by repeating the remaining points.
    """

    scale: float = 0.3
    rotate90: float = 0.5
    rotate_any: float = 0.1
    permute_axes: float = 0.1
    noise: float = 0.006
    noise_p: float = 0.5
    hole_p: float = 0.15

    def mesh_matrix(self, rng: np.random.Generator) -> np.ndarray:
        """A random (3, 3) linear map for the mesh vertices (row vectors: ``v @ M.T``)."""
        m = np.diag(np.exp(rng.uniform(-self.scale, self.scale, 3)))
        u = rng.random()
        if u < self.rotate_any:
            angle = rng.uniform(0, 2 * np.pi)
        elif u < self.rotate_any + self.rotate90:
            angle = int(rng.integers(1, 4)) * np.pi / 2
        else:
            angle = 0.0
        c, s = np.cos(angle), np.sin(angle)
        rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        rot[np.abs(rot) < 1e-12] = 0.0
        m = rot @ m
        if rng.random() < self.permute_axes:
            perm = np.roll(np.eye(3), int(rng.integers(1, 3)), axis=0)  # cyclic: a rotation
            m = perm @ m
        return m

    def points(self, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Noisy / holed copy of ``points (N, 3)``; returns indices-consistent ``(N, 3)`` and the kept index."""
        n = len(points)
        keep = np.arange(n)
        if rng.random() < self.hole_p:
            centre = points[rng.integers(n)]
            radius = rng.uniform(0.1, 0.25)
            inside = np.linalg.norm(points - centre, axis=1) < radius
            if (~inside).sum() >= n // 2:
                rest = np.flatnonzero(~inside)
                keep = np.concatenate([rest, rng.choice(rest, n - len(rest))])
        out = points[keep]
        if rng.random() < self.noise_p:
            out = out + rng.normal(0.0, rng.uniform(0, self.noise), out.shape)
        return out, keep


@dataclass(frozen=True)
class _BitsAndTokenizer:
    """The two fields of a generator config that say what its tokens are (for :func:`sequence_tokenizer`)."""

    bits: int
    tokenizer: dict | None


def faces_budget(curriculum, step: int, max_faces: int) -> int:
    """Face budget at ``step`` from a curriculum ``[[step, max_faces], ...]`` (sorted; last entry <= step wins)."""
    budget = max_faces
    for s, f in curriculum or ():
        if step >= s:
            budget = min(int(f), max_faces)
    return budget


class ProceduralStream(IterableDataset):
    """Endless stream of fresh procedural meshes as training examples (made in the DataLoader workers).

    Example ``i`` of consumer ``c`` (DDP rank x DataLoader worker) is object ``index = i * n_consumers + c``,
    drawn as :func:`tokenizers3d.procedural.generate` of a family and seed derived from ``(seed, index)``;
    so a run is reproducible for a fixed number of consumers, and ``start_index`` resumes the stream.

    Parameters
    ----------
    bits, window, n_points : as for :class:`GeneratorExamples`.
    max_faces : int
        Meshes with more faces are re-drawn (16 seeds per family, then another family).
    seed : int
        Stream seed. Keep it different from the seed of any held-out procedural dataset (``meshgen
        dataset`` uses 0 by default); objects are then disjoint with probability ~1 - 2^-32 each.
    augment : AugmentConfig or None
    pool_size : int
        0: every object is new. ``> 0``: object ``index % pool_size`` -- a fixed finite dataset.
    curriculum : list of (step, max_faces)
        Face budget by training step (estimated from ``start_step``, ``batch_size`` and examples made).
    drop_face_count : float
        Share of examples whose face count is given as unknown (0).
    drop_points : float
        Share of examples trained without their points (classifier-free guidance).
    families : list of str or None
        Families drawn uniformly (a name listed twice is drawn twice as often); default
        :data:`tokenizers3d.procedural.DEFAULT_FAMILIES`.
    tokenizer : dict or None
        A generator config's ``tokenizer`` entry: ``None`` for ``coords`` at ``bits``, or a ``vqvae`` tokenizer's
        config (:func:`meshgen.modeling.vqvae_tokenizer_config`), whose face VQ-VAE then encodes every mesh (in
        the loader workers).
    """

    def __init__(self, *, bits: int, window: int, n_points: int, max_faces: int, seed: int = 1,
                 augment: AugmentConfig | None = None, pool_size: int = 0, curriculum=None,
                 drop_face_count: float = 0.0, drop_points: float = 0.0, families=None,
                 start_step: int = 0, batch_size: int = 1, rank: int | None = None, world_size: int | None = None,
                 tokenizer: dict | None = None):
        super().__init__()
        from meshgen.modeling import sequence_tokenizer, token_layout

        spec = _BitsAndTokenizer(bits, tokenizer)
        self.tokenizer = sequence_tokenizer(spec)
        if self.tokenizer.bits != bits:
            raise ValueError(f"the {self.tokenizer.name} tokenizer works at {self.tokenizer.bits} bits, not {bits}")
        self.face_tokens = token_layout(spec).face_tokens
        self.bits, self.window, self.n_points, self.max_faces = bits, window, n_points, max_faces
        self.seed, self.augment, self.pool_size = seed, augment, pool_size
        self.curriculum = [tuple(c) for c in (curriculum or ())]
        self.drop_face_count, self.drop_points = drop_face_count, drop_points
        self.families = None if families is None else tuple(families)
        self.start_step, self.batch_size = start_step, batch_size
        if rank is None or world_size is None:
            import torch.distributed as dist

            on = dist.is_available() and dist.is_initialized()
            rank, world_size = (dist.get_rank(), dist.get_world_size()) if on else (0, 1)
        self.rank, self.world_size = rank, world_size

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id

    def mesh(self, index: int, budget: int):
        """(family, trimesh) of object ``index`` within ``budget`` faces, before augmentation."""
        from tokenizers3d.procedural import DEFAULT_FAMILIES, FAMILIES, generate, object_seed

        names = sorted(self.families or DEFAULT_FAMILIES)
        names = [n for n in names if FAMILIES[n].face_range[0] <= budget] or names
        rng = np.random.default_rng([self.seed, index])
        for attempt in range(16 * len(names)):
            if attempt % 16 == 0:
                family = names[int(rng.integers(len(names)))]
            try:
                pm = generate(family, object_seed(self.seed, index, attempt))
            except RuntimeError as exc:  # a generator bug on one seed must not stop a training run
                warnings.warn(f"object {index}: {exc}; drawing another", RuntimeWarning, stacklevel=2)
                continue
            if pm.n_faces <= budget:
                return family, pm.mesh
        raise RuntimeError(f"no procedural mesh within {budget} faces for object {index}")

    def example(self, index: int, budget: int, *, from_start: bool = False) -> dict:
        """The training example of object ``index`` (deterministic); ``from_start``: the window at BOS."""
        import trimesh

        from meshgen.generate import sample_training_window
        from tokenizers3d.mesh import canonicalize, normalize, quantize

        obj = index % self.pool_size if self.pool_size else index
        family, mesh = self.mesh(obj, budget)
        rng = np.random.default_rng([self.seed, index, 1])
        v = np.asarray(mesh.vertices, dtype=np.float64)
        faces = np.asarray(mesh.faces)
        if self.augment is not None:
            m = self.augment.mesh_matrix(rng)
            v = v @ m.T
            if np.linalg.det(m) < 0:
                faces = faces[:, ::-1]
        unit, _ = normalize(canonicalize(trimesh.Trimesh(v, faces, process=False)))
        qm = quantize(unit, self.bits)
        ids = self.tokenizer.encode_quantized(qm)
        cloud = sample_surface(unit, self.n_points, seed=int(rng.integers(2**31)))
        points, normals = cloud.points, cloud.normals
        if self.augment is not None:
            points, keep = self.augment.points(points, rng)
            normals = normals[keep]
        win = sample_training_window(ids, self.window, rng, face_tokens=self.face_tokens)
        if from_start:
            win = type(win)(ids[: self.window + 1], 0)
        n_faces = 0 if rng.random() < self.drop_face_count else int(qm.n_faces)
        return _example(ids, win, points, normals, n_faces, drop=bool(rng.random() < self.drop_points),
                        tokenizer=self.tokenizer)

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        consumers = workers * self.world_size
        me = self.rank * workers + worker
        start = self.start_step * self.batch_size * self.world_size  # examples made before this run
        i = 0
        while True:
            index = start + i * consumers + me
            step = index // max(self.batch_size * self.world_size, 1)
            yield self.example(index, faces_budget(self.curriculum, step, self.max_faces))
            i += 1

    def take(self, n: int) -> list[dict]:
        """The first ``n`` examples of a single consumer (a fixed validation set): even ones start at BOS
        (so the first vertex is scored), odd ones are random windows."""
        return [self.example(i, self.max_faces, from_start=i % 2 == 0) for i in range(n)]
