"""Regenerate the bundled demo input under assets/demo/ (deterministic)."""

from __future__ import annotations

from pathlib import Path

from tokenizers3d.io import save_mesh, save_point_cloud
from tokenizers3d.procedural import generate
from tokenizers3d.sample import sample_surface

OUT = Path(__file__).resolve().parent.parent / "assets" / "demo"


def main() -> None:
    seed = next(s for s in range(1000) if generate("table", s).n_faces <= 120)
    table = generate("table", seed)
    save_mesh(OUT / "table.ply", table.mesh, face_labels=table.face_labels)
    save_point_cloud(OUT / "table_points.ply", sample_surface(table.mesh, 4096, method="poisson", seed=0))
    print(f"table seed {seed}: {table.n_faces} faces -> {OUT}")


if __name__ == "__main__":
    main()
