"""The evaluation behind docs/unpaired.md: pseudo-supervised unpaired SR (Maeda 2020).

    python experiments/unpaired.py prepare          # LR of the held-out images -> runs/
    srgan-sqe train --config experiments/configs/unpaired-monuseg-clean.json
    srgan-sqe train --config experiments/configs/unpaired-monuseg.json
    srgan-sqe train --config experiments/configs/unpaired-cmu.json
    python experiments/unpaired.py evaluate --images docs/images

1. `prepare`: LR = D_4(HR) of the MoNuSeg validation split (6 images, 40x), stored as
   JPEG Q30 and Q50 (YCbCr 4:2:0) and decoded; written as PNG to runs/unpaired-lr/q30
   and q50 (outside the repository). These LR images are the only thing the
   adaptation runs (unpaired-monuseg*.json) see of the held-out images: never their HR.
2. `evaluate`: on those LR images, PSNR over all channels and SSIM against the HR for
   bicubic, the default model, the clean model and the two adapted models (the SR net
   started from the clean model, a run stopped early and scored from its checkpoint;
   or from the default); and on the bundled sample slide read natively (JPEG Q30, no
   HR): the consistency of each SR with its LR (|D_4(SR) - LR| in 8-bit levels and as
   a PSNR) over fixed tissue crops, and a figure of one crop. Prints JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from napari_srgan_sqe import load_model
from napari_srgan_sqe.config import saved_train_config
from napari_srgan_sqe.degradation import degrade
from napari_srgan_sqe.io.atomic import atomic_path
from napari_srgan_sqe.io.checkpoints import read_safetensors
from napari_srgan_sqe.io.codecs import code_image
from napari_srgan_sqe.io.slides import open_slide
from napari_srgan_sqe.metrics import psnr, ssim
from napari_srgan_sqe.models.blocks import bicubic_upscale
from napari_srgan_sqe.models.modelfile import SRModel, new_model
from napari_srgan_sqe.models.predictor import Predictor
from napari_srgan_sqe.training.data import load_rgb, resolve_split
from napari_srgan_sqe.training.recipes import is_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SPLIT = ROOT / "experiments" / "monuseg_split.json"
LR_DIR = ROOT / "runs" / "unpaired-lr"
SAMPLE = ROOT / "src" / "napari_srgan_sqe" / "data" / "CMU-1-Small-Region.svs"
QUALITIES = (30, 50)
SCALE = 4
SLIDE_CROPS = [(750, 1950, 256), (850, 1425, 256), (950, 650, 256), (1300, 2500, 256)]
"""(x, y, side) of the sample-slide crops scored for consistency (LR px, tissue)."""
FIGURE_CROP = (1040, 2040, 64)
"""(x, y, side) of the sample-slide crop in the figure (LR px)."""


def held_out() -> list[Path]:
    _, val = resolve_split([SHARED / "monuseg_train"], SPLIT)
    return val


def prepare() -> dict[str, int]:
    """Write the JPEG-coded LR of the held-out images (decoded, as PNG) to LR_DIR."""
    counts = {}
    for q in QUALITIES:
        out = LR_DIR / f"q{q}"
        out.mkdir(parents=True, exist_ok=True)
        for p in held_out():
            lr = code_image(degrade(load_rgb(p), SCALE), "jpeg", q)
            with atomic_path(out / p.name) as tmp:
                Image.fromarray(lr).save(tmp, format="PNG")
        counts[f"q{q}"] = len(held_out())
    return counts


def _load(src: str) -> SRModel:
    """A model by name or file, or the network of a training checkpoint (a run stopped
    before its end has no model file yet)."""
    path = Path(src)
    if not (path.is_file() and is_checkpoint(path)):
        return load_model(src)
    tensors, meta = read_safetensors(path)
    cfg = saved_train_config(meta["config"], source=str(path))
    model = new_model(cfg.model)
    prefix = "G_ema." if any(k.startswith("G_ema.") for k in tensors) else "G."
    model.generator.load_state_dict(
        {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    )
    model.metadata["steps"] = meta["step"]
    return model.eval()


def _correction_with(run: str, sr: str) -> SRModel:
    """The correction net C of the adapted model `run` in front of the unchanged SR
    network of model `sr`: what C alone does for that model (the widget's mode)."""
    adapted, u = _load(run), load_model(sr)
    net = copy.deepcopy(adapted.generator)
    net.sr.load_state_dict(u.generator.state_dict())
    cfg = adapted.config.model_copy(update={"name": f"C of {adapted.name} + {u.name}"})
    return SRModel(net, cfg).eval()


def _predictors(models: dict[str, str]) -> dict[str, Predictor | None]:
    """name -> Predictor (None: bicubic)."""
    out: dict[str, Predictor | None] = {}
    for name, src in models.items():
        if src == "bicubic":
            out[name] = None
            continue
        run, _, sr = src.partition(" + ")
        model = _correction_with(run, sr) if sr else _load(src)
        out[name] = Predictor(model, device="cpu", precision="fp32")
    return out


def _sr(pred: Predictor | None, lr: np.ndarray) -> np.ndarray:
    return bicubic_upscale(lr, SCALE) if pred is None else pred.predict_image(lr)


def score_monuseg(models: dict[str, str]) -> dict[str, dict]:
    """Mean PSNR / SSIM of each model per JPEG quality, and per image."""
    preds = _predictors(models)
    out: dict[str, dict] = {}
    for q in QUALITIES:
        rows: dict[str, list[tuple[float, float]]] = {n: [] for n in models}
        per_image: dict[str, dict[str, float]] = {}
        for p in held_out():
            hr = load_rgb(p)
            lr = load_rgb(LR_DIR / f"q{q}" / p.name)
            hr = hr[: lr.shape[0] * SCALE, : lr.shape[1] * SCALE]
            per_image[p.name] = {}
            for name, pred in preds.items():
                sr = _sr(pred, lr)
                rows[name].append((psnr(sr, hr), ssim(sr, hr)))
                per_image[p.name][name] = round(rows[name][-1][0], 3)
        out[f"jpeg_q{q}"] = {
            "mean": {
                n: {
                    "psnr": round(float(np.mean([r[0] for r in v])), 3),
                    "ssim": round(float(np.mean([r[1] for r in v])), 4),
                }
                for n, v in rows.items()
            },
            "psnr_per_image": per_image,
        }
    return out


def _consistency(sr: np.ndarray, lr: np.ndarray) -> tuple[float, float]:
    """Mean |D_4(SR) - LR| in 8-bit levels, and PSNR(D_4(SR), LR) in dB."""
    back = degrade(sr, SCALE)
    return float(np.abs(back.astype(np.int16) - lr.astype(np.int16)).mean()), psnr(back, lr)


def tissue_crops(level: object, side: int = 256, n: int = 4) -> list[tuple[int, int, int]]:
    """The `n` crops of a `side`-px grid of a slide level with the most tissue (the
    darkest mean, away from glass), as (x, y, side)."""
    lv = np.asarray(level)
    cells = []
    for y in range(0, lv.shape[0] - side + 1, side):
        for x in range(0, lv.shape[1] - side + 1, side):
            cells.append((float(lv[y : y + side, x : x + side].mean()), x, y))
    return [(x, y, side) for _, x, y in sorted(cells)[:n]]


def score_slide(
    models: dict[str, str],
    images: Path | None,
    slide: Path = SAMPLE,
    crops: list[tuple[int, int, int]] | None = None,
) -> dict[str, object]:
    """Consistency on a slide read natively (default: the sample, and its crop figure)."""
    level = open_slide(slide).levels[0]
    crops = crops if crops is not None else SLIDE_CROPS
    preds = _predictors(models)
    rows: dict[str, list[tuple[float, float]]] = {n: [] for n in models}
    change: dict[str, list[float]] = {}
    for x, y, side in crops:
        lr = np.asarray(level[y : y + side, x : x + side])
        for name, pred in preds.items():
            rows[name].append(_consistency(_sr(pred, lr), lr))
            fixed = _corrected_lr(pred, lr)
            if fixed is not None:
                diff = np.abs(fixed.astype(np.int16) - lr.astype(np.int16))
                change.setdefault(name, []).append(float(diff.mean()))
    result: dict[str, object] = {
        "slide": slide.name,
        "crops": [list(c) for c in crops],
        "correction_vs_lr_mean_abs_levels": {
            n: round(float(np.mean(v)), 4) for n, v in change.items()
        },
        "mean_abs_levels": {
            n: round(float(np.mean([r[0] for r in v])), 3) for n, v in rows.items()
        },
        "psnr_db": {n: round(float(np.mean([r[1] for r in v])), 3) for n, v in rows.items()},
    }
    if images is not None and slide == SAMPLE:
        result["figure"] = str(figure(preds, images / "unpaired-cmu.png"))
    return result


def _corrected_lr(pred: Predictor | None, lr: np.ndarray) -> np.ndarray | None:
    """C(LR) of an 'unpaired' model (the corrected LR it up-samples), else None."""
    if pred is None or pred.model.arch != "unpaired":
        return None
    net = pred.model.generator.correction
    x = torch.from_numpy(lr.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        y = net(x)[0].permute(1, 2, 0).clamp(0, 1).mul(255).round().byte().numpy()
    return np.asarray(y)


def figure(preds: dict[str, Predictor | None], path: Path) -> Path:
    """One row: LR (nearest), corrected LR (nearest) and each model's SR, 4x crop."""
    from PIL import ImageDraw

    x, y, side = FIGURE_CROP
    level = open_slide(SAMPLE).levels[0]
    pad = 8  # LR px of context, cropped away after SR
    lr_big = np.asarray(level[y - pad : y + side + pad, x - pad : x + side + pad])
    lr = lr_big[pad:-pad, pad:-pad]
    up = side * SCALE
    panels = [("LR (slide, JPEG Q30)", np.asarray(Image.fromarray(lr).resize((up, up), 0)))]
    for pred in preds.values():
        fixed = _corrected_lr(pred, lr_big)
        if fixed is not None:
            crop = fixed[pad:-pad, pad:-pad]
            panels.append(
                ("corrected LR (its C)", np.asarray(Image.fromarray(crop).resize((up, up), 0)))
            )
            break  # one panel: the corrected LR of the first adapted model
    for name, pred in preds.items():
        sr = _sr(pred, lr_big)[pad * SCALE : -pad * SCALE, pad * SCALE : -pad * SCALE]
        panels.append((name, sr))
    label_h = 22
    canvas = Image.new("RGB", (len(panels) * (up + 6) - 6, up + label_h), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, img) in enumerate(panels):
        canvas.paste(Image.fromarray(img), (i * (up + 6), label_h))
        draw.text((i * (up + 6) + 4, 4), label, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("what", choices=("prepare", "evaluate"))
    ap.add_argument(
        "--monuseg-model", default=str(ROOT / "runs/unpaired-monuseg/model.safetensors")
    )
    ap.add_argument(
        "--monuseg-clean-start",
        default=str(ROOT / "runs/unpaired-monuseg-clean/checkpoint.safetensors"),
        help="the run whose SR net started from the clean model (a checkpoint is fine)",
    )
    ap.add_argument("--cmu-model", default=str(ROOT / "runs/unpaired-cmu/model.safetensors"))
    ap.add_argument("--tcga-model", default=str(ROOT / "runs/unpaired-tcga/model.safetensors"))
    ap.add_argument("--only-tcga", action="store_true", help="score the TCGA slide alone")
    ap.add_argument("--images", type=Path, default=None, help="write the figure here")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.what == "prepare":
        print(json.dumps({"lr_images": prepare(), "folder": str(LR_DIR)}, indent=2))
        return 0
    base = {"bicubic": "bicubic", "default": "srgan-sqe-he-x4"}
    monuseg = base | {
        "clean model (srgan-sqe-he-x4-clean)": "srgan-sqe-he-x4-clean",
        "adapted, from the clean model": args.monuseg_clean_start,
        "adapted, from the default": args.monuseg_model,
        "C (from the clean start) + the clean model": f"{args.monuseg_clean_start} + "
        "srgan-sqe-he-x4-clean",
        "C (from the default start) + the default": f"{args.monuseg_model} + srgan-sqe-he-x4",
    }
    slide = base | {
        "adapted to the slide (unpaired-cmu)": args.cmu_model,
        "C (from the slide run) + the default": f"{args.cmu_model} + srgan-sqe-he-x4",
    }
    tcga = base | {
        "adapted to the slide (unpaired-tcga)": args.tcga_model,
        "C (from the slide run) + the default": f"{args.tcga_model} + srgan-sqe-he-x4",
    }
    tcga_path = ROOT.parent / "shared" / "data" / "slides" / "tcga-cr-7395-01a-01-ts1.svs"
    tcga_crops = tissue_crops(open_slide(tcga_path).levels[1], side=256)
    tcga_crops = [(2 * x, 2 * y, side) for x, y, side in tcga_crops]  # level 0 px
    tcga_report = score_slide(tcga, None, slide=tcga_path, crops=tcga_crops)
    if args.only_tcga:
        json.dump({"tcga_slide": tcga_report}, sys.stdout, indent=2)
        print()
        return 0
    report = {
        "models": {
            name: {"source": src, "steps": _load(src).metadata.get("steps", "")}
            for name, src in (monuseg | slide).items()
            if src != "bicubic" and " + " not in src
        },
        "monuseg_held_out": score_monuseg(monuseg),
        "sample_slide": score_slide(slide, args.images),
        "tcga_slide": tcga_report,
    }
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
