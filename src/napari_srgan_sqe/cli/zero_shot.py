"""`srgan-sqe zero-shot SLIDE --region x,y,w,h ... --out MODEL.safetensors`.

Trains ZSSR on regions of the slide from its LR alone (no HR, no training set) and
writes the image-specific model, which `enhance`, `view` and `evaluate` then use like
any other. Regions are in LR level-0 pixels; the right `--val-fraction` of each is
held out, and the model is written only when it beats its start (bicubic) there.
"""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

from napari_srgan_sqe.cli import SAMPLE_HELP, slide_path
from napari_srgan_sqe.cli.finetune import add_out_arguments, add_region_argument, check_common

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "slide",
        type=slide_path,
        help=f"the slide or image to train on and enhance; {SAMPLE_HELP}",
    )
    add_region_argument(parser, "; at least about 200 x 100 px")
    parser.add_argument(
        "--degradation",
        choices=("clean", "scanner"),
        default=None,
        help="how the pseudo-LR is made from the slide's LR: clean (D_s) or scanner "
        "(coded like a scanned slide); default: scanner when the slide is stored lossy",
    )
    parser.add_argument("--steps", type=int, default=300, help="optimisation steps (300)")
    parser.add_argument(
        "--minutes", type=float, default=None, help="stop after this many minutes (best kept)"
    )
    parser.add_argument(
        "--layers", type=int, default=8, help="conv layers of the network (8, as in ZSSR)"
    )
    parser.add_argument(
        "--channels", type=int, default=64, help="channels per layer (64; 16-32 train faster)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of patches and init (0)")
    parser.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    add_out_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from napari_srgan_sqe.cli.finetune import drive
    from napari_srgan_sqe.config import ZSSRConfig, validate
    from napari_srgan_sqe.io.slides import open_slide
    from napari_srgan_sqe.training.jobs import make_job, run_job, slide_degradation, start_model
    from napari_srgan_sqe.training.zero_shot import zero_shot_config

    check_common(args)
    slide = open_slide(args.slide)
    degradation = args.degradation or slide_degradation(slide)
    cfg = zero_shot_config(
        args.steps, degradation=degradation, seed=args.seed, max_minutes=args.minutes
    )
    network = validate(
        ZSSRConfig, {"n_layers": args.layers, "channels": args.channels}, source="options"
    )
    start = start_model("zero-shot", network=network)
    job = make_job(
        "zero-shot", slide, args.region, model=start, config=cfg, source=Path(args.slide).name
    )
    print(
        f"input stored as {slide.coding}: zero-shot ZSSR on {len(job.regions)} region(s), "
        f"{cfg.steps} steps, pseudo-LR {degradation}"
    )
    stop = threading.Event()
    events = run_job(job, args.out.expanduser(), stop_event=stop, device=args.device)
    result = drive(events, cfg.steps, stop)
    if not result.improved:
        print("ZSSR did not beat bicubic on the held-out part: no model written")
        return 1
    print(f"wrote {args.out} (use it with: srgan-sqe enhance {args.slide} OUT --model {args.out})")
    return 0
