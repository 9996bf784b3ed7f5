"""`srgan-sqe bench`: raw forward vs lazy pipeline on the bundled sample slide (JSON)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "CMU-1-Small-Region.svs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="srgan-sqe-he-x4",
        help="bundled model, .safetensors file, or preset:light / preset:paper / preset:tiny "
        "(random weights: throughput does not depend on them)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument(
        "--tile", type=int, default=None, help="LR tile side (default 256 CPU / 512 GPU)"
    )
    parser.add_argument("--batch", type=int, default=4, help="tiles per forward pass")
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="about how long the pipeline run should take"
    )
    parser.add_argument(
        "--input", type=Path, default=SAMPLE, help="slide to read (default: the sample)"
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from napari_srgan_sqe.inference.bench import bench_model, measure_pipeline, peak_rss_mb
    from napari_srgan_sqe.io.slides import open_slide

    slide = open_slide(args.input)
    result = measure_pipeline(
        slide,
        bench_model(args.model),
        device=args.device,
        tile=args.tile,
        batch=args.batch,
        seconds=args.seconds,
    )
    result.update(
        {
            "input": str(args.input),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }
    )
    print(json.dumps(result, indent=2))
    return 0
