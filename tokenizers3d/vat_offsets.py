"""A coarse grid of occupancy offsets fitted to the mesh at encode time: the ``.vat`` file's optional second layer.

The VAT tokens decode to an occupancy field that is right on average and wrong in places: a board too thin, a
corner rounded, a part a little too fat. The encoder has the mesh, so besides the ids it can send a correction:
``cells^3`` logit offsets on a regular grid over the decoding box, ``bits`` bits each (offset ``(code - 2^(bits-1))
x step``), trilinearly interpolated to any decoding resolution and added to the decoder's logits before marching
cubes. With the defaults (10^3 cells of 4 bits: 500 bytes) the ids (512 bytes) and the offsets fit in 1 KB.

The offsets are fitted by gradient descent on the binary cross-entropy between the corrected field on the
encoder's level grid (:data:`tokenizers3d.vat_fit.LEVEL_RESOLUTION` per side) and the mesh's occupancy at the
same points (:func:`tokenizers3d.vat.mesh_occupancy`) plus a small penalty on the offsets' mean square (without
it the voxels far outside push every offset to its floor, and the interpolated floor erodes thin parts nearby),
then rounded to their codes. Measured effect:
``docs/tokenizers.md`` ("Offsets: a second layer").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_CELLS = 10
DEFAULT_BITS = 4
DEFAULT_STEP = 0.5  # logit units per code
FIT_STEPS = 60
FIT_LR = 0.5
FIT_REG = 0.01  # weight of the offsets' mean square: without it far voxels drive every offset to the floor


@dataclass(frozen=True)
class OffsetGrid:
    """``codes`` ``(cells^3,)`` in ``0 .. 2^bits - 1`` (x-major, as the occupancy grid); offset = ``(code -
    2^(bits-1)) x step`` logits at the grid's corners (the first and last cell centres sit on the box's faces)."""

    cells: int
    bits: int
    step: float
    codes: np.ndarray

    def __post_init__(self):
        if not 2 <= self.cells <= 64 or not 1 <= self.bits <= 8 or not (np.isfinite(self.step) and self.step > 0):
            raise ValueError(f"offset grid of {self.cells} cells, {self.bits} bits, step {self.step}: cells must be "
                             "2..64, bits 1..8, step > 0")
        codes = np.asarray(self.codes)
        if codes.shape != (self.cells**3,) or (len(codes) and (codes.min() < 0 or codes.max() >= 1 << self.bits)):
            raise ValueError(f"an offset grid of {self.cells}^3 cells needs that many codes in 0..{(1 << self.bits) - 1}")

    @property
    def payload_bytes(self) -> int:
        return -(-self.cells**3 * self.bits // 8)

    def offsets(self) -> np.ndarray:
        """The logit offsets ``(cells, cells, cells)`` float32."""
        zero = 1 << (self.bits - 1)
        return ((np.asarray(self.codes, dtype=np.float32) - zero) * self.step).reshape((self.cells,) * 3)


def _upsample(offsets, size: int):
    import torch.nn.functional as F

    return F.interpolate(offsets, size=(size, size, size), mode="trilinear", align_corners=True)


def _logits(grid: np.ndarray):
    import torch

    p = torch.as_tensor(np.asarray(grid, dtype=np.float32)).clamp(1e-6, 1 - 1e-6)
    return torch.log(p) - torch.log1p(-p)


def apply_offsets(grid: np.ndarray, offsets: OffsetGrid) -> np.ndarray:
    """The occupancy probabilities of ``grid`` (``(R, R, R)``, :meth:`~tokenizers3d.vat.VATModel.occupancy_grid`)
    with ``offsets`` added to their logits."""
    import torch

    r = grid.shape[0]
    with torch.no_grad():
        up = _upsample(torch.as_tensor(offsets.offsets())[None, None], r)[0, 0]
        return torch.sigmoid(_logits(grid) + up).numpy()


def fit_offsets(grid: np.ndarray, vertices: np.ndarray, faces: np.ndarray, *, cells: int = DEFAULT_CELLS,
                bits: int = DEFAULT_BITS, step: float = DEFAULT_STEP, steps: int = FIT_STEPS,
                lr: float = FIT_LR, reg: float = FIT_REG) -> OffsetGrid:
    """The offsets that bring ``grid`` (occupancy probabilities over ``[-BOX, BOX]^3``) closest to the occupancy of
    the mesh ``(vertices, faces)`` in the unit frame (see the module docstring). Deterministic."""
    import torch
    import torch.nn.functional as F

    from .vat import BOX, mesh_occupancy

    r = grid.shape[0]
    axis = np.linspace(-BOX, BOX, r, dtype=np.float32)
    points = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    target = torch.as_tensor(mesh_occupancy(vertices, faces, points).reshape(1, 1, r, r, r).astype(np.float32))
    z = _logits(grid)[None, None]
    zero = 1 << (bits - 1)
    bound = ((1 << bits) - 1 - zero) * step
    b = torch.zeros(1, 1, cells, cells, cells, requires_grad=True)
    opt = torch.optim.Adam([b], lr=lr)
    with torch.enable_grad():  # callers decode under no_grad
        for _ in range(steps):
            loss = F.binary_cross_entropy_with_logits(z + _upsample(b.clamp(-zero * step, bound), r), target)
            loss = loss + reg * (b**2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    codes = torch.clamp(torch.round(b.detach() / step) + zero, 0, (1 << bits) - 1).to(torch.uint8).reshape(-1)
    return OffsetGrid(cells, bits, float(step), codes.numpy())
