"""Point cloud (or mesh surface) -> low-poly mesh, end to end: what `meshgen generate` and `meshgen demo` run.

Steps: read the input (a point cloud, or a mesh whose surface is sampled) -> fit the unit-cube
:class:`~tokenizers3d.mesh.Normalization` to the points -> encode the points -> sample ``coords`` tokens with
the sliding-window cache, order-enforcing constraints and (by default) point-cloud guidance
(:mod:`meshgen.guidance`), optionally with classifier-free guidance -> decode leniently -> canonical
clean-up -> back to the input's frame -> write the mesh atomically and a PNG preview beside it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh

from tokenizers3d.errors import MeshInputError
from tokenizers3d.io import (
    MESH_SUFFIXES,
    POINT_SUFFIXES,
    PointCloud,
    atomic_paths,
    check_output_path,
    ensure_output_dir,
    load_mesh,
    load_point_cloud,
    mesh_bytes,
    refuse_overwrite,
)
from tokenizers3d.mesh import Normalization, canonicalize
from tokenizers3d.sample import sample_surface

from .guidance import GuidanceConfig, GuidanceStats
from .modeling import Conditioning, MeshGenerator, sequence_tokenizer
from .refine import RefineConfig, refine_vertices
from .registry import load_model

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_CHECKPOINT = ASSETS / "checkpoints" / "hourglass-small"
# the bundled generator of each vocabulary (`meshgen generate --tokenizer NAME`)
TOKENIZER_CHECKPOINTS = {"coords": DEFAULT_CHECKPOINT, "vqvae": ASSETS / "checkpoints" / "hourglass-vqvae"}
DEMO_INPUT = ASSETS / "demo" / "table_points.ply"
N_POINTS = 2048
DEFAULT_SAMPLES = 8  # best of 8 (4 guided + 4 free) by fit to the points: docs/model.md for its held-out effect
EDGES_ONCE = "guided"  # rows that may not repeat a directed edge (sampling.edges_once_for): docs/model.md, "Soups"
OPEN_EDGE_WEIGHT = 0.5  # rank by fit x (1 + w x open-edge share): docs/model.md, "Are the outputs meshes?"
FILL_BUDGET = True  # refine, fill the requested face budget, refine again: docs/model.md, "Filling the face budget"
DEFAULT_CFG_SCALE = 2.0  # for models trained with a null context (measured better than 1.0: docs/model.md)
AUTO = "auto"  # guidance: point guidance for a coords model, none for a model over learned codes


def resolve_guidance(model: MeshGenerator, guidance: GuidanceConfig | None | str,
                     constraints: bool = True) -> GuidanceConfig | None:
    """``guidance`` for ``model``: :data:`AUTO` is a default :class:`GuidanceConfig` for a ``coords`` model with the
    order constraints, and ``None`` (unguided) for a model over ``vqvae`` codes (whose ids name no coordinates the
    guide could restrict); a config given for such a model is refused."""
    if isinstance(guidance, str):
        if guidance != AUTO:
            raise ValueError(f"guidance must be a GuidanceConfig, None or {AUTO!r}, got {guidance!r}")
        return GuidanceConfig() if model.layout.is_coords and constraints else None
    if guidance is not None and not model.layout.is_coords:
        raise ValueError(f"point guidance works on coords tokens; this model samples {model.layout.name} codes "
                         "(leave guidance out, or pass --no-guidance)")
    return guidance


def has_null_context(model: MeshGenerator) -> bool:
    """Whether ``model`` was built with a learned null point context (can sample with classifier-free guidance)."""
    return bool(getattr(getattr(model.config, "encoder", None), "null_context", False))


def resolve_cfg_scale(model: MeshGenerator, cfg_scale: float | None) -> float:
    """``cfg_scale`` as given, or (``None``) :data:`DEFAULT_CFG_SCALE` for a model with a null context, else 1."""
    if cfg_scale is not None:
        return float(cfg_scale)
    return DEFAULT_CFG_SCALE if has_null_context(model) else 1.0


@dataclass
class GeneratedMesh:
    """A generated mesh in the input's frame plus what produced it."""

    mesh: trimesh.Trimesh | None
    n_faces: int
    stopped_reason: str
    dropped_tokens: int
    seconds: float
    guidance: GuidanceStats | None = None  # fallback counts and coverage, None when unguided


def read_points(path: str | Path, *, n_points: int = N_POINTS, seed: int = 0, max_faces: int | None = None,
                max_points: int | None = None) -> PointCloud:
    """Points with normals from a point-cloud file, or sampled from a mesh file's surface.

    A ``.ply`` is read as a mesh when it has faces, else as a point cloud. ``max_faces`` / ``max_points``: the
    input limits of :func:`~tokenizers3d.io.load_mesh` (refuses more faces) and
    :func:`~tokenizers3d.io.load_point_cloud` (subsamples more points); ``None``: their documented defaults.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in MESH_SUFFIXES and ext not in POINT_SUFFIXES:
        raise MeshInputError(path, f"unknown input format {ext!r}; expected a point cloud "
                                   f"({', '.join(POINT_SUFFIXES)}) or a mesh ({', '.join(MESH_SUFFIXES)})")
    if ext in MESH_SUFFIXES:
        try:
            return sample_surface(load_mesh(path, max_faces=max_faces), n_points, seed=seed)
        except MeshInputError as exc:
            if ext != ".ply" or "point cloud" not in exc.problem:
                raise
    cloud = load_point_cloud(path, max_points=max_points)
    if len(cloud) < 16:
        raise MeshInputError(path, f"only {len(cloud)} points; need at least 16")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(cloud), size=n_points, replace=len(cloud) < n_points)
    return PointCloud(cloud.points[idx], cloud.normals[idx])


def load_generator(checkpoint: str | Path | None = None, *, device: str = "cpu") -> MeshGenerator:
    """Load a generator saved with ``save_pretrained`` (default: the bundled checkpoint)."""
    path = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
    return load_model(path, map_location=device)  # any problem with the directory: one MeshInputError


def load_tokenizer_generator(checkpoint: str | Path | None, tokenizer: str | None) -> MeshGenerator:
    """:func:`load_generator` of ``checkpoint``, or of the bundled generator over ``tokenizer``; a checkpoint over
    another vocabulary than ``tokenizer``, or a vocabulary without a bundled generator, is one ``MeshInputError``."""
    if tokenizer is not None and tokenizer not in TOKENIZER_CHECKPOINTS:
        raise MeshInputError(None, f"--tokenizer must be one of {', '.join(TOKENIZER_CHECKPOINTS)}, got {tokenizer!r}")
    if checkpoint is None and tokenizer is not None:
        checkpoint = TOKENIZER_CHECKPOINTS[tokenizer]
        if not (Path(checkpoint) / "config.json").exists():
            raise MeshInputError(checkpoint, f"no bundled generator over {tokenizer} tokens; train one with "
                                             "`python scripts/train_generator.py --config configs/vocab/vqvae.yaml` "
                                             "and pass --checkpoint runs/vocab_vqvae/best")
    model = load_generator(checkpoint)
    if tokenizer is not None and model.layout.name != tokenizer:
        raise MeshInputError(checkpoint, f"this generator samples {model.layout.name} tokens, not {tokenizer}")
    return model


def resolve_free_samples(samples: int, free_samples: int | None) -> int:
    """How many of ``samples`` skip the point guide (``None``: half of them); the one check of both numbers, shared
    by :func:`generate_mesh`, ``meshgen generate`` and ``scripts/eval_generator.py``.

    Raises
    ------
    ValueError
        ``samples < 1`` or ``free_samples`` outside ``[0, samples]``.
    """
    if samples < 1:
        raise ValueError(f"--samples must be >= 1, got {samples}")
    free = samples // 2 if free_samples is None else int(free_samples)
    if not 0 <= free <= samples:
        raise ValueError(f"--free-samples must be in [0, --samples={samples}], got {free}")
    return free


def generate_mesh(model: MeshGenerator, cloud: PointCloud, *, faces: int | None = None, seed: int = 0,
                  temperature: float = 0.5, top_p: float | None = 0.95, top_k: int | None = None,
                  max_faces: int = 800, constraints: bool = True, progress: bool | Callable[[int, int], None] = False,
                  guidance: GuidanceConfig | None | str = AUTO, cfg_scale: float | None = None,
                  samples: int = DEFAULT_SAMPLES, free_samples: int | None = None,
                  refine: RefineConfig | None = RefineConfig(),
                  open_edge_weight: float = OPEN_EDGE_WEIGHT, edges_once: str = EDGES_ONCE,
                  fill_budget: bool = FILL_BUDGET) -> GeneratedMesh:
    """Generate one mesh for a point cloud given in any frame; the result is in that frame.

    ``guidance`` (default :data:`AUTO`: on for a ``coords`` model, :func:`resolve_guidance`; ``None`` turns it off)
    keeps vertices and faces near the points and needs ``constraints``; ``cfg_scale != 1`` samples with classifier-free guidance (:func:`meshgen.generate.generate`;
    ``None``: :func:`resolve_cfg_scale`). ``samples = k > 1`` draws ``k`` meshes in one batch and keeps the one that
    fits the input points best; with ``guidance``, ``free_samples`` of them (default ``samples // 2``) are drawn
    without it (order constraints only), so a guide that misleads -- a corner where the sampled points leave a gap
    -- costs nothing when the model alone does better, and the ranking decides
    (:func:`fit_to_points`: symmetric Chamfer distance between the points and the mesh surface -- the input
    only, never a reference). ``refine`` (default on; ``None`` turns it off) moves every sample's vertices to fit
    the points, faces unchanged (:func:`meshgen.refine.refine_vertices`), *before* the samples are ranked;
    ``fill_budget`` (default on, with ``refine``) then splits edges up to ``faces`` and refines again
    (:func:`refine_candidate`). ``open_edge_weight = w`` ranks by ``fit x (1 + w x open-edge share)`` (:func:`rank_score`): a closed mesh
    beats loose triangles that fit the points a little better. ``edges_once`` (``coords`` models with the
    constraints): the rows whose faces may not repeat a directed edge -- ``"off"``, ``"guided"`` (default) or
    ``"all"`` (:func:`meshgen.sampling.edges_once_for`).
    ``progress``: ``True`` shows a terminal progress bar; a callable is called as
    ``progress(steps_done, max_steps)`` after every token (an exception it raises stops the generation).
    """
    if guidance is not None and not isinstance(guidance, str) and not constraints:
        raise ValueError("point guidance needs the order constraints; pass guidance=None with constraints=False")
    guidance = resolve_guidance(model, guidance, constraints)
    free_samples = resolve_free_samples(samples, free_samples)
    bar, callback = None, None
    if callable(progress):  # the caller's report (the web app's progress bar and Cancel button)
        callback = progress
    elif progress:
        from rich.progress import BarColumn, Progress, TextColumn

        bar = Progress(TextColumn("generating"), BarColumn(), TextColumn("{task.fields[faces]} faces"))
        per_face = model.layout.face_tokens
        task = bar.add_task("gen", total=max_faces * per_face + 2, faces=0)
        bar.start()

        def callback(done: int, total: int) -> None:
            bar.update(task, completed=done, faces=max(0, done - 1) // per_face)

    t0 = time.time()
    try:
        decoded, res = draw_samples(model, cloud, faces=faces, seed=seed, temperature=temperature, top_p=top_p,
                                    top_k=top_k, max_faces=max_faces, constraints=constraints, progress=callback,
                                    guidance=guidance, cfg_scale=cfg_scale, samples=samples,
                                    free_samples=free_samples, edges_once=edges_once)
    finally:
        if bar is not None:
            bar.stop()
    best, best_fit = None, float("inf")
    for row, (mesh, report) in enumerate(decoded):
        if mesh is not None and refine is not None:
            # refine every sample, then rank: 2-3% lower held-out Chamfer than ranking first and refining only the
            # kept one, at k refinements instead of one (docs/model.md, "Best of k")
            mesh = refine_candidate(mesh, cloud, refine, faces=faces, fill_budget=fill_budget, seed=seed)
        fit = rank_score(mesh, cloud.points, open_edge_weight, seed=seed) if samples > 1 else 0.0
        if best is None or fit < best_fit:
            best, best_fit = (mesh, row, report), fit
    mesh, row, report = best
    return GeneratedMesh(mesh, 0 if mesh is None else len(mesh.faces), res.stopped_reason[row], report.dropped_tokens,
                         time.time() - t0, res.guidance[row])


def refine_candidate(mesh: trimesh.Trimesh, cloud: PointCloud, refine: RefineConfig, *, faces: int | None,
                     fill_budget: bool = FILL_BUDGET, seed: int = 0) -> trimesh.Trimesh:
    """One sample's refinement: :func:`meshgen.refine.refine_vertices`; with ``fill_budget``, then the edges that
    cut across the points' surface split until the mesh has up to ``faces`` faces
    (:func:`meshgen.subdivide.split_to_budget`; nothing to split without a requested count) and a second round
    of refinement from where the first ended (its bounds restart, so vertices the first round's ``max_shift``
    held back reach the surface; the second round alone gave 19 % of the 27 % measured on the real split)."""
    mesh = refine_vertices(mesh, cloud.points, refine, seed=seed)
    if not fill_budget:
        return mesh
    if faces:
        from .subdivide import split_to_budget

        mesh = split_to_budget(mesh, faces, cloud.points, cloud.normals)
    return refine_vertices(mesh, cloud.points, refine, seed=seed)


def draw_samples(model: MeshGenerator, cloud: PointCloud, *, faces: int | None, seed: int, temperature: float,
                 top_p: float | None, top_k: int | None, max_faces: int, constraints: bool,
                 progress: Callable[[int, int], None] | None, guidance: GuidanceConfig | None,
                 cfg_scale: float | None, samples: int, free_samples: int, edges_once: str = EDGES_ONCE):
    """The sampling half of :func:`generate_mesh` (arguments checked there): ``samples`` rows in one batch, the last
    ``free_samples`` without ``guidance``, each decoded (:func:`decode_sample`). Returns ``[(mesh | None, report)]``
    per row, in the input's frame, and the :class:`~meshgen.generate.GenerationResult` (stop reasons, guide stats).
    ``scripts/ablate_decoding.py`` scores every row of it."""
    from .generate import generate

    cfg_scale = resolve_cfg_scale(model, cfg_scale)
    norm = Normalization.fit(cloud.points)
    pts = np.concatenate([norm.apply(cloud.points), cloud.normals], axis=1).astype(np.float32)  # (N, 6)
    device = next(model.parameters()).device
    cond = Conditioning(points=torch.from_numpy(pts)[None].to(device),
                        n_faces=torch.tensor([faces if faces else 0], device=device)).repeat(samples)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        # one-token steps are tiny matrix products: extra threads only add synchronization (measured 25x slower
        # with 2 threads on a busy 2-core machine), so decode on one thread
        torch.set_num_threads(1)
    try:
        with torch.no_grad():
            res = generate(model, cond, max_faces=max_faces, temperature=temperature, top_k=top_k, top_p=top_p,
                           seed=seed, constraints=constraints, progress=progress, guidance=guidance, points=pts,
                           cfg_scale=cfg_scale, unguided_rows=free_samples if guidance is not None else 0,
                           edges_once=edges_once if model.layout.is_coords and constraints else "off")
    finally:
        torch.set_num_threads(threads)
    tok = sequence_tokenizer(model.config)
    return [decode_sample(tok, ids, norm) for ids in res.ids], res


def decode_sample(tok, ids: np.ndarray, norm: Normalization) -> tuple[trimesh.Trimesh | None, object]:
    """One sampled row -> its canonical mesh in the input's frame (``None`` when nothing valid is left) and the
    lenient decoder's report (dropped tokens). ``tok``: the model's tokenizer (``coords``, or ``vqvae`` whose
    decoder turns codes into coordinates); ``norm``: the frame."""
    if len(ids) == 0 or ids[-1] != tok.eos_id:
        ids = np.append(ids, tok.eos_id)
    qm, report = tok.decode_quantized(ids, strict=False)
    if not qm.n_faces:
        return None, report
    unit = qm.to_trimesh()
    try:
        return canonicalize(trimesh.Trimesh(norm.invert(unit.vertices), unit.faces, process=False)), report
    except MeshInputError:
        return None, report


def fit_to_points(mesh: trimesh.Trimesh | None, points: np.ndarray, *, seed: int = 0) -> float:
    """Symmetric Chamfer distance between input ``points (N, 3)`` and ``mesh``'s surface, in units of the points'
    longest bounding-box side (``inf`` for no mesh): how well a generated mesh explains its input."""
    if mesh is None or len(mesh.faces) == 0:
        return float("inf")
    from tokenizers3d.metrics import chamfer_distance

    norm = Normalization.fit(points)
    unit = trimesh.Trimesh(norm.apply(mesh.vertices), mesh.faces, process=False)
    if unit.area <= 0:
        return float("inf")
    surf = sample_surface(unit, max(len(points), 1024), seed=seed)
    return chamfer_distance(surf.points, norm.apply(points))


def weighted_fit(fit: float, open_share: float, open_edge_weight: float = OPEN_EDGE_WEIGHT) -> float:
    """The ranking value of a sample: its fit times ``1 + open_edge_weight x open_share`` (the one formula of
    :func:`rank_score` and of ``scripts/ablate_decoding.py``, which ranks precomputed fits)."""
    return fit * (1.0 + open_edge_weight * open_share)


def rank_score(mesh: trimesh.Trimesh | None, points: np.ndarray, open_edge_weight: float = OPEN_EDGE_WEIGHT, *,
               seed: int = 0) -> float:
    """What best-of-k decoding minimizes: :func:`weighted_fit` of :func:`fit_to_points` and
    :func:`tokenizers3d.metrics.open_edge_share` (``inf`` for no mesh). The fit alone cannot tell a mesh from a
    triangle soup on the same surface; the factor can. Uses the input points only, never a reference."""
    fit = fit_to_points(mesh, points, seed=seed)
    if open_edge_weight and np.isfinite(fit):
        from tokenizers3d.metrics import open_edge_share

        fit = weighted_fit(fit, open_edge_share(mesh), open_edge_weight)
    return fit


def generate_file(inp: str | Path, out: str | Path, *, checkpoint: str | Path | None = None, faces: int | None = None,
                  seed: int = 0, temperature: float = 0.5, top_p: float | None = 0.95, max_faces: int = 800,
                  constraints: bool = True, preview: bool = True, progress: bool = True,
                  guidance: GuidanceConfig | None | str = AUTO, cfg_scale: float | None = None,
                  samples: int = DEFAULT_SAMPLES, free_samples: int | None = None,
                  refine: RefineConfig | None = RefineConfig(), max_input_faces: int | None = None,
                  max_points: int | None = None, tokenizer: str | None = None,
                  open_edge_weight: float = OPEN_EDGE_WEIGHT, edges_once: str = EDGES_ONCE,
                  fill_budget: bool = FILL_BUDGET) -> dict:
    """Read ``inp``, generate, write ``out`` (and ``out`` with suffix ``.png``); returns a summary dict.

    ``tokenizer`` (``coords`` or ``vqvae``): without ``checkpoint``, the bundled generator over that vocabulary
    (:data:`TOKENIZER_CHECKPOINTS`); with one, a check that the checkpoint samples that vocabulary.

    The mesh and its preview are written together or not at all; an output that is the input, a directory
    or not writable is refused (:class:`~tokenizers3d.errors.MeshOutputError`) before the generation.

    With guidance the summary also has ``fallbacks`` (vertices sampled on a fallback level) and ``coverage``
    (share of input points within the guide's ``tol`` of the mesh).
    """
    out = Path(out)
    check_output_path(out)  # a directory is named as such, not as a wrong suffix
    if out.suffix.lower() not in (".obj", ".ply", ".glb", ".stl", ".off"):
        raise MeshInputError(out, "output must be .obj, .ply, .glb, .stl or .off")
    outputs = [out, out.with_suffix(".png")] if preview else [out]
    for path in outputs:  # before the (slow) generation
        refuse_overwrite(path, inp)
        check_output_path(path)
    torch.manual_seed(seed)
    cloud = read_points(inp, seed=seed, max_faces=max_input_faces, max_points=max_points)
    model = load_tokenizer_generator(checkpoint, tokenizer)
    try:
        guidance = resolve_guidance(model, guidance, constraints)
    except ValueError as exc:
        raise MeshInputError(checkpoint or DEFAULT_CHECKPOINT, str(exc)) from None
    if cfg_scale not in (None, 1.0) and not has_null_context(model):
        raise MeshInputError(checkpoint or DEFAULT_CHECKPOINT, "classifier-free guidance (--cfg-scale) needs a "
                                                               "model trained with encoder.null_context")
    gen = generate_mesh(model, cloud, faces=faces, seed=seed, temperature=temperature, top_p=top_p,
                        max_faces=max_faces, constraints=constraints, progress=progress, guidance=guidance,
                        cfg_scale=cfg_scale, samples=samples, free_samples=free_samples,
                        refine=refine, open_edge_weight=open_edge_weight, edges_once=edges_once,
                        fill_budget=fill_budget)
    if gen.mesh is None:
        raise MeshInputError(inp, f"the model produced no valid face (stopped: {gen.stopped_reason}); "
                                  "try another --seed or a lower --temperature")
    _write_mesh_and_preview(gen.mesh, outputs)
    summary = {"input": str(inp), "out": str(out), "tokenizer": model.layout.name, "faces": gen.n_faces,
               "vertices": len(gen.mesh.vertices),
               "watertight": bool(gen.mesh.is_watertight), "stopped": gen.stopped_reason,
               "dropped_tokens": gen.dropped_tokens, "seconds": round(gen.seconds, 2)}
    if gen.guidance is not None:
        summary["fallbacks"] = gen.guidance.fallbacks
        summary["coverage"] = round(gen.guidance.coverage, 3)
    if preview:
        summary["preview"] = str(outputs[1])
    return summary


def _write_mesh_and_preview(mesh: trimesh.Trimesh, outputs: list[Path]) -> None:
    """Write ``mesh`` to ``outputs[0]`` and, if given, its PNG preview to ``outputs[1]``: both or neither.

    The preview is rendered before anything is written, and both files are committed together
    (:func:`tokenizers3d.io.atomic_paths`), so a failure leaves an older mesh at the target untouched.
    """
    data = mesh_bytes(mesh, outputs[0].suffix, path=outputs[0])
    image = None
    if len(outputs) > 1:
        from renderers.preview import preview_image

        image = preview_image(mesh)
    with atomic_paths(*outputs) as tmps:
        tmps[0].write_bytes(data)
        if image is not None:
            from renderers.preview import write_png

            write_png(tmps[1], image)


def run_demo(out_dir: str | Path = "out/demo", *, seed: int = 0) -> dict:
    """The README's main job: the bundled point cloud -> mesh + PNG preview under ``out_dir``."""
    out_dir = ensure_output_dir(out_dir)
    from renderers.preview import render_preview

    cloud = read_points(DEMO_INPUT)
    # the default decoding (best of 4 guided + 4 free samples by fit to the points): what the model can do
    summary = generate_file(DEMO_INPUT, out_dir / "generated.obj", seed=seed, samples=DEFAULT_SAMPLES)
    summary["input_points"] = len(cloud)
    # the input, for comparison: the mesh the points were sampled from, when bundled
    source = DEMO_INPUT.with_name(DEMO_INPUT.stem.replace("_points", "") + ".ply")
    if source.exists():
        render_preview(load_mesh(source), out_dir / "reference.png")
        summary["reference_preview"] = str(out_dir / "reference.png")
    return summary
