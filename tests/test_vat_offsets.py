"""The .vat file's second layer: an occupancy-offset grid fitted to the mesh at encode time (tokenizers3d.vat_offsets)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from tokenizers3d.errors import MeshInputError
from tokenizers3d.mesh import Normalization
from tokenizers3d.vat import BOX, grid_to_mesh
from tokenizers3d.vat_offsets import OffsetGrid, apply_offsets, fit_offsets
from tokenizers3d.vatfile import HEADER_BYTES, VatFile, encode_vat, read_vat

ROOT = Path(__file__).resolve().parents[1]


def _radial_grid(r: int = 32, radius: float = 0.25) -> np.ndarray:
    """Occupancy probabilities of a ball: 0.5 at ``radius``, falling off with the distance."""
    axis = np.linspace(-BOX, BOX, r)
    dist = np.linalg.norm(np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1), axis=-1)
    return 1.0 / (1.0 + np.exp((dist - radius) * 20.0))


def test_offset_grid_codes_and_identity():
    zero = OffsetGrid(4, 4, 0.5, np.full(64, 8, dtype=np.uint8))
    assert zero.payload_bytes == 32 and np.all(zero.offsets() == 0)
    grid = _radial_grid(16)
    assert np.allclose(apply_offsets(grid, zero), grid, atol=1e-5)
    up = OffsetGrid(4, 4, 0.5, np.full(64, 12, dtype=np.uint8))  # +2 logits everywhere
    assert np.all(apply_offsets(grid, up) > grid - 1e-6) and apply_offsets(grid, up).mean() > grid.mean()
    for bad in (dict(cells=1), dict(bits=9), dict(step=0.0), dict(codes=np.zeros(63, dtype=np.uint8)),
                dict(codes=np.full(64, 16))):
        with pytest.raises(ValueError):
            OffsetGrid(**{"cells": 4, "bits": 4, "step": 0.5, "codes": np.zeros(64, dtype=np.uint8), **bad})


def test_fitted_offsets_move_the_surface_onto_the_mesh(one_thread):
    """The decoder's ball is too small (radius 0.25) for the mesh (a box): the fitted offsets grow it into the box,
    so the corrected surface lies much closer to the mesh; fitting is deterministic."""
    from tokenizers3d.metrics import chamfer_distance
    from tokenizers3d.sample import sample_surface

    grid = _radial_grid(32)
    box = trimesh.creation.box(extents=(0.7, 0.5, 0.3))
    found = fit_offsets(grid, box.vertices, box.faces, cells=6)
    assert np.array_equal(found.codes, fit_offsets(grid, box.vertices, box.faces, cells=6).codes)
    assert found.codes.shape == (216,) and found.payload_bytes == 108
    ref = sample_surface(box, 4096, seed=0).points

    def distance(g):
        v, f = grid_to_mesh(g)
        return chamfer_distance(sample_surface(trimesh.Trimesh(v, f, process=False), 4096, seed=1).points, ref)

    before, after = distance(grid), distance(apply_offsets(grid, found))
    assert after < 0.5 * before, (before, after)


def test_vat_file_with_offsets_round_trip_and_damage(tmp_path):
    norm = Normalization(center=(1.0, 2.0, 3.0), scale=4.0)
    base = dict(ids=np.arange(5), bits=4, model_scales=2, scales_kept=2, digest="00" * 8, normalization=norm)
    plain = encode_vat(VatFile(**base))
    assert plain[4] == 1  # no offsets: version 1, as before
    codes = np.random.default_rng(0).integers(0, 16, 125).astype(np.uint8)
    grid = OffsetGrid(5, 4, 0.5, codes)
    data = encode_vat(VatFile(**base, level=0.3, offsets=grid))
    assert data[4] == 2 and len(data) == len(plain) + 4 + grid.payload_bytes
    (tmp_path / "o.vat").write_bytes(data)
    back = read_vat(tmp_path / "o.vat", scales=(1, 4))
    assert np.array_equal(back.ids, np.arange(5)) and back.level == pytest.approx(0.3, abs=1e-4)
    assert (back.offsets.cells, back.offsets.bits, back.offsets.step) == (5, 4, 0.5)
    assert np.array_equal(back.offsets.codes, codes)
    assert VatFile(**base, offsets=grid).payload_bytes == 3 + 4 + 63

    def resealed(body: bytes) -> bytes:
        return body + struct.pack("<I", zlib.crc32(body))

    ids_end = HEADER_BYTES + 3
    cases = {"cut_offsets": resealed(data[:-10]),  # CRC fine, section too short
             "cells": resealed(data[:ids_end] + bytes([6]) + data[ids_end + 1:-4]),  # 6^3 cells claimed
             "no_section": resealed(data[:ids_end + 2]),
             "version": resealed(data[:4] + bytes([3]) + data[5:-4])}
    for name, bad in cases.items():
        (tmp_path / f"{name}.vat").write_bytes(bad)
        with pytest.raises(MeshInputError, match=f"{name}.vat"):
            read_vat(tmp_path / f"{name}.vat")


def test_compress_with_offsets_and_the_command(tmp_path, one_thread):
    """A tiny random model: with a fixed level the offsets are always written (504 bytes for 10^3 cells) and the
    file decodes; the command refuses a bad cell count with one line."""
    import json
    import subprocess
    import sys

    from tokenizers3d.compress import compress_file, decompress_file
    from tokenizers3d.msrq import MSRQConfig
    from tokenizers3d.vat import VATConfig, VATModel

    torch.manual_seed(0)
    config = VATConfig(dim=32, heads=2, enc_layers=1, dec_layers=1, n_freqs=4, plane_base=4, plane_res=8,
                       plane_channels=8, mlp_hidden=16,
                       quantizer=MSRQConfig(dim=8, scales=(1, 4), codebook_size=64))
    VATModel(config).save_pretrained(tmp_path / "m")
    mesh = tmp_path / "box.ply"
    trimesh.creation.box(extents=(2.0, 1.0, 0.5)).export(mesh)
    res = compress_file(mesh, tmp_path / "b.vat", checkpoint=tmp_path / "m", fit_steps=0, level=0.5, offsets=10)
    assert res.offsets_bytes == 504 and res.payload_bytes == config.bytes_for(2) + 504
    f = read_vat(tmp_path / "b.vat")
    assert f.offsets is not None and f.offsets.cells == 10
    try:
        out = decompress_file(tmp_path / "b.vat", tmp_path / "b.obj", checkpoint=tmp_path / "m", resolution=24)
        assert out.is_watertight
    except MeshInputError as exc:  # a random model may decode to nothing, said in one line
        assert "empty shape" in str(exc)
    bad = subprocess.run([sys.executable, "-m", "meshgen.cli", "compress", str(mesh), "-o", str(tmp_path / "x.vat"),
                          "--checkpoint", str(tmp_path / "m"), "--offsets", "1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--offsets" in bad.stderr and not (tmp_path / "x.vat").exists()
    ok = subprocess.run([sys.executable, "-m", "meshgen.cli", "compress", str(mesh), "-o", str(tmp_path / "y.vat"),
                         "--checkpoint", str(tmp_path / "m"), "--offsets", "4", "--fit-steps", "0"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["offsets_bytes"] in (0, 4 + 32)  # kept only when it helps


def _stairs(steps: int = 6) -> trimesh.Trimesh:
    """A staircase of overlapping boxes (the encoder's ids round its steps off)."""
    parts = [trimesh.creation.box(extents=(0.3, 2.0, 0.2 * (k + 1)), transform=trimesh.transformations.translation_matrix(
        (0.3 * k, 0.0, 0.1 * (k + 1)))) for k in range(steps)]
    return trimesh.util.concatenate(parts)


def test_bundled_weights_with_offsets_decode_closer(tmp_path, one_thread):
    """Bundled weights, a staircase, the encoder's ids: with 10^3 offsets (504 bytes) the payload stays under 1 KB
    and the decoded surface lies closer to the stairs than the ids' alone."""
    from tokenizers3d.compress import DEFAULT_CHECKPOINT, compress_file, decompress_file
    from tokenizers3d.io import load_mesh
    from tokenizers3d.metrics import evaluate_mesh

    if not (DEFAULT_CHECKPOINT / "model.safetensors").exists():
        pytest.skip("no bundled VAT weights")
    stairs = tmp_path / "stairs.ply"
    _stairs().export(stairs)
    plain = compress_file(stairs, tmp_path / "p.vat", fit_steps=0)
    refined = compress_file(stairs, tmp_path / "r.vat", fit_steps=0, offsets=10)
    assert plain.payload_bytes == 512 and refined.offsets_bytes == 504 and refined.payload_bytes <= 1024
    scores = {}
    for name in ("p", "r"):
        decompress_file(tmp_path / f"{name}.vat", tmp_path / f"{name}.obj", resolution=64)
        scores[name] = evaluate_mesh(load_mesh(tmp_path / f"{name}.obj"), load_mesh(stairs))
    assert scores["r"].chamfer < scores["p"].chamfer and scores["r"].fscore_002 > scores["p"].fscore_002, scores
