"""`srgan-sqe evaluate`: SR vs bicubic and Lanczos on held-out HR images."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_srgan_sqe.cli import SAMPLE_HELP, UserError, slide_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        help="bundled model name or .safetensors file (repeat to compare several)",
    )
    parser.add_argument(
        "--data",
        action="append",
        required=True,
        type=slide_path,
        help=f"folder or image file of HR images (repeatable); {SAMPLE_HELP}",
    )
    parser.add_argument(
        "--split",
        type=Path,
        default=None,
        help="JSON split file: evaluate only its 'val' images found in --data",
    )
    parser.add_argument(
        "--scale",
        type=int,
        default=4,
        help="up-scaling factor: LR is made at 1/SCALE of each HR image's width and height, "
        "and every --model must super-resolve by SCALE (default 4)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="where the models run: auto (default: a CUDA GPU if there is one, then Apple "
        "mps, else the CPU), cpu, cuda, cuda:N or mps",
    )
    parser.add_argument("--out", type=Path, default=None, help="folder for evaluation.csv / .json")
    parser.add_argument(
        "--crops",
        type=Path,
        default=None,
        help="folder for side-by-side PNG crops (LR | bicubic | lanczos | SR... | HR)",
    )
    parser.add_argument("--no-lanczos", action="store_true", help="skip the Lanczos baseline")
    parser.add_argument(
        "--degradation",
        choices=("clean", "scanner"),
        default="clean",
        help="how LR is made from HR: clean = the reference D_s (default); scanner = the "
        "seeded scanner chain (blur, noise, JPEG / JPEG 2000 drawn per image)",
    )
    parser.add_argument(
        "--lr-codec",
        action="append",
        choices=("none", "jpeg", "jpeg2000"),
        default=None,
        help="store the LR with this codec before SR, as a scanner's file does "
        "(repeatable; default none = lossless)",
    )
    parser.add_argument(
        "--lr-quality",
        action="append",
        default=None,
        help="JPEG quality(ies) 1-100 for --lr-codec jpeg: repeat or give a list "
        "('95,75,50,30'); default 75",
    )
    parser.add_argument(
        "--lr-ratio",
        action="append",
        default=None,
        help="JPEG 2000 compression ratio(s) for --lr-codec jpeg2000 (repeat or a list); "
        "default 17, the rate of Aperio's J2K Q=70",
    )
    parser.add_argument(
        "--lr-jpeg-colour",
        action="append",
        default=None,
        help="JPEG colour coding(s) for --lr-codec jpeg: ycbcr420 (default; most scanners), "
        "ycbcr444 (no chroma subsampling) or rgb (Aperio's JPEG/RGB); repeat or a list",
    )
    parser.add_argument(
        "--coding-unknown",
        action="store_true",
        help="tell a coding-conditioned model nothing about how the LR is stored (as for "
        "a slide that records no codec or quality)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the scanner degradation")
    parser.add_argument(
        "--zero-shot-steps",
        type=int,
        default=300,
        help="training steps of zero-shot models (zssr-x4) on each LR image (300)",
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=1,
        metavar="N",
        help="samples (seeds 0..N-1) a stochastic model (sr3-he-x4) draws per image: its "
        "row is the mean of each metric over them, with their spread, and a row "
        "'[mean of N]' scores the per-pixel mean of the samples (default 1: seed 0)",
    )


def _numbers(values: list[str] | None, kind: type, what: str) -> list:
    out = []
    for v in values or []:
        for part in str(v).replace(" ", "").split(","):
            if not part:
                continue
            try:
                out.append(kind(part))
            except ValueError:
                raise UserError(f"{what} {part!r} is not a number") from None
    return out


def lr_conditions(args: argparse.Namespace) -> list:
    """The LR conditions asked for on the command line, in order."""
    from napari_srgan_sqe.training.evaluate import LRCondition

    codecs = list(dict.fromkeys(args.lr_codec or ["none"]))
    qualities = _numbers(args.lr_quality, int, "JPEG quality")
    ratios = _numbers(args.lr_ratio, float, "JPEG 2000 ratio")
    if qualities and "jpeg" not in codecs:
        raise UserError("--lr-quality needs --lr-codec jpeg")
    if ratios and "jpeg2000" not in codecs:
        raise UserError("--lr-ratio needs --lr-codec jpeg2000")
    colours = [
        part
        for v in args.lr_jpeg_colour or []
        for part in str(v).replace(" ", "").split(",")
        if part
    ]
    for c in colours:
        if c not in ("ycbcr420", "ycbcr444", "rgb"):
            raise UserError(f"--lr-jpeg-colour {c!r}: choose ycbcr420, ycbcr444 or rgb")
    if colours and "jpeg" not in codecs:
        raise UserError("--lr-jpeg-colour needs --lr-codec jpeg")
    out = []
    for codec in codecs:
        if codec == "none":
            out.append(LRCondition())
        elif codec == "jpeg":
            out += [
                LRCondition("jpeg", q, colour)
                for colour in dict.fromkeys(colours or ["ycbcr420"])
                for q in dict.fromkeys(qualities or [75])
            ]
        else:
            out += [LRCondition("jpeg2000", r) for r in dict.fromkeys(ratios or [None])]
    return out


def run(args: argparse.Namespace) -> int:
    from napari_srgan_sqe.cli.progress import progress_bar
    from napari_srgan_sqe.training.data import resolve_split
    from napari_srgan_sqe.training.evaluate import evaluate

    data = args.data
    if args.split is not None:
        _, data = resolve_split(args.data, args.split, need=("val",))
    baselines = ("bicubic",) if args.no_lanczos else ("bicubic", "lanczos")
    conditions = lr_conditions(args)
    bar = progress_bar(unit="image", delay=0.5)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    result = evaluate(
        args.model,
        data,
        scale=args.scale,
        device=args.device,
        baselines=baselines,
        crops_dir=args.crops,
        progress=progress,
        degradation=args.degradation,
        lr_conditions=conditions,
        seed=args.seed,
        zero_shot_steps=args.zero_shot_steps,
        samples=args.samples,
        tell_coding=not args.coding_unknown,
    )
    bar.close()
    print(result.table())
    if args.out is not None:
        csv_path, json_path = result.write(args.out)
        print(f"wrote {csv_path} and {json_path}")
    return 0
