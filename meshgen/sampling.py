"""Order-enforcing logit masks and the sampling controls (temperature, top-k, top-p).

A ``coords`` body is a list of faces, 9 tokens each: vertices ``v0, v1, v2``, each ``(z, y, x)``. The
tokenizer's canonical order makes a valid sequence exactly one in which, writing ``<`` for the
lexicographic order of ``(z, y, x)`` tuples (= vertex-index order):

1. ``v0 < v1`` and ``v0 < v2`` (a face starts at its lowest vertex), ``v1 != v2``;
2. the face is not degenerate: ``v0, v1, v2`` not collinear (zero area);
3. faces strictly increase as 9-tuples ``(v0, v1, v2)`` -- i.e. the 9 tokens read as a string;
4. no face repeats its vertex set with the other winding (``(v0, v2, v1)`` after ``(v0, v1, v2)``);
5. EOS comes only at a face boundary, after at least one face.

:class:`FaceConstraint` is a state machine over the emitted tokens that returns, before every token,
the exact set of ids after which the current face can still be completed: a value is allowed iff
some valid face starts with the prefix so far plus that value. Vertices are handled as ranks
``r = z n^2 + y n + x`` (the lexicographic order), and each digit of the current vertex selects an
interval of ranks; a value is allowed iff its interval holds an allowed rank. The allowed ranks of a
vertex are always "at least a bound, minus a short sorted list of exceptions", so one mask costs
``O(n)`` numpy work, and EOS at a face boundary means generation never gets stuck.

With ``edges_once`` the constraint also prefers what an oriented manifold mesh needs: no directed edge
(``v0 -> v1``, ``v1 -> v2``, ``v2 -> v0``) twice, so an edge joins at most two faces, wound opposite ways. It is a
narrowing of the exact sets above, dropped for a vertex where it would leave nothing, so it never makes a sequence
invalid or stuck (:func:`edges_once_for` picks the rows of a batch that get it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .modeling import coord_layout


# ---- sampling controls ----------------------------------------------------------------------------
def filter_logits(
    logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Scale by temperature and keep the top-k / nucleus (top-p) tokens of ``logits (B, V)``; others -> -inf."""
    logits = logits.float() / max(temperature, 1e-6)
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # keep the smallest prefix reaching top_p
        drop[:, 0] = False
        logits = logits.masked_fill(drop.scatter(1, idx, drop), float("-inf"))
    return logits


def sample_next(
    logits: torch.Tensor,
    *,
    allowed: torch.Tensor | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample one id per row of ``logits (B, V)``; ``allowed (B, V)`` bool masks the rest out first.

    ``temperature == 0`` is greedy (argmax over the allowed ids).
    """
    logits = logits.float()
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    probs = logits.softmax(dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)


def cfg_mix(logits: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``logits (2B, V)`` = conditional rows then unconditional rows -> ``(B, V)``.

    Returns ``l_u + scale (l_c - l_u)`` in float32; ``scale = 1`` gives the conditional logits.
    """
    if logits.shape[0] % 2:
        raise ValueError(f"classifier-free guidance needs an even number of rows, got {logits.shape[0]}")
    cond, uncond = logits.float().chunk(2, dim=0)  # (B, V) each
    return uncond + scale * (cond - uncond)


EDGE_RULE_ROWS = ("off", "guided", "all")  # which rows of a batch get FaceConstraint's directed-edge rule


def check_edges_once(edges_once: str, name: str = "edges_once") -> str:
    """``edges_once`` if it is one of :data:`EDGE_RULE_ROWS`; else a ``ValueError`` naming the option ``name``."""
    if edges_once not in EDGE_RULE_ROWS:
        raise ValueError(f"{name} must be one of {', '.join(EDGE_RULE_ROWS)}, got {edges_once!r}")
    return edges_once


def edges_once_for(edges_once: str, guided: bool) -> bool:
    """Whether a row (sampled with point guidance or not) gets the directed-edge rule under ``edges_once``:
    ``"off"``, ``"guided"`` (rows with point guidance, whose narrowed masks otherwise turn a face the model meant to
    repeat into a sliver one cell over: the same two first vertices, the third moved) or ``"all"``.

    Raises
    ------
    ValueError
        ``edges_once`` is none of :data:`EDGE_RULE_ROWS` (:func:`check_edges_once`).
    """
    check_edges_once(edges_once)
    return edges_once == "all" or (edges_once == "guided" and guided)


# ---- geometry helpers -----------------------------------------------------------------------------
def digit_mask(
    n: int, digits: Sequence[int], lb: int, bad: np.ndarray, candidates: np.ndarray | None = None
) -> np.ndarray:
    """``(n,)`` bool: next digits of a vertex whose rank interval holds an allowed rank.

    A vertex rank ``r = z n^2 + y n + x`` is allowed iff ``r >= lb``, ``r`` is not in ``bad`` (sorted, unique)
    and, when ``candidates`` (sorted, unique int64) is given, ``r`` is one of them. ``digits`` are the
    vertex's digits written so far, so value ``t`` selects ranks ``base + t span .. base + (t + 1) span - 1``.
    Costs ``O(n log len(candidates) + len(bad) log len(candidates))``.
    """
    c = len(digits)
    span = n ** (2 - c)
    base = sum(d * n ** (2 - i) for i, d in enumerate(digits))
    lo = base + np.arange(n, dtype=np.int64) * span  # (n,) rank interval of each value
    hi = lo + span - 1
    lo = np.maximum(lo, lb)
    if candidates is None:
        count = hi - lo + 1
    else:
        count = np.searchsorted(candidates, hi, side="right") - np.searchsorted(candidates, lo, side="left")
        if len(bad) and len(candidates):
            j = np.minimum(np.searchsorted(candidates, bad), len(candidates) - 1)
            bad = bad[candidates[j] == bad]  # only exceptions that are candidates count
    count = count - (np.searchsorted(bad, hi, side="right") - np.searchsorted(bad, lo, side="left"))
    return (hi >= lo) & (count > 0)


def _collinear(a: tuple, b: tuple, c: tuple) -> bool:
    u = (b[0] - a[0], b[1] - a[1], b[2] - a[2])
    w = (c[0] - a[0], c[1] - a[1], c[2] - a[2])
    return u[1] * w[2] == u[2] * w[1] and u[2] * w[0] == u[0] * w[2] and u[0] * w[1] == u[1] * w[0]


class FaceConstraint:
    """Allowed next ids for one ``coords`` sequence (body only: feed tokens after BOS with :meth:`push`).

    Parameters
    ----------
    bits : int
        Coordinate bits (``n = 2^bits`` values per axis). ``levels`` overrides ``n`` (tests use tiny grids).
    max_faces : int or None
        After this many faces only EOS is allowed.
    edges_once : bool
        Also refuse a directed edge (``v0 -> v1``, ``v1 -> v2``, ``v2 -> v0``) that an earlier face already has,
        so every edge joins at most two faces, wound opposite ways -- what an oriented manifold mesh needs
        (a face of the same two first vertices as the one before it is the usual start of a triangle soup). A
        preference, never a dead end: when it would leave a vertex no allowed rank, that vertex is sampled under
        the order rules alone (counted in :attr:`edge_fallbacks`).
    """

    def __init__(self, bits: int = 7, *, max_faces: int | None = None, levels: int | None = None,
                 edges_once: bool = False):
        self.edges_once = edges_once
        self.out_edges: dict[int, set[int]] = {}  # rank -> ranks it has a written directed edge to
        self.in_edges: dict[int, set[int]] = {}  # rank -> ranks with a written directed edge to it
        self.edge_fallbacks = 0
        self.vocab = coord_layout(bits)
        self.n = levels if levels is not None else self.vocab.n
        self.top = self.n**3  # number of ranks
        self.max_faces = max_faces
        self.prev: tuple[int, int, int] | None = None  # ranks of the previous face
        self.group: set[tuple[int, int]] = set()  # (r1, r2) of emitted faces whose r0 == prev[0]
        self.cur: list[int] = []  # digits of the face being written
        self.n_faces = 0
        self.finished = False
        self._domain: tuple[int, np.ndarray] | None = None  # (lower bound, sorted exceptions) of this vertex

    # -- ranks ---------------------------------------------------------------------------------------
    def _rank(self, v: Sequence[int]) -> int:
        return (v[0] * self.n + v[1]) * self.n + v[2]

    def _unrank(self, r: int) -> tuple[int, int, int]:
        n = self.n
        return (r // (n * n), (r // n) % n, r % n)

    def _ray(self, v0: tuple, v1: tuple) -> tuple[int, int]:
        """(delta, K): lattice points ``v0 + t d`` (d primitive along v1 - v0, t = 1..K) have rank r0 + t delta."""
        diff = [b - a for a, b in zip(v0, v1, strict=True)]
        g = math.gcd(*diff)
        d = [c // g for c in diff]
        delta = self._rank(d)  # rank is linear in the coordinates
        k = min((self.n - 1 - a) // c if c > 0 else a // -c for a, c in zip(v0, d, strict=True) if c != 0)
        return delta, k

    def _exclusions(self, r1: int) -> set[int]:
        """v2 ranks that would repeat an emitted face's vertex set (only within the current v0 group)."""
        return {a for a, b in self.group if b == r1} | {b for a, b in self.group if a == r1}

    def _v2_count(self, r0: int, r1: int, tight0: bool) -> int:
        """Number of valid v2 ranks for a full (v0, v1)."""
        tight01 = tight0 and r1 == self.prev[1]
        low = max(r0, self.prev[2]) if tight01 else r0  # v2 rank must exceed this
        v0, v1 = self._unrank(r0), self._unrank(r1)
        delta, k = self._ray(v0, v1)
        on_line = max(0, k - (low - r0) // delta)  # line points above `low` (r1 is one of them)
        extra = 0
        if tight0:
            for x in self._exclusions(r1):
                if x > low and not _collinear(v0, v1, self._unrank(x)):
                    extra += 1
        return (self.top - 1 - low) - on_line - extra

    def _v1_domain(self, r0: int) -> tuple[int, np.ndarray]:
        tight0 = self.prev is not None and r0 == self.prev[0]
        lb = max(r0 + 1, self.prev[1]) if tight0 else r0 + 1
        above = self.top - 1 - r0
        bad: list[int] = []
        # a v1 can fail only if the higher ranks are nearly all on its line (<= n - 1) or excluded (2 per face)
        if above <= self.n + 1 + (2 * len(self.group) if tight0 else 0):
            # near the top corner: check every candidate exactly (at most ~n of them)
            bad = [r1 for r1 in range(lb, self.top) if self._v2_count(r0, r1, tight0) <= 0]
        elif tight0 and self._v2_count(r0, lb, tight0) <= 0:
            bad = [lb]  # elsewhere only the candidate equal to the previous face's v1 can fail
        return lb, np.asarray(bad, dtype=np.int64)

    def _v0_domain(self) -> tuple[int, np.ndarray]:
        n = self.n
        # with z = y = n - 1 every higher vertex lies on one line through v0: no face can start there
        bad = set(range((n - 1) * n * n + (n - 1) * n, self.top))
        lb = 0
        if self.prev is not None:
            lb = self.prev[0]
            lo1, bad1 = self._v1_domain(lb)
            if self.top - lo1 - len(bad1) <= 0:
                bad.add(lb)
        return lb, np.asarray(sorted(bad), dtype=np.int64)

    def _v2_domain(self, r0: int, r1: int) -> tuple[int, np.ndarray]:
        tight0 = self.prev is not None and r0 == self.prev[0]
        tight01 = tight0 and r1 == self.prev[1]
        low = max(r0, self.prev[2]) if tight01 else r0
        delta, k = self._ray(self._unrank(r0), self._unrank(r1))
        t0 = (low - r0) // delta + 1
        line = r0 + delta * np.arange(max(t0, 1), k + 1, dtype=np.int64)
        extra = np.asarray(sorted(self._exclusions(r1)) if tight0 else [], dtype=np.int64)
        bad = np.unique(np.concatenate([line, extra, np.asarray([r1], dtype=np.int64)]))
        return low + 1, bad[bad > low]

    def _vertex_domain(self) -> tuple[int, np.ndarray]:
        if self._domain is None:
            a = len(self.cur) // 3
            ranks = [self._rank(self.cur[3 * i : 3 * i + 3]) for i in range(a)]
            if a == 0:
                self._domain = self._v0_domain()
            elif a == 1:
                self._domain = self._v1_domain(ranks[0])
            else:
                self._domain = self._v2_domain(ranks[0], ranks[1])
            if self.edges_once and a:
                self._domain = self._without_written_edges(self._domain, ranks)
        return self._domain

    def _without_written_edges(self, domain: tuple[int, np.ndarray], ranks: list[int]) -> tuple[int, np.ndarray]:
        """``domain`` of vertex ``len(ranks)`` less the ranks that would repeat a written directed edge, unless that
        leaves no rank (then ``domain`` as is: every rank of the order domain can still finish the face)."""
        lb, bad = domain
        if len(ranks) == 1:
            used = self.out_edges.get(ranks[0], set())  # v0 -> v1
        else:
            used = self.out_edges.get(ranks[1], set()) | self.in_edges.get(ranks[0], set())  # v1 -> v2, v2 -> v0
        used = np.fromiter((r for r in used if r >= lb), dtype=np.int64)
        if not len(used):
            return domain
        merged = np.union1d(bad, used)
        if self.top - lb - len(merged) <= 0:
            self.edge_fallbacks += 1
            return domain
        return lb, merged

    # -- public --------------------------------------------------------------------------------------
    @property
    def at_face_boundary(self) -> bool:
        return not self.cur

    @property
    def can_continue(self) -> bool:
        """Whether another coordinate may follow (not finished, face budget not used up)."""
        return not (self.finished or (not self.cur and self.max_faces is not None and self.n_faces >= self.max_faces))

    @property
    def vertex_digits(self) -> list[int]:
        """Digits of the vertex being written, so far (0 to 2 of its ``z, y, x``)."""
        return self.cur[len(self.cur) - len(self.cur) % 3 :]

    def vertex_domain(self) -> tuple[int, np.ndarray]:
        """``(lb, bad)`` of the vertex being written: its allowed ranks are ``>= lb`` and not in ``bad``
        (sorted, unique int64). Only meaningful while :attr:`can_continue`."""
        return self._vertex_domain()

    def allows_next_vertex(self, coords: np.ndarray) -> np.ndarray:
        """``(K,)`` bool: may each of ``coords (K, 3)`` (``z, y, x``) be the next vertex, at a vertex boundary
        (none may once no coordinate can follow)?"""
        coords = np.asarray(coords, dtype=np.int64).reshape(-1, 3)
        if not self.can_continue or len(self.cur) % 3:
            return np.zeros(len(coords), dtype=bool)
        lb, bad = self._vertex_domain()
        ranks = (coords[:, 0] * self.n + coords[:, 1]) * self.n + coords[:, 2]
        return (ranks >= lb) & ~np.isin(ranks, bad)

    def v1_domain(self, r0: int) -> tuple[int, np.ndarray]:
        """``(lb, bad)`` that ``v1`` would have after ``v0`` of rank ``r0`` (in the current state)."""
        return self._v1_domain(r0)

    def v2_domain(self, r0: int, r1: int) -> tuple[int, np.ndarray]:
        """``(lb, bad)`` that ``v2`` would have after ``v0, v1`` of ranks ``r0, r1`` (in the current state)."""
        return self._v2_domain(r0, r1)

    def allowed_values(self) -> np.ndarray:
        """``(n,)`` bool: coordinate values allowed as the next token."""
        if not self.can_continue:
            return np.zeros(self.n, dtype=bool)
        lb, bad = self._vertex_domain()
        return digit_mask(self.n, self.vertex_digits, lb, bad)

    def allowed(self) -> np.ndarray:
        """``(vocab_size,)`` bool over the full vocabulary (EOS only at a face boundary after >= 1 face)."""
        out = np.zeros(self.vocab.size, dtype=bool)
        if self.finished:
            return out
        vals = self.allowed_values()
        out[: len(vals)] = vals
        out[self.vocab.eos] = not self.cur and self.n_faces > 0
        return out

    def push(self, token: int) -> None:
        """Advance with ``token`` (not checked; use :meth:`allowed` first)."""
        token = int(token)
        if token == self.vocab.eos or token >= self.vocab.n:
            self.finished = True
            return
        self.cur.append(token)
        if len(self.cur) % 3 == 0:
            self._domain = None
        if len(self.cur) == 9:
            r = tuple(self._rank(self.cur[i : i + 3]) for i in (0, 3, 6))
            if self.edges_once:
                for a, b in ((r[0], r[1]), (r[1], r[2]), (r[2], r[0])):
                    self.out_edges.setdefault(a, set()).add(b)
                    self.in_edges.setdefault(b, set()).add(a)
            if self.prev is not None and r[0] == self.prev[0]:
                self.group.add((r[1], r[2]))
            else:
                self.group = {(r[1], r[2])}
            self.prev = r
            self.cur = []
            self.n_faces += 1


class CodeConstraint:
    """Allowed next ids for one code sequence (``vqvae`` layout; body only, like :class:`FaceConstraint`).

    Any code may follow anywhere inside a face; EOS only at a face boundary after at least one face, and only EOS
    once ``max_faces`` faces are written. Faces that decode degenerate or repeated are the tokenizer's to drop
    (:meth:`tokenizers3d.vqvae.VQVAETokenizer.decode_quantized`): codes carry no order to enforce.
    """

    def __init__(self, layout, *, max_faces: int | None = None):
        self.vocab = layout
        self.face_tokens = layout.face_tokens
        self.max_faces = max_faces
        self.cur: list[int] = []
        self.n_faces = 0
        self.finished = False

    @property
    def can_continue(self) -> bool:
        return not (self.finished or (not self.cur and self.max_faces is not None and self.n_faces >= self.max_faces))

    def allowed(self) -> np.ndarray:
        out = np.zeros(self.vocab.size, dtype=bool)
        if self.finished:
            return out
        out[: self.vocab.n] = self.can_continue
        out[self.vocab.eos] = not self.cur and self.n_faces > 0
        return out

    def push(self, token: int) -> None:
        token = int(token)
        if token >= self.vocab.n:
            self.finished = True
            return
        self.cur.append(token)
        if len(self.cur) == self.face_tokens:
            self.cur = []
            self.n_faces += 1


def new_constraint(layout, *, max_faces: int | None = None, edges_once: bool = False):
    """The order constraint of a layout: :class:`FaceConstraint` for ``coords`` (``edges_once``: its directed-edge
    rule), :class:`CodeConstraint` else."""
    if layout.is_coords:
        return FaceConstraint(int(layout.n).bit_length() - 1, max_faces=max_faces, edges_once=edges_once)
    return CodeConstraint(layout, max_faces=max_faces)


# ---- validity -------------------------------------------------------------------------------------
def validate_codes(ids: Sequence[int] | np.ndarray, layout) -> str | None:
    """``None`` if ``ids`` (BOS .. EOS) is a well-formed code sequence of ``layout`` (whole faces of body ids), else
    the first problem; the geometry the codes decode to is the tokenizer's to clean (degenerate faces dropped)."""
    ids = [int(t) for t in ids]
    if len(ids) < 2 or ids[0] != layout.bos:
        return "does not start with BOS"
    if ids[-1] != layout.eos:
        return "does not end with EOS"
    body = ids[1:-1]
    if not body:
        return "no faces"
    if len(body) % layout.face_tokens:
        return f"body length {len(body)} is not a multiple of {layout.face_tokens}"
    if any(not 0 <= t < layout.n for t in body):
        return "special token inside the body"
    return None


def validate_coords(ids: Sequence[int] | np.ndarray, bits: int) -> str | None:
    """``None`` if ``ids`` (BOS .. EOS) is a valid canonical ``coords`` mesh, else the first problem found."""
    problem = validate_codes(ids, coord_layout(bits))  # the envelope: BOS, whole faces of body ids, EOS
    if problem is not None:
        return problem
    body = [int(t) for t in ids[1:-1]]
    prev, seen = None, set()
    for k in range(len(body) // 9):
        f = body[9 * k : 9 * k + 9]
        v0, v1, v2 = (tuple(f[i : i + 3]) for i in (0, 3, 6))
        if not (v0 < v1 and v0 < v2):
            return f"face {k}: first vertex is not the lowest"
        if v1 == v2:
            return f"face {k}: repeated vertex"
        if _collinear(v0, v1, v2):
            return f"face {k}: zero area"
        if prev is not None and not tuple(f) > prev:
            return f"face {k}: out of order"
        key = (v0, *sorted((v1, v2)))
        if key in seen:
            return f"face {k}: duplicate face"
        seen.add(key)
        prev = tuple(f)
    return None


def invalid_rate(sequences: Sequence[Sequence[int] | np.ndarray], bits: int, layout=None) -> float:
    """Fraction of sequences that are not valid canonical meshes (:func:`validate_coords`), or, for a code
    ``layout``, not well-formed code sequences (:func:`validate_codes`)."""
    if not sequences:
        return 0.0
    if layout is not None and not layout.is_coords:
        return sum(validate_codes(s, layout) is not None for s in sequences) / len(sequences)
    return sum(validate_coords(s, bits) is not None for s in sequences) / len(sequences)
