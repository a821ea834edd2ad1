"""The one interface every mesh tokenizer has, the registry, and batch padding.

A tokenizer turns a mesh into a 1-D sequence of integer ids and back::

    tok = get_tokenizer("coords", bits=10)
    enc = tok.encode(mesh)            # Encoding: ids (int64 array) + normalization
    mesh2 = tok.decode(enc.ids)       # trimesh.Trimesh in the unit cube
    world = enc.normalization.invert(mesh2.vertices)

Sequences always start with ``bos_id`` and end with ``eos_id``; special ids are never produced by the
body of an encoding. ``tok.config`` is a plain dict (JSON-serializable) from which
``get_tokenizer(**config)`` rebuilds an identical tokenizer, so a token file always says how to
decode itself.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import trimesh

from .mesh import Normalization, QuantizedMesh, prepare, validate_bits


@dataclass
class Encoding:
    """Result of :meth:`MeshTokenizer.encode`.

    Attributes
    ----------
    ids : (T,) int64
        BOS, body, EOS.
    normalization : Normalization
        Undo with ``normalization.invert`` to return decoded vertices to the input frame.
    n_faces, n_vertices : int
        Counts of the canonical quantized mesh that was encoded.
    """

    ids: np.ndarray
    normalization: Normalization = field(default_factory=Normalization)
    n_faces: int = 0
    n_vertices: int = 0

    @property
    def tokens_per_face(self) -> float:
        return (len(self.ids) - 2) / max(self.n_faces, 1)


@dataclass
class DecodeReport:
    """What lenient decoding dropped: ``dropped_tokens`` from the first bad position on."""

    n_tokens: int
    used_tokens: int
    dropped_tokens: int
    error: str | None = None


class MeshTokenizer(ABC):
    """Base class. Subclasses set ``name`` and implement ``encode_quantized`` / ``decode_quantized``."""

    name: str = ""

    def __init__(self, bits: int = 10):
        self.bits = validate_bits(bits)

    # ---- vocabulary -------------------------------------------------------------------------
    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @property
    def special_tokens(self) -> dict[str, int]:
        """Name -> id of every special token (at least ``pad``, ``bos``, ``eos``)."""
        return {"pad": self.pad_id, "bos": self.bos_id, "eos": self.eos_id}

    @property
    def pad_id(self) -> int:
        return self.vocab_size - 3

    @property
    def bos_id(self) -> int:
        return self.vocab_size - 2

    @property
    def eos_id(self) -> int:
        return self.vocab_size - 1

    # ---- config -----------------------------------------------------------------------------
    @property
    def config(self) -> dict:
        """JSON-serializable; ``get_tokenizer(**config)`` rebuilds this tokenizer."""
        return {"name": self.name, "bits": self.bits}

    @property
    def config_hash(self) -> str:
        return hashlib.sha1(json.dumps(self.config, sort_keys=True).encode()).hexdigest()[:12]

    # ---- core -------------------------------------------------------------------------------
    @abstractmethod
    def encode_quantized(self, qm: QuantizedMesh) -> np.ndarray:
        """Canonical quantized mesh -> ids (T,) int64 including BOS and EOS."""

    @abstractmethod
    def decode_quantized(self, ids: Sequence[int] | np.ndarray, *, strict: bool = True) -> tuple[QuantizedMesh, DecodeReport]:
        """ids -> canonical quantized mesh. ``strict`` raises TokenizationError on malformed input;
        otherwise the broken tail is dropped and reported."""

    def encode(self, mesh: trimesh.Trimesh, *, source=None) -> Encoding:
        """Canonicalize, normalize, quantize and serialize a mesh in any frame."""
        qm, norm = prepare(mesh, self.bits, source=source)
        return Encoding(self.encode_quantized(qm), norm, qm.n_faces, len(qm.vertices))

    def decode(self, ids: Sequence[int] | np.ndarray, *, strict: bool = True) -> trimesh.Trimesh:
        """ids -> mesh in the unit cube (cell centres)."""
        qm, _ = self.decode_quantized(ids, strict=strict)
        return qm.to_trimesh()

    def encode_batch(self, meshes: Iterable[trimesh.Trimesh]) -> list[Encoding]:
        return [self.encode(m) for m in meshes]

    def decode_batch(self, batch: Iterable[Sequence[int] | np.ndarray], *, strict: bool = True) -> list[trimesh.Trimesh]:
        return [self.decode(ids, strict=strict) for ids in batch]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items() if k != "name")
        return f"{type(self).__name__}({args})"


_REGISTRY: dict[str, Callable[..., MeshTokenizer]] = {}


def register_tokenizer(name: str):
    """Class decorator adding a tokenizer to the :func:`get_tokenizer` registry."""

    def deco(cls):
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def list_tokenizers() -> list[str]:
    _import_builtin()
    return sorted(_REGISTRY)


def get_tokenizer(name: str, **config) -> MeshTokenizer:
    """Build a registered tokenizer by name, e.g. ``get_tokenizer("adjacent", bits=10)``."""
    _import_builtin()
    if name not in _REGISTRY:
        raise KeyError(f"unknown tokenizer {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**config)


def _import_builtin() -> None:
    from . import adjacent, blocks, coords  # noqa: F401  (registration side effect)


@dataclass
class PaddedBatch:
    """Right-padded batch: ``ids`` (B, T) int64, ``mask`` (B, T) bool (True = real token)."""

    ids: np.ndarray
    mask: np.ndarray


def pad_batch(seqs: Sequence[Sequence[int] | np.ndarray], pad_id: int, *, max_len: int | None = None) -> PaddedBatch:
    """Right-pad sequences to a common length (the longest, or ``max_len``, truncating longer ones)."""
    length = max((len(s) for s in seqs), default=0) if max_len is None else max_len
    ids = np.full((len(seqs), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), length), dtype=bool)
    for i, s in enumerate(seqs):
        s = np.asarray(s, dtype=np.int64)[:length]
        ids[i, : len(s)] = s
        mask[i, : len(s)] = True
    return PaddedBatch(ids, mask)
