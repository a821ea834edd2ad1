#!/usr/bin/env python
"""Train the generator on CUDA: a one-minute smoke test, then DDP training with torchrun.

    python scripts/train_gpu.py --config configs/hourglass_gpu.yaml [--gpus N] [--smoke-only]

Smoke test (printed as JSON, and the run stops before training if any check fails):

1. CUDA is visible, and bf16 is supported;
2. xformers attention equals PyTorch SDPA on the GPU (local causal window, cross-attention) in bf16;
3. the data loader (``data.num_workers`` processes making fresh procedural examples) is timed for a few
   seconds against the model's training step, so a loader that cannot keep up is reported before hours
   are spent (examples per second made vs needed);
4. three bf16 training steps of the configured model on real batches give a finite loss, and the peak
   memory is reported.

Then ``torchrun --nproc_per_node N scripts/train_generator.py --config CONFIG`` runs the training itself (NCCL,
bf16 autocast, resumable from ``train.out_dir/last`` like every run).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def check_attention() -> dict:
    from meshgen.attention import attend

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 300, 8, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    out = {}
    for name, kw in (("local_causal", dict(causal=True, window=128)), ("cross", dict(causal=False))):
        a = attend(q, k, v, backend="xformers", **kw).float()
        b = attend(q, k, v, backend="sdpa", **kw).float()
        out[name] = float((a - b).abs().max())
    out["ok"] = all(v < 0.05 for v in out.values())
    return out


def check_loader_and_steps(cfg, seconds: float = 8.0) -> dict:
    from torch.utils.data import DataLoader

    from meshgen.data import AugmentConfig, ProceduralStream, collate_examples
    from meshgen.registry import build_model
    from meshgen.train import forward_loss

    dc, tc = cfg.data, cfg.train
    model = build_model(cfg.model)  # resolves model.args.tokenizer (vqvae: the face VQ-VAE's digest and layout)
    stream = ProceduralStream(bits=dc.bits, window=dc.window, n_points=dc.n_points, max_faces=dc.max_faces,
                              seed=dc.stream_seed, augment=None if dc.augment is None else AugmentConfig(**dc.augment),
                              curriculum=None, drop_points=dc.drop_points, batch_size=tc.batch_size, world_size=1, rank=0,
                              tokenizer=model.config.tokenizer)
    loader = DataLoader(stream, batch_size=tc.batch_size, num_workers=dc.num_workers, prefetch_factor=4,
                        collate_fn=functools.partial(collate_examples, pad_id=stream.pad_id))
    it = iter(loader)
    next(it)  # workers started
    t0, n = time.time(), 0
    while time.time() - t0 < seconds:
        next(it)
        n += 1
    batches_per_s = n / (time.time() - t0)

    model = model.cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    torch.cuda.reset_peak_memory_stats()
    losses, times = [], []
    for _ in range(3):
        batch = next(it).to("cuda")
        torch.cuda.synchronize()
        t = time.time()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = forward_loss(model, batch, stream.pad_id)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        times.append(time.time() - t)
        losses.append(float(loss))
    step_s = min(times[1:])
    return {"loader_batches_per_s": round(batches_per_s, 2), "steps_per_s": round(1 / step_s, 2),
            "loader_keeps_up": batches_per_s >= 1 / step_s, "losses": losses,
            "loss_finite": all(map(lambda x: x == x and abs(x) < 1e4, losses)),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "params_m": round(model.num_params() / 1e6, 1)}


def smoke_test(cfg) -> dict:
    report = {"cuda": torch.cuda.is_available()}
    if not report["cuda"]:
        report["ok"] = False
        return report
    report["device"] = torch.cuda.get_device_name(0)
    report["bf16"] = torch.cuda.is_bf16_supported()
    report["attention"] = check_attention()
    report["train"] = check_loader_and_steps(cfg)
    report["ok"] = bool(report["bf16"] and report["attention"]["ok"] and report["train"]["loss_finite"])
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "hourglass_gpu.yaml"))
    p.add_argument("--gpus", type=int, default=0, help="processes (default: every visible GPU)")
    p.add_argument("--smoke-only", action="store_true", help="run the smoke test and stop")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (as train_generator.py)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "scripts"))
    from train_generator import parse_overrides

    from meshgen.config import load_config

    cfg = load_config(args.config, parse_overrides(args.set))
    report = smoke_test(cfg)
    print(json.dumps({"smoke_test": report}, indent=2), flush=True)
    if not report["ok"]:
        print("error: the CUDA smoke test failed; not training", file=sys.stderr)
        return 2
    if args.smoke_only:
        return 0
    gpus = args.gpus or torch.cuda.device_count()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
           str(ROOT / "scripts" / "train_generator.py"), "--config", args.config, "--no-progress", "--set", *args.set]
    print(" ".join(cmd), flush=True)
    return subprocess.call(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})


if __name__ == "__main__":
    sys.exit(main())
