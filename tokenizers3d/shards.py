"""Reading the Parquet token shards written by :func:`tokenizers3d.batch.batch_tokenize`.

::

    table = read_shards("shards/")                     # pyarrow.Table, SHARD_SCHEMA
    ds = TokenShardDataset("shards/", seed=0, max_len=8192)
    tok = ds.tokenizer()
    loader = DataLoader(ds, batch_size=8, num_workers=2, collate_fn=partial(collate_tokens, pad_id=tok.pad_id))
    for epoch in range(n):
        ds.set_epoch(epoch)
        for batch in loader: ...                       # batch["ids"] (B, T) int64, batch["mask"] (B, T) bool

Every consumer -- a (DDP rank, DataLoader worker) pair -- reads a disjoint, contiguous slice of one
global row order, so in each epoch the consumers together yield every row exactly once. The global
order is the shards in an order shuffled by ``(seed, epoch)``, each shard's rows shuffled by
``(seed, epoch, shard)``; each consumer then mixes its rows further through a shuffle buffer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .base import MeshTokenizer, get_tokenizer, pad_batch
from .batch import SHARD_METADATA_KEY, SHARD_SCHEMA
from .errors import MeshInputError

#: Columns :class:`TokenShardDataset` reads (the repeated tokenizer columns are left on disk).
ROW_COLUMNS = ("id", "source", "ids", "n_tokens", "n_faces", "n_vertices", "normalization", "n_source_faces")
#: Nullable columns added to SHARD_SCHEMA after the first format; older shards read them as nulls.
ADDED_COLUMNS = tuple(f.name for f in SHARD_SCHEMA if f.nullable)


def list_shards(root: str | Path) -> list[Path]:
    """Complete shards ``shard-*.parquet`` of an output directory, in shard order."""
    root = Path(root)
    if not root.is_dir():
        raise MeshInputError(root, "shard directory does not exist")
    return sorted(root.glob("shard-*.parquet"))


def read_shard(path: str | Path, *, columns: Sequence[str] | None = None) -> pa.Table:
    """One shard as a table with SHARD_SCHEMA's columns (or ``columns``), without the Parquet metadata.

    Columns added to the schema later (``ADDED_COLUMNS``, e.g. ``n_source_faces``) that an older
    shard lacks are filled with nulls, so shards of every format read (and concatenate) alike.
    """
    cols = list(columns) if columns is not None else SHARD_SCHEMA.names
    present = set(pq.read_schema(path).names)
    missing = [c for c in cols if c not in present and c in ADDED_COLUMNS]
    table = pq.read_table(path, columns=[c for c in cols if c not in missing]).replace_schema_metadata(None)
    for name in missing:
        table = table.append_column(SHARD_SCHEMA.field(name), pa.nulls(table.num_rows, SHARD_SCHEMA.field(name).type))
    return table.select(cols)


def read_shards(root: str | Path, *, columns: Sequence[str] | None = None) -> pa.Table:
    """All rows of all shards as one table (shard order, then row order); an empty table if none."""
    shards = list_shards(root)
    if not shards:
        empty = SHARD_SCHEMA.empty_table()
        return empty.select(list(columns)) if columns is not None else empty
    return pa.concat_tables([read_shard(p, columns=columns) for p in shards])


def table_rows(table: pa.Table) -> Iterator[dict]:
    """Rows of a shard table as dicts; ``ids`` becomes an int64 array, other values plain Python."""
    names = table.column_names
    ids_values = ids_offsets = None
    if "ids" in names:
        ids_col = table.column("ids").combine_chunks()
        ids_offsets = ids_col.offsets.to_numpy()
        ids_values = ids_col.values.to_numpy(zero_copy_only=False).astype(np.int64)
    other = {name: table.column(name).to_pylist() for name in names if name != "ids"}
    for i in range(table.num_rows):
        row = {name: values[i] for name, values in other.items()}
        if ids_values is not None:
            row["ids"] = ids_values[ids_offsets[i]:ids_offsets[i + 1]]
        yield row


def iter_rows(root: str | Path, *, columns: Sequence[str] | None = None) -> Iterator[dict]:
    """Every row of every shard, in order, one shard in memory at a time."""
    for path in list_shards(root):
        yield from table_rows(read_shard(path, columns=columns))


def shard_tokenizer_config(path: str | Path) -> dict:
    """The tokenizer config a shard was written with (from its Parquet metadata)."""
    meta = pq.read_schema(path).metadata or {}
    if SHARD_METADATA_KEY not in meta:
        raise MeshInputError(path, "not a batch_tokenize shard (no tokenizers3d.batch metadata)")
    return json.loads(meta[SHARD_METADATA_KEY])["tokenizer_config"]


def _consumer_slices(counts: Sequence[int], consumer: int, n_consumers: int) -> list[tuple[int, int, int]]:
    """Split the concatenation of ``counts`` rows into ``n_consumers`` contiguous near-equal ranges.

    Returns
    -------
    list of (position, start, stop)
        For consumer ``consumer``: rows ``[start, stop)`` of the ``position``-th entry of ``counts``.
    """
    total = int(sum(counts))
    lo, hi = consumer * total // n_consumers, (consumer + 1) * total // n_consumers
    out, offset = [], 0
    for pos, n in enumerate(counts):
        start, stop = max(lo, offset), min(hi, offset + n)
        if start < stop:
            out.append((pos, start - offset, stop - offset))
        offset += n
    return out


def _shuffle_buffer(rows: Iterator[dict], size: int, rng: np.random.Generator) -> Iterator[dict]:
    """Yield ``rows`` in a locally shuffled order using a buffer of ``size`` rows."""
    buf: list[dict] = []
    for row in rows:
        if len(buf) < size:
            buf.append(row)
            continue
        k = int(rng.integers(len(buf)))
        buf[k], row = row, buf[k]
        yield row
    order = rng.permutation(len(buf))
    for k in order:
        yield buf[k]


def _distributed_rank() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class TokenShardDataset(IterableDataset):
    """Token rows of a shard directory for PyTorch, sharded over DDP ranks and DataLoader workers.

    Parameters
    ----------
    root : str or Path
        Output directory of :func:`~tokenizers3d.batch.batch_tokenize`.
    shuffle : bool
        Shuffle (shard order, rows within shards, then a shuffle buffer), deterministic by ``seed`` and
        epoch. ``False`` yields rows in shard order.
    shuffle_buffer : int
        Rows held by each consumer's shuffle buffer (0 or 1 disables the buffer).
    seed, epoch : int
        The order is a function of ``(seed, epoch)`` only; change the epoch with :meth:`set_epoch`.
    rank, world_size : int, optional
        DDP position; default from ``torch.distributed`` when initialized, else ``0, 1``.
    max_len : int, optional
        Skip rows with more than ``max_len`` tokens.
    filter_fn : callable, optional
        ``filter_fn(row) -> bool``; rows for which it returns False are skipped.

    Notes
    -----
    Each (rank, worker) consumer gets a contiguous range of the epoch's global row order, ranges
    differing by at most one row before filtering, so the consumers' rows partition the dataset.
    With ``persistent_workers=True`` the DataLoader workers keep the epoch they started with.
    Yields dicts: ``id`` str, ``ids`` (T,) int64, ``n_tokens``, ``n_faces``, ``n_vertices`` int,
    ``n_source_faces`` int (None in shards written before that column existed), ``source`` str,
    ``normalization`` dict (``center``, ``scale``).
    """

    def __init__(self, root: str | Path, *, shuffle: bool = True, shuffle_buffer: int = 1024, seed: int = 0,
                 epoch: int = 0, rank: int | None = None, world_size: int | None = None, max_len: int | None = None,
                 filter_fn: Callable[[dict], bool] | None = None):
        super().__init__()
        self.root = Path(root)
        self.shards = list_shards(self.root)
        if not self.shards:
            raise MeshInputError(self.root, "no shard-*.parquet files; run batch_tokenize first")
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        if world_size is not None and not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.row_counts = [pq.ParquetFile(p).metadata.num_rows for p in self.shards]
        self.tokenizer_config = self._common_config()
        self.shuffle, self.shuffle_buffer, self.seed, self.epoch = shuffle, int(shuffle_buffer), int(seed), int(epoch)
        self.rank, self.world_size, self.max_len, self.filter_fn = rank, world_size, max_len, filter_fn

    def _common_config(self) -> dict:
        configs = {json.dumps(shard_tokenizer_config(p), sort_keys=True) for p in self.shards}
        if len(configs) != 1:
            raise MeshInputError(self.root, f"shards were written with different tokenizers: {sorted(configs)}")
        return json.loads(configs.pop())

    @property
    def num_rows(self) -> int:
        """Rows in all shards (before ``max_len`` / ``filter_fn``)."""
        return int(sum(self.row_counts))

    def tokenizer(self) -> MeshTokenizer:
        """The tokenizer the shards were written with (for ``pad_id``, decoding ...)."""
        return get_tokenizer(**self.tokenizer_config)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def consumer(self) -> tuple[int, int]:
        """``(index, count)`` of this (rank, DataLoader worker) among all consumers."""
        rank, world = (self.rank, self.world_size) if self.world_size is not None else _distributed_rank()
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * n_workers + worker, world * n_workers

    def _shard_order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.shards))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.shards))

    def _shard_rows(self, shard: int, start: int, stop: int) -> Iterator[dict]:
        """Rows ``[start, stop)`` of shard ``shard`` in this epoch's within-shard order."""
        table = read_shard(self.shards[shard], columns=ROW_COLUMNS)
        if self.shuffle:
            perm = np.random.default_rng([self.seed, self.epoch, shard]).permutation(table.num_rows)
            table = table.take(pa.array(perm[start:stop]))
        else:
            table = table.slice(start, stop - start)
        yield from table_rows(table)

    def _keep(self, row: dict) -> bool:
        if self.max_len is not None and row["n_tokens"] > self.max_len:
            return False
        return self.filter_fn is None or bool(self.filter_fn(row))

    def __iter__(self) -> Iterator[dict]:
        index, count = self.consumer()
        order = self._shard_order()
        slices = _consumer_slices([self.row_counts[s] for s in order], index, count)
        rows = (row for pos, start, stop in slices for row in self._shard_rows(int(order[pos]), start, stop)
                if self._keep(row))
        if self.shuffle and self.shuffle_buffer > 1:
            rows = _shuffle_buffer(rows, self.shuffle_buffer, np.random.default_rng([self.seed, self.epoch, index, 1]))
        yield from rows


def collate_tokens(batch: Sequence[dict], pad_id: int, *, max_len: int | None = None) -> dict:
    """Right-pad a list of dataset rows into tensors.

    Parameters
    ----------
    batch : sequence of dict
        Rows from :class:`TokenShardDataset` (at least ``id`` and ``ids``).
    pad_id : int
    max_len : int, optional
        Pad/truncate to this length instead of the longest row.

    Returns
    -------
    dict
        ``ids`` (B, T) int64, ``mask`` (B, T) bool (True = real token), ``lengths`` (B,) int64,
        ``id`` list of str, and ``n_faces`` (B,) int64 when present.
    """
    padded = pad_batch([row["ids"] for row in batch], pad_id, max_len=max_len)
    out = {
        "ids": torch.from_numpy(padded.ids),
        "mask": torch.from_numpy(padded.mask),
        "lengths": torch.from_numpy(padded.mask.sum(axis=1).astype(np.int64)),
        "id": [row["id"] for row in batch],
    }
    if batch and all("n_faces" in row for row in batch):
        out["n_faces"] = torch.tensor([int(row["n_faces"]) for row in batch], dtype=torch.int64)
    return out
