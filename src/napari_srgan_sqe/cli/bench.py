"""`srgan-sqe bench`: raw forward vs lazy pipeline on the bundled sample slide.

Progress goes to stderr, one line per stage; the result is a short summary, or the
full JSON with `--json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from napari_srgan_sqe.cli import SAMPLE_HELP, slide_path


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
        "--seconds",
        type=float,
        default=20.0,
        help="about how long one pipeline run should take (sizes the region from one "
        "tile's time); the bench runs the pipeline twice and the raw forward three times at "
        "each batch size: 8x this in all or more (much more on a busy machine)",
    )
    parser.add_argument(
        "--input",
        type=slide_path,
        default=None,
        help=f"slide to read (default: the bundled sample); {SAMPLE_HELP}",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the full result as JSON instead of a summary"
    )


class Progress:
    """One line per stage on stderr, with the seconds since the start."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.1f} s] {text}", file=sys.stderr, flush=True)


def summary(r: dict[str, Any]) -> str:
    """A few lines a person reads: rates, efficiency, memory, what a slide would take."""
    raw, pipe = r["raw_forward_mpx_per_s"], r["pipeline_mpx_per_s"]
    best_batch = max(r["raw_forward_mpx_per_s_by_batch"].items(), key=lambda kv: kv[1])[0]
    tiles = f"{r['tiles']} tile" + ("" if r["tiles"] == 1 else "s")
    gpx_min = 1000.0 / pipe / 60.0 if pipe > 0 else float("inf")
    lines = [
        f"{r['model']} on {r['device']} ({r['precision']}, torch {r['torch']}, "
        f"{r['threads']} threads)",
        f"  region: {tiles} of {r['tile']} LR px (halo {r['halo']} px) -> "
        f"{r['output_mpx']:.1f} Mpx of output",
        f"  raw forward: {raw:.2f} Mpx/s of output (best at batch {best_batch})",
        f"  pipeline:    {pipe:.2f} Mpx/s end to end (read, tile, forward, stitch)",
        f"  efficiency:  {r['efficiency']:.2f} of the raw forward "
        f"({r['efficiency_cpu_time']:.2f} by CPU time); {r['efficiency_incl_halo']:.2f} "
        f"counting the halo's {r['halo_overhead']:.2f}x extra input",
        f"  at this rate one gigapixel of output takes about {gpx_min:.0f} min; "
        f"peak memory {r['peak_rss_mb']:.0f} MB",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    progress = Progress()
    progress(f"loading {args.model}")
    import torch

    from napari_srgan_sqe.inference.bench import bench_model, measure_pipeline, peak_rss_mb
    from napari_srgan_sqe.io.sample import sample_slide_path
    from napari_srgan_sqe.io.slides import open_slide

    model = bench_model(args.model)
    source = args.input if args.input is not None else sample_slide_path()
    progress(f"opening {source.name}")
    slide = open_slide(source)
    result = measure_pipeline(
        slide,
        model,
        device=args.device,
        tile=args.tile,
        batch=args.batch,
        seconds=args.seconds,
        progress=progress,
    )
    result.update(
        {
            "input": str(source),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }
    )
    progress("done")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(summary(result))
    return 0
