"""Cut tissue-rich crops from whole-slide images into PNG files, as a held-out evaluation
set from other sites and magnifications than the training data.

    python experiments/slide_crops.py ../shared/data/slides/*.svs --out runs/slide-crops

Crops are taken on a fixed grid at level 0 and kept when most pixels are tissue (HSV
saturation > 0.07 and value < 0.9), so the choice is reproducible.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from napari_srgan_sqe import open_slide


def tissue_fraction(rgb: np.ndarray) -> float:
    x = rgb.astype(np.float32) / 255.0
    mx, mn = x.max(-1), x.min(-1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    return float(((sat > 0.07) & (mx < 0.9)).mean())


def crops(path: Path, out: Path, *, size: int, per_slide: int, min_tissue: float) -> list[Path]:
    slide = open_slide(path)
    level = slide.levels[0]
    h, w = level.shape[:2]
    written = []
    for y in range(0, h - size + 1, size):
        for x in range(0, w - size + 1, size):
            tile = np.asarray(level[y : y + size, x : x + size].compute())
            if tissue_fraction(tile) >= min_tissue:
                target = out / f"{path.stem}_y{y}_x{x}.png"
                Image.fromarray(tile).save(target)
                written.append(target)
            if len(written) >= per_slide:
                return written
    return written


if __name__ == "__main__":
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("slides", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", type=int, default=768)
    ap.add_argument("--per-slide", type=int, default=4)
    ap.add_argument("--min-tissue", type=float, default=0.6)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for s in args.slides:
        for p in crops(
            s, args.out, size=args.size, per_slide=args.per_slide, min_tissue=args.min_tissue
        ):
            print(p)
