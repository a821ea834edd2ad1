#!/usr/bin/env python
"""Benchmark point-cloud-guided decoding: guide build time and per-token overhead over the plain constraint.

Prints one JSON document (and writes it with ``--out``)::

    python scripts/bench_guidance.py --points 2048 --faces 200 --repeats 3

Clouds: the bundled demo table, a sphere and a box, ``--points`` points each, normalized into the unit cube.
Per-token overhead: sequences are sampled with the guide from random logits biased to small coordinate steps
(a stand-in for the model, which walks up the surface face by face), then
replayed token by token through a plain :class:`~meshgen.sampling.FaceConstraint` and through the guided
state (``allowed()`` + ``push()`` per token, as the sampling loop does); the overhead is the difference per
token. Best of ``--repeats`` for every timing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshgen.generate import sample_sequences  # noqa: E402
from meshgen.guidance import GuidanceConfig, PointGuide  # noqa: E402
from meshgen.modeling import coord_layout  # noqa: E402
from meshgen.pipeline import DEMO_INPUT, read_points  # noqa: E402
from meshgen.sampling import FaceConstraint  # noqa: E402
from tokenizers3d.mesh import Normalization  # noqa: E402
from tokenizers3d.sample import sample_surface  # noqa: E402


def clouds(n_points: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Unit-cube points and normals, ``(N, 3)`` each, by name."""
    out = {"table": read_points(DEMO_INPUT, n_points=n_points)}
    out["sphere"] = sample_surface(trimesh.creation.icosphere(subdivisions=3), n_points, seed=0)
    out["box"] = sample_surface(trimesh.creation.box(extents=(1.0, 0.7, 0.4)), n_points, seed=0)
    return {k: (Normalization.fit(c.points).apply(c.points), c.normals) for k, c in out.items()}


def replay_seconds(ids: np.ndarray, make_state, repeats: int) -> tuple[float, float]:
    """Best total time to run ``allowed()`` + ``push()`` over the body and EOS of ``ids``, and the slowest
    token of that run."""
    best, slowest = float("inf"), 0.0
    for _ in range(repeats):
        state = make_state()
        times = np.empty(len(ids) - 1)
        for i, t in enumerate(ids[1:]):
            t0 = time.perf_counter()
            state.allowed()
            state.push(int(t))
            times[i] = time.perf_counter() - t0
        if times.sum() < best:
            best, slowest = float(times.sum()), float(times.max())
    return best, slowest


def bench_cloud(points: np.ndarray, normals: np.ndarray, *, bits: int, faces: int, repeats: int,
                config: GuidanceConfig, seed: int = 0) -> dict:
    builds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        guide = PointGuide(points, normals, bits=bits, config=config)
        builds.append(time.perf_counter() - t0)
    vocab = coord_layout(bits)
    gen = torch.Generator().manual_seed(seed)
    bias = torch.zeros(vocab.size)
    bias[: vocab.n] = torch.linspace(60.0, 0.0, vocab.n)  # small steps up the cloud, as a model's faces take
    bias[vocab.eos] = -8.0  # long meshes: the run ends at the face budget or when the candidates run out

    def step(tokens: torch.Tensor) -> torch.Tensor:
        return bias + 2.0 * torch.randn(tokens.shape[0], vocab.size, generator=gen)

    res = sample_sequences(step, batch=1, bits=bits, max_faces=faces, guides=[guide],
                           generator=torch.Generator().manual_seed(seed + 1))
    ids = res.ids[0]
    plain, _ = replay_seconds(ids, lambda: FaceConstraint(bits, max_faces=faces), repeats)
    guided, slowest = replay_seconds(ids, lambda: guide.state(FaceConstraint(bits, max_faces=faces)), repeats)
    tokens = len(ids) - 1
    stats = res.guidance[0]
    return {
        "points": len(points), "build_s": round(min(builds), 4), "candidates": int(len(guide.ranks)),
        "tol": round(guide.tol, 4), "face_tol": round(guide.face_tol, 4),
        "faces": res.n_faces[0], "tokens": tokens, "stopped": res.stopped_reason[0],
        "plain_ms_per_token": round(1e3 * plain / tokens, 4), "guided_ms_per_token": round(1e3 * guided / tokens, 4),
        "overhead_ms_per_token": round(1e3 * (guided - plain) / tokens, 4),
        "guided_slowest_token_ms": round(1e3 * slowest, 3),
        "fallbacks": stats.fallbacks, "coverage": round(stats.coverage, 3),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=2048)
    ap.add_argument("--bits", type=int, default=7)
    ap.add_argument("--faces", type=int, default=200, help="face budget of the sampled sequences")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = {"bits": args.bits, "points": args.points, "faces": args.faces, "repeats": args.repeats, "clouds": {}}
    for name, (pts, nrm) in clouds(args.points).items():
        report["clouds"][name] = bench_cloud(pts, nrm, bits=args.bits, faces=args.faces, repeats=args.repeats,
                                             config=GuidanceConfig())
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
