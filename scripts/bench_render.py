#!/usr/bin/env python
"""Benchmark multi-view rendering and revoting on CPU; prints JSON.

For UV spheres of about 1k, 10k and 100k faces: views per second of :class:`renderers.render.MeshRenderer`
(12 views per call, default ``torch`` backend on CPU) at 256 and 512 pixels; the same for PyTorch3D's
own CPU rasterizer (``backend="pytorch3d"``) on the smaller meshes; and, at 256 pixels with 12 views,
the time of the geometric mask generator and of :func:`renderers.segment.revote`.

Usage::

    python scripts/bench_render.py            # full run
    python scripts/bench_render.py --quick    # 1k and 10k faces only
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np
import torch
import trimesh


def sphere(target_faces: int) -> trimesh.Trimesh:
    """A UV sphere with about ``target_faces`` triangles (it has about ``4 n^2`` for ``count=[n, n]``)."""
    guess = int(np.sqrt(target_faces / 4.0))
    candidates = [trimesh.creation.uv_sphere(radius=0.5, count=[n, n]) for n in range(max(4, guess - 1), guess + 3)]
    return min(candidates, key=lambda m: abs(len(m.faces) - target_faces))


def timed(fn, repeat: int = 1) -> float:
    """Best wall time of ``repeat`` calls, seconds."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="skip the 100k-face mesh")
    ap.add_argument("--views", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from renderers.masks import GeometricMaskGenerator
    from renderers.render import MeshRenderer, RenderSettings
    from renderers.segment import revote

    sizes = (1_000, 10_000) if args.quick else (1_000, 10_000, 100_000)
    report: dict = {"device": "cpu", "threads": args.threads, "views_per_call": args.views,
                    "machine": platform.machine(), "torch": torch.__version__, "render": [], "revote": []}
    for target in sizes:
        mesh = sphere(target)
        for image_size in (256, 512):
            settings = RenderSettings(n_views=args.views, image_size=image_size)
            seconds = timed(lambda: MeshRenderer(settings).render(mesh), args.repeat)  # noqa: B023
            report["render"].append({"faces": len(mesh.faces), "image_size": image_size, "backend": "torch",
                                     "seconds": round(seconds, 3), "views_per_s": round(args.views / seconds, 2)})
        if target <= 10_000:  # PyTorch3D's CPU kernel: ~35 us set-up per face and view, every face per pixel
            n = 4
            settings = RenderSettings(n_views=n, image_size=256, backend="pytorch3d")
            seconds = timed(lambda: MeshRenderer(settings).render(mesh), 1)  # noqa: B023
            report["render"].append({"faces": len(mesh.faces), "image_size": 256, "backend": "pytorch3d",
                                     "seconds": round(seconds, 3), "views_per_s": round(n / seconds, 2)})
        print(json.dumps(report["render"][-1]), file=sys.stderr, flush=True)

        out = MeshRenderer(RenderSettings(n_views=args.views, image_size=256)).render(mesh)
        generator = GeometricMaskGenerator()
        t0 = time.perf_counter()
        masks = [generator.generate(out.image(v), normals=out.normals[v], depth=out.depth[v], points=out.points[v])
                 for v in range(out.n_views)]
        t_masks = time.perf_counter() - t0
        eyes = out.normalization.invert(out.rig.eyes)
        t0 = time.perf_counter()
        res = revote(mesh, out.pix_to_face, masks, eyes=eyes)
        t_revote = time.perf_counter() - t0
        report["revote"].append({"faces": len(mesh.faces), "views": args.views, "image_size": 256,
                                 "masks": res.n_masks, "mask_seconds": round(t_masks, 3),
                                 "revote_seconds": round(t_revote, 3)})
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
