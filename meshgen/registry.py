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


def resolve_tokenizer(entry) -> dict | None:
    """A model config's ``tokenizer`` as written in a YAML config -> the stored form.

    ``None`` / ``"coords"``: ``None`` (coords at the model's bits). ``"vqvae"`` or ``{name: vqvae, checkpoint: DIR}``
    (default: the bundled face VQ-VAE): the tokenizer's config with the checkpoint's digest and code layout
    (:func:`meshgen.modeling.vqvae_tokenizer_config`), so the model keeps decoding with the weights it learned on.
    """
    if entry is None or entry == "coords" or (isinstance(entry, dict) and entry.get("name") == "coords"):
        return None
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or entry.get("name") != "vqvae":
        raise ValueError(f"model tokenizer must be 'coords' or 'vqvae' (optionally with a checkpoint), got {entry!r}")
    from .modeling import CODE_LAYOUT_KEYS, vqvae_tokenizer_config

    if all(k in entry for k in (*CODE_LAYOUT_KEYS, "checkpoint_sha256")):
        return dict(entry)
    resolved = vqvae_tokenizer_config(entry.get("checkpoint"))
    if entry.get("checkpoint_sha256") not in (None, resolved["checkpoint_sha256"]):
        raise ValueError(f"face VQ-VAE digest {resolved['checkpoint_sha256']} differs from the config's "
                         f"{entry['checkpoint_sha256']}")
    return resolved


def build_model(spec: dict) -> MeshGenerator:
    """A fresh model from ``{"name": "hourglass" | "flat", "args": {...config fields}}``; ``args.tokenizer`` may be
    ``vqvae`` (:func:`resolve_tokenizer`)."""
    if spec["name"] not in MODEL_REGISTRY:
        raise ValueError(f"unknown model {spec['name']!r}; available: {sorted(MODEL_REGISTRY)}")
    module, cls_name, cfg_name = MODEL_REGISTRY[spec["name"]]
    mod = importlib.import_module(module)
    args = dict(spec.get("args") or {})
    if "tokenizer" in args:
        args["tokenizer"] = resolve_tokenizer(args["tokenizer"])
    return getattr(mod, cls_name)(config_from_dict(getattr(mod, cfg_name), args))


def load_model(directory: str | Path, *, map_location: str | torch.device = "cpu") -> MeshGenerator:
    """Any registered model saved with ``save_pretrained`` (config.json + model.safetensors)."""
    _import_models()
    return MeshGenerator.from_pretrained(directory, map_location=map_location)
