"""Encode-time fitting of VAT tokens: search the ids that decode closest to *this* mesh.

The VAT encoder reads 2,048 surface points and predicts the latent line in one pass; it is trained to be good on
average, not best for the mesh at hand. When the mesh itself is there (``meshgen compress``), the ids can be
chosen by analysis by synthesis instead: start from the encoder's latent means, and move them by gradient descent
so that the *frozen* decoder's occupancy matches the mesh's own occupancy (Open3D ray parity at near-surface and
uniform query points, :func:`~tokenizers3d.vat.occupancy_targets`), through the multi-scale residual quantizer
(straight-through: the decoder reads the quantized line, the gradient reaches the continuous one). Each step also
scores one random shorter prefix of the scales, so every byte budget keeps decoding to a good coarse shape.

The decoder, the codebook and the ``.vat`` format are unchanged: a file written this way decodes with the same
weights as any other, only its ids differ. The fit is guarded: every ``check_every`` steps the current ids are
scored on held-out query points of the same mesh (occupancy cross-entropy averaged over every prefix), and the
best ids seen -- the encoder's own among them -- are returned, so the fit never returns ids that score worse
there than the encoder's. The targets need a mesh whose inside is defined: where the ray-parity inside disagrees
with the surface normals (an open or inward-wound mesh, :func:`inside_agreement`), nothing is fitted and the
encoder's ids are returned.

Cost: about 0.14 s a step on one CPU core for the bundled model (two decoder passes over 4,096 queries); the
default 150 steps take about 20 s a mesh. Measured gain and the settings' ablation: docs/tokenizers.md ("Encode-time
fitting").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FitSettings:
    """Settings of :func:`fit_codes` (defaults: the measured recipe)."""

    steps: int = 150
    lr: float = 0.01
    batch: int = 4096          # query points per step
    n_uniform: int = 16384     # fitting targets: uniform in the box ...
    n_near: int = 16384        # ... and near the surface
    sigma: float = 0.02
    n_check: int = 4096        # held-out queries for choosing the ids
    check_every: int = 25
    prefix_weight: float = 1.0
    min_agreement: float = 0.9  # below this share of consistent probes the targets are not trusted: no fit
    max_pieces: int = 512       # the inside is ray-cast per connected piece: a soup of more is not fitted
    seed: int = 0


@dataclass
class FitReport:
    """What :func:`fit_codes` did: how far the mesh's inside agrees with its normals (:func:`inside_agreement`),
    check-set cross-entropy of the encoder's ids and of the returned ones, the step the returned ids come from
    (0: the encoder's), the wall time, and why nothing was fitted (``None`` when it was)."""

    agreement: float
    check_before: float
    check_after: float
    best_step: int
    seconds: float
    skipped: str | None = None


def inside_agreement(vertices: np.ndarray, faces: np.ndarray, *, n: int = 2048, offset: float = 0.01,
                     seed: int = 0) -> float:
    """How far the ray-parity inside of a mesh (normalized frame) can be trusted: the share of ``n`` surface
    samples whose point ``offset`` behind the surface (against the face normal) is inside and whose point as far in
    front is outside. About 1 for a closed, outward-wound mesh; far lower for open or inward-wound ones (measured
    0.96-1.00 on the procedural test meshes, 0.17-0.28 on the real split's open dm-control ``lower`` meshes, whose
    fitted ids decoded worse than the encoder's)."""
    import trimesh

    from .sample import sample_surface
    from .vat import mesh_occupancy

    cloud = sample_surface(trimesh.Trimesh(vertices, faces, process=False), n, seed=seed)
    probes = np.concatenate([cloud.points - offset * cloud.normals, cloud.points + offset * cloud.normals])
    inside = mesh_occupancy(vertices, faces, probes)
    return float(0.5 * (inside[:n].mean() + 1.0 - inside[n:].mean()))


def _prefix_losses(model, codes, queries, occupancy) -> float:
    """Mean occupancy cross-entropy over every prefix of the scales (no gradient)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        losses = [F.binary_cross_entropy_with_logits(
            model.occupancy_logits(model.decode_ids(codes, scales=k), queries), occupancy).item()
            for k in range(1, len(codes) + 1)]
    return float(np.mean(losses))


def fit_codes(model, vertices: np.ndarray, faces: np.ndarray, mean, settings: FitSettings | None = None):
    """Per-scale ids ``list of (1, n_s)`` fitted to a mesh in the normalized frame (``vertices``, ``faces``)
    from the encoder's latent means ``mean (1, L, c)``; returns ``(codes, FitReport)``.

    The model is left as it was (evaluation mode, weights untouched); only the latent line moves."""
    import time

    import torch
    import torch.nn.functional as F

    from .vat import occupancy_targets

    s = settings or FitSettings()
    t0 = time.perf_counter()
    import trimesh

    mesh = trimesh.Trimesh(vertices, faces, process=False)
    pieces = len(trimesh.graph.connected_components(mesh.face_adjacency, nodes=np.arange(len(mesh.faces)),
                                                    min_len=1))
    if pieces > s.max_pieces:
        return model.codes_of(mean), FitReport(float("nan"), float("nan"), float("nan"), 0, time.perf_counter() - t0,
                                               f"{pieces} separate pieces (more than {s.max_pieces}): the inside "
                                               "is not defined; the encoder's ids kept")
    agreement = inside_agreement(vertices, faces, seed=s.seed)
    if agreement < s.min_agreement:
        return model.codes_of(mean), FitReport(agreement, float("nan"), float("nan"), 0, time.perf_counter() - t0,
                                               f"the mesh's inside is not reliable (agreement {agreement:.2f} < "
                                               f"{s.min_agreement:g}: open or inward-wound); the encoder's ids kept")
    rng = np.random.default_rng(s.seed)
    queries, occ = occupancy_targets(vertices, faces, rng, n_uniform=s.n_uniform + s.n_check // 2,
                                     n_near=s.n_near + s.n_check // 2, sigma=s.sigma)
    order = rng.permutation(len(queries))
    check, fit = order[: s.n_check], order[s.n_check:]
    device = mean.device
    tq = torch.as_tensor(queries, device=device)[None]
    to = torch.as_tensor(occ, device=device)[None]
    cq, co, fq, fo = tq[:, check], to[:, check], tq[:, fit], to[:, fit]

    was_training = model.training
    model.eval()
    grads = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        best = model.codes_of(mean)
        best_loss = before = _prefix_losses(model, best, cq, co)
        best_step = 0
        x = mean.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=s.lr)
        n_scales = len(best)
        for step in range(1, s.steps + 1):
            for group in opt.param_groups:  # cosine decay to zero
                group["lr"] = s.lr * 0.5 * (1.0 + np.cos(np.pi * (step - 1) / s.steps))
            pick = torch.as_tensor(rng.choice(fq.shape[1], min(s.batch, fq.shape[1]), replace=False), device=device)
            bq, bo = fq[:, pick], fo[:, pick]
            q = model.quantizer(x)
            loss = F.binary_cross_entropy_with_logits(model.occupancy_logits(model.field(q.quantized), bq), bo)
            if s.prefix_weight > 0 and n_scales > 1:
                k = int(rng.integers(1, n_scales))
                # the prefix's latent, straight-through to the continuous line
                coarse = model.quantizer.decode(q.codes, scales=k).detach() + (x - x.detach())
                loss = loss + s.prefix_weight * F.binary_cross_entropy_with_logits(
                    model.occupancy_logits(model.field(coarse), bq), bo)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % s.check_every == 0 or step == s.steps:
                codes = model.codes_of(x.detach())
                value = _prefix_losses(model, codes, cq, co)
                if value < best_loss:
                    best, best_loss, best_step = codes, value, step
    finally:
        for p, g in zip(model.parameters(), grads, strict=True):
            p.requires_grad_(g)
        model.train(was_training)
    return best, FitReport(agreement, before, best_loss, best_step, time.perf_counter() - t0)


__all__ = ["FitReport", "FitSettings", "fit_codes", "inside_agreement"]


# ---- the surface level ---------------------------------------------------------------------------------------------
LEVELS = tuple(round(0.2 + 0.05 * i, 2) for i in range(13))  # 0.20, 0.25, ..., 0.80
LEVEL_RESOLUTION = 96  # marching-cubes cells per side while choosing (decoding may use another resolution)


def choose_level(grid: np.ndarray, vertices: np.ndarray, faces: np.ndarray, *, levels: tuple[float, ...] = LEVELS,
                 n_samples: int = 4096, seed: int = 1) -> tuple[float, dict[float, float]]:
    """The occupancy level whose marching-cubes surface of ``grid`` (:meth:`~tokenizers3d.vat.VATModel.occupancy_grid`
    of the ids as they will be written) lies closest to the mesh ``(vertices (V, 3), faces (F, 3))`` in the unit
    frame: ``(level, {level: symmetric Chamfer distance})``; a level whose surface is empty scores ``inf``.

    The decoder's 0.5 is right on average, not per shape: on 8 held-out procedural meshes the best level of each
    ranged from 0.3 (a shelf's thin boards, F@0.05 0.585 at 0.5 against 0.945) to 0.7 (a lathe body), docs/tokenizers.md
    ("The surface level"). The encoder has the mesh, so it picks the level and writes it into the file's header
    (:class:`~tokenizers3d.vatfile.VatFile`), as a codec chooses its own parameters; the samples are drawn with
    their own ``seed``, apart from any evaluation's. Returns 0.5 with its score when no level gives a surface."""
    import trimesh

    from .metrics import chamfer_distance
    from .sample import sample_surface
    from .vat import grid_to_mesh

    ref = sample_surface(trimesh.Trimesh(np.asarray(vertices, dtype=np.float64), np.asarray(faces), process=False),
                         n_samples, seed=seed).points
    scores: dict[float, float] = {}
    for level in levels:
        v, f = grid_to_mesh(grid, level=level)
        if len(f) == 0:
            scores[level] = float("inf")
            continue
        surface = sample_surface(trimesh.Trimesh(v, f, process=False), n_samples, seed=seed + 1).points
        scores[level] = chamfer_distance(surface, ref)
    best = min(scores, key=scores.get)
    return (0.5 if not np.isfinite(scores[best]) else float(best)), scores
