#!/usr/bin/env python
"""Benchmark the start-up of the ``meshgen`` command; prints JSON.

Wall time, median of ``--repeat`` fresh processes (``python -m meshgen.cli ...``, as the console script
runs the same ``main``), of ``meshgen --help``, ``meshgen info MESH --json``, ``meshgen tokenize MESH -o
TMP.npz`` and ``meshgen detokenize TMP.npz -o TMP.obj`` on a small mesh, beside three floors: the bare
interpreter, ``import numpy`` (which every command that reads a mesh needs) and ``import trimesh`` (which these
commands no longer import: they read OBJ, OFF, STL and PLY with numpy alone). The system load average is
reported too: on a busy machine every figure grows.

Usage::

    python scripts/bench_cli.py                       # 5 runs each, assets/procedural/box.ply
    python scripts/bench_cli.py --repeat 9 --mesh some.obj --out runs/bench_cli.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wall(cmd: list[str], repeat: int, cwd: Path) -> list[float]:
    """Wall seconds of ``repeat`` runs of ``cmd`` (each must exit 0)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="fresh processes per command (median reported)")
    ap.add_argument("--mesh", type=Path, default=ROOT / "assets" / "procedural" / "box.ply")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args(argv)

    py = sys.executable
    cli = [py, "-m", "meshgen.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        tokens = str(Path(tmp) / "t.npz")
        commands = {
            "python_floor": [py, "-c", "pass"],
            "import_numpy_floor": [py, "-c", "import numpy"],
            "import_trimesh_floor": [py, "-c", "import trimesh"],
            "help": [*cli, "--help"],
            "info": [*cli, "info", str(args.mesh.resolve()), "--json"],
            "tokenize": [*cli, "tokenize", str(args.mesh.resolve()), "-o", tokens],
            "detokenize": [*cli, "detokenize", tokens, "-o", str(Path(tmp) / "back.obj")],
        }
        wall([*cli, "--help"], 1, ROOT)  # warm the file cache and the bytecode
        wall(commands["tokenize"], 1, ROOT)  # the token file detokenize reads
        runs = {name: wall(cmd, args.repeat, ROOT) for name, cmd in commands.items()}
    report = {
        "what": "wall seconds to run the command in a fresh process, median of --repeat runs",
        "mesh": str(args.mesh), "repeat": args.repeat, "python": platform.python_version(),
        "machine": platform.machine(), "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "seconds": {name: round(statistics.median(t), 3) for name, t in runs.items()},
        "runs": {name: [round(x, 3) for x in t] for name, t in runs.items()},
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
