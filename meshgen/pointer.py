"""Copy head over written vertices: a mesh repeats vertices, so let the model point at them.

A ``coords`` sequence writes every vertex of every face again, three tokens each. Teacher-forced, the bundled
generator pays 0.12 nats a token for repeating a vertex on boxes and tables but 1.36 on irregular triangulations
(decimated scans, the ``pebble`` family): it has to spell the repeated vertex cell by cell and does not know which
one to spell, so it writes new vertices and the output falls apart into loose triangles. The copy head gives it a
second way to write a vertex: point at one written before.

At every vertex start (the position that predicts a vertex's first token, ``t = 0, 3, 6, ...`` of a face-aligned
window) the head reads the decoder's final hidden state ``h_t`` and scores

* the token branch: ``g_t = w . h_t + b`` (``b`` starts large, so an untrained head leaves the model as it was),
* every vertex ``k`` completed at or before ``t`` inside the window: ``s_tk = q(h_t) . key_k / sqrt(d)`` with
  ``key_k = K(h_{t_k}) + E_z[z_k] + E_y[y_k] + E_x[x_k]`` (``t_k`` the vertex's last token),

and ``pi = softmax([g_t, s_t1, ...])``. The next vertex ``v`` (or EOS) then has probability

    p(v) = pi_tok * p_tok(z) p_tok(y | z) p_tok(x | z, y)  +  sum over written k with coords(k) = v of pi_k
    p(EOS) = pi_tok * p_tok(EOS)

-- an exact mixture, normalized, trained by its negative log-likelihood (:func:`pointer_token_nll`, placed on the
event's first target so that sums per token kind still add up). Sampling marginalizes the copies into per-token
log-probabilities (:class:`PointerMixer`): after ``z`` is drawn only copies with that ``z`` stay, and so on, so the
order constraints and the point guide mask the mixture exactly as they mask the plain logits.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class PointerHead(nn.Module):
    """Scores of the token branch and of each written vertex (see the module docstring)."""

    def __init__(self, dim: int, key_dim: int, n_values: int, *, gate_bias: float = 4.0):
        super().__init__()
        self.key_dim = key_dim
        self.n_values = n_values
        self.query = nn.Linear(dim, key_dim)
        self.key = nn.Linear(dim, key_dim)
        self.coord = nn.Embedding(3 * n_values, key_dim)  # z, y, x tables side by side
        self.gate = nn.Linear(dim, 1)
        self.gate_bias = gate_bias

    def reset_parameters(self) -> None:
        """Small random maps and a gate bias that keeps the token branch (``pi_tok ~ 1``) until trained."""
        for lin in (self.query, self.key):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        nn.init.normal_(self.coord.weight, std=0.02)
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(self.gate.bias, self.gate_bias)

    def keys(self, hidden: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """``hidden (..., D)`` at a vertex's last token and its ``coords (..., 3)`` (z, y, x values) -> ``(..., d)``."""
        offset = torch.arange(3, device=coords.device) * self.n_values
        return self.key(hidden) + self.coord(coords + offset).sum(-2)

    def scores(self, hidden: torch.Tensor, keys: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``log pi``: ``hidden (B, E, D)`` at vertex starts, ``keys (B, K, d)``, ``valid (B, E, K)`` bool ->
        ``(B, E, 1 + K)`` log-probabilities, column 0 the token branch, invalid copies ``-inf``."""
        q = self.query(hidden)  # (B, E, d)
        s = torch.einsum("bed,bkd->bek", q, keys) / math.sqrt(self.key_dim)  # (B, E, K)
        s = s.masked_fill(~valid, float("-inf"))
        return torch.cat([self.gate(hidden), s], dim=-1).float().log_softmax(-1)  # (B, E, 1 + K)


def pointer_token_nll(head: PointerHead, hidden: torch.Tensor, logits: torch.Tensor, inputs: torch.Tensor,
                      targets: torch.Tensor, *, n_values: int, pad: int, eos: int) -> torch.Tensor:
    """Per-target negative log-likelihood ``(B, T)`` of the copy mixture (0 where nothing is predicted).

    ``inputs``/``targets (B, T)`` are a face-aligned window (``T`` a multiple of 9 unless the sequence ended;
    :func:`meshgen.generate.sample_training_window`): position ``3e`` predicts the first token of a vertex (or EOS).
    A vertex event's NLL sits at its first target, the other two targets carry 0; EOS carries its own. Other
    targets (a window that does not end on a vertex) keep the plain cross entropy.
    """
    B, T, V = logits.shape
    if T % 3:  # a whole sequence (BOS ... EOS) is 9F + 1 targets: pad so that EOS is an event too
        r = 3 - T % 3
        out = pointer_token_nll(head, F.pad(hidden, (0, 0, 0, r)), F.pad(logits, (0, 0, 0, r)),
                                F.pad(inputs, (0, r), value=pad), F.pad(targets, (0, r), value=pad),
                                n_values=n_values, pad=pad, eos=eos)
        return out[:, :T]
    logp = logits.float().log_softmax(-1)  # (B, T, V)
    tok_nll = -logp.gather(-1, targets.clamp(max=V - 1)[..., None])[..., 0]  # (B, T)
    tok_nll = tok_nll.masked_fill(targets == pad, 0.0)
    E = T // 3
    if E == 0:
        return tok_nll
    # vertex events e at t = 3e, whose three targets lie inside the window
    t_ev = torch.arange(E, device=logits.device) * 3  # (E,)
    tri = targets[:, : 3 * E].reshape(B, E, 3)  # (B, E, 3) next vertex's z, y, x (or EOS / PAD first)
    is_vert = (tri < n_values).all(-1)  # (B, E)
    is_eos = tri[..., 0] == eos  # (B, E)
    # keys: vertices ending at t' = 3k (k >= 1) inside the window, coords inputs[3k-2 .. 3k]
    if E > 1:
        kcoords = inputs[:, 1 : 3 * E - 2].reshape(B, E - 1, 3)  # (B, K=E-1, 3), vertex k+1 ends at 3(k+1)
        kvalid = (kcoords < n_values).all(-1)  # (B, K)
        khidden = hidden[:, 3 : 3 * E : 3]  # (B, K, D)
        keys = head.keys(khidden, kcoords.clamp(max=n_values - 1))  # (B, K, d)
        k_end = (torch.arange(E - 1, device=logits.device) + 1) * 3  # (K,)
        causal = k_end[None, :] <= t_ev[:, None]  # (E, K)
        valid = causal[None] & kvalid[:, None, :]  # (B, E, K)
    else:
        kcoords = inputs.new_zeros(B, 0, 3)
        keys = hidden.new_zeros(B, 0, head.key_dim)
        valid = torch.zeros(B, E, 0, dtype=torch.bool, device=logits.device)
    log_pi = head.scores(hidden[:, t_ev], keys, valid)  # (B, E, 1 + K)
    lp = logp[:, : 3 * E].reshape(B, E, 3, V)  # (B, E, 3, V)
    tri_c = tri.clamp(max=V - 1)
    lp_tok = lp.gather(-1, tri_c[..., None])[..., 0].sum(-1)  # (B, E) log p_tok of the whole vertex
    match = (kcoords[:, None, :, :] == tri[:, :, None, :]).all(-1) & valid  # (B, E, K)
    copy = log_pi[..., 1:].masked_fill(~match, float("-inf")).logsumexp(-1)  # (B, E)
    vert_ll = torch.logaddexp(log_pi[..., 0] + lp_tok, copy)  # (B, E)
    eos_ll = log_pi[..., 0] + lp[:, :, 0].gather(-1, tri_c[..., :1])[..., 0]  # (B, E)
    out = tok_nll.clone()
    ev = out[:, : 3 * E].reshape(B, E, 3)
    ev[..., 0] = torch.where(is_vert, -vert_ll, torch.where(is_eos, -eos_ll, ev[..., 0]))
    ev[..., 1:] = torch.where(is_vert[..., None], 0.0, ev[..., 1:])
    return out


class PointerMixer:
    """Folds a :class:`PointerHead` into sampling: per step, the token branch's logits and the copies, marginalized
    to log-probabilities over the next token (``__call__``). Keeps one key per written vertex per row (those ending
    within the last ``window`` tokens take part, as in training).

    ``temperature`` (``> 0``) sharpens the token branch alone: ``p_tok`` is taken at that temperature, while the
    odds of writing a new vertex against repeating each written one stay the model's. The result is meant to be
    sampled at temperature 1 (``generate`` does so). Taking the whole mixture to a low temperature instead
    favours whatever is peaked: a copy holds its mass on one value while a new vertex spreads over many, so at
    0.5 the copies' share grows far beyond what the model predicts (measured on held-out pebbles, docs/model.md).
    """

    def __init__(self, head: PointerHead, batch: int, *, n_values: int, window: int, temperature: float = 1.0):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.head, self.n, self.window = head, n_values, window
        self.temperature = float(temperature)
        self.pos = 0  # absolute position of the token fed at this step (BOS = 0)
        self.history: list[list[int]] = [[] for _ in range(batch)]  # tokens fed per row
        self.keys: list[list[torch.Tensor]] = [[] for _ in range(batch)]
        self.key_coords: list[list[tuple[int, int, int]]] = [[] for _ in range(batch)]
        self.key_end: list[list[int]] = [[] for _ in range(batch)]
        self.copy_logw: list[torch.Tensor | None] = [None] * batch  # (K_b,) log weight of each live copy
        self.copy_coords: list[torch.Tensor | None] = [None] * batch  # (K_b, 3)
        self.tok_logw: torch.Tensor | None = None  # (B,) log weight of the token branch so far
        self.last_logp: torch.Tensor | None = None  # (B, V) token-branch log-probs of the previous step
        self.copy_steps = 0  # vertex starts where a copy held >= half the mass (a diagnostic)
        self.constraints: list | None = None  # per-row order constraints (use_constraints), or None
        self.refused_copies = 0  # copies left out at vertex starts because the order rules refuse them

    def use_constraints(self, states: list) -> None:
        """Leave out, at every vertex start, the written vertices the row's order rules refuse as the next vertex
        (``states``: one :class:`~meshgen.sampling.FaceConstraint`, or a guided state around one, per row; read
        when called, so they must already hold the tokens fed before each step, as ``sample_sequences`` keeps
        them). Without this the token-by-token marginal draws a refused copy's ``z``, the copy then dies at ``y``
        or ``x``, and the token branch writes a vertex next to it: a near-duplicate vertex and a sliver."""
        self.constraints = [getattr(s, "constraint", s) for s in states]

    @torch.no_grad()
    def __call__(self, fed: torch.Tensor, logits: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """``fed (B,)`` the tokens just fed, ``logits (B, V)`` the token branch, ``hidden (B, D)`` -> ``(B, V)``."""
        B, V = logits.shape
        a, n = self.pos, self.n
        self.pos += 1
        fed = fed.reshape(-1).tolist()
        for b in range(B):
            self.history[b].append(int(fed[b]))
        logp = (logits.float() / self.temperature).log_softmax(-1)  # (B, V)
        slot = a % 3
        if slot == 0:
            if a >= 3:
                for b in range(B):
                    tri = self.history[b][-3:]
                    if all(0 <= v < n for v in tri):
                        c = torch.tensor(tri, device=hidden.device)
                        self.keys[b].append(self.head.keys(hidden[b], c))
                        self.key_coords[b].append(tuple(tri))
                        self.key_end[b].append(a)
            gate = self.head.gate(hidden).float()[:, 0]  # (B,)
            q = self.head.query(hidden)  # (B, d)
            self.tok_logw = torch.empty(B, device=logits.device)
            for b in range(B):
                live = [i for i, e in enumerate(self.key_end[b]) if e > a - self.window]
                if self.constraints is not None and live:
                    legal = self.constraints[b].allows_next_vertex([self.key_coords[b][i] for i in live])
                    self.refused_copies += int((~legal).sum())
                    live = [i for i, ok in zip(live, legal.tolist(), strict=True) if ok]
                if not live:
                    self.copy_logw[b], self.copy_coords[b] = None, None
                    self.tok_logw[b] = 0.0
                    continue
                K = torch.stack([self.keys[b][i] for i in live])  # (K, d)
                s = (K @ q[b]).float() / math.sqrt(self.head.key_dim)  # (K,)
                log_pi = torch.cat([gate[b : b + 1], s]).log_softmax(0)  # (1 + K,)
                self.tok_logw[b] = log_pi[0]
                self.copy_logw[b] = log_pi[1:]
                self.copy_coords[b] = torch.tensor([self.key_coords[b][i] for i in live], device=logits.device)
                if float(log_pi[0]) < math.log(0.5):
                    self.copy_steps += 1
        else:
            for b in range(B):
                v = int(fed[b])
                if self.last_logp is not None and 0 <= v < V:
                    self.tok_logw[b] = self.tok_logw[b] + self.last_logp[b, v]
                if self.copy_logw[b] is not None:
                    keep = self.copy_coords[b][:, slot - 1] == v
                    self.copy_logw[b] = self.copy_logw[b].masked_fill(~keep, float("-inf"))
        out = self.tok_logw[:, None] + logp  # (B, V)
        for b in range(B):
            if self.copy_logw[b] is None:
                continue
            w = self.copy_logw[b]
            if not torch.isfinite(w).any():
                continue
            vals = self.copy_coords[b][:, slot]  # (K,)
            summed = torch.zeros(n, dtype=torch.float64, device=out.device).index_add_(0, vals, w.double().exp())
            copy_lp = summed.log().to(out.dtype)  # (n,) log of the copies' mass per value (-inf: none)
            out[b, :n] = torch.logaddexp(out[b, :n], copy_lp)
        self.last_logp = logp
        return out
