"""Model throughput: output Mpx/s of the raw batched forward pass, per preset and device.

Prints JSON. For each generator preset: parameters, halo, FLOPs per output pixel
(conv multiply-adds counted with forward hooks, x2) and the median output Mpx/s of
`model(x)` on a batch of LR tiles (channels_last, inference mode), on the CPU and,
when CUDA is present, on the GPU in fp32 and bf16.

    python benchmarks/forward.py [--presets light paper tiny] [--models srgan-sqe-he-x4]
                                 [--batch 8] [--tile 64]

`--models` adds model names or files (e.g. the bundled model, whose generator need not
be a preset) to the same run, so their rates compare with the presets'.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn

from napari_srgan_sqe.config import ModelConfig, generator_preset
from napari_srgan_sqe.models.modelfile import load_model, new_model


def conv_macs_per_output_pixel(model: nn.Module, tile: int) -> float:
    """Multiply-adds of all convolutions per HR output pixel, counted with hooks."""
    total = 0

    def hook(mod: nn.Conv2d, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        k = mod.kernel_size[0] * mod.kernel_size[1]
        total += out.numel() * (mod.in_channels // mod.groups) * k

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.inference_mode():
        y = model(torch.rand(1, 3, tile, tile))
    for h in hooks:
        h.remove()
    return total / (y.shape[2] * y.shape[3])


def throughput(
    model: nn.Module,
    device: torch.device,
    dtype: torch.dtype | None,
    batch: int,
    tile: int,
    min_time: float = 3.0,
) -> dict:
    """Median output Mpx/s of the forward pass (after warm-up)."""
    model = model.to(device).eval().to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, tile, tile, device=device).contiguous(
        memory_format=torch.channels_last
    )
    ctx = (
        torch.autocast(device_type=device.type, dtype=dtype)
        if dtype is not None
        else torch.autocast(device_type=device.type, enabled=False)
    )

    def once() -> tuple[float, float]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.inference_mode(), ctx:
            y = model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        mpx = y.shape[0] * y.shape[2] * y.shape[3] / 1e6
        return mpx / dt, mpx / max(dc / torch.get_num_threads(), 1e-9)

    once()
    once()
    runs, t_start = [], time.perf_counter()
    while len(runs) < 3 or (time.perf_counter() - t_start < min_time and len(runs) < 50):
        runs.append(once())
    rates = [r[0] for r in runs]
    out = {
        "mpx_per_s": round(statistics.median(rates), 3),
        "best_mpx_per_s": round(max(rates), 3),
        "repeats": len(rates),
    }
    if device.type == "cpu":
        # Output Mpx per (process CPU second / threads): what the wall-clock rate would
        # be if every thread ran undisturbed; robust to other processes on the machine.
        out["cpu_time_mpx_per_s"] = round(statistics.median(r[1] for r in runs), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="*", default=["light", "paper", "tiny"])
    ap.add_argument("--models", nargs="*", default=[], help="model names or files")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tile", type=int, default=64, help="LR tile side")
    ap.add_argument("--scale", type=int, default=4)
    args = ap.parse_args()

    torch.manual_seed(0)
    devices: list[tuple[str, torch.device, torch.dtype | None]] = [
        ("cpu", torch.device("cpu"), None)
    ]
    if torch.cuda.is_available():
        devices += [
            ("cuda-fp32", torch.device("cuda"), None),
            ("cuda-bf16", torch.device("cuda"), torch.bfloat16),
        ]
        torch.backends.cudnn.benchmark = True

    out: dict = {
        "batch": args.batch,
        "lr_tile": args.tile,
        "scale": args.scale,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "presets": {},
    }
    entries = [
        (p, new_model(ModelConfig(name=p, generator=generator_preset(p, args.scale))))
        for p in args.presets
    ]
    entries += [(m, load_model(m)) for m in args.models]
    for name, model in entries:
        gen = model.config.generator
        macs = conv_macs_per_output_pixel(model.eval(), args.tile)
        entry = {
            "arch": gen.arch,
            "blocks": gen.n_blocks,
            "channels": gen.channels,
            "params": sum(p.numel() for p in model.generator.parameters()),
            "halo": model.halo,
            "flops_per_output_px": round(2 * macs),
            "throughput": {},
        }
        for label, dev, dtype in devices:
            entry["throughput"][label] = throughput(model, dev, dtype, args.batch, args.tile)
        out["presets"][name] = entry
        print(json.dumps({name: entry}), flush=True, file=sys.stderr)
    out["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
