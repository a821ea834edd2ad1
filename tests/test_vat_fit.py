"""Encode-time fitting of VAT ids (tokenizers3d.vat_fit) and its place in `meshgen compress`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import trimesh

from tokenizers3d.msrq import MSRQConfig
from tokenizers3d.vat import VATConfig, VATModel
from tokenizers3d.vat_fit import FitSettings, fit_codes, inside_agreement

TINY_Q = MSRQConfig(dim=4, scales=(1, 2, 4, 8), codebook_size=16)
TINY = VATConfig(dim=32, heads=2, enc_layers=1, dec_layers=1, n_freqs=4, quantizer=TINY_Q, plane_base=4,
                 plane_res=16, plane_channels=8, mlp_hidden=16, decoder="cross")
FAST = FitSettings(steps=40, lr=0.05, batch=1024, n_uniform=2048, n_near=2048, n_check=1024, check_every=10)


def _unit_box():
    return trimesh.creation.box(extents=(0.8, 0.5, 0.3))


def _mean(model, mesh):
    from tokenizers3d.sample import sample_surface

    cloud = sample_surface(mesh, 256, seed=0)
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)[None]  # noqa: E731
    with torch.no_grad():
        return model.encode_gaussian(t(cloud.points), t(cloud.normals))[0]


@pytest.fixture()
def model():
    torch.manual_seed(0)
    m = VATModel(TINY).eval()
    with torch.no_grad():  # a codebook spread like the latents, as after training
        m.quantizer.codebook[0].normal_()
        m.quantizer.initialized.fill_(True)
    return m


def test_inside_agreement_tells_closed_from_inward_wound():
    box = _unit_box()
    assert inside_agreement(box.vertices, box.faces) > 0.95
    assert inside_agreement(box.vertices, box.faces[:, ::-1]) < 0.1


def test_fit_lowers_the_held_out_loss_and_leaves_the_model_alone(model, one_thread):
    box = _unit_box()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mean = _mean(model, box)
    codes, report = fit_codes(model, box.vertices, box.faces, mean, FAST)
    assert report.skipped is None and report.agreement > 0.95
    assert report.check_after < report.check_before  # a random decoder is easy to fit a little better
    assert report.best_step > 0
    assert [c.shape for c in codes] == [(1, n) for n in TINY_Q.scales]
    assert all(int(c.min()) >= 0 and int(c.max()) < TINY_Q.codebook_size for c in codes)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training and all(p.requires_grad for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(codes, model.codes_of(mean), strict=True))


def test_fit_is_deterministic_and_skips_an_unreliable_inside(model, one_thread):
    box = _unit_box()
    mean = _mean(model, box)
    a, _ = fit_codes(model, box.vertices, box.faces, mean, FAST)
    b, _ = fit_codes(model, box.vertices, box.faces, mean, FAST)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    codes, report = fit_codes(model, box.vertices, box.faces[:, ::-1], mean, FAST)
    assert report.skipped is not None and "not reliable" in report.skipped
    assert all(torch.equal(x, y) for x, y in zip(codes, model.codes_of(mean), strict=True))
    soup = np.random.default_rng(0).uniform(-0.4, 0.4, (3 * 600, 3))
    codes, report = fit_codes(model, soup, np.arange(len(soup)).reshape(-1, 3), mean, FAST)
    assert "600 separate pieces" in report.skipped
    assert all(torch.equal(x, y) for x, y in zip(codes, model.codes_of(mean), strict=True))


def test_compress_command_fits_by_default_and_refuses_negative_steps(tmp_path, model):
    model.save_pretrained(tmp_path / "vat")
    box = tmp_path / "box.ply"
    trimesh.creation.box(extents=(2.0, 1.0, 0.5)).export(box)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "meshgen.cli", "compress", str(box), "--checkpoint",
                               str(tmp_path / "vat"), *map(str, args)], capture_output=True, text=True)

    done = cli("-o", tmp_path / "a.vat", "--fit-steps", "20")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["fit"]["skipped"] is None and info["tokens"] == TINY_Q.n_tokens
    fast = cli("-o", tmp_path / "b.vat", "--fit-steps", "0")
    assert fast.returncode == 0 and "fit" not in json.loads(fast.stdout)
    bad = cli("-o", tmp_path / "c.vat", "--fit-steps", "-1")
    assert bad.returncode == 2 and "--fit-steps" in bad.stderr and not (tmp_path / "c.vat").exists()
    assert "Traceback" not in bad.stderr
