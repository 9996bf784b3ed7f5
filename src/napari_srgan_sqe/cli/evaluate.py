"""`srgan-sqe evaluate`: SR vs bicubic and Lanczos on held-out HR images."""

from __future__ import annotations

import argparse
from pathlib import Path


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
        type=Path,
        help="folder or image file of HR images (repeatable)",
    )
    parser.add_argument(
        "--split",
        type=Path,
        default=None,
        help="JSON split file: evaluate only its 'val' images found in --data",
    )
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None, help="folder for evaluation.csv / .json")
    parser.add_argument(
        "--crops",
        type=Path,
        default=None,
        help="folder for side-by-side PNG crops (LR | bicubic | lanczos | SR... | HR)",
    )
    parser.add_argument("--no-lanczos", action="store_true")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_srgan_sqe.training.data import resolve_split
    from napari_srgan_sqe.training.evaluate import evaluate

    data = args.data
    if args.split is not None:
        _, data = resolve_split(args.data, args.split)
    baselines = ("bicubic",) if args.no_lanczos else ("bicubic", "lanczos")
    bar = tqdm(unit="image", dynamic_ncols=True)

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
    )
    bar.close()
    print(result.table())
    if args.out is not None:
        csv_path, json_path = result.write(args.out)
        print(f"wrote {csv_path} and {json_path}")
    return 0
