"""Plot a training run's losses from its ``log.csv`` as one PNG: against step (left) and wall-clock hours (right).

    python scripts/plot_training.py runs/hourglass_small              # -> runs/hourglass_small/training.png
    python scripts/plot_training.py runs/hourglass_small/log.csv -o out/loss.png --log-y

Series (each drawn when its column exists and has a value): train loss (``loss``), validation loss
(``val_loss``), and the validation new-vertex and first-vertex losses (``val_new_vertex_loss``,
``val_first_vertex_loss``). The trainer repeats the last validation value on every log row, so a
validation series keeps only the rows where its value changes. Hours are the logged ``elapsed_s`` summed
over resumed segments (a resumed run restarts its clock; a drop in ``elapsed_s`` starts a new segment),
so time between a segment's last row and its interruption is not counted.

Drawn with Pillow: matplotlib is not a dependency of this project. The PNG is written atomically.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tokenizers3d.io import atomic_write_bytes

# (column, legend label, RGB colour, drawn with point markers)
SERIES = (
    ("loss", "train loss", (31, 119, 180), False),
    ("val_loss", "val loss", (255, 127, 14), True),
    ("val_new_vertex_loss", "val new-vertex loss", (44, 160, 44), True),
    ("val_first_vertex_loss", "val first-vertex loss", (214, 39, 40), True),
)
WIDTH, HEIGHT = 1400, 600
MARGIN = {"left": 80, "right": 30, "top": 80, "bottom": 60}
GAP = 90  # pixels between the two panels


@dataclass
class TrainingLog:
    """The numeric columns of a ``log.csv``.

    Attributes
    ----------
    step : (R,) float
    hours : (R,) float
        Cumulative logged wall-clock hours (NaN when there is no ``elapsed_s`` column).
    columns : dict of str to (R,) float
        Every other column, NaN where a cell is empty or not a number.
    """

    step: np.ndarray
    hours: np.ndarray
    columns: dict[str, np.ndarray]


def _float(cell: str | None) -> float:
    try:
        return float(cell)
    except (TypeError, ValueError):
        return float("nan")


def cumulative_hours(elapsed_s: np.ndarray) -> np.ndarray:
    """Hours (R,) from per-segment ``elapsed_s`` (R,): a drop in ``elapsed_s`` starts a new segment."""
    out, offset, prev = np.empty(len(elapsed_s)), 0.0, 0.0
    for i, e in enumerate(elapsed_s):
        if math.isnan(e):
            out[i] = float("nan")
            continue
        if e < prev:
            offset += prev
        out[i], prev = offset + e, e
    return out / 3600.0


def read_log(path: str | Path) -> TrainingLog:
    """Read ``log.csv`` (header: step, lr, loss, tokens_per_s, val_loss, elapsed_s, optionally more)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "step" not in rows[0]:
        raise ValueError(f"{path}: no rows, or no 'step' column")
    cols = {k: np.array([_float(r.get(k)) for r in rows]) for k in rows[0] if k is not None}
    elapsed = cols.pop("elapsed_s", np.full(len(rows), np.nan))
    return TrainingLog(step=cols.pop("step"), hours=cumulative_hours(elapsed), columns=cols)


def series_rows(values: np.ndarray, *, changes_only: bool) -> np.ndarray:
    """Indices of the rows to draw: finite values, and with ``changes_only`` only where the value changes."""
    keep = []
    prev = None
    for i, v in enumerate(values):
        if math.isnan(v) or (changes_only and v == prev):
            continue
        keep.append(i)
        prev = v
    return np.array(keep, dtype=np.int64)


def nice_ticks(lo: float, hi: float, n: int = 8) -> list[float]:
    """About ``n`` round tick values (steps of 1, 2 or 5 times a power of ten) covering ``[lo, hi]``."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + k * step for k in range(int((hi - first) / step + 1e-9) + 1)]


def _label(v: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    return f"{v:,.{decimals}f}" if abs(v) < 1e6 else f"{v:.2g}"


class _Panel:
    """One plot area: pixel box ``(x0, y0, x1, y1)`` and data ranges; maps data to pixels."""

    def __init__(self, box, xlim, ylim, *, log_y: bool):
        self.box, self.xlim, self.ylim, self.log_y = box, xlim, ylim, log_y

    def x_px(self, x: float) -> float:
        (a, b), (x0, x1) = self.xlim, (self.box[0], self.box[2])
        return x0 + (x - a) / (b - a) * (x1 - x0)

    def y_px(self, y: float) -> float:
        """Pixel row of loss ``y`` (data units; ``ylim`` is in log10 units when ``log_y``)."""
        (c, d), (y0, y1) = self.ylim, (self.box[1], self.box[3])
        return y1 - ((math.log10(y) if self.log_y else y) - c) / (d - c) * (y1 - y0)

    def px(self, x: float, y: float) -> tuple[float, float]:
        return self.x_px(x), self.y_px(y)


def _limits(values: list[np.ndarray], *, log: bool = False) -> tuple[float, float]:
    """Padded (lo, hi) of the finite (with ``log``: positive, in log10 units) values."""
    v = np.concatenate([np.asarray(x, dtype=np.float64) for x in values]) if values else np.array([])
    v = v[np.isfinite(v) & ((v > 0) if log else True)]
    if len(v) == 0:
        return (0.0, 1.0)
    lo, hi = (np.log10(v.min()), np.log10(v.max())) if log else (float(v.min()), float(v.max()))
    pad = (hi - lo) * 0.05 if hi > lo else max(abs(lo) * 0.05, 0.5)
    return (lo - pad, hi + pad)


def render(log: TrainingLog, *, log_y: bool = False, title: str = "") -> Image.Image:
    """The figure: losses vs step (left) and vs hours (right), shared y range and legend."""
    img = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(img)
    font, small = ImageFont.load_default(size=16), ImageFont.load_default(size=13)
    present = [(c, lab, col, mk) for c, lab, col, mk in SERIES
               if c in log.columns and np.isfinite(log.columns[c]).any()]
    rows = {c: series_rows(log.columns[c], changes_only=c.startswith("val_")) for c, *_ in present}
    ylim = _limits([log.columns[c][rows[c]] for c, *_ in present], log=log_y)
    draw.text((MARGIN["left"], 12), title, fill="black", font=font)
    # legend
    x = MARGIN["left"]
    for _, lab, col, _ in present:
        draw.line([(x, 52), (x + 28, 52)], fill=col, width=3)
        draw.text((x + 34, 44), lab, fill="black", font=small)
        x += 34 + draw.textlength(lab, font=small) + 30
    panel_w = (WIDTH - MARGIN["left"] - MARGIN["right"] - GAP) / 2
    for k, (xs, xlabel) in enumerate(((log.step, "step"), (log.hours, "hours (logged wall time)"))):
        x0 = MARGIN["left"] + k * (panel_w + GAP)
        box = (x0, MARGIN["top"], x0 + panel_w, HEIGHT - MARGIN["bottom"])
        draw.rectangle(box, outline="black")
        draw.text(((box[0] + box[2]) / 2 - draw.textlength(xlabel, font=font) / 2, box[3] + 32), xlabel,
                  fill="black", font=font)
        if not np.isfinite(xs).any():
            draw.text((box[0] + 20, box[1] + 20), "no elapsed_s column", fill="gray", font=font)
            continue
        lo, hi = float(np.nanmin(xs)), float(np.nanmax(xs))
        lo = min(lo, 0.0)  # steps and hours start the axis at 0
        xlim = (lo, hi + 0.02 * (hi - lo) if hi > lo else lo + 1.0)
        panel = _Panel(box, xlim, ylim, log_y=log_y)
        _axes(draw, panel, small)
        for c, _, col, marker in present:
            idx = rows[c][np.isfinite(xs[rows[c]])]
            pts = [panel.px(float(xs[i]), float(log.columns[c][i])) for i in idx
                   if not log_y or log.columns[c][i] > 0]
            if len(pts) > 1:
                draw.line(pts, fill=col, width=2, joint="curve")
            if marker or len(pts) == 1:
                for px, py in pts:
                    draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=col)
    draw.text((8, MARGIN["top"] - 22), "loss (nats)" + (", log scale" if log_y else ""), fill="black", font=small)
    return img


def _axes(draw: ImageDraw.ImageDraw, panel: _Panel, font) -> None:
    """Grid lines and tick labels of one panel."""
    x0, y0, x1, y1 = panel.box
    xt = nice_ticks(*panel.xlim)
    for v in xt:
        px = panel.x_px(v)
        draw.line([(px, y0), (px, y1)], fill=(225, 225, 225))
        lab = _label(v, xt[1] - xt[0] if len(xt) > 1 else 1.0)
        draw.text((px - draw.textlength(lab, font=font) / 2, y1 + 6), lab, fill="black", font=font)
    if panel.log_y:
        lo, hi = panel.ylim
        yt = [10.0 ** e * m for e in range(math.floor(lo), math.ceil(hi) + 1) for m in (1, 2, 5)
              if lo <= math.log10(10.0 ** e * m) <= hi]
        labels = [f"{v:g}" for v in yt]
    else:
        yt = nice_ticks(*panel.ylim)
        labels = [_label(v, yt[1] - yt[0] if len(yt) > 1 else 1.0) for v in yt]
    for v, lab in zip(yt, labels, strict=True):
        py = panel.y_px(v)
        draw.line([(x0, py), (x1, py)], fill=(225, 225, 225))
        draw.text((x0 - 8 - draw.textlength(lab, font=font), py - 7), lab, fill="black", font=font)
    draw.rectangle(panel.box, outline="black")


def plot_training(log_csv: str | Path, out: str | Path, *, log_y: bool = False) -> Path:
    """Read ``log_csv``, draw the figure, write it to ``out`` (PNG, atomically); returns ``out``."""
    log_csv, out = Path(log_csv), Path(out)
    img = render(read_log(log_csv), log_y=log_y, title=f"{log_csv.parent.name}: {log_csv.name}")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(out, buf.getvalue())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a run directory (with log.csv) or a log.csv file")
    p.add_argument("-o", "--out", type=Path, default=None, help="PNG to write (default: <run>/training.png)")
    p.add_argument("--log-y", action="store_true", help="logarithmic loss axis")
    args = p.parse_args(argv)
    log_csv = args.run / "log.csv" if args.run.is_dir() else args.run
    if not log_csv.is_file():
        print(f"error: {log_csv} does not exist", file=sys.stderr)
        return 2
    out = args.out or log_csv.with_name("training.png")
    try:
        plot_training(log_csv, out, log_y=args.log_y)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
