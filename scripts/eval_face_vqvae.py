"""How lossy is the ``vqvae`` tokenizer? Its reconstruction error beside the exact tokenizers, on held-out meshes.

    python scripts/eval_face_vqvae.py --checkpoint runs/face_vqvae/best --out runs/face_vqvae/eval.json --markdown

Held-out sets: the test split of ``meshgen dataset -o data/procedural -n 600`` (seed 0; the training stream uses
other seeds) and the real meshes of ``scripts/fetch_real_meshes.py data/real`` (all held out), each mesh with at
most ``--max-faces`` faces after clean-up. Every mesh is prepared at the checkpoint's bits (7): clean-up,
normalization into the unit cube, quantization, canonical order; that quantized mesh is the truth.

Rows (one per tokenizer, per set):

* ``vqvae``: encode, decode; a face counts as **within one cell** when all 9 decoded coordinates are within
  one grid level of the truth (``exact``: equal), compared face by face in canonical order (before merging).
* ``coords``, ``blocks`` at the same bits: exact by construction (measured: the decoded face set is compared
  with the truth).
* ``coords`` at one bit less: the simplest lossy baseline -- every surviving coordinate is within one 7-bit
  cell by construction; faces that collapse at the coarser grid count as misses.

Columns: share of faces within one cell and exact; faces kept by the decoded mesh (degenerate and repeated faces
dropped) / faces of the truth; Chamfer distance (``tokenizers3d.metrics`` conventions: mean of both directions,
``--samples`` points on each surface, in the unit cube of the *unquantized* mesh, so quantization itself costs
the exact rows a little); watertight meshes that stay watertight; tokens per face (body tokens / truth faces);
bits per face (tokens per face x log2 vocabulary); codebook usage (distinct codes of the set / codebook size,
mean over levels) and perplexity; encode and decode milliseconds per 1,000 faces (``encode_quantized`` /
``decode_quantized``, one mesh at a time, ``--threads`` torch threads). Prints JSON (also written to ``--out``),
and a Markdown table with ``--markdown``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import trimesh

from tokenizers3d.base import get_tokenizer
from tokenizers3d.errors import ConfigError, MeshgenError
from tokenizers3d.io import atomic_write_text, load_mesh
from tokenizers3d.mesh import dequantize, prepare, quantize_coords
from tokenizers3d.metrics import chamfer_distance
from tokenizers3d.rvq import code_usage
from tokenizers3d.sample import sample_surface

TARGETS = {"procedural": 0.95, "real": 0.85}  # faces within one cell at 7 bits
USAGE_TARGET = 0.5


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def procedural_items(root: Path, max_faces: int, n: int | None) -> list[tuple[str, Path, str]]:
    """(id, file, family) of the test split of ``root/metadata.jsonl``, by id."""
    meta = root / "metadata.jsonl"
    rows = [r for r in _read_jsonl(meta) if r["split"] == "test" and r["n_faces"] <= max_faces] if meta.exists() else []
    rows.sort(key=lambda r: r["id"])
    return [(r["id"], root / r["path"], r["family"]) for r in rows[:n]]


def real_items(root: Path, max_faces: int, n: int | None) -> list[tuple[str, Path, str]]:
    """(id, file, source package) of ``root/catalog.jsonl``, by id."""
    catalog = root / "catalog.jsonl"
    rows = [r for r in _read_jsonl(catalog) if r.get("n_faces_clean", r["n_faces"]) <= max_faces] if catalog.exists() else []
    rows.sort(key=lambda r: r["id"])
    return [(r["id"], root / r["path"], r.get("package", "real")) for r in rows[:n]]


def truth_corners(qm) -> np.ndarray:
    """(F, 3, 3) grid corners of a canonical quantized mesh, each corner z, y, x (the decoder's output order)."""
    return np.asarray(qm.vertices, dtype=np.int64)[:, ::-1][qm.faces]


def coarser_corners(corners: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``bits`` grid corners after a round trip through the ``bits - 1`` grid, and which faces survive it."""
    coarse = quantize_coords(dequantize(corners, bits), bits - 1)  # (F, 3, 3)
    back = quantize_coords(dequantize(coarse, bits - 1), bits)
    e1, e2 = coarse[:, 1] - coarse[:, 0], coarse[:, 2] - coarse[:, 0]
    alive = np.any(np.cross(e1, e2) != 0, axis=1)  # collapsed faces (two corners merged, or flat) are lost
    return back, alive


class Tally:
    """Sums of one tokenizer on one set."""

    def __init__(self):
        self.faces = self.within = self.exact = self.kept = self.tokens = 0
        self.enc_s = self.dec_s = 0.0
        self.chamfer: list[float] = []
        self.watertight_in = self.watertight_kept = self.failed = 0
        self.codes: list[np.ndarray] = []
        self.groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])

    def row(self, tok) -> dict:
        f = max(self.faces, 1)
        tpf = self.tokens / f
        out = {"faces": self.faces, "within_one": self.within / f, "exact": self.exact / f, "faces_kept": self.kept / f,
               "chamfer": float(np.mean(self.chamfer)) if self.chamfer else float("nan"),
               "chamfer_median": float(np.median(self.chamfer)) if self.chamfer else float("nan"),
               "watertight_kept": self.watertight_kept / self.watertight_in if self.watertight_in else float("nan"),
               "tokens_per_face": tpf, "bits_per_face": tpf * math.log2(tok.vocab_size),
               "encode_ms_per_1k_faces": 1e6 * self.enc_s / f, "decode_ms_per_1k_faces": 1e6 * self.dec_s / f,
               "failed_meshes": self.failed}
        if self.codes:
            cfg = tok.model.config.rvq
            codes = np.concatenate(self.codes).reshape(-1, cfg.depth)
            out["codebook_usage"], out["perplexity"] = code_usage(torch.from_numpy(codes), cfg.codebook_size,
                                                                  shared=cfg.shared)
            out["within_one_by_group"] = {g: w / n for g, (w, n) in sorted(self.groups.items())}
        return out


def evaluate_set(items, tokenizers: dict, *, bits: int, samples: int, seed: int, log) -> dict:
    tallies = {name: Tally() for name in tokenizers}
    for k, (item_id, path, group) in enumerate(items):
        try:
            mesh = load_mesh(path)
            qm, norm = prepare(mesh, bits, source=path)
        except MeshgenError as exc:
            log(f"skip {item_id}: {exc}")
            continue
        ref = trimesh.Trimesh(norm.apply(mesh.vertices), mesh.faces, process=False)
        ref_pts = sample_surface(ref, samples, seed=seed).points
        truth = truth_corners(qm)
        watertight = qm.to_trimesh().is_watertight
        for name, tok in tokenizers.items():
            t = tallies[name]
            target = qm
            if tok.bits != bits:
                target, _ = prepare(mesh, tok.bits, source=path)
            t0 = time.perf_counter()
            ids = tok.encode_quantized(target)
            t1 = time.perf_counter()
            back, _ = tok.decode_quantized(ids, strict=False)
            t2 = time.perf_counter()
            t.enc_s += t1 - t0
            t.dec_s += t2 - t1
            t.faces += qm.n_faces
            t.tokens += len(ids) - 2
            t.kept += back.n_faces
            if name.startswith("vqvae"):
                codes = ids[1:-1].reshape(qm.n_faces, tok.slots, tok.depth)
                err = np.abs(tok.model.decode_codes([codes])[0] - truth).reshape(len(truth), -1).max(axis=1)
                t.codes.append(codes)
                t.groups[group][0] += int((err <= 1).sum())
                t.groups[group][1] += len(err)
            elif tok.bits == bits:
                decoded = back.face_set()
                err = np.array([0 if f in decoded else 2 for f in qm.face_set()], dtype=np.int64)
            else:
                back_corners, alive = coarser_corners(truth, bits)
                err = np.where(alive, np.abs(back_corners - truth).reshape(len(truth), -1).max(axis=1), 2)
            t.within += int((err <= 1).sum())
            t.exact += int((err == 0).sum())
            if back.n_faces:
                pts = sample_surface(back.to_trimesh(), samples, seed=seed + 1).points
                t.chamfer.append(chamfer_distance(pts, ref_pts))
            else:
                t.failed += 1
            if watertight:
                t.watertight_in += 1
                t.watertight_kept += int(back.n_faces > 0 and back.to_trimesh().is_watertight)
        if (k + 1) % 20 == 0:
            log(f"{k + 1}/{len(items)} meshes")
    return {name: tallies[name].row(tok) for name, tok in tokenizers.items()}


COLUMNS = [("within_one", "faces within 1 cell", "{:.1%}"), ("exact", "exact faces", "{:.1%}"),
           ("faces_kept", "faces kept", "{:.1%}"), ("chamfer", "Chamfer", "{:.5f}"),
           ("watertight_kept", "watertight kept", "{:.0%}"), ("tokens_per_face", "tokens / face", "{:.2f}"),
           ("bits_per_face", "bits / face", "{:.1f}"), ("codebook_usage", "codes used", "{:.1%}"),
           ("perplexity", "perplexity", "{:.0f}"), ("encode_ms_per_1k_faces", "encode ms / 1k faces", "{:.1f}"),
           ("decode_ms_per_1k_faces", "decode ms / 1k faces", "{:.1f}")]


def markdown(result: dict) -> str:
    head = "| set | tokenizer | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for split, res in result["sets"].items():
        for name, row in res["rows"].items():
            cells = [fmt.format(row[key]) if key in row and not (isinstance(row[key], float) and math.isnan(row[key]))
                     else "-" for key, _, fmt in COLUMNS]
            lines.append(f"| {split} ({res['n_meshes']} meshes, {res['n_faces']} faces) | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="face VQ-VAE directory (default: the bundled one)")
    p.add_argument("--procedural", default="data/procedural", help="`meshgen dataset` folder (its test split)")
    p.add_argument("--real", default="data/real", help="scripts/fetch_real_meshes.py folder")
    p.add_argument("--max-faces", type=int, default=5000, help="skip larger meshes (after clean-up)")
    p.add_argument("--n", type=int, default=None, help="at most this many meshes per set (the first by id)")
    p.add_argument("--samples", type=int, default=10_000, help="surface points per mesh for the Chamfer distance")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--extra", action="append", default=[], metavar="NAME=DIR",
                   help="another face VQ-VAE checkpoint as row vqvae:NAME (an ablation); repeatable")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table after the JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        vq = get_tokenizer("vqvae", **({} if args.checkpoint is None else {"checkpoint": args.checkpoint}))
        extra = {}
        for spec in args.extra:
            name, sep, directory = spec.partition("=")
            if not sep or not name:
                raise ConfigError(f"--extra takes NAME=DIR, got {spec!r}")
            extra[f"vqvae:{name}"] = get_tokenizer("vqvae", checkpoint=directory)
            if extra[f"vqvae:{name}"].bits != vq.bits:
                raise ConfigError(f"--extra {name} works at {extra[f'vqvae:{name}'].bits} bits, not {vq.bits}")
    except MeshgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    bits = vq.bits
    tokenizers = {"vqvae": vq, **extra, f"coords@{bits}": get_tokenizer("coords", bits=bits),
                  f"blocks@{bits}": get_tokenizer("blocks", bits=bits),
                  f"coords@{bits - 1}": get_tokenizer("coords", bits=bits - 1)}
    sets = {"procedural": procedural_items(Path(args.procedural), args.max_faces, args.n),
            "real": real_items(Path(args.real), args.max_faces, args.n)}
    if not any(sets.values()):
        print(f"error: no held-out mesh under {args.procedural} or {args.real}", file=sys.stderr)
        sys.exit(2)
    result = {"checkpoint": args.checkpoint or "bundled", "tokenizer": vq.config,
              "extra": {name: tok.config for name, tok in extra.items()},
              "model": asdict(vq.model.config),
              "max_faces": args.max_faces, "samples": args.samples, "threads": args.threads, "sets": {}}
    for split, items in sets.items():
        if not items:
            log(f"no {split} meshes")
            continue
        t0 = time.time()
        rows = evaluate_set(items, tokenizers, bits=bits, samples=args.samples, seed=args.seed, log=log)
        result["sets"][split] = {"n_meshes": len(items), "n_faces": rows["vqvae"]["faces"], "rows": rows,
                                 "seconds": round(time.time() - t0, 1)}
        log(f"{split}: {len(items)} meshes in {time.time() - t0:.0f} s")
    result["targets"] = {split: {"within_one": TARGETS[split],
                                 "within_one_met": res["rows"]["vqvae"]["within_one"] >= TARGETS[split],
                                 "codebook_usage": USAGE_TARGET,
                                 "codebook_usage_met": res["rows"]["vqvae"]["codebook_usage"] >= USAGE_TARGET}
                         for split, res in result["sets"].items()}
    result["command"] = "python scripts/eval_face_vqvae.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = json.dumps(result, indent=2)
    if args.out:
        atomic_write_text(Path(args.out), text + "\n")
    print(text)
    if args.markdown:
        print()
        print(markdown(result))
    return result


if __name__ == "__main__":
    main()
