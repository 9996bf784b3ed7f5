"""`srgan-sqe enhance`: super-resolve a slide to a pyramidal OME-Zarr or OME-TIFF."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_srgan_sqe.cli import UserError, parse_region


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input", type=Path, help="slide or image (.svs .ndpi .tif .ome.zarr .png ...)"
    )
    parser.add_argument(
        "output",
        type=Path,
        help="output: .ome.zarr / .zarr (OME-Zarr) or .ome.tif / .tif (OME-TIFF)",
    )
    parser.add_argument(
        "--model", default="srgan-sqe-he-x4", help="bundled model name or .safetensors file"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument(
        "--region", type=parse_region, default=None, metavar="X,Y,W,H",
        help="only this region, in level-0 pixels of the input",
    )  # fmt: skip
    parser.add_argument(
        "--tissue-only", action="store_true",
        help="bicubic up-sampling instead of the model for tiles without tissue",
    )  # fmt: skip
    parser.add_argument(
        "--tile",
        type=int,
        default=None,
        help="tile side in input pixels (default 512)",
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="tiles per forward pass (default 16)"
    )
    parser.add_argument("--scale", type=int, default=None, help="refuse a model of another scale")
    parser.add_argument(
        "--scheduler", default=None, metavar="ADDRESS",
        help="dask.distributed scheduler address (e.g. tcp://host:8786) to compute on",
    )  # fmt: skip
    parser.add_argument(
        "--no-resume", action="store_true",
        help="restart an interrupted export (one with another model, slide, region, tile "
        "or --tissue-only is always restarted)",
    )  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_srgan_sqe.inference.bench import peak_rss_mb
    from napari_srgan_sqe.inference.export import enhance_slide
    from napari_srgan_sqe.inference.tiling import DataError

    if args.tile is not None and args.tile < 8:
        raise UserError(f"--tile must be at least 8 pixels, got {args.tile}")
    if args.batch is not None and args.batch < 1:
        raise UserError(f"--batch must be at least 1, got {args.batch}")
    bars: list = []  # made at the first progress report, after the checks passed

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="chunk", dynamic_ncols=True, desc="enhance"))
        bars[0].total = total
        bars[0].update(done - bars[0].n)

    stats: dict = {}
    try:
        path = enhance_slide(
            args.input,
            args.output,
            model=args.model,
            device=args.device,
            region=args.region,
            tissue_only=args.tissue_only,
            tile=args.tile,
            batch=args.batch,
            scale=args.scale,
            scheduler=args.scheduler,
            progress=progress,
            resume=not args.no_resume,
            overwrite=args.overwrite,
            stats=stats,
        )
    except DataError as exc:
        raise UserError(str(exc)) from exc
    except RuntimeError as exc:  # models.predictor.DeviceError: e.g. no CUDA here
        if type(exc).__name__ == "DeviceError":
            raise UserError(str(exc)) from exc
        raise
    except OSError as exc:  # io.pyramid.ExportError (disk full ...) and friends
        if type(exc).__name__ == "ExportError" or exc.filename:
            raise UserError(str(exc)) from exc
        raise
    finally:
        for bar in bars:
            bar.close()
    h, w = stats.get("output_shape", (0, 0))
    print(f"wrote {path}")
    print(
        f"{w} x {h} px ({stats.get('output_mpx', 0):.1f} Mpx) in {stats.get('seconds', 0):.1f} s: "
        f"{stats.get('mpx_per_s', 0):.2f} Mpx/s on {stats.get('device', '?')}; "
        f"peak RSS {peak_rss_mb():.0f} MiB"
    )
    return 0
