"""``vat``: the learned, **lossy** shape tokenizer over a VAT checkpoint (:mod:`tokenizers3d.vat`).

Grammar (``S`` scales of ``n_1 <= ... <= n_S`` tokens and ``K`` codes, from the checkpoint)::

    sequence := BOS scale_1 ... scale_k EOS        # any prefix of k >= 1 whole scales
    scale_s  := id{n_s}                            # ids 0 .. K-1, next-scale (coarse to fine) order

Vocabulary: PAD = K, BOS = K + 1, EOS = K + 2. A sequence of the first ``k`` scales is a complete, coarser
shape (tail drop): ``--scales k`` when encoding keeps only those.

Encoding does not read the triangles: it samples ``n_points`` surface points with normals from the mesh (in
the unit cube; the :class:`~tokenizers3d.base.Encoding` keeps the normalization), runs the VAT encoder and
the multi-scale quantizer. Decoding runs the triplane decoder and marching cubes at ``resolution`` cells per
side and returns the closed surface, quantized at ``bits`` like every other tokenizer's output. So
``decode(encode(m))`` is a watertight approximation of ``m``, never its triangles: measure the error with
``scripts/eval_vat.py``. Strict decoding raises :class:`~tokenizers3d.errors.TokenizationError` for a
malformed sequence (envelope, an id outside ``0 .. K-1``, a body that is not a whole number of scales).

The config names the checkpoint (None: the bundled ``assets/checkpoints/vat``) and the SHA-256
prefix of its weights; token files never decode with other weights than they were made with.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .base import DecodeReport, MeshTokenizer, locate_body, register_tokenizer
from .errors import ConfigError, MeshInputError, TokenizationError
from .mesh import QuantizedMesh, canonical_order, clean_faces, dequantize, quantize_coords

_CACHE: dict[tuple, tuple] = {}


def _load(checkpoint, device: str):
    from .compress import DEFAULT_CHECKPOINT, load_vat_model

    path = DEFAULT_CHECKPOINT if checkpoint is None else Path(checkpoint)
    weights = path / "model.safetensors"
    stamp = (weights.stat().st_mtime_ns, weights.stat().st_size) if weights.is_file() else None
    key = (str(path.resolve()), stamp, device)  # weights rewritten in place (a training run's best/) load again
    if key not in _CACHE:
        _CACHE[key] = load_vat_model(checkpoint, device=device)
    return _CACHE[key], path


@register_tokenizer("vat")
class VATTokenizer(MeshTokenizer):
    """Shape tokens of a VAT checkpoint; lossy (module docstring).

    Parameters
    ----------
    checkpoint : str or Path or None
        VAT model directory (``scripts/train_vat.py``); None: the bundled one.
    bits : int
        Quantization of the decoded surface (as the other tokenizers' output).
    scales : int or None
        Keep the first ``scales`` scales when encoding (None: all).
    n_points, resolution, seed : int
        Surface samples the encoder reads, marching-cubes cells per side, sampling seed.
    checkpoint_sha256 : str or None
        When given (a config from a token file), the checkpoint's digest must start with it.
    """

    lossless = False

    def __init__(self, checkpoint: str | Path | None = None, bits: int = 10, scales: int | None = None,
                 n_points: int = 2048, resolution: int = 96, seed: int = 0, checkpoint_sha256: str | None = None,
                 *, device: str = "cpu"):
        super().__init__(bits)
        (model, digest), path = _load(checkpoint, device)
        if checkpoint_sha256 is not None and not digest.startswith(checkpoint_sha256):
            raise MeshInputError(path, f"VAT weights differ from those the tokens were made with (sha256 {digest}, "
                                       f"expected {checkpoint_sha256})")
        self.model, self.digest, self.device = model, digest, device
        q = model.config.quantizer
        self.scale_sizes = tuple(int(s) for s in q.scales)
        self.codebook_size = int(q.codebook_size)
        if scales is not None and not 1 <= int(scales) <= len(self.scale_sizes):
            raise ConfigError(f"--scales must be between 1 and {len(self.scale_sizes)}, got {scales}")
        if not 16 <= int(resolution) <= 512:
            raise ConfigError(f"resolution must be between 16 and 512, got {resolution}")
        self.scales = None if scales is None else int(scales)
        self.n_points, self.resolution, self.seed = int(n_points), int(resolution), int(seed)
        from .compress import DEFAULT_CHECKPOINT

        resolved = path.resolve()
        self.checkpoint = None if resolved == DEFAULT_CHECKPOINT.resolve() else str(resolved)

    @property
    def vocab_size(self) -> int:
        return self.codebook_size + 3

    @property
    def config(self) -> dict:
        return {"name": self.name, "bits": self.bits, "checkpoint": self.checkpoint, "scales": self.scales,
                "n_points": self.n_points, "resolution": self.resolution, "seed": self.seed,
                "checkpoint_sha256": self.digest}

    # ---- encoding -------------------------------------------------------------------------------------
    def encode_quantized(self, qm: QuantizedMesh) -> np.ndarray:
        """The shape of a quantized mesh (unit cube) -> ``[BOS] + ids of the kept scales + [EOS]``."""
        import torch
        import trimesh

        from .sample import sample_surface

        mesh = trimesh.Trimesh(dequantize(qm.vertices, qm.bits), qm.faces, process=False)
        cloud = sample_surface(mesh, self.n_points, seed=self.seed)
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=self.device)[None]  # noqa: E731
        with torch.no_grad():
            codes = self.model.encode(t(cloud.points), t(cloud.normals))
        kept = len(codes) if self.scales is None else self.scales
        body = torch.cat(codes[:kept], dim=-1)[0].cpu().numpy().astype(np.int64)
        return np.concatenate([[self.bos_id], body, [self.eos_id]]).astype(np.int64)

    # ---- decoding -------------------------------------------------------------------------------------
    def decode_quantized(self, ids: Sequence[int] | np.ndarray, *, strict: bool = True
                         ) -> tuple[QuantizedMesh, DecodeReport]:
        import torch

        from .vat import grid_to_mesh

        body = locate_body(self, ids, strict=strict)
        tokens = np.asarray(body.ids[body.start:body.stop], dtype=np.int64)
        bad = np.nonzero((tokens < 0) | (tokens >= self.codebook_size))[0]
        error = None
        usable = len(tokens)
        if len(bad):
            usable = int(bad[0])
            error = TokenizationError(f"id {int(tokens[bad[0]])} is not a VAT code (0 .. {self.codebook_size - 1})",
                                      body.start + usable)
        ends = np.cumsum(self.scale_sizes)
        kept = int(np.searchsorted(ends, usable, side="right"))  # whole scales within the usable tokens
        if error is None and (kept == 0 or ends[kept - 1] != usable):
            error = TokenizationError(f"{usable} ids are not a whole number of scales (scale ends: "
                                      f"{', '.join(map(str, ends))})", body.start + (int(ends[kept - 1]) if kept else 0))
        if strict and (error is not None or body.tail_error is not None):
            raise error or body.tail_error
        if kept == 0:
            raise TokenizationError("no complete scale to decode", body.start)
        flat = torch.as_tensor(tokens[: ends[kept - 1]], device=self.device)[None]
        splits = list(torch.split(flat, list(self.scale_sizes[:kept]), dim=-1))
        with torch.no_grad():
            planes = self.model.decode_ids(splits, scales=kept)
            vertices, faces = grid_to_mesh(self.model.occupancy_grid(planes, self.resolution))
        q = quantize_coords(np.clip(vertices, -0.5, 0.5), self.bits) if len(vertices) else np.zeros((0, 3), np.int64)
        v, f, _ = clean_faces(q, faces)
        qm = canonical_order(QuantizedMesh(v.astype(np.int64), f, self.bits))
        used = body.start + int(ends[kept - 1]) + int(error is None and body.stop < len(body.ids))
        errors = [e for e in (body.head_error, error, body.tail_error) if e is not None]
        report = DecodeReport(n_tokens=len(body.ids), used_tokens=used, dropped_tokens=len(body.ids) - used,
                              error=str(errors[0]) if errors else None,
                              error_position=errors[0].position if errors else None,
                              n_faces=qm.n_faces, dropped_faces=len(faces) - qm.n_faces)
        return qm, report


__all__ = ["VATTokenizer"]
