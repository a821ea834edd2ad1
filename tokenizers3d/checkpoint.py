"""The one checkpoint loader of the project: model directories (``config.json`` + ``model.safetensors``) and
single weight files (``.safetensors``, or a plain tensor state dict saved with ``torch.save``).

Every learned model -- generators in ``meshgen``, learned tokenizers here, mask and body models in
``renderers`` -- saves and loads through :class:`PretrainedMixin`, and user-supplied weight files (SAM) go
through :func:`read_state_dict`. Whatever is wrong with a checkpoint (missing, empty, truncated or corrupt
weights, a non-JSON or unknown-class config, tensors of another shape) becomes one
:class:`~tokenizers3d.errors.MeshInputError` naming the path: one line and exit 2 on the command line.

Nothing is ever unpickled: ``.pth`` files are read with ``torch.load(weights_only=True)``, and a file that
would need more is refused without suggesting ``weights_only=False``.

This module imports torch when a function needs it, so importing it is cheap.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path

from .errors import MeshInputError
from .io import atomic_path, atomic_write_text

FORMAT_VERSION = 1
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")

_MODEL_CLASSES: dict[str, type] = {}


# ---- configs as plain data ------------------------------------------------------------------------
def config_to_dict(config) -> dict:
    return dataclasses.asdict(config)


def config_from_dict(cls, d: dict):
    """Rebuild a (possibly nested) frozen config dataclass from :func:`config_to_dict` output."""
    if not isinstance(d, dict):
        raise ValueError(f"{cls.__name__} must be a JSON object, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    kw = {}
    for name, value in d.items():
        tp = hints[name]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):  # an optional nested config: X | None
            tp = next((a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)), tp)
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            value = config_from_dict(tp, value)
        elif typing.get_origin(tp) is tuple and isinstance(value, list):
            value = tuple(value)
        kw[name] = value
    return cls(**kw)


def load_sections(path, classes: dict, overrides: dict | None = None) -> dict:
    """A YAML run config of named sections, each parsed into its dataclass.

    ``classes`` maps section name -> frozen config dataclass (a missing section takes the class's defaults);
    ``overrides`` maps section name -> ``{field: value}`` applied over the file (``None`` values ignored).
    ``path=None`` gives every default. Every problem (missing or non-mapping file, unknown section or field,
    bad value) is one :class:`MeshInputError` naming the file.
    """
    import yaml

    raw = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise MeshInputError(path, "config file does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise MeshInputError(path, f"not valid YAML ({str(exc).splitlines()[0]})") from exc
        if not isinstance(raw, dict) or set(raw) - set(classes):
            raise MeshInputError(path, f"config must be a mapping with sections {', '.join(classes)}")
    out = {}
    try:
        for name, cls in classes.items():
            section = dict(raw.get(name) or {})
            section.update({k: v for k, v in (overrides or {}).get(name, {}).items() if v is not None})
            out[name] = config_from_dict(cls, section)
    except (TypeError, ValueError) as exc:
        raise MeshInputError(path, f"bad config ({exc})") from exc
    return out


def model_digest(directory: str | Path) -> str:
    """First 16 hex digits of the SHA-256 over a model directory's weights file and its model config (class and
    config, not the package version): token files record it, so ids are never decoded by other weights."""
    import hashlib

    directory = Path(directory)
    h = hashlib.sha256((directory / WEIGHTS_NAME).read_bytes())
    meta = json.loads((directory / CONFIG_NAME).read_text(encoding="utf-8"))
    h.update(b"\0" + json.dumps({"class": meta.get("class"), "config": meta.get("config")}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("meshgen")
    except PackageNotFoundError:
        return "unknown"


# ---- reading ------------------------------------------------------------------------------------
def read_model_config(directory: str | Path, *, what: str = "model directory") -> dict:
    """The parsed ``config.json`` of a model directory, checked: a JSON object with a ``class`` name, a
    ``config`` object and this project's ``format_version``.

    Raises
    ------
    MeshInputError
        Missing directory, no or unreadable config, not JSON, wrong schema or version.
    """
    directory = Path(directory)
    if not directory.exists():
        raise MeshInputError(directory, f"{what} does not exist")
    if not directory.is_dir():
        raise MeshInputError(directory, f"is a file, expected a {what} (config.json + {WEIGHTS_NAME})")
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise MeshInputError(directory, f"not a {what} (no {CONFIG_NAME})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MeshInputError(path, f"cannot read model config ({type(exc).__name__}: {exc})") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("class"), str) or not isinstance(meta.get("config"), dict):
        raise MeshInputError(path, "not a model config written by save_pretrained (needs 'class' and 'config')")
    if meta.get("format_version") != FORMAT_VERSION:
        raise MeshInputError(path, f"format_version {meta.get('format_version')!r} is not {FORMAT_VERSION}")
    tied = meta.get("tied", {})
    if not isinstance(tied, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tied.items()):
        raise MeshInputError(path, "'tied' must map tensor names to tensor names")
    return meta


def read_state_dict(path: str | Path, *, what: str = "checkpoint") -> dict:
    """Tensors of one weight file: ``.safetensors``, or a state dict saved with ``torch.save`` and read with
    ``weights_only=True``; a ``{"model": ...}`` or ``{"state_dict": ...}`` wrapper is unwrapped.

    Raises
    ------
    MeshInputError
        Missing, empty, truncated or corrupt file, pickled objects other than tensors, or no tensors.
    """
    import torch

    path = Path(path)
    if not path.exists():
        raise MeshInputError(path, f"{what} does not exist")
    if path.is_dir():
        raise MeshInputError(path, f"{what} is a directory, expected a weight file")
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise MeshInputError(path, f"unknown {what} format {path.suffix or '(no suffix)'!r}; "
                                   f"expected one of {', '.join(WEIGHT_SUFFIXES)}")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise MeshInputError(path, f"cannot read {what} ({exc.strerror or exc})") from exc
    if size == 0:
        raise MeshInputError(path, f"{what} is empty")
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except Exception as exc:  # SafetensorError, OSError, ... for truncated or foreign files
            raise MeshInputError(path, f"{what} is not a readable safetensors file ({_first_line(exc)})") from exc
    else:
        import pickle
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # protocol notes of the safe unpickler
                state = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if "Unsupported global" in str(exc):
                raise MeshInputError(path, f"{what} holds pickled objects other than tensors; they are not loaded "
                                           "(save a plain state dict, or convert it to .safetensors)") from exc
            raise MeshInputError(path, f"{what} is not a readable torch or safetensors file (arbitrary pickled "
                                       "data is never loaded)") from exc
        except Exception as exc:  # zip, EOF, index and runtime errors of random or truncated bytes
            raise MeshInputError(path, f"{what} is not a readable torch or safetensors file "
                                       f"({type(exc).__name__})") from exc
    for key in ("model", "state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MeshInputError(path, f"{what} is not a state dict of tensors")
    return dict(state)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def load_weights(directory: str | Path, meta: dict | None = None) -> dict:
    """The state dict saved by :meth:`PretrainedMixin.save_pretrained` in ``directory`` (tied aliases restored).

    ``meta`` is the parsed ``config.json`` when the caller has already read it.
    """
    directory = Path(directory)
    if meta is None:
        meta = read_model_config(directory)
    path = directory / WEIGHTS_NAME
    if not path.exists():
        raise MeshInputError(directory, f"model directory has no weights ({WEIGHTS_NAME} is missing)")
    state = read_state_dict(path, what="model weights")
    for alias, source in meta.get("tied", {}).items():
        if source not in state:
            raise MeshInputError(path, f"tied weight {alias!r} points at {source!r}, which is not in the file")
        state[alias] = state[source]
    return state


def check_state_dict(expected: Mapping, state: Mapping, path: str | Path, *, name: str = "the model") -> None:
    """Raise one :class:`MeshInputError` if ``state`` lacks keys, has extra keys or tensors of other shapes
    than ``expected`` (a state dict, e.g. of a model built on the meta device)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if not (missing or unexpected or shapes):
        return
    detail = []
    if missing:
        detail.append(f"{len(missing)} missing tensors (e.g. {missing[0]})")
    if unexpected:
        detail.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
    if shapes:
        k = shapes[0]
        detail.append(f"{len(shapes)} shape mismatches (e.g. {k}: {tuple(state[k].shape)} "
                      f"vs {tuple(expected[k].shape)})")
    raise MeshInputError(path, f"weights do not fit {name}: {', '.join(detail)}")


# ---- the mixin --------------------------------------------------------------------------------------
class PretrainedMixin:
    """Save / load for an ``nn.Module`` with a frozen-dataclass ``config`` and a ``config_class``.

    Subclasses register themselves by class name, so ``Base.from_pretrained(dir)`` returns whichever
    subclass of ``Base`` was saved there. ``_import_models`` (a classmethod a base may override) imports the
    modules that define the subclasses before an unknown name is refused.
    """

    config_class: type | None = None

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.config_class is not None:
            _MODEL_CLASSES[cls.__name__] = cls

    @classmethod
    def _import_models(cls) -> None:
        """Import the modules whose classes may be saved in a directory (none by default)."""

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        tensors, tied, seen = {}, {}, {}
        for name, t in state.items():
            key = (t.data_ptr(), t.dtype, tuple(t.shape), t.stride(), t.device)
            if t.numel() and key in seen:  # shared storage (e.g. tied embedding / head): store once
                tied[name] = seen[key]
                continue
            seen[key] = name
            tensors[name] = t.detach().to("cpu").contiguous()
        meta = {
            "class": type(self).__name__,
            "format_version": FORMAT_VERSION,
            "package_version": _package_version(),
            "config": config_to_dict(self.config),
            "tied": tied,
        }
        # weights first, config last, each renamed into place: a folder with config.json is complete
        with atomic_path(directory / WEIGHTS_NAME) as tmp:
            save_file(tensors, str(tmp), metadata={"format_version": str(FORMAT_VERSION)})
        atomic_write_text(directory / CONFIG_NAME, json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, map_location="cpu"):
        """Rebuild the model saved in ``directory`` and load its weights (every name and shape must match).

        Raises
        ------
        MeshInputError
            Anything wrong with the directory, its config or its weights (one line naming the path).
        """
        import torch

        directory = Path(directory)
        meta = read_model_config(directory)
        name = meta["class"]
        if name not in _MODEL_CLASSES:
            cls._import_models()  # the class registers itself when its module is imported
        target = _MODEL_CLASSES.get(name)
        known = sorted(k for k, v in _MODEL_CLASSES.items() if issubclass(v, cls))
        if target is None or not issubclass(target, cls):
            raise MeshInputError(directory / CONFIG_NAME, f"holds a {name!r}, not a {cls.__name__}; "
                                                          f"known: {', '.join(known) or 'none'}")
        try:
            config = config_from_dict(target.config_class, meta["config"])
        except (TypeError, ValueError) as exc:
            raise MeshInputError(directory / CONFIG_NAME, f"bad {name} config ({exc})") from exc
        state = load_weights(directory, meta)
        with torch.device("meta"):  # shapes only: no memory, no random init
            expected = target(config).state_dict()
        check_state_dict(expected, state, directory / WEIGHTS_NAME, name=f"the {name} of {CONFIG_NAME}")
        model = target(config)
        model.load_state_dict(state, strict=True)
        return model.to(map_location)


# ---- training run folders ---------------------------------------------------------------------------
class RunFolder:
    """The resumable state of one training run in ``out``: model directories ``best/`` and ``last/`` (``last``
    also holds ``trainer_state.pt``: optimizer, step, best score, torch RNG) and ``log.csv``, one row per log step.

    A model directory is written into ``.NAME.tmp`` and swapped in by two renames; :meth:`recover` puts back
    ``.last.old`` when a kill fell between them. A resumed run first drops log rows past its step
    (:meth:`trim_log`), so a killed run's rows after its last checkpoint are not repeated.
    """

    def __init__(self, out: str | Path):
        self.out = Path(out)

    @property
    def last(self) -> Path:
        return self.out / "last"

    def recover(self) -> None:
        """A kill between the two renames of :meth:`save` leaves ``.last.old``: put it back."""
        old = self.out / ".last.old"
        if not (self.last / CONFIG_NAME).exists() and (old / CONFIG_NAME).exists():
            import shutil

            shutil.rmtree(self.last, ignore_errors=True)
            old.rename(self.last)

    def save(self, model, name: str, trainer_state: dict | None = None) -> None:
        """``model.save_pretrained`` (+ ``trainer_state.pt`` when given) into ``out/name``, swapped in whole."""
        import shutil

        import torch

        tmp, final, old = self.out / f".{name}.tmp", self.out / name, self.out / f".{name}.old"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        if trainer_state is not None:
            torch.save(trainer_state, tmp / "trainer_state.pt")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)

    def model(self, cls, config):
        """The model to train: ``cls.from_pretrained(last)`` when the run has a checkpoint (its config must equal
        ``config``: a run folder holds one model), else a fresh ``cls(config)``."""
        self.recover()
        if (self.last / CONFIG_NAME).exists():
            model = cls.from_pretrained(self.last)
            if model.config != config:
                raise MeshInputError(self.last, "holds a run with another model config; use another run folder "
                                                f"(saved {config_to_dict(model.config)})")
            return model
        return cls(config)

    def start(self, model_cls, config, make_optimizer, *, threads: int = 0, seed: int = 0):
        """Begin or resume the run: torch threads and seed, the model (:meth:`model`), its optimizer
        (``make_optimizer(parameters)``) with ``last``'s state, and the log trimmed to the resumed step.
        Returns ``(model, optimizer, step, best)``."""
        import torch

        if threads:
            torch.set_num_threads(threads)
        torch.manual_seed(seed)
        model = self.model(model_cls, config)
        optimizer = make_optimizer(model.parameters())
        step, best = self.restore(optimizer)
        self.trim_log(step)
        return model, optimizer, step, best

    def log_means(self, rows: list[dict], fields: list[str], **extra) -> dict:
        """Average the per-step ``rows`` (same keys, numbers), format them with 4 decimals, add ``extra`` (already
        formatted), append the row to ``log.csv`` and return it."""
        mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]} if rows else {}
        row = {**{k: f"{v:.4f}" for k, v in mean.items()}, **extra}
        self.write_log(row, fields)
        return row

    def restore(self, optimizer) -> tuple[int, float]:
        """Load ``last``'s optimizer state and torch RNG into this process; ``(step, best)``, or ``(0, -1.0)``
        for a new run."""
        import torch

        state = self.trainer_state()
        if state is None:
            return 0, -1.0
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_cpu"])
        return int(state["step"]), float(state["best"])

    def checkpoint(self, model, name: str, *, optimizer=None, step: int = 0, best: float = -1.0) -> None:
        """:meth:`save` ``model`` as ``name``; ``last`` also keeps the optimizer, step, best score and torch RNG."""
        import torch

        state = None
        if name == "last":
            state = {"optimizer": optimizer.state_dict(), "step": int(step), "best": float(best),
                     "rng_cpu": torch.get_rng_state()}
        self.save(model, name, state)

    def keep_best(self, model, step: int, score: float, best: float, row: dict) -> float:
        """After a validation: when ``score`` is below ``best``, save ``model`` as ``best`` with ``best/val.json``
        (``{"step": step, **row}``). Returns the new best score."""
        if score >= best:
            return best
        self.checkpoint(model, "best")
        atomic_write_text(self.out / "best" / "val.json", json.dumps({"step": int(step), **row}, indent=1) + "\n")
        return float(score)

    def record_session(self, **extra) -> None:
        """Append the machine this (re)start runs on to ``sessions.jsonl`` (model cards list them)."""
        import os
        import platform
        import time

        import torch

        self.out.mkdir(parents=True, exist_ok=True)
        row = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "platform": platform.platform(),
               "processor": platform.processor() or None, "cpu_count": os.cpu_count(), "torch": torch.__version__,
               "threads": torch.get_num_threads(), **extra}
        with open(self.out / "sessions.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")

    def trainer_state(self) -> dict | None:
        """``last/trainer_state.pt`` (tensors and plain values only), or None before the first checkpoint."""
        import torch

        path = self.last / "trainer_state.pt"
        return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None

    def trim_log(self, step: int) -> None:
        """Drop ``log.csv`` rows past ``step`` (written after the last checkpoint by a killed run)."""
        path = self.out / "log.csv"
        if not path.exists():
            return
        lines = path.read_text().splitlines(keepends=True)
        keep = lines[:1] + [ln for ln in lines[1:] if ln.strip() and int(ln.split(",", 1)[0]) <= step]
        if len(keep) != len(lines):
            atomic_write_text(path, "".join(keep))

    def log_rows(self) -> list[dict]:
        """The rows of ``log.csv`` as dicts of strings (empty before the first log step)."""
        import csv

        path = self.out / "log.csv"
        if not path.exists():
            return []
        with path.open(newline="") as fh:
            return list(csv.DictReader(fh))

    def machines(self) -> str:
        """The distinct machines of ``sessions.jsonl`` in one line, as model cards state them."""
        path = self.out / "sessions.jsonl"
        sessions = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
        names = sorted({f"{s['platform']}, {s['cpu_count']} CPUs, {s['threads']} torch threads, torch {s['torch']}"
                        for s in sessions})
        return "; ".join(names) or "an unrecorded machine"

    def elapsed_before(self) -> float:
        """Wall seconds of the earlier sessions (the last row's ``elapsed_s``; 0 for a new run)."""
        rows = self.log_rows()
        try:
            return float(rows[-1]["elapsed_s"]) if rows else 0.0
        except (KeyError, ValueError):
            return 0.0

    def write_log(self, row: dict, fields: list[str]) -> None:
        """Append one row to ``log.csv`` (header first when new; keys outside ``fields`` ignored)."""
        import csv

        path = self.out / "log.csv"
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)


def shippable_weights(src: str | Path, max_bytes: int) -> int:
    """Size in bytes of the weights of model directory ``src``; ``MeshInputError`` when it is not one or its
    weights reach ``max_bytes`` (bundled checkpoints stay small)."""
    src = Path(src)
    if not (src / CONFIG_NAME).is_file() or not (src / WEIGHTS_NAME).is_file():
        raise MeshInputError(src, f"not a model directory ({CONFIG_NAME} + {WEIGHTS_NAME})")
    size = (src / WEIGHTS_NAME).stat().st_size
    if size >= max_bytes:
        raise MeshInputError(src / WEIGHTS_NAME, f"{size / 2**20:.1f} MB; a bundled checkpoint must stay under "
                                                 f"{max_bytes / 2**20:.0f} MB")
    return size


def install_model_dir(src: str | Path, dest: str | Path, readme: str, extra_files: typing.Iterable[Path] = ()) -> None:
    """Copy the model directory ``src`` (config + weights) to ``dest`` with ``readme`` as its ``README.md`` (the
    model card) and ``extra_files`` beside it under their own names (e.g. the card's training curve), replacing
    whatever was there by renames: ``dest`` is never half-written."""
    import shutil

    src, dest = Path(src), Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for path in (src / CONFIG_NAME, src / WEIGHTS_NAME, *map(Path, extra_files)):
        shutil.copy2(path, tmp / path.name)
    atomic_write_text(tmp / "README.md", readme)
    old = dest.with_name(f".{dest.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
