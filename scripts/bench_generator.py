#!/usr/bin/env python
"""Hourglass vs flat decoder at equal decoder parameters: training and sliding-window inference.

Prints one JSON object. Every measurement runs in its own subprocess so peak memory is clean:
``torch.cuda.max_memory_allocated`` on CUDA, the growth of ``ru_maxrss`` (peak resident set) over the
measured part on CPU. Training: one forward + backward on a sequence of 512 / 1,024 faces (4,608 /
9,216 tokens, attention over the whole sequence). Inference: decoding with the rolling cache, one
token at a time, with peak memory and KV-cache size read at 2k, 8k and 32k tokens.

    python scripts/bench_generator.py                 # CPU, small model
    python scripts/bench_generator.py --quick         # smaller sizes, a minute or two
    python scripts/bench_generator.py --device cuda --dim 512 --heads 8 --layers 4,8,12
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshgen.encoder import EncoderConfig  # noqa: E402
from meshgen.hourglass import HourglassConfig, HourglassTransformer  # noqa: E402
from meshgen.modeling import Conditioning, coord_layout  # noqa: E402
from meshgen.transformer import Transformer, matched_transformer_config  # noqa: E402


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


class PeakMemory:
    """Peak memory (MB) above the level at construction: CUDA allocator or process peak RSS."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated() / 2**20
        else:
            self.base = _rss_mb()

    def total(self) -> float:
        """Peak in MB including what was there before (weights, caches, the interpreter on CPU)."""
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        return _rss_mb()

    def peak(self) -> float:
        return self.total() - self.base


def _build(spec: dict, window: int):
    enc = EncoderConfig(dim=spec["dim"], n_heads=spec["heads"], n_latents=spec["latents"], n_layers=1)
    hg = HourglassConfig(
        bits=7, dim=spec["dim"], n_heads=spec["heads"], layers=tuple(spec["layers"]), window=window, encoder=enc
    )
    torch.manual_seed(0)
    model = HourglassTransformer(hg) if spec["kind"] == "hourglass" else Transformer(matched_transformer_config(hg))
    return model.to(spec["device"])


def _cond(batch: int, device) -> Conditioning:
    return Conditioning(torch.rand(batch, 1024, 6, device=device) - 0.5, torch.full((batch,), 500, device=device))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def worker_train(spec: dict) -> dict:
    device = torch.device(spec["device"])
    T, B = spec["tokens"], spec["batch"]
    model = _build(spec, window=T).train()
    vocab = coord_layout(7)
    tokens = torch.randint(0, vocab.n, (B, T + 1), device=device)
    tokens[:, 0] = vocab.bos
    cond = _cond(B, device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    mem = PeakMemory(device)
    times = []
    for _ in range(spec["repeats"] + 1):  # the first step warms up
        _sync(device)
        t0 = time.perf_counter()
        with amp:
            loss = model(tokens[:, :-1], cond=cond, targets=tokens[:, 1:]).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        _sync(device)
        times.append(time.perf_counter() - t0)
    step = min(times[1:])
    return {
        "params_decoder": model.num_params(decoder_only=True),
        "layers": getattr(model.config, "n_layers", None),
        "step_s": round(step, 4),
        "tokens_per_s": round(B * T / step, 1),
        "peak_mem_mb": round(mem.peak(), 1),
    }


@torch.no_grad()
def worker_infer(spec: dict) -> dict:
    device = torch.device(spec["device"])
    B = spec["batch"]
    model = _build(spec, window=spec["window"]).eval()
    vocab = coord_layout(7)
    cache = model.init_cache(_cond(B, device))
    mem = PeakMemory(device)
    cur = torch.full((B, 1), vocab.bos, device=device)
    out, done, t0 = {}, 0, time.perf_counter()
    for target in spec["checkpoints"]:
        while done < target:
            logits = model(cur, cache=cache).logits[:, -1, : vocab.n]  # (B, n) greedy over coordinates
            cur = logits.argmax(-1, keepdim=True)
            done += 1
        _sync(device)
        kv = _cache_bytes(cache) / 2**20
        out[str(target)] = {
            "tokens_per_s": round(B * done / (time.perf_counter() - t0), 1),
            "peak_mem_mb": round(mem.peak(), 1),
            "peak_total_mb": round(mem.total(), 1),
            "kv_cache_mb": round(kv, 3),
        }
    return {"params_decoder": model.num_params(decoder_only=True), "checkpoints": out}


def _cache_bytes(cache) -> int:
    seen, total = set(), 0
    stack = [cache]
    while stack:
        obj = stack.pop()
        if isinstance(obj, torch.Tensor):
            if obj.data_ptr() not in seen:
                seen.add(obj.data_ptr())
                total += obj.numel() * obj.element_size()
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif hasattr(obj, "__dataclass_fields__"):
            stack.extend(getattr(obj, f) for f in obj.__dataclass_fields__ if f != "context")
    return total


def _run(spec: dict) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", default="2,2,4", help="hourglass blocks per level: coordinate,vertex,face")
    ap.add_argument("--latents", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--window", type=int, default=1152, help="inference window in tokens (multiple of 9)")
    ap.add_argument("--train-faces", default="512,1024")
    ap.add_argument("--gen-tokens", default="2048,8192,32768")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--only", choices=["train", "infer"], default=None)
    ap.add_argument("--quick", action="store_true", help="128/256 faces and 512/2k/8k generated tokens")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        spec = json.loads(args.worker)
        if spec.get("threads"):
            torch.set_num_threads(spec["threads"])
        fn = worker_train if spec["mode"] == "train" else worker_infer
        print(json.dumps(fn(spec)))
        return

    faces = [128, 256] if args.quick else [int(x) for x in args.train_faces.split(",")]
    gen = [512, 2048, 8192] if args.quick else [int(x) for x in args.gen_tokens.split(",")]
    base = dict(
        device=args.device,
        dim=args.dim,
        heads=args.heads,
        layers=[int(x) for x in args.layers.split(",")],
        latents=args.latents,
        batch=args.batch,
        threads=args.threads,
        repeats=args.repeats,
    )
    report: dict = {"config": {**base, "window": args.window}, "train": {}, "infer": {}}
    if args.only != "infer":
        for f in faces:
            row = {k: _run({**base, "mode": "train", "kind": k, "tokens": 9 * f}) for k in ("hourglass", "flat")}
            _ratios(row, "tokens_per_s", "peak_mem_mb")
            report["train"][f"{f}_faces_{9 * f}_tokens"] = row
    if args.only != "train":
        for k in ("hourglass", "flat"):
            report["infer"][k] = _run({**base, "mode": "infer", "kind": k, "window": args.window, "checkpoints": gen})
        cps = {k: v.get("checkpoints", {}) for k, v in report["infer"].items()}
        if all(len(v) >= 2 for v in cps.values()):
            a, b = str(gen[-2]), str(gen[-1])
            report["infer"]["memory_growth"] = {
                k: round(v[b]["peak_total_mb"] / v[a]["peak_total_mb"], 3) for k, v in cps.items()
            }
            report["infer"]["speedup"] = round(cps["hourglass"][b]["tokens_per_s"] / cps["flat"][b]["tokens_per_s"], 2)
    print(json.dumps(report, indent=2))


def _ratios(row: dict, speed: str, mem: str) -> None:
    hg, fl = row.get("hourglass", {}), row.get("flat", {})
    if speed in hg and speed in fl:
        row["speedup"] = round(hg[speed] / fl[speed], 2)
        row["memory_ratio"] = round(hg[mem] / max(fl[mem], 1e-9), 3)


if __name__ == "__main__":
    main()
