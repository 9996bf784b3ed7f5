"""Pipeline efficiency: lazy SR of a real slide region vs the raw batched forward.

Prints JSON. The pipeline is the engine end to end (read the slide lazily, tile,
halo, forward, crop, uint8, stitch) on a tile-aligned region of the CMU slide; the
raw rate is `model(x)` alone on the same tiles, already on the device, in batches,
measured in the same run (see napari_srgan_sqe.inference.bench). `efficiency`
compares useful output pixels on both sides; `halo_overhead` is the extra input
the halo costs, reported apart, and `efficiency_incl_halo` folds it in.

    python benchmarks/pipeline.py [--model preset:light] [--tile 256] [--tiles 16]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_srgan_sqe.inference.bench import (
    bench_model,
    load_average,
    measure_pipeline,
    peak_rss_mb,
    pick_region,
)
from napari_srgan_sqe.io.sample import sample_slide_path
from napari_srgan_sqe.io.slides import open_slide


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=Path, default=sample_slide_path())
    ap.add_argument("--model", default="preset:light", help="name, file or preset:NAME")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tile", type=int, default=None, help="LR tile side (default per device)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tiles", type=int, default=16, help="tiles in the region (a square)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import torch

    slide = open_slide(args.input)
    model = bench_model(args.model)
    tile = args.tile
    if tile is None:
        from napari_srgan_sqe.inference.tiling import default_tile
        from napari_srgan_sqe.models.predictor import resolve_device

        tile = default_tile(str(resolve_device(args.device)))
    h, w, _ = slide.levels[0].shape
    region = pick_region((h, w), tile=tile, n_tiles=args.tiles)
    before = load_average()
    result = measure_pipeline(
        slide, model, device=args.device, tile=tile, batch=args.batch, region=region,
        repeats=args.repeats,
    )  # fmt: skip
    result.update(
        {
            "input": str(args.input),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "load_average_before": before,
            "load_average_after": load_average(),
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
