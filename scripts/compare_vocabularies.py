"""Compare generators over different vocabularies trained for the same CPU time (issue 10): coords vs vqvae codes.

    python scripts/compare_vocabularies.py \\
        --arm coords=runs/vocab_coords --eval coords=runs/eval_vocab_coords_proc.json \\
        --eval coords=runs/eval_vocab_coords_real.json \\
        --arm vqvae=runs/vocab_vqvae --eval vqvae=runs/eval_vocab_vqvae_proc.json \\
        --eval vqvae=runs/eval_vocab_vqvae_real.json \\
        --out runs/vocab_compare.json --markdown-out runs/vocab_compare.md --plot docs/img/vocab_compare.png

Per arm, from its run directory (``log.csv``, ``best/config.json``): the tokenizer, tokens per face, steps and
training minutes, training speed (tokens and faces per second), and the best validation loss per token and **per
face** (loss per token x tokens per face: the one intrinsic number comparable across vocabularies, nats to
describe a face of the validation meshes); from the ``scripts/eval_generator.py --out`` files: the held-out
table (Chamfer, F-scores, normal consistency, valid share, faces / reference, beats-hull share, extents r). The
plot draws validation nats per face against training minutes, one line per arm. Every number is read from those
files.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from plot_training import _axes, _limits, _Panel  # scripts/ is on sys.path when this script runs

from tokenizers3d.io import atomic_write_bytes, atomic_write_text

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]


def _pairs(items: list[str], what: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise SystemExit(f"error: {what} expects NAME=PATH, got {item!r}")
        out.append((name, value))
    return out


def _float(cell) -> float:
    try:
        return float(cell)
    except (TypeError, ValueError):
        return float("nan")


def run_stats(run: Path) -> dict:
    """Tokenizer, speed and validation figures of one training run (see the module docstring)."""
    from meshgen.modeling import token_layout
    from meshgen.registry import load_model

    log = run / "log.csv"
    if not log.is_file():
        raise SystemExit(f"error: {log} does not exist")
    rows = list(csv.DictReader(log.open(newline="")))
    if not rows:
        raise SystemExit(f"error: {log} has no rows")
    model = load_model(run / "best")
    layout = token_layout(model.config)
    per_face = layout.face_tokens
    val = [(_float(r["elapsed_s"]) / 60, _float(r["val_loss"]), int(r["step"])) for r in rows]
    curve, prev = [], None
    for minutes, v, step in val:
        if math.isfinite(v) and v != prev:
            curve.append({"step": step, "minutes": round(minutes, 2), "val_loss": v, "val_nats_per_face": v * per_face})
            prev = v
    best = min((c["val_loss"] for c in curve), default=float("nan"))
    last = rows[-1]
    tps = _float(last.get("tokens_per_s"))
    return {
        "run": str(run),
        "tokenizer": layout.name,
        "tokens_per_face": per_face,
        "vocabulary": layout.size,
        "parameters": model.num_params(),
        "steps": int(last["step"]),
        "minutes": round(_float(last["elapsed_s"]) / 60, 1),
        "threads": _threads(run),
        "tokens_per_s": tps,
        "faces_per_s": tps / per_face,
        "best_val_loss": best,
        "best_val_nats_per_face": best * per_face,
        "val_first_vertex_loss": _float(last.get("val_first_vertex_loss")),
        "curve": curve,
    }


def _threads(run: Path):
    import yaml

    cfg = run / "config.yaml"
    if not cfg.is_file():
        return None
    return (yaml.safe_load(cfg.read_text()).get("train") or {}).get("threads")


def eval_stats(paths: list[str]) -> dict:
    """Per split: the model's row of each ``eval_generator.py`` JSON, plus its tracking figures and settings."""
    out = {}
    for p in paths:
        res = json.loads(Path(p).read_text())
        for split, r in res["splits"].items():
            m = r["summary"]["model"]
            t = r.get("tracking") or {}
            out[split] = {**{k: m.get(k) for k in ("n", "valid_rate", "chamfer", "fscore_002", "fscore_005",
                                                   "normal_consistency", "face_ratio_median")},
                          "beats_hull": t.get("beats_hull_chamfer"), "extents_r": t.get("extents_pearson"),
                          "hull_chamfer": (r["summary"].get("hull") or {}).get("chamfer"),
                          "generation": res.get("generation"), "file": p}
    return out


def _f(x, digits: int) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def markdown(arms: dict) -> str:
    lines = ["| arm | tokens / face | vocabulary | parameters | threads | minutes | steps | faces / s (train) | "
             "best val nats / token | best val nats / face |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, a in arms.items():
        r = a["run"]
        lines.append(f"| {name} | {r['tokens_per_face']} | {r['vocabulary']:,} | {r['parameters']:,} | "
                     f"{r['threads']} | {r['minutes']} | {r['steps']:,} | {r['faces_per_s']:.1f} | "
                     f"{_f(r['best_val_loss'], 3)} | {_f(r['best_val_nats_per_face'], 1)} |")
    lines += ["", "| split | arm | n | valid | Chamfer | F@0.02 | F@0.05 | normal cons. | faces / ref | "
                  "beats hull (Chamfer) | extents r (x / y / z) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    splits = sorted({s for a in arms.values() for s in a["eval"]})
    for split in splits:
        for name, a in arms.items():
            e = a["eval"].get(split)
            if e is None:
                continue
            r = " / ".join(_f((e["extents_r"] or {}).get(ax), 2) for ax in ("x", "y", "z"))
            lines.append(f"| {split} | {name} | {e['n']} | {_f(e['valid_rate'], 2)} | {_f(e['chamfer'], 4)} | "
                         f"{_f(e['fscore_002'], 3)} | {_f(e['fscore_005'], 3)} | {_f(e['normal_consistency'], 3)} | "
                         f"{_f(e['face_ratio_median'], 2)} | {_f(e['beats_hull'], 2)} | {r} |")
    return "\n".join(lines)


def plot(arms: dict, out: Path) -> None:
    """Validation nats per face against training minutes, one line per arm (Pillow, written atomically)."""
    W, H, L, R, T, B = 900, 520, 80, 30, 70, 60
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    font, small = ImageFont.load_default(size=16), ImageFont.load_default(size=13)
    xs = [np.array([c["minutes"] for c in a["run"]["curve"]]) for a in arms.values()]
    ys = [np.array([c["val_nats_per_face"] for c in a["run"]["curve"]]) for a in arms.values()]
    panel = _Panel((L, T, W - R, H - B), _limits(xs), _limits(ys), log_y=False)
    _axes(draw, panel, small)
    draw.text((L, 12), "validation nats per face vs training minutes (equal CPU, one core each)", fill="black",
              font=font)
    for i, (name, x, y) in enumerate(zip(arms, xs, ys, strict=True)):
        col = COLOURS[i % len(COLOURS)]
        pts = [panel.px(a, b) for a, b in zip(x, y, strict=True)]
        if len(pts) > 1:
            draw.line(pts, fill=col, width=3)
        for px, py in pts:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=col)
        draw.text((L + 10 + 160 * i, 40), f"-- {name}", fill=col, font=font)
    draw.text(((L + W - R) / 2 - 40, H - 30), "minutes", fill="black", font=small)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(out, buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arm", action="append", default=[], metavar="NAME=RUN_DIR", required=True)
    p.add_argument("--eval", action="append", default=[], metavar="NAME=EVAL_JSON",
                   help="an eval_generator.py --out file of that arm's best weights (one per split)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--markdown-out", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    args = p.parse_args(argv)
    arms = {name: {"run": run_stats(Path(run)), "eval": {}} for name, run in _pairs(args.arm, "--arm")}
    evals: dict[str, list[str]] = {}
    for name, path in _pairs(args.eval, "--eval"):
        if name not in arms:
            raise SystemExit(f"error: --eval {name}=...: no --arm {name}")
        if not Path(path).is_file():
            raise SystemExit(f"error: {path} does not exist")
        evals.setdefault(name, []).append(path)
    for name, paths in evals.items():
        arms[name]["eval"] = eval_stats(paths)
    md = markdown(arms)
    print(md)
    if args.out:
        atomic_write_text(args.out, json.dumps(arms, indent=2) + "\n")
    if args.markdown_out:
        atomic_write_text(args.markdown_out, md + "\n")
    if args.plot:
        plot(arms, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
