"""Models that eat mesh tokens: the Meshtron-style hourglass generator, its flat baseline, training, the CLI.

The public names are imported lazily so that ``meshgen --help`` does not load PyTorch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "HourglassConfig": "meshgen.hourglass",
    "HourglassTransformer": "meshgen.hourglass",
    "Transformer": "meshgen.transformer",
    "TransformerConfig": "meshgen.transformer",
    "EncoderConfig": "meshgen.encoder",
    "Conditioning": "meshgen.modeling",
    "MeshGenerator": "meshgen.modeling",
    "GenerationResult": "meshgen.generate",
    "GuidanceConfig": "meshgen.guidance",
    "build_model": "meshgen.registry",
    "load_model": "meshgen.registry",
    "generate_mesh": "meshgen.pipeline",
    "generate_file": "meshgen.pipeline",
    "load_config": "meshgen.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'meshgen' has no attribute {name!r}")
