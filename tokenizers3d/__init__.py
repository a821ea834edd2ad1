"""Geometry and tokens: canonical meshes, lossless mesh tokenizers, metrics, datasets.

The lowest layer of the project: imports neither ``renderers`` nor ``meshgen``. The public names are
imported on first use, so that ``from tokenizers3d.errors import ...`` (the ``meshgen`` command's start-up)
does not load trimesh or SciPy.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ArrayMesh": "tokenizers3d.mesh",
    "Encoding": "tokenizers3d.base",
    "MeshTokenizer": "tokenizers3d.base",
    "get_tokenizer": "tokenizers3d.base",
    "list_tokenizers": "tokenizers3d.base",
    "pad_batch": "tokenizers3d.base",
    "MeshgenError": "tokenizers3d.errors",
    "MeshInputError": "tokenizers3d.errors",
    "MeshOutputError": "tokenizers3d.errors",
    "TokenizationError": "tokenizers3d.errors",
    "PointCloud": "tokenizers3d.io",
    "load_mesh": "tokenizers3d.io",
    "load_mesh_arrays": "tokenizers3d.io",
    "load_point_cloud": "tokenizers3d.io",
    "save_mesh": "tokenizers3d.io",
    "Normalization": "tokenizers3d.mesh",
    "QuantizedMesh": "tokenizers3d.mesh",
    "canonicalize": "tokenizers3d.mesh",
    "normalize": "tokenizers3d.mesh",
    "prepare": "tokenizers3d.mesh",
    "quantize": "tokenizers3d.mesh",
    "TokenFile": "tokenizers3d.tokenfile",
    "load_tokens": "tokenizers3d.tokenfile",
    "save_tokens": "tokenizers3d.tokenfile",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tokenizers3d' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
