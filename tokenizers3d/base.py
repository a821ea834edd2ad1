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
import importlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .errors import TokenizationError, UnknownTokenizerError
from .mesh import ArrayMesh, Normalization, QuantizedMesh, canonical_order, clean_faces, prepare, validate_bits

if TYPE_CHECKING:  # only decode needs trimesh; encoding an ArrayMesh loads neither trimesh nor SciPy
    import trimesh


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
    """What lenient decoding dropped: ``dropped_tokens`` from the first bad position on.

    Attributes
    ----------
    n_tokens : int
        Length of the sequence, trailing PAD tokens not counted.
    used_tokens : int
        Tokens that produced the decoded faces (BOS and EOS included when they were valid).
    dropped_tokens : int
        ``n_tokens - used_tokens``: the broken tail from ``error_position`` on.
    error : str or None
        The first problem found, or None for a well-formed sequence.
    error_position : int or None
        Index of the first bad token (``n_tokens`` for a truncated sequence).
    n_faces : int
        Faces in the decoded (re-canonicalized) mesh.
    dropped_faces : int
        Complete faces that were read but removed by the clean-up (degenerate or duplicate).
    """

    n_tokens: int
    used_tokens: int
    dropped_tokens: int
    error: str | None = None
    error_position: int | None = None
    n_faces: int = 0
    dropped_faces: int = 0


def config_hash(config: dict) -> str:
    """Short, stable hash of a tokenizer config.

    Parameters
    ----------
    config : dict
        JSON-serializable tokenizer config (``tok.config``).

    Returns
    -------
    str
        First 12 hex digits of the SHA-1 of the config as JSON with sorted keys.
    """
    return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


class MeshTokenizer(ABC):
    """Base class. Subclasses set ``name`` and implement ``encode_quantized`` / ``decode_quantized``."""

    name: str = ""
    lossless: bool = True  # decode(encode(m)) is the canonical quantized m; False for learned tokenizers (vqvae)

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
        """Short hash of :attr:`config` (see :func:`config_hash`)."""
        return config_hash(self.config)

    # ---- core -------------------------------------------------------------------------------
    @abstractmethod
    def encode_quantized(self, qm: QuantizedMesh) -> np.ndarray:
        """Canonical quantized mesh -> ids (T,) int64 including BOS and EOS."""

    @abstractmethod
    def decode_quantized(self, ids: Sequence[int] | np.ndarray, *, strict: bool = True) -> tuple[QuantizedMesh, DecodeReport]:
        """ids -> canonical quantized mesh. ``strict`` raises TokenizationError on malformed input;
        otherwise the broken tail is dropped and reported."""

    def encode(self, mesh: trimesh.Trimesh | ArrayMesh, *, source=None) -> Encoding:
        """Canonicalize, normalize, quantize and serialize a mesh in any frame (a ``trimesh.Trimesh`` or an
        :class:`~tokenizers3d.mesh.ArrayMesh`)."""
        qm, norm = prepare(mesh, self.bits, source=source)
        return Encoding(self.encode_quantized(qm), norm, qm.n_faces, len(qm.vertices))

    def decode(self, ids: Sequence[int] | np.ndarray, *, strict: bool = True) -> trimesh.Trimesh:
        """ids -> mesh in the unit cube (cell centres)."""
        qm, _ = self.decode_quantized(ids, strict=strict)
        return qm.to_trimesh()

    def encode_batch(self, meshes: Iterable[trimesh.Trimesh | ArrayMesh]) -> list[Encoding]:
        return [self.encode(m) for m in meshes]

    def decode_batch(self, batch: Iterable[Sequence[int] | np.ndarray], *, strict: bool = True) -> list[trimesh.Trimesh]:
        return [self.decode(ids, strict=strict) for ids in batch]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items() if k != "name")
        return f"{type(self).__name__}({args})"


# ---- helpers shared by the decoders ------------------------------------------------------------


@dataclass
class Body:
    """Where the body of a token sequence lies; found by :func:`locate_body`.

    Attributes
    ----------
    ids : (T,) int64
        The sequence without its trailing PAD tokens.
    start : int
        First body position: 1 after a BOS (0 when lenient decoding met no BOS).
    stop : int
        One past the last body position: the position of the first EOS, or ``T`` when there is none.
    head_error, tail_error : TokenizationError or None
        A missing BOS (lenient decoding only; strict raises), and a missing EOS or tokens after the EOS.
    """

    ids: np.ndarray
    start: int
    stop: int
    head_error: TokenizationError | None = None
    tail_error: TokenizationError | None = None


def locate_body(tok: MeshTokenizer, ids: Sequence[int] | np.ndarray, *, strict: bool) -> Body:
    """Check the BOS ... EOS envelope of ``ids``; trailing PAD tokens are ignored.

    Raises
    ------
    TokenizationError
        ``ids`` is not a 1-D integer sequence; in strict mode also a missing BOS (position 0).
    """
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise TokenizationError(f"token ids must be a 1-D sequence, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise TokenizationError(f"token ids must be integers, got dtype {arr.dtype}", 0)
    arr = arr.astype(np.int64, copy=False)
    real = np.flatnonzero(arr != tok.pad_id)
    arr = arr[: real[-1] + 1] if len(real) else arr[:0]
    n = len(arr)
    head = None
    if n and arr[0] == tok.bos_id:
        start = 1
    else:
        head = TokenizationError("sequence does not start with BOS", 0)
        if strict:
            raise head
        start = 0
    tail = None
    hits = np.flatnonzero(arr[start:] == tok.eos_id)
    if len(hits):
        stop = start + int(hits[0])
        if stop != n - 1:
            tail = TokenizationError("tokens after EOS", stop + 1)
    else:
        stop = n
        tail = TokenizationError("sequence ends without EOS (truncated)", n)
    return Body(arr, start, stop, head, tail)


def first_bad_face(vertices: np.ndarray, faces: np.ndarray) -> tuple[int, str] | None:
    """The first face (in sequence order) that is degenerate or repeats an earlier face.

    Parameters
    ----------
    vertices : (V, 3) int
    faces : (F, 3) int

    Returns
    -------
    (index, reason) or None
    """
    if len(faces) == 0:
        return None
    faces = np.asarray(faces, dtype=np.int64)
    bad = (faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) | (faces[:, 0] == faces[:, 2])
    tri = np.asarray(vertices, dtype=np.int64)[faces]  # (F, 3, 3)
    bad |= ~np.any(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    srt = np.sort(faces, axis=1)
    order = np.lexsort((srt[:, 2], srt[:, 1], srt[:, 0]))  # stable: equal rows stay in sequence order
    same = np.all(srt[order[1:]] == srt[order[:-1]], axis=1)
    dup = np.zeros(len(faces), dtype=bool)
    dup[order[1:][same]] = True
    first = np.flatnonzero(bad | dup)
    if not len(first):
        return None
    i = int(first[0])
    return i, ("degenerate face" if bad[i] else "duplicate face")


def finish_decode(
    tok: MeshTokenizer,
    body: Body,
    vertices: np.ndarray,
    faces: np.ndarray,
    face_pos: np.ndarray,
    *,
    parsed_stop: int,
    body_error: TokenizationError | None,
    strict: bool,
) -> tuple[QuantizedMesh, DecodeReport]:
    """Turn the faces a decoder read into a canonical mesh and a :class:`DecodeReport`.

    Parameters
    ----------
    vertices : (V, 3) int
        Grid coordinates, columns x, y, z.
    faces : (F, 3) int
        The complete faces read before ``body_error``, in sequence order.
    face_pos : (F,) int
        Position of the first token of each face, for error messages.
    parsed_stop : int
        One past the last token of the last complete face.
    body_error : TokenizationError or None
        The first malformed body token, if any.

    Raises
    ------
    TokenizationError
        In strict mode: ``body_error``, a degenerate or duplicate face, or ``body.tail_error``.
    """
    vertices = np.asarray(vertices, dtype=np.int64).reshape(-1, 3)
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if strict:
        if body_error is not None:
            raise body_error
        bad = first_bad_face(vertices, faces)
        if bad is not None:
            raise TokenizationError(bad[1], int(face_pos[bad[0]]))
        if body.tail_error is not None:
            raise body.tail_error
    v, f, _ = clean_faces(vertices, faces)
    qm = canonical_order(QuantizedMesh(v.astype(np.int64), f, tok.bits))
    errors = [e for e in (body.head_error, body_error, body.tail_error) if e is not None]
    clean_end = body_error is None and body.stop < len(body.ids)
    used = parsed_stop + int(clean_end)
    report = DecodeReport(
        n_tokens=len(body.ids),
        used_tokens=used,
        dropped_tokens=len(body.ids) - used,
        error=str(errors[0]) if errors else None,
        error_position=errors[0].position if errors else None,
        n_faces=qm.n_faces,
        dropped_faces=len(faces) - qm.n_faces,
    )
    return qm, report


def ensure_canonical(qm: QuantizedMesh, bits: int) -> QuantizedMesh:
    """``qm`` itself when already in canonical order (cheap check), else :func:`canonical_order` of it.

    Raises
    ------
    ValueError
        If ``qm.bits`` differs from ``bits`` or a coordinate is off the grid.
    """
    if qm.bits != bits:
        raise ValueError(f"mesh is quantized at {qm.bits} bits, tokenizer expects {bits}")
    v = np.asarray(qm.vertices, dtype=np.int64)
    f = np.asarray(qm.faces, dtype=np.int64)
    if len(v) and (v.min() < 0 or v.max() >= 1 << bits):
        raise ValueError(f"vertex coordinates must lie in [0, {1 << bits})")
    key = (v[:, 2] << (2 * bits)) | (v[:, 1] << bits) | v[:, 0]
    ok = bool(np.all(key[1:] > key[:-1]))
    if ok and len(f):
        ok = bool(np.all((f[:, 0] < f[:, 1]) & (f[:, 0] < f[:, 2])))
        n = max(len(v), 1)
        fkey = (f[:, 0] * n + f[:, 1]) * n + f[:, 2]
        ok = ok and bool(np.all(fkey[1:] > fkey[:-1]))
    return qm if ok else canonical_order(qm)


_REGISTRY: dict[str, Callable[..., MeshTokenizer]] = {}


def register_tokenizer(name: str):
    """Class decorator adding a tokenizer to the :func:`get_tokenizer` registry."""

    def deco(cls):
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


_BUILTIN = {"coords": "coords", "adjacent": "adjacent", "blocks": "blocks", "vqvae": "vqvae",
            "vat": "vat_tokens"}  # name -> module


def list_tokenizers() -> list[str]:
    _import_builtin()
    return sorted(_REGISTRY)


def get_tokenizer(name: str, **config) -> MeshTokenizer:
    """Build a registered tokenizer by name, e.g. ``get_tokenizer("adjacent", bits=10)``.

    A built-in tokenizer's module is imported on first use (only that one: ``coords`` loads no SciPy).
    """
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(f"{__package__}.{_BUILTIN[name]}")
    if name not in _REGISTRY:
        _import_builtin()
        raise UnknownTokenizerError(f"unknown tokenizer {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**config)


def _import_builtin() -> None:
    """Register every built-in tokenizer (vqvae loads torch lazily)."""
    for module in _BUILTIN.values():
        importlib.import_module(f"{__package__}.{module}")


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
