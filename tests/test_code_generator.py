"""The generator over learned face codes (issue 10): layout, hourglass / flat decoders over ``vqvae`` ids, the
code constraint, the procedural stream, training, and ``meshgen generate`` with such a checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import trimesh
from conftest import assert_cached_equals_full, assert_causal
from typer.testing import CliRunner

from meshgen.encoder import EncoderConfig
from meshgen.generate import generate, sample_sequences, sample_training_window
from meshgen.hourglass import HourglassConfig, HourglassTransformer
from meshgen.modeling import Conditioning, TokenLayout, sequence_tokenizer, token_layout, vqvae_tokenizer_config
from meshgen.sampling import CodeConstraint
from meshgen.transformer import Transformer, TransformerConfig

pytestmark = pytest.mark.usefixtures("one_thread")

# a code layout without a checkpoint behind it: enough for the networks (ids only)
FAKE = {"name": "vqvae", "bits": 7, "checkpoint": None, "checkpoint_sha256": "0" * 16, "codebook_size": 64,
        "slots": 3, "depth": 2}
ENC = EncoderConfig(dim=16, n_heads=2, n_latents=4, n_layers=1, n_freqs=2)


def _model(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "hourglass":
        return HourglassTransformer(HourglassConfig(dim=32, n_heads=2, layers=(2, 2, 2), window=24, cross_every=2,
                                                    encoder=ENC, tokenizer=FAKE)).eval()
    return Transformer(TransformerConfig(dim=32, n_heads=2, n_layers=3, window=24, cross_every=2, encoder=ENC,
                                         tokenizer=FAKE)).eval()


def _cond(batch: int = 2) -> Conditioning:
    g = torch.Generator().manual_seed(0)
    return Conditioning(torch.rand(batch, 8, 6, generator=g) - 0.5, torch.tensor([12, 40][:batch]))


def _tokens(batch: int, length: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    tok = torch.randint(0, 64, (batch, length), generator=g)
    tok[:, 0] = 64 + 1  # BOS
    return tok


def test_layouts():
    coords = token_layout(HourglassConfig())
    assert (coords.name, coords.n, coords.shorten, coords.face_tokens, coords.eos) == ("coords", 128, (3, 3), 9, 130)
    codes = token_layout(HourglassConfig(tokenizer=FAKE, encoder=ENC))
    assert (codes.n, codes.shorten, codes.face_tokens, codes.pad, codes.bos, codes.size) == (64, (2, 3), 6, 64, 65, 67)
    assert token_layout(HourglassConfig(layers=(1, 1), tokenizer={**FAKE, "depth": 1})).shorten == (3,)
    with pytest.raises(ValueError, match="group only 1 times"):
        HourglassConfig(layers=(1, 1, 1), tokenizer={**FAKE, "depth": 1})
    with pytest.raises(ValueError, match="multiple of 6"):
        HourglassConfig(window=27, tokenizer=FAKE)
    with pytest.raises(ValueError, match="needs 'fourier'"):
        HourglassTransformer(HourglassConfig(dim=32, n_heads=2, layers=(1, 1, 1), window=24, tokenizer=FAKE,
                                             encoder=EncoderConfig(dim=16, n_heads=2, point_embedding="grid")))
    with pytest.raises(ValueError, match="lacks"):
        token_layout(HourglassConfig(tokenizer={"name": "vqvae"}))


# corner boundaries (1|2, 3|4), face boundaries (6|7, 12|13), mid-face, far positions
CHANGED = [1, 2, 3, 4, 5, 6, 7, 12, 13, 20, 30]


@pytest.mark.parametrize("kind", ["hourglass", "flat"])
def test_causality_over_codes(kind):
    model, cond = _model(kind), _cond()
    tok = _tokens(2, 37)
    assert model(tok, cond=cond).logits.shape == (2, 37, 67)
    assert_causal(model, cond, tok, CHANGED, n_values=64, shift=17)
    with pytest.raises(ValueError, match="multiple of 6"):
        model(tok, cond=cond, start_pos=9)


@pytest.mark.parametrize("kind", ["hourglass", "flat"])
def test_cached_decoding_over_codes_equals_full_recompute(kind):
    """Longer than 2 windows (24 codes): the rolling caches of the (2, 3) hourglass reproduce the windowed forward,
    also with a chunked prefill crossing corner and face boundaries."""
    assert_cached_equals_full(_model(kind), _cond(), _tokens(2, 61), (5, 1, 2, 7, 13, 3, 30))


def test_code_constraint_and_sampling_loop():
    layout = TokenLayout("vqvae", 64, (2, 3))
    c = CodeConstraint(layout, max_faces=2)
    assert not c.allowed()[layout.eos] and c.allowed()[:64].all()  # no EOS before a face
    for t in range(6):
        c.push(t)
    a = c.allowed()
    assert a[layout.eos] and a[:64].all() and not a[layout.pad] and not a[layout.bos]
    c.push(7)
    assert not c.allowed()[layout.eos]  # mid-face
    for t in range(5):
        c.push(t)
    a = c.allowed()
    assert c.n_faces == 2 and a[layout.eos] and not a[:64].any()  # budget used: only EOS

    def step(tokens):  # a "model" that wants EOS most and BOS / PAD next
        logits = torch.zeros(tokens.shape[0], layout.size)
        logits[:, layout.eos] = 5.0
        logits[:, layout.bos] = logits[:, layout.pad] = 4.0
        return logits

    res = sample_sequences(step, batch=3, bits=7, max_faces=4, layout=layout, generator=torch.Generator().manual_seed(0))
    for ids, n, why in zip(res.ids, res.n_faces, res.stopped_reason, strict=True):
        body = ids[1:-1]
        assert ids[0] == layout.bos and ids[-1] == layout.eos and why == "eos"
        assert len(body) == 6 * n and n >= 1 and (body < 64).all()


def test_generation_from_a_code_model_refuses_point_guidance():
    from meshgen.guidance import GuidanceConfig

    model = _model("hourglass")
    res = generate(model, _cond(1), max_faces=3, seed=0)
    assert len(res.ids[0]) == 2 + 6 * res.n_faces[0] and res.ids[0][-1] == 66
    with pytest.raises(ValueError, match="coords tokens"):
        generate(model, _cond(1), max_faces=3, seed=0, guidance=GuidanceConfig())


def test_training_windows_align_to_code_faces():
    rng = np.random.default_rng(0)
    ids = np.arange(2 + 6 * 20)
    ends = set()
    for _ in range(60):
        w = sample_training_window(ids, 24, rng, face_tokens=6)
        assert w.start_pos % 6 == 0 and len(w.tokens) <= 25 and np.array_equal(w.tokens, ids[w.start_pos:][:25])
        ends.add(int(w.tokens[-1]))
    assert ids[-1] in ends  # the last window reaches EOS, so EOS is a target
    with pytest.raises(ValueError, match="multiple of 6"):
        sample_training_window(ids, 27, rng, face_tokens=6)


# ---- with the bundled face VQ-VAE --------------------------------------------------------------------
@pytest.fixture(scope="module")
def vq_config():
    return vqvae_tokenizer_config()


def test_procedural_stream_of_codes(vq_config):
    from meshgen.data import FIRST_VERTEX, ProceduralStream

    stream = ProceduralStream(bits=7, window=360, n_points=64, max_faces=60, seed=3, tokenizer=vq_config)
    tok = stream.tokenizer
    assert tok.name == "vqvae" and stream.pad_id == 2048 and stream.face_tokens == 6
    items = stream.take(4)
    for i, it in enumerate(items):
        ids = it["tokens"].numpy()
        assert it["start"] % 6 == 0
        if i % 2 == 0:  # windows at BOS: the whole sequence (all fit) decodes to as many faces as the codes say
            assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and (len(ids) - 2) % 6 == 0
            qm, report = tok.decode_quantized(ids, strict=True)
            assert report.n_faces == (len(ids) - 2) // 6 and qm.n_faces > 0
            assert list(it["kinds"][:2].numpy()) == [FIRST_VERTEX, FIRST_VERTEX] and not it["kinds"][2:].any()
    with pytest.raises(ValueError, match="bits"):
        ProceduralStream(bits=8, window=48, n_points=64, max_faces=60, tokenizer=vq_config)


def _train_cfg(tmp_path, vq, **train):
    from meshgen.config import DataConfig, ExperimentConfig, TrainConfig

    model = {"name": "hourglass", "args": {"dim": 32, "n_heads": 2, "layers": [1, 1, 1], "window": 36,
                                           "cross_every": 1, "tokenizer": vq,
                                           "encoder": {"dim": 32, "n_heads": 2, "n_latents": 8, "n_layers": 1}}}
    data = DataConfig(source="procedural", window=36, n_points=128, max_faces=40, num_workers=0, val_examples=4,
                      families=["box", "prism"])
    args = dict(out_dir=str(tmp_path / "run"), steps=3, batch_size=2, lr=1e-3, warmup_steps=1, log_every=1,
                val_every=2, ckpt_every=2, threads=1)
    args.update(train)
    return ExperimentConfig(model=model, data=data, train=TrainConfig(**args))


def _main_exit(capsys, *args) -> tuple[int, str]:
    from meshgen.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return exc.value.code, capsys.readouterr().err


def test_train_a_code_model_then_generate_from_the_cli(tmp_path, vq_config, capsys):
    from meshgen.cli import app
    from meshgen.train import train

    res = train(_train_cfg(tmp_path, "vqvae"), progress=False)
    assert res["step"] == 3
    best = tmp_path / "run" / "best"
    saved = json.loads((best / "config.json").read_text())["config"]["tokenizer"]
    assert saved == vq_config  # the digest of the face VQ-VAE the codes belong to is kept with the model
    assert sequence_tokenizer(HourglassConfig(tokenizer=saved, encoder=ENC)).digest == vq_config["checkpoint_sha256"]

    inp = tmp_path / "box.obj"
    trimesh.creation.box(extents=(1.0, 0.6, 0.4)).export(inp)
    runner = CliRunner()
    out = tmp_path / "gen.obj"
    r = runner.invoke(app, ["generate", str(inp), "-o", str(out), "--checkpoint", str(best), "--max-faces", "6",
                            "--samples", "2", "--no-refine", "--no-preview", "--temperature", "1.0"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output.strip().splitlines()[-1])
    assert summary["tokenizer"] == "vqvae" and 1 <= summary["faces"] <= 6 and "coverage" not in summary
    assert out.exists()
    for args, match in ((["--guidance"], "point guidance works on coords tokens"),
                        (["--tokenizer", "coords"], "samples vqvae tokens, not coords")):
        code, err = _main_exit(capsys, "generate", inp, "-o", tmp_path / "x.obj", "--checkpoint", best,
                               "--no-preview", *args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and match in lines[0], err
        assert not (tmp_path / "x.obj").exists()


def test_tokenizer_option_without_a_bundled_code_generator(tmp_path, monkeypatch, capsys):
    import meshgen.pipeline as pipeline

    monkeypatch.setitem(pipeline.TOKENIZER_CHECKPOINTS, "vqvae", tmp_path / "none")
    inp = tmp_path / "box.obj"
    trimesh.creation.box().export(inp)
    for name, match in (("vqvae", "no bundled generator over vqvae tokens"), ("blocks", "--tokenizer must be one of")):
        code, err = _main_exit(capsys, "generate", inp, "-o", tmp_path / "x.obj", "--tokenizer", name)
        assert code == 2 and match in err, err


def test_training_on_shards_of_codes_and_refusing_another_vocabulary(tmp_path, vq_config):
    from meshgen.config import DataConfig
    from meshgen.train import Trainer, train
    from tokenizers3d.batch import batch_tokenize
    from tokenizers3d.errors import MeshInputError

    src = tmp_path / "meshes"
    src.mkdir()
    for i in range(3):
        trimesh.creation.box(extents=(1.0, 0.5 + 0.1 * i, 0.3)).export(src / f"b{i}.obj")
    cfg = _train_cfg(tmp_path, "vqvae", steps=2)
    for name, conf in (("coords", {"bits": 7}), ("vqvae", {})):
        batch_tokenize(src, tmp_path / name, tokenizer=name, tokenizer_config=conf, progress=False)

    def on(shards):
        return type(cfg)(model=cfg.model, train=cfg.train, data=DataConfig(
            source="shards", train=str(shards), val=str(shards), window=36, n_points=128, num_workers=0,
            shuffle_buffer=4))
    with pytest.raises(MeshInputError, match="shards hold coords tokens"):
        Trainer(on(tmp_path / "coords"), progress=False)
    assert train(on(tmp_path / "vqvae"), progress=False)["step"] == 2  # vqvae shards: codes + lossy decoded points


def test_time_budget_ends_a_run_like_its_last_step(tmp_path):
    from meshgen.train import train

    res = train(_train_cfg(tmp_path, None, steps=50, max_minutes=1e-9), progress=False)
    assert res["step"] == 1  # the first step already used the budget: validated, saved, stopped
    assert (tmp_path / "run" / "last" / "trainer_state.pt").exists() and (tmp_path / "run" / "best").exists()
    again = train(_train_cfg(tmp_path, None, steps=50, max_minutes=1e-9), progress=False)
    assert again["step"] == 1  # resumed past its budget: nothing more


def test_a_tiny_code_model_memorizes_one_mesh(vq_config):
    """The whole path learns: a small hourglass over the face VQ-VAE's codes, trained on one box, samples its codes
    back greedily, and the face VQ-VAE decodes them to the same mesh as the box's own codes."""
    from tokenizers3d.mesh import prepare

    torch.manual_seed(0)
    model = HourglassTransformer(HourglassConfig(dim=64, n_heads=2, layers=(1, 1, 1), window=96, cross_every=1,
                                                 encoder=EncoderConfig(dim=32, n_heads=2, n_latents=4, n_layers=1),
                                                 tokenizer=vq_config))
    tok = sequence_tokenizer(model.config)
    qm, _ = prepare(trimesh.creation.box(extents=(1.0, 0.6, 0.4)), 7)
    ids = torch.as_tensor(tok.encode_quantized(qm))[None]  # (1, 2 + 72)
    cond = Conditioning(torch.zeros(1, 8, 6), torch.tensor([12]))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(120):
        loss = model(ids[:, :-1], cond=cond, targets=ids[:, 1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    res = generate(model, cond, max_faces=20, temperature=0.0)
    assert np.array_equal(res.ids[0], ids[0].numpy()), f"final loss {loss.item():.3f}"
    assert tok.decode_quantized(res.ids[0])[0].n_faces == tok.decode_quantized(ids[0].numpy())[0].n_faces


def test_invalid_rate_of_code_sequences():
    from meshgen.generate import measure_invalid_rate
    from meshgen.sampling import validate_codes

    layout = TokenLayout("vqvae", 64, (2, 3))
    assert validate_codes([65, *range(6), 66], layout) is None
    assert "multiple of 6" in validate_codes([65, *range(5), 66], layout)
    assert "special token" in validate_codes([65, 1, 2, 3, 64, 5, 6, 66], layout)
    assert "no faces" in validate_codes([65, 66], layout)
    rates = measure_invalid_rate(_model("hourglass"), _cond(2), max_faces=2, seed=0)
    assert rates["constrained"] == 0.0 and rates["n"] == 2
