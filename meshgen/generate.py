"""Sliding-window generation, and the training-window sampler that matches it.

Inference keeps a rolling KV cache of at most ``window / 3^i`` elements per layer at level ``i``
(``model.init_cache(cond, window=...)``), so memory stays flat however long the mesh grows, and meshes
longer than any training window can be generated.

Training windows (truncated training): :func:`sample_training_window` crops a token sequence to
``window + 1`` ids starting at ``start_pos = 9 k`` -- BOS for ``k = 0``, otherwise the last token of face
``k - 1`` -- so that vertex and face groups line up with the hourglass pooling (see
``meshgen.hourglass``). Feed ``inputs = crop[:-1]``, ``targets = crop[1:]`` and ``start_pos``; sequences
of at most ``window + 1`` ids are used whole.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .guidance import GuidanceConfig, GuidanceStats, GuidedConstraint, PointGuide, build_guides
from .modeling import Conditioning, Context, MeshGenerator, TokenLayout, coord_layout, token_layout
from .pointer import PointerMixer
from .sampling import cfg_mix, check_edges_once, edges_once_for, invalid_rate, new_constraint, sample_next

FACE_TOKENS = 9  # coords; other layouts pass their own (TokenLayout.face_tokens)


# ---- training windows -----------------------------------------------------------------------------
@dataclass
class TrainingWindow:
    """``tokens`` (<= window + 1 ids) taken from position ``start_pos`` (a multiple of 9) of a sequence."""

    tokens: np.ndarray
    start_pos: int


def sample_training_window(ids: Sequence[int] | np.ndarray, window: int, rng: np.random.Generator, *,
                           face_tokens: int = FACE_TOKENS) -> TrainingWindow:
    """A random face-aligned crop of ``window + 1`` ids (whole sequence if it fits).

    Starts are ``f k`` (``f = face_tokens``: 9 for ``coords``) for ``k`` uniform in
    ``0 .. ceil((len - window - 1) / f)``, so every token, EOS included, can be a target.
    """
    if window < face_tokens or window % face_tokens:
        raise ValueError(f"window must be a positive multiple of {face_tokens}, got {window}")
    ids = np.asarray(ids, dtype=np.int64)
    excess = len(ids) - (window + 1)
    if excess <= 0:
        return TrainingWindow(ids, 0)
    k = int(rng.integers(0, -(-excess // face_tokens) + 1))
    start = face_tokens * k
    return TrainingWindow(ids[start : start + window + 1], start)


@dataclass
class WindowBatch:
    inputs: torch.Tensor  # (B, T) long, PAD-filled
    targets: torch.Tensor  # (B, T) long, PAD where there is nothing to predict
    start_pos: torch.Tensor  # (B,) long


def collate_windows(
    seqs: Sequence[Sequence[int] | np.ndarray], window: int, rng: np.random.Generator, *, pad_id: int
) -> WindowBatch:
    """Crop each sequence with :func:`sample_training_window` and right-pad into model inputs and targets."""
    crops = [sample_training_window(s, window, rng) for s in seqs]
    T = max(len(c.tokens) for c in crops) - 1
    inputs = np.full((len(crops), T), pad_id, dtype=np.int64)
    targets = np.full((len(crops), T), pad_id, dtype=np.int64)
    for i, c in enumerate(crops):
        inputs[i, : len(c.tokens) - 1] = c.tokens[:-1]
        targets[i, : len(c.tokens) - 1] = c.tokens[1:]
    starts = torch.tensor([c.start_pos for c in crops], dtype=torch.long)
    return WindowBatch(torch.from_numpy(inputs), torch.from_numpy(targets), starts)


# ---- sampling loop --------------------------------------------------------------------------------
@dataclass
class GenerationResult:
    """One entry per batch row. ``ids`` run from BOS to EOS (no EOS when ``stopped_reason`` is
    ``max_length`` or ``invalid_token``, which only unconstrained sampling produces). ``guidance[b]`` is the
    row's point-guidance report (fallback counts, coverage; :mod:`meshgen.guidance`), ``None`` when unguided."""

    ids: list[np.ndarray]
    n_faces: list[int]
    stopped_reason: list[str]  # "eos" | "max_faces" | "max_length" | "invalid_token"
    n_steps: int
    seconds: float
    guidance: list[GuidanceStats | None] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.n_steps * len(self.ids) / max(self.seconds, 1e-9)


def sample_sequences(
    step: Callable[[torch.Tensor], torch.Tensor],
    *,
    batch: int,
    bits: int,
    max_faces: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    constraints: bool = True,
    progress: Callable[[int, int], None] | None = None,
    device: str | torch.device = "cpu",
    guides: Sequence[PointGuide | None] | None = None,
    layout: TokenLayout | None = None,
    edges_once: str = "off",
    on_states: Callable[[list], None] | None = None,
) -> GenerationResult:
    """Autoregressive loop around ``step(tokens (B, 1)) -> logits (B, V)`` (the model plus its cache).

    Rows that finished are fed PAD. With ``constraints`` every row is a valid canonical mesh (``coords``) or a
    whole number of faces (codes: :class:`~meshgen.sampling.CodeConstraint`). ``guides`` (one
    :class:`~meshgen.guidance.PointGuide` or ``None`` per row; needs ``constraints`` and ``coords``) narrow each
    row's masks to its point cloud. ``layout``: the sequence's ids (default ``coords`` at ``bits``).
    ``edges_once`` (``off``, ``guided`` or ``all`` rows; ``coords`` with constraints): those rows' order constraint
    also refuses a directed edge written before (:class:`~meshgen.sampling.FaceConstraint`,
    :func:`~meshgen.sampling.edges_once_for`).
    ``on_states`` is called once with the per-row constraint states (``coords`` with constraints), which ``step``
    may then read: they hold every token fed so far (the copy head keeps only copies the rules allow).
    """
    if max_faces < 1:
        raise ValueError("max_faces must be >= 1")
    vocab = coord_layout(bits) if layout is None else layout
    if guides is not None and (not constraints or len(guides) != batch or not vocab.is_coords):
        raise ValueError(f"guides need coords tokens, constraints=True and one entry per row ({batch})")
    if check_edges_once(edges_once) != "off" and not vocab.is_coords:
        raise ValueError(f"the directed-edge rule works on coords tokens, not {vocab.name!r} codes")
    face_tokens = vocab.face_tokens
    seqs = [[vocab.bos] for _ in range(batch)]
    reasons = ["max_length"] * batch
    done = [False] * batch
    states: list | None = None
    if constraints:
        guided = [guides is not None and guides[b] is not None for b in range(batch)]
        states = [new_constraint(vocab, max_faces=max_faces, edges_once=edges_once_for(edges_once, g)) for g in guided]
        if guides is not None:
            states = [s if g is None else g.state(s) for s, g in zip(states, guides, strict=True)]
        if on_states is not None and vocab.is_coords:
            on_states(states)
    pad_only = np.zeros(vocab.size, dtype=bool)
    pad_only[vocab.pad] = True
    max_steps = face_tokens * max_faces + 1
    cur = torch.full((batch, 1), vocab.bos, dtype=torch.long, device=device)
    t0 = time.perf_counter()
    n_steps = 0
    for n_steps in range(1, max_steps + 1):
        logits = step(cur)  # (B, V)
        allowed = None
        if states is not None:
            rows = [pad_only if done[b] else states[b].allowed() for b in range(batch)]
            allowed = torch.from_numpy(np.stack(rows)).to(logits.device)  # (B, V)
        nxt = sample_next(
            logits, allowed=allowed, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
        ).tolist()
        for b in range(batch):
            if done[b]:
                nxt[b] = vocab.pad
                continue
            t = nxt[b]
            seqs[b].append(t)
            if states is not None:
                states[b].push(t)
            if t == vocab.eos:
                done[b] = True
                full = states is not None and states[b].n_faces >= max_faces
                reasons[b] = "max_faces" if full else "eos"
            elif t >= vocab.n:
                done[b], reasons[b] = True, "invalid_token"
        if progress is not None:
            progress(n_steps, max_steps)
        if all(done):
            break
        cur = torch.tensor(nxt, dtype=torch.long, device=device)[:, None]  # (B, 1)
    seconds = time.perf_counter() - t0
    n_faces = [max(len(s) - 1 - int(len(s) > 1 and s[-1] == vocab.eos), 0) // face_tokens for s in seqs]  # no BOS/EOS
    stats = [s.stats if isinstance(s, GuidedConstraint) else None for s in states] if states else [None] * batch
    return GenerationResult([np.asarray(s, dtype=np.int64) for s in seqs], n_faces, reasons, n_steps, seconds, stats)


def _with_null_rows(cond: Conditioning | Context | None) -> Conditioning:
    """``cond`` (B rows) followed by the same rows with ``drop=True`` (the model's null point context), 2B rows."""
    if not isinstance(cond, Conditioning) or cond.points is None:
        raise ValueError("classifier-free guidance (cfg_scale != 1) needs a Conditioning with points")
    B = cond.points.shape[0]
    drop = torch.zeros(B, dtype=torch.bool, device=cond.points.device) if cond.drop is None else cond.drop.bool()
    return dataclasses.replace(
        cond,
        points=torch.cat([cond.points, cond.points]),  # (2B, N, 6)
        n_faces=None if cond.n_faces is None else torch.cat([cond.n_faces, cond.n_faces]),  # (2B,)
        drop=torch.cat([drop, torch.ones_like(drop)]),  # (2B,)
    )


@torch.no_grad()
def generate(
    model: MeshGenerator,
    cond: Conditioning | Context | None,
    *,
    max_faces: int = 800,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    constraints: bool = True,
    window: int | None = None,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    guidance: GuidanceConfig | None = None,
    points: np.ndarray | torch.Tensor | None = None,
    cfg_scale: float = 1.0,
    unguided_rows: int = 0,
    edges_once: str = "off",
) -> GenerationResult:
    """Sample one mesh per conditioning row with a sliding-window cache.

    Parameters
    ----------
    cond : Conditioning (B rows) or an encoded Context; ``None`` with ``batch_size`` for unconditional.
    max_faces : stop (EOS) after this many faces.
    temperature, top_k, top_p : sampling controls; ``temperature=0`` is greedy. With a copy head
        (:mod:`meshgen.pointer`) the temperature applies to the token branch alone (:class:`PointerMixer`).
    seed : seeds a ``torch.Generator``, so the same seed gives the same meshes.
    constraints : mask logits so the output is a valid canonical mesh (:mod:`meshgen.sampling`).
    window : attention window in tokens at inference (multiple of 9); default the model's.
    progress : called as ``progress(steps_done, max_steps)`` after every token.
    guidance : point-cloud-guided decoding (:mod:`meshgen.guidance`); needs ``constraints`` and points.
    points : ``(B, N, 6)`` or ``(N, 6)`` unit-cube xyz + normals for ``guidance``; default ``cond.points``.
    cfg_scale : classifier-free guidance: ``!= 1`` doubles the batch, rows ``B..2B-1`` with
        ``Conditioning.drop`` set (the model's null point context), and samples from
        ``l_u + cfg_scale (l_c - l_u)``; needs a :class:`Conditioning` with points.
    unguided_rows : with ``guidance``, the last ``unguided_rows`` rows are sampled without it (order
        constraints only): best-of-k decoding mixes both kinds of sample (:func:`meshgen.pipeline.generate_mesh`).
    edges_once : rows whose constraint refuses directed edges written before: ``off``, ``guided`` or ``all``
        (:func:`sample_sequences`).
    """
    device = next(model.parameters()).device
    use_cfg = cfg_scale != 1.0
    guides = None
    layout = token_layout(model.config)
    if guidance is not None:
        if not layout.is_coords:
            raise ValueError(f"point guidance works on coords tokens; this model samples {layout.name!r} codes")
        if not constraints:
            raise ValueError("guidance needs constraints=True")
        if points is None:
            points = cond.points if isinstance(cond, Conditioning) else None
        if points is None:
            raise ValueError("guidance needs points: pass points= or a Conditioning with points")
    was_training = model.training
    model.eval()
    try:
        cache = model.init_cache(_with_null_rows(cond) if use_cfg else cond, window=window, batch_size=batch_size)
        batch = cache.context.cond_emb.shape[0] // (2 if use_cfg else 1)
        if guidance is not None:
            guides = build_guides(points, bits=model.config.bits, config=guidance, batch=batch)
            if not 0 <= unguided_rows <= batch:
                raise ValueError(f"unguided_rows must be in [0, {batch}], got {unguided_rows}")
            guides = guides[: batch - unguided_rows] + [None] * unguided_rows
        generator = None
        if seed is not None:
            generator = torch.Generator(device=device).manual_seed(seed)

        mixer = None
        if getattr(model, "pointer", None) is not None:  # the copy head folds into the next token's log-probs
            # the temperature sharpens the token branch inside the mixture; the mixture is then drawn as it is
            branch_t = temperature if temperature > 0 else 1.0
            mixer = PointerMixer(model.pointer, batch, n_values=layout.n, window=window or model.config.window,
                                 temperature=branch_t)
            if temperature > 0:
                temperature = 1.0

        def step(tokens: torch.Tensor) -> torch.Tensor:
            out = model(torch.cat([tokens, tokens]) if use_cfg else tokens, cache=cache)
            logits = out.logits[:, -1]  # (B or 2B, V)
            if use_cfg:
                logits = cfg_mix(logits, cfg_scale)  # (B, V)
            if mixer is None:
                return logits
            return mixer(tokens[:, 0], logits, out.hidden[:batch, -1])  # conditional rows' hidden

        return sample_sequences(
            step,
            batch=batch,
            bits=model.config.bits,
            max_faces=max_faces,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            generator=generator,
            constraints=constraints,
            progress=progress,
            device=device,
            guides=guides,
            layout=layout,
            edges_once=edges_once,
            on_states=None if mixer is None else mixer.use_constraints,
        )
    finally:
        model.train(was_training)


def measure_invalid_rate(model: MeshGenerator, cond: Conditioning | None, *, max_faces: int, seed: int = 0, **kw) -> dict:
    """Invalid-mesh rate of :func:`generate` with and without constraints on the same inputs and seed."""
    out = {}
    for name, flag in (("constrained", True), ("unconstrained", False)):
        res = generate(model, cond, max_faces=max_faces, seed=seed, constraints=flag, **kw)
        out[name] = invalid_rate(res.ids, model.config.bits, token_layout(model.config))
        out[f"{name}_reasons"] = {r: res.stopped_reason.count(r) for r in sorted(set(res.stopped_reason))}
    out["n"] = len(res.ids)
    return out
