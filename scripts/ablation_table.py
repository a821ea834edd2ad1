#!/usr/bin/env python
"""One markdown table from several ``eval_generator.py --out`` JSON files: a row per (label, split).

    python scripts/ablation_table.py "A baseline=runs/ablation/eval_a.json" "B fresh data=runs/ablation/eval_b.json" \\
        --out runs/ablation/table.md

Training facts (steps, training minutes, best validation loss and its new-vertex / first-vertex parts) come
from the ``log.csv`` beside the evaluated checkpoint (``RUN/best`` -> ``RUN/log.csv``) when there is one.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

from tokenizers3d.io import atomic_write_text


def _fmt(x, spec: str) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def run_facts(checkpoint: str) -> dict:
    """Steps, seconds and the best validation row of the run that holds ``checkpoint`` (``.../best``)."""
    log = Path(checkpoint).parent / "log.csv"
    if not log.exists():
        return {}
    rows = [r for r in csv.DictReader(log.open(newline="")) if r.get("val_loss") not in (None, "", "nan")]
    if not rows:
        return {}
    best = min(rows, key=lambda r: float(r["val_loss"]))
    last = list(csv.DictReader(log.open(newline="")))[-1]
    return {"steps": int(last["step"]), "seconds": float(last["elapsed_s"]), "val": float(best["val_loss"]),
            "val_new": float(best.get("val_new_vertex_loss") or "nan"),
            "val_first": float(best.get("val_first_vertex_loss") or "nan")}


def table(entries: list[tuple[str, dict]]) -> str:
    lines = ["| recipe | split | steps | wall min (shared machine) | val loss (new vertex / first vertex) | Chamfer | F@0.05 | "
             "normal cons. | beats bbox | distinct / refs | extents r (x / y / z) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, res in entries:
        facts = run_facts(res.get("checkpoint", ""))
        for split, r in res["splits"].items():
            m, t = r["summary"]["model"], r.get("tracking", {})
            r_ax = t.get("extents_pearson", {})
            lines.append(
                f"| {label} | {split} | {facts.get('steps', '–')} | {_fmt(facts.get('seconds', float('nan')) / 60, '.1f')} | "
                f"{_fmt(facts.get('val'), '.3f')} ({_fmt(facts.get('val_new'), '.2f')} / {_fmt(facts.get('val_first'), '.2f')}) | "
                f"{_fmt(m['chamfer'], '.4f')} | {_fmt(m['fscore_005'], '.3f')} | {_fmt(m['normal_consistency'], '.3f')} | "
                f"{_fmt(t.get('beats_bbox_chamfer'), '.2f')} | {t.get('distinct_outputs', '–')} / {t.get('distinct_references', '–')} | "
                + " / ".join(_fmt(r_ax.get(a), ".2f") for a in ("x", "y", "z")) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("entries", nargs="+", help="LABEL=path/to/eval.json")
    p.add_argument("--out", default=None, help="also write the table here")
    args = p.parse_args(argv)
    entries = []
    for item in args.entries:
        label, sep, path = item.rpartition("=")
        if not sep or not Path(path).exists():
            print(f"error: {item}: expected LABEL=EXISTING_JSON", file=sys.stderr)
            return 2
        entries.append((label, json.loads(Path(path).read_text())))
    text = table(entries)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
