"""Model registry: configs as plain data (``{"name": ..., "args": ...}``) -> models, and loading by directory."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from .modeling import MeshGenerator, config_from_dict

MODEL_REGISTRY = {"hourglass": ("meshgen.hourglass", "HourglassTransformer", "HourglassConfig"),
                  "flat": ("meshgen.transformer", "Transformer", "TransformerConfig")}


def _import_models() -> None:
    for module, _, _ in MODEL_REGISTRY.values():
        importlib.import_module(module)  # registers the class with MeshGenerator.from_pretrained


def build_model(spec: dict) -> MeshGenerator:
    """A fresh model from ``{"name": "hourglass" | "flat", "args": {...config fields}}``."""
    if spec["name"] not in MODEL_REGISTRY:
        raise ValueError(f"unknown model {spec['name']!r}; available: {sorted(MODEL_REGISTRY)}")
    module, cls_name, cfg_name = MODEL_REGISTRY[spec["name"]]
    mod = importlib.import_module(module)
    return getattr(mod, cls_name)(config_from_dict(getattr(mod, cfg_name), dict(spec.get("args") or {})))


def load_model(directory: str | Path, *, map_location: str | torch.device = "cpu") -> MeshGenerator:
    """Any registered model saved with ``save_pretrained`` (config.json + model.safetensors)."""
    _import_models()
    return MeshGenerator.from_pretrained(directory, map_location=map_location)
