"""The compress job: a mesh to a ``.vat`` file of VAT tokens and back (``meshgen compress`` / ``decompress``).

:func:`compress_file` reads a mesh, moves it into the unit cube, samples ``n_points`` surface points with
normals, encodes them with the VAT model (:mod:`tokenizers3d.vat`), by default fits the ids to the mesh itself
(:mod:`tokenizers3d.vat_fit`: analysis by synthesis through the frozen decoder), keeps the first ``scales``
scales and writes the ids (:mod:`tokenizers3d.vatfile`). :func:`decompress_file` decodes the ids into an occupancy field,
extracts the surface by marching cubes at ``resolution`` and writes the mesh back in the input's frame. Lossy:
the output is a closed surface near the input, not the input's triangles.

Weights: ``checkpoint`` (a ``scripts/train_vat.py`` run folder's ``best``), default :data:`DEFAULT_CHECKPOINT`
(``assets/checkpoints/vat``, the bundled first CPU-trained model, with its card; were it removed, both commands say
so and exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError, MeshInputError
from .vatfile import VatFile, read_vat, write_vat

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "checkpoints" / "vat"
DEFAULT_POINTS = 2048
DEFAULT_FIT_STEPS = 150  # encode-time fitting (tokenizers3d.vat_fit): docs/tokenizers.md, "Encode-time fitting"
AUTO_LEVEL = "auto"  # the encoder picks the surface level per shape: docs/tokenizers.md, "The surface level"


def load_vat_model(checkpoint: str | Path | None = None, *, device: str = "cpu"):
    """``(model, digest)`` of a VAT model directory in evaluation mode; a missing or foreign one raises
    :class:`MeshInputError` naming it."""
    from .checkpoint import model_digest
    from .vat import VATModel

    directory = Path(DEFAULT_CHECKPOINT if checkpoint is None else checkpoint)
    if checkpoint is None and not directory.exists():
        raise MeshInputError(directory, "no VAT weights are installed yet; train them with "
                                        "'python scripts/train_vat.py --config configs/vat_cpu.yaml' and pass "
                                        "--checkpoint runs/vat/best")
    model = VATModel.from_pretrained(directory, map_location=device).eval()
    return model, model_digest(directory)


def _latent_means(model, mesh, *, n_points: int, seed: int, device: str):
    """``(mean (1, L, c), normalization)``: the encoder's latent means for ``mesh`` (any frame; moved into the unit
    frame by :class:`~tokenizers3d.mesh.Normalization`, ``n_points`` surface samples drawn with ``seed``)."""
    import torch

    from .sample import sample_unit_surface

    cloud, norm = sample_unit_surface(mesh, n_points, seed=seed)
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)[None]  # noqa: E731
    with torch.no_grad():
        return model.encode_gaussian(t(cloud.points), t(cloud.normals))[0], norm


def encode_mesh(model, mesh, *, n_points: int = DEFAULT_POINTS, seed: int = 0, device: str = "cpu"):
    """``(codes, normalization)``: the per-scale ids ``(1, n_s)`` a VAT model gives ``mesh`` (a trimesh, any frame;
    moved into the unit frame by :class:`~tokenizers3d.mesh.Normalization`, ``n_points`` surface samples drawn
    with ``seed``)."""
    mean, norm = _latent_means(model, mesh, n_points=n_points, seed=seed, device=device)
    return model.codes_of(mean), norm


def encode_mesh_fitted(model, mesh, settings, *, n_points: int = DEFAULT_POINTS, seed: int = 0, device: str = "cpu"):
    """``(codes, normalization, report)``: as :func:`encode_mesh`, then the ids fitted to the mesh itself
    (:func:`tokenizers3d.vat_fit.fit_codes` with ``settings``, a :class:`~tokenizers3d.vat_fit.FitSettings`)."""
    from .vat_fit import fit_codes

    mean, norm = _latent_means(model, mesh, n_points=n_points, seed=seed, device=device)
    unit = norm.apply(np.asarray(mesh.vertices, dtype=np.float64))
    codes, report = fit_codes(model, unit, np.asarray(mesh.faces), mean, settings)
    return codes, norm, report


def parse_level(level: float | str) -> float | str:
    """``level`` as :func:`compress_file` takes it: :data:`AUTO_LEVEL`, or a number strictly between 0 and 1 (a
    string such as ``"0.3"`` is read); anything else raises :class:`ConfigError` naming ``--level``."""
    if level == AUTO_LEVEL:
        return AUTO_LEVEL
    try:
        value = float(level)
    except (TypeError, ValueError):
        raise ConfigError(f"--level must be 'auto' or a number between 0 and 1, got {level!r}") from None
    if not 0.0 < value < 1.0:
        raise ConfigError(f"--level must be 'auto' or a number between 0 and 1, got {value}")
    return value


@dataclass
class CompressResult:
    out: Path
    file_bytes: int
    payload_bytes: int
    tokens: int
    scales: int
    fit: dict | None = None  # what the encode-time fit did (FitReport's fields), when it ran
    level: float = 0.5  # the surface level written into the file
    offsets_bytes: int = 0  # the offset grid's section (0: none written, or asked for and dropped as no better)


def compress_file(mesh_path: str | Path, out_path: str | Path, *, checkpoint: str | Path | None = None,
                  scales: int | None = None, n_points: int = DEFAULT_POINTS, seed: int = 0, max_faces: int | None = None,
                  device: str = "cpu", fit_steps: int | None = None,
                  level: float | str = AUTO_LEVEL, offsets: int = 0) -> CompressResult:
    """Write the VAT ids of ``mesh_path`` (its first ``scales`` scales, default all) to ``out_path``; with
    ``fit_steps > 0`` (``None``: :data:`DEFAULT_FIT_STEPS`) the ids are fitted to the mesh first
    (:mod:`tokenizers3d.vat_fit`; same decoder and format, closer shapes, about 0.13 s a step on one core).
    ``level``: the occupancy level the file is decoded at -- :data:`AUTO_LEVEL` (default) picks the one whose
    surface lies closest to the mesh (:func:`tokenizers3d.vat_fit.choose_level`: one decoder pass over a 96^3 grid
    and 13 marching cubes), a number in (0, 1)
    fixes it (0.5: the decoder's own, as files were before the level was stored). ``offsets``: cells per side of
    an occupancy-offset grid fitted to the mesh and written after the ids (:mod:`tokenizers3d.vat_offsets`; 10:
    504 more bytes, format version 2); 0 (default) writes the ids alone. With the automatic level the grid is kept
    only when its surface lies closer to the mesh than the ids' own (else the file is the ids alone)."""
    import torch

    from .io import check_output_path, load_mesh, refuse_overwrite

    out_path = Path(out_path)
    refuse_overwrite(out_path, mesh_path, checkpoint)
    check_output_path(out_path)
    model, digest = load_vat_model(checkpoint, device=device)
    q = model.config.quantizer
    kept = len(q.scales) if scales is None else int(scales)
    if not 1 <= kept <= len(q.scales):
        raise ConfigError(f"--scales must be between 1 and {len(q.scales)}, got {scales}")
    level = parse_level(level)
    if offsets and not 2 <= int(offsets) <= 64:
        raise ConfigError(f"--offsets must be 0 (none) or 2 to 64 cells per side, got {offsets}")
    fit_steps = DEFAULT_FIT_STEPS if fit_steps is None else int(fit_steps)
    if fit_steps < 0:
        raise ConfigError(f"--fit-steps must be 0 or more, got {fit_steps}")
    mesh = load_mesh(mesh_path, max_faces=max_faces)
    report = None
    if fit_steps:
        from dataclasses import asdict

        from .vat_fit import FitSettings

        codes, norm, fitted = encode_mesh_fitted(model, mesh, FitSettings(steps=fit_steps, seed=seed),
                                                 n_points=n_points, seed=seed, device=device)
        report = asdict(fitted)
    else:
        codes, norm = encode_mesh(model, mesh, n_points=n_points, seed=seed, device=device)
    ids = torch.cat(codes[:kept], dim=-1)[0].cpu().numpy()
    grid = None
    if level == AUTO_LEVEL or offsets:
        from .vat_fit import LEVEL_RESOLUTION

        with torch.no_grad():
            grid = model.occupancy_grid(model.decode_ids(codes, scales=kept), LEVEL_RESOLUTION)
        unit = norm.apply(np.asarray(mesh.vertices, dtype=np.float64))
    level, grid_offsets = choose_surface(grid, unit, np.asarray(mesh.faces), level, offsets) if grid is not None \
        else (level, None)
    f = VatFile(ids, model.config.bits_per_token, len(q.scales), kept, digest, norm, level, grid_offsets)
    size = write_vat(out_path, f)
    return CompressResult(out_path, size, f.payload_bytes, len(ids), kept, report, level,
                          f.payload_bytes - f.ids_bytes)


def choose_surface(grid: np.ndarray, vertices: np.ndarray, faces: np.ndarray, level: float | str, offsets: int, *,
                   plain: tuple[float, dict] | None = None):
    """``(level, OffsetGrid or None)`` the encoder writes for the decoded ``grid`` of a mesh ``(vertices, faces)``
    in the unit frame: with ``offsets`` cells an offset grid is fitted (:func:`tokenizers3d.vat_offsets.fit_offsets`);
    with :data:`AUTO_LEVEL` the level is chosen (:func:`tokenizers3d.vat_fit.choose_level`) on the grid with and
    without the offsets, and the offsets are kept only when their surface is the closer one (Chamfer). ``plain``:
    ``choose_level``'s answer for ``grid`` when the caller has it already."""
    from .vat_fit import choose_level
    from .vat_offsets import apply_offsets, fit_offsets

    found = fit_offsets(grid, vertices, faces, cells=int(offsets)) if offsets else None
    if level != AUTO_LEVEL:
        return level, found
    best, scores = plain if plain is not None else choose_level(grid, vertices, faces)
    if found is None:
        return best, None
    refined, refined_scores = choose_level(apply_offsets(grid, found), vertices, faces)
    return (refined, found) if refined_scores[refined] < scores[best] else (best, None)


def decompress_file(vat_path: str | Path, out_path: str | Path, *, checkpoint: str | Path | None = None,
                    resolution: int = 128, device: str = "cpu"):
    """Decode a ``.vat`` file into a mesh at ``out_path`` (OBJ, PLY, ...; the input's frame); returns it."""
    import torch

    from .io import check_output_path, refuse_overwrite, save_mesh
    from .vat import grid_to_mesh

    out_path = Path(out_path)
    refuse_overwrite(out_path, vat_path, checkpoint)
    check_output_path(out_path)
    if not 16 <= int(resolution) <= 512:
        raise ConfigError(f"--resolution must be between 16 and 512, got {resolution}")
    model, digest = load_vat_model(checkpoint, device=device)
    q = model.config.quantizer
    f = read_vat(vat_path, scales=tuple(q.scales))
    if f.digest != digest[: len(f.digest)]:
        raise MeshInputError(vat_path, f"was made by VAT weights {f.digest}, not by these ({digest[:16]}); pass the "
                                       "--checkpoint that made it")
    if f.bits != model.config.bits_per_token or (len(f.ids) and f.ids.max() >= q.codebook_size):
        raise MeshInputError(vat_path, "holds ids outside this model's codebook")
    ids = torch.as_tensor(f.ids, device=device)[None]
    with torch.no_grad():
        planes = model.decode_ids(model.quantizer.split(ids), scales=f.scales_kept)
        grid = model.occupancy_grid(planes, int(resolution))
    if f.offsets is not None:
        from .vat_offsets import apply_offsets

        grid = apply_offsets(grid, f.offsets)
    vertices, faces = grid_to_mesh(grid, level=f.level)
    if len(faces) == 0:
        raise MeshInputError(vat_path, "decodes to an empty shape (no surface in the occupancy field)")
    import trimesh

    mesh = trimesh.Trimesh(f.normalization.invert(vertices), faces, process=False)
    save_mesh(out_path, mesh)
    return mesh
