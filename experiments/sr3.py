"""SR3's own numbers for docs/methods.md: the step count, tiling, seams, samples.

    python experiments/sr3.py [--model sr3-he-x4] [--steps 4 8 16] [--samples 4]
                              [--out docs/eval/sr3]

1. Step count (and sampling temperature at the shipped steps): on the held-out crops of experiments/methods.py (6 MoNuSeg validation
   images, 512 px centre crops), LR = D_4(HR) lossless and JPEG Q75, `evaluate` with
   `samples` seeds per image at each step count: PSNR / SSIM of one sample (mean and
   spread over seeds) and of the per-pixel mean of the samples.
2. Tiling: one held-out LR crop super-resolved whole (`Predictor.predict_image`) and
   tiled through the engine (`super_resolve`, 64 LR px tiles, the model's overlap):
   max and mean |tiled - whole| in grey levels, and the seam statistic: the mean
   absolute step between neighbouring pixels across tile borders divided by the same
   away from them (1.0 = no seam).
3. Spread: the per-pixel standard deviation over the samples, mean over the image, and
   its correlation with the per-pixel error of the samples' mean (where the model
   guesses, is it wrong more often?).
Writes sr3.json into --out and prints it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from napari_srgan_sqe import load_model
from napari_srgan_sqe.degradation import degrade
from napari_srgan_sqe.inference.engine import super_resolve
from napari_srgan_sqe.models.modelfile import with_sampling_steps
from napari_srgan_sqe.models.predictor import Predictor
from napari_srgan_sqe.training.data import load_rgb
from napari_srgan_sqe.training.evaluate import LRCondition, evaluate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from methods import ROOT, held_out_crops  # noqa: E402

TILE = 64


def seam_statistic(img: np.ndarray, tile_hr: int) -> float:
    """Mean |step| across tile borders / mean |step| elsewhere, both axes (1 = no seam)."""
    f = img.astype(np.float64)
    ratios = []
    for axis in (0, 1):
        steps = np.abs(np.diff(f, axis=axis)).mean(axis=(1 - axis, 2))
        at = np.arange(tile_hr - 1, steps.shape[0], tile_hr)
        rest = np.setdiff1d(np.arange(steps.shape[0]), at)
        ratios.append(steps[at].mean() / steps[rest].mean())
    return float(np.mean(ratios))


def tiling(model, lr: np.ndarray, seed: int) -> dict[str, float]:
    whole = Predictor(model, device="cpu", seed=seed).predict_image(lr)
    tiled = np.asarray(super_resolve(lr, model, device="cpu", tile=TILE, seed=seed)[0])
    d = np.abs(tiled.astype(int) - whole.astype(int))
    return {
        "tile_lr_px": TILE,
        "overlap_lr_px": model.halo,
        "max_abs_diff": int(d.max()),
        "mean_abs_diff": float(d.mean()),
        "share_of_px_differing_by_more_than_2": float((d.max(axis=2) > 2).mean()),
        "seam_statistic_tiled": seam_statistic(tiled, TILE * model.scale),
        "seam_statistic_whole": seam_statistic(whole, TILE * model.scale),
    }


def spread(model, data: Path, samples: int) -> dict[str, float]:
    """Mean per-pixel spread over samples, and its correlation with the error of
    their mean, on JPEG Q75 LR of the held-out crops."""
    spreads, corrs = [], []
    for path in sorted(data.glob("*.png")):
        hr = load_rgb(path)
        lr = LRCondition("jpeg", 75).apply(degrade(hr, 4))
        drawn = np.stack(
            [
                Predictor(model, device="cpu", seed=k).predict_image(lr).astype(np.float32)
                for k in range(samples)
            ]
        )
        sd = drawn.std(axis=0).mean(axis=2)
        err = np.abs(drawn.mean(axis=0) - hr).mean(axis=2)
        spreads.append(float(sd.mean()))
        # pooled to 8 x 8 HR px blocks: where the samples disagree vs where they are wrong
        h, w = (sd.shape[0] // 8) * 8, (sd.shape[1] // 8) * 8
        a = sd[:h, :w].reshape(h // 8, 8, w // 8, 8).mean(axis=(1, 3)).ravel()
        b = err[:h, :w].reshape(h // 8, 8, w // 8, 8).mean(axis=(1, 3)).ravel()
        corrs.append(float(np.corrcoef(a, b)[0, 1]))
    return {
        "samples": samples,
        "mean_spread_grey_levels": float(np.mean(spreads)),
        "pearson_spread_vs_error_8px_blocks": float(np.mean(corrs)),
        "per_image_pearson": corrs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="sr3-he-x4")
    ap.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.5, 0.8])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "eval" / "sr3")
    args = ap.parse_args()
    data = held_out_crops(ROOT / "runs" / "methods-val512")
    base = load_model(args.model)
    result: dict = {"model": base.name, "shipped_steps": base.descriptor.steps, "steps": {}}

    def score(model) -> dict:
        res = evaluate(
            [model],
            [data],
            device="cpu",
            baselines=("bicubic",),
            lr_conditions=[LRCondition(), LRCondition("jpeg", 75)],
            samples=args.samples,
        )
        return res.summaries()

    for n in args.steps:
        result["steps"][str(n)] = score(with_sampling_steps(base, n))
        print(json.dumps({str(n): result["steps"][str(n)]}), flush=True)
    result["temperature"] = {}
    for temp in args.temperatures:  # at the shipped step count
        result["temperature"][str(temp)] = score(with_sampling_steps(base, temperature=temp))
        print(json.dumps({f"T={temp}": result["temperature"][str(temp)]}), flush=True)
    img = sorted(data.glob("*.png"))[1]
    lr = LRCondition("jpeg", 75).apply(degrade(load_rgb(img), 4))[:96, :128]
    result["tiling"] = tiling(base, np.ascontiguousarray(lr), seed=0)
    result["spread"] = spread(base, data, args.samples)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sr3.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
