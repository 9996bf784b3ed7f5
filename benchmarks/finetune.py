"""Fine-tuning benchmark: both modes on a real held-out H&E image; prints JSON.

For paired and self-supervised fine-tuning of the same base model on one validation
image of experiments/monuseg_split.json (never seen in training): PSNR / SSIM on the
held-out stripe before and after N steps, seconds (wall clock, validation included)
to +0.5 dB and +1 dB, and the bicubic baseline on the same stripe. The self-supervised
mode validates on pseudo-pairs (D_s(LR stripe) -> LR stripe); because this benchmark
has the real HR, it also reports what really matters: SR(LR stripe) vs HR stripe.

Base model: `--model`, else the bundled srgan-sqe-he-x4 if its weights exist, else a
seeded random 'light' model (said so in the output). Also writes the loss / PSNR
curves to docs/images/finetune-curve.png (`--plot`).

    mkdir -p benchmarks/results
    python benchmarks/finetune.py --steps 150 --threads 1 > benchmarks/results/finetune.json

It reads the image from ../shared/data/monuseg_train (beside the repository).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "monuseg_train"
SPLIT = ROOT / "experiments" / "monuseg_split.json"
BUNDLED = ROOT / "src/napari_srgan_sqe/models/weights/srgan-sqe-he-x4.safetensors"
PLOT = ROOT / "docs" / "images" / "finetune-curve.png"


def base_model(path: str | None):
    """(model, description): --model, the bundled model, or a random light model."""
    import torch

    from napari_srgan_sqe.config import ModelConfig, generator_preset
    from napari_srgan_sqe.models.modelfile import load_model, new_model

    if path:
        return load_model(path), f"{path} (given with --model)"
    if BUNDLED.is_file():
        return load_model("srgan-sqe-he-x4"), "bundled srgan-sqe-he-x4"
    torch.manual_seed(0)
    cfg = ModelConfig(name="light-random", generator=generator_preset("light"))
    return new_model(cfg), "UNTRAINED light model (seeded random weights; bundled weights absent)"


def true_hr_score(model, lr_stripe: np.ndarray, hr_stripe: np.ndarray) -> dict[str, float]:
    """SR of the real LR stripe against its real HR (self-supervised mode's real effect)."""
    from napari_srgan_sqe.metrics import psnr, ssim
    from napari_srgan_sqe.models.predictor import Predictor

    sr = Predictor(model, device="cpu", precision="fp32").predict_image(lr_stripe)
    return {"psnr": psnr(sr, hr_stripe), "ssim": ssim(sr, hr_stripe)}


def bicubic_score(lr_stripe: np.ndarray, hr_stripe: np.ndarray, s: int) -> dict[str, float]:
    from napari_srgan_sqe.metrics import psnr, ssim
    from napari_srgan_sqe.models.blocks import bicubic_upscale

    up = bicubic_upscale(lr_stripe, s)
    return {"psnr": psnr(up, hr_stripe), "ssim": ssim(up, hr_stripe)}


def to_gain(history: list[dict], gain: float) -> tuple[float | None, int | None]:
    """(seconds, step) when validation PSNR first reached before + gain; None if never.

    The seconds come from the library's `seconds_to_gain`; the step is that validation's.
    """
    import math

    from napari_srgan_sqe.training.finetune import seconds_to_gain

    sec = seconds_to_gain(history, gain)
    if math.isinf(sec):
        return None, None
    step = next(r["step"] for r in history if r.get("kind") == "val" and r["elapsed_s"] == sec)
    return round(sec, 2), step


def run_mode(model, mode: str, hr: np.ndarray, lr: np.ndarray, cfg) -> dict:
    from napari_srgan_sqe.training.finetune import run_finetune, train_width

    s = model.scale
    regions = [(lr, hr)] if mode == "paired" else [lr]
    t0 = time.perf_counter()
    res = run_finetune(model, regions, mode=mode, config=cfg, device="cpu")
    wall = time.perf_counter() - t0
    tw = train_width(lr.shape[1], mode, cfg, s)
    lr_stripe, hr_stripe = lr[:, tw:], hr[:, s * tw :]
    steps = [r for r in res.history if r["kind"] == "step"]
    out = {
        "before": res.before,
        "after": res.after,
        "gain_db": res.after["psnr"] - res.before["psnr"],
        "improved": res.improved,
        "best_step": res.best_step,
        "wall_s": round(wall, 2),
        "s_per_step": round(
            (steps[-1]["elapsed_s"] - steps[0]["elapsed_s"]) / max(1, len(steps) - 1), 4
        ),
        "bicubic_on_stripe": bicubic_score(lr_stripe, hr_stripe, s),
        "notes": res.notes,
        "curve": {
            "loss": [(r["step"], r["loss"]) for r in steps],
            "val": [
                (r["step"], r["elapsed_s"], r["psnr"]) for r in res.history if r["kind"] == "val"
            ],
        },
    }
    for gain in (0.5, 1.0):
        sec, step = to_gain(res.history, gain)
        out[f"seconds_to_+{gain}dB"], out[f"steps_to_+{gain}dB"] = sec, step
    if mode == "self-supervised":
        out["validation"] = "pseudo-pairs: SR(D_s(LR stripe)) vs LR stripe"
        out["true_hr"] = {
            "before": true_hr_score(res.parent, lr_stripe, hr_stripe),
            "after": true_hr_score(res.model, lr_stripe, hr_stripe),
        }
    else:
        out["validation"] = "SR(LR stripe) vs HR stripe"
    return out


def plot(results: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for mode, r in results.items():
        steps, loss = zip(*r["curve"]["loss"], strict=True)
        k = min(5, len(loss))  # a short run has fewer steps than the window
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax1.plot(steps, loss, alpha=0.25)
        ax1.plot(
            steps[k - 1 :], smooth, label=f"{mode} (mean of {k})", color=ax1.lines[-1].get_color()
        )
        _, secs, psnr = zip(*r["curve"]["val"], strict=True)
        line = ax2.plot(secs, np.asarray(psnr) - psnr[0], marker="o", ms=3, label=mode)[0]
        line.set_color(ax1.lines[-1].get_color())
    ax2.axhline(0.5, color="grey", ls="--", lw=1, label="+0.5 dB")
    ax1.set(xlabel="step", ylabel="training loss", title="training loss")
    ax2.set(
        xlabel="seconds (CPU, 1 thread)",
        ylabel="validation PSNR gain (dB)",
        title="held-out stripe",
    )
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--val-every", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--image", default=None, help="validation image name (default: the first)")
    p.add_argument(
        "--model", default=None, help="base model file (default: bundled or random light)"
    )
    p.add_argument("--plot", type=Path, default=PLOT)
    args = p.parse_args(argv)

    import torch

    from napari_srgan_sqe.config import FinetuneConfig
    from napari_srgan_sqe.degradation import degrade
    from napari_srgan_sqe.training.data import load_rgb

    torch.set_num_threads(args.threads)
    name = args.image or json.loads(SPLIT.read_text())["val"][0]
    hr = load_rgb(DATA / name)
    model, described = base_model(args.model)
    s = model.scale
    hr = hr[: hr.shape[0] // s * s, : hr.shape[1] // s * s]
    lr = degrade(hr, s)
    cfg = FinetuneConfig(steps=args.steps, val_every=args.val_every, seed=0)
    results = {mode: run_mode(model, mode, hr, lr, cfg) for mode in ("paired", "self-supervised")}
    title = f"{name}, base: {described}, {args.steps} steps, lr {cfg.lr}"
    if args.plot:
        plot(results, args.plot, title)
    for r in results.values():
        r.pop("curve")
    report = {
        "benchmark": "finetune",
        "image": name,
        "image_hr_px": list(hr.shape[:2]),
        "region_lr_px": list(lr.shape[:2]),
        "base_model": described,
        "device": "cpu",
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "config": json.loads(cfg.model_dump_json()),
        "modes": results,
        "plot": str(args.plot.relative_to(ROOT))
        if args.plot and args.plot.is_relative_to(ROOT)
        else None,
    }
    json.dump(report, sys.stdout, indent=2, default=str)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
