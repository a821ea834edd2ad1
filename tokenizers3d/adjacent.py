"""``adjacent``: strips of edge-adjacent faces, one new vertex per face (after MeshAnything V2's AMT).

The faces of the canonical mesh are covered by *strips*. A strip starts with a whole face (its three
corners in winding order); every further face shares an edge with the face before it, so only its
third vertex is written. For a face ``(p, q, r)`` whose newest corner is ``r`` (the first face of a
strip is read as ``p, q, r`` in writing order), the next face lies across one of the two edges that
hold ``r``; its *side* says which, and its winding follows from consistent orientation::

    side 0: across q -> r, next face (r, q, w)
    side 1: across r -> p, next face (p, r, w)     # repeated side 1 = a fan around p

Standard triangle strips alternate the sides, fans repeat side 1. When no unvisited face lies on
either edge, a RESTART token starts a new strip. Faces that share an edge with opposite windings
(inconsistent orientation) or that have no neighbour are reached through restarts, so every clean
mesh can be written.

Grammar (b = ``bits``, n = 2^b)::

    sequence := BOS [strip (RESTART strip)*] EOS
    strip    := vertex0 vertex0 vertex0 vertex*   # first face, then one vertex per face
    vertex0  := z y x                              # side 0: z in 0 .. n-1
    vertex   := (z + side * n) y x                 # side in {0, 1}: first token in 0 .. 2n-1

Vocabulary: ``0 .. 2n - 1`` coordinates (with the side folded into z), then RESTART = 2n, PAD = 2n + 1,
BOS = 2n + 2, EOS = 2n + 3 (``vocab_size = 2n + 4``).

The strip cover is chosen greedily (start at faces with at most one unvisited neighbour, continue to
the neighbour with fewer unvisited neighbours) and is deterministic. :func:`strip_walk` is shared with
:mod:`tokenizers3d.blocks`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .base import Body, DecodeReport, MeshTokenizer, ensure_canonical, finish_decode, locate_body, register_tokenizer
from .errors import TokenizationError
from .mesh import QuantizedMesh

if TYPE_CHECKING:  # SciPy is imported by the encoder, where it is used: decoding needs none
    import scipy.sparse as sp


@dataclass
class StripWalk:
    """A cover of a mesh's faces by strips, as the sequence of vertex *entries* to write.

    Attributes
    ----------
    vertex : (E,) int64
        Vertex index of each entry: three per strip start, then one per further face.
    side : (E,) int64
        0 or 1 for an entry that continues a strip (see the module docstring); 0 for strip-start entries.
    restart : (E,) bool
        True on the first entry of every strip but the first (a RESTART token comes before it).
    face : (F,) int64
        The faces in writing order (indices into the mesh's faces).
    """

    vertex: np.ndarray
    side: np.ndarray
    restart: np.ndarray
    face: np.ndarray

    @property
    def n_strips(self) -> int:
        return int(self.restart.sum()) + int(len(self.face) > 0)


def stable_argsort(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stable ``argsort`` of a non-negative int64 ``key`` and the sorted keys; a plain sort of
    ``key * len + index`` (unique, so any sort algorithm gives the same answer) when that fits in int64."""
    m = max(len(key), 1)
    if len(key) and int(key.max()) < (np.iinfo(np.int64).max - m) // m:
        packed = np.sort(key * m + np.arange(len(key)))
        return packed % m, packed // m
    order = np.argsort(key, kind="stable")
    return order, key[order]


def _opposite_half_edges(faces: np.ndarray, n_vertices: int):
    """Pair every half-edge with the half-edges that run the other way along the same edge.

    Half-edge ``3 f + i`` runs ``faces[f, i] -> faces[f, (i + 1) % 3]``.

    Returns
    -------
    k, h : (P,) int64
        All pairs (half-edge, opposite half-edge); both orders of each pair are listed.
    first : (3F,) int64
        The lowest-index opposite of each half-edge, or -1 (a border edge).
    """
    u = faces.reshape(-1)
    v = faces[:, [1, 2, 0]].reshape(-1)
    n = max(int(n_vertices), 1)
    key = (np.minimum(u, v) * n + np.maximum(u, v)) * 2 + (u > v)
    order, skey = stable_argsort(key)
    edge, direction = skey >> 1, skey & 1
    same = edge[1:] == edge[:-1]
    first = np.full(len(u), -1, dtype=np.int64)
    if not np.any(same[1:] & same[:-1]):  # no edge has more than two half-edges: pair neighbours in order
        i = np.flatnonzero(same & (direction[1:] != direction[:-1]))
        a, b = order[i], order[i + 1]
        first[a], first[b] = b, a
        return np.concatenate([a, b]), np.concatenate([b, a]), first
    new_edge = np.ones(len(skey), dtype=bool)
    new_edge[1:] = ~same
    gid = np.cumsum(new_edge) - 1
    gstart = np.flatnonzero(new_edge)
    n_back = np.bincount(gid, weights=direction).astype(np.int64)  # per edge: half-edges with u > v
    n_fwd = np.diff(np.append(gstart, len(skey))) - n_back
    # in sorted order an edge's forward half-edges come first, then its backward ones
    pstart = np.where(direction == 0, gstart[gid] + n_fwd[gid], gstart[gid])
    plen = np.where(direction == 0, n_back[gid], n_fwd[gid])
    k = np.repeat(order, plen)
    h = order[np.repeat(pstart - np.cumsum(plen) + plen, plen) + np.arange(int(plen.sum()))]
    first[order] = np.where(plen > 0, order[np.minimum(pstart, len(order) - 1)], -1)
    return k, h, first


def _face_graph(k: np.ndarray, h: np.ndarray, first: np.ndarray, n_faces: int) -> sp.csr_matrix:
    """Face adjacency (F + 1, F + 1): each face's neighbours in ascending order, then a virtual root node F
    linked to every face, faces with fewer neighbours first (ties by index)."""
    degree = np.bincount(k // 3, minlength=n_faces)
    roots = stable_argsort(degree)[0]
    if len(k) == int(np.count_nonzero(first >= 0)):  # at most one neighbour per edge: a (F, 3) table
        nb = np.sort(np.where(first >= 0, first // 3, n_faces).reshape(-1, 3), axis=1)
        nb = nb[nb < n_faces]
    else:
        fk, fh = k // 3, h // 3
        nb = fh[np.lexsort((fh, fk))]
    indices = np.concatenate([nb, roots])
    indptr = np.concatenate([[0], np.cumsum(degree), [len(indices)]])
    import scipy.sparse as sp

    # float data: scipy keeps the given (unsorted) root order only when it need not convert the matrix
    return sp.csr_matrix((np.ones(len(indices)), indices, indptr), shape=(n_faces + 1, n_faces + 1))


def _tree_edges(order: np.ndarray, parent: np.ndarray, first: np.ndarray, k: np.ndarray, h: np.ndarray):
    """For each face (in writing order) with a parent: its slot toward the parent, the parent's slot toward it.

    Returns
    -------
    pe, ce : (F,) int64
        Slots 0..2 in the face and in its parent (-1 for faces without a parent).
    """
    half = 3 * order
    pe = np.full(len(order), -1, dtype=np.int64)
    ce = np.full(len(order), -1, dtype=np.int64)
    for slot in (2, 1, 0):
        opposite = first[half + slot]
        hit = (opposite // 3 == parent) & (parent >= 0)  # -1 // 3 = -1 marks a border
        pe[hit] = slot
        ce[hit] = opposite[hit] % 3
    found = pe >= 0
    for t in np.flatnonzero(~found & (parent >= 0)):  # reached through a second opposite (non-manifold edge)
        g, p = int(order[t]), int(parent[t])
        hit = np.flatnonzero((k // 3 == g) & (h // 3 == p))[0]
        pe[t], ce[t] = k[hit] % 3, h[hit] % 3
    return pe, ce


def strip_walk(faces: np.ndarray, n_vertices: int) -> StripWalk:
    """Deterministic cover of ``faces`` by strips (see the module docstring), vectorized.

    The strips are the runs of a depth-first order of the face adjacency graph (faces linked across
    edges with consistent orientation): a face continues the strip when it comes right after its
    parent in the depth-first tree, and starts a new strip otherwise. The search visits neighbours in
    ascending face order and starts each connected component at a face with the fewest neighbours.

    Parameters
    ----------
    faces : (F, 3) int
        Faces of a clean mesh (no degenerate or repeated face).
    n_vertices : int

    Returns
    -------
    StripWalk
    """
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    n_faces = len(faces)
    if n_faces == 0:
        empty = np.zeros(0, dtype=np.int64)
        return StripWalk(empty, empty.copy(), np.zeros(0, dtype=bool), empty.copy())
    from scipy.sparse.csgraph import depth_first_order

    k, h, first = _opposite_half_edges(faces, n_vertices)
    visit, pred = depth_first_order(_face_graph(k, h, first, n_faces), n_faces, return_predecessors=True)
    order = visit[1:].astype(np.int64)  # faces in writing order
    parent = pred[order].astype(np.int64)
    parent[parent == n_faces] = -1
    pe, ce = _tree_edges(order, parent, first, k, h)
    pe_of_face = np.full(n_faces, -1, dtype=np.int64)
    pe_of_face[order] = pe
    follows = np.zeros(n_faces, dtype=bool)
    follows[1:] = parent[1:] == order[:-1]
    # conservative on non-manifold edges: never leave a face through the edge it was entered by
    cont = follows & (ce != pe_of_face[np.maximum(parent, 0)])
    nxt_ce = np.append(np.where(cont[1:], ce[1:], -1), -1)
    start_slot = np.where(nxt_ce >= 0, (nxt_ce + 2) % 3, 0)  # closed edge p -> q of a strip's first face
    att = np.where(cont, pe, start_slot)  # slot of the edge each face is attached by (p -> q)
    side = np.zeros(n_faces, dtype=np.int64)
    side[1:] = ce[1:] != (att[:-1] + 1) % 3
    n_entries = np.where(cont, 1, 3)
    at = np.repeat(np.arange(n_faces), n_entries)
    j = np.arange(len(at)) - np.repeat(np.cumsum(n_entries) - n_entries, n_entries)
    starts = ~cont[at]
    corner = np.where(starts, att[at] + j, att[at] + 2) % 3
    return StripWalk(
        faces[order[at], corner],
        np.where(starts, 0, side[at]),
        starts & (j == 0) & (at > 0),
        order,
    )


# An entry reader takes the position of an entry's first token and returns (vertex id, side, next position);
# it raises TokenizationError at the first bad token.
EntryReader = Callable[[int], tuple[int, int, int]]


def parse_strips(body: Body, restart_id: int, read_entry: EntryReader):
    """Read the faces of a strip-structured body up to its first malformed token.

    Returns
    -------
    faces : (F, 3) int64, face_pos : (F,) int64, parsed_stop : int, error : TokenizationError or None
    """
    ids = body.ids
    stop = body.stop
    faces: list[tuple[int, int, int]] = []
    face_pos: list[int] = []
    i = body.start
    parsed_stop = i
    pending: list[int] = []  # corners read so far of a strip's first face
    face_start = i  # position of the strip's RESTART token, or of its first corner
    in_start = True  # reading the three corners of a strip's first face
    p = q = r = -1
    try:
        while i < stop:
            if ids[i] == restart_id:
                if in_start:
                    raise TokenizationError("RESTART must follow a complete face", i)
                in_start, face_start = True, i
                i += 1
                continue
            entry_pos = i
            vertex, side, i = read_entry(i)
            if in_start:
                if side:
                    raise TokenizationError("side flag set on a strip's first face", entry_pos)
                pending.append(vertex)
                if len(pending) < 3:
                    continue
                p, q, r = pending
                pending, in_start = [], False
                faces.append((p, q, r))
                face_pos.append(face_start)
            else:
                if side:
                    p, q, r = p, r, vertex
                else:
                    p, q, r = r, q, vertex
                faces.append((p, q, r))
                face_pos.append(entry_pos)
            parsed_stop = i
        if in_start and (pending or parsed_stop != i):
            raise TokenizationError("sequence ends inside a face", stop)
        error = None
    except TokenizationError as exc:
        error = exc
    return (
        np.asarray(faces, dtype=np.int64).reshape(-1, 3),
        np.asarray(face_pos, dtype=np.int64),
        parsed_stop,
        error,
    )


def check_token(token: int, hi: int, pos: int, stop: int, what: str) -> None:
    """Raise TokenizationError unless ``0 <= token < hi``; ``pos == stop`` means the body ended early."""
    if pos >= stop:
        raise TokenizationError(f"sequence ends inside a vertex (expected {what})", stop)
    if not 0 <= token < hi:
        raise TokenizationError(f"token {token} where {what} was expected", pos)


@register_tokenizer("adjacent")
class AdjacentTokenizer(MeshTokenizer):
    """Strips of adjacent faces; a vertex is three coordinate tokens, the strip side rides on z.

    Parameters
    ----------
    bits : int
        ``2^bits`` levels per axis, 6 to 12.
    """

    def __init__(self, bits: int = 10):
        super().__init__(bits)

    @property
    def levels(self) -> int:
        return 1 << self.bits

    @property
    def restart_id(self) -> int:
        return 2 * self.levels

    @property
    def vocab_size(self) -> int:
        return 2 * self.levels + 4

    @property
    def special_tokens(self) -> dict[str, int]:
        return {"restart": self.restart_id, **super().special_tokens}

    def encode_quantized(self, qm: QuantizedMesh) -> np.ndarray:
        """Canonical quantized mesh -> ids (T,) int64 including BOS and EOS."""
        qm = ensure_canonical(qm, self.bits)
        walk = strip_walk(qm.faces, len(qm.vertices))
        rows = np.full((len(walk.vertex), 4), -1, dtype=np.int64)
        rows[walk.restart, 0] = self.restart_id
        rows[:, 1:] = np.asarray(qm.vertices, dtype=np.int64)[walk.vertex][:, ::-1]
        rows[:, 1] += walk.side * self.levels
        flat = rows.reshape(-1)
        return np.concatenate([[self.bos_id], flat[flat >= 0], [self.eos_id]]).astype(np.int64)

    def decode_quantized(
        self, ids: Sequence[int] | np.ndarray, *, strict: bool = True
    ) -> tuple[QuantizedMesh, DecodeReport]:
        """Token ids -> canonical quantized mesh; ``strict`` as in :meth:`CoordsTokenizer.decode_quantized`.

        Malformed: a missing BOS/EOS, a RESTART that does not follow a complete face, an id outside the
        range its place in the grammar allows, a side flag on a strip's first face, a face cut short by the
        end of the body, a degenerate or repeated face.
        """
        body = locate_body(self, ids, strict=strict)
        ids_list = body.ids.tolist()
        stop, n = body.stop, self.levels
        index: dict[tuple[int, int, int], int] = {}

        def read_entry(i: int) -> tuple[int, int, int]:
            t0 = ids_list[i]
            check_token(t0, 2 * n, i, stop, "a z coordinate")
            t1 = ids_list[i + 1] if i + 1 < stop else -1
            check_token(t1, n, i + 1, stop, "a y coordinate")
            t2 = ids_list[i + 2] if i + 2 < stop else -1
            check_token(t2, n, i + 2, stop, "an x coordinate")
            xyz = (t2, t1, t0 % n)
            vertex = index.setdefault(xyz, len(index))
            return vertex, t0 // n, i + 3

        faces, face_pos, parsed_stop, error = parse_strips(body, self.restart_id, read_entry)
        vertices = np.asarray(list(index), dtype=np.int64).reshape(-1, 3)
        return finish_decode(
            self, body, vertices, faces, face_pos, parsed_stop=parsed_stop, body_error=error, strict=strict
        )
