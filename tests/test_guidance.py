"""Point-cloud-guided decoding (masks against a brute-force enumerator, fallbacks, coverage EOS) and CFG."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import torch.nn as nn
import trimesh
from typer.testing import CliRunner

from meshgen.encoder import EncoderConfig
from meshgen.generate import generate, sample_sequences
from meshgen.guidance import (
    GUIDED,
    NO_FACE_TEST,
    ORDER_ONLY,
    WIDENED,
    GuidanceConfig,
    PointGuide,
    build_guides,
    point_triangle_distance,
)
from meshgen.hourglass import HourglassConfig, HourglassTransformer
from meshgen.modeling import Conditioning, Context, coord_layout
from meshgen.sampling import FaceConstraint, cfg_mix, validate_coords
from tokenizers3d.errors import MeshInputError
from tokenizers3d.mesh import Normalization
from tokenizers3d.sample import sample_surface

VOCAB = coord_layout(7)
N = VOCAB.n

pytestmark = pytest.mark.usefixtures("one_thread")


def _table_cloud(n_points: int = 1024, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A table (top + four legs) sampled with normals, normalized into the unit cube: lots of empty bbox."""
    parts = [trimesh.creation.box(extents=(2.0, 1.2, 0.1), transform=trimesh.transformations.translation_matrix(
        [0, 0, 0.95]))]
    for sx in (-0.9, 0.9):
        for sy in (-0.5, 0.5):
            parts.append(trimesh.creation.box(extents=(0.1, 0.1, 0.9),
                                              transform=trimesh.transformations.translation_matrix([sx, sy, 0.45])))
    cloud = sample_surface(trimesh.util.concatenate(parts), n_points, seed=seed)
    return Normalization.fit(cloud.points).apply(cloud.points), cloud.normals.astype(np.float64)


@pytest.fixture(scope="module")
def table():
    pts, nrm = _table_cloud()
    return pts, nrm, PointGuide(pts, nrm, bits=7)


def _random_step(seed: int, *, eos_bias: float = -4.0, bias: torch.Tensor | None = None):
    gen = torch.Generator().manual_seed(seed)
    base = torch.zeros(VOCAB.size)
    base[VOCAB.eos] = eos_bias
    if bias is not None:
        base = base + bias

    def step(tokens: torch.Tensor) -> torch.Tensor:
        return base + 2.0 * torch.randn(tokens.shape[0], VOCAB.size, generator=gen)

    return step


def _faces(ids: np.ndarray) -> np.ndarray:
    """``(F, 3, 3)`` cells (xyz) of a BOS..EOS ``coords`` sequence."""
    body = np.asarray(ids[1:-1]).reshape(-1, 3, 3)  # (F, vertex, zyx)
    return body[:, :, ::-1]


# ---- the guarantees along whole samples -----------------------------------------------------------------
def test_guided_samples_stay_on_the_cloud(table):
    pts, _, guide = table
    res = sample_sequences(_random_step(0), batch=4, bits=7, max_faces=40, guides=[guide] * 4,
                           generator=torch.Generator().manual_seed(1))
    q = guide.quantize(pts)
    lo, hi = q.min(axis=0) - 1, q.max(axis=0) + 1
    for ids, stats in zip(res.ids, res.guidance, strict=True):
        assert validate_coords(ids, 7) is None
        assert stats is not None and stats.fallbacks == 0, stats
        cells = _faces(ids).reshape(-1, 3)
        d = np.linalg.norm(guide.centres(cells)[:, None] - pts[None], axis=-1).min(axis=1)  # brute force
        assert d.max() <= guide.tol + 0.5 / N
        assert np.all(cells >= lo) and np.all(cells <= hi)
        assert abs(int(ids[1]) - int(q[:, 2].min())) <= 1  # first token: z of the lowest vertex, pinned
    # without guidance the same random logits wander off the table
    free = sample_sequences(_random_step(0), batch=4, bits=7, max_faces=40, generator=torch.Generator().manual_seed(1))
    cells = np.concatenate([_faces(ids).reshape(-1, 3) for ids in free.ids])
    assert np.linalg.norm(guide.centres(cells)[:, None] - pts[None], axis=-1).min(axis=1).max() > 3 * guide.tol
    assert free.guidance == [None] * 4


def test_guided_faces_pass_the_face_test(table):
    _, _, guide = table
    res = sample_sequences(_random_step(2), batch=2, bits=7, max_faces=30, guides=[guide] * 2,
                           generator=torch.Generator().manual_seed(3))
    for ids, stats in zip(res.ids, res.guidance, strict=True):
        assert stats.face_test_dropped == 0
        f = _faces(ids)
        assert guide.face_pass(f[:, 0], f[:, 1], f[:, 2]).all()


@pytest.mark.parametrize("config,counter", [
    (GuidanceConfig(tol=1e-4, plane_tol=1e-4), "order_only"),  # no candidate at all
    (GuidanceConfig(face_tol=1e-4), "face_test_dropped"),  # no face passes the face test
    (GuidanceConfig(min_coverage=1.0), "widened"),  # EOS refused after the guided set runs out
])
def test_fallbacks_still_give_valid_meshes(config, counter):
    pts, nrm = _table_cloud(256, seed=1)
    guide = PointGuide(pts, nrm, bits=7, config=config)
    # logits pushing to large coordinates run through the candidate set fast
    bias = torch.zeros(VOCAB.size)
    bias[:N] = torch.linspace(0, 4, N)
    res = sample_sequences(_random_step(4, bias=bias), batch=3, bits=7, max_faces=60, guides=[guide] * 3,
                           generator=torch.Generator().manual_seed(5))
    for ids in res.ids:
        assert validate_coords(ids, 7) is None
    assert sum(getattr(s, counter) for s in res.guidance) > 0, res.guidance


def test_constraint_stays_valid_when_guidance_gives_up_on_tiny_grids():
    """Random walks on a 3-level grid with refused EOS reach every fallback level; all meshes stay valid."""
    rng = np.random.default_rng(0)
    pts = rng.uniform(-0.5, 0.5, (12, 3))
    guide = PointGuide(pts, rng.normal(size=(12, 3)), levels=3,
                       config=GuidanceConfig(tol=0.3, plane_tol=0.1, face_tol=0.2, min_coverage=1.0))
    levels = set()
    for seed in range(6):
        r = random.Random(seed)
        st = guide.state(FaceConstraint(7, levels=3, max_faces=30))
        ids = [VOCAB.bos]
        while not st.finished:
            allowed = np.flatnonzero(st.allowed())
            levels.add(st.level)
            t = int(r.choice(allowed))
            ids.append(VOCAB.eos if t == VOCAB.eos else t)
            st.push(t)
        assert validate_coords(ids, 7) is None
    assert levels >= {GUIDED, ORDER_ONLY}


# ---- masks against a brute-force enumerator ---------------------------------------------------------------
def _brute_sets(pts, nrm, n, tol, plane_tol):
    """Candidate ranks by brute force: cells in bbox +- 1 within ``tol`` of the nearest point and its plane."""
    q = np.clip(np.floor((pts + 0.5) * n).astype(int), 0, n - 1)
    lo, hi = q.min(axis=0) - 1, q.max(axis=0) + 1
    out = set()
    for z in range(n):
        for y in range(n):
            for x in range(n):
                cell = np.array([x, y, z])
                if np.any(cell < lo) or np.any(cell > hi):
                    continue
                c = (cell + 0.5) / n - 0.5
                d = np.linalg.norm(pts - c, axis=1)
                k = int(np.argmin(d))
                unit = nrm[k] / np.linalg.norm(nrm[k])
                if d[k] <= tol and abs(unit @ (c - pts[k])) <= plane_tol:
                    out.add((z * n + y) * n + x)
    return out


class _BruteGuide:
    """Independent rebuild of the documented rules on an ``n``-level grid (face grid = the same grid)."""

    def __init__(self, pts, nrm, n, tol, plane_tol, face_tol, widen=2.0):
        self.pts, self.n, self.face_tol = pts, n, face_tol
        self.sets = {GUIDED: _brute_sets(pts, nrm, n, tol, plane_tol),
                     WIDENED: _brute_sets(pts, nrm, n, tol * widen, plane_tol * widen)}
        zmin = int(np.clip(np.floor((pts[:, 2].min() + 0.5) * n), 0, n - 1))
        self.pin = range(max(zmin - 1, 0), min(zmin + 2, n))
        cells = np.array([(r % n, r // n % n, r // (n * n)) for r in range(n**3)])
        self.centre = (cells + 0.5) / n - 0.5  # (n^3, 3) by rank
        # every valid face (order rules without history) as ranks (r0, r1, r2)
        r = np.array(np.meshgrid(*[np.arange(n**3)] * 3, indexing="ij")).reshape(3, -1).T  # (n^9, 3)
        r = r[(r[:, 1] > r[:, 0]) & (r[:, 2] > r[:, 0]) & (r[:, 1] != r[:, 2])]
        cross = np.cross(cells[r[:, 1]] - cells[r[:, 0]], cells[r[:, 2]] - cells[r[:, 0]])
        self.faces = r[np.any(cross != 0, axis=1)]

    def near(self, u: np.ndarray) -> bool:
        cell = np.clip(np.floor((u + 0.5) * self.n).astype(int), 0, self.n - 1)
        c = (cell + 0.5) / self.n - 0.5
        return bool(np.linalg.norm(self.pts - c, axis=1).min() <= self.face_tol)

    def edge_ok(self, a: int, b: int) -> bool:
        return self.near((self.centre[a] + self.centre[b]) / 2)

    def face_ok(self, a: int, b: int, c: int) -> bool:
        ca, cb, cc = self.centre[a], self.centre[b], self.centre[c]
        return all(self.near(u) for u in ((ca + cb + cc) / 3, (ca + cb) / 2, (ca + cc) / 2, (cb + cc) / 2))

    def vertex_set(self, level: int, faces: np.ndarray, done: list[int], first_face: bool) -> set[int]:
        """Ranks allowed for the next vertex on ``level`` given the valid next ``faces`` and the face's ranks."""
        for k, r in enumerate(done):
            faces = faces[faces[:, k] == r]
        a = len(done)
        if level == ORDER_ONLY:
            return set(faces[:, a].tolist())
        s = self.sets[WIDENED if level == WIDENED else GUIDED]
        inside = np.isin(faces, list(s))
        faces = faces[inside[:, a:].all(axis=1)]  # a completion inside the set
        out = set(faces[:, a].tolist())
        if a == 0 and first_face:
            out = {r for r in out if r // self.n**2 in self.pin}
        if level == GUIDED and a == 1:
            out = {r for r in out if self.edge_ok(done[0], r)}
        if level == GUIDED and a == 2:
            out = {r for r in out if self.face_ok(done[0], done[1], r)}
        return out


def _brute_coverage(pts: np.ndarray, tris: list[np.ndarray], tol: float) -> float:
    """Share of points within ``tol`` of the triangles, with trimesh's closest-point query."""
    if not tris:
        return 0.0
    d = np.full(len(pts), np.inf)
    for tri in tris:
        cp = trimesh.triangles.closest_point(np.repeat(tri[None], len(pts), axis=0), pts)
        d = np.minimum(d, np.linalg.norm(cp - pts, axis=1))
    return float(np.mean(d <= tol))


@pytest.mark.parametrize("n,seed,face_tol,min_coverage", [
    (4, 0, 0.2, 0.0), (4, 1, 0.12, 0.0), (4, 2, 0.2, 1.0), (4, 3, 0.12, 0.9), (3, 4, 0.2, 0.0), (3, 5, 0.2, 1.0),
])
def test_masks_match_brute_force(n, seed, face_tol, min_coverage):
    """Along random walks: the level is the first with an allowed vertex (or EOS), and the digit masks are
    {t : some vertex with prefix + t is allowed on that level}, all recomputed by brute force."""
    rng = np.random.default_rng(seed)
    # points near a tilted plane, so the candidate set is a slab with holes
    uv = rng.uniform(-0.5, 0.5, (40, 2))
    pts = np.stack([uv[:, 0], uv[:, 1], 0.3 * uv[:, 0] - 0.2 * uv[:, 1]], axis=1) + rng.normal(0, 0.02, (40, 3))
    pts = np.clip(pts, -0.5, 0.5)
    nrm = np.tile([-0.3, 0.2, 1.0], (40, 1)) + rng.normal(0, 0.1, (40, 3))
    cfg = GuidanceConfig(tol=0.22, plane_tol=0.12, face_tol=face_tol, min_coverage=min_coverage)
    guide = PointGuide(pts, nrm, levels=n, config=cfg)
    brute = _BruteGuide(guide.points, guide.normals, n, cfg.tol, cfg.plane_tol, cfg.face_tol)
    assert set(guide.candidates(GUIDED).tolist()) == brute.sets[GUIDED]
    assert set(guide.candidates(WIDENED).tolist()) == brute.sets[WIDENED]
    assert 0 < len(brute.sets[GUIDED]) < len(brute.sets[WIDENED]) < n**3

    n3, max_faces = n**3, 12
    r = random.Random(seed)
    seen_levels, total_faces = set(), 0
    for _walk in range(4):
        st = guide.state(FaceConstraint(7, levels=n, max_faces=max_faces))
        prev_key, seen, tris = -1, set(), []
        while not st.finished:
            keys = (brute.faces[:, 0] * n3 + brute.faces[:, 1]) * n3 + brute.faces[:, 2]
            lo, hi = np.minimum(brute.faces[:, 1], brute.faces[:, 2]), np.maximum(brute.faces[:, 1], brute.faces[:, 2])
            nxt = brute.faces[(keys > prev_key) & ~np.isin((brute.faces[:, 0] * n3 + lo) * n3 + hi, list(seen))]
            allowed = st.allowed()
            if len(tris) == max_faces:
                assert np.flatnonzero(allowed).tolist() == [VOCAB.eos]
                break
            cover = _brute_coverage(guide.points, tris, guide.tol)
            eos = len(tris) > 0 and (cover >= min_coverage or len(nxt) == 0)
            assert allowed[VOCAB.eos] == eos
            done: list[int] = []
            for a in range(3):
                levels = [GUIDED, NO_FACE_TEST, WIDENED, ORDER_ONLY] if a else [GUIDED, WIDENED, ORDER_ONLY]
                for level in levels:
                    verts = brute.vertex_set(level, nxt, done, not tris)
                    if verts or (eos and a == 0):
                        break
                if a:
                    allowed = st.allowed()
                assert st.level == level, (tris, done, st.level, level)
                seen_levels.add(level)
                if a == 0 and eos and (not verts or r.random() < 0.1):
                    st.push(VOCAB.eos)
                    break
                prefix: list[int] = []
                for c in range(3):
                    if c:
                        allowed = st.allowed()
                    digits = {int(np.base_repr(v, n).zfill(3)[c]) for v in verts
                              if [int(d) for d in np.base_repr(v, n).zfill(3)[:c]] == prefix}
                    assert set(np.flatnonzero(allowed[:n]).tolist()) == digits, (tris, done, prefix)
                    assert allowed[VOCAB.eos] == (a == 0 and c == 0 and eos)
                    # mostly low digits (long meshes that reach the top of the set), sometimes any
                    t = min(digits) if r.random() < 0.6 else r.choice(sorted(digits))
                    st.push(t)
                    prefix.append(t)
                done.append(int("".join(map(str, prefix)), n))
            else:
                prev_key = (done[0] * n3 + done[1]) * n3 + done[2]
                seen.add((done[0] * n3 + min(done[1:])) * n3 + max(done[1:]))
                tris.append(brute.centre[done])
                assert st.coverage == pytest.approx(_brute_coverage(guide.points, tris, guide.tol))
        total_faces += len(tris)
    assert total_faces >= 12
    if min_coverage:  # refused EOS drives the walks past the guided set
        assert seen_levels & {WIDENED, ORDER_ONLY}


# ---- coverage-aware EOS ---------------------------------------------------------------------------------
def test_config_checks_ranges():
    for bad in ({"min_coverage": 1.5}, {"tol": 0.0}, {"widen": 0.5}):
        with pytest.raises(ValueError):
            GuidanceConfig(**bad)


def test_point_triangle_distance_matches_trimesh():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(500, 3))
    for _ in range(5):
        tri = rng.normal(size=(3, 3))
        ref = np.linalg.norm(trimesh.triangles.closest_point(np.repeat(tri[None], 500, axis=0), pts) - pts, axis=1)
        assert np.allclose(point_triangle_distance(pts, tri), ref, atol=1e-9)


def test_coverage_eos_refusal(table):
    pts, nrm, _ = table
    bias = torch.zeros(VOCAB.size)
    bias[:N] = torch.linspace(3, 0, N)  # small steps up the table, so the guided set lasts
    bias[VOCAB.eos] = 12.0  # EOS whenever it is allowed
    res = sample_sequences(_random_step(6, eos_bias=0.0, bias=bias), batch=1, bits=7, max_faces=400, guides=[PointGuide(pts, nrm)])
    assert res.n_faces == [1] and res.stopped_reason == ["eos"]

    guide = PointGuide(pts, nrm, config=GuidanceConfig(min_coverage=0.1))
    res = sample_sequences(_random_step(6, eos_bias=0.0, bias=bias), batch=1, bits=7, max_faces=400, guides=[guide])
    assert res.stopped_reason == ["eos"] and res.n_faces[0] > 1 and validate_coords(res.ids[0], 7) is None
    tris = [guide.centres(f) for f in _faces(res.ids[0])]
    cover = res.guidance[0].coverage
    assert cover >= 0.1 and cover == pytest.approx(_brute_coverage(guide.points, tris, guide.tol))
    assert _brute_coverage(guide.points, tris[:-1], guide.tol) < 0.1  # it stopped as soon as it could

    # a share these logits do not reach before the candidates run out: EOS comes only when no value is left
    guide = PointGuide(pts, nrm, config=GuidanceConfig(min_coverage=0.3))
    res = sample_sequences(_random_step(6, eos_bias=0.0, bias=bias), batch=1, bits=7, max_faces=400, guides=[guide])
    assert res.stopped_reason == ["eos"] and res.guidance[0].coverage < 0.3 and res.guidance[0].order_only > 0
    fc = FaceConstraint(7)
    for t in res.ids[0][1:-1]:
        fc.push(t)
    assert not fc.allowed_values().any()

    # an unreachable share: EOS only at the face budget
    guide = PointGuide(pts, nrm, config=GuidanceConfig(min_coverage=1.0))
    res = sample_sequences(_random_step(6, eos_bias=0.0, bias=bias), batch=1, bits=7, max_faces=5, guides=[guide])
    assert res.stopped_reason == ["max_faces"] and res.n_faces == [5]


# ---- wiring: generate, pipeline, CLI ---------------------------------------------------------------------
def _tiny_model() -> HourglassTransformer:
    torch.manual_seed(0)
    enc = EncoderConfig(dim=16, n_heads=2, n_latents=4, n_layers=1, n_freqs=2)
    return HourglassTransformer(HourglassConfig(dim=32, n_heads=2, layers=(1, 1, 2), window=36, encoder=enc)).eval()


def test_generate_with_guidance_and_build_guides(table):
    pts, nrm, guide = table
    cloud = torch.from_numpy(np.concatenate([pts, nrm], axis=1)).float()  # (N, 6)
    cond = Conditioning(cloud[None].repeat(2, 1, 1), torch.tensor([20, 20]))
    model = _tiny_model()
    res = generate(model, cond, max_faces=10, seed=0, guidance=GuidanceConfig())
    for ids, stats in zip(res.ids, res.guidance, strict=True):
        assert validate_coords(ids, 7) is None and stats is not None
        d = np.linalg.norm(guide.centres(_faces(ids).reshape(-1, 3))[:, None] - pts[None], axis=-1).min(axis=1)
        assert stats.fallbacks or d.max() <= guide.tol + 0.5 / N
    assert generate(model, cond, max_faces=10, seed=0).guidance == [None, None]
    guides = build_guides(cond.points, bits=7)
    assert guides[0] is guides[1] and np.array_equal(guides[0].ranks, guide.ranks)  # equal rows share one guide
    mixed = generate(model, cond, max_faces=10, seed=0, guidance=GuidanceConfig(), unguided_rows=1)
    assert mixed.guidance[0] is not None and mixed.guidance[1] is None  # the last row samples without the guide
    assert all(validate_coords(ids, 7) is None for ids in mixed.ids)
    with pytest.raises(ValueError, match="unguided_rows"):
        generate(model, cond, max_faces=2, guidance=GuidanceConfig(), unguided_rows=3)
    with pytest.raises(ValueError, match="constraints"):
        generate(model, cond, max_faces=2, guidance=GuidanceConfig(), constraints=False)
    with pytest.raises(ValueError, match="points"):
        generate(model, Conditioning(n_faces=torch.tensor([5])), max_faces=2, guidance=GuidanceConfig())


def test_pipeline_and_cli_guidance(tmp_path, table):
    from meshgen.cli import app
    from meshgen.pipeline import generate_mesh
    from tokenizers3d.io import PointCloud, save_point_cloud

    pts, nrm, _ = table
    world = PointCloud((pts * 3.0 + 7.0).astype(np.float32), nrm.astype(np.float32))
    model = _tiny_model()
    gen = generate_mesh(model, world, max_faces=8, seed=0)  # guidance on by default
    assert gen.guidance is not None and gen.mesh is not None
    assert generate_mesh(model, world, max_faces=8, seed=0, guidance=None).guidance is None

    ckpt = tmp_path / "tiny"
    model.save_pretrained(ckpt)
    save_point_cloud(tmp_path / "table.npy", world)
    runner = CliRunner()
    base = ["generate", str(tmp_path / "table.npy"), "--checkpoint", str(ckpt), "--max-faces", "6", "--no-preview"]
    out = runner.invoke(app, [*base, "-o", str(tmp_path / "a.obj"), "--guide-tol", "0.05", "--min-coverage", "0.1"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output.strip().splitlines()[-1])
    assert {"fallbacks", "coverage"} <= set(summary)
    out = runner.invoke(app, [*base, "-o", str(tmp_path / "b.obj"), "--no-guidance"])
    assert out.exit_code == 0, out.output
    assert "fallbacks" not in json.loads(out.output.strip().splitlines()[-1])
    out = runner.invoke(app, [*base, "-o", str(tmp_path / "c.obj"), "--cfg-scale", "2"])  # no null context
    assert isinstance(out.exception, MeshInputError) and "null_context" in str(out.exception)
    out = runner.invoke(app, [*base, "-o", str(tmp_path / "d.obj"), "--samples", "2", "--free-samples", "3"])
    assert isinstance(out.exception, MeshInputError) and "--free-samples" in str(out.exception)
    assert not (tmp_path / "d.obj").exists()


# ---- classifier-free guidance ------------------------------------------------------------------------------
class _StubCache:
    def __init__(self, cond):
        self.cond = cond
        self.fed: list[torch.Tensor] = []
        B = cond.points.shape[0] if cond.points is not None else 1
        self.context = Context(None, torch.zeros(B, 1))


class _StubModel(nn.Module):
    """Fixed logits per row kind: ``cond_logits`` for rows with points, ``null_logits`` for ``drop`` rows."""

    def __init__(self, cond_logits: torch.Tensor, null_logits: torch.Tensor):
        super().__init__()
        self.config = HourglassConfig()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.cond_logits, self.null_logits = cond_logits, null_logits
        self.caches: list[_StubCache] = []

    def init_cache(self, cond, *, window=None, batch_size=None):
        self.caches.append(_StubCache(cond))
        return self.caches[-1]

    def forward(self, tokens, *, cache):
        cache.fed.append(tokens.clone())
        drop = getattr(cache.cond, "drop", None)
        drop = torch.zeros(tokens.shape[0], dtype=torch.bool) if drop is None else drop
        logits = torch.where(drop[:, None], self.null_logits, self.cond_logits)  # (B, V)
        return type("Out", (), {"logits": logits[:, None, :]})()  # (B, 1, V)


def test_cfg_mix_exact():
    logits = torch.tensor([[1.0, 2.0], [3.0, 0.0], [0.5, 1.0], [1.0, 1.0]])  # rows 0-1 conditional, 2-3 not
    assert torch.equal(cfg_mix(logits, 1.0), logits[:2])
    assert torch.equal(cfg_mix(logits, 3.0), torch.tensor([[2.0, 4.0], [7.0, -2.0]]))  # l_u + 3 (l_c - l_u)
    with pytest.raises(ValueError, match="even"):
        cfg_mix(logits[:3], 2.0)


def test_cfg_doubles_rows_and_mixes_before_masking():
    cond_logits = torch.zeros(VOCAB.size)
    null_logits = torch.zeros(VOCAB.size)
    cond_logits[5], cond_logits[9] = 3.0, 2.9  # conditional argmax 5
    null_logits[5], null_logits[9] = 3.0, 1.0  # mixed at scale 3: 5 -> 3.0, 9 -> 1 + 3 * 1.9 = 6.7
    model = _StubModel(cond_logits, null_logits)
    cond = Conditioning(torch.rand(2, 16, 6) - 0.5, torch.tensor([4, 8]))
    plain = generate(model, cond, max_faces=1, temperature=0)
    assert model.caches[-1].cond is cond and model.caches[-1].fed[0].shape == (2, 1)  # scale 1: not doubled
    mixed = generate(model, cond, max_faces=1, temperature=0, cfg_scale=3.0)
    cache = model.caches[-1]
    assert cache.cond.points.shape[0] == 4
    assert torch.equal(cache.cond.points[:2], cond.points) and torch.equal(cache.cond.points[2:], cond.points)
    assert cache.cond.drop.tolist() == [False, False, True, True]
    assert cache.cond.n_faces.tolist() == [4, 8, 4, 8]
    for fed in cache.fed:
        assert fed.shape == (4, 1) and torch.equal(fed[:2], fed[2:])  # both halves see the same tokens
    # masking comes after mixing: the first token is the first vertex's z, allowed 0..126
    assert plain.ids[0][1] == 5 and mixed.ids[0][1] == 9
    for ids in (*plain.ids, *mixed.ids):
        assert validate_coords(ids, 7) is None


def test_cfg_scale_one_equals_no_cfg_and_ignored_drop_is_neutral():
    model = _tiny_model()
    cond = Conditioning(torch.rand(2, 8, 6) - 0.5, torch.tensor([10, 20]))
    a = generate(model, cond, max_faces=6, seed=0)
    b = generate(model, cond, max_faces=6, seed=0, cfg_scale=1.0)
    assert all(np.array_equal(x, y) for x, y in zip(a.ids, b.ids, strict=True))
    same = torch.randn(VOCAB.size)
    stub = _StubModel(same, same)  # a model whose null context changes nothing: CFG at any scale is a no-op
    runs = [generate(stub, cond, max_faces=4, seed=1, cfg_scale=s) for s in (1.0, 2.5)]
    assert all(np.array_equal(x, y) for x, y in zip(runs[0].ids, runs[1].ids, strict=True))
    with pytest.raises(ValueError, match="Conditioning with points"):
        generate(model, Conditioning(n_faces=torch.tensor([3])), max_faces=2, cfg_scale=2.0)


def test_cfg_with_a_null_context_model_and_guidance(table):
    pts, nrm, guide = table
    torch.manual_seed(0)
    enc = EncoderConfig(dim=16, n_heads=2, n_latents=4, n_layers=1, n_freqs=2, null_context=True)
    model = HourglassTransformer(HourglassConfig(dim=32, n_heads=2, layers=(1, 1, 2), window=36, encoder=enc)).eval()
    with torch.no_grad():
        model.encoder.null.normal_()  # a null context unlike any point cloud's
    cloud = torch.from_numpy(np.concatenate([pts, nrm], axis=1)).float()[None].repeat(2, 1, 1)  # (2, N, 6)
    cond = Conditioning(cloud, torch.tensor([10, 30]))
    base = generate(model, cond, max_faces=6, seed=0, temperature=0)
    mixed = generate(model, cond, max_faces=6, seed=0, temperature=0, cfg_scale=3.0, guidance=GuidanceConfig())
    assert [len(x) for x in base.ids] != [len(x) for x in mixed.ids] or any(
        not np.array_equal(x, y) for x, y in zip(base.ids, mixed.ids, strict=True))
    for ids, stats in zip(mixed.ids, mixed.guidance, strict=True):
        assert validate_coords(ids, 7) is None and stats is not None
        cells = _faces(ids).reshape(-1, 3)
        assert stats.fallbacks or np.linalg.norm(guide.centres(cells)[:, None] - pts[None], axis=-1).min(
            axis=1).max() <= guide.tol + 0.5 / N
