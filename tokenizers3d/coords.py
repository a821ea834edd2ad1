"""``coords``: the plain face-sequence serialization of PolyGen, MeshGPT and Meshtron.

Grammar (b = ``bits``, n = 2^b)::

    sequence := BOS face* EOS
    face     := vertex vertex vertex          # the face's corners in winding order
    vertex   := z y x                         # quantized coordinates, ids 0 .. n-1

Faces come in canonical order (see :mod:`tokenizers3d.mesh`): vertices sorted by (z, y, x), each face
rotated so its lowest vertex comes first, faces sorted lexicographically. So every face costs exactly
:attr:`CoordsTokenizer.TOKENS_PER_FACE` = 9 tokens and a token's role depends only on its position
(:meth:`CoordsTokenizer.token_roles`). Vocabulary: ``n`` coordinate ids, then PAD = n, BOS = n + 1,
EOS = n + 2 (``vocab_size = n + 3``). This layout is a contract with the generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import Body, DecodeReport, MeshTokenizer, ensure_canonical, finish_decode, locate_body, register_tokenizer
from .errors import TokenizationError
from .mesh import QuantizedMesh

AXIS_NAMES = ("z", "y", "x")


def _first_invalid(body: np.ndarray, levels: int, vocab_size: int) -> tuple[int, str] | None:
    """Index in ``body`` (1-D int) of the first id that is not a coordinate, with the reason."""
    bad = np.flatnonzero((body < 0) | (body >= levels))
    if not len(bad):
        return None
    i = int(bad[0])
    token = int(body[i])
    reason = "special token inside the body" if 0 <= token < vocab_size else f"token id {token} out of range"
    return i, reason


def _unique_points(points: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct grid points of ``points`` (n, 3) int and the index (n,) of each point among them."""
    points = np.asarray(points, dtype=np.int64).reshape(-1, 3)
    key = (points[:, 0] << (2 * bits)) | (points[:, 1] << bits) | points[:, 2]
    uniq, inverse = np.unique(key, return_inverse=True)
    mask = (1 << bits) - 1
    vertices = np.stack([uniq >> (2 * bits), (uniq >> bits) & mask, uniq & mask], axis=1)
    return vertices, inverse.reshape(-1)


@register_tokenizer("coords")
class CoordsTokenizer(MeshTokenizer):
    """Nine tokens per face: for each face, its three vertices as (z, y, x) grid coordinates.

    Parameters
    ----------
    bits : int
        Quantization levels per axis are ``2^bits``; 7 to 10 are typical, 6 to 12 are allowed.
    """

    TOKENS_PER_VERTEX = 3
    TOKENS_PER_FACE = 9

    def __init__(self, bits: int = 10):
        super().__init__(bits)

    @property
    def vocab_size(self) -> int:
        return (1 << self.bits) + 3

    # ---- layout helpers -----------------------------------------------------------------------
    @classmethod
    def face_boundaries(cls, n_tokens: int) -> np.ndarray:
        """Fence posts of the faces in a sequence (or prefix) of ``n_tokens`` tokens starting with BOS.

        Returns
        -------
        (k,) int64
            Every position ``1 + 9 j`` below ``n_tokens``: face ``j`` occupies ``[b[j], b[j + 1])``; in a
            complete sequence of F faces the last post, ``9 F + 1``, is the position of EOS.
        """
        return np.arange(1, max(int(n_tokens), 1), cls.TOKENS_PER_FACE, dtype=np.int64)

    @classmethod
    def token_roles(cls, n_tokens: int) -> np.ndarray:
        """Role of each position of a sequence (or prefix) that starts with BOS.

        Returns
        -------
        (n_tokens, 3) int64
            Columns face index, vertex in face (0..2), axis (0 = z, 1 = y, 2 = x); ``-1`` for BOS. A
            position past the last face (where EOS sits) gets the role of the next face's first token.
        """
        pos = np.arange(int(n_tokens), dtype=np.int64) - 1
        roles = np.stack(
            [
                pos // cls.TOKENS_PER_FACE,
                (pos % cls.TOKENS_PER_FACE) // cls.TOKENS_PER_VERTEX,
                pos % cls.TOKENS_PER_VERTEX,
            ],
            axis=1,
        )
        roles[pos < 0] = -1
        return roles

    # ---- core -----------------------------------------------------------------------------------
    def encode_quantized(self, qm: QuantizedMesh) -> np.ndarray:
        """Canonical quantized mesh -> ``[BOS] + 9 F coordinate ids + [EOS]`` (int64)."""
        qm = ensure_canonical(qm, self.bits)
        corners = np.asarray(qm.vertices, dtype=np.int64)[:, ::-1][qm.faces]  # (F, 3, 3) as z, y, x
        ids = np.empty(corners.size + 2, dtype=np.int64)
        ids[0], ids[-1] = self.bos_id, self.eos_id
        ids[1:-1] = corners.reshape(-1)
        return ids

    def decode_quantized(
        self, ids: Sequence[int] | np.ndarray, *, strict: bool = True
    ) -> tuple[QuantizedMesh, DecodeReport]:
        """Token ids -> canonical quantized mesh.

        Parameters
        ----------
        ids : (T,) int
            ``[BOS] + body + [EOS]``, optionally followed by PAD tokens.
        strict : bool
            Raise :class:`~tokenizers3d.errors.TokenizationError` (with the position of the first bad
            token) on a missing BOS/EOS, an id that is not a coordinate inside the body, a body whose
            length is not a multiple of 9, or a degenerate or repeated face. When False, keep the complete
            faces before the first bad token, drop the rest, and clean the result up (equal vertices
            merged, degenerate and repeated faces dropped); the :class:`DecodeReport` says what was lost.
        """
        body = locate_body(self, ids, strict=strict)
        vertices, faces, face_pos, parsed_stop, error = self._parse_body(body)
        return finish_decode(
            self, body, vertices, faces, face_pos, parsed_stop=parsed_stop, body_error=error, strict=strict
        )

    def _parse_body(self, body: Body):
        """Complete faces of the body up to its first malformed token (vectorized)."""
        tokens = body.ids[body.start : body.stop]
        error = None
        usable = len(tokens)
        bad = _first_invalid(tokens, 1 << self.bits, self.vocab_size)
        if bad is not None:
            usable = bad[0]
            error = TokenizationError(bad[1], body.start + bad[0])
        n_faces = usable // self.TOKENS_PER_FACE
        if error is None and usable % self.TOKENS_PER_FACE:
            error = TokenizationError(
                f"body length {usable} is not a multiple of {self.TOKENS_PER_FACE} (incomplete last face)",
                body.start + n_faces * self.TOKENS_PER_FACE,
            )
        corners = tokens[: n_faces * self.TOKENS_PER_FACE].reshape(-1, 3)[:, ::-1]  # (3 F, 3) as x, y, z
        vertices, inverse = _unique_points(corners, self.bits)
        faces = inverse.reshape(-1, 3)
        face_pos = body.start + self.TOKENS_PER_FACE * np.arange(n_faces, dtype=np.int64)
        parsed_stop = body.start + n_faces * self.TOKENS_PER_FACE
        return vertices, faces, face_pos, parsed_stop, error
