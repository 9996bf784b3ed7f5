"""Does the departure map show where SR is wrong? The measurement behind docs/honest-sr.md.

    python experiments/departure.py [--model srgan-sqe-he-x4 ...] > departure.json

On the 6 held-out MoNuSeg images (the "val" list of experiments/monuseg_split.json,
whole 1000 x 1000 HR images at 40x), LR = D_4(HR), stored lossless and as JPEG Q75.
For each model and LR, SR = Predictor(model).predict_image(LR), the true error is
|SR - HR| (mean over RGB) pooled to the LR grid (mean over each 4 x 4 block), and
each candidate map is correlated with it, over all LR pixels of the 6 images:

- departure: the map the viewer shows (`inference.diagnostics.departure_image`), the
  std of SR over the four quarter turns of the LR;
- dihedral: the same over all eight rotations and flips (twice the network work);
- consistency: |D_4(SR) - LR|, SR against the scan (`consistency_residual`);
- edges: the gradient magnitude of the LR, a baseline any map must beat (error is
  larger at edges; a map that only finds edges tells nothing new).

Pearson and Spearman, per LR pixel and after averaging both maps over 8 x 8 LR px
blocks; also the mean error where a map is in its top tenth against its bottom half,
and the map's quantiles (the viewer's colour scale). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from napari_srgan_sqe import load_model
from napari_srgan_sqe.degradation import degrade
from napari_srgan_sqe.inference.diagnostics import (
    consistency_residual,
    departure_region,
    disagreement,
    pool_lr,
)
from napari_srgan_sqe.inference.tiling import read_region
from napari_srgan_sqe.io.codecs import code_image
from napari_srgan_sqe.models.predictor import Predictor
from napari_srgan_sqe.training.data import load_rgb, resolve_split

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "monuseg_train"
SPLIT = ROOT / "experiments" / "monuseg_split.json"
SCALE = 4
BLOCK = 8
CONDITIONS = {"lossless": None, "jpeg-q75": 75}


def dihedral(lr: np.ndarray, predictor: Predictor) -> np.ndarray:
    """The std of SR over the 8 rotations and flips of the LR, pooled to LR."""
    x = read_region(lr, 0, lr.shape[0], 0, lr.shape[1], halo=predictor.halo)
    members = []
    for flip in (False, True):
        xf = np.ascontiguousarray(x[:, ::-1]) if flip else x
        for k in range(4):
            sr = predictor.run(np.ascontiguousarray(np.rot90(xf, k))[None], crop=predictor.halo)
            sr = np.rot90(sr[0], -k)
            members.append(sr[:, ::-1] if flip else sr)
    return disagreement(members, SCALE)


def edges(lr: np.ndarray) -> np.ndarray:
    gy, gx = np.gradient(lr.astype(np.float64).mean(axis=-1))
    return np.hypot(gy, gx).astype(np.float32)


def ranks(a: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), for Spearman's correlation."""
    order = np.argsort(a, kind="stable")
    r = np.empty(len(a), np.float64)
    r[order] = np.arange(len(a), dtype=np.float64)
    _, inv, counts = np.unique(a, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=r)
    return (sums / counts)[inv]


def correlations(maps: list[np.ndarray], errors: list[np.ndarray]) -> dict[str, object]:
    def both(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
        return {
            "pearson": round(float(np.corrcoef(a, b)[0, 1]), 3),
            "spearman": round(float(np.corrcoef(ranks(a), ranks(b))[0, 1]), 3),
        }

    a = np.concatenate([m.ravel() for m in maps])
    b = np.concatenate([e.ravel() for e in errors])
    pooled_a = np.concatenate([pool_lr(m, BLOCK).ravel() for m in maps])
    pooled_b = np.concatenate([pool_lr(e, BLOCK).ravel() for e in errors])
    per_image = [
        round(float(np.corrcoef(pool_lr(m, BLOCK).ravel(), pool_lr(e, BLOCK).ravel())[0, 1]), 3)
        for m, e in zip(maps, errors)
    ]
    top, bottom = a >= np.quantile(a, 0.9), a <= np.quantile(a, 0.5)
    return {
        "per_pixel": both(a, b),
        f"blocks_{BLOCK}x{BLOCK}": both(pooled_a, pooled_b),
        f"per_image_pearson_{BLOCK}x{BLOCK}": per_image,
        "error_where_top_10pct": round(float(b[top].mean()), 2),
        "error_where_bottom_50pct": round(float(b[bottom].mean()), 2),
        "quantiles": {
            q: round(float(np.quantile(a, float(q))), 2) for q in ("0.5", "0.9", "0.99", "0.995")
        },
    }


def run(model_name: str, images: list[Path]) -> dict[str, object]:
    model = load_model(model_name)
    predictor = Predictor(model, device="cpu")
    out: dict[str, object] = {}
    for label, quality in CONDITIONS.items():
        t0 = time.perf_counter()
        maps: dict[str, list[np.ndarray]] = {
            "departure": [],
            "dihedral": [],
            "consistency": [],
            "edges": [],
        }
        errors = []
        for path in images:
            hr = load_rgb(path)
            lr = degrade(hr, SCALE)
            if quality is not None:
                lr = code_image(lr, "jpeg", quality)
            sr = predictor.predict_image(lr)
            errors.append(pool_lr(np.abs(sr.astype(np.float32) - hr).mean(axis=-1), SCALE))
            maps["departure"].append(
                departure_region(lr, predictor, 0, lr.shape[0], 0, lr.shape[1], sr=sr)
            )
            maps["dihedral"].append(dihedral(lr, predictor))
            maps["consistency"].append(consistency_residual(sr, lr, SCALE))
            maps["edges"].append(edges(lr))
        err = np.concatenate([e.ravel() for e in errors])
        out[label] = {
            "true_error_mean": round(float(err.mean()), 2),
            "maps": {name: correlations(m, errors) for name, m in maps.items()},
            "seconds": round(time.perf_counter() - t0, 1),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", action="append", help="model name or file (repeat); default: the two bundled"
    )
    args = parser.parse_args()
    models = args.model or ["srgan-sqe-he-x4", "srgan-sqe-he-x4-clean"]
    _, val = resolve_split([DATA], SPLIT)
    result = {
        "images": [p.name for p in val],
        "scale": SCALE,
        "lr": "D_4(HR), lossless or JPEG Q75 (YCbCr 4:2:0)",
        "error": "|SR - HR|, mean over RGB, mean over each 4 x 4 HR block (grey levels)",
        "models": {name: run(name, val) for name in models},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
