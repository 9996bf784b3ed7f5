"""Probes of why the scanner model gains only about 1 dB on JPEG LR (docs/real-slides.md,
"Where it still fails"): each asks whether one thing is what is missing.

    python experiments/jpeg_probes.py --out docs/eval/real-slides/probes.json

1. block phase: the SR error by position in the 8 x 8 JPEG block of the LR (a model
   blind to the block grid would err most at block edges);
2. geometric self-ensemble (mean over the 8 flips / rotations) at inference;
3. seen vs unseen images: the gain on 6 training images against the 6 held-out ones
   (a data-starved model gains much more on the images it trained on);
4. chroma: JPEG in YCbCr 4:2:0 against RGB without subsampling, at Q75 and Q90,
   with the PSNR of the coded LR against the uncoded LR.
All on the first 768 x 768 px (40x) of each image; LR = D_4(HR), then coded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from napari_srgan_sqe import load_model
from napari_srgan_sqe.degradation import degrade
from napari_srgan_sqe.io.codecs import decode, encode_jpeg
from napari_srgan_sqe.metrics import psnr
from napari_srgan_sqe.models.blocks import bicubic_upscale
from napari_srgan_sqe.models.zssr import self_ensemble
from napari_srgan_sqe.training.data import load_rgb

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "monuseg_train"
SIDE = 768


def _sr(model, lr: np.ndarray, ensemble: bool = False) -> np.ndarray:  # noqa: ANN001
    x = torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255.0

    def run(t: torch.Tensor) -> torch.Tensor:
        return model.infer_batch(t, seed=None, origins=None)

    with torch.inference_mode():
        y = self_ensemble(run, x) if ensemble else run(x)
    y = y[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0
    return np.rint(y).astype(np.uint8)


def _lr(hr: np.ndarray, quality: int | None, colour: str = "ycbcr420") -> np.ndarray:
    lr = degrade(hr, 4, dtype=np.uint8)
    return lr if quality is None else decode(encode_jpeg(lr, quality, colour))


def block_phase(model, images: list[np.ndarray]) -> dict:  # noqa: ANN001
    """PSNR of SR and bicubic per LR position in the 8 x 8 block (Q75, 4:2:0)."""
    sums = {"sr": np.zeros((8, 8)), "bicubic": np.zeros((8, 8))}
    for hr in images:
        lr = _lr(hr, 75)
        for key, up in (("sr", _sr(model, lr)), ("bicubic", bicubic_upscale(lr, 4))):
            err = ((up.astype(np.float64) - hr) ** 2).mean(axis=2)
            n = SIDE // 4
            per_lr = err.reshape(n, 4, n, 4).mean(axis=(1, 3))  # one value per LR pixel
            sums[key] += per_lr.reshape(n // 8, 8, n // 8, 8).mean(axis=(0, 2))
    out = {}
    for key, s in sums.items():
        p = 10 * np.log10(255.0**2 / (s / len(images)))
        out[key] = np.round(p, 2).tolist()
    gain = np.asarray(out["sr"]) - np.asarray(out["bicubic"])
    edge = np.zeros((8, 8), bool)
    edge[[0, 7], :] = edge[:, [0, 7]] = True
    out["gain_at_block_edges_db"] = round(float(gain[edge].mean()), 3)
    out["gain_inside_blocks_db"] = round(float(gain[~edge].mean()), 3)
    return out


def gains(model, images: list[np.ndarray], quality: int | None, **kw) -> float:  # noqa: ANN001
    g = []
    for hr in images:
        lr = _lr(hr, quality)
        g.append(psnr(_sr(model, lr, **kw), hr) - psnr(bicubic_upscale(lr, 4), hr))
    return round(float(np.mean(g)), 3)


def chroma(model, images: list[np.ndarray]) -> list[dict]:  # noqa: ANN001
    rows = []
    for colour in ("ycbcr420", "rgb"):
        for q in (75, 90):
            lr_psnr, bic, sr = [], [], []
            for hr in images:
                clean = degrade(hr, 4, dtype=np.uint8)
                lr = decode(encode_jpeg(clean, q, colour))
                lr_psnr.append(psnr(lr, clean))
                bic.append(psnr(bicubic_upscale(lr, 4), hr))
                sr.append(psnr(_sr(model, lr), hr))
            rows.append(
                {
                    "colour": colour,
                    "quality": q,
                    "coded_lr_psnr_db": round(float(np.mean(lr_psnr)), 2),
                    "bicubic_db": round(float(np.mean(bic)), 2),
                    "gain_db": round(float(np.mean(sr) - np.mean(bic)), 3),
                }
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="srgan-sqe-he-x4")
    ap.add_argument("--clean-model", default="srgan-sqe-he-x4-clean")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    split = json.loads((ROOT / "experiments" / "monuseg_split.json").read_text())
    val = [load_rgb(DATA / n)[:SIDE, :SIDE] for n in split["val"]]
    train = [load_rgb(DATA / n)[:SIDE, :SIDE] for n in split["train"][:6]]
    model = load_model(args.model).eval()
    clean = load_model(args.clean_model).eval()
    result = {
        "model": args.model,
        "images": f"first {SIDE} x {SIDE} px of the 6 validation images (40x)",
        "block_phase_q75": block_phase(model, val),
        "self_ensemble": {
            f"{name} {label}": {
                "plain_db": gains(m, val, q),
                "ensemble_db": gains(m, val, q, ensemble=True),
            }
            for name, m, label, q in (
                (args.model, model, "jpeg-q75", 75),
                (args.model, model, "jpeg-q30", 30),
                (args.clean_model, clean, "lossless", None),
            )
        },
        "seen_vs_unseen_q75": {
            "train_6_db": gains(model, train, 75),
            "val_6_db": gains(model, val, 75),
        },
        "chroma": chroma(model, val),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
