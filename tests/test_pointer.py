"""The copy head (meshgen.pointer): its training likelihood, the sampler's marginalization of it, and training it alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh

from meshgen.encoder import EncoderConfig
from meshgen.generate import generate
from meshgen.hourglass import HourglassConfig, HourglassTransformer
from meshgen.modeling import Conditioning, coord_layout
from meshgen.registry import load_model
from meshgen.sampling import invalid_rate
from tokenizers3d.base import get_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")
VOCAB = coord_layout(7)
ENC = EncoderConfig(dim=16, n_heads=2, n_latents=4, n_layers=1, n_freqs=2)


def _model(gate_bias: float, seed: int = 0, window: int = 189) -> HourglassTransformer:
    torch.manual_seed(seed)
    cfg = HourglassConfig(dim=32, n_heads=2, layers=(1, 1, 1), window=window, cross_every=2, encoder=ENC,
                          pointer_dim=16)
    model = HourglassTransformer(cfg).eval()
    with torch.no_grad():
        model.pointer.gate.bias.fill_(gate_bias)
        model.pointer.query.weight.normal_(std=1.0)  # sharp, varied copy scores
    return model


def _sequence() -> torch.Tensor:
    """An icosahedron (20 faces, 12 vertices: 48 of its 60 written vertices repeat one written before)."""
    ids = get_tokenizer("coords", bits=7).encode(trimesh.creation.icosahedron()).ids
    return torch.as_tensor(ids)[None]  # (1, 182)


def _cond() -> Conditioning:
    g = torch.Generator().manual_seed(0)
    return Conditioning(torch.rand(1, 8, 6, generator=g) - 0.5, torch.tensor([20]))


def test_closed_gate_is_the_plain_cross_entropy():
    seq = _sequence()
    model = _model(gate_bias=60.0)
    out = model(seq[:, :-1], cond=_cond(), targets=seq[:, 1:])
    ce = F.cross_entropy(out.logits.float().transpose(1, 2), seq[:, 1:], reduction="none")  # (1, T)
    # a vertex's NLL sits on its first target: per-vertex sums agree, EOS agrees
    body = out.token_nll[0, :-1].reshape(-1, 3).sum(-1)
    assert torch.allclose(body, ce[0, :-1].reshape(-1, 3).sum(-1), atol=1e-4)
    assert torch.allclose(out.token_nll[0, -1], ce[0, -1], atol=1e-5)
    assert torch.allclose(out.loss, ce.mean(), atol=1e-5)


def test_sampler_marginalizes_exactly_what_training_scores():
    """Teacher-forced through the cached decoder, the sampler's per-step log-probs sum to the training NLL."""
    seq = _sequence()
    model = _model(gate_bias=0.0)
    full = model(seq[:, :-1], cond=_cond(), targets=seq[:, 1:])
    ce = F.cross_entropy(full.logits.float().transpose(1, 2), seq[:, 1:], reduction="sum")
    assert abs(float((full.token_nll.sum() - ce).detach())) > 5.0  # the copies change the likelihood: the test can fail

    from meshgen.pointer import PointerMixer

    cache = model.init_cache(_cond())
    mixer = PointerMixer(model.pointer, 1, n_values=VOCAB.n, window=model.config.window)
    total = 0.0
    with torch.no_grad():
        for t in range(seq.shape[1] - 1):
            tok = seq[:, t : t + 1]
            out = model(tok, cache=cache)
            lp = mixer(tok[:, 0], out.logits[:, -1], out.hidden[:, -1]).log_softmax(-1)  # (1, V)
            total -= float(lp[0, seq[0, t + 1]])
    assert total == pytest.approx(float(full.token_nll.sum()), rel=1e-4)
    assert mixer.copy_steps > 0


def test_temperature_sharpens_the_token_branch_but_keeps_the_copy_odds():
    """At every vertex start the share of the token branch is the model's whatever the temperature; values no copy
    holds get that share times the token branch taken at the temperature; the mixture stays normalized."""
    from meshgen.pointer import PointerMixer

    seq = _sequence()
    model = _model(gate_bias=0.0)
    cache = model.init_cache(_cond())
    mixers = {t: PointerMixer(model.pointer, 1, n_values=VOCAB.n, window=model.config.window, temperature=t)
              for t in (1.0, 0.5)}
    checked = 0
    with torch.no_grad():
        for t in range(seq.shape[1] - 1):
            tok = seq[:, t : t + 1]
            out = model(tok, cache=cache)
            logits, hidden = out.logits[:, -1], out.hidden[:, -1]
            lps = {temp: m(tok[:, 0], logits, hidden) for temp, m in mixers.items()}
            if t % 3 or mixers[1.0].copy_logw[0] is None:
                continue
            w1, w5 = float(mixers[1.0].tok_logw[0]), float(mixers[0.5].tok_logw[0])
            assert w1 == pytest.approx(w5, abs=1e-5) and w1 < -0.01  # copies hold some mass, the same at both
            held = torch.zeros(VOCAB.n + 8, dtype=torch.bool)
            held[mixers[0.5].copy_coords[0][:, 0]] = True
            branch = (logits.float() / 0.5).log_softmax(-1)[0]
            lp = lps[0.5][0]
            assert torch.allclose(lp[~held[: lp.numel()]], w5 + branch[~held[: lp.numel()]], atol=1e-4)
            assert float(lp.logsumexp(0)) == pytest.approx(0.0, abs=1e-4)
            checked += 1
    assert checked >= 10
    with pytest.raises(ValueError, match="temperature"):
        PointerMixer(model.pointer, 1, n_values=VOCAB.n, window=9, temperature=0.0)


def test_sampling_with_copies_gives_valid_meshes():
    model = _model(gate_bias=-3.0)  # the copies hold most of the mass at every vertex start
    cond = Conditioning(torch.rand(3, 8, 6, generator=torch.Generator().manual_seed(1)) - 0.5, torch.tensor([30] * 3))
    res = generate(model, cond, max_faces=30, seed=0, temperature=1.0)
    assert invalid_rate(res.ids, 7) == 0.0
    assert any(n > 0 for n in res.n_faces)
    # a written vertex is repeated: fewer distinct vertices than written ones
    tok = get_tokenizer("coords", bits=7)
    qm, _ = tok.decode_quantized(res.ids[int(np.argmax(res.n_faces))], strict=True)
    assert len(qm.vertices) < 3 * qm.n_faces


def test_copies_the_order_rules_refuse_are_left_out():
    """With the row's constraint attached, every copy alive at a vertex start is a vertex the rules allow next; a
    sequence that repeats vertices meets refused ones (earlier faces' lower vertices) and leaves them out."""
    from meshgen.pointer import PointerMixer
    from meshgen.sampling import FaceConstraint

    seq = _sequence()
    model = _model(gate_bias=0.0)
    cache = model.init_cache(_cond())
    mixer = PointerMixer(model.pointer, 1, n_values=VOCAB.n, window=model.config.window)
    rules = FaceConstraint(7)
    mixer.use_constraints([rules])
    n = VOCAB.n
    checked = 0
    with torch.no_grad():
        for t in range(seq.shape[1] - 1):
            tok = seq[:, t : t + 1]
            if t:
                rules.push(int(tok))
            out = model(tok, cache=cache)
            mixer(tok[:, 0], out.logits[:, -1], out.hidden[:, -1])
            if t % 3 or mixer.copy_coords[0] is None or not rules.can_continue:
                continue
            lb, bad = rules.vertex_domain()
            ranks = [(z * n + y) * n + x for z, y, x in mixer.copy_coords[0].tolist()]
            assert all(r >= lb and r not in set(bad.tolist()) for r in ranks)
            checked += 1
    assert checked >= 10 and mixer.refused_copies > 0


def test_save_load_keeps_the_head(tmp_path):
    model = _model(gate_bias=0.5)
    model.save_pretrained(tmp_path / "m")
    back = load_model(tmp_path / "m")
    assert back.config.pointer_dim == 16
    seq = _sequence()
    a = model(seq[:, :-1], cond=_cond(), targets=seq[:, 1:]).loss
    b = back.eval()(seq[:, :-1], cond=_cond(), targets=seq[:, 1:]).loss
    assert torch.allclose(a, b)


def test_pointer_needs_coords_tokens():
    from meshgen.modeling import vqvae_tokenizer_config

    with pytest.raises(ValueError, match="copy head"):
        HourglassTransformer(HourglassConfig(dim=32, n_heads=2, layers=(1, 1, 1), window=36, encoder=ENC,
                                             tokenizer=vqvae_tokenizer_config(), pointer_dim=8))


def test_train_only_trains_the_head_alone(tmp_path):
    from test_train import ROOT

    from meshgen.config import load_config
    from meshgen.train import train

    out = tmp_path / "run"
    over = {"data.source": "procedural", "data.families": ["box", "pyramid"], "data.val_examples": 2,
            "data.max_faces": 20, "data.stream_seed": 3, "data.val_seed": 4, "train.out_dir": str(out),
            "train.threads": 1, "train.steps": 3, "train.val_every": 3, "train.ckpt_every": 3,
            "train.train_only": ["pointer."], "model.args.pointer_dim": 8}
    base_dir = tmp_path / "base"
    cfg = load_config(ROOT / "configs" / "tiny_test.yaml", over)
    from meshgen.registry import build_model

    base = build_model({**cfg.model, "args": {k: v for k, v in cfg.model["args"].items() if k != "pointer_dim"}})
    base.save_pretrained(base_dir)
    cfg = load_config(ROOT / "configs" / "tiny_test.yaml", {**over, "train.init_from": str(base_dir)})
    res = train(cfg, progress=False)
    assert res["step"] == 3
    trained = load_model(out / "last").state_dict()
    before = base.state_dict()
    for name, value in trained.items():
        if name.startswith("pointer."):
            continue
        assert torch.equal(value, before[name]), name
    assert float(trained["pointer.gate.bias"]) != pytest.approx(4.0)  # the gate's initial bias moved
    assert "val_repeat_vertex_loss" in (out / "log.csv").read_text().splitlines()[0]


def test_eval_token_loss_scores_each_checkpoint_per_group(tmp_path, tiny_checkpoint):
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "eval_token_loss", Path(__file__).resolve().parent.parent / "scripts" / "eval_token_loss.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = load_model(tiny_checkpoint)
    cfg = dict(vars(model.config))
    from meshgen.hourglass import HourglassConfig as HC

    ptr = HourglassTransformer(HC(**{**cfg, "pointer_dim": 8}))
    ptr.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        ptr.pointer.gate.bias.fill_(60.0)  # a closed gate: the plain model's likelihood
    ptr.save_pretrained(tmp_path / "ptr")
    out = tmp_path / "tl.json"
    assert mod.main(["--checkpoint", str(tiny_checkpoint), "--checkpoint", str(tmp_path / "ptr"), "--group",
                     "boxes=box,prism", "--n", "2", "--max-faces", "20", "--n-points", "64", "--out", str(out),
                     "--markdown"]) == 0
    res = json.loads(out.read_text())["scores"]
    a, b = res[str(tiny_checkpoint)]["boxes"], res[str(tmp_path / "ptr")]["boxes"]
    for kind in ("all", "new_vertex", "repeat_vertex", "first_vertex"):
        assert np.isfinite(a[kind]) and a[kind] == pytest.approx(b[kind], rel=1e-4), kind
    assert a["tokens"]["repeat_vertex"] > 0
    assert "| boxes |" in out.with_suffix(".md").read_text()
