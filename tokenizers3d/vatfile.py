"""The ``.vat`` file: the token ids of one shape compressed by the VAT tokenizer (:mod:`tokenizers3d.vat`).

Layout (little-endian), 38 bytes of header, the packed ids, a 4-byte CRC-32::

    offset  size  field
    0       4     magic b"VATK"
    4       1     format version (1)
    5       1     bits per id (ceil(log2(codebook size)))
    6       1     scales in the model
    7       1     scales kept in this file (a prefix: 1 .. scales in the model)
    8       8     the first 8 bytes of the model digest (tokenizers3d.checkpoint.model_digest): ids are decoded
                  only by the weights that made them
    16      12    centre of the shape's bounding box (3 x float32, the user's frame)
    28      4     longest side of the bounding box (float32); the decoded mesh is put back with them
    32      4     number of ids (uint32) = tokens of the kept scales
    36      2     surface level of the occupancy field, x 65535 (uint16; 0, as in files written before
                  2026-12-01, means 0.5): chosen by the encoder for this shape (tokenizers3d.vat_fit.choose_level)
    38      n     the ids in next-scale order, ``bits`` bits each, least significant bit first, zero-padded to a byte
    38 + n  m     format version 2 only: the offset grid (tokenizers3d.vat_offsets.OffsetGrid) -- 1 byte cells per
                  side c, 1 byte bits per offset b, 2 bytes the offset step (float16), then the c^3 codes, b bits each,
                  packed as the ids: m = 4 + ceil(c^3 b / 8) (504 bytes for 10^3 offsets of 4 bits)
    end - 4 4     CRC-32 of everything before it

The payload ``n = ceil(ids x bits / 8)`` bytes is the compressed size of the shape (512 bytes for 341 ids of 12
bits); the header and CRC add 42 bytes per file (the level took two bytes that were reserved, so the file's
size did not change). A file without offsets is written as version 1, byte for byte as before the offsets
existed; one with them as version 2 (this reader knows both). Every problem reading a file -- too short, another magic or
version, a CRC mismatch, a payload of the wrong length, ids that are not a whole number of scales -- is one
:class:`~tokenizers3d.errors.MeshInputError` naming the file.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import MeshInputError
from .io import atomic_path
from .mesh import Normalization
from .vat_offsets import OffsetGrid

MAGIC = b"VATK"
VERSION = 1  # ids only
VERSION_OFFSETS = 2  # ids, then an offset grid
_HEADER = struct.Struct("<4sBBBB8s3ffIH")
_OFFSETS = struct.Struct("<BBe")
HEADER_BYTES = _HEADER.size  # 38
CRC_BYTES = 4


def level_code(level: float) -> int:
    """The header's uint16 for a surface ``level`` in (0, 1): 0 for exactly 0.5 (the decoder's default, so such a
    file is byte for byte what the format wrote before the field existed), else ``round(level x 65535)`` in
    1 .. 65534."""
    if float(level) == 0.5:
        return 0
    return min(65534, max(1, round(float(level) * 65535)))


def pack_ids(ids: np.ndarray, bits: int) -> bytes:
    """Ids (N,) in ``0 .. 2^bits - 1`` -> ``ceil(N bits / 8)`` bytes, least significant bit first."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if len(ids) and (ids.min() < 0 or ids.max() >= 1 << bits):
        raise ValueError(f"ids must be in 0..{(1 << bits) - 1}")
    flat = ((ids[:, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(-1)
    return np.packbits(flat, bitorder="little").tobytes()


def unpack_ids(data: bytes, bits: int, n: int) -> np.ndarray:
    """Inverse of :func:`pack_ids`: the first ``n`` ids (int64)."""
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[: n * bits]
    return (flat.reshape(n, bits).astype(np.int64) << np.arange(bits)).sum(1)


@dataclass(frozen=True)
class VatFile:
    """The contents of a ``.vat`` file."""

    ids: np.ndarray  # (T,) int64, next-scale order
    bits: int
    model_scales: int
    scales_kept: int
    digest: str  # 16 hex digits
    normalization: Normalization
    level: float = 0.5  # marching-cubes level of the decoded occupancy (stored to 1 / 65535)
    offsets: OffsetGrid | None = None  # the optional second layer (format version 2)

    def __post_init__(self):
        if not 0.0 < float(self.level) < 1.0:
            raise ValueError(f"the surface level must be strictly between 0 and 1, got {self.level}")

    @property
    def ids_bytes(self) -> int:
        return -(-len(self.ids) * self.bits // 8)

    @property
    def payload_bytes(self) -> int:
        """The compressed size: the packed ids, plus the offset grid's section when there is one."""
        return self.ids_bytes + (offsets_section_bytes(self.offsets) if self.offsets is not None else 0)


def offsets_section_bytes(offsets: OffsetGrid) -> int:
    """Bytes an offset grid adds to a file's payload: its 4-byte section header and its packed codes."""
    return _OFFSETS.size + offsets.payload_bytes


def encode_vat(f: VatFile) -> bytes:
    """The bytes of a ``.vat`` file."""
    c = f.normalization.center
    header = _HEADER.pack(MAGIC, VERSION if f.offsets is None else VERSION_OFFSETS, f.bits, f.model_scales, f.scales_kept, bytes.fromhex(f.digest)[:8],
                          float(c[0]), float(c[1]), float(c[2]), float(f.normalization.scale), len(f.ids),
                          level_code(f.level))
    body = header + pack_ids(f.ids, f.bits)
    if f.offsets is not None:
        o = f.offsets
        body += _OFFSETS.pack(o.cells, o.bits, o.step) + pack_ids(np.asarray(o.codes, dtype=np.int64), o.bits)
    return body + struct.pack("<I", zlib.crc32(body))


def write_vat(path: str | Path, f: VatFile) -> int:
    """Write atomically; returns the file's size in bytes."""
    data = encode_vat(f)
    with atomic_path(path, suffix=".vat") as tmp:
        Path(tmp).write_bytes(data)
    return len(data)


def read_vat(path: str | Path, *, scales: tuple[int, ...] | None = None) -> VatFile:
    """Read and check a ``.vat`` file; with the model's ``scales`` (tokens per scale) also check that the ids fill
    exactly the kept scales."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MeshInputError(path, "does not exist") from None
    except IsADirectoryError:
        raise MeshInputError(path, "is a directory, expected a .vat file") from None
    except OSError as exc:
        raise MeshInputError(path, f"cannot read ({exc.strerror or exc})") from exc
    if len(data) < HEADER_BYTES + CRC_BYTES:
        raise MeshInputError(path, f"is not a .vat file ({len(data)} bytes, shorter than a header)")
    magic, version, bits, model_scales, kept, digest, cx, cy, cz, scale, n, code = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise MeshInputError(path, "is not a .vat file (wrong magic bytes)")
    if version not in (VERSION, VERSION_OFFSETS):
        raise MeshInputError(path, f"is a .vat file of format version {version}; this reader knows {VERSION} and "
                                   f"{VERSION_OFFSETS}")
    (crc,) = struct.unpack_from("<I", data, len(data) - CRC_BYTES)
    if zlib.crc32(data[:-CRC_BYTES]) != crc:
        raise MeshInputError(path, "is damaged (CRC mismatch: cut short or changed)")
    payload = data[HEADER_BYTES:-CRC_BYTES]
    n_bytes = -(-n * bits // 8)
    offsets = None
    if version == VERSION_OFFSETS:
        if bits < 1 or len(payload) < n_bytes + _OFFSETS.size:
            raise MeshInputError(path, f"holds {len(payload)} payload bytes, too few for {n} ids and an offset grid")
        cells, obits, step = _OFFSETS.unpack_from(payload, n_bytes)
        rest = payload[n_bytes + _OFFSETS.size:]
        if not 1 <= obits <= 8 or len(rest) != -(-cells**3 * obits // 8):
            raise MeshInputError(path, f"has an offset grid of {cells}^3 cells of {obits} bits in {len(rest)} bytes")
        try:
            offsets = OffsetGrid(int(cells), int(obits), float(step), unpack_ids(rest, obits, cells**3))
        except ValueError as exc:
            raise MeshInputError(path, f"has a bad offset grid ({exc})") from None
        payload = payload[:n_bytes]
    if bits < 1 or len(payload) != n_bytes:
        raise MeshInputError(path, f"holds {len(payload)} payload bytes for {n} ids of {bits} bits")
    if not 1 <= kept <= model_scales:
        raise MeshInputError(path, f"keeps {kept} of {model_scales} scales")
    if not (np.isfinite([cx, cy, cz, scale]).all() and scale > 0):
        raise MeshInputError(path, "has a non-finite or non-positive placement (centre / scale)")
    if scales is not None:
        if len(scales) != model_scales:
            raise MeshInputError(path, f"was made by a model of {model_scales} scales, this one has {len(scales)}")
        if n != sum(scales[:kept]):
            raise MeshInputError(path, f"holds {n} ids, the first {kept} scales have {sum(scales[:kept])}")
    if code == 65535:
        raise MeshInputError(path, "has a surface level of 1 (no surface can be extracted)")
    return VatFile(unpack_ids(payload, bits, n), int(bits), int(model_scales), int(kept), digest.hex(),
                   Normalization(center=(float(cx), float(cy), float(cz)), scale=float(scale)),
                   0.5 if code == 0 else code / 65535, offsets)
