"""Training loop for the generators: AdamW, warmup + cosine decay, clipping, validation, resumable checkpoints.

Single process::

    python scripts/train_generator.py --config configs/hourglass_small.yaml

Several processes (DDP; gloo on CPU, NCCL on GPU)::

    torchrun --nproc_per_node 2 scripts/train_generator.py --config configs/hourglass_small.yaml

Layout of ``out_dir``::

    last/            model weights (config.json + model.safetensors) of the newest step
    last/trainer_state.pt   optimizer, scheduler, step, RNG (tensors only; loaded with weights_only=True)
    best/            weights with the lowest validation loss
    log.csv          step, lr, train loss, tokens/s, val loss
    config.yaml      the experiment config that was run

Killed at any point and started again with the same command, training resumes from ``last/``.
"""

from __future__ import annotations

import csv
import functools
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader

from tokenizers3d.errors import MeshInputError
from tokenizers3d.io import atomic_write_text

from .config import ExperimentConfig
from .data import (
    FIRST_VERTEX,
    NEW_VERTEX,
    AugmentConfig,
    ExampleBatch,
    GeneratorExamples,
    ProceduralStream,
    collate_examples,
)
from .modeling import Conditioning, sequence_tokenizer
from .registry import build_model, load_model


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_kind: str) -> DistInfo:
    """Initialize torch.distributed when launched by torchrun (``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    backend = "nccl" if device_kind == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def lr_at(step: int, *, base: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to ``base`` over ``warmup`` steps, then cosine decay to ``base * min_ratio`` at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def optimizer_step(optimizer, loss: torch.Tensor, parameters, *, lr: float, clip: float) -> None:
    """One update of every trainer in this project: set each parameter group's learning rate to ``lr``,
    backpropagate ``loss``, clip the gradient norm of ``parameters`` to ``clip`` and step."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, clip)
    optimizer.step()


def forward_loss(model, batch: ExampleBatch, pad_id: int) -> tuple[torch.Tensor, int]:
    """Mean next-token cross entropy over non-PAD targets, and the number of targets."""
    inputs, targets = batch.tokens[:, :-1], batch.tokens[:, 1:]  # (B, T) each
    drop = batch.drop if batch.drop is not None and bool(batch.drop.any()) else None
    out = model(inputs, cond=Conditioning(points=batch.points, n_faces=batch.n_faces, drop=drop),
                start_pos=batch.start, targets=targets)
    return out.loss, int((targets != pad_id).sum())


def loss_by_kind(model, batch: ExampleBatch, pad_id: int) -> dict[str, tuple[float, int]]:
    """Summed negative log-likelihood and token count over all targets, new-vertex, repeated-vertex and first-vertex
    targets (``coords``: a repeated vertex is one whose (z, y, x) occurred earlier in the sequence). With a copy head
    a vertex's whole NLL sits on its first token (:func:`meshgen.pointer.pointer_token_nll`), so per-kind sums over
    the three tokens of a vertex stay exact."""
    inputs, targets = batch.tokens[:, :-1], batch.tokens[:, 1:]  # (B, T)
    out = model(inputs, cond=Conditioning(points=batch.points, n_faces=batch.n_faces), start_pos=batch.start,
                targets=targets)
    nll = out.token_nll  # (B, T)
    valid = targets != pad_id
    kinds = batch.kinds if batch.kinds is not None else torch.zeros_like(targets, dtype=torch.uint8)
    body = targets < pad_id  # value tokens (PAD is the first id past the body values)
    masks = {"all": valid, "new_vertex": valid & ((kinds & NEW_VERTEX) > 0),
             "repeat_vertex": valid & body & ((kinds & NEW_VERTEX) == 0),
             "first_vertex": valid & ((kinds & FIRST_VERTEX) > 0)}
    return {k: (float(nll[m].sum()), int(m.sum())) for k, m in masks.items()}


def warm_start(model, directory: str | Path) -> dict:
    """Copy every weight of the model saved in ``directory`` whose name and shape match into ``model``.

    Returns counts of copied and skipped tensors (new layers keep their fresh initialization).
    """
    from tokenizers3d.checkpoint import load_weights, read_model_config

    state = load_weights(directory, read_model_config(directory, what="train.init_from model directory"))
    own = model.state_dict()
    copied = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(copied, strict=False)
    return {"copied": len(copied), "new": len(own) - len(copied), "dropped": len(state) - len(copied)}


class Trainer:
    """Owns the model, optimizer, data and the resumable state of one run."""

    def __init__(self, cfg: ExperimentConfig, *, progress: bool = True):
        self.cfg = cfg
        tc = cfg.train
        kind = tc.device if tc.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.dist = setup_distributed(kind)
        self.device = torch.device(f"cuda:{self.dist.local_rank}" if kind == "cuda" else "cpu")
        if kind == "cpu" and tc.threads:
            torch.set_num_threads(tc.threads)
        torch.manual_seed(tc.seed)
        self.out = Path(tc.out_dir)
        self.progress = progress and self.dist.is_main
        self.step = 0
        self.best_val = float("inf")
        self.warm_start: dict | None = None
        last = self.out / "last"
        self._recover(last)
        if (last / "config.json").exists():
            self.model = load_model(last, map_location="cpu")
        else:
            self.model = build_model(cfg.model)
            if tc.init_from:
                self.warm_start = warm_start(self.model, tc.init_from)
        self.model.to(self.device)
        self.ddp_model = self.model
        if self.dist.world_size > 1:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if kind == "cuda" else None,
                find_unused_parameters=bool(self.model.config.encoder.null_context))  # null context: CFG rows only
        if tc.train_only:  # e.g. a copy head on frozen weights: the rest runs without gradients
            for name, p in self.model.named_parameters():
                p.requires_grad_(name.startswith(tuple(tc.train_only)))
            if not any(p.requires_grad for p in self.model.parameters()):
                raise MeshInputError(tc.out_dir, f"train.train_only {list(tc.train_only)} matches no parameter")
        params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        decay = [p for n, p in params if p.ndim >= 2]
        no_decay = [p for n, p in params if p.ndim < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=tc.betas)
        if (last / "trainer_state.pt").exists():
            self._load_state(last / "trainer_state.pt")
        self._trim_log()
        dc = cfg.data
        if dc.source == "procedural":
            self.train_data = ProceduralStream(
                bits=dc.bits, window=dc.window, n_points=dc.n_points, max_faces=dc.max_faces, seed=dc.stream_seed,
                augment=None if dc.augment is None else AugmentConfig(**dc.augment), pool_size=dc.pool_size,
                curriculum=dc.curriculum, drop_face_count=dc.drop_face_count, drop_points=dc.drop_points,
                families=dc.families, start_step=self.step, batch_size=tc.batch_size, rank=self.dist.rank,
                world_size=self.dist.world_size, tokenizer=self.model.config.tokenizer)
        else:
            self.train_data = GeneratorExamples(dc.train, window=dc.window, n_points=dc.n_points,
                                                max_faces=dc.max_faces, seed=tc.seed + self.step,
                                                shuffle_buffer=dc.shuffle_buffer, rank=self.dist.rank,
                                                world_size=self.dist.world_size, drop_face_count=dc.drop_face_count)
        if dc.drop_points > 0 and not self.model.config.encoder.null_context:
            raise MeshInputError(dc.train, "data.drop_points > 0 needs a model with encoder.null_context: true")
        self._val_items = None
        self._check_consistency()
        self.pad_id = self.train_data.pad_id
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if kind == "cuda" else nullcontext())

    def _check_consistency(self) -> None:
        """Shards, data config and model must agree on bits and tokens; the training window is the model's window."""
        dc, mc = self.cfg.data, self.model.config
        if dc.source == "shards":
            mine = sequence_tokenizer(mc).config
            theirs = self.train_data.tokenizer.config
            if theirs.get("name") != mine.get("name") or theirs.get("checkpoint_sha256") != mine.get("checkpoint_sha256"):
                raise MeshInputError(dc.train, f"shards hold {theirs.get('name')} tokens "
                                               f"({theirs.get('checkpoint_sha256') or 'rule-based'}), the model "
                                               f"samples {mine.get('name')} tokens "
                                               f"({mine.get('checkpoint_sha256') or 'rule-based'})")
        shard_bits = self.train_data.tokenizer.bits if dc.source == "shards" else dc.bits
        if not shard_bits == dc.bits == mc.bits:
            raise MeshInputError(dc.train, f"shards are {shard_bits}-bit, data.bits is {dc.bits}, the model is "
                                           f"{mc.bits}-bit: tokenize the shards with --bits {mc.bits}")
        if dc.window != mc.window:
            raise MeshInputError(dc.train, f"data.window ({dc.window}) must equal the model's attention window "
                                           f"({mc.window}) so generation attends as far back as training did")

    def _recover(self, last: Path) -> None:
        """A kill between the two renames of :meth:`save` leaves ``.last.old``: put it back."""
        old = self.out / ".last.old"
        if self.dist.is_main and not (last / "config.json").exists() and (old / "config.json").exists():
            shutil.rmtree(last, ignore_errors=True)
            old.rename(last)
        if self.dist.world_size > 1:
            dist.barrier()

    # ---- state ----------------------------------------------------------------------------------
    def _load_state(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.opt.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.best_val = float(state["best_val"])
        torch.set_rng_state(state["rng_cpu"])

    def save(self, name: str = "last") -> None:
        """Weights via save_pretrained, trainer state apart; written to a temp dir and swapped in."""
        if not self.dist.is_main:
            return
        tmp = self.out / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(tmp)
        if name == "last":
            torch.save({"optimizer": self.opt.state_dict(), "step": self.step, "best_val": self.best_val,
                        "rng_cpu": torch.get_rng_state()}, tmp / "trainer_state.pt")
        final = self.out / name
        old = self.out / f".{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)

    # ---- loop -----------------------------------------------------------------------------------
    def loader(self, data) -> DataLoader:
        workers = self.cfg.data.num_workers
        return DataLoader(data, batch_size=self.cfg.train.batch_size, num_workers=workers,
                          collate_fn=functools.partial(collate_examples, pad_id=self.pad_id),
                          persistent_workers=False, prefetch_factor=4 if workers else None)

    def _val_batches(self):
        dc, tc = self.cfg.data, self.cfg.train
        collate = functools.partial(collate_examples, pad_id=self.pad_id)
        if dc.source == "procedural":
            if self._val_items is None:  # a fixed set of never-trained objects (own seed, no augmentation)
                stream = ProceduralStream(bits=dc.bits, window=dc.window, n_points=dc.n_points,
                                          max_faces=dc.max_faces, seed=dc.val_seed, families=dc.families,
                                          tokenizer=self.model.config.tokenizer)
                items = stream.take(dc.val_examples)
                self._val_items = items[self.dist.rank :: self.dist.world_size]
            items = self._val_items
            return [collate(items[i : i + tc.batch_size]) for i in range(0, len(items), tc.batch_size)]
        if not Path(dc.val).exists():
            return []
        data = GeneratorExamples(dc.val, window=dc.window, n_points=dc.n_points, max_faces=dc.max_faces, seed=0,
                                 repeat=False, shuffle=False, rank=self.dist.rank, world_size=self.dist.world_size)
        out = []
        for i, batch in enumerate(DataLoader(data, batch_size=tc.batch_size, collate_fn=collate)):
            if i >= tc.val_batches:
                break
            out.append(batch)
        return out

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean validation loss over all targets, new-vertex, repeated-vertex and first-vertex targets (nats)."""
        self.model.eval()
        keys = ("all", "new_vertex", "repeat_vertex", "first_vertex")
        stats = torch.zeros(2 * len(keys), dtype=torch.float64)
        for batch in self._val_batches():
            with self.autocast:
                parts = loss_by_kind(self.model, batch.to(self.device), self.pad_id)
            for j, k in enumerate(keys):
                stats[2 * j] += parts[k][0]
                stats[2 * j + 1] += parts[k][1]
        self.model.train()
        if self.dist.world_size > 1:
            dist.all_reduce(stats)
        return {k: float(stats[2 * j] / stats[2 * j + 1]) if stats[2 * j + 1] > 0 else float("nan")
                for j, k in enumerate(keys)}

    def _trim_log(self) -> None:
        """Drop log rows past the resumed step (written after the last checkpoint by a run that was killed)."""
        path = self.out / "log.csv"
        if not self.dist.is_main or not path.exists():
            return
        lines = path.read_text().splitlines(keepends=True)
        keep = lines[:1] + [ln for ln in lines[1:] if ln.strip() and int(ln.split(",", 1)[0]) <= self.step]
        if len(keep) != len(lines):
            atomic_write_text(path, "".join(keep))

    LOG_FIELDS = ("step", "lr", "loss", "tokens_per_s", "val_loss", "elapsed_s", "val_new_vertex_loss",
                  "val_first_vertex_loss", "val_repeat_vertex_loss")

    def _log(self, row: dict) -> None:
        if not self.dist.is_main:
            return
        path = self.out / "log.csv"
        new = not path.exists()
        fields = list(self.LOG_FIELDS)
        if not new:  # a log begun by an older version keeps its columns
            with open(path, newline="") as fh:
                fields = next(csv.reader(fh), fields) or fields
        with open(path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)

    def fit(self) -> dict:
        tc = self.cfg.train
        self.out.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:
            atomic_write_text(self.out / "config.yaml", yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        self.model.train()
        it = iter(self.loader(self.train_data))
        t0, tokens_seen, losses = time.time(), 0, []
        bar = None
        if self.progress:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            bar = Progress(TextColumn("step {task.completed}/{task.total}"), BarColumn(),
                           TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn())
            bar.start()
            task = bar.add_task("train", total=tc.steps, completed=self.step, loss=float("nan"))
        val = {k: float("nan") for k in ("all", "new_vertex", "repeat_vertex", "first_vertex")}
        elapsed0 = self._elapsed_before()
        try:
            # a time budget (train.max_minutes, counted over resumed sessions) ends the run like its last step
            def over_budget() -> bool:
                return tc.max_minutes > 0 and elapsed0 + time.time() - t0 >= 60 * tc.max_minutes

            while self.step < tc.steps and not (tc.max_minutes > 0 and elapsed0 >= 60 * tc.max_minutes):
                lr = lr_at(self.step, base=tc.lr, warmup=tc.warmup_steps, total=tc.steps, min_ratio=tc.min_lr_ratio)
                batch = next(it).to(self.device)
                with self.autocast:
                    loss, n = forward_loss(self.ddp_model, batch, self.pad_id)
                optimizer_step(self.opt, loss, self.model.parameters(), lr=lr, clip=tc.grad_clip)
                self.step += 1
                tokens_seen += n
                losses.append(loss.item())
                if bar is not None:
                    bar.update(task, completed=self.step, loss=losses[-1])
                final = self.step == tc.steps or over_budget()
                if self.step % tc.val_every == 0 or final:
                    val = self.validate()
                    if val["all"] < self.best_val:
                        self.best_val = val["all"]
                        self.save("best")
                if self.step % tc.log_every == 0 or final:
                    elapsed = time.time() - t0
                    self._log({"step": self.step, "lr": f"{lr:.3e}", "loss": f"{sum(losses) / len(losses):.4f}",
                               "tokens_per_s": f"{tokens_seen * self.dist.world_size / elapsed:.1f}",
                               "val_loss": f"{val['all']:.4f}", "elapsed_s": f"{elapsed0 + elapsed:.3f}",
                               "val_new_vertex_loss": f"{val['new_vertex']:.4f}",
                               "val_first_vertex_loss": f"{val['first_vertex']:.4f}",
                               "val_repeat_vertex_loss": f"{val['repeat_vertex']:.4f}"})
                    losses = []
                if self.step % tc.ckpt_every == 0 or final:
                    self.save("last")
                if final:
                    break
        finally:
            if bar is not None:
                bar.stop()
            # stop the loader workers now, not at interpreter exit after the process group is gone (a gloo rank
            # once aborted at exit: "terminate called without an active exception")
            getattr(it, "_shutdown_workers", lambda: None)()
        return {"step": self.step, "val_loss": val["all"], "best_val": self.best_val}

    def _elapsed_before(self) -> float:
        """Training seconds logged before this run (resumed runs keep counting wall time from there)."""
        path = self.out / "log.csv"
        if not path.exists():
            return 0.0
        rows = list(csv.DictReader(path.open(newline="")))
        try:
            return float(rows[-1]["elapsed_s"]) if rows else 0.0
        except (KeyError, ValueError):
            return 0.0


def train(cfg: ExperimentConfig, *, progress: bool = True) -> dict:
    trainer = Trainer(cfg, progress=progress)
    try:
        result = trainer.fit()
        if dist.is_initialized():
            dist.barrier()  # every rank done with its collectives before the group is destroyed
        return result
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
