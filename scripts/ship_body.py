#!/usr/bin/env python
"""Install the body-recovery weights (pose tokenizer + HMR model) under assets/checkpoints with model cards.

    python scripts/eval_body.py --checkpoint pose=runs/hmr_pose/best nopose=runs/hmr_nopose/best \\
        --out runs/eval_body.json --markdown-out runs/eval_body.md --grid docs/img/body_grid.png
    python scripts/ship_body.py --tokenizer-run runs/pose_tokenizer --hmr-run runs/hmr_pose \\
        --ablation-run runs/hmr_nopose --eval runs/eval_body.json

Each card states the data, the steps, wall time and machine (``log.csv``, ``sessions.jsonl``), the validation
figures of the shipped weights (``best/val.json``), the held-out table (``scripts/eval_body.py``'s JSON, which must
have evaluated these weights) and the commands that reproduce them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from meshgen.body import DEFAULT_CHECKPOINT as HMR_DEST
from tokenizers3d.checkpoint import RunFolder, install_model_dir, model_digest, shippable_weights
from tokenizers3d.errors import MeshInputError

TOKENIZER_DEST = HMR_DEST.parent / "pose-tokenizer"
MAX_BYTES = 20 * 1024 * 1024


def _fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def _data_sizes(root: str) -> dict:
    """{split: n} of a body dataset's index."""
    index = json.loads((Path(root) / "index.json").read_text())
    return {k: v["n"] for k, v in index["splits"].items()}


def _run_facts(run: Path) -> dict:
    folder = RunFolder(run)
    rows = folder.log_rows()
    sessions = [json.loads(x) for x in (run / "sessions.jsonl").read_text().splitlines() if x.strip()]
    val = json.loads((run / "best" / "val.json").read_text())
    cfg = json.loads((run / "train_config.json").read_text())
    return {"steps": rows[-1]["step"], "hours": float(rows[-1]["elapsed_s"]) / 3600, "machines": folder.machines(),
            "val": val, "cfg": cfg, "sessions": sessions}


def _stages(run: Path) -> list[tuple[Path, dict]]:
    """``[(run dir, facts)]`` from the first training stage to ``run``, following ``--init-from``. The chain stops at
    a model directory that is not a run's (the bundled weights: their card tells the earlier stages)."""
    chain, seen = [], set()
    while run is not None and run.resolve() not in seen:
        seen.add(run.resolve())
        facts = _run_facts(run)
        chain.append((run, facts))
        init = facts["cfg"].get("init_from")
        run = Path(init).parent if init and (Path(init).parent / "train_config.json").exists() else None
    return chain[::-1]


def card_history(card: str) -> tuple[list[str], list[str]]:
    """The earlier stages a bundled card records: ``(stage texts, train_hmr commands of the pose model)``, so that a
    run warm-started from the bundled weights keeps the whole history in its own card."""
    m = re.search(r"^\* Stages: (.*?); the last stage is this run\.", card, re.M | re.S)
    stages = re.split(r"; (?=\d+ \()", " ".join(m.group(1).split())) if m else []
    stages = [re.sub(r"^\d+ \(", "", x) for x in stages]
    block = card.split("## Reproduce", 1)[-1]
    cmds = re.findall(r"^python scripts/train_hmr\.py.*?(?<!\\)$", block, re.M | re.S)
    return stages, [c for c in cmds if "--no-pose-tokens" not in c]


def drop_chain_stages(stages: list[str], cmds: list[str], chain: list) -> tuple[list[str], list[str]]:
    """The bundled card's stages and commands without those of the runs in ``chain`` (a bundled card made from an
    earlier run of the same chain already lists them): each stage once."""
    runs = {str(d) for d in chain}
    return ([t for t in stages if re.match(r"[^,)]+", t).group(0) not in runs],
            [c for c in cmds if _out_of(c) not in runs])


def _out_of(cmd: str) -> str:
    return re.search(r"--out (\S+)", cmd).group(1)


def _flag_text(cfg: dict) -> str:
    parts = []
    if cfg.get("pose_teacher"):
        parts.append(f"pose teacher {cfg['pose_teacher']} ({cfg.get('teacher_noise', 2.0)} px jitter)")
    if cfg.get("image_drop"):
        parts.append(f"image-token drop {cfg['image_drop']}")
    if cfg.get("pose_only_batch"):
        parts.append(f"{cfg['pose_only_batch']} pose-only labels a step (weight {cfg.get('pose_only_weight', 1.0)})")
    return (", " + ", ".join(parts)) if parts else ""


def _of_train(facts: dict) -> str:
    """' (of N train images)' as the stage's first session recorded it, or ''."""
    n = facts["sessions"][0].get("train_images") if facts.get("sessions") else None
    return f" (of {n:,} train images)" if n else ""


def _train_cmd(run: Path, cfg: dict) -> str:
    """The ``train_hmr.py`` command of one stage, from its ``train_config.json``."""
    cmd = (f"python scripts/train_hmr.py --data {cfg['data']} --tokenizer {cfg['tokenizer']} --out {run} "
           f"--steps {cfg['steps']} \\\n    --batch {cfg['batch']} --lr {cfg['lr']} --val-every {cfg['val_every']} "
           f"--threads {cfg['threads']}")
    if cfg.get("no_pose_tokens"):
        cmd += " --no-pose-tokens"
    if cfg.get("init_from"):
        cmd += f" --init-from {cfg['init_from']}"
    if cfg.get("pose_teacher"):
        cmd += f" --pose-teacher {cfg['pose_teacher']} --teacher-noise {cfg.get('teacher_noise', 2.0)}"
    if cfg.get("image_drop"):
        cmd += f" --image-drop {cfg['image_drop']}"
    if cfg.get("pose_only_batch"):
        cmd += f" --pose-only-batch {cfg['pose_only_batch']} --pose-only-weight {cfg.get('pose_only_weight', 1.0)}"
    if cfg.get("keypoint_net"):
        cmd += f" --keypoint-net {cfg['keypoint_net']}"
    return cmd


def estimator_text(chain: list[tuple[Path, dict]]) -> tuple[str, str]:
    """(card line, reproducing command) of the 2D pose estimator the last stage installed (``--keypoint-net``), or
    empty strings."""
    path = chain[-1][1]["cfg"].get("keypoint_net") if chain else None
    if not path or not (Path(path).parent / "train_config.json").exists():
        return "", ""
    run = Path(path).parent
    f = _run_facts(run)
    v, c = f["val"], f["cfg"]
    n = _data_sizes(c["data"])
    later = [x["from_step"] for x in f["sessions"][1:] if x.get("from_step")]
    resumed = (" (resumed at step " + ", ".join(f"{x:,}" for x in later) + " with a longer schedule: a warm restart of "
               "the cosine; the first part's command had a shorter --steps)") if later else ""
    line = (f"* 2D pose estimator (`meshgen/keypoints.py`, `scripts/train_keypoints.py`, {run}): a separate CNN with "
            f"a self-attention block and heatmaps at 1/4 resolution, trained from scratch on the {c.get('max_train') or n['train']:,} "
            f"train images with flips and occluders pasted on {c['paste'] * 100:.0f} % of them; {f['steps']} steps of "
            f"{c['batch']}, lr {c['lr']}{resumed}, {f['hours'] * 60:.1f} min on {f['machines']}. Best validation (step "
            f"{v['step']}): {v['px_clean']:.2f} px clean, {v['px_occluded']:.2f} px occluded ({v['px_hidden']:.2f} px on "
            f"hidden joints). Frozen inside the model: its keypoints, with the probability of lying in the image as "
            f"confidence, are what the pose tokens read (the keypoint head still trains the CNN). The ablation has no "
            f"pose tokens and so no use for it: the estimator's training is compute the pose model has on top of the "
            f"ablation's.")
    cmd = (f"python scripts/train_keypoints.py --data {c['data']} --out {run} --steps {c['steps']} --batch {c['batch']} "
           f"--lr {c['lr']} --paste {c['paste']} --threads {c['threads']}" + (f" --model '{c['model']}'" if c.get("model") else ""))
    return line, cmd


def tokenizer_card(run: Path, size: int) -> str:
    f = _run_facts(run)
    v, cfg = f["val"], f["cfg"]
    n = _data_sizes(cfg["data"])
    from tokenizers3d.pose_tokens import PoseTokenizerConfig

    tc = PoseTokenizerConfig(**json.loads((run / "best" / "config.json").read_text())["config"])
    return f"""# pose-tokenizer: COCO-17 keypoints <-> {tc.n_tokens} pose tokens

The 2D pose tokenizer of `meshgen body` (`tokenizers3d/pose_tokens.py`, PCT-style compositional tokens;
{size / 2**20:.2f} MB): 17 keypoints in the crop frame with a confidence each -> MLP-Mixer encoder -> {tc.n_tokens} tokens
of one shared {tc.codebook_size}-entry codebook (EMA, dead-code restarts) -> decoder -> 17 keypoints. Trained here on the CPU.

* Data: the COCO-17 keypoints of the train split of `{cfg['data']}` (`scripts/make_body_dataset.py`: {n['train']:,} images,
  train seeds 10000+; validation: the {n['val']} val-split poses, seeds 1000+), randomly mirrored; the encoder sees
  the joints the renderer marked visible (plus half of the hidden ones) with a random share up to 40 % hidden on
  top, and must return all 17.
* Training (`scripts/train_pose_tokenizer.py`): {f['steps']} steps of {cfg['batch']} poses, AdamW lr {cfg['lr']};
  {f['hours'] * 60:.1f} min on {f['machines']}.
* Shipped: best validation, step {v['step']}: mean keypoint error of decode(encode(pose)) {v['px']:.2f} px at
  128 px (all 17 joints, no joint hidden); {v['masked_px']:.2f} px with 30 % of the joints hidden from the
  encoder (error over all 17); codebook usage on the validation poses {v['usage'] * 100:.0f} %.

## Reproduce

```bash
python scripts/make_body_dataset.py -o {cfg['data']} --train {n['train']} --val {n['val']} --test {n['test']}
python scripts/train_pose_tokenizer.py --data data/body --out {run} --steps {cfg['steps']} --threads 2
```
"""


def hmr_card(run: Path, ablation: Path | None, ev: dict, size: int, md_table: str) -> str:
    """The model card. When the first stage of ``run`` started from the bundled weights (not a run), their card's
    stages and commands are carried over (read before the new weights replace them)."""
    f = _run_facts(run)
    v, cfg = f["val"], f["cfg"]
    n = _data_sizes(cfg["data"])
    models = ev["models"]
    pose = next(n for n, m in models.items() if Path(m["checkpoint"]).resolve() == (run / "best").resolve())
    nopose = next((n for n, m in models.items() if ablation is not None
                   and Path(m["checkpoint"]).resolve() == (ablation / "best").resolve()), None)
    lines = []
    if nopose:
        a, b = models[pose], models[nopose]
        change = {}
        for key, label in (("test", "clean"), ("test_occluded", "occluded")):
            change[key] = (a[key]["pve"] - b[key]["pve"]) / b[key]["pve"] * 100
            lines.append(f"* {label} test images: PVE {a[key]['pve']:.1f} mm with pose tokens, {b[key]['pve']:.1f} "
                         f"without ({change[key]:+.1f} %); MPJPE {a[key]['mpjpe']:.1f} vs {b[key]['mpjpe']:.1f}")
        met = change["test_occluded"] <= -10.0 and change["test"] <= 0.0
        lines.append(f"* The paper's claim (pose tokens lower the occluded-image PVE by at least 10 % without hurting "
                     f"clean images): **{'reproduced' if met else 'NOT reproduced'}** at this budget.")
    rows = RunFolder(run).log_rows()
    vals = [(int(r["step"]), float(r["val_pve"])) for r in rows if r.get("val_pve") not in (None, "", "nan")
            and (int(r["step"]) % cfg["val_every"] == 0 or r is rows[-1])]
    if len(vals) >= 2:
        curve = sorted(dict(vals).items())
        best_step = min(curve, key=lambda sv: sv[1])[0]
        trend = ("still falling at the last validation: the model is under-trained" if best_step == curve[-1][0]
                 else f"lowest at step {best_step}, not lower since")
        lines.append("* Validation coarse-vertex error over training: " +
                     ", ".join(f"{p:.0f} mm at step {st}" for st, p in curve) + f" ({trend}).")
    lines.append("* The full-mesh PVE is above the coarse one because Anny's 13,718 vertices crowd in the hands "
                 "and the face, the parts furthest from the pelvis and hardest to place, while the 256 coarse "
                 "vertices are spread evenly over the surface; the upsampling floor (true coarse vertices "
                 "upsampled) shows the map itself costs about 2 mm.")
    chain = _stages(run)
    abl_chain = _stages(ablation) if ablation is not None else []
    start = chain[0][1]["cfg"].get("init_from")
    bundled = start and Path(start).resolve() == HMR_DEST.resolve()
    prior, prior_cmds = card_history((HMR_DEST / "README.md").read_text()) if bundled else ([], [])
    prior, prior_cmds = drop_chain_stages(prior, prior_cmds, [d for d, _ in chain])

    def cmd(d: Path, c: dict) -> str:  # the bundled weights are what the previous card's last command made
        text = _train_cmd(d, c)
        return text.replace(f"--init-from {start}", f"--init-from {_out_of(prior_cmds[-1])}/best") if (
            prior_cmds and start) else text

    texts = prior + [f"{d}{', warm-started from the previous stage' if k or prior else ''}): {fk['steps']} steps of "
                     f"{fk['cfg']['batch']} images{_of_train(fk)}, lr {fk['cfg']['lr']}{_flag_text(fk['cfg'])}, "
                     f"{fk['hours'] * 60:.1f} min" for k, (d, fk) in enumerate(chain)]
    stages = ("* Stages: " + "; ".join(f"{k + 1} ({t}" for k, t in enumerate(texts)) +
              "; the last stage is this run.") if len(texts) > 1 else ""
    est_line, est_cmd = estimator_text(chain)
    intro_pose = ("a separate 2D pose estimator, also trained here, predicts the 17 COCO keypoints (the CNN keeps a "
                  "keypoint head as an auxiliary task)" if est_line else "a keypoint head predicts the 17 COCO keypoints")
    train_cmds = "\n".join(prior_cmds + ([est_cmd] if est_cmd else []) + [cmd(d, fk["cfg"]) for d, fk in chain])
    abl_cmd = "\n".join(cmd(d, fk["cfg"]) for d, fk in abl_chain) if abl_chain else _train_cmd(
        Path("runs/hmr_nopose"), {**cfg, "no_pose_tokens": True, "pose_teacher": 0.0, "init_from": None})
    abl = ""
    if ablation is not None:
        fa = abl_chain[-1][1]
        same_start = start and abl_chain[0][1]["cfg"].get("init_from") == start
        if same_start and len(abl_chain) == 1:
            shared = f", started from the same weights as the last stage ({start}: both arms share the earlier stages)"
        elif same_start:
            shared = (f", in as many stages from the same weights ({start}: both arms share the stages before it; "
                      + ", ".join(f"{d} {fk['steps']} steps" for d, fk in abl_chain) + ")")
        else:
            shared = ""
        minutes = sum(fk["hours"] for _, fk in abl_chain) * 60
        abl = (f"* Ablation without pose tokens (`--no-pose-tokens`, {ablation}): same data, steps ({fa['steps']}) "
               f"and threads{shared}; {minutes:.1f} min.")
    sizes = sorted({fk["sessions"][0]["train_images"] for _, fk in chain + abl_chain
                    if fk.get("sessions") and fk["sessions"][0].get("train_images")})
    if len(sizes) > 1:
        est_line += ("\n* The stages were trained as the dataset grew (" + ", ".join(f"{x:,}" for x in sizes) +
                     " train images: a larger dataset keeps the seeds of a smaller one); to reproduce a stage exactly, "
                     "make the dataset with its size first (`--train N`), then extend it.")
    return f"""# body-hmr: human mesh recovery from one image with pose tokens (PostoMETRO on Anny)

`meshgen body IMAGE -o body.obj` (`meshgen/hmr.py`, {size / 2**20:.2f} MB with the frozen pose tokenizer, the
coarse -> full upsampling map and Anny's faces). A CNN trained from scratch turns a 128 px crop into 64 image
tokens; {intro_pose}, which the pose tokenizer turns into 16 pose tokens; a
transformer over image and pose tokens with learned camera, joint and vertex queries predicts 17 3D joints and
256 coarse vertices (pelvis-relative, metres), upsampled to Anny's 13,718 vertices by a fixed linear map.
No downloaded weights: everything was trained here on the CPU.

* Data (`scripts/make_body_dataset.py`, `{cfg['data']}`): {n['train']:,} rendered train images (seeds 10000+),
  half with occluders hiding 10-50 % of the body; validation {n['val']} (seeds 1000+); test {n['test']} clean + the
  same {n['test']} with occluders (seeds 0+), never trained on. Anny bodies with random phenotypes and pose, random camera, lighting,
  colours and background.
* Training (`scripts/train_hmr.py`): {f['steps']} steps of {cfg['batch']} images, AdamW lr {cfg['lr']} (warmup
  100, cosine), colour jitter; {f['hours'] * 60:.1f} min of wall time (pauses for other jobs included) on {f['machines']}.
{stages}
{est_line}
{abl}
* Shipped: best validation, step {v['step']}: coarse-vertex error {v['pve']:.1f} mm ({v['pve_clean']:.1f} clean,
  {v['pve_occluded']:.1f} occluded), MPJPE {v['mpjpe']:.1f} mm.

## Held-out test (`scripts/eval_body.py`, mm on Anny's metre scale, pelvis-relative)

{md_table}
{chr(10).join(lines)}

Test images (rows 1-6 clean, 7-12 the same with occluders); columns: input, with pose tokens, without, truth
(green, drawn through a camera fitted to the true keypoints):

![test images: input, with pose tokens, without, truth](../../../docs/img/body_grid.png)

## Reproduce

```bash
python scripts/make_body_dataset.py -o {cfg['data']} --train {n['train']} --val {n['val']} --test {n['test']}\
{f" --poses {n['poses']}" if n.get('poses') else ""}
python scripts/train_pose_tokenizer.py --data data/body --out runs/pose_tokenizer --steps 3000 --threads 2
{train_cmds}
{abl_cmd}
python scripts/eval_body.py --checkpoint {pose}={run}/best {nopose}={ablation or 'runs/hmr_nopose'}/best --out runs/eval_body.json \\
    --markdown-out runs/eval_body.md --grid docs/img/body_grid.png
```
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizer-run", default=None,
                    help="a pose tokenizer run to install beside the model (default: keep the bundled tokenizer, "
                         "which must be the one inside the model)")
    ap.add_argument("--hmr-run", default="runs/hmr_pose")
    ap.add_argument("--ablation-run", default=None)
    ap.add_argument("--eval", required=True, help="JSON of scripts/eval_body.py --out")
    ap.add_argument("--markdown", default=None, help="its --markdown-out (default: beside the JSON)")
    args = ap.parse_args(argv)
    hmr_run = Path(args.hmr_run)
    tok_dir = Path(args.tokenizer_run) / "best" if args.tokenizer_run else TOKENIZER_DEST
    try:
        tok_size = shippable_weights(tok_dir, MAX_BYTES)
        hmr_size = shippable_weights(hmr_run / "best", MAX_BYTES)
    except MeshInputError as exc:
        _fail(str(exc))
    ev = json.loads(Path(args.eval).read_text())
    if not any(Path(m["checkpoint"]).resolve() == (hmr_run / "best").resolve() for m in ev["models"].values()):
        _fail(f"{args.eval} did not evaluate {hmr_run / 'best'}")
    if not ev["models"][next(n for n, m in ev["models"].items()
                             if Path(m["checkpoint"]).resolve() == (hmr_run / "best").resolve())]["pose_tokens"]:
        _fail(f"{hmr_run / 'best'} has no pose tokens; ship the pose-token model")
    import torch
    from safetensors.torch import load_file

    inside = load_file(str(hmr_run / "best" / "model.safetensors"))
    tok = load_file(str(tok_dir / "model.safetensors"))
    if any(not torch.equal(inside[f"tokenizer.{k}"], v) for k, v in tok.items()):
        _fail(f"the pose tokenizer inside {hmr_run / 'best'} is not {tok_dir}")
    if args.ablation_run:
        a = json.loads((hmr_run / "train_config.json").read_text())
        b = json.loads((Path(args.ablation_run) / "train_config.json").read_text())
        differ = [k for k in ("data", "tokenizer", "steps", "batch", "lr", "seed", "threads", "model", "val_every",
                              "image_drop") if a.get(k) != b.get(k)]
        if differ or a.get("no_pose_tokens") or not b.get("no_pose_tokens"):
            _fail(f"the ablation run differs in {differ or 'its pose tokens'}; train it with the same settings")
    md = Path(args.markdown or Path(args.eval).with_suffix(".md")).read_text()
    card = hmr_card(hmr_run, Path(args.ablation_run) if args.ablation_run else None, ev, hmr_size, md)
    if args.tokenizer_run:
        install_model_dir(tok_dir, TOKENIZER_DEST, tokenizer_card(Path(args.tokenizer_run), tok_size))
    install_model_dir(hmr_run / "best", HMR_DEST, card)
    print(json.dumps({"pose_tokenizer": str(TOKENIZER_DEST), "body_hmr": str(HMR_DEST),
                      "digest": model_digest(HMR_DEST)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
