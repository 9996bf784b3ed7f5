"""Measuring functions shared by `srgan-sqe bench` and benchmarks/pipeline.py.

Pipeline efficiency = output Mpx/s of the lazy engine on a slide region (read, tile,
halo, forward, crop, uint8, stitch) / the raw batched forward rate on the same tiles
in the same run, at batch 1 and at the pipeline's batch size, whichever is faster.
The raw rate counts only useful output pixels (the halo margins are excluded from
both), so the ratio is the engine's own overhead; the halo's cost,
(tile + 2 halo)^2 / tile^2 more input per output pixel, is reported beside it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from napari_srgan_sqe.inference.engine import super_resolve
from napari_srgan_sqe.inference.tiling import TileGrid, default_tile, halo_overhead, read_region

__all__ = [
    "bench_model",
    "load_average",
    "measure_pipeline",
    "peak_rss_mb",
    "pick_region",
    "raw_forward",
]


def bench_model(name: str) -> Any:
    """A model by name / path, or `preset:NAME` with random weights (seed 0): the
    throughput of a network does not depend on its weights."""
    if name.startswith("preset:"):
        import torch

        from napari_srgan_sqe.config import ModelConfig, generator_preset
        from napari_srgan_sqe.models.modelfile import new_model

        preset = name.split(":", 1)[1]
        torch.manual_seed(0)
        return new_model(ModelConfig(name=name, generator=generator_preset(preset)))
    from napari_srgan_sqe.models.modelfile import load_model

    return load_model(name)


def load_average() -> list[float]:
    """1, 5 and 15-minute load averages (other jobs on the machine skew timings)."""
    import os

    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        return []


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _sync(device: Any) -> None:
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        torch.cuda.synchronize(device)


def raw_forward(predictor: Any, tiles: np.ndarray, *, batch: int, crop: int) -> dict[str, float]:
    """Time `model(x)` alone on float tiles already on the device, in batches.

    Returns useful output Mpx (margins of `crop` LR px excluded), wall seconds,
    process CPU seconds and Mpx/s.
    """
    import torch

    model, dev, s = predictor.model, predictor.device, predictor.scale
    x = torch.from_numpy(tiles).to(dev).permute(0, 3, 1, 2).float().div_(255.0)
    x = x.contiguous(memory_format=torch.channels_last)
    if predictor.precision == "fp32" or dev.type == "cpu":
        ctx: Any = torch.autocast(device_type=dev.type, enabled=False)
    else:
        dtype = torch.bfloat16 if predictor.precision == "bf16" else torch.float16
        ctx = torch.autocast(device_type=dev.type, dtype=dtype)
    with torch.inference_mode(), ctx:
        model(x[:1])  # warm-up (allocator, kernels)
        _sync(dev)
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, len(x), batch):
            model(x[i : i + batch])
        _sync(dev)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    n, h, w, _ = tiles.shape
    mpx = n * (h - 2 * crop) * (w - 2 * crop) * s * s / 1e6
    return {"mpx": mpx, "seconds": seconds, "cpu_seconds": cpu, "mpx_per_s": mpx / seconds}


def pick_region(shape: tuple[int, int], *, tile: int, n_tiles: int) -> tuple[int, int, int, int]:
    """A tile-aligned square region (x, y, w, h) of about n_tiles tiles near the centre."""
    side = max(1, int(round(n_tiles**0.5)))
    side = min(side, shape[0] // tile or 1, shape[1] // tile or 1)
    h = min(side * tile, shape[0])
    w = min(side * tile, shape[1])
    y = ((shape[0] - h) // 2 // tile) * tile
    x = ((shape[1] - w) // 2 // tile) * tile
    return x, y, w, h


def _n_tiles(n: int) -> str:
    return f"{n} tile" if n == 1 else f"{n} tiles"


def measure_pipeline(
    levels: Any,
    model: Any,
    *,
    device: str = "auto",
    tile: int | None = None,
    batch: int = 4,
    region: tuple[int, int, int, int] | None = None,
    seconds: float | None = None,
    repeats: int = 2,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Pipeline vs raw forward on one region of LR level 0, measured in one run.

    `region` (x, y, w, h) in LR px, or chosen near the centre so that the pipeline
    takes about `seconds` (default 4 tiles). After a warm-up of both paths it runs
    raw, then (pipeline on a fresh pyramid, raw) `repeats` times and compares the
    medians, so drift of the clock speed affects both sides alike. `progress` is
    called with a short line as each stage starts.
    """

    def say(text: str) -> None:
        if progress is not None:
            progress(text)

    sr = super_resolve(levels, model, device=device, tile=tile, batch=batch, cache_mb=64)
    pred, lr0 = sr.predictor, sr.lr_levels[0]
    tile, halo, s = sr.tile, sr.halo, sr.scale
    if region is None:
        n_tiles = 4
        if seconds is not None:  # estimate from one tile
            say(f"timing one {tile}-px tile to size the region")
            probe = read_region(
                lr0, 0, min(tile, lr0.shape[0]), 0, min(tile, lr0.shape[1]), halo=halo
            )
            t0 = time.perf_counter()
            pred.run(probe[None], crop=halo)
            n_tiles = max(1, int(seconds / max(time.perf_counter() - t0, 1e-6)))
        region = pick_region((int(lr0.shape[0]), int(lr0.shape[1])), tile=tile, n_tiles=n_tiles)
    x, y, w, h = region
    grid = TileGrid(int(lr0.shape[0]), int(lr0.shape[1]), tile)
    idx = list(grid.covering(y, y + h, x, x + w))
    shapes = {grid.bounds(*t)[1] - grid.bounds(*t)[0] for t in idx}
    shapes |= {grid.bounds(*t)[3] - grid.bounds(*t)[2] for t in idx}
    if shapes != {tile}:
        raise ValueError(f"region {region} is not aligned to whole {tile}-px tiles")
    say(f"reading {_n_tiles(len(idx))} of {tile} LR px (+ {halo} px halo) at x={x} y={y}")
    tiles = np.stack([read_region(lr0, *grid.bounds(*t), halo=halo) for t in idx])

    sizes = sorted({1, batch})  # on a CPU one tile at a time can be the fastest

    def raw_round() -> dict[int, dict[str, float]]:
        return {b: raw_forward(pred, tiles, batch=b, crop=halo) for b in sizes}

    batches = " and ".join(str(b) for b in sizes)
    say("warm-up")
    raw_forward(pred, tiles[:batch], batch=batch, crop=halo)  # warm-up, both paths
    pred.run(tiles[:batch], crop=halo)
    say(f"raw forward 1 of {repeats + 1}: {_n_tiles(len(idx))} at batch {batches}")
    raws = [raw_round()]
    pipes, pipe_cpu = [], []
    comb = sr._level0.combiner
    for r in range(repeats):
        say(f"pipeline {r + 1} of {repeats}: lazy SR of the region, {_n_tiles(len(idx))}")
        fresh = super_resolve(levels, sr.model, predictor=pred, tile=tile, batch=batch, cache_mb=64)
        b0, n0 = comb.batches, comb.tiles
        t0, c0 = time.perf_counter(), time.process_time()
        out = np.asarray(fresh[0][y * s : (y + h) * s, x * s : (x + w) * s])
        pipes.append(time.perf_counter() - t0)
        pipe_cpu.append(time.process_time() - c0)
        mean_batch = (comb.tiles - n0) / max(comb.batches - b0, 1)
        say(f"raw forward {r + 2} of {repeats + 1}: {_n_tiles(len(idx))} at batch {batches}")
        raws.append(raw_round())
    mpx = out.shape[0] * out.shape[1] / 1e6
    by_batch = {b: float(np.median([r[b]["mpx_per_s"] for r in raws])) for b in sizes}
    best = max(sizes, key=lambda b: by_batch[b])  # the best raw rate: a conservative ratio
    raw_rate = by_batch[best]
    pipe_rate = mpx / float(np.median(pipes))
    # CPU seconds per output Mpx: robust to other jobs taking the cores (shared machines)
    raw_cpu = float(np.median([r[best]["cpu_seconds"] for r in raws])) / raws[0][best]["mpx"]
    cpu_eff = raw_cpu / (float(np.median(pipe_cpu)) / mpx)
    overhead = halo_overhead(tile, halo)
    result = {
        "model": getattr(sr.model, "name", "?"),
        "device": str(getattr(pred, "device_name", pred.device)),
        "precision": pred.precision,
        "region_xywh": list(region),
        "tile": tile,
        "halo": halo,
        "batch": batch,
        "tiles": len(idx),
        "output_mpx": round(mpx, 3),
        "raw_forward_mpx_per_s": round(raw_rate, 4),
        "raw_forward_mpx_per_s_by_batch": {b: round(v, 4) for b, v in by_batch.items()},
        "raw_forward_runs_mpx_per_s": [
            {b: round(v["mpx_per_s"], 4) for b, v in r.items()} for r in raws
        ],
        "pipeline_runs_s": [round(p, 3) for p in pipes],
        "pipeline_mpx_per_s": round(pipe_rate, 4),
        "pipeline_mean_batch": round(mean_batch, 2),
        "efficiency": round(pipe_rate / raw_rate, 4),
        "efficiency_cpu_time": round(cpu_eff, 4),
        "raw_cpu_s_per_mpx": round(raw_cpu, 4),
        "pipeline_cpu_s_per_mpx": round(float(np.median(pipe_cpu)) / mpx, 4),
        "halo_overhead": round(overhead, 4),
        "raw_forward_incl_halo_mpx_per_s": round(raw_rate * overhead, 4),
        "efficiency_incl_halo": round(pipe_rate / (raw_rate * overhead), 4),
        "default_tile": default_tile(str(getattr(pred, "device_name", pred.device))),
    }
    return result
