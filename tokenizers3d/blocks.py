"""``blocks``: strips of adjacent faces, vertices as block + offset, repeated vertices as back-references.

The faces are covered by the same strips as :mod:`tokenizers3d.adjacent` (read its docstring for the
strip, the side flag and RESTART): a strip writes three *entries* for its first face, then one entry
per further face. What changes is how an entry names its vertex (in the spirit of BPT's block-wise
indexing, plus references):

* **reference** (1 token): the vertex was already written; ``d`` says which, counting back through the
  distinct vertices in the order they were first written (``d = 1`` is the newest). Only ``d <= K``
  (``window``) has a token; an older vertex is written again by coordinates.
* **coordinates** (``digits`` tokens, 2 for bits <= 10): with block size ``s``, each axis value
  ``q = block * s^(D-1) + offset`` is split into a coarse block index and ``D - 1`` base-``s`` digits; the
  three axes' blocks make one *block token*, the three axes' digits of each rank one *offset token*.

The side flag of the strip rides on the first token of every entry (reference or block), so a face
that continues a strip costs 1 token when its new vertex was seen before and 2 when it is new.

Grammar (n = 2^bits, D = ``digits``, s = ``block_size``, NB = ceil(n / s^(D-1)) blocks per axis)::

    sequence := BOS [strip (RESTART strip)*] EOS
    strip    := entry entry entry entry*          # first face (side 0), then one entry per face
    entry    := REF(side, d)                      # id side*K + (d - 1),        d in 1 .. K
              | BLOCK(side, bz, by, bx) OFFSET{D-1}  # id 2K + side*NB^3 + (bz*NB + by)*NB + bx
    OFFSET   := (oz*s + oy)*s + ox                # ids 0 .. s^3 - 1, most significant digit first

Vocabulary (ids by position in the grammar; the two kinds of position share the low ids, as the three
axes share them in ``coords``): entry-start ids ``0 .. 2K + 2 NB^3 - 1``, offset ids ``0 .. s^3 - 1``;
then, with ``M = max(2K + 2 NB^3, s^3)``: RESTART = M, PAD = M + 1, BOS = M + 2, EOS = M + 3
(``vocab_size = M + 4``). The default block size is the one that makes the vocabulary smallest: at 10
bits with K = 4096, s = 37 (28 blocks per axis), ``vocab_size`` = 52,100. A power-of-two block
(s = 32) would need 2 * 32^3 = 65,536 block ids for the side flag alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .adjacent import check_token, parse_strips, stable_argsort, strip_walk
from .base import DecodeReport, MeshTokenizer, ensure_canonical, finish_decode, locate_body, register_tokenizer
from .errors import TokenizationError
from .mesh import QuantizedMesh

DEFAULT_WINDOW = 4096


def default_digits(bits: int) -> int:
    """Tokens per written vertex: 2 up to 10 bits (vocabulary under 65,536), 3 above."""
    return 2 if bits <= 10 else 3


def _layout_size(bits: int, digits: int, window: int, block_size: int) -> int:
    """``M``: the number of ids below the structural specials (see the module docstring)."""
    n_blocks = -(-(1 << bits) // block_size ** (digits - 1))
    return max(2 * window + 2 * n_blocks**3, block_size**3)


def default_block_size(bits: int, digits: int, window: int) -> int:
    """The block size ``s`` with the smallest vocabulary (the largest such ``s`` on a tie)."""
    sizes = [s for s in range(2, (1 << bits) + 1) if s ** (digits - 1) <= 1 << bits]
    return min(sizes, key=lambda s: (_layout_size(bits, digits, window, s), -s))


def back_references(entries: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Which vertex entries can be written as a reference, and how far back.

    Parameters
    ----------
    entries : (E,) int
        Vertex index of each entry, in writing order.
    window : int
        ``K``, the furthest reference that has a token.

    Returns
    -------
    is_ref : (E,) bool
        The vertex was introduced before, at most ``window`` distinct vertices ago.
    dist : (E,) int64
        ``d``: 1 for the most recently introduced vertex, 2 for the one before, ...; 0 for an entry
        that introduces its vertex.
    """
    entries = np.asarray(entries, dtype=np.int64)
    if not len(entries):
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
    order, sorted_vertex = stable_argsort(entries)
    new = np.ones(len(entries), dtype=bool)
    new[1:] = sorted_vertex[1:] != sorted_vertex[:-1]
    first = np.zeros(len(entries), dtype=bool)
    first[order[new]] = True  # the first entry of each vertex (stable order)
    introduced = np.cumsum(first)  # distinct vertices introduced up to and including each entry
    slot = np.zeros(int(entries.max()) + 1, dtype=np.int64)
    slot[entries[first]] = np.arange(int(introduced[-1]))
    dist = np.where(first, 0, introduced - slot[entries])
    return ~first & (dist <= window), dist


@register_tokenizer("blocks")
class BlocksTokenizer(MeshTokenizer):
    """Strips of adjacent faces with block + offset vertices and 1-token back-references.

    Parameters
    ----------
    bits : int
        ``2^bits`` levels per axis, 6 to 12.
    window : int
        ``K``: how many of the most recently introduced vertices a reference token can name.
    digits : int or None
        Tokens for a vertex written by coordinates (block token + ``digits - 1`` offset tokens);
        default :func:`default_digits`.
    block_size : int or None
        ``s``, levels per block and axis at each offset digit; default :func:`default_block_size`.
    """

    def __init__(
        self, bits: int = 10, *, window: int = DEFAULT_WINDOW, digits: int | None = None, block_size: int | None = None
    ):
        super().__init__(bits)
        if int(window) < 1:
            raise ValueError(f"window must be at least 1, got {window!r}")
        self.window = int(window)
        self.digits = default_digits(self.bits) if digits is None else int(digits)
        if self.digits < 2:
            raise ValueError(f"digits must be at least 2, got {digits!r}")
        s = default_block_size(self.bits, self.digits, self.window) if block_size is None else int(block_size)
        if s < 2 or s ** (self.digits - 1) > (1 << self.bits):
            raise ValueError(f"block_size {block_size!r} does not fit {self.bits} bits with {self.digits} digits")
        self.block_size = s
        self.n_blocks = -(-(1 << self.bits) // s ** (self.digits - 1))
        self._m = _layout_size(self.bits, self.digits, self.window, s)

    # ---- vocabulary ---------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._m + 4

    @property
    def restart_id(self) -> int:
        return self._m

    @property
    def special_tokens(self) -> dict[str, int]:
        return {"restart": self.restart_id, **super().special_tokens}

    @property
    def n_offsets(self) -> int:
        return self.block_size**3

    @property
    def block_base(self) -> int:
        """First block id; ids below it are references."""
        return 2 * self.window

    @property
    def config(self) -> dict:
        return {**super().config, "window": self.window, "digits": self.digits, "block_size": self.block_size}

    # ---- coordinates <-> block and offset tokens ---------------------------------------------------
    def split_coords(self, zyx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grid points (N, 3) as z, y, x -> packed block (N,) and offset tokens (N, digits - 1)."""
        s, nb = self.block_size, self.n_blocks
        zyx = np.asarray(zyx, dtype=np.int64)
        scale = s ** (self.digits - 1)
        blk = zyx // scale
        block = (blk[:, 0] * nb + blk[:, 1]) * nb + blk[:, 2]
        rem = zyx % scale
        offsets = np.empty((len(zyx), self.digits - 1), dtype=np.int64)
        for k in range(self.digits - 1):
            dig = (rem // s ** (self.digits - 2 - k)) % s
            offsets[:, k] = (dig[:, 0] * s + dig[:, 1]) * s + dig[:, 2]
        return block, offsets

    def join_coords(self, block: int, offsets: Sequence[int]) -> tuple[int, int, int]:
        """Inverse of :meth:`split_coords` for one vertex -> (z, y, x)."""
        s, nb = self.block_size, self.n_blocks
        z, rest = divmod(block, nb * nb)
        y, x = divmod(rest, nb)
        for off in offsets:
            oz, rest = divmod(off, s * s)
            oy, ox = divmod(rest, s)
            z, y, x = z * s + oz, y * s + oy, x * s + ox
        return z, y, x

    # ---- core -----------------------------------------------------------------------------------
    def encode_quantized(self, qm: QuantizedMesh) -> np.ndarray:
        """Canonical quantized mesh -> ids (T,) int64 including BOS and EOS."""
        qm = ensure_canonical(qm, self.bits)
        walk = strip_walk(qm.faces, len(qm.vertices))
        ev = walk.vertex
        is_ref, dist = back_references(ev, self.window)
        rows = np.full((len(ev), self.digits + 1), -1, dtype=np.int64)
        rows[walk.restart, 0] = self.restart_id
        rows[is_ref, 1] = walk.side[is_ref] * self.window + dist[is_ref] - 1
        written = np.flatnonzero(~is_ref)
        block, offsets = self.split_coords(np.asarray(qm.vertices, dtype=np.int64)[ev[written]][:, ::-1])
        rows[written, 1] = self.block_base + walk.side[written] * self.n_blocks**3 + block
        rows[written, 2:] = offsets
        flat = rows.reshape(-1)
        return np.concatenate([[self.bos_id], flat[flat >= 0], [self.eos_id]]).astype(np.int64)

    def decode_quantized(
        self, ids: Sequence[int] | np.ndarray, *, strict: bool = True
    ) -> tuple[QuantizedMesh, DecodeReport]:
        """Token ids -> canonical quantized mesh; ``strict`` as in :meth:`CoordsTokenizer.decode_quantized`.

        Malformed: a missing BOS/EOS, a RESTART that does not follow a complete face, an id outside the
        range its place in the grammar allows, a reference further back than the vertices written so
        far, a coordinate off the grid, a side flag on a strip's first face, a face cut short by the end
        of the body, a degenerate or repeated face.
        """
        body = locate_body(self, ids, strict=strict)
        ids_list = body.ids.tolist()
        stop, levels = body.stop, 1 << self.bits
        k, base, n_block_ids = self.window, self.block_base, self.n_blocks**3
        n_off, n_digits = self.n_offsets, self.digits - 1
        index: dict[tuple[int, int, int], int] = {}

        def read_entry(i: int) -> tuple[int, int, int]:
            t = ids_list[i]
            if 0 <= t < base:
                side, back = divmod(t, k)
                if back >= len(index):
                    raise TokenizationError(f"reference {back + 1} back, but only {len(index)} vertices written", i)
                return len(index) - 1 - back, side, i + 1
            if not base <= t < base + 2 * n_block_ids:
                raise TokenizationError(f"token {t} where a vertex was expected", i)
            side, block = divmod(t - base, n_block_ids)
            offsets = []
            for j in range(i + 1, i + 1 + n_digits):
                tj = ids_list[j] if j < stop else -1
                check_token(tj, n_off, j, stop, "an offset")
                offsets.append(tj)
            z, y, x = self.join_coords(block, offsets)
            if max(z, y, x) >= levels:
                raise TokenizationError(f"vertex ({z}, {y}, {x}) lies off the {levels}-level grid", i)
            return index.setdefault((x, y, z), len(index)), side, i + 1 + n_digits

        faces, face_pos, parsed_stop, error = parse_strips(body, self.restart_id, read_entry)
        vertices = np.asarray(list(index), dtype=np.int64).reshape(-1, 3)
        return finish_decode(
            self, body, vertices, faces, face_pos, parsed_stop=parsed_stop, body_error=error, strict=strict
        )
