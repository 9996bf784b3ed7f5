"""`srgan-sqe enhance`: super-resolve a slide to a pyramidal OME-Zarr or OME-TIFF."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from napari_srgan_sqe.cli import SAMPLE_HELP, UserError, parse_region, slide_path
from napari_srgan_sqe.inference.tiling import TILE_RANGE  # one range: tiles, --tile, widget


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input",
        type=slide_path,
        help="slide or image (.svs .ndpi .dcm .tif .ome.zarr .png ...; a folder of DICOM "
        f"files); {SAMPLE_HELP}",
    )
    parser.add_argument(
        "output",
        type=Path,
        help="output: .ome.zarr / .zarr (OME-Zarr) or .ome.tif / .tif (OME-TIFF)",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="bundled model name or .safetensors file (default: chosen by how the input "
        "is stored: srgan-sqe-he-x4-clean for lossless input, srgan-sqe-he-x4 for "
        "JPEG / JPEG 2000 scans or an unknown coding)",
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
        help=f"tile side in input pixels, {TILE_RANGE[0]} to {TILE_RANGE[1]} (default 512 for "
        "an export: fewer halo pixels per tile)",
    )
    parser.add_argument(
        "--batch", type=int, default=None,
        help="tiles per forward pass (default 16); running out of memory stops the export "
        "with a message: lower --tile or --batch",
    )  # fmt: skip
    parser.add_argument("--scale", type=int, default=None, help="refuse a model of another scale")
    parser.add_argument(
        "--threads", type=int, default=None, metavar="N",
        help="CPU threads to use (torch's, and chunks read, computed and written at once; "
        "default: all cores)",
    )  # fmt: skip
    parser.add_argument(
        "--scheduler", default=None, metavar="ADDRESS",
        help="dask.distributed scheduler address (e.g. tcp://host:8786) to compute on; "
        "an address where no scheduler answers fails at once (refused) or after 10 s",
    )  # fmt: skip
    parser.add_argument(
        "--no-resume", action="store_true",
        help="restart an interrupted export (one with another model, slide, region, tile "
        "or --tissue-only is always restarted)",
    )  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument(
        "--compression",
        choices=("lossless", "jpeg"),
        default="lossless",
        help="lossless (default: zlib in OME-TIFF, Blosc-zstd in OME-Zarr; every reader "
        "opens it) or jpeg (OME-TIFF only: YCbCr 4:2:0 JPEG tiles at --quality, read by "
        "OpenSlide, QuPath, Bio-Formats and tifffile; about a seventh of the lossless size "
        "at quality 90)",
    )
    parser.add_argument(
        "--quality",
        type=int,
        default=None,
        metavar="Q",
        help="JPEG quality, 1 to 100 (default 90), with --compression jpeg",
    )
    parser.add_argument(
        "--tiff-layout",
        choices=("both", "subifd"),
        default="both",
        help="where an OME-TIFF keeps its reduced levels: both (default) as SubIFDs of "
        "level 0 and chained after it, so Bio-Formats / QuPath and OpenSlide alike see the "
        "pyramid; subifd: SubIFDs only, strictly as the OME-TIFF specification says "
        "(OpenSlide then sees one level)",
    )
    parser.add_argument(
        "--ngff",
        choices=("0.4", "0.5"),
        default="0.4",
        help="OME-Zarr version: 0.4 (default: zarr format 2, read by QuPath, Bio-Formats, "
        "napari-ome-zarr, Fiji and vizarr) or 0.5 (zarr format 3 with sharding, 4 x 4 "
        "chunks per file: far fewer files, for readers of zarr v3)",
    )
    parser.add_argument(
        "--mpp",
        type=float,
        default=None,
        metavar="UM",
        help="pixel size of the input in micrometres per pixel, for inputs that record "
        "none (PNG, JPEG, some TIFFs) or record a wrong one; the output's is UM / scale",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="N",
        help="which sample of a stochastic model (e.g. sr3-he-x4: each seed gives another "
        "plausible image; the same seed the same image; default 0, recorded in the output); "
        "deterministic models ignore it",
    )


def coding_text(coding: Any) -> str:
    """'JPEG Q=30 (quantisation tables), lossy', 'lossless (LZW)' or 'coding unknown'."""
    if coding.codec == "unknown":
        return "coding unknown" + (f" ({coding.detail})" if coding.detail else "")
    return f"{coding}, lossy" if coding.lossy else str(coding)


def print_coding_told(model: str, coding: object) -> None:
    """Say what a coding-conditioned model is told about the input (nothing for others)."""
    from napari_srgan_sqe.models.coding import describe_coding
    from napari_srgan_sqe.models.modelfile import reads_coding

    if reads_coding(model):
        print(f"the model is told: {describe_coding(coding)} (it is conditioned on the coding)")


def model_scale(model: str) -> tuple[str, int | None]:
    """(name, up-scaling factor) of a bundled model or a model file, from the registry
    or the file's metadata only (cheap); the scale is None when unknown here (loading
    the model then says what is wrong with it)."""
    import json

    from napari_srgan_sqe.io.checkpoints import CheckpointError, read_safetensors_metadata
    from napari_srgan_sqe.models.registry import BUNDLED_MODELS

    entry = BUNDLED_MODELS.get(model)
    if entry is not None:
        return entry.name, entry.scale
    try:
        meta = read_safetensors_metadata(Path(model).expanduser())
        name = meta.get("name") or Path(model).name
        if "scale" in meta:
            return name, int(meta["scale"])
        return name, int(json.loads(meta["config"])["generator"]["scale"])
    except (CheckpointError, OSError, KeyError, TypeError, ValueError):
        return str(model), None


def size_text(n_bytes: int) -> str:
    """Bytes in words: '812 KB', '3.4 MB', '1.20 GB' (powers of 1000)."""
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n_bytes >= factor:
            return f"{n_bytes / factor:.{2 if unit == 'GB' else 1}f} {unit}"
    return f"{n_bytes} bytes"


def compression_text(output: Path, compression: str, quality: int | None) -> str:
    """'JPEG Q=90' or 'lossless, zlib' / 'lossless, Blosc-zstd' for an output path."""
    from napari_srgan_sqe.io.pyramid import DEFAULT_QUALITY

    if compression == "jpeg":
        return f"JPEG Q={quality or DEFAULT_QUALITY}"
    tiff = output.name.lower().rstrip("/").endswith((".tif", ".tiff"))
    return "lossless, zlib" if tiff else "lossless, Blosc-zstd"


def run(args: argparse.Namespace) -> int:
    import warnings

    from napari_srgan_sqe.cli.progress import progress_bar
    from napari_srgan_sqe.inference.bench import peak_rss_mb
    from napari_srgan_sqe.inference.export import (
        PixelSizeWarning,
        check_writable,
        default_model_for,
        enhance_slide,
    )
    from napari_srgan_sqe.inference.tiling import DataError
    from napari_srgan_sqe.io.slides import open_slide

    lo, hi = TILE_RANGE
    if args.tile is not None and not lo <= args.tile <= hi:
        raise UserError(f"--tile must be {lo} to {hi} pixels, got {args.tile}")
    # --batch, --threads and --mpp are checked by cli.check_numeric_options
    if args.quality is not None and args.compression != "jpeg":
        raise UserError("--quality goes with --compression jpeg (lossless has no quality)")
    if args.quality is not None and not 1 <= args.quality <= 100:
        raise UserError(f"--quality must be 1 to 100, got {args.quality}")
    try:  # the output first: a wrong name or an existing file, before anything is read
        check_writable(args.output.expanduser(), overwrite=args.overwrite)
    except DataError as exc:
        raise UserError(str(exc)) from None
    slide = open_slide(args.input)  # metadata only; a bad file is one clear line
    print(f"input: {coding_text(slide.coding)}")
    if args.mpp is not None:
        was = f" (the file says {slide.mpp:.4g})" if slide.mpp else ""
        print(f"pixel size: {args.mpp:g} um/px from --mpp{was}")
    warning = None
    if args.mpp is None and slide.mpp is None:  # said once the export starts
        warning = (
            "warning: the input records no pixel size, so the output will have none "
            "(scale 1, no unit); give it with --mpp UM (micrometres per input pixel)"
        )
    model = args.model
    if model is None:
        model, why = default_model_for(slide.coding)
        print(f"model: {model} ({why}; --model chooses another)")
    else:
        print(f"model: {model}")
    print_coding_told(model, slide.coding)
    named, scale = model_scale(model)
    if scale is not None and args.scale is not None and scale != args.scale:
        raise UserError(f"model {named} up-scales by {scale}, not by --scale {args.scale}")
    if scale is not None:
        usual = "" if scale == 4 else "; not the usual x4: --scale 4 refuses such a model"
        print(f"scale: x{scale} (model {named} up-scales each side by {scale}{usual})")
    bars: list = []  # made at the first progress report, after the checks passed
    resumed: list[int] = []  # chunks an interrupted run had written: (done, total)

    def progress(done: int, total: int) -> None:
        if not bars:
            if warning:
                print(warning, file=sys.stderr)
            if done:
                resumed[:] = [done, total]
                print(f"resuming an interrupted export: {done} of {total} chunks were written")
            bars.append(progress_bar(total=total, unit="chunk", desc="enhance"))
        bars[0].total = total
        bars[0].update(done - bars[0].n)

    stats: dict = {}
    try:
        with warnings.catch_warnings():  # said above, in one line
            warnings.simplefilter("ignore", PixelSizeWarning)
            path = enhance_slide(
                slide,
                args.output,
                model=model,
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
                compression=args.compression,
                quality=args.quality,
                tiff_layout=args.tiff_layout,
                mpp=args.mpp,
                ngff=args.ngff,
                seed=args.seed,
                threads=args.threads,
            )
    except KeyboardInterrupt:
        for bar in bars:  # before the hint, so the bar is not drawn again under it
            bar.close()
        if bars:  # something was written: say how to go on
            print(
                "interrupted: the chunks written so far are kept; run the same command "
                "again to resume (--no-resume starts over)",
                file=sys.stderr,
            )
        raise
    except MemoryError as exc:  # out of memory outside the tile computation
        raise UserError(
            f"out of memory ({exc or 'MemoryError'}); use a smaller --tile or --batch"
        ) from None
    except OSError as exc:  # an OSError naming a file (permission, missing folder)
        if exc.filename:
            raise UserError(str(exc)) from exc
        raise
    finally:
        for bar in bars:
            bar.close()
    h, w = stats.get("output_shape", (0, 0))
    print(f"wrote {path}")
    made = stats.get("provenance", {})
    if "seed" in made:
        print(
            f"sample: seed {made['seed']} of the stochastic model {made['model']} "
            f"({made['sampling_steps']} sampling steps; recorded in the output; --seed for another)"
        )
    n_bytes = stats.get("bytes_written", 0)
    print(
        f"size: {size_text(n_bytes)} ({compression_text(path, args.compression, args.quality)}"
        f"), {stats.get('bytes_per_pixel', 0):.2f} bytes per pixel of level 0 (all levels)"
    )
    seconds = stats.get("seconds", 0)
    if resumed:  # this run computed only the rest: no throughput for the whole image
        done, total = resumed
        rate = f"the {total - done} chunks left of {total}"
    else:
        rate = f"{stats.get('mpx_per_s', 0):.2f} Mpx/s"
    print(
        f"{w} x {h} px ({stats.get('output_mpx', 0):.1f} Mpx) in {seconds:.1f} s: "
        f"{rate} on {stats.get('device', '?')}; peak RSS {peak_rss_mb():.0f} MiB"
    )
    return 0
