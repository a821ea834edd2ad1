#!/usr/bin/env python
"""Benchmark the mesh tokenizers: tokens per face, encode/decode speed, encode time against OBJ loading.

Prints one JSON document (and writes it with ``--out``)::

    python scripts/bench_tokenizers.py --n 8 --out bench.json

Mesh sets: procedural artist-like meshes (``tokenizers3d.procedural``, ``--n`` seeds per family; trimesh
primitives when that module is missing) and, if the directory exists, the real meshes under ``--real``
(``*.stl``, ``*.obj``, ``*.ply``, searched recursively). Only meshes under ``--max-faces`` faces count.

:func:`bench_corpus` is the hook for corpus-level measurements (e.g. batch meshes/s with 1 and 2 workers):
it receives the loaded meshes and returns a JSON-ready dict that :func:`main` puts under ``"corpus"``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import trimesh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokenizers3d.base import get_tokenizer  # noqa: E402
from tokenizers3d.errors import MeshgenError  # noqa: E402
from tokenizers3d.io import load_mesh  # noqa: E402
from tokenizers3d.mesh import prepare  # noqa: E402

NAMES = ("coords", "adjacent", "blocks")
BITS = (7, 8, 10)
MESH_SUFFIXES = (".stl", ".obj", ".ply")

Corpus = dict[str, list[tuple[str, trimesh.Trimesh]]]


# ---- mesh sets -----------------------------------------------------------------------------------------
def primitive_meshes() -> list[tuple[str, trimesh.Trimesh]]:
    """trimesh primitives and box composites: the fallback when ``tokenizers3d.procedural`` is missing."""
    c = trimesh.creation
    out = [("box", c.box())]
    out += [(f"cylinder{s}", c.cylinder(radius=1.0, height=2.0, sections=s)) for s in (3, 4, 6, 8, 12, 16, 24, 32)]
    out += [(f"cone{s}", c.cone(radius=1.0, height=2.0, sections=s)) for s in (4, 8, 16, 32)]
    out += [(f"icosphere{d}", c.icosphere(subdivisions=d)) for d in (1, 2, 3)]
    out += [("annulus", c.annulus(r_min=0.5, r_max=1.0, height=0.3, sections=24))]
    out += [("capsule", c.capsule(height=1.0, radius=0.4, count=[12, 12]))]
    out += [("torus", c.torus(major_radius=1.0, minor_radius=0.3, major_sections=24, minor_sections=12))]
    for n in (2, 4, 8):
        boxes = [
            c.box(extents=(1.0, 0.4 + 0.3 * i, 0.3)).apply_translation((1.3 * i, 0.1 * i, 0.2 * i)) for i in range(n)
        ]
        out.append((f"boxes{n}", trimesh.util.concatenate(boxes)))
    return out


def procedural_meshes(n_per_family: int, *, max_faces: int) -> list[tuple[str, trimesh.Trimesh]]:
    """``n_per_family`` seeds of every procedural family (primitives if the module is missing)."""
    try:
        from tokenizers3d import procedural
    except ImportError:
        return primitive_meshes()
    out = []
    for family in procedural.FAMILIES:
        for seed in range(n_per_family):
            pm = procedural.generate(family, seed)
            if pm.n_faces < max_faces:
                out.append((f"{family}/{seed}", pm.mesh))
    return out


def real_meshes(root: Path, *, max_faces: int) -> tuple[list[tuple[str, trimesh.Trimesh]], int]:
    """Meshes under ``root`` with fewer than ``max_faces`` faces, and how many files were skipped."""
    if not root.is_dir():
        return [], 0
    out, skipped = [], 0
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in MESH_SUFFIXES and p.is_file()):
        try:
            mesh = load_mesh(path)
        except (MeshgenError, ValueError):
            skipped += 1
            continue
        if len(mesh.faces) < max_faces:
            out.append((str(path.relative_to(root)), mesh))
        else:
            skipped += 1
    return out, skipped


# ---- measurements -------------------------------------------------------------------------------------
def tokens_per_face(meshes: Sequence[tuple[str, trimesh.Trimesh]], *, names=NAMES, bits_list=BITS) -> dict:
    """Tokens per face (body only) of every tokenizer at every bit depth, with a lossless check."""
    out: dict = {}
    for bits in bits_list:
        prepared = []
        for _, mesh in meshes:
            try:
                prepared.append(prepare(mesh, bits)[0])
            except MeshgenError:
                continue  # nothing survives quantization
        for name in names:
            tok = get_tokenizer(name, bits=bits)
            tpf, lossless = [], True
            for qm in prepared:
                ids = tok.encode_quantized(qm)
                tpf.append((len(ids) - 2) / qm.n_faces)
                back, _ = tok.decode_quantized(ids)
                lossless &= back.face_set() == qm.face_set()
            arr = np.asarray(tpf)
            out.setdefault(name, {})[str(bits)] = {
                "n_meshes": len(arr),
                "median": round(float(np.median(arr)), 4) if len(arr) else None,
                "mean": round(float(arr.mean()), 4) if len(arr) else None,
                "p90": round(float(np.quantile(arr, 0.9)), 4) if len(arr) else None,
                "max": round(float(arr.max()), 4) if len(arr) else None,
                "vocab_size": tok.vocab_size,
                "lossless": bool(lossless),
            }
    return out


def _best_time(fn: Callable[[], object], repeats: int) -> float:
    """Smallest wall time of ``repeats`` calls (the least disturbed by other processes)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def speed(meshes: Sequence[tuple[str, trimesh.Trimesh]], *, names=NAMES, bits: int = 10, repeats: int = 3) -> dict:
    """Faces per second of ``encode`` (with clean-up and quantization), ``encode_quantized`` and ``decode_quantized``."""
    prepared = [(mesh, prepare(mesh, bits)[0]) for _, mesh in meshes]
    n_faces = sum(qm.n_faces for _, qm in prepared)
    out = {}
    for name in names:
        tok = get_tokenizer(name, bits=bits)
        ids = [tok.encode_quantized(qm) for _, qm in prepared]
        t_enc = sum(_best_time(lambda m=m, t=tok: t.encode(m), repeats) for m, _ in prepared)
        t_encq = sum(_best_time(lambda q=q, t=tok: t.encode_quantized(q), repeats) for _, q in prepared)
        t_dec = sum(_best_time(lambda i=i, t=tok: t.decode_quantized(i), repeats) for i in ids)
        out[name] = {
            "encode_faces_per_s": round(n_faces / t_enc),
            "encode_quantized_faces_per_s": round(n_faces / t_encq),
            "decode_faces_per_s": round(n_faces / t_dec),
        }
    return {"bits": bits, "n_meshes": len(prepared), "n_faces": n_faces, "tokenizers": out}


def obj_load_vs_encode(*, names=NAMES, bits: int = 10, repeats: int = 15) -> dict:
    """Encode time of a 5,120-face mesh (icosphere, 4 subdivisions) against ``trimesh.load`` of its OBJ."""
    mesh = trimesh.creation.icosphere(subdivisions=4)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mesh.obj"
        mesh.export(path)
        loaded = trimesh.load(path, process=False)
        t_load = _best_time(lambda: trimesh.load(path, process=False), repeats)
    qm, _ = prepare(loaded, bits)
    out = {
        "n_faces": int(len(loaded.faces)),
        "obj_load_ms": round(t_load * 1e3, 3),
        "prepare_ms": round(_best_time(lambda: prepare(loaded, bits), repeats) * 1e3, 3),
    }
    for name in names:
        tok = get_tokenizer(name, bits=bits)
        t_enc = _best_time(lambda tok=tok: tok.encode(loaded), repeats)
        t_encq = _best_time(lambda tok=tok: tok.encode_quantized(qm), repeats)
        out[name] = {
            "encode_ms": round(t_enc * 1e3, 3),
            "encode_quantized_ms": round(t_encq * 1e3, 3),
            "encode_faster_than_load": bool(t_enc < t_load),
            "encode_quantized_faster_than_load": bool(t_encq < t_load),
        }
    return out


def bench_corpus(corpus: Corpus, *, names=NAMES, bits: int = 10, workers: Sequence[int] = (1, 2)) -> dict:
    """Batch throughput: each mesh set written as OBJ files, then ``batch_tokenize`` with 1 and 2 workers.

    Parameters
    ----------
    corpus : dict
        Mesh set name -> list of (mesh id, trimesh.Trimesh).

    Returns
    -------
    dict
        Per set and tokenizer: ``{workers: meshes_per_s}`` (fresh runs, pool start-up included).
    """
    import tempfile

    from tokenizers3d.batch import benchmark_batch

    out = {}
    for key, meshes in corpus.items():
        with tempfile.TemporaryDirectory(prefix=f"bench-{key}-") as tmp:
            for i, (_, mesh) in enumerate(meshes):
                mesh.export(Path(tmp) / f"{i:05d}.obj")
            out[key] = {"n_meshes": len(meshes)}
            for name in names:
                reports = benchmark_batch(tmp, workers=workers, tokenizer=name, tokenizer_config={"bits": bits})
                out[key][name] = {f"workers_{w}": round(r.meshes_per_s, 1) for w, r in zip(workers, reports, strict=True)}
    return out


# ---- command line --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=8, help="procedural seeds per family (default 8)")
    parser.add_argument("--real", type=Path, default=Path("data/real"), help="directory of real meshes")
    parser.add_argument("--max-faces", type=int, default=5000, help="only meshes with fewer faces (default 5000)")
    parser.add_argument("--bits", type=int, nargs="+", default=list(BITS), help="bit depths (default 7 8 10)")
    parser.add_argument("--tokenizers", nargs="+", default=list(NAMES), help="tokenizer names")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    names = tuple(args.tokenizers)
    corpus: Corpus = {"procedural": procedural_meshes(args.n, max_faces=args.max_faces)}
    real, skipped = real_meshes(args.real, max_faces=args.max_faces)
    if real:
        corpus["real"] = real
    speed_bits = 10 if 10 in args.bits else args.bits[-1]
    report = {
        "tokens_per_face": {key: tokens_per_face(m, names=names, bits_list=args.bits) for key, m in corpus.items()},
        "speed": speed(corpus["procedural"], names=names, bits=speed_bits),
        "obj_load_vs_encode": obj_load_vs_encode(names=names, bits=speed_bits),
        "corpus": bench_corpus(corpus, names=names, bits=speed_bits),
        "real_skipped": skipped,
        "settings": {"n": args.n, "max_faces": args.max_faces, "bits": args.bits, "real": str(args.real)},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
