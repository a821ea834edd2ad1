"""Token files: one tokenized mesh in an ``.npz`` (written by ``meshgen tokenize``, read by ``meshgen detokenize``).

Layout (format version 1; an ``np.savez_compressed`` archive of NumPy arrays)::

    ids            (T,) uint16 (int32 when the vocabulary has more than 65,536 ids): BOS body EOS
    tokenizer      0-d str: JSON tokenizer config, ``get_tokenizer(**config)`` rebuilds the tokenizer
    normalization  0-d str: JSON ``{"center": [x, y, z], "scale": s}``, unit cube -> the input's frame
    meta           0-d str: JSON ``{"format": "meshgen-tokens", "version": 1, "n_faces": F, "n_vertices": V,
                   "source_faces": S, "sha256": H}``

``n_faces`` is the face count of the encoded (canonical, quantized) mesh; ``source_faces`` the face count
of the mesh before quantization (``null`` when unknown), so ``1 - n_faces / source_faces`` is the share of
faces that quantization merged away. ``sha256`` covers the ids (as little-endian int64), the two config
strings and the rest of ``meta`` (see :func:`checksum`): a sequence cut at a face boundary, an edited id or
config, or a swapped normalization is refused on load.

:func:`load_tokens` checks everything and raises one :class:`~tokenizers3d.errors.MeshInputError` naming
the file: not a zip (or empty), missing entries, entries that are not JSON, an unknown tokenizer or bad
settings, a normalization with a non-finite or non-positive scale or a non-finite centre, ids that are
not integers or lie outside the vocabulary, a checksum or (on decoding) face-count mismatch, and (in
:meth:`TokenFile.decode`) a malformed sequence. Files written before format 1 (no ``meta``) are still
read, with a logged warning (their ids and configs are checked, but a cut or edit that keeps
them valid cannot be detected), and :attr:`TokenFile.verified` is False.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .base import DecodeReport, Encoding, MeshTokenizer, get_tokenizer
from .errors import ConfigError, MeshInputError, TokenizationError
from .io import atomic_path
from .mesh import ArrayMesh, Normalization, QuantizedMesh

if TYPE_CHECKING:  # decoding to arrays needs no trimesh (meshgen detokenize); DecodedTokens.mesh imports it
    import trimesh

FORMAT_NAME = "meshgen-tokens"
FORMAT_VERSION = 1
QUANTIZATION_LOSS_WARNING = 0.05  # save_tokens warns when quantization loses more than this share of faces
REQUIRED_KEYS = ("ids", "tokenizer", "normalization")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenFile:
    """A token file, read and checked by :func:`load_tokens`.

    Attributes
    ----------
    path : Path
    ids : (T,) int64
        Every id lies in ``[0, tokenizer.vocab_size)``.
    tokenizer : MeshTokenizer
    normalization : Normalization
        Finite centre, finite positive scale.
    version : int
        Format version; 0 for a file written before format 1.
    n_faces, n_vertices, source_faces : int or None
        From ``meta``; None in a version-0 file (``source_faces`` also when the writer did not know it).
    verified : bool
        True when the file carried a checksum and it matched (always, from version 1 on).
    """

    path: Path
    ids: np.ndarray
    tokenizer: MeshTokenizer
    normalization: Normalization
    version: int
    n_faces: int | None
    n_vertices: int | None
    source_faces: int | None
    verified: bool

    def decode(self, *, strict: bool = True) -> DecodedTokens:
        """Decode the ids to a mesh in the frame of the mesh that was tokenized.

        Raises
        ------
        MeshInputError
            Naming the file: a malformed sequence (strict mode; the message has the token position),
            no face at all, or a face count other than the one recorded.
        """
        try:
            qm, report = self.tokenizer.decode_quantized(self.ids, strict=strict)
        except TokenizationError as exc:
            raise MeshInputError(self.path, f"malformed token sequence: {exc}") from exc
        if qm.n_faces == 0:
            raise MeshInputError(self.path, f"no face could be decoded ({report.error or 'empty sequence'})")
        if (self.n_faces is not None and report.error is None and self.tokenizer.lossless
                and qm.n_faces != self.n_faces):  # a lossy tokenizer may decode faces that collapse
            raise MeshInputError(self.path, f"decodes to {qm.n_faces} faces, but {self.n_faces} were written")
        unit = qm.to_arrays()
        return DecodedTokens(ArrayMesh(self.normalization.invert(unit.vertices), unit.faces), qm, report)


@dataclass(frozen=True)
class DecodedTokens:
    """Result of :meth:`TokenFile.decode`.

    Attributes
    ----------
    arrays : ArrayMesh
        Cell centres mapped back to the input's frame, as arrays (what ``meshgen detokenize`` writes).
    quantized : QuantizedMesh
        The canonical quantized mesh.
    report : DecodeReport
    """

    arrays: ArrayMesh
    quantized: QuantizedMesh
    report: DecodeReport

    @cached_property
    def mesh(self) -> trimesh.Trimesh:
        """:attr:`arrays` as a ``trimesh.Trimesh`` (made on first use)."""
        return self.arrays.to_trimesh()


def checksum(ids: np.ndarray, tokenizer_json: str, normalization_json: str, meta: dict) -> str:
    """SHA-256 hex digest of the ids (little-endian int64), the two JSON strings and ``meta`` without its
    ``sha256`` key (JSON, sorted keys), separated by NUL bytes."""
    h = hashlib.sha256(np.asarray(ids).astype("<i8").tobytes())
    rest = {k: v for k, v in meta.items() if k != "sha256"}
    for part in (tokenizer_json, normalization_json, json.dumps(rest, sort_keys=True)):
        h.update(b"\0" + part.encode("utf-8"))
    return h.hexdigest()


def save_tokens(path: str | Path, enc: Encoding, tok: MeshTokenizer, *, source_faces: int | None = None,
                source: str | Path | None = None) -> None:
    """Write ``enc`` (from ``tok.encode``) as a token file, atomically.

    Parameters
    ----------
    source_faces : int, optional
        Faces of the mesh before quantization (e.g. ``len(load_mesh(f).faces)``). When quantization lost
        more than :data:`QUANTIZATION_LOSS_WARNING` of them a warning naming ``source`` is logged.
    """
    ids = np.asarray(enc.ids, dtype=np.int64)
    id_dtype = np.uint16 if tok.vocab_size <= 65536 else np.int32
    tokenizer_json = json.dumps(tok.config, sort_keys=True)
    normalization_json = json.dumps(enc.normalization.to_dict(), sort_keys=True)
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "n_faces": int(enc.n_faces),
            "n_vertices": int(enc.n_vertices), "source_faces": None if source_faces is None else int(source_faces)}
    meta["sha256"] = checksum(ids, tokenizer_json, normalization_json, meta)
    if source_faces:
        lost = 1.0 - enc.n_faces / source_faces
        if lost > QUANTIZATION_LOSS_WARNING:
            log.warning("%s: quantization at %d bits keeps %d of %d faces (%.1f%% lost); use more bits",
                        source if source is not None else "<mesh>", tok.bits, enc.n_faces, source_faces, 100 * lost)
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, ids=ids.astype(id_dtype), tokenizer=np.array(tokenizer_json),
                                normalization=np.array(normalization_json), meta=np.array(json.dumps(meta)))


def _json_entry(z, key: str, path: Path):
    arr = z[key]
    if arr.ndim != 0 or arr.dtype.kind != "U":
        raise MeshInputError(path, f"entry {key!r} is not a JSON string (got a {arr.dtype} array of shape {arr.shape})")
    text = str(arr)
    try:
        return text, json.loads(text)
    except json.JSONDecodeError as exc:
        raise MeshInputError(path, f"entry {key!r} is not valid JSON ({exc})") from exc


def _count(meta: dict, key: str, path: Path, *, optional: bool = False) -> int | None:
    value = meta.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MeshInputError(path, f"meta {key!r} must be a non-negative integer, got {value!r}")
    return value


def load_tokens(path: str | Path) -> TokenFile:
    """Read and check a token file written by :func:`save_tokens` (see the module docstring).

    Raises
    ------
    MeshInputError
        One line naming the file and the first problem found.
    """
    path = Path(path)
    if not path.exists():
        raise MeshInputError(path, "file does not exist")
    if path.is_dir():
        raise MeshInputError(path, "is a directory, expected a token file (.npz)")
    if path.stat().st_size == 0:
        raise MeshInputError(path, "file is empty")
    not_ours = "not a token file written by `meshgen tokenize`"
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic == b"\x93NUMPY":
        raise MeshInputError(path, f"{not_ours} (a single .npy array, not an .npz archive)")
    if magic[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise MeshInputError(path, f"{not_ours} (not an .npz archive: no zip signature)")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise MeshInputError(path, f"{not_ours} (damaged .npz archive: {exc})") from exc
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise MeshInputError(path, f"{not_ours} (not an .npz archive)")
    with z:
        missing = [k for k in REQUIRED_KEYS if k not in z.files]
        if missing:
            raise MeshInputError(path, f"{not_ours} (missing {', '.join(missing)}; has {', '.join(z.files) or 'nothing'})")
        try:
            ids = z["ids"]
            tokenizer_json, cfg = _json_entry(z, "tokenizer", path)
            normalization_json, norm_dict = _json_entry(z, "normalization", path)
            meta_json, meta = _json_entry(z, "meta", path) if "meta" in z.files else (None, None)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # a damaged member
            raise MeshInputError(path, f"cannot read an entry ({type(exc).__name__}: {exc})") from exc
    if not isinstance(cfg, dict) or not isinstance(cfg.get("name"), str):
        raise MeshInputError(path, f"tokenizer config must be a JSON object with a 'name', got {tokenizer_json!r}")
    try:
        tok = get_tokenizer(**cfg)
    except (ConfigError, TypeError, ValueError) as exc:
        raise MeshInputError(path, f"bad tokenizer config {tokenizer_json}: {exc}") from exc
    try:
        norm = Normalization.from_dict(norm_dict)
    except ValueError as exc:
        raise MeshInputError(path, f"bad normalization: {exc}") from exc
    if ids.ndim != 1:
        raise MeshInputError(path, f"ids must be a 1-D array, got shape {ids.shape}")
    if ids.dtype.kind not in "iu":
        raise MeshInputError(path, f"ids must be integers, got {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= tok.vocab_size):
        bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
        raise MeshInputError(path, f"token id {bad} is outside the vocabulary of {tok} (0 .. {tok.vocab_size - 1})")
    ids = ids.astype(np.int64)
    if meta is None:
        log.warning("%s: no checksum (token file written before format %d); decoding without an "
                    "integrity check", path, FORMAT_VERSION)
        return TokenFile(path, ids, tok, norm, 0, None, None, None, False)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise MeshInputError(path, f"{not_ours} (meta is {meta_json!r})")
    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise MeshInputError(path, f"bad format version {version!r}")
    if version > FORMAT_VERSION:
        raise MeshInputError(path, f"format version {version} is newer than this meshgen reads ({FORMAT_VERSION}); "
                                   "upgrade meshgen")
    n_faces, n_vertices = _count(meta, "n_faces", path), _count(meta, "n_vertices", path)
    source_faces = _count(meta, "source_faces", path, optional=True)
    if meta.get("sha256") != checksum(ids, tokenizer_json, normalization_json, meta):
        raise MeshInputError(path, "checksum mismatch: the ids, configs or counts changed after the file was written "
                                   "(cut short or edited?)")
    return TokenFile(path, ids, tok, norm, version, n_faces, n_vertices, source_faces, True)
