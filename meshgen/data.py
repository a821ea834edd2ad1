"""Training examples for the generator: token windows plus the point cloud they are conditioned on.

Rows come from :class:`tokenizers3d.shards.TokenShardDataset` (Parquet shards of ``coords`` ids). For each
row the mesh is decoded from its own ids, ``n_points`` oriented points are sampled from its surface (so the
shards need not store point clouds), and one training window of at most ``window`` tokens, aligned to a
face boundary, is cut from the sequence (:func:`meshgen.generate.sample_training_window`).
"""

from __future__ import annotations

import functools
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
    """

    tokens: torch.Tensor
    start: torch.Tensor
    points: torch.Tensor
    n_faces: torch.Tensor

    def to(self, device) -> ExampleBatch:
        return ExampleBatch(*(t.to(device) for t in (self.tokens, self.start, self.points, self.n_faces)))


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
        if self.tokenizer.name != "coords":
            raise ValueError(f"the generator trains on 'coords' shards, {root} holds {self.tokenizer.name!r}")
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
        qm, _ = self.tokenizer.decode_quantized(ids, strict=True)
        cloud = sample_surface(qm.to_trimesh(), self.n_points, seed=int(rng.integers(2**31)))
        win = sample_training_window(ids, self.window, rng)
        n_faces = 0 if rng.random() < self.drop_face_count else int(row["n_faces"])
        return {
            "tokens": torch.as_tensor(win.tokens, dtype=torch.long),
            "start": int(win.start_pos),
            "points": torch.from_numpy(np.concatenate([cloud.points, cloud.normals], axis=1)),
            "n_faces": n_faces,
        }

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


def collate_examples(items: list[dict], pad_id: int) -> ExampleBatch:
    """Right-pad token windows with ``pad_id`` and stack the rest."""
    length = max(len(it["tokens"]) for it in items)
    tokens = torch.full((len(items), length), pad_id, dtype=torch.long)
    for i, it in enumerate(items):
        tokens[i, : len(it["tokens"])] = it["tokens"]
    return ExampleBatch(
        tokens=tokens,
        start=torch.tensor([it["start"] for it in items], dtype=torch.long),
        points=torch.stack([it["points"] for it in items]).float(),  # (B, N, 6)
        n_faces=torch.tensor([it["n_faces"] for it in items], dtype=torch.long),
    )
