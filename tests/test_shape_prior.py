"""The class-conditioned next-scale prior over VAT tokens (meshgen.shape_prior, scripts/train_shape_prior.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from meshgen.shape_prior import ShapePrior, ShapePriorConfig, coverage_mmd, decode_shape, load_prior_and_vat
from tokenizers3d.checkpoint import model_digest
from tokenizers3d.errors import ConfigError, MeshInputError
from tokenizers3d.msrq import MSRQConfig
from tokenizers3d.vat import VATConfig, VATModel

REPO = Path(__file__).resolve().parents[1]
TINY_Q = MSRQConfig(dim=4, scales=(1, 2, 4, 8), codebook_size=16)
TINY_VAT = VATConfig(dim=32, heads=2, enc_layers=1, dec_layers=1, n_freqs=4, quantizer=TINY_Q, plane_base=4,
                     plane_res=16, plane_channels=8, mlp_hidden=16)


def tiny_prior(**kw) -> ShapePrior:
    cfg = dict(scales=TINY_Q.scales, codebook_size=16, code_dim=4, families=("box", "cone"), dim=32, heads=2,
               layers=2)
    cfg.update(kw)
    torch.manual_seed(0)
    model = ShapePrior(ShapePriorConfig(**cfg))
    model.set_codebook(torch.randn(cfg["codebook_size"], 4))
    return model


def vat_with_a_surface() -> VATModel:
    """A random tiny VAT whose occupancy field is shifted to cross 0.5 (random weights alone give a near-constant
    field, all inside or all outside), so decoding yields a surface."""
    torch.manual_seed(0)
    vat = VATModel(TINY_VAT).eval()
    head = vat.query_mlp if vat.config.decoder == "cross" else vat.mlp
    last = [m for m in head.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        grid = vat.occupancy_grid(vat.decode_ids([torch.zeros(1, n, dtype=torch.long) for n in TINY_Q.scales]), 16)
        p = float(np.median(grid))
        last.bias -= float(np.log(p / (1 - p)))
    return vat


def _codes(batch: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 16, (batch, n), generator=g) for n in TINY_Q.scales]


def test_config_checks():
    with pytest.raises(ValueError, match="non-decreasing"):
        ShapePriorConfig(scales=(4, 1))
    with pytest.raises(ValueError, match="distinct"):
        ShapePriorConfig(families=("box", "box"))
    with pytest.raises(ConfigError, match="unknown family 'teapot'"):
        tiny_prior().label("teapot")


def test_scale_s_reads_only_coarser_scales():
    model = tiny_prior().eval()
    a = _codes(2, 0)
    b = [c.clone() for c in a]
    b[2] = (b[2] + 1) % 16  # change scale 3 (4 tokens) only
    labels = torch.tensor([0, 1])
    la = model.logits(model.scale_inputs(a, 4, 2), labels)
    lb = model.logits(model.scale_inputs(b, 4, 2), labels)
    first_finer = sum(TINY_Q.scales[:3])  # scales 1-3 are predicted before scale 3's codes are known
    assert torch.allclose(la[:, :first_finer], lb[:, :first_finer], atol=1e-6)
    assert not torch.allclose(la[:, first_finer:], lb[:, first_finer:], atol=1e-4)
    other = model.logits(model.scale_inputs(a, 4, 2), torch.tensor([1, 0]))  # the family matters everywhere
    assert not torch.allclose(other[:, :1], la[:, :1], atol=1e-4)


def test_tiny_prior_memorizes_one_shape_per_family():
    model = tiny_prior()
    target = _codes(2, 1)  # row 0 = box, row 1 = cone
    labels = torch.tensor([0, 1])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(200):
        loss = model(target, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.05
    model.eval()
    for cfg in (1.0, 2.0):
        out = model.sample(torch.tensor([1, 0, 1]), temperature=0.01, cfg_scale=cfg,
                           generator=torch.Generator().manual_seed(0))
        want = torch.cat(target, dim=1)
        assert torch.equal(out.ids, want[[1, 0, 1]])
        assert [c.shape[1] for c in out.codes] == list(TINY_Q.scales)


def test_sampled_ids_always_decode(tmp_path):
    torch.manual_seed(0)
    vat = VATModel(TINY_VAT).eval()
    model = tiny_prior().eval()
    model.set_codebook(vat.quantizer.codebook[0])
    for seed in range(4):
        out = model.sample(torch.tensor([0, 1, 0]), temperature=1.5, top_k=8,
                           generator=torch.Generator().manual_seed(seed))
        assert out.ids.min() >= 0 and out.ids.max() < 16
        for row in range(3):
            mesh = decode_shape(vat, [c[row:row + 1] for c in out.codes], resolution=16)
            assert mesh is None or (mesh.is_watertight and len(mesh.faces) > 0)


def test_save_load_and_the_vat_check(tmp_path):
    torch.manual_seed(0)
    vat_dir = VATModel(TINY_VAT).save_pretrained(tmp_path / "vat")
    digest = model_digest(vat_dir)
    model = tiny_prior(vat_digest=digest)
    model.save_pretrained(tmp_path / "best")
    prior, vat = load_prior_and_vat(tmp_path / "best")  # finds ../vat
    assert torch.equal(prior.codebook, model.codebook) and prior.config == model.config
    tiny_prior(vat_digest="0" * 16).save_pretrained(tmp_path / "other")
    with pytest.raises(MeshInputError, match="not the ones the prior was trained on"):
        load_prior_and_vat(tmp_path / "other")
    tiny_prior(codebook_size=32).save_pretrained(tmp_path / "wide")
    with pytest.raises(MeshInputError, match="do not match"):
        load_prior_and_vat(tmp_path / "wide", tmp_path / "vat")
    with pytest.raises(MeshInputError, match="no VAT model here"):
        load_prior_and_vat(tmp_path / "best", tmp_path / "missing")


def test_coverage_and_mmd():
    d = np.array([[0.1, 0.5, 0.9],
                  [0.2, 0.4, 0.8],
                  [0.3, 0.6, 0.05]])  # samples x references
    r = coverage_mmd(d)
    assert r["cov"] == pytest.approx(2 / 3)  # samples' nearest references: 0, 0, 2
    assert r["mmd"] == pytest.approx((0.1 + 0.4 + 0.05) / 3)
    with pytest.raises(ValueError):
        coverage_mmd(np.zeros(3))


def test_train_script_resumes_and_cli(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "scripts"))
    import train_shape_prior as T

    vat_dir = vat_with_a_surface().save_pretrained(tmp_path / "vat")
    out = tmp_path / "prior"
    args = ["--vat", str(vat_dir), "--out", str(out), "--families", "box", "cylinder", "--shapes", "3",
            "--val-shapes", "1", "--steps", "30", "--batch", "4", "--val-every", "10", "--ckpt-every", "10",
            "--model", json.dumps({"dim": 32, "heads": 2, "layers": 1})]
    assert T.main(args) == 0
    tokens = sorted(p.name for p in (out / "tokens").iterdir())
    assert len(tokens) == 2 and all(".part" not in t for t in tokens)
    with np.load(out / "tokens" / tokens[0]) as z:
        assert z["ids"].shape[1] == sum(TINY_Q.scales) and z["ids"].max() < 16
    log = (out / "log.csv").read_text().splitlines()
    assert log[0].startswith("step") and log[-1].startswith("30,")
    assert T.main(args) == 0  # done: nothing more, nothing repeated
    assert (out / "log.csv").read_text().splitlines() == log
    prior, _ = load_prior_and_vat(out / "best")
    assert prior.config.families == ("box", "cylinder") and prior.config.vat_digest == model_digest(vat_dir)
    assert T.main(args[:-2] + ["--model", json.dumps({"dim": 64, "heads": 2, "layers": 1})]) != 0  # another model

    import eval_shape_prior as E

    args = ["--prior", out / "best", "--samples", "3", "--refs", "2", "--points", "256", "--resolution", "16",
            "--out", tmp_path / "eval.json", "--markdown-out", tmp_path / "eval.md", "--grid", tmp_path / "grid.png"]
    assert E.main([str(a) for a in args]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    for fam in ("box", "cylinder"):
        r = report["families"][fam]
        assert 0 <= r["prior"]["cov"] <= 1 and r["prior"]["decoded"] > 0 and r["prior"]["mmd"] > 0
        assert set(r) >= {"prior", "null", "reconstruction"}
    assert "| mean |" in (tmp_path / "eval.md").read_text() and (tmp_path / "grid.png").stat().st_size > 0
    assert E.main(["--prior", str(out / "best"), "--families", "teapot"]) == 2

    from meshgen.cli import main

    capsys.readouterr()

    def cli(*argv) -> tuple[int, str]:
        try:
            main([str(a) for a in argv])
        except SystemExit as exc:
            return int(exc.code or 0), capsys.readouterr().err
        return 0, capsys.readouterr().out

    code, err = cli("generate", "--family", "teapot", "--prior", out / "best", "-o", tmp_path / "t.obj")
    assert code == 2 and "unknown family 'teapot'" in err and len(err.strip().splitlines()) == 1
    code, err = cli("generate", vat_dir / "config.json", "--family", "box", "-o", tmp_path / "t.obj")
    assert code == 2 and "not both" in err
    code, err = cli("generate", "-o", tmp_path / "t.obj")
    assert code == 2 and "--family" in err
    code, err = cli("generate", "--family", "box", "--prior", out / "best", "-o", tmp_path / "t.xyz")
    assert code == 2 and "t.xyz" in err and not (tmp_path / "t.xyz").exists()
    code, text = cli("generate", "--family", "box", "--prior", out / "best", "-o", tmp_path / "t.obj",
                     "--resolution", "16")
    assert code == 0, text
    res = json.loads(text.strip().splitlines()[-1])
    assert res["family"] == "box" and res["faces"] > 0 and not res["artist"]
    assert trimesh.load(tmp_path / "t.obj", process=False).is_watertight and (tmp_path / "t.png").is_file()
    blank = tmp_path / "blank"  # a field with no surface: one clear line, exit 2, no file
    full = VATModel(TINY_VAT)
    with torch.no_grad():
        full.mlp[-1].bias -= 20.0  # outside everywhere
    full.save_pretrained(blank / "vat")
    tiny_prior(vat_digest="").save_pretrained(blank / "best")  # "": no digest to check
    code, err = cli("generate", "--family", "box", "--prior", blank / "best", "-o", tmp_path / "u.obj",
                    "--resolution", "16")
    assert code == 2 and "4 samples of 'box' decoded to no surface" in err and not (tmp_path / "u.obj").exists()
    code, err = cli("generate", "--family", "box", "--prior", out / "best", "--vat", blank / "vat", "-o",
                    tmp_path / "u.obj")
    assert code == 2 and "not the ones the prior was trained on" in err
