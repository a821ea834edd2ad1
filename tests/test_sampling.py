"""Order-enforcing constraints (exactness on tiny grids), validity of constrained samples, sampling controls."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch

from meshgen.encoder import EncoderConfig
from meshgen.generate import generate, measure_invalid_rate, sample_sequences
from meshgen.hourglass import HourglassConfig, HourglassTransformer
from meshgen.modeling import Conditioning, coord_layout
from meshgen.sampling import (
    FaceConstraint,
    _collinear,
    edges_once_for,
    filter_logits,
    invalid_rate,
    sample_next,
    validate_coords,
)
from tokenizers3d.base import get_tokenizer

VOCAB = coord_layout(7)


pytestmark = pytest.mark.usefixtures("one_thread")


def _all_valid_faces(n: int) -> list[tuple[int, ...]]:
    verts = list(itertools.product(range(n), repeat=3))
    return sorted(
        v0 + v1 + v2
        for v0 in verts
        for v1 in verts
        if v1 > v0
        for v2 in verts
        if v2 > v0 and v2 != v1 and not _collinear(v0, v1, v2)
    )


def _vertex_set(f: tuple[int, ...]) -> tuple:
    return f[:3], tuple(sorted((f[3:6], f[6:9])))


@pytest.mark.parametrize("n,seeds", [(2, range(12)), (3, range(4))])
def test_constraint_is_exact_on_tiny_grids(n, seeds):
    """Allowed values == {t : some valid next face starts with prefix + t}, by brute force, along whole meshes."""
    faces = _all_valid_faces(n)
    for seed in seeds:
        rng = random.Random(seed)
        fc, emitted = FaceConstraint(7, levels=n), []
        while True:
            seen = {_vertex_set(f) for f in emitted}
            cand = [f for f in faces if (not emitted or f > emitted[-1]) and _vertex_set(f) not in seen]
            if not cand:
                assert not fc.allowed_values().any()
                break
            prefixes = {f[:i] for f in cand for i in range(1, 10)}
            # mostly the next few faces (long runs sharing v0, exercising the duplicate rule), sometimes a jump
            face = cand[rng.randrange(min(len(cand), 6))] if rng.random() < 0.8 else rng.choice(cand)
            for i in range(9):
                expected = {t for t in range(n) if face[:i] + (t,) in prefixes}
                got = {int(t) for t in np.flatnonzero(fc.allowed_values())}
                assert got == expected, (n, seed, emitted, face[:i])
                fc.push(face[i])
            emitted.append(face)


def _directed_edges(faces: list[tuple[int, ...]]) -> list[tuple]:
    return [e for f in faces for e in ((f[:3], f[3:6]), (f[3:6], f[6:9]), (f[6:9], f[:3]))]


@pytest.mark.parametrize("n,seeds", [(3, range(6)), (4, range(3))])
def test_edges_once_narrows_the_order_rules_and_never_stalls(n, seeds):
    """Random walks on tiny grids: the edge rule allows a subset of what the order rules allow, is never empty
    mid-face, and a directed edge repeats only where a vertex fell back to the order rules (tiny grids run out of
    fresh edges, so fallbacks happen here)."""
    longest = 0
    for seed in seeds:
        rng = random.Random(seed)
        fc, plain, faces, face = FaceConstraint(7, levels=n, edges_once=True), FaceConstraint(7, levels=n), [], []
        while True:
            got, ref = fc.allowed_values(), plain.allowed_values()
            assert not (got & ~ref).any()
            if not got.any():
                assert not face and not ref.any()  # only at a face boundary, when the order rules are done too
                break
            values = np.flatnonzero(got).tolist()
            t = values[0] if rng.random() < 0.7 else rng.choice(values)  # mostly low values: long meshes
            fc.push(t)
            plain.push(t)
            face.append(t)
            if len(face) == 9:
                faces.append(tuple(face))
                face = []
        edges = _directed_edges(faces)
        assert len(edges) - len(set(edges)) <= 2 * fc.edge_fallbacks  # a v2 fallback may repeat two edges
        small = coord_layout(2)
        assert validate_coords([small.bos, *[t for f in faces for t in f], small.eos], 2) is None
        longest = max(longest, len(faces))
    assert longest > 20


def test_edges_once_refuses_the_previous_faces_first_edge():
    face = (0, 0, 0, 0, 1, 0, 1, 0, 0)
    for edges_once in (False, True):
        fc = FaceConstraint(7, edges_once=edges_once)
        for t in (*face, 0, 0, 0, 0, 1):
            fc.push(t)
        assert bool(fc.allowed_values()[0]) is not edges_once  # v1 = (0, 1, 0) again would repeat 0 -> v1


def test_eos_only_at_face_boundary_and_max_faces():
    fc = FaceConstraint(7, max_faces=1)
    assert not fc.allowed()[VOCAB.eos]  # no empty mesh
    for t in (0, 0, 0, 0, 0, 1, 0, 1, 0):
        assert not fc.allowed()[VOCAB.eos] or not fc.cur
        fc.push(t)
    allowed = fc.allowed()
    assert allowed[VOCAB.eos] and allowed.sum() == 1  # max_faces reached: only EOS
    assert not allowed[VOCAB.pad] and not allowed[VOCAB.bos]


def test_validate_coords_catches_each_rule():
    B, E = VOCAB.bos, VOCAB.eos
    good = [0, 0, 0, 0, 0, 1, 0, 1, 0]
    assert validate_coords([B, *good, E], 7) is None
    assert "lowest" in validate_coords([B, 0, 0, 1, 0, 0, 0, 0, 1, 0, E], 7)
    assert "repeated" in validate_coords([B, 0, 0, 0, 0, 0, 1, 0, 0, 1, E], 7)
    assert "zero area" in validate_coords([B, 0, 0, 0, 0, 0, 1, 0, 0, 2, E], 7)
    assert "order" in validate_coords([B, 0, 0, 0, 0, 1, 0, 1, 0, 0, *good, E], 7)
    assert "duplicate" in validate_coords([B, *good, 0, 0, 0, 0, 1, 0, 0, 0, 1, E], 7)
    assert "EOS" in validate_coords([B, *good], 7)
    assert "multiple of 9" in validate_coords([B, *good, 3, E], 7)


def _strict_decoders():
    """Our checker, plus the ``coords`` tokenizer's strict decoder."""
    tok = get_tokenizer("coords", bits=7)

    def strict(ids) -> bool:
        tok.decode_quantized(ids, strict=True)  # raises on anything malformed
        return True

    return [lambda ids: validate_coords(ids, 7) is None, strict]


def test_biased_random_logits_stay_valid_and_never_stall():
    """Logits pushing towards large coordinates drive faces into the top corner where the exact
    feasibility rules matter; every row must stay valid and end with EOS on its own."""
    gen = torch.Generator().manual_seed(0)
    bias = torch.zeros(VOCAB.size)
    bias[: VOCAB.n] = torch.linspace(0, 6, VOCAB.n)
    bias[VOCAB.eos] = -8.0

    def step(tokens: torch.Tensor) -> torch.Tensor:
        return bias + torch.randn(tokens.shape[0], VOCAB.size, generator=gen)

    res = sample_sequences(step, batch=6, bits=7, max_faces=400, generator=torch.Generator().manual_seed(1))
    for ids in res.ids:
        for check in _strict_decoders():
            assert check(ids), validate_coords(ids, 7)
    assert set(res.stopped_reason) <= {"eos", "max_faces"}
    assert max(res.n_faces) > 20


def test_edges_once_picks_the_rows_of_the_edge_rule():
    assert [edges_once_for(m, g) for m in ("off", "guided", "all") for g in (False, True)] == [
        False, False, False, True, True, True]
    with pytest.raises(ValueError, match="edges_once"):
        edges_once_for("yes", True)


def _tiny_model() -> HourglassTransformer:
    torch.manual_seed(0)
    enc = EncoderConfig(dim=16, n_heads=2, n_latents=4, n_layers=1, n_freqs=2)
    cfg = HourglassConfig(dim=32, n_heads=2, layers=(1, 1, 2), window=36, encoder=enc)
    return HourglassTransformer(cfg).eval()


def test_random_model_constrained_samples_are_valid():
    model = _tiny_model()
    cond = Conditioning(torch.rand(4, 8, 6) - 0.5, torch.tensor([10, 20, 30, 40]))
    res = generate(model, cond, max_faces=12, seed=0, temperature=1.0, top_k=50)
    assert len(res.ids) == 4
    for ids, nf in zip(res.ids, res.n_faces, strict=True):
        assert (len(ids) - 2) // 9 == nf >= 1
        for check in _strict_decoders():
            assert check(ids), validate_coords(ids, 7)


def test_invalid_rate_with_and_without_constraints():
    model = _tiny_model()
    rates = measure_invalid_rate(model, Conditioning(n_faces=torch.tensor([20] * 4)), max_faces=6, seed=0)
    assert rates["constrained"] == 0.0 and rates["n"] == 4
    assert rates["unconstrained"] > 0.5  # a random model never writes a canonical mesh by chance
    assert invalid_rate([], 7) == 0.0


def test_top_k_top_p_temperature_and_seed():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept.tolist() == [[True, True, False, False, False]]
    probs = logits.softmax(-1)[0]
    kept = torch.isfinite(filter_logits(logits, top_p=float(probs[0]) + 1e-3))
    assert kept.tolist() == [[True, True, False, False, False]]  # smallest prefix reaching top_p
    allowed = torch.tensor([[False, False, True, True, False]])
    assert sample_next(logits, allowed=allowed, temperature=0).item() == 2
    draws = [
        sample_next(logits.repeat(64, 1), generator=torch.Generator().manual_seed(s)).tolist() for s in (5, 5, 6)
    ]
    assert draws[0] == draws[1] and draws[0] != draws[2]
