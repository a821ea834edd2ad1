"""The canonical form against an independent plain-Python rebuild of its documented rules, and face-order invariance.

``reference_canonical`` follows the module docstring of ``tokenizers3d.mesh`` step by step, with dicts,
sets, exact rational arithmetic and no code from the package: merge equal vertices, drop degenerate
(repeated corner or zero area) and duplicate faces (one per vertex set: the first with the canonical
winding, else the first), drop unreferenced vertices; normalize into the unit cube by the bounding box;
quantize ``q = floor((x + 0.5) 2^b)``; clean again on the grid; sort vertices by (z, y, x), rotate each
face to its lowest vertex, sort faces. Every tokenizer must decode its encoding to exactly this mesh.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import trimesh
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenizers3d.base import get_tokenizer
from tokenizers3d.blocks import BlocksTokenizer
from tokenizers3d.procedural import FAMILIES, generate

HYPO = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def all_tokenizers(bits: int):
    return [get_tokenizer(name, bits=bits) for name in ("coords", "adjacent", "blocks")] + [BlocksTokenizer(bits, window=2)]


# ---- the reference ---------------------------------------------------------------------------------------
def _zyx(p):
    return (p[2], p[1], p[0])


def _clean(points: list[tuple], faces: list[tuple[int, int, int]]) -> tuple[list[tuple], list[tuple[int, int, int]]]:
    """One clean-up pass; returns distinct points and faces (indices into them) in input face order."""
    index: dict[tuple, int] = {}
    distinct: list[tuple] = []
    for p in points:
        if p not in index:
            index[p] = len(distinct)
            distinct.append(p)
    kept: list[tuple[int, int, int]] = []
    for f in faces:
        a, b, c = (index[points[i]] for i in f)
        if len({a, b, c}) < 3:
            continue  # repeated corner
        pa, pb, pc = (tuple(Fraction(x) for x in distinct[i]) for i in (a, b, c))
        e1 = [pb[k] - pa[k] for k in range(3)]
        e2 = [pc[k] - pa[k] for k in range(3)]
        cross = (e1[1] * e2[2] - e1[2] * e2[1], e1[2] * e2[0] - e1[0] * e2[2], e1[0] * e2[1] - e1[1] * e2[0])
        if cross == (0, 0, 0):
            continue  # zero area
        kept.append((a, b, c))
    groups: dict[frozenset, list[int]] = {}
    for i, f in enumerate(kept):
        groups.setdefault(frozenset(f), []).append(i)

    def canonical_winding(f):  # from its lowest corner in (z, y, x) order, the next corner is the lower one
        k = min(range(3), key=lambda j: _zyx(distinct[f[j]]))
        g = f[k:] + f[:k]
        return _zyx(distinct[g[1]]) < _zyx(distinct[g[2]])

    chosen = set()
    for members in groups.values():
        good = [i for i in members if canonical_winding(kept[i])]
        chosen.add(good[0] if good else members[0])
    kept = [f for i, f in enumerate(kept) if i in chosen]
    used = sorted({i for f in kept for i in f})
    remap = {old: new for new, old in enumerate(used)}
    return [distinct[i] for i in used], [tuple(remap[i] for i in f) for f in kept]


def reference_canonical(vertices, faces, bits: int):
    """Documented canonical quantized mesh of a float mesh: (vertices as (x, y, z) int tuples, faces)."""
    points = [tuple(float(x) for x in v) for v in vertices]
    pts, fcs = _clean(points, [tuple(int(i) for i in f) for f in faces])
    if not fcs:
        return [], []
    lo = [min(p[k] for p in pts) for k in range(3)]
    hi = [max(p[k] for p in pts) for k in range(3)]
    center = [(lo[k] + hi[k]) / 2.0 for k in range(3)]
    extent = max(hi[k] - lo[k] for k in range(3))
    scale = extent if extent > 0 else 1.0
    n = 2**bits
    grid = [tuple(min(max(math.floor(((p[k] - center[k]) / scale + 0.5) * n), 0), n - 1) for k in range(3))
            for p in pts]
    gpts, gfcs = _clean(grid, fcs)
    order = sorted(range(len(gpts)), key=lambda i: _zyx(gpts[i]))
    rank = {old: new for new, old in enumerate(order)}
    out_faces = []
    for f in gfcs:
        f = tuple(rank[i] for i in f)
        k = f.index(min(f))
        out_faces.append(f[k:] + f[:k])
    return [gpts[i] for i in order], sorted(out_faces)


# ---- meshes ----------------------------------------------------------------------------------------------
def procedural_meshes():
    return [(f"{name}-{seed}", generate(name, seed).mesh) for name in sorted(FAMILIES) for seed in (0, 1)]


def with_back_to_back(mesh: trimesh.Trimesh, seed: int) -> trimesh.Trimesh:
    """``mesh`` plus reversed copies of some faces, in shuffled order (both windings of one triangle)."""
    rng = np.random.default_rng(seed)
    faces = np.asarray(mesh.faces)
    extra = faces[rng.choice(len(faces), size=max(1, len(faces) // 4), replace=False)][:, ::-1]
    both = np.vstack([faces, extra])
    return trimesh.Trimesh(np.asarray(mesh.vertices), both[rng.permutation(len(both))], process=False)


@st.composite
def dyadic_soups(draw):
    """Random soups on an 1/8 grid (float arithmetic on them is exact): coincident and collinear points,
    repeated corners, duplicates in both windings, near points that merge only when quantized."""
    coord = st.integers(-16, 16).map(lambda k: k / 8.0)
    n = draw(st.integers(3, 10))
    verts = [draw(st.tuples(coord, coord, coord)) for _ in range(n)]
    verts += [(x + 1 / 1024, y, z) for x, y, z in verts[: draw(st.integers(0, 3))]]  # merge only when quantized
    idx = st.integers(0, len(verts) - 1)
    faces = draw(st.lists(st.tuples(idx, idx, idx), min_size=1, max_size=25))
    flips = draw(st.lists(st.sampled_from(faces), max_size=6))
    faces = faces + [f[::-1] for f in flips]
    return np.array(verts, dtype=np.float64), np.array(faces, dtype=np.int64)


def decoded(tok, mesh: trimesh.Trimesh):
    qm, report = tok.decode_quantized(tok.encode(mesh).ids)
    assert report.error is None
    return [tuple(int(c) for c in v) for v in qm.vertices], [tuple(int(i) for i in f) for f in qm.faces]


# ---- the pipeline equals the reference ---------------------------------------------------------------------
def test_reference_on_hand_made_cases():
    # a quad with both windings of one triangle, a zero-area face and a repeated corner
    v = [(0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0), (2, 0, 0)]
    f = [(0, 2, 1), (0, 1, 2), (0, 2, 3), (0, 1, 4), (0, 0, 2)]
    verts, faces = reference_canonical(v, f, 6)
    # (2, 0, 0) only in a dropped face; the flat z axis maps to the middle cell, x = 1 to the last cell
    assert verts == [(0, 0, 32), (63, 0, 32), (0, 63, 32), (63, 63, 32)]
    assert faces == [(0, 1, 3), (0, 3, 2)]  # (0, 1, 2) kept over (0, 2, 1): second corner below the third
    for order in (f, f[::-1]):
        mesh = trimesh.Trimesh(np.array(v, float), np.array(order), process=False)
        for tok in all_tokenizers(6):
            assert decoded(tok, mesh) == (verts, faces), tok


@pytest.mark.parametrize("bits", [6, 8, 10])
def test_every_tokenizer_decodes_to_the_reference_on_procedural_meshes(bits):
    for name, mesh in procedural_meshes():
        expected = reference_canonical(mesh.vertices, mesh.faces, bits)
        for tok in all_tokenizers(bits):
            assert decoded(tok, mesh) == expected, (name, tok)


@pytest.mark.parametrize("bits", [6, 8])
def test_every_tokenizer_decodes_to_the_reference_with_back_to_back_faces(bits):
    for i, (name, mesh) in enumerate(procedural_meshes()[::3]):
        doubled = with_back_to_back(mesh, i)
        expected = reference_canonical(doubled.vertices, doubled.faces, bits)
        for tok in all_tokenizers(bits):
            assert decoded(tok, doubled) == expected, (name, tok)


@HYPO
@given(soup=dyadic_soups(), bits=st.sampled_from([6, 7, 8]))
def test_every_tokenizer_decodes_to_the_reference_on_random_soups(soup, bits):
    verts, faces = soup
    expected = reference_canonical(verts, faces, bits)
    mesh = trimesh.Trimesh(verts, faces, process=False)
    for tok in all_tokenizers(bits):
        if not expected[1]:  # nothing survives: the pipeline must refuse, not invent faces
            with pytest.raises(ValueError):
                tok.encode(mesh)
            continue
        assert decoded(tok, mesh) == expected, tok


# ---- face order, face rotation and vertex order do not change the ids -------------------------------------
def shuffled(mesh: trimesh.Trimesh, seed: int, how: str) -> trimesh.Trimesh:
    rng = np.random.default_rng(seed)
    v, f = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    if how == "reversed":
        return trimesh.Trimesh(v, f[::-1], process=False)
    if how == "permuted":
        return trimesh.Trimesh(v, f[rng.permutation(len(f))], process=False)
    if how == "rotated":
        shift = rng.integers(0, 3, (len(f), 1))
        return trimesh.Trimesh(v, np.take_along_axis(f, (np.arange(3) + shift) % 3, axis=1), process=False)
    perm = rng.permutation(len(v))  # "vertices": the same mesh with its vertex list shuffled
    return trimesh.Trimesh(v[perm], np.argsort(perm)[f], process=False)


@pytest.mark.parametrize("how", ["reversed", "permuted", "rotated", "vertices"])
def test_ids_do_not_depend_on_face_or_vertex_order(how):
    meshes = procedural_meshes()
    meshes += [(f"{name}+b2b", with_back_to_back(m, i)) for i, (name, m) in enumerate(meshes[::2])]
    for bits in (6, 8):
        toks = all_tokenizers(bits)
        for i, (name, mesh) in enumerate(meshes):
            other = shuffled(mesh, i, how)
            for tok in toks:
                assert np.array_equal(tok.encode(other).ids, tok.encode(mesh).ids), (name, bits, tok)


@HYPO
@given(soup=dyadic_soups(), seed=st.integers(0, 2**31), how=st.sampled_from(["reversed", "permuted", "rotated"]))
def test_ids_of_random_soups_do_not_depend_on_face_order(soup, seed, how):
    verts, faces = soup
    mesh = trimesh.Trimesh(verts, faces, process=False)
    if not reference_canonical(verts, faces, 7)[1]:
        return
    other = shuffled(mesh, seed, how)
    for tok in all_tokenizers(7):
        assert np.array_equal(tok.encode(other).ids, tok.encode(mesh).ids), tok
