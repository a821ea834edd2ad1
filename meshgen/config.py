"""Experiment configs: plain data files under ``configs/`` parsed into frozen dataclasses.

A config file is YAML (or JSON) with three sections::

    model: {name: hourglass, args: {dim: 256, ...}}     # any model registered in meshgen.modeling
    data:  {train: data/shards/train, val: data/shards/val, window: 1152, n_points: 2048, ...}
    train: {steps: 4000, batch_size: 8, lr: 5.0e-4, ...}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from tokenizers3d.errors import MeshInputError


@dataclass(frozen=True)
class DataConfig:
    """Where training examples come from and how they are cut.

    ``source: shards`` reads tokenized Parquet shards (``train`` / ``val``); ``source: procedural`` makes
    fresh procedural meshes on the fly (:class:`meshgen.data.ProceduralStream`) with ``augment`` (fields of
    :class:`meshgen.data.AugmentConfig`; ``null`` = none), ``pool_size`` (0 = never repeat), a face-count
    ``curriculum`` ``[[step, max_faces], ...]``, and a fixed validation set of ``val_examples`` objects
    drawn with ``val_seed``.
    """

    source: str = "shards"  # shards | procedural
    train: str = "data/shards/train"
    val: str = "data/shards/val"
    bits: int = 7
    window: int = 1152  # tokens per training window (a multiple of 9: whole faces)
    n_points: int = 2048  # conditioning points sampled from each mesh
    max_faces: int = 800  # rows with more faces are skipped
    shuffle_buffer: int = 256
    num_workers: int = 1  # DataLoader workers (points are sampled there)
    drop_face_count: float = 0.2  # share of training examples conditioned on an unknown face count
    drop_points: float = 0.0  # share trained without points (classifier-free guidance; needs encoder.null_context)
    stream_seed: int = 1  # procedural stream (keep it apart from held-out datasets' seeds)
    val_seed: int = 2
    val_examples: int = 64
    pool_size: int = 0
    augment: dict | None = None
    curriculum: list | None = None
    families: list | None = None

    def __post_init__(self):
        if self.source not in ("shards", "procedural"):
            raise ValueError(f"data.source must be 'shards' or 'procedural', got {self.source!r}")

@dataclass(frozen=True)
class TrainConfig:
    """Optimization and bookkeeping."""

    out_dir: str = "runs/default"
    steps: int = 2000
    batch_size: int = 8
    lr: float = 5e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    log_every: int = 10
    val_every: int = 200
    val_batches: int = 8
    ckpt_every: int = 100
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch intra-op threads on CPU (0: leave PyTorch's default)
    init_from: str | None = None  # warm start: copy every same-named, same-shaped weight from this model directory
    max_minutes: float = 0.0  # stop (validate, save) once the logged training time reaches this; 0 = steps only
    train_only: tuple[str, ...] = ()  # train only parameters whose names start with one of these (e.g. pointer.)


@dataclass(frozen=True)
class ExperimentConfig:
    model: dict = field(default_factory=lambda: {"name": "hourglass", "args": {}})
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return {"model": self.model, "data": asdict(self.data), "train": asdict(self.train)}


def _build(cls, raw: dict | None, where: str):
    raw = dict(raw or {})
    known = {f.name for f in fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise MeshInputError(where, f"unknown keys in section {cls.__name__}: {', '.join(sorted(unknown))}")
    if "betas" in raw:
        raw["betas"] = tuple(raw["betas"])
    return cls(**raw)


def load_config(path: str | Path, overrides: dict | None = None) -> ExperimentConfig:
    """Read a YAML/JSON experiment config; ``overrides`` like ``{"train.steps": 10}`` replace values."""
    path = Path(path)
    if not path.exists():
        raise MeshInputError(path, "config file does not exist")
    text = path.read_text()
    raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(raw, dict):
        raise MeshInputError(path, "config must be a mapping with sections model, data, train")
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        raw.setdefault(section, {})
        if section == "model" and name.startswith("args."):
            raw["model"].setdefault("args", {})[name[5:]] = value
        else:
            raw[section][name] = value
    unknown = set(raw) - {"model", "data", "train"}
    if unknown:
        raise MeshInputError(path, f"unknown config sections: {', '.join(sorted(unknown))} (expected model, data, train)")
    model = raw.get("model") or {"name": "hourglass", "args": {}}
    if "name" not in model:
        raise MeshInputError(path, "model section needs a 'name'")
    return ExperimentConfig(
        model={"name": model["name"], "args": dict(model.get("args") or {})},
        data=_build(DataConfig, raw.get("data"), str(path)),
        train=_build(TrainConfig, raw.get("train"), str(path)),
    )
