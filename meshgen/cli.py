"""The ``meshgen`` command line.

Every subcommand has ``--help``. Bad input (a missing, corrupt or unsuitable file), an output that cannot
be written (or is the input) and a usage error each print one readable line on stderr and exit with code 2;
heavy modules are imported inside the commands so ``--help`` is fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import NoReturn

import typer

from tokenizers3d.errors import MeshgenError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help="3D mesh tokenization, generation, rendering and segmentation.")
batch_app = typer.Typer(no_args_is_help=True, help="Dataset-scale batch jobs.")
app.add_typer(batch_app, name="batch")


def _console():
    from rich.console import Console

    return Console(stderr=False)


@app.command()
def info(mesh: Path = typer.Argument(..., help="Mesh file (OBJ, PLY, STL, OFF, GLB/GLTF)."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
         max_faces: int = typer.Option(None, "--max-faces", help="Refuse meshes with more faces (default 1,000,000).")):
    """Counts, bounds, watertightness, manifoldness and genus of a mesh."""
    from tokenizers3d.io import load_mesh_arrays
    from tokenizers3d.metrics import mesh_info

    data = mesh_info(load_mesh_arrays(mesh, max_faces=max_faces))  # numpy only for OBJ/OFF/STL/PLY: a quick start
    if as_json:
        print(json.dumps(data, indent=2))
        return
    from rich.table import Table

    table = Table(title=str(mesh), show_header=False)
    for k, v in data.items():
        table.add_row(k, ", ".join(f"{x:.4g}" for x in v) if isinstance(v, list) else str(v))
    _console().print(table)


@app.command()
def preview(mesh: Path = typer.Argument(..., help="Mesh file."),
            out: Path = typer.Option(..., "-o", "--out", help="PNG to write."),
            views: int = typer.Option(4, help="Number of views in the grid."),
            size: int = typer.Option(256, help="Pixels per view."),
            max_faces: int = typer.Option(None, "--max-faces", help="Refuse meshes with more faces (default 1,000,000).")):
    """Render a PNG grid of shaded views with visible edges."""
    from renderers.preview import render_preview
    from tokenizers3d.io import load_mesh, refuse_overwrite

    refuse_overwrite(out, mesh)
    render_preview(load_mesh(mesh, max_faces=max_faces), out, n_views=views, image_size=size)
    print(f"wrote {out}")


@app.command()
def dataset(out: Path = typer.Option(..., "-o", "--out", help="Output directory."),
            n: int = typer.Option(1000, "-n", help="Number of objects."),
            seed: int = typer.Option(0, help="Dataset seed."),
            workers: int = typer.Option(2, help="Worker processes."),
            max_faces: int = typer.Option(None, help="Objects with more faces are re-drawn with a new seed."),
            family: list[str] = typer.Option(None, "--family", help="Restrict to these families (repeatable)."),
            rotate: bool = typer.Option(False, "--rotate/--no-rotate", help="Random rotations.")):
    """Write the procedural artist-mesh dataset (resumable; train/val/test split)."""
    from tokenizers3d.errors import MeshInputError
    from tokenizers3d.io import check_output_path, output_errors
    from tokenizers3d.procedural import make_dataset

    check_output_path(out, folder=True)
    try:
        with output_errors(out, folder=True):  # the appended metadata.jsonl
            path = make_dataset(out, n, seed=seed, workers=workers, max_faces=max_faces, families=family or None,
                                rotate=rotate)
    except (ValueError, KeyError) as exc:  # bad settings, or a resume with other settings
        raise MeshInputError(out, str(exc).strip("'\"")) from exc
    print(f"dataset ready in {path}")


@app.command()
def tokenize(mesh: Path = typer.Argument(..., help="Mesh file."),
             out: Path = typer.Option(..., "-o", "--out", help="Output .npz."),
             tokenizer: str = typer.Option("coords", "-t", "--tokenizer",
                                           help="coords, adjacent, blocks (lossless) or vqvae (learned, lossy)."),
             bits: int = typer.Option(None, help="Quantization bits (6-12; default 10, vqvae: its checkpoint's)."),
             checkpoint: Path = typer.Option(None, help="vqvae / vat only: the model directory "
                                                        "(default: assets/checkpoints/face-vqvae / vat)."),
             max_faces: int = typer.Option(None, help="Refuse meshes with more faces.")):
    """Tokenize a mesh; the .npz holds ids, tokenizer config, the normalization transform and a checksum."""
    from tokenizers3d.base import get_tokenizer
    from tokenizers3d.io import load_mesh_arrays, refuse_overwrite
    from tokenizers3d.tokenfile import save_tokens

    refuse_overwrite(out, mesh)
    tok = get_tokenizer(tokenizer, **_tokenizer_options(tokenizer, bits, checkpoint))
    clean = load_mesh_arrays(mesh, max_faces=max_faces)  # no trimesh for OBJ/OFF/STL/PLY
    enc = tok.encode(clean, source=mesh)
    save_tokens(out, enc, tok, source_faces=len(clean.faces), source=mesh)  # warns on quantization loss > 5%
    print(json.dumps({
        "tokenizer": tok.config, "faces": enc.n_faces, "source_faces": len(clean.faces), "vertices": enc.n_vertices,
        "tokens": int(len(enc.ids)), "tokens_per_face": round(enc.tokens_per_face, 3),
        "token_bytes": int(len(enc.ids)) * (2 if tok.vocab_size <= 65536 else 4),
        "input_bytes": mesh.stat().st_size, "out": str(out),
    }))


def _tokenizer_options(name: str, bits: int | None, checkpoint: Path | None) -> dict:
    """``get_tokenizer`` keywords from the command's options; ``--checkpoint`` belongs to learned tokenizers only."""
    from tokenizers3d.errors import ConfigError

    config = {} if bits is None else {"bits": bits}
    if checkpoint is not None:
        if name not in ("vqvae", "vat"):
            raise ConfigError(f"--checkpoint is for the learned tokenizers (vqvae, vat), not {name!r}")
        config["checkpoint"] = str(checkpoint)
    return config


@app.command()
def detokenize(tokens: Path = typer.Argument(..., help=".npz written by `meshgen tokenize`."),
               out: Path = typer.Option(..., "-o", "--out", help="Mesh to write (.obj, .ply, .glb)."),
               lenient: bool = typer.Option(False, "--lenient/--strict",
                                            help="Drop a malformed tail instead of failing.")):
    """Decode tokens back to a mesh at its original scale and place."""
    from tokenizers3d.io import refuse_overwrite, save_mesh
    from tokenizers3d.tokenfile import load_tokens

    refuse_overwrite(out, tokens)
    decoded = load_tokens(tokens).decode(strict=not lenient)  # every problem: one MeshInputError naming the file
    save_mesh(out, decoded.arrays)  # OBJ and PLY are written without trimesh
    print(json.dumps({"faces": decoded.quantized.n_faces, "dropped_tokens": decoded.report.dropped_tokens,
                      "out": str(out)}))


@app.command()
def compress(mesh: Path = typer.Argument(..., help="Mesh file (closed surfaces work best)."),
             out: Path = typer.Option(..., "-o", "--out", help="The .vat file to write."),
             scales: int = typer.Option(None, help="Keep only the first K scales (fewer bytes, coarser shape; "
                                                   "default: all)."),
             checkpoint: Path = typer.Option(None, help="VAT model directory (default: the bundled one, when "
                                                        "installed)."),
             seed: int = typer.Option(0, help="Seeds the surface sampling."),
             max_faces: int = typer.Option(None, "--max-faces", help="Refuse meshes with more faces "
                                                                     "(default 1,000,000)."),
             fit_steps: int = typer.Option(None, "--fit-steps", help="Fit the ids to this mesh through the decoder "
                                                                     "in this many steps (default: tokenizers3d."
                                                                     "compress.DEFAULT_FIT_STEPS, 150, about 20-35 s; "
                                                                     "0: the encoder's ids, fast)."),
             level: str = typer.Option("auto", "--level", help="Surface level of the decoded occupancy, stored in "
                                                               "the file: 'auto' picks the one closest to this mesh "
                                                               "(one decoder pass over a 96^3 grid); a number in (0, 1) fixes it (0.5: the "
                                                               "decoder's default)."),
             offsets: int = typer.Option(0, "--offsets", help="Also fit a grid of N^3 occupancy offsets to this "
                                                              "mesh and write it after the ids (4 bits each; 10: "
                                                              "504 more bytes, the file's payload under 1 KB); "
                                                              "kept only when it brings the surface closer. "
                                                              "0: the ids alone.")):
    """Compress a shape into VAT tokens (lossy: a closed surface near the input; docs/tokenizers.md)."""
    from tokenizers3d.compress import compress_file

    res = compress_file(mesh, out, checkpoint=checkpoint, scales=scales, seed=seed, max_faces=max_faces,
                        fit_steps=fit_steps, level=level, offsets=offsets)
    info = {"out": str(res.out), "bytes": res.file_bytes, "payload_bytes": res.payload_bytes, "tokens": res.tokens,
            "scales": res.scales, "level": round(res.level, 4)}
    if offsets:
        info["offsets_bytes"] = res.offsets_bytes
    if res.fit is not None:
        info["fit"] = {"skipped": res.fit["skipped"], "seconds": round(res.fit["seconds"], 1),
                       "best_step": res.fit["best_step"]}
    print(json.dumps(info))


@app.command()
def decompress(vat: Path = typer.Argument(..., help=".vat file written by `meshgen compress`."),
               out: Path = typer.Option(..., "-o", "--out", help="Mesh to write (.obj, .ply, .glb)."),
               resolution: int = typer.Option(128, help="Marching-cubes grid cells per side (16-512)."),
               checkpoint: Path = typer.Option(None, help="The VAT model directory that made the file.")):
    """Decode a .vat file into a closed mesh at the original place and size."""
    from tokenizers3d.compress import decompress_file

    mesh = decompress_file(vat, out, checkpoint=checkpoint, resolution=resolution)
    print(json.dumps({"out": str(out), "faces": int(len(mesh.faces)), "vertices": int(len(mesh.vertices))}))


@batch_app.command("tokenize")
def batch_tokenize_cmd(input_dir: Path = typer.Argument(..., help="Directory tree of meshes."),
                       out: Path = typer.Option(..., "-o", "--out", help="Shard directory."),
                       tokenizer: str = typer.Option("adjacent", "-t", "--tokenizer"),
                       bits: int = typer.Option(None, help="Quantization bits (default 10; vqvae: its checkpoint's)."),
                       checkpoint: Path = typer.Option(None, help="vqvae / vat only: the model directory."),
                       workers: int = typer.Option(1),
                       engine: str = typer.Option("local", help="local or ray."),
                       address: str = typer.Option(None, help="Ray cluster address (default: start a local one)."),
                       max_faces: int = typer.Option(None),
                       shard_size: int = typer.Option(256, help="Meshes per Parquet shard.")):
    """Tokenize every mesh under a directory into Parquet shards (resumable; Ray optional)."""
    from tokenizers3d.batch import batch_tokenize
    from tokenizers3d.io import check_output_path, output_errors, refuse_output_inside

    refuse_output_inside(out, input_dir)
    check_output_path(out, folder=True)
    with output_errors(out, folder=True):  # the lock file and anything else written without atomic_path
        report = batch_tokenize(input_dir, out, tokenizer=tokenizer,
                                tokenizer_config=_tokenizer_options(tokenizer, bits, checkpoint),
                                workers=workers, engine=engine, address=address, max_faces=max_faces,
                                shard_size=shard_size)
    print(json.dumps(report.to_dict(), default=str))


@app.command()
def segment(mesh: Path = typer.Argument(..., help="Mesh file."),
            out: Path = typer.Option(..., "-o", "--out", help="Output PLY with per-face colours and labels."),
            method: str = typer.Option("views", help="views: render, 2D masks, revote (default); mesh: cut sharp "
                                                     "concave edges and take connected components (no rendering)."),
            views: int = typer.Option(12, help="Number of rendered views (views method)."),
            image_size: int = typer.Option(256, "--image-size", help="Pixels per view side, 32-2048 (views method)."),
            components: bool = typer.Option(None, "--components/--no-components",
                                            help="Split masks along the mesh's connected pieces (default on; views "
                                                 "method). Off: image cues only, for parts made of several pieces."),
            generator: str = typer.Option(None, help="Mask generator of the views method: learned (the trained "
                                                     "part-mask model, default when its checkpoint is installed) "
                                                     "or geometric (concave creases and depth jumps)."),
            sam_checkpoint: Path = typer.Option(None, help="Segment-Anything checkpoint (replaces --generator)."),
            sam_model_type: str = typer.Option("vit_b", help="vit_b, vit_l or vit_h."),
            seed: int = typer.Option(0),
            max_faces: int = typer.Option(None, "--max-faces", help="Refuse meshes with more faces (default 1,000,000).")):
    """Split a mesh into parts by lifting 2D masks from many views (MeshSegmenter-style revoting).

    Exit codes: 0 done; 2 bad input, output or option (one line on stderr, nothing written);
    3 no view produced a mask (a warning on stderr; the outputs are written, every face in one segment).
    """
    from tokenizers3d.errors import ConfigError

    if sam_model_type not in ("vit_b", "vit_l", "vit_h"):  # checked before any file is read
        raise ConfigError(f"unknown --sam-model-type {sam_model_type!r}; expected vit_b, vit_l or vit_h")
    from renderers.segment import check_segment_options, segment_mesh_file

    check_segment_options(method=method, views=views, image_size=image_size, sam_checkpoint=sam_checkpoint,
                          components=components, generator=generator)
    res = segment_mesh_file(mesh, out, views=views, sam_checkpoint=sam_checkpoint, sam_model_type=sam_model_type,
                            seed=seed, max_faces=max_faces, method=method, image_size=image_size,
                            components=components is not False, generator=generator)
    print(json.dumps({"segments": int(res.n_segments), "faces": int(len(res.labels)), "method": res.method,
                      "masks": int(res.n_masks), "out": str(out)}))
    if res.no_masks:
        print(f"warning: no view of {mesh} produced a mask (mesh too thin or too small for {image_size} px "
              f"views?); wrote every face as one segment", file=sys.stderr)
        raise typer.Exit(3)


@app.command()
def body(inp: Path = typer.Argument(..., metavar="INPUT", help="Image of one person (PNG, JPEG...), or a folder "
                                                                "of images."),
         out: Path = typer.Option(..., "-o", "--out", help="Mesh to write (.obj, .ply, .glb); a folder for a "
                                                            "folder of images."),
         checkpoint: Path = typer.Option(None, help="Body model directory (default: the bundled one)."),
         preview: bool = typer.Option(True, "--preview/--no-preview", help="Write <stem>.png: the mesh and "
                                                                              "keypoints over the image."),
         suffix: str = typer.Option(".obj", help="Mesh format of a folder run (.obj, .ply, .glb).")):
    """Recover the 3D body (Anny mesh) of the person in an image (PostoMETRO-style, pose tokens).

    Beside the mesh: <stem>.json (3D joints, 2D keypoints, camera, pose tokens) and <stem>.png. A folder run
    skips images already done, records unreadable ones in OUT/failures.jsonl and goes on.
    """
    if inp.is_dir():
        from meshgen.body import recover_folder
        from tokenizers3d.io import refuse_output_inside

        refuse_output_inside(out, inp)
        print(json.dumps(recover_folder(inp, out, checkpoint=checkpoint, suffix=suffix, preview=preview,
                                        progress=sys.stderr.isatty())))
        return
    from meshgen.body import recover_body_file

    res = recover_body_file(inp, out, checkpoint=checkpoint, preview=preview)
    print(json.dumps({"out": str(out), "vertices": int(len(res.vertices)), "faces": int(len(res.faces)),
                      "pose_tokens": res.pose_ids}))


@app.command()
def generate(inp: Path = typer.Argument(None, metavar="INPUT", help="Point cloud (.ply .pcd .xyz .npy) or mesh "
                                                                    "(or none, with --family)."),
             out: Path = typer.Option(..., "-o", "--out", help="Mesh to write (.obj, .ply, .glb)."),
             faces: int = typer.Option(None, help="Requested face count (default: the model's choice)."),
             seed: int = typer.Option(0),
             temperature: float = typer.Option(0.5, help="Sampling temperature (the held-out tables use 0.5)."),
             top_p: float = typer.Option(0.95),
             max_faces: int = typer.Option(None, help="Stop after this many faces (default: 800, or 2 x --faces)."),
             checkpoint: Path = typer.Option(None, help="Model directory (default: the bundled checkpoint)."),
             tokenizer: str = typer.Option(None, help="Vocabulary the generator samples: coords (the default model) "
                                                      "or vqvae (learned face codes, decoded by the face VQ-VAE); "
                                                      "without --checkpoint, the bundled generator over it."),
             constraints: bool = typer.Option(True, "--constraints/--no-constraints",
                                              help="Order-enforcing sampling (off also turns guidance off)."),
             guidance: bool = typer.Option(None, "--guidance/--no-guidance",
                                           help="Keep vertices and faces near the input points (default: on for a "
                                                "coords model; vqvae codes name no coordinates to guide)."),
             guide_tol: float = typer.Option(None, help="Guidance: max vertex-to-point distance, as a fraction of "
                                                        "the input's longest side (default: from the point spacing)."),
             min_coverage: float = typer.Option(0.0, help="Guidance: refuse to stop before this share of the points "
                                                          "is within --guide-tol of the mesh (0 to 1)."),
             cfg_scale: float = typer.Option(None, help="Classifier-free guidance scale (1 = off; needs a model "
                                                        "trained with encoder.null_context; default 2 for such a "
                                                        "model, else 1)."),
             samples: int = typer.Option(8, help="Draw this many meshes in one batch and keep the one that fits the "
                                                 "input points best (Chamfer to the points)."),
             free_samples: int = typer.Option(None, help="With guidance, draw this many of --samples without it "
                                                         "(default: half); the ranking picks the better kind."),
             open_edge_weight: float = typer.Option(None, help="Rank the samples by fit x (1 + w x share "
                                                    "of open edges), so closed meshes beat loose triangles (default: "
                                                    "meshgen.pipeline.OPEN_EDGE_WEIGHT)."),
             edges_once: str = typer.Option(None, help="Samples that may not repeat a directed edge: off, guided "
                                                       "or all (default: meshgen.pipeline.EDGES_ONCE)."),
             max_input_faces: int = typer.Option(None, help="Refuse input meshes with more faces (default "
                                                            "1,000,000)."),
             max_points: int = typer.Option(None, help="Subsample input point clouds above this many points "
                                                       "(default 1,000,000; the model reads 2,048)."),
             refine: bool = typer.Option(True, "--refine/--no-refine",
                                         help="Move the vertices to fit the input points after decoding (faces kept)."),
             fill: bool = typer.Option(True, "--fill/--no-fill",
                                       help="With --refine: split edges that cut across the points' surface up to "
                                            "--faces, then refine again (a second round even without --faces)."),
             preview: bool = typer.Option(True, "--preview/--no-preview",
                                          help="Write a PNG preview beside the mesh (same name, .png)."),
             family: str = typer.Option(None, help="Instead of INPUT: sample a shape of this procedural family "
                                                   "from the VAT shape prior (--prior) and decode it."),
             prior: Path = typer.Option(None, help="With --family: shape prior model directory "
                                                   "(scripts/train_shape_prior.py; default: the bundled one)."),
             vat: Path = typer.Option(None, help="With --family: the VAT model the prior was trained on (default: "
                                                 "the one beside the prior)."),
             artist: bool = typer.Option(False, "--artist/--no-artist",
                                         help="With --family: turn the sampled shape into a low-poly artist mesh "
                                              "with the point-cloud generator (--checkpoint, --faces, ...)."),
             resolution: int = typer.Option(64, help="With --family: marching-cubes cells per side."),
             prior_temperature: float = typer.Option(1.0, help="With --family: the prior's sampling temperature."),
             prior_cfg: float = typer.Option(2.0, help="With --family: the prior's classifier-free guidance scale.")):
    """Turn a point cloud (or a mesh's surface) into a low-poly artist-like mesh; or, with --family, sample a
    shape of that family from the VAT shape prior."""
    from meshgen.guidance import GuidanceConfig
    from meshgen.pipeline import EDGES_ONCE, OPEN_EDGE_WEIGHT, generate_file, resolve_free_samples
    from meshgen.refine import RefineConfig
    from meshgen.sampling import check_edges_once
    from tokenizers3d.errors import MeshInputError

    if family is not None:
        from meshgen.shape_prior import generate_shape_file, resolve_prior

        if inp is not None:
            raise MeshInputError(inp, "give a point cloud or --family, not both")
        artist_kwargs = {"checkpoint": checkpoint, "faces": faces, "temperature": temperature, "top_p": top_p,
                         "samples": samples, "refine": RefineConfig() if refine else None}
        if max_faces is not None:
            artist_kwargs["max_faces"] = max_faces
        res = generate_shape_file(family, out, prior=resolve_prior(prior), vat=vat, seed=seed,
                                  temperature=prior_temperature, cfg_scale=prior_cfg, resolution=resolution,
                                  artist=artist, artist_kwargs=artist_kwargs, preview=preview)
        print(json.dumps(vars(res), default=str))
        return
    if inp is None:
        raise MeshInputError(None, "give a point cloud or mesh (INPUT), or --family to sample a shape")

    if faces is not None and faces <= 0:
        raise MeshInputError(None, f"--faces must be positive, got {faces}")
    if open_edge_weight is not None and not open_edge_weight >= 0:
        raise MeshInputError(None, f"--open-edge-weight must be >= 0, got {open_edge_weight}")
    try:
        resolve_free_samples(samples, free_samples)
        edges_once = EDGES_ONCE if edges_once is None else check_edges_once(edges_once, "--edges-once")
    except ValueError as err:
        raise MeshInputError(None, str(err)) from None
    if max_faces is None:
        max_faces = max(800, 2 * faces) if faces else 800
    elif faces is not None and faces > max_faces:
        raise MeshInputError(None, f"--faces {faces} is above --max-faces {max_faces}")

    guide = None
    if guidance is None and guide_tol is None and not min_coverage:
        guide = "auto"  # meshgen.pipeline.AUTO: on for a coords model
    elif (guidance is None or guidance) and constraints:
        try:
            guide = GuidanceConfig(tol=guide_tol, min_coverage=min_coverage)
        except ValueError as exc:
            raise MeshInputError(None, str(exc)) from exc
    res = generate_file(inp, out, checkpoint=checkpoint, faces=faces, seed=seed, temperature=temperature,
                        top_p=top_p, max_faces=max_faces, constraints=constraints, preview=preview,
                        guidance=guide, cfg_scale=cfg_scale, samples=samples, free_samples=free_samples,
                        refine=RefineConfig() if refine else None, max_input_faces=max_input_faces,
                        max_points=max_points, tokenizer=tokenizer,
                        open_edge_weight=OPEN_EDGE_WEIGHT if open_edge_weight is None else open_edge_weight,
                        edges_once=edges_once, fill_budget=fill)
    print(json.dumps(res, default=str))


@app.command()
def demo(out: Path = typer.Option(Path("out/demo"), "--out", help="Output directory.")):
    """Run the main job on the bundled default input: point cloud -> low-poly mesh + PNG preview."""
    from meshgen.pipeline import run_demo

    print(json.dumps(run_demo(out), default=str, indent=2))


@app.command("app")
def app_cmd(host: str = typer.Option("127.0.0.1", help="Interface to bind (127.0.0.1: this machine only)."),
            port: int = typer.Option(7860, help="Port to serve on."),
            checkpoint: Path = typer.Option(None, help="Generator directory (default: the bundled checkpoint)."),
            max_file_size: str = typer.Option("50mb", help="Refuse larger uploads (e.g. 20mb, 1gb)."),
            device: str = typer.Option("cpu", help="Torch device for generation, rendering and SAM.")):
    """Serve the web app locally: Generate, Tokenize and Segment tabs (needs the 'app' extra)."""
    from meshgen.app import AppSettings, serve

    serve(AppSettings(host=host, port=port, checkpoint=checkpoint, max_file_size=max_file_size, device=device))


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr (``error: ...``) and exit code 2.

    That covers bad input and unwritable output (:class:`~tokenizers3d.errors.MeshgenError`), usage errors
    (click's: unknown option, missing ``-o``, ...) and any OS error no writer turned into a ``MeshgenError``.
    """
    exceptions = _click_exceptions()
    try:
        code = app(args=argv, prog_name="meshgen", standalone_mode=False)
    except MeshgenError as exc:
        _fail(str(exc))
    except getattr(exceptions, "NoArgsIsHelpError", ()) as exc:  # bare `meshgen` or `meshgen batch`: the help
        if exc.format_message().strip():  # (typer with rich has printed it already)
            print(exc.format_message(), file=sys.stderr)
        sys.exit(exc.exit_code)
    except exceptions.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        _fail(exc.format_message() + hint, exc.exit_code)
    except exceptions.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except typer.Abort:
        _fail("aborted", 1)
    except OSError as exc:
        _fail(f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc))
    if isinstance(code, int) and code != 0:  # click's Exit (Ctrl-C gives 130); --help returns 0
        sys.exit(code)


def _click_exceptions():
    """The exception module of the click that typer runs on (typer vendors click as ``typer._click`` since 0.2x)."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


def _fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` as one line on stderr and exit with ``code``."""
    print("error: " + " ".join(line.strip() for line in message.splitlines() if line.strip()), file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
