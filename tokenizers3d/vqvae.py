"""``vqvae``: the learned, **lossy** face tokenizer (MeshGPT / MeshAnything), over :class:`~tokenizers3d.face_vqvae.FaceVQVAE`.

Grammar (``S`` slots per face, ``D`` quantizer levels, ``K`` codes per codebook; the checkpoint decides
all three and the bits)::

    sequence := BOS face* EOS
    face     := slot{S}                    # S = 3: one slot per corner (canonical winding); S = 1: the face
    slot     := code{D}                    # residual levels 0 .. D-1, ids 0 .. K-1

Faces come in canonical order, like ``coords``; every face costs exactly ``S * D`` tokens (6 for the
default MeshGPT layout) and a token's role depends only on its position: position ``i >= 1`` is face
``(i-1) // (S D)``, slot ``((i-1) % (S D)) // D``, level ``(i-1) % D``. Every level's ids are ``0 .. K-1``
(with per-level codebooks the same id means a different vector at another level, as the three axes share
ids in ``coords``). Vocabulary: PAD = K, BOS = K + 1, EOS = K + 2; ``vocab_size = K + 3``.

Encoding quantizes the mesh at the checkpoint's bits (:func:`~tokenizers3d.mesh.prepare`) and runs the
encoder and the quantizer. Decoding runs the decoder, takes each coordinate's most likely level (exact grid
values), merges corners with equal coordinates into one vertex and canonicalizes (degenerate and repeated
faces dropped, :class:`~tokenizers3d.base.DecodeReport` ``dropped_faces``). So ``decode(encode(m))`` is
close to ``m`` but **not** equal to it: measure the error with ``scripts/eval_face_vqvae.py``. Strict
decoding raises :class:`~tokenizers3d.errors.TokenizationError` only for a malformed sequence (envelope,
an id outside ``0 .. K-1`` in the body, a body length that is not a multiple of ``S * D``), never for the
geometry the decoder produced.

The tokenizer's config names its checkpoint (``checkpoint``: a model directory, ``None`` for the bundled
``assets/checkpoints/face-vqvae``) and the SHA-256 prefix of its weights and config
(``checkpoint_sha256``); rebuilding from a config whose digest does not match the directory's is refused,
so token files never decode with other weights than they were made with.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .base import (
    DecodeReport,
    Encoding,
    MeshTokenizer,
    ensure_canonical,
    finish_decode,
    locate_body,
    register_tokenizer,
)
from .coords import _first_invalid, _unique_points
from .errors import ConfigError, MeshInputError, TokenizationError
from .mesh import QuantizedMesh, prepare

if TYPE_CHECKING:
    import trimesh

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "checkpoints" / "face-vqvae"
TRAIN_HINT = ("train one with `python scripts/train_face_vqvae.py --config configs/face_vqvae_cpu.yaml` "
              "(then `python scripts/ship_face_vqvae.py`), or pass --checkpoint DIR")
FACES_PER_FORWARD = 20_000  # encode_batch / decode_batch group meshes into forward passes of about this size

_CACHE: dict[tuple, tuple] = {}  # (path, device, mtimes, sizes) -> (model, digest): each process loads a checkpoint once


def checkpoint_digest(directory: Path) -> str:
    """First 16 hex digits of the SHA-256 over a model directory's weights file and its model config
    (:func:`tokenizers3d.checkpoint.model_digest`)."""
    from .checkpoint import model_digest

    return model_digest(directory)


def load_face_vqvae(checkpoint: str | Path | None = None, *, device: str = "cpu"):
    """The :class:`~tokenizers3d.face_vqvae.FaceVQVAE` in ``checkpoint`` (default: the bundled one) on ``device``,
    in evaluation mode, and its digest; cached per process and device.

    Raises
    ------
    MeshInputError
        Missing directory (with how to train one), or anything :meth:`from_pretrained` refuses: no or bad
        config, another kind of model (a generator), missing or corrupt weights.
    """
    from .checkpoint import CONFIG_NAME, WEIGHTS_NAME

    path = DEFAULT_CHECKPOINT if checkpoint is None else Path(checkpoint)
    if not path.exists():
        what = "no bundled face VQ-VAE checkpoint" if checkpoint is None else "face VQ-VAE checkpoint does not exist"
        raise MeshInputError(path, f"{what}; {TRAIN_HINT}")
    stamp = []
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            st = (path / name).stat()
            stamp += [st.st_mtime_ns, st.st_size]
        except OSError:
            stamp += [None, None]
    key = (str(path.resolve()), str(device), *stamp)
    if key not in _CACHE:
        from .face_vqvae import FaceVQVAE

        model = FaceVQVAE.from_pretrained(path, map_location=device).eval()  # any bad directory: one MeshInputError
        _CACHE[key] = (model, checkpoint_digest(path))
    return _CACHE[key]


@register_tokenizer("vqvae")
class VQVAETokenizer(MeshTokenizer):
    """Learned face tokens from a face VQ-VAE checkpoint; lossy (module docstring).

    Parameters
    ----------
    checkpoint : str or Path or None
        Model directory written by ``FaceVQVAE.save_pretrained`` (``scripts/train_face_vqvae.py``); None:
        the bundled ``assets/checkpoints/face-vqvae``.
    bits : int or None
        Must be the checkpoint's bits when given (None: take them from the checkpoint).
    checkpoint_sha256 : str or None
        When given (a config from a token file or shard), the checkpoint's digest must equal it.
    device : str
        Where the model runs (not part of the config).
    """

    lossless = False

    def __init__(self, checkpoint: str | Path | None = None, bits: int | None = None,
                 checkpoint_sha256: str | None = None, *, device: str = "cpu"):
        model, digest = load_face_vqvae(checkpoint, device=device)
        path = DEFAULT_CHECKPOINT if checkpoint is None else Path(checkpoint)
        if checkpoint_sha256 is not None and checkpoint_sha256 != digest:
            raise MeshInputError(path, f"face VQ-VAE weights differ from those the tokens were made with "
                                       f"(sha256 {digest}, expected {checkpoint_sha256})")
        cfg = model.config
        if bits is not None and bits != cfg.bits:
            raise ConfigError(f"the vqvae checkpoint {path} works at {cfg.bits} bits, not {bits} "
                              f"(leave --bits out, or pass --bits {cfg.bits})")
        super().__init__(cfg.bits)
        self.model = model
        resolved = path.resolve()
        self.checkpoint = None if resolved == DEFAULT_CHECKPOINT.resolve() else str(resolved)  # None: bundled
        self.digest = digest
        self.slots, self.depth, self.codebook_size = cfg.slots, cfg.rvq.depth, cfg.rvq.codebook_size

    @property
    def tokens_per_face(self) -> int:
        return self.slots * self.depth

    @property
    def vocab_size(self) -> int:
        return self.codebook_size + 3

    @property
    def config(self) -> dict:
        return {"name": self.name, "bits": self.bits, "checkpoint": self.checkpoint,
                "checkpoint_sha256": self.digest}

    def token_roles(self, n_tokens: int) -> np.ndarray:
        """Role of each position of a sequence (or prefix) that starts with BOS.

        Returns
        -------
        (n_tokens, 3) int64
            Columns face, slot, level; ``-1`` for BOS.
        """
        pos = np.arange(int(n_tokens), dtype=np.int64) - 1
        t = self.tokens_per_face
        roles = np.stack([pos // t, (pos % t) // self.depth, pos % self.depth], axis=1)
        roles[pos < 0] = -1
        return roles

    # ---- encoding -------------------------------------------------------------------------------------
    def _ids(self, codes: np.ndarray) -> np.ndarray:
        ids = np.empty(codes.size + 2, dtype=np.int64)
        ids[0], ids[-1] = self.bos_id, self.eos_id
        ids[1:-1] = codes.reshape(-1)
        return ids

    def encode_quantized(self, qm: QuantizedMesh) -> np.ndarray:
        """Canonical quantized mesh -> ``[BOS] + S * D * F codes + [EOS]`` (int64)."""
        qm = ensure_canonical(qm, self.bits)
        return self._ids(self.model.encode_codes([qm])[0])

    def encode_batch(self, meshes: Iterable[trimesh.Trimesh]) -> list[Encoding]:
        """Like :meth:`encode` for each mesh, with several meshes per forward pass."""
        prepared = [prepare(m, self.bits) for m in meshes]
        out = []
        for group in _groups([qm.n_faces for qm, _ in prepared]):
            codes = self.model.encode_codes([prepared[i][0] for i in group])
            for i, c in zip(group, codes, strict=True):
                qm, norm = prepared[i]
                out.append(Encoding(self._ids(c), norm, qm.n_faces, len(qm.vertices)))
        return out

    # ---- decoding -------------------------------------------------------------------------------------
    def _parse(self, ids, strict: bool):
        """Envelope and body checks -> (body, codes (F, S, D), face positions, parsed stop, first error)."""
        body = locate_body(self, ids, strict=strict)
        tokens = body.ids[body.start : body.stop]
        t = self.tokens_per_face
        error, usable = None, len(tokens)
        bad = _first_invalid(tokens, self.codebook_size, self.vocab_size)
        if bad is not None:
            usable = bad[0]
            error = TokenizationError(bad[1], body.start + bad[0])
        n_faces = usable // t
        if error is None and usable % t:
            error = TokenizationError(f"body length {usable} is not a multiple of {t} (incomplete last face)",
                                      body.start + n_faces * t)
        if strict and error is not None:
            raise error
        if strict and body.tail_error is not None:
            raise body.tail_error
        codes = tokens[: n_faces * t].reshape(n_faces, self.slots, self.depth)
        face_pos = body.start + t * np.arange(n_faces, dtype=np.int64)
        return body, codes, face_pos, body.start + n_faces * t, error

    def _finish(self, parsed, corners: np.ndarray) -> tuple[QuantizedMesh, DecodeReport]:
        body, _, face_pos, stop, error = parsed
        vertices, inverse = _unique_points(corners[:, :, ::-1].reshape(-1, 3), self.bits)  # merge equal corners
        # the geometry is the decoder's guess: degenerate / repeated faces are dropped, never an error
        return finish_decode(self, body, vertices, inverse.reshape(-1, 3), face_pos, parsed_stop=stop,
                             body_error=error, strict=False)

    def decode_quantized(self, ids: Sequence[int] | np.ndarray, *,
                         strict: bool = True) -> tuple[QuantizedMesh, DecodeReport]:
        """Token ids -> canonical quantized mesh (the decoder's reconstruction, see the module docstring).

        Parameters
        ----------
        ids : (T,) int
            ``[BOS] + body + [EOS]``, optionally followed by PAD tokens.
        strict : bool
            Raise :class:`~tokenizers3d.errors.TokenizationError` on a malformed sequence; otherwise keep
            the complete faces before the first bad token. Faces the decoder makes degenerate or repeated
            are dropped in both modes (counted in ``DecodeReport.dropped_faces``).
        """
        parsed = self._parse(ids, strict)
        return self._finish(parsed, self.model.decode_codes([parsed[1]])[0])

    def decode_batch(self, batch: Iterable[Sequence[int] | np.ndarray], *, strict: bool = True) -> list[trimesh.Trimesh]:
        """Like :meth:`decode` for each sequence, with several meshes per forward pass."""
        parsed = [self._parse(ids, strict) for ids in batch]
        out = []
        for group in _groups([len(p[1]) for p in parsed]):
            corners = self.model.decode_codes([parsed[i][1] for i in group])
            out += [self._finish(parsed[i], c)[0].to_trimesh() for i, c in zip(group, corners, strict=True)]
        return out


def _groups(n_faces: list[int]) -> list[list[int]]:
    """Consecutive indices grouped so that a group holds about :data:`FACES_PER_FORWARD` faces."""
    groups, cur, total = [], [], 0
    for i, n in enumerate(n_faces):
        if cur and total + n > FACES_PER_FORWARD:
            groups.append(cur)
            cur, total = [], 0
        cur.append(i)
        total += n
    return groups + ([cur] if cur else [])
