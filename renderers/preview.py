"""PNG previews: a grid of shaded views with face edges drawn, so a mesh's topology is visible.

Every preview the package shows comes from :func:`render_preview` (the ``meshgen preview`` command calls
it too). Views sit on a ring ``elevation`` degrees above the horizon looking at the mesh from the four
diagonals (more views spread evenly on the ring); the field of view is narrowed so that the mesh fills
the frame in the widest view. Each view is rendered at ``supersample`` times the size and box-filtered
down, which anti-aliases silhouettes and turns the two-pixel edge lines into one-pixel ones.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import trimesh

from tokenizers3d.io import atomic_path, check_output_path, load_mesh
from tokenizers3d.mesh import Normalization

from .cameras import rig_from_eyes, sphere_rig
from .render import MeshRenderer, RenderOutput, RenderSettings, project_to_ndc, to_uint8

EDGE_DARKEN = 0.55  # interior edges keep 45 % of their brightness
SILHOUETTE_DARKEN = 0.8


def face_edges(pix_to_face: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels where the visible face changes, from a face-id map.

    Parameters
    ----------
    pix_to_face : (..., H, W) int
        Face index per pixel, -1 for background.

    Returns
    -------
    interior : (..., H, W) bool
        Foreground pixels whose right, left, lower or upper neighbour shows another face.
    silhouette : (..., H, W) bool
        Foreground pixels next to background (or the image border).
    """
    p = np.asarray(pix_to_face)
    fg = p >= 0
    pad = np.pad(p, [(0, 0)] * (p.ndim - 2) + [(1, 1), (1, 1)], constant_values=-1)
    centre = pad[..., 1:-1, 1:-1]
    neighbours = [pad[..., 1:-1, 2:], pad[..., 1:-1, :-2], pad[..., 2:, 1:-1], pad[..., :-2, 1:-1]]
    silhouette = fg & np.any([n < 0 for n in neighbours], axis=0)
    interior = fg & ~silhouette & np.any([n != centre for n in neighbours], axis=0)
    return interior, silhouette


def edge_strength(interior: np.ndarray, foreground: np.ndarray) -> float:
    """How much to darken interior edges: ``EDGE_DARKEN``, faded when edges cover much of the mesh.

    A dense mesh (faces a few pixels wide) would otherwise turn almost black; above a quarter of the
    foreground the strength falls linearly, to 15 % of ``EDGE_DARKEN`` at half of it.
    """
    density = float(interior.sum()) / max(1, int(foreground.sum()))
    return EDGE_DARKEN * float(np.clip((0.5 - density) / 0.25, 0.15, 1.0))


def _downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Box filter (..., H, W, C) by an integer factor."""
    if factor == 1:
        return image
    *lead, h, w, c = image.shape
    return image.reshape(*lead, h // factor, factor, w // factor, factor, c).mean(axis=(-4, -2))


def _fitted_fov(mesh_unit: trimesh.Trimesh, eyes: np.ndarray, fov: float, fill: float) -> float:
    """Field of view at which the mesh's widest projection spans ``fill`` of the frame half-width."""
    rig = rig_from_eyes(eyes, fov=fov)
    ndc = project_to_ndc(torch.as_tensor(np.asarray(mesh_unit.vertices), dtype=torch.float32), rig.to_pytorch3d())
    extent = float(ndc[..., :2].abs().max())
    if not math.isfinite(extent) or extent <= 0:
        return fov
    half = math.atan(math.tan(math.radians(fov) / 2.0) * extent / fill)
    return math.degrees(2.0 * half)


def render_preview_views(mesh: trimesh.Trimesh, *, n_views: int = 4, image_size: int = 256,
                         face_colors: np.ndarray | None = None, edges: bool = True, elevation: float = 25.0,
                         supersample: int = 2, fill: float = 0.92, crop: bool = True,
                         device: str | torch.device = "cpu",
                         background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Shaded views of ``mesh`` with edges drawn.

    Parameters
    ----------
    mesh : trimesh.Trimesh
        Any frame; it is normalized into the unit cube first.
    n_views : int
        Views on the ring (azimuths 45, 135, 225, 315 degrees for four).
    image_size : int
        Side of each view in pixels.
    face_colors : (F, 3 or 4) uint8 or float, optional
        Per-face base colours (e.g. :func:`tokenizers3d.io.label_colors` of segment labels).
    edges : bool
        Darken pixels where the visible face changes (interior edges) and along the silhouette.
    elevation : float
        Ring elevation in degrees (world up is ``+z``).
    supersample : int
        Render at this multiple of ``image_size`` and box-filter down.
    fill : float
        Fraction of the frame half-width the widest view's projection reaches.
    crop : bool
        Crop every view to the rows and columns any view covers (flat objects leave no empty bands).

    Returns
    -------
    views : (n_views, H, W, 3) uint8
        ``H = W = image_size`` unless cropped.
    """
    supersample = max(1, int(supersample))
    settings = RenderSettings(image_size=image_size * supersample, n_views=n_views, elevations=(float(elevation),))
    renderer = MeshRenderer(settings, device=device, background=background)
    unit = trimesh.Trimesh(renderer_unit_vertices(mesh), np.asarray(mesh.faces), process=False)
    base = sphere_rig(n_views, elevations=(float(elevation),), fov=settings.fov,
                      radius=max(float(np.linalg.norm(unit.vertices, axis=1).max()), 1e-3))
    rig = rig_from_eyes(base.eyes, fov=_fitted_fov(unit, base.eyes, settings.fov, fill))
    out: RenderOutput = renderer.render(mesh, face_colors=face_colors, rig=rig)
    rgb = out.rgb.copy()
    if edges:
        interior, silhouette = face_edges(out.pix_to_face)
        rgb[interior] *= 1.0 - edge_strength(interior, out.foreground)
        rgb[silhouette] *= 1.0 - SILHOUETTE_DARKEN
    views = to_uint8(_downsample(rgb, supersample))
    return _crop_to_content(views, out.foreground.reshape(n_views, image_size, supersample, image_size, supersample)
                            .any(axis=(2, 4))) if crop else views


def _crop_to_content(views: np.ndarray, foreground: np.ndarray, margin: float = 0.04) -> np.ndarray:
    """Crop all views (N, H, W, 3) to the rows and columns where any view shows the mesh, plus a margin."""
    rows = np.nonzero(foreground.any(axis=(0, 2)))[0]
    cols = np.nonzero(foreground.any(axis=(0, 1)))[0]
    if len(rows) == 0:
        return views
    pad = int(round(margin * views.shape[1]))
    r0, r1 = max(0, rows[0] - pad), min(views.shape[1], rows[-1] + 1 + pad)
    c0, c1 = max(0, cols[0] - pad), min(views.shape[2], cols[-1] + 1 + pad)
    return views[:, r0:r1, c0:c1]


def renderer_unit_vertices(mesh: trimesh.Trimesh) -> np.ndarray:
    """Vertices (N, 3) in the normalized frame the renderer uses (bounding box centred, longest side 1)."""
    v = np.asarray(mesh.vertices, dtype=np.float64)
    return Normalization.fit(v).apply(v)


def grid(views: np.ndarray, *, cols: int | None = None, gap: int = 4, background: int = 255) -> np.ndarray:
    """Tile images (N, H, W, 3) uint8 into one (rows * H + gaps, cols * W + gaps, 3) uint8 image."""
    n, h, w, c = views.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.full((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, c), background, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        out[r * (h + gap): r * (h + gap) + h, q * (w + gap): q * (w + gap) + w] = views[i]
    return out


def preview_image(mesh: trimesh.Trimesh | str | Path, **kwargs) -> np.ndarray:
    """The preview grid as an (H, W, 3) uint8 array; ``kwargs`` as for :func:`render_preview_views`."""
    if not isinstance(mesh, trimesh.Trimesh):
        mesh = load_mesh(mesh)
    return grid(render_preview_views(mesh, **kwargs))


def mesh_table_png(rows: list[list[trimesh.Trimesh | None]], path: str | Path, *, size: int = 128,
                   elevation: float = 25.0) -> Path:
    """Write a PNG table of meshes, one shaded view each (edges drawn), ``rows[r][c]`` in row ``r``, column ``c``
    (blank where ``None``; short rows padded), atomically; for evaluation pictures (samples per family, kept
    candidates beside their reference)."""
    path = Path(path)
    check_output_path(path)
    cols = max((len(r) for r in rows), default=0)
    blank = np.full((size, size, 3), 255, np.uint8)
    lines = []
    for row in rows:
        tiles = []
        for mesh in list(row) + [None] * (cols - len(row)):
            tile = blank.copy()
            if mesh is not None and len(mesh.faces):
                view = preview_image(mesh, n_views=1, image_size=size, elevation=elevation)[..., :3]
                tile[: view.shape[0], : view.shape[1]] = view[:size, :size]
            tiles.append(tile)
        lines.append(np.concatenate(tiles, axis=1))
    with atomic_path(path, suffix=".png") as tmp:
        write_png(tmp, np.concatenate(lines, axis=0))
    return path


def render_preview(mesh: trimesh.Trimesh | str | Path, path: str | Path, *, n_views: int = 4, image_size: int = 256,
                   face_colors: np.ndarray | None = None, edges: bool = True, device: str | torch.device = "cpu",
                   elevation: float = 25.0) -> Path:
    """Write a PNG grid of shaded views of ``mesh`` (edges drawn) to ``path``, atomically.

    Parameters
    ----------
    mesh : trimesh.Trimesh or path
        A mesh, or a file :func:`tokenizers3d.io.load_mesh` reads.
    path : str or Path
        Output ``.png``.
    n_views, image_size, face_colors, edges, device, elevation
        See :func:`render_preview_views`.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    check_output_path(path)  # before the rendering, not after
    image = preview_image(mesh, n_views=n_views, image_size=image_size, face_colors=face_colors, edges=edges,
                          device=device, elevation=elevation)
    with atomic_path(path, suffix=".png") as tmp:
        write_png(tmp, image)
    return path


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 image as PNG to ``path`` as it is (callers pass a temporary file of
    :func:`tokenizers3d.io.atomic_path` or :func:`tokenizers3d.io.atomic_paths`)."""
    from PIL import Image

    Image.fromarray(image).save(path, format="PNG")


def segmentation_colors(pred: np.ndarray, true: np.ndarray, areas: np.ndarray, *, seed: int = 0
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Face colours (F, 4) uint8 of the truth and of a prediction, matched so that agreeing parts look alike.

    Every true part gets a colour of :func:`tokenizers3d.io.label_colors`; the segment matched to it (Hungarian
    on area-weighted IoU, :func:`tokenizers3d.metrics.part_matching`) gets the same colour, unmatched segments
    get colours of another palette.
    """
    from tokenizers3d.io import label_colors
    from tokenizers3d.metrics import part_matching

    true = np.asarray(true, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    parts, matched, _ = part_matching(pred, true, areas)
    palette = label_colors(np.arange(len(parts)), seed=seed)  # (P, 4)
    true_colors = palette[np.searchsorted(parts, true)]
    segments = np.unique(pred)
    extra = label_colors(np.arange(len(segments)), seed=seed + 1)
    seg_palette = extra[np.arange(len(segments))].copy()
    for k, s in enumerate(matched):
        if s >= 0:
            seg_palette[np.searchsorted(segments, s)] = palette[k]
    return true_colors, seg_palette[np.searchsorted(segments, pred)]


def segmentation_grid(rows, *, n_views: int = 2, image_size: int = 160, device: str | torch.device = "cpu",
                      caption_height: int = 14) -> np.ndarray:
    """A picture of predictions next to the truth: one row per shape, one column per labelling.

    Parameters
    ----------
    rows : sequence of (name, mesh, true_labels, predictions)
        ``predictions`` maps a column title (e.g. ``"views, 12"``) to (F,) labels of ``mesh``'s faces.
    n_views : int
        Preview views per cell (side by side).
    image_size : int
        Pixels per view.
    caption_height : int
        Pixels of the caption above every cell: the shape and ``truth (P parts)``, or the column title, the
        mean matched IoU and the segment count.

    Returns
    -------
    (H, W, 3) uint8
        Cells coloured by :func:`segmentation_colors` (a segment matched to a part has the part's colour).
    """
    from PIL import Image, ImageDraw

    from tokenizers3d.metrics import face_areas, matched_part_iou

    cells: list[list[tuple[str, np.ndarray]]] = []
    for name, mesh, true, predictions in rows:
        areas = face_areas(mesh)
        row = []
        for k, (title, pred) in enumerate(predictions.items()):
            true_colors, pred_colors = segmentation_colors(pred, true, areas)
            if k == 0:
                image = grid(render_preview_views(mesh, n_views=n_views, image_size=image_size,
                                                  face_colors=true_colors, device=device), cols=n_views)
                row.append((f"{name}: truth ({len(np.unique(true))} parts)", image))
            miou, _ = matched_part_iou(pred, true, areas)
            image = grid(render_preview_views(mesh, n_views=n_views, image_size=image_size, face_colors=pred_colors,
                                              device=device), cols=n_views)
            row.append((f"{title}: {miou:.3f}, {len(np.unique(pred))} seg.", image))
        cells.append(row)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    cell_h = max(img.shape[0] for row in cells for _, img in row) + caption_height
    cell_w = max(max(img.shape[1], int(measure.textlength(caption)) + 4) for row in cells for caption, img in row)
    n_cols = max(len(row) for row in cells)
    gap = 6
    out = Image.new("RGB", (n_cols * cell_w + (n_cols - 1) * gap, len(cells) * cell_h + (len(cells) - 1) * gap),
                    (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for r, row in enumerate(cells):
        for c, (caption, image) in enumerate(row):
            x, y = c * (cell_w + gap), r * (cell_h + gap)
            draw.text((x + 2, y + 1), caption, fill=(0, 0, 0))
            out.paste(Image.fromarray(image), (x + (cell_w - image.shape[1]) // 2, y + caption_height))
    return np.asarray(out)
