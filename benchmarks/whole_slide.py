"""Whole slide: `enhance` of the CMU slide to OME-Zarr; output Mpx/s and peak RSS.

Prints JSON. Runs `enhance_slide` (the code behind `srgan-sqe enhance`) in this
process on the whole slide (or `--region x,y,w,h`), with the light preset and random
weights until the shipped model exists (throughput does not depend on weights),
then reads the result back to check its shape. Peak RSS is the process maximum
(resource.getrusage), i.e. model, engine, reader and writer together.

    python benchmarks/whole_slide.py [--model preset:light] [--out /tmp/sr.ome.zarr]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from napari_srgan_sqe.inference.bench import bench_model, load_average, peak_rss_mb
from napari_srgan_sqe.inference.export import enhance_slide
from napari_srgan_sqe.io.sample import sample_slide_path
from napari_srgan_sqe.io.slides import open_slide


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=Path, default=sample_slide_path())
    ap.add_argument("--model", default="preset:light", help="name, file or preset:NAME")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tile", type=int, default=None)
    ap.add_argument("--region", default=None, help="x,y,w,h in LR level-0 px")
    ap.add_argument("--tissue-only", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="output (default: a temporary folder)")
    args = ap.parse_args()

    import torch

    tmp = None
    out = args.out
    if out is None:
        tmp = Path(tempfile.mkdtemp(prefix="srgan-sqe-bench-"))
        out = tmp / "sr.ome.zarr"
    region = tuple(int(v) for v in args.region.split(",")) if args.region else None
    rss_start = peak_rss_mb()
    before = load_average()
    stats: dict = {}
    t0 = time.perf_counter()
    try:
        enhance_slide(
            args.input, out, model=bench_model(args.model), device=args.device,
            region=region, tissue_only=args.tissue_only, tile=args.tile, stats=stats,
            overwrite=True,
        )  # fmt: skip
        wall = time.perf_counter() - t0
        levels = [list(lv.shape) for lv in open_slide(out).levels]
        size_mb = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file()) / 2**20
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    h, w = stats["output_shape"]
    result = {
        "input": str(args.input),
        "region_xywh": list(region) if region else None,
        "model": stats["model"],
        "device": stats["device"],
        "tile": stats["tile"],
        "tissue_only": args.tissue_only,
        "output_px": [h, w],
        "output_mpx": round(h * w / 1e6, 2),
        "levels": levels,
        "zarr_mb": round(size_mb, 1),
        "tiles_computed": stats["tiles_computed"],
        "seconds": round(wall, 1),
        "mpx_per_s": round(h * w / 1e6 / wall, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_rss_before_mb": round(rss_start, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_before": before,
        "load_average_after": load_average(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
