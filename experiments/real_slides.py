"""Evaluation for docs/real-slides.md: models on compressed and lossless LR, at 40x and
20x, and crops of the real slides read natively.

    python experiments/real_slides.py --model OLD --model NEW --model FIDELITY \
        --out docs/eval/real-slides --images docs/images

1. MoNuSeg validation split (40x): LR = D_4(HR), stored lossless, as JPEG Q95/75/50/30
   (YCbCr 4:2:0) and as JPEG 2000 at Aperio's rate (17:1); `evaluate` for every model.
2. The same images reduced 2x by area (20x HR): lossless and JPEG Q75.
3. Other sites (crops of the two slides, experiments/slide_crops.py): lossless, JPEG Q75.
4. The two real slides read natively (no simulated LR): bicubic | each model, crops.
Tables print as Markdown; results are written as evaluation.json per set.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from napari_srgan_sqe import load_model, open_slide
from napari_srgan_sqe.models.blocks import bicubic_upscale
from napari_srgan_sqe.models.predictor import Predictor
from napari_srgan_sqe.training.data import find_images, load_rgb, resolve_split
from napari_srgan_sqe.training.evaluate import LRCondition, evaluate

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CONDITIONS_40X = [
    LRCondition(),
    LRCondition("jpeg", 95),
    LRCondition("jpeg", 75),
    LRCondition("jpeg", 50),
    LRCondition("jpeg", 30),
    LRCondition("jpeg2000", None),
]
CONDITIONS_SHORT = [LRCondition(), LRCondition("jpeg", 75), LRCondition("jpeg", 30)]
# Regions (level-0 x, y, w, h in LR px) of the slides read natively, chosen on tissue.
NATIVE = {
    "CMU-1-Small-Region.svs": (1100, 1300, 96, 96),
    "tcga-cr-7395-01a-01-ts1.svs": (2000, 1500, 96, 96),
}


def half_magnification(paths: list[Path], out: Path) -> list[Path]:
    """HR images reduced 2x by area (40x -> 20x), written as PNG."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for p in paths:
        hr = load_rgb(p).astype(np.float64)
        h, w = (hr.shape[0] // 2) * 2, (hr.shape[1] // 2) * 2
        small = hr[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))
        target = out / p.name
        Image.fromarray(np.clip(np.rint(small), 0, 255).astype(np.uint8)).save(target)
        written.append(target)
    return written


def markdown(result_json: Path, labels: dict[str, str]) -> str:
    """One Markdown table: rows = models, columns = LR conditions, cells = dB over bicubic
    (and the model's PSNR)."""
    by_lr = json.loads(result_json.read_text())["by_lr"]
    conds = list(by_lr)
    head = "| model | " + " | ".join(conds) + " |\n|" + " --- |" * (len(conds) + 1) + "\n"
    rows = []
    bic = " | ".join(f"{by_lr[c]['bicubic']['psnr']:.2f} dB" for c in conds)
    rows.append(f"| bicubic (PSNR) | {bic} |")
    for method, label in labels.items():
        cells = []
        for c in conds:
            m = by_lr[c].get(method)
            if m is None:
                cells.append("")
                continue
            cells.append(f"{m['psnr'] - by_lr[c]['bicubic']['psnr']:+.2f} (SSIM {m['ssim']:.3f})")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def native_crops(models: list, images: Path) -> None:
    """Bicubic | each model on the real slides read natively, 4x nearest for display."""
    preds = [(m.name, Predictor(m, device="cpu")) for m in models]
    for name, (x, y, w, h) in NATIVE.items():
        path = SHARED / "slides" / name
        if not path.exists():
            continue
        level = open_slide(path).levels[0]
        lr = np.asarray(level[y : y + h, x : x + w].compute())
        panels = [np.repeat(np.repeat(lr, 4, 0), 4, 1), bicubic_upscale(lr, 4)]
        panels += [p.predict_image(lr) for _, p in preds]
        gap = np.full((4 * h, 6, 3), 255, np.uint8)
        row = np.concatenate([q for panel in panels for q in (panel, gap)][:-1], axis=1)
        stem = Path(name).stem
        Image.fromarray(row).save(images / f"real-slides-{stem}.png")
        print(f"crops of {name}: LR (nearest) | bicubic | " + " | ".join(n for n, _ in preds))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--label", action="append", default=None, help="table label per model")
    ap.add_argument("--out", type=Path, default=ROOT / "docs/eval/real-slides")
    ap.add_argument("--images", type=Path, default=ROOT / "docs/images")
    ap.add_argument("--work", type=Path, default=ROOT / "runs/real-slides")
    ap.add_argument("--sets", default="40x,20x,sites,native")
    args = ap.parse_args()
    models = [load_model(m) for m in args.model]
    labels = dict(zip([m.name for m in models], args.label or [m.name for m in models]))
    sets = set(args.sets.split(","))
    _, val = resolve_split([SHARED / "monuseg_train"], ROOT / "experiments/monuseg_split.json")
    jobs = []
    if "40x" in sets:
        jobs.append(("monuseg-val-40x", val, CONDITIONS_40X))
    if "20x" in sets:
        jobs.append(("monuseg-val-20x", half_magnification(val, args.work / "val20x"),
                     CONDITIONS_SHORT))  # fmt: skip
    if "sites" in sets:
        crops = args.work / "slide-crops"
        if not crops.is_dir():
            raise SystemExit(f"{crops}: run experiments/slide_crops.py --out {crops} first")
        jobs.append(("other-sites", find_images([crops]), CONDITIONS_SHORT))
    for name, data, conds in jobs:
        result = evaluate(models, data, baselines=("bicubic",), lr_conditions=conds,
                          device="cpu", crops_dir=args.work / "crops" / name)  # fmt: skip
        _, js = result.write(args.out / name)
        print(f"\n### {name}\n")
        print(markdown(js, labels))
    if "native" in sets:
        native_crops(models, args.images)


if __name__ == "__main__":
    main()
