"""``meshgen app``: a local web app with one tab per job (Generate, Tokenize, Segment, Body), built with Gradio.

A thin layer over the package's public functions, the same ones the ``meshgen`` command calls:

* **Generate**: :func:`meshgen.pipeline.read_points` -> :func:`meshgen.pipeline.generate_mesh` (the model is
  loaded once, at start) -> :func:`tokenizers3d.io.save_mesh` (OBJ and GLB, as ``meshgen generate`` writes
  them); optionally :func:`meshgen.baselines.poisson_baseline` at the output's face count beside it.
* **Tokenize**: :func:`tokenizers3d.io.load_mesh` -> ``tokenizer.encode`` ->
  :func:`tokenizers3d.tokenfile.save_tokens` (the ``.npz`` of ``meshgen tokenize``), read back with
  :func:`~tokenizers3d.tokenfile.load_tokens` and decoded; the decoded quantized mesh is compared with
  :func:`tokenizers3d.mesh.prepare` of the input (the tokenizers are lossless: it must be equal).
* **Segment**: :func:`renderers.segment.segment_mesh_file` (the PLY with per-face labels of
  ``meshgen segment``, the labels ``.npy`` and a preview PNG) and the masks of every view.
* **Body**: :func:`meshgen.body.recover_body_file` (the Anny mesh, JSON and overlay PNG of ``meshgen body``;
  the body model is loaded on the first body job).

What the app adds is only presentation: viewer files (GLB, turned from the package's Z-up frame to glTF's
Y-up), the input points as small octahedra, a colour strip of the token ids, the masks over the views.

Serving (:func:`serve`): bound to 127.0.0.1 by default; Gradio analytics off and no request leaves the
machine (the default theme's fonts are bundled with Gradio); uploads above ``max_file_size`` are refused by
Gradio; every file is written under one temporary folder (Gradio's cache and one folder per browser session,
removed when the page is closed, the whole folder when the server stops); bad input is shown in the page as
the :class:`~tokenizers3d.errors.MeshgenError` text (a job never stops the server); long jobs report progress
and have a Cancel button (a generation stops at the next token).

Gradio is an optional dependency (the ``app`` extra), imported only by :func:`serve` and :func:`build_app`.
This module does not use ``from __future__ import annotations``: Gradio reads the handlers' annotations
(``gr.Request``) at run time.
"""

import html
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

from tokenizers3d.errors import MeshgenError, MeshInputError
from tokenizers3d.mesh import Normalization

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'meshgen[app]'  (or: scripts/setup_env.sh app)"
ASSETS = Path(__file__).resolve().parent.parent / "assets"
EXAMPLE_MESH = ASSETS / "demo" / "table.ply"  # the mesh the bundled point cloud was sampled from
EXAMPLE_PERSON = ASSETS / "body" / "person-0.png"  # a test-split image of scripts/make_body_samples.py
Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # (x, y, z) -> (x, -z, y)
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # (x, y, z) -> (x, z, -y)
POINT_COLOR = (60, 110, 200, 255)
MESH_COLOR = (165, 185, 210, 255)
BASELINE_COLOR = (225, 180, 120, 255)
CAMERA = (-60.0, 65.0, 1.9)  # viewer azimuth and polar angle (degrees), distance (unit-cube files)


class JobCancelled(MeshgenError):
    """The user pressed Cancel; raised from the progress callback to stop the job at the next step."""


def import_gradio():
    """Gradio, with analytics turned off before it is imported; a :class:`MeshgenError` naming the extra
    when it is not installed."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import gradio
    except ImportError as exc:
        raise MeshgenError(f"`meshgen app` needs the optional 'app' extra (Gradio): {INSTALL_HINT}") from exc
    return gradio


@dataclass(frozen=True)
class AppSettings:
    """How :func:`serve` runs the app (the options of ``meshgen app``).

    Attributes
    ----------
    host : str
        Interface to bind; ``127.0.0.1`` serves this machine only.
    port : int
    checkpoint : Path or None
        Generator directory (``save_pretrained``); None: the bundled checkpoint.
    max_file_size : str
        Larger uploads are refused (Gradio size string: ``"50mb"``, ``"1gb"``).
    device : str
        Torch device for the generator, the renderer and SAM.
    """

    host: str = "127.0.0.1"
    port: int = 7860
    checkpoint: Path | None = None
    max_file_size: str = "50mb"
    device: str = "cpu"


# --------------------------------------------------------------------------------------------- jobs


@dataclass
class GenerateResult:
    """What the Generate tab shows. Viewer files are Y-up GLBs; downloads are in the input's frame."""

    points_view: Path
    mesh_view: Path
    baseline_view: Path | None
    downloads: list[Path]
    summary: dict


@dataclass
class TokenizeResult:
    """What the Tokenize tab shows."""

    decoded_view: Path
    strip: Path
    downloads: list[Path]
    summary: dict


@dataclass
class SegmentResult:
    """What the Segment tab shows."""

    mesh_view: Path
    masks: list[tuple[Path, str]]
    downloads: list[Path]
    summary: dict


@dataclass
class BodyResult:
    """What the Body tab shows."""

    mesh_view: Path
    overlay: Path
    downloads: list[Path]
    summary: dict


def generate_job(model, inp: str | Path, folder: Path, *, faces: int | None = None, max_faces: int = 800,
                 seed: int = 0, temperature: float = 0.5, samples: int = 4, baseline: bool = True,
                 progress: Callable[[int, int], None] | None = None) -> GenerateResult:
    """Points (or a mesh's surface) -> mesh with ``model``, as ``meshgen generate`` does, into ``folder``.

    ``faces`` None or 0 leaves the face count to the model. ``progress(steps_done, max_steps)`` is called
    after every token; an exception it raises (:class:`JobCancelled`) stops the generation.
    """
    import torch

    from meshgen.pipeline import generate_mesh, read_points
    from tokenizers3d.io import save_mesh

    inp = Path(inp)
    faces = int(faces) if faces else None
    max_faces, samples = int(max_faces), int(samples)
    if faces is not None and faces < 0:
        raise MeshInputError(None, f"faces must be positive, got {faces}")
    if max_faces < 1 or samples < 1:
        raise MeshInputError(None, f"max faces and samples must be >= 1, got {max_faces} and {samples}")
    if faces is not None and faces > max_faces:
        raise MeshInputError(None, f"faces {faces} is above max faces {max_faces}")
    torch.manual_seed(int(seed))
    cloud = read_points(inp, seed=int(seed))
    gen = generate_mesh(model, cloud, faces=faces, seed=int(seed), temperature=float(temperature),
                        max_faces=max_faces, samples=samples, progress=progress or False)
    if gen.mesh is None:
        raise MeshInputError(inp, f"the model produced no valid face (stopped: {gen.stopped_reason}); "
                                  "try another seed or a lower temperature")
    stem = _stem(inp)
    downloads = [folder / f"{stem}-generated.obj", folder / f"{stem}-generated.glb"]
    for path in downloads:
        save_mesh(path, gen.mesh)
    summary = {"input": inp.name, "input points": len(cloud), "faces": gen.n_faces,
               "vertices": len(gen.mesh.vertices), "watertight": bool(gen.mesh.is_watertight),
               "stopped": gen.stopped_reason, "seconds": round(gen.seconds, 2)}
    if gen.guidance is not None:
        summary["coverage"] = round(gen.guidance.coverage, 3)
    frame = Normalization.fit(cloud.points)  # the three views line up
    points_view = _write(folder / "view-points.glb", points_glb(cloud.points, frame=frame))
    mesh_view = _write(folder / "view-mesh.glb", viewer_glb(gen.mesh, frame=frame))
    baseline_view = None
    if baseline:
        from meshgen.baselines import poisson_baseline

        base = poisson_baseline(cloud, gen.n_faces)  # the simplest thing that could work, at the same budget
        summary["Poisson + decimation faces"] = 0 if base is None else len(base.faces)
        if base is not None:
            path = folder / f"{stem}-poisson.obj"
            save_mesh(path, base)
            downloads.append(path)
            baseline_view = _write(folder / "view-baseline.glb", viewer_glb(base, frame=frame, color=BASELINE_COLOR))
    return GenerateResult(points_view, mesh_view, baseline_view, downloads, summary)


def tokenize_job(inp: str | Path, folder: Path, *, tokenizer: str = "coords", bits: int = 10) -> TokenizeResult:
    """Tokenize a mesh file as ``meshgen tokenize`` does (the same ``.npz``), read it back and decode it."""
    from tokenizers3d.base import get_tokenizer
    from tokenizers3d.io import load_mesh, save_mesh
    from tokenizers3d.mesh import prepare
    from tokenizers3d.tokenfile import load_tokens, save_tokens

    inp = Path(inp)
    learned = tokenizer == "vqvae"  # its bits come from its checkpoint (the bundled one)
    tok = get_tokenizer(tokenizer) if learned else get_tokenizer(tokenizer, bits=int(bits))
    mesh = load_mesh(inp)
    enc = tok.encode(mesh, source=inp)
    stem = _stem(inp)
    npz = folder / f"{stem}-{tok.name}-{tok.bits}bit.npz"
    save_tokens(npz, enc, tok, source_faces=len(mesh.faces), source=inp)
    decoded = load_tokens(npz).decode()  # the file as written, checked, decoded in the input's frame
    reference, _ = prepare(mesh, tok.bits, source=inp)
    exact = (np.array_equal(decoded.quantized.vertices, reference.vertices)
             and np.array_equal(decoded.quantized.faces, reference.faces))
    decoded_obj = folder / f"{stem}-decoded.obj"
    save_mesh(decoded_obj, decoded.mesh)
    id_bytes = 2 if tok.vocab_size <= 65536 else 4
    summary = {"input": inp.name, "tokenizer": tok.name, "bits": tok.bits, "faces (quantized)": enc.n_faces,
               "faces (input)": len(mesh.faces), "vertices": enc.n_vertices, "tokens": len(enc.ids),
               "tokens per face": round(enc.tokens_per_face, 3), "vocabulary": tok.vocab_size,
               "special tokens": ", ".join(f"{k}={v}" for k, v in tok.special_tokens.items()),
               "token bytes": len(enc.ids) * id_bytes, "input bytes": inp.stat().st_size,
               "decodes exactly": "yes" if exact else "NO"}
    strip = folder / f"{stem}-tokens.png"
    _write_png(strip, token_strip(enc.ids, tok))
    view = _write(folder / "view-decoded.glb", viewer_glb(decoded.mesh, color=MESH_COLOR))
    return TokenizeResult(view, strip, [npz, decoded_obj], summary)


def segment_job(inp: str | Path, folder: Path, *, views: int = 12, image_size: int = 256,
                sam_checkpoint: str | Path | None = None, sam_model_type: str = "vit_b", seed: int = 0,
                device: str = "cpu", progress: Callable[[int, int], None] | None = None,
                generator: str | None = None) -> SegmentResult:
    """Segment a mesh file as ``meshgen segment`` does (PLY with labels, ``.npy`` labels, preview PNG)."""
    from renderers.segment import segment_mesh_file
    from tokenizers3d.io import label_colors

    inp = Path(inp)
    out = folder / f"{_stem(inp)}-segmented.ply"
    res = segment_mesh_file(inp, out, views=int(views), image_size=int(image_size),
                            sam_checkpoint=sam_checkpoint or None, sam_model_type=sam_model_type, seed=int(seed),
                            device=device, progress=progress, generator=None if sam_checkpoint else generator)
    mesh = trimesh.load(out, file_type="ply", process=False)  # the cleaned mesh the labels refer to
    view = _write(folder / "view-segmented.glb", viewer_glb(mesh, face_colors=label_colors(res.labels, seed=int(seed))))
    masks = []
    for v, image in enumerate(mask_overlays(res, seed=int(seed))):
        path = folder / f"masks-view{v:02d}.png"
        _write_png(path, image)
        masks.append((path, f"view {v}: {len(res.view_masks[v])} masks"))
    summary = {"input": inp.name, "segments": res.n_segments, "faces": len(res.labels), "views": res.n_views,
               "masks": res.n_masks, "mask generator": "SAM" if sam_checkpoint else "geometric",
               "faces seen": f"{100 * float(res.seen.mean()):.1f}%"}
    downloads = [out, out.with_suffix(".npy"), out.with_suffix(".png")]
    return SegmentResult(view, masks, downloads, summary)


def body_job(model, inp: str | Path, folder: Path) -> BodyResult:
    """Recover the body in an image as ``meshgen body`` does (OBJ, JSON, overlay PNG); ``model`` is a loaded
    :class:`~meshgen.hmr.HMRModel` (:func:`meshgen.body.load_body_model`)."""
    from meshgen.body import recover_body_file

    inp = Path(inp)
    out = folder / f"{_stem(inp)}-body.obj"
    res = recover_body_file(inp, out, model=model)
    mesh = trimesh.Trimesh(res.vertices @ Y_UP_TO_Z_UP.T, res.faces, process=False)  # the viewer takes Z-up
    view = _write(folder / "view-body.glb", viewer_glb(mesh))
    summary = {"input": inp.name, "vertices": len(res.vertices), "faces": len(res.faces),
               "height (m)": f"{float(np.ptp(res.vertices[:, 1])):.2f}",
               "keypoints seen (p > 0.5)": int((res.visibility > 0.5).sum()),
               "pose tokens": " ".join(map(str, res.pose_ids or []))}
    return BodyResult(view, out.with_suffix(".png"), [out, out.with_suffix(".json"), out.with_suffix(".png")], summary)


# --------------------------------------------------------------------------------------------- pictures


def viewer_glb(mesh: trimesh.Trimesh, *, frame: Normalization | None = None, face_colors: np.ndarray | None = None,
               color: tuple[int, int, int, int] = MESH_COLOR) -> bytes:
    """GLB for the page's 3D viewer: in the unit cube, turned Y-up, one vertex per face corner (flat shading,
    exact face colours), every face also wound the other way (the viewer culls back faces; generated meshes
    need not be consistently oriented).

    Parameters
    ----------
    mesh : trimesh.Trimesh
        Z-up, as every mesh in this package.
    frame : Normalization, optional
        Map into the unit cube (pass the same one to views that should line up); default: fitted to ``mesh``.
    face_colors : (F, 3 or 4) uint8, optional
        Default: ``color`` everywhere.
    """
    faces = np.asarray(mesh.faces, dtype=np.int64)
    frame = frame or Normalization.fit(np.asarray(mesh.vertices))
    corners = frame.apply(np.asarray(mesh.vertices, dtype=np.float64)[faces].reshape(-1, 3)) @ Z_UP_TO_Y_UP.T  # (3F, 3)
    if face_colors is None:
        face_colors = np.tile(np.asarray(color, dtype=np.uint8), (len(faces), 1))
    face_colors = np.asarray(face_colors, dtype=np.uint8)
    if face_colors.shape[1] == 3:
        face_colors = np.hstack([face_colors, np.full((len(faces), 1), 255, np.uint8)])
    front = np.arange(3 * len(faces)).reshape(-1, 3)  # (F, 3)
    back = front[:, ::-1] + 3 * len(faces)  # the same triangles wound the other way: seen from both sides
    soup = trimesh.Trimesh(np.concatenate([corners, corners]), np.concatenate([front, back]), process=False,
                           vertex_colors=np.tile(np.repeat(face_colors, 3, axis=0), (2, 1)))  # (6F, 4)
    return soup.export(file_type="glb")


def points_glb(points: np.ndarray, *, frame: Normalization | None = None, radius: float = 0.006,
               color: tuple[int, int, int, int] = POINT_COLOR) -> bytes:
    """GLB of one small octahedron per point (glTF point primitives show as 1-pixel dots), as :func:`viewer_glb`.

    Parameters
    ----------
    points : (N, 3) float
    frame : Normalization, optional
        Default: fitted to ``points``.
    radius : float
        In the unit cube.
    """
    frame = frame or Normalization.fit(np.asarray(points))
    points = frame.apply(np.asarray(points, dtype=np.float64))
    octa = _octahedron()
    verts = (points[:, None, :] + radius * octa.vertices[None]).reshape(-1, 3)  # (N * 6, 3)
    faces = (octa.faces[None] + 6 * np.arange(len(points))[:, None, None]).reshape(-1, 3)  # (N * 8, 3)
    return viewer_glb(trimesh.Trimesh(verts, faces, process=False), frame=Normalization(), color=color)


def _octahedron() -> trimesh.Trimesh:
    v = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float64)
    f = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    return trimesh.Trimesh(v, f, process=False)


def token_strip(ids: np.ndarray, tok, *, per_row: int = 64, cell: int = 8, max_tokens: int = 8192) -> np.ndarray:
    """The token sequence as an image: one ``cell`` x ``cell`` square per id, ``per_row`` ids a row.

    Body ids are coloured by value (hue from red at id 0 to violet at the last body id); BOS is green, EOS
    red, PAD light grey, other special tokens black. At most ``max_tokens`` ids are drawn.

    Returns
    -------
    (H, W, 3) uint8
    """
    import colorsys

    ids = np.asarray(ids, dtype=np.int64)[:max_tokens]
    n_body = max(tok.vocab_size - len(tok.special_tokens), 1)
    hues = np.linspace(0.0, 0.8, 256)
    palette = np.array([[int(255 * c) for c in colorsys.hsv_to_rgb(h, 0.75, 0.95)] for h in hues], dtype=np.uint8)
    colors = palette[np.clip(ids * 255 // n_body, 0, 255)]  # (T, 3)
    specials = tok.special_tokens
    for name, tid in specials.items():
        colors[ids == tid] = {"bos": (40, 160, 60), "eos": (200, 40, 40), "pad": (220, 220, 220)}.get(name, (0, 0, 0))
    rows = max(1, -(-len(ids) // per_row))
    grid = np.full((rows * per_row, 3), 255, dtype=np.uint8)
    grid[: len(ids)] = colors
    grid = grid.reshape(rows, per_row, 3)
    image = np.repeat(np.repeat(grid, cell, axis=0), cell, axis=1)  # (rows * cell, per_row * cell, 3)
    image[::cell], image[:, ::cell] = 255, 255  # a white line between cells
    return image


def mask_overlays(result, *, seed: int = 0) -> list[np.ndarray]:
    """Every view of a :class:`~renderers.segment.SegmentationResult` with its masks painted over it.

    Each view's masks are flattened as the segmenter flattens them (smaller masks on top); every mask gets
    its own colour and a dark outline. Empty when the result carries no views.

    Returns
    -------
    list of (H, W, 3) uint8
    """
    from renderers.segment import flatten_masks
    from tokenizers3d.io import label_colors

    if result.render is None or not result.view_masks:
        return []
    out = []
    foreground = result.render.foreground  # (V, H, W)
    for v, masks in enumerate(result.view_masks):
        base = result.render.image(v).astype(np.float32)  # (H, W, 3)
        index, _ = flatten_masks(masks, foreground[v])  # (H, W), -1 where no mask
        colors = label_colors(index.ravel(), seed=seed + v)[:, :3].reshape(*index.shape, 3).astype(np.float32)
        painted = np.where((index >= 0)[..., None], 0.45 * base + 0.55 * colors, base)
        edge = np.zeros(index.shape, dtype=bool)
        edge[1:] |= index[1:] != index[:-1]
        edge[:, 1:] |= index[:, 1:] != index[:, :-1]
        painted[edge & foreground[v]] = 30.0
        out.append(np.clip(painted, 0, 255).astype(np.uint8))
    return out


def _stem(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem)[:80] or "input"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(image).save(path, format="PNG")


# --------------------------------------------------------------------------------------------- sessions


class SessionFolders:
    """One temporary folder per browser session under ``root``; one sub-folder per job (the previous job of
    the same kind is removed: the page shows only the latest). :meth:`close` removes a session's folder."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._lock = threading.Lock()
        self._cancel: dict[str, threading.Event] = {}

    @staticmethod
    def key(session_hash: str | None) -> str:
        return session_hash if session_hash and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", session_hash) else "anonymous"

    def folder(self, session_hash: str | None) -> Path:
        path = self.root / "sessions" / self.key(session_hash)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def job(self, session_hash: str | None, kind: str) -> Path:
        """A fresh, empty folder for a job of ``kind`` in this session."""
        session = self.folder(session_hash)
        for old in session.glob(f"{kind}-*"):
            shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=session))

    def cancel_event(self, session_hash: str | None) -> threading.Event:
        with self._lock:
            return self._cancel.setdefault(self.key(session_hash), threading.Event())

    def close(self, session_hash: str | None) -> None:
        with self._lock:
            self._cancel.pop(self.key(session_hash), None)
        shutil.rmtree(self.root / "sessions" / self.key(session_hash), ignore_errors=True)


def progress_reporter(report: Callable[[float, str], None], cancel: threading.Event, *,
                      every: float = 0.25, unit: str = "faces") -> Callable[[int, int], None]:
    """A ``progress(steps_done, max_steps)`` callback for :func:`generate_job` (``unit="faces"``) or
    :func:`segment_job` (``unit="views"``): raises :class:`JobCancelled` once ``cancel`` is set and calls
    ``report(fraction, text)`` at most every ``every`` seconds."""
    last = [0.0]

    def callback(done: int, total: int) -> None:
        if cancel.is_set():
            raise JobCancelled("cancelled")
        now = time.monotonic()
        if now - last[0] >= every:
            last[0] = now
            if unit == "faces":
                report(done / max(total, 1), f"{max(0, done - 1) // 9} faces")  # 9 coords tokens a face
            else:
                report(done / max(total, 1), f"{done} of {total} {unit}")

    return callback


def user_message(exc: BaseException, *folders: Path) -> str:
    """The error's text without the server's temporary folders (a user knows the file by its name)."""
    text = str(exc)
    for folder in folders:
        text = text.replace(str(folder) + os.sep, "")
    return text


# --------------------------------------------------------------------------------------------- the page


CSS = """
#gen-summary table, #tok-summary table, #seg-summary table, #body-summary table { font-size: 0.9em; }
"""


def _markdown_table(summary: dict) -> str:
    rows = "\n".join(f"| {html.escape(str(k))} | {html.escape(str(v))} |" for k, v in summary.items())
    return "| result | |\n|---|---|\n" + rows


def build_app(model, sessions: SessionFolders, *, device: str = "cpu"):
    """The Gradio page (``gr.Blocks``): the four tabs wired to the jobs above. ``model`` is the loaded
    generator, shared by every session (Gradio runs one job of each kind at a time)."""
    gr = import_gradio()
    from meshgen.pipeline import DEMO_INPUT
    from renderers.segment import GENERATORS, default_generator
    from tokenizers3d.base import list_tokenizers
    from tokenizers3d.io import MESH_SUFFIXES, POINT_SUFFIXES

    cache = Path(os.environ.get("GRADIO_TEMP_DIR", tempfile.gettempdir()))

    def run(job: Callable, folder: Path, *inputs):
        """``job()``, with a MeshgenError shown in the page as its text (never a traceback)."""
        try:
            return job()
        except JobCancelled as exc:
            raise gr.Error("Stopped.", duration=15, title="Cancelled", print_exception=False) from exc
        except MeshgenError as exc:
            dirs = [folder, cache, *(Path(p).parent for p in inputs if p)]
            log.info("refused: %s", exc)  # the user's problem, not the server's: no traceback
            raise gr.Error(html.escape(user_message(exc, *dirs)), duration=30, title="Cannot do that",
                           print_exception=False) from exc
        except Exception as exc:  # a bug: say so in the page, keep serving, log the traceback
            log.exception("job failed")
            raise gr.Error(html.escape(f"unexpected error ({type(exc).__name__}: {exc}); see the server log"),
                           duration=30) from exc

    def need(path, what: str) -> str:
        if not path:
            raise gr.Error(f"Upload {what} first (or pick the bundled example).", duration=15, print_exception=False)
        return path

    def example(src: Path):
        def copy(request: gr.Request):
            dst = sessions.folder(request.session_hash) / src.name
            shutil.copyfile(src, dst)
            return str(dst)

        return copy

    def on_generate(path, faces, max_faces, seed, temperature, samples, baseline, request: gr.Request,
                    progress=gr.Progress()):
        path = need(path, "a point cloud or mesh")
        cancel = sessions.cancel_event(request.session_hash)
        cancel.clear()
        folder = sessions.job(request.session_hash, "generate")
        progress(0, desc="reading the input")
        callback = progress_reporter(lambda f, text: progress(f, desc=text), cancel)
        res = run(lambda: generate_job(model, path, folder, faces=faces, max_faces=max_faces, seed=seed,
                                       temperature=temperature, samples=samples, baseline=baseline,
                                       progress=callback), folder, path)
        return (str(res.points_view), str(res.mesh_view), str(res.baseline_view) if res.baseline_view else None,
                [str(p) for p in res.downloads], _markdown_table(res.summary))

    def on_tokenize(path, tokenizer, bits, request: gr.Request, progress=gr.Progress()):
        path = need(path, "a mesh")
        folder = sessions.job(request.session_hash, "tokenize")
        progress(0, desc="tokenizing")
        res = run(lambda: tokenize_job(path, folder, tokenizer=tokenizer, bits=bits), folder, path)
        return str(res.decoded_view), str(res.strip), [str(p) for p in res.downloads], _markdown_table(res.summary)

    def on_segment(path, views, image_size, generator, sam_checkpoint, sam_model_type, request: gr.Request,
                   progress=gr.Progress()):
        path = need(path, "a mesh")
        if generator == "SAM" and not (sam_checkpoint or "").strip():
            raise gr.Error("SAM needs the path of a checkpoint file on this machine (e.g. sam_vit_b_01ec64.pth).",
                           duration=15, print_exception=False)
        sam = sam_checkpoint.strip() if generator == "SAM" else None
        cancel = sessions.cancel_event(request.session_hash)
        cancel.clear()
        folder = sessions.job(request.session_hash, "segment")
        progress(0, desc=f"rendering {int(views)} views")
        callback = progress_reporter(lambda f, text: progress(f, desc=f"masks: {text}"), cancel, unit="views")
        res = run(lambda: segment_job(path, folder, views=views, image_size=image_size, sam_checkpoint=sam,
                                      sam_model_type=sam_model_type, device=device, progress=callback,
                                      generator=None if sam else generator), folder, path)
        return (str(res.mesh_view), [(str(p), c) for p, c in res.masks], [str(p) for p in res.downloads],
                _markdown_table(res.summary))

    body_model = {}

    def on_body(path, request: gr.Request, progress=gr.Progress()):
        path = need(path, "an image of a person")
        folder = sessions.job(request.session_hash, "body")
        progress(0, desc="recovering the body")

        def job():
            if "model" not in body_model:
                from meshgen.body import load_body_model

                body_model["model"] = load_body_model(None)
            return body_job(body_model["model"], path, folder)

        res = run(job, folder, path)
        return str(res.mesh_view), str(res.overlay), [str(p) for p in res.downloads], _markdown_table(res.summary)

    def on_cancel(request: gr.Request):
        sessions.cancel_event(request.session_hash).set()

    def on_unload(request: gr.Request):
        sessions.close(request.session_hash)

    def viewer(label: str, elem_id: str):
        return gr.Model3D(label=label, elem_id=elem_id, height=360, camera_position=CAMERA)

    input_types = sorted(set(MESH_SUFFIXES) | set(POINT_SUFFIXES))
    with gr.Blocks(title="meshgen", analytics_enabled=False, delete_cache=(900, 3600)) as demo:
        gr.Markdown("# meshgen\nPoint clouds to low-poly meshes, lossless mesh tokens, part segmentation, "
                    "3D bodies from images. "
                    "Everything runs on this machine; files live in a temporary folder removed when you close "
                    "the page.")
        with gr.Tab("Generate", id="generate"):
            with gr.Row():
                with gr.Column(scale=1, min_width=280):
                    g_file = gr.File(label="Point cloud or mesh", file_types=input_types, elem_id="gen-input")
                    g_example = gr.Button("Use the bundled example (table points)", size="sm")
                    g_faces = gr.Number(0, label="Faces (0: the model's choice)", precision=0, minimum=0)
                    g_max = gr.Number(800, label="Stop after this many faces", precision=0, minimum=1,
                                      elem_id="gen-max-faces")
                    g_seed = gr.Number(0, label="Seed", precision=0)
                    g_temp = gr.Slider(0.05, 1.5, value=0.5, step=0.05, label="Temperature")
                    g_samples = gr.Slider(1, 8, value=1, step=1, label="Samples (half without point guidance; keeps the best fit)",
                                          elem_id="gen-samples")
                    g_base = gr.Checkbox(True, label="Poisson + decimation beside it (non-learned baseline)")
                    with gr.Row():
                        g_run = gr.Button("Generate", variant="primary", elem_id="gen-run")
                        g_cancel = gr.Button("Cancel", variant="stop", elem_id="gen-cancel")
                with gr.Column(scale=3):
                    with gr.Row():
                        g_points = viewer("Input points", "gen-points")
                        g_mesh = viewer("Generated mesh", "gen-mesh")
                        g_base_view = viewer("Poisson + decimation", "gen-baseline")
                    g_summary = gr.Markdown(elem_id="gen-summary")
                    g_files = gr.File(label="Download", file_count="multiple", interactive=False,
                                      elem_id="gen-downloads")
        with gr.Tab("Tokenize", id="tokenize"):
            with gr.Row():
                with gr.Column(scale=1, min_width=280):
                    t_file = gr.File(label="Mesh", file_types=list(MESH_SUFFIXES), elem_id="tok-input")
                    t_example = gr.Button("Use the bundled example (table mesh)", size="sm")
                    t_tok = gr.Dropdown(list_tokenizers(), value="coords", label="Tokenizer")
                    t_bits = gr.Slider(6, 12, value=10, step=1, label="Quantization bits")
                    with gr.Row():
                        t_run = gr.Button("Tokenize", variant="primary", elem_id="tok-run")
                        t_cancel = gr.Button("Cancel", variant="stop")
                with gr.Column(scale=3):
                    with gr.Row():
                        t_view = viewer("Decoded from the tokens", "tok-decoded")
                        t_summary = gr.Markdown(elem_id="tok-summary")
                    t_strip = gr.Image(label="Token ids (BOS green, EOS red; colour = id)", type="filepath",
                                       interactive=False, elem_id="tok-strip")
                    t_files = gr.File(label="Download (.npz as `meshgen tokenize` writes it; decoded OBJ)",
                                      file_count="multiple", interactive=False, elem_id="tok-downloads")
        with gr.Tab("Segment", id="segment"):
            with gr.Row():
                with gr.Column(scale=1, min_width=280):
                    s_file = gr.File(label="Mesh", file_types=list(MESH_SUFFIXES), elem_id="seg-input")
                    s_example = gr.Button("Use the bundled example (table mesh)", size="sm")
                    s_views = gr.Slider(1, 24, value=12, step=1, label="Views", elem_id="seg-views")
                    s_size = gr.Dropdown([96, 128, 192, 256, 384], value=256, label="Image size (pixels a view)",
                                         elem_id="seg-size")
                    s_gen = gr.Radio([*GENERATORS, "SAM"], value=default_generator(), label="Mask generator")
                    s_sam = gr.Textbox(label="SAM checkpoint (a file on this machine; only for SAM)",
                                       placeholder="/path/to/sam_vit_b_01ec64.pth")
                    s_sam_type = gr.Dropdown(["vit_b", "vit_l", "vit_h"], value="vit_b", label="SAM model type")
                    with gr.Row():
                        s_run = gr.Button("Segment", variant="primary", elem_id="seg-run")
                        s_cancel = gr.Button("Cancel", variant="stop")
                with gr.Column(scale=3):
                    with gr.Row():
                        s_view = viewer("Parts", "seg-mesh")
                        s_summary = gr.Markdown(elem_id="seg-summary")
                    s_masks = gr.Gallery(label="Masks of every view", columns=6, height=280, object_fit="contain",
                                         elem_id="seg-masks")
                    s_files = gr.File(label="Download (PLY with a label per face, labels .npy, preview PNG)",
                                      file_count="multiple", interactive=False, elem_id="seg-downloads")

        with gr.Tab("Body", id="body"):
            with gr.Row():
                with gr.Column(scale=1, min_width=280):
                    b_file = gr.File(label="Image of one person (framed on the whole body)",
                                     file_types=["image"], elem_id="body-input")
                    b_example = gr.Button("Use the bundled example (a test image)", size="sm")
                    b_run = gr.Button("Recover the body", variant="primary", elem_id="body-run")
                with gr.Column(scale=3):
                    with gr.Row():
                        b_view = viewer("Body (Anny mesh)", "body-mesh")
                        b_overlay = gr.Image(label="Mesh and keypoints over the image", type="filepath",
                                             interactive=False, elem_id="body-overlay")
                    b_summary = gr.Markdown(elem_id="body-summary")
                    b_files = gr.File(label="Download (OBJ, JSON with joints/keypoints/camera, overlay PNG)",
                                      file_count="multiple", interactive=False, elem_id="body-downloads")

        g_example.click(example(DEMO_INPUT), None, g_file)
        b_example.click(example(EXAMPLE_PERSON), None, b_file)
        b_run.click(on_body, [b_file], [b_view, b_overlay, b_files, b_summary], api_name=False)
        t_example.click(example(EXAMPLE_MESH), None, t_file)
        s_example.click(example(EXAMPLE_MESH), None, s_file)
        g_event = g_run.click(on_generate, [g_file, g_faces, g_max, g_seed, g_temp, g_samples, g_base],
                              [g_points, g_mesh, g_base_view, g_files, g_summary], api_name=False)
        g_cancel.click(on_cancel, None, None, cancels=[g_event], api_name=False)
        t_event = t_run.click(on_tokenize, [t_file, t_tok, t_bits], [t_view, t_strip, t_files, t_summary],
                              api_name=False)
        t_cancel.click(None, None, None, cancels=[t_event], api_name=False)
        s_event = s_run.click(on_segment, [s_file, s_views, s_size, s_gen, s_sam, s_sam_type],
                              [s_view, s_masks, s_files, s_summary], api_name=False)
        s_cancel.click(on_cancel, None, None, cancels=[s_event], api_name=False)
        demo.unload(on_unload)
    return demo


def serve(settings: AppSettings = AppSettings()) -> None:
    """Load the generator once, build the page and serve it until interrupted; then remove every file.

    Raises
    ------
    MeshgenError
        Gradio is not installed (names the extra), or the checkpoint cannot be loaded.
    """
    gr = import_gradio()
    from meshgen.pipeline import load_generator

    model = load_generator(settings.checkpoint, device=settings.device)  # once, before the page is served
    model.eval()
    root = Path(tempfile.mkdtemp(prefix="meshgen-app-"))
    os.environ["GRADIO_TEMP_DIR"] = str(root / "cache")  # Gradio's uploads and outputs, inside our folder
    print(f"meshgen app: files of this server are kept in {root} (removed when it stops)", flush=True)
    if threading.current_thread() is threading.main_thread():  # `kill` stops it as Ctrl-C does: files removed
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        demo = build_app(model, SessionFolders(root), device=settings.device)
        demo.queue(default_concurrency_limit=1)
        demo.launch(server_name=settings.host, server_port=settings.port, max_file_size=settings.max_file_size,
                    share=False, inbrowser=False, show_error=False, ssr_mode=False, mcp_server=False,
                    footer_links=["gradio", "settings"], css=CSS, theme=gr.themes.Default(), enable_monitoring=False)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
