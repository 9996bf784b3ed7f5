"""SR3 against the default model: seconds per output megapixel per sample, in one run.

Prints JSON. Both models go through the engine as a viewer uses it (`super_resolve`
on a region of the bundled sample slide, exact levels, tiles read with their
margin), on the same region and device, so the ratio holds whatever this machine's
speed. For SR3 the sampling step count is varied (the model's own first); each
row gives seconds per output Mpx per sample, the ratio to the default model, and
the wait for a 1024 x 1024 px view (a 256 x 256 LR region at 4x), measured.

    python benchmarks/sr3.py [--model sr3-he-x4] [--steps 4 8 16] [--device cpu]
                             [--threads 2] [--precision auto]

On CUDA the default precision is bf16 (`Predictor`'s auto); fp32 is measured too.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from napari_srgan_sqe.inference.engine import super_resolve
from napari_srgan_sqe.io.sample import sample_slide_path
from napari_srgan_sqe.io.slides import open_slide
from napari_srgan_sqe.models.modelfile import load_model, with_sampling_steps
from napari_srgan_sqe.models.predictor import Predictor, resolve_device

VIEW_LR = 256  # LR px a side: a 1024 x 1024 px view at 4x


def timed_view(model, lr: np.ndarray, device: str, precision: str, seed: int) -> float:
    """Seconds to super-resolve the whole LR region (no caches shared between calls)."""
    pred = Predictor(model, device=device, precision=precision, seed=seed)
    t0 = time.perf_counter()
    pyramid = super_resolve(lr, model, predictor=pred, tile=VIEW_LR, cache_mb=0)
    out = np.asarray(pyramid.exact_levels()[0])
    if pred.device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    assert out.shape[:2] == (lr.shape[0] * model.scale, lr.shape[1] * model.scale)
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="sr3-he-x4", help="the SR3 model (name or file)")
    ap.add_argument("--baseline", default="srgan-sqe-he-x4", help="the model to compare with")
    ap.add_argument("--steps", type=int, nargs="+", default=None, help="SR3 step counts")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    precisions = ["fp32"] + (["auto"] if device.type == "cuda" else [])

    slide = open_slide(sample_slide_path())
    lr = np.ascontiguousarray(
        np.asarray(slide.levels[0][800 : 800 + VIEW_LR, 1200 : 1200 + VIEW_LR])
    )
    sr3 = load_model(args.model)
    base = load_model(args.baseline)
    own = sr3.descriptor.steps
    steps = args.steps or sorted({max(1, own // 2), own, own * 2})
    rows = []
    mpx = (VIEW_LR * 4) ** 2 / 1e6
    for precision in precisions:
        timed_view(base, lr, str(device), precision, 0)  # warm-up
        b = min(timed_view(base, lr, str(device), precision, 0) for _ in range(args.repeats))
        rows.append(
            {
                "model": base.name,
                "precision": precision,
                "steps": 1,
                "s_per_mpx_per_sample": b / mpx,
                "view_1024_s": b,
                "ratio_to_default": 1.0,
            }
        )
        for n in steps:
            model = with_sampling_steps(sr3, n)
            timed_view(model, lr[:64, :64], str(device), precision, 0)  # warm-up
            t = min(timed_view(model, lr, str(device), precision, k) for k in range(args.repeats))
            rows.append(
                {
                    "model": sr3.name,
                    "precision": precision,
                    "steps": n,
                    "shipped_steps": n == own,
                    "s_per_mpx_per_sample": t / mpx,
                    "view_1024_s": t,
                    "ratio_to_default": t / b,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    print(
        json.dumps(
            {
                "benchmark": "sr3",
                "device": Predictor(base, device=str(device)).device_name,
                "threads": torch.get_num_threads(),
                "machine": platform.processor() or platform.machine(),
                "view_lr_px": VIEW_LR,
                "sr3_macs_per_px_per_step": sr3.descriptor.macs_per_pixel,
                "default_macs_per_px": base.descriptor.macs_per_pixel,
                "rows": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
