"""The comparison of every method for docs/methods.md.

    python experiments/methods.py --model NAME_OR_FILE ... --out docs/eval/methods \
        --images docs/images

1. Held-out images: the MoNuSeg validation split (6 images, 40x), centre crops of
   512 x 512 HR px (so that ZSSR, trained on each LR image, fits a CPU budget).
   LR = D_4(HR) stored lossless, and as JPEG Q75 (YCbCr 4:2:0). `evaluate` scores
   each model (one call per model, its JSON kept in --out/per-model/, so a rerun
   only scores what is new); zero-shot models are trained on each LR image first.
2. Cost, measured in one run with the models interleaved: parameters, multiply-adds
   per output pixel (the descriptor's count of convolutions), CPU milliseconds per
   128 x 128 LR tile (fp32, torch's threads as set), median of repeats.
3. One crop figure: LR (nearest) | every method | HR on the same region.
Prints the Markdown tables and writes methods.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from napari_srgan_sqe import load_model
from napari_srgan_sqe.degradation import degrade
from napari_srgan_sqe.models.blocks import bicubic_upscale
from napari_srgan_sqe.models.predictor import Predictor
from napari_srgan_sqe.training.data import load_rgb, resolve_split
from napari_srgan_sqe.training.evaluate import LRCondition, evaluate
from napari_srgan_sqe.training.zero_shot import zero_shot, zero_shot_config

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CONDITIONS = [LRCondition(), LRCondition("jpeg", 75)]
CROP = 512


def held_out_crops(out: Path) -> Path:
    """Centre crops (CROP px) of the validation images, written as PNG into `out`."""
    _, val = resolve_split([SHARED / "monuseg_train"], ROOT / "experiments" / "monuseg_split.json")
    out.mkdir(parents=True, exist_ok=True)
    for p in val:
        hr = load_rgb(p)
        y, x = (hr.shape[0] - CROP) // 2, (hr.shape[1] - CROP) // 2
        Image.fromarray(hr[y : y + CROP, x : x + CROP]).save(out / p.name)
    return out


def score(
    models: list[str],
    data: Path,
    out: Path,
    steps: int,
    conditions: list[LRCondition],
    samples: int = 1,
) -> dict[str, dict]:
    """by_lr summaries per model (cached per model and LR condition in out/per-model)."""
    cache = out / "per-model"
    cache.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for name in models:
        model = load_model(name)
        results[name] = {"by_lr": {}, "rows": [], "seconds": {}}
        for cond in conditions:
            path = cache / f"{Path(name).stem}.{cond.label}.json"
            if not path.is_file():
                t0 = time.perf_counter()
                res = evaluate(
                    [model],
                    [data],
                    device="cpu",
                    lr_conditions=[cond],
                    zero_shot_steps=steps,
                    samples=samples,
                )
                payload = {"by_lr": res.summaries(), "rows": res.rows}
                payload["seconds"] = time.perf_counter() - t0
                path.write_text(json.dumps(payload, indent=2))
                print(f"scored {model.name} ({cond.label}) in {payload['seconds']:.0f} s")
            got = json.loads(path.read_text())
            results[name]["by_lr"].update(got["by_lr"])
            results[name]["rows"] += got["rows"]
            results[name]["seconds"][cond.label] = got["seconds"]
    return results


def cost(models: list[str], repeats: int = 5) -> dict[str, dict]:
    """Parameters, multiply-adds per output pixel and CPU ms per 128 px LR tile."""
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 256, (1, 128, 128, 3), dtype=np.uint8)
    loaded = {n: load_model(n) for n in models}
    preds = {n: Predictor(m, device="cpu") for n, m in loaded.items()}
    times: dict[str, list[float]] = {n: [] for n in models}
    for n in models:  # warm-up
        preds[n].run(tile)
    for _ in range(repeats):  # interleaved, so load changes hit every model alike
        for n in models:
            t0 = time.perf_counter()
            preds[n].run(tile)
            times[n].append(time.perf_counter() - t0)
    out = {}
    for n, m in loaded.items():
        d = m.descriptor
        out[n] = {
            "name": m.name,
            "arch": d.arch,
            "kind": d.kind,
            "params": sum(p.numel() for p in m.generator.parameters()),
            "macs_per_pixel": d.macs_per_pixel,
            "speed_class": d.speed_class,
            "ms_per_128px_tile": 1000 * float(np.median(times[n])),
            "threads": torch.get_num_threads(),
        }
    return out


def crop_figure(models: list[str], data: Path, path: Path, steps: int) -> None:
    """LR (nearest) | each method | HR, on one JPEG Q75 LR crop of a held-out image."""
    img = sorted(data.glob("*.png"))[1]
    hr = load_rgb(img)[128:384, 128:384]
    lr = LRCondition("jpeg", 75).apply(degrade(load_rgb(img), 4))
    panels = [np.repeat(np.repeat(lr[32:96, 32:96], 4, 0), 4, 1), bicubic_upscale(lr, 4)]
    labels = ["LR (JPEG Q75)", "bicubic"]
    for name in models:
        m = load_model(name)
        if m.descriptor.kind == "zero-shot":
            cfg = zero_shot_config(steps, degradation="scanner")
            m = zero_shot([lr], model=m, config=cfg, device="cpu")
        panels.append(Predictor(m, device="cpu").predict_image(lr))
        labels.append(m.name)
    panels = [p if p.shape[0] == 256 else p[128:384, 128:384] for p in panels] + [hr]
    labels.append("HR")
    gap = np.full((256, 4, 3), 255, np.uint8)
    row = np.concatenate([q for p in panels for q in (p, gap)][:-1], axis=1)
    Image.fromarray(row).save(path)
    print("crop figure:", path, "panels:", " | ".join(labels))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "eval" / "methods")
    ap.add_argument("--images", type=Path, default=None, help="folder for the crop figure")
    ap.add_argument("--zero-shot-steps", type=int, default=300)
    ap.add_argument(
        "--samples", type=int, default=4, help="samples of stochastic models (mean, spread)"
    )
    ap.add_argument("--skip-score", action="store_true")
    ap.add_argument("--only", choices=[c.label for c in CONDITIONS], default=None)
    ap.add_argument("--score-only", action="store_true", help="no cost, tables or figure")
    args = ap.parse_args()
    data = held_out_crops(ROOT / "runs" / "methods-val512")
    conds = [c for c in CONDITIONS if args.only in (None, c.label)]
    steps = args.zero_shot_steps
    scores = (
        {} if args.skip_score else score(args.model, data, args.out, steps, conds, args.samples)
    )
    if args.score_only:
        return
    costs = cost(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "methods.json").write_text(json.dumps({"scores": scores, "cost": costs}, indent=2))
    for cond in (c.label for c in CONDITIONS):
        print(f"\n| method ({cond} LR) | PSNR | dB vs bicubic | SSIM | MS-SSIM | QILV |")
        print("| --- | --- | --- | --- | --- | --- |")
        first = True
        for res in scores.values():
            summ = res["by_lr"][cond]
            base = summ["bicubic"]["psnr"]
            rows = [("bicubic", summ["bicubic"])] if first else []
            rows += [(k, v) for k, v in summ.items() if k not in ("bicubic", "lanczos")]
            first = False
            for label, v in rows:
                gain = v["psnr"] - base
                print(
                    f"| {label} | {v['psnr']:.2f} | {gain:+.2f} | {v['ssim']:.4f} | "
                    f"{v['ms_ssim']:.4f} | {v['qilv']:.4f} |"
                )
    print("\n| model | arch | kind | parameters | MACs / output px | ms / 128 px LR tile |")
    print("| --- | --- | --- | --- | --- | --- |")
    for c in costs.values():
        print(
            f"| {c['name']} | {c['arch']} | {c['kind']} | {c['params']:,} | "
            f"{c['macs_per_pixel']:,} | {c['ms_per_128px_tile']:.0f} |"
        )
    if args.images is not None:
        crop_figure(args.model, data, args.images / "methods-crops.png", args.zero_shot_steps)


if __name__ == "__main__":
    main()
