"""Geometry and tokens: canonical meshes, lossless mesh tokenizers, metrics, datasets.

The lowest layer of the project: imports neither ``renderers`` nor ``meshgen``.
"""

from .base import Encoding, MeshTokenizer, get_tokenizer, list_tokenizers, pad_batch
from .errors import MeshgenError, MeshInputError, TokenizationError
from .io import PointCloud, load_mesh, load_point_cloud, save_mesh
from .mesh import Normalization, QuantizedMesh, canonicalize, normalize, prepare, quantize

__all__ = [
    "Encoding",
    "MeshInputError",
    "MeshTokenizer",
    "MeshgenError",
    "Normalization",
    "PointCloud",
    "QuantizedMesh",
    "TokenizationError",
    "canonicalize",
    "get_tokenizer",
    "list_tokenizers",
    "load_mesh",
    "load_point_cloud",
    "normalize",
    "pad_batch",
    "prepare",
    "quantize",
    "save_mesh",
]
