"""`srgan-sqe finetune SLIDE --region x,y,w,h ... --out MODEL.safetensors`.

Paired when `--hr HR_SLIDE` is given (its level 0 is s x the slide's level 0),
self-supervised (ZSSR-style) otherwise. Regions are in LR level-0 pixels. The new
model is written only when the held-out validation improved; otherwise the base model
stays the better one, nothing is written and the exit status is 1.
"""

from __future__ import annotations

import argparse
import threading
from pathlib import Path
from typing import Any, Literal

from napari_srgan_sqe.cli import SAMPLE_HELP, UserError, parse_region, slide_path, stop_on_signals

__all__ = [
    "add_arguments",
    "add_out_arguments",
    "add_region_argument",
    "check_common",
    "drive",
    "parse_region",
    "run",
]


def add_region_argument(parser: argparse.ArgumentParser, extra_help: str = "") -> None:
    """The repeatable, required `--region X,Y,W,H` of the commands that train on regions."""
    parser.add_argument(
        "--region",
        action="append",
        type=parse_region,
        required=True,
        metavar="X,Y,W,H",
        help="a rectangle in LR level-0 pixels (repeat for more regions)" + extra_help,
    )


def add_out_arguments(parser: argparse.ArgumentParser) -> None:
    """`--out MODEL.safetensors` (required) and `--overwrite`."""
    parser.add_argument("--out", type=Path, required=True, help="new model file (.safetensors)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the --out file if it exists"
    )


def check_common(args: argparse.Namespace) -> None:
    """UserError for a bad --out or --threads, before any training: the name, an
    existing file without --overwrite, a folder that cannot be made or written;
    applies --threads to torch."""
    from napari_srgan_sqe.io.atomic import probe_writable

    if args.out.suffix != ".safetensors":
        raise UserError(f"--out must end in .safetensors, got {args.out}")
    out = args.out.expanduser()
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name ending in .safetensors")
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} already exists (replace it with --overwrite)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe_writable(out.parent)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)  # its range: cli.check_numeric_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from napari_srgan_sqe.config import FINETUNE_LOSS_PRESETS

    parser.add_argument(
        "slide",
        type=slide_path,
        help=f"the (LR) slide or image to adapt the model to; {SAMPLE_HELP}",
    )
    add_region_argument(parser)
    parser.add_argument(
        "--hr",
        type=slide_path,
        default=None,
        help=f"HR slide of the same tissue (s x); paired mode; {SAMPLE_HELP}",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="base model: bundled name or .safetensors path (default: the bundled model for "
        "the slide's coding: srgan-sqe-he-x4 for JPEG / JPEG 2000, srgan-sqe-he-x4-clean "
        "for lossless)",
    )
    parser.add_argument(
        "--degradation",
        choices=("clean", "scanner"),
        default=None,
        help="how self-supervised pseudo-LR is made: clean (D_s) or scanner (coded like a "
        "scanned slide); default: scanner when the slide is stored lossy, else clean",
    )
    parser.add_argument("--steps", type=int, default=200, help="optimisation steps (default 200)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default 5e-5)")
    parser.add_argument("--layers", choices=("all", "last"), default="all", help="layers to train")
    parser.add_argument(
        "--loss",
        choices=FINETUNE_LOSS_PRESETS,
        default="srgan_sqe",
        help="loss preset (no GAN term)",
    )
    parser.add_argument("--val-fraction", type=float, default=None, help="held-out stripe (0.25)")
    parser.add_argument("--batch-size", type=int, default=None, help="patches per step (4)")
    parser.add_argument("--patch-size", type=int, default=None, help="patch side (96)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    add_out_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from napari_srgan_sqe.io.slides import open_slide
    from napari_srgan_sqe.training.jobs import (
        base_model,
        finetune_config,
        make_job,
        run_job,
        slide_degradation,
    )

    check_common(args)
    mode: Literal["paired", "self-supervised"] = (
        "paired" if args.hr is not None else "self-supervised"
    )
    slide = open_slide(args.slide)
    degradation = args.degradation or slide_degradation(slide)
    options = {
        "lr": args.lr,
        "val_fraction": args.val_fraction,
        "batch_size": args.batch_size,
        "patch_size": args.patch_size,
    }
    cfg = finetune_config(
        args.loss,
        source="command-line options",
        mode=mode,
        steps=args.steps,
        train_layers=args.layers,
        seed=args.seed,
        degradation=degradation,
        **{key: value for key, value in options.items() if value is not None},
    )
    model = base_model(args.model, slide.codec)
    if mode == "self-supervised":
        print(f"input stored as {slide.coding}: model {model.name}, pseudo-LR {degradation}")
    hr = open_slide(args.hr) if args.hr is not None else None
    job = make_job(
        "finetune",
        slide,
        args.region,
        model=model,
        config=cfg,
        hr=hr,
        source=Path(args.slide).name,
        hr_source=None if args.hr is None else Path(args.hr).name,
    )
    stop = threading.Event()
    events = run_job(job, args.out.expanduser(), stop_event=stop, device=args.device)
    print(
        f"{mode} fine-tuning of {model.name!r} on {len(job.regions)} region(s), {cfg.steps} steps"
    )
    result = drive(events, cfg.steps, stop)
    if not result.improved:
        why = (
            ""
            if any(n.startswith("rejected") for n in result.notes)
            else "validation did not improve: "
        )
        print(f"{why}no model written; the base model stays the better one")
        return 1
    print(f"wrote {args.out}")
    return 0


def drive(events: Any, total: int, stop: threading.Event) -> Any:
    """Run a fine-tune event stream (a job's: `training.jobs.run_job`) with a progress
    bar (Ctrl-C or SIGTERM, as batch schedulers send, stops it keeping the best state),
    print before / after, and return the FinetuneResult."""
    from tqdm import tqdm

    from napari_srgan_sqe.cli.progress import progress_bar
    from napari_srgan_sqe.training.finetune import Finished, Started, Step, Validated
    from napari_srgan_sqe.training.jobs import Saved

    bar = progress_bar(total=total, unit="step")
    result = None
    try:
        with stop_on_signals(stop):
            for ev in events:
                if isinstance(ev, Started):
                    for note in ev.notes:
                        tqdm.write(f"note: {note}")
                elif isinstance(ev, Step):
                    # the loss first: the update draws the step with its own loss
                    bar.set_postfix(loss=f"{ev.loss:.4g}", refresh=False)
                    bar.update(ev.step - bar.n)
                elif isinstance(ev, Validated) and ev.step > 0:
                    tqdm.write(
                        f"step {ev.step}: validation PSNR {ev.psnr:.2f} dB, SSIM {ev.ssim:.4f}"
                    )
                elif isinstance(ev, Finished | Saved):  # Saved: a job's (`training.jobs`)
                    result = ev.result
    finally:
        bar.close()
    assert result is not None
    b, a = result.before, result.after
    print(f"before: PSNR {b['psnr']:.2f} dB, SSIM {b['ssim']:.4f}  (held-out stripes)")
    if result.improved:
        print(
            f"after:  PSNR {a['psnr']:.2f} dB, SSIM {a['ssim']:.4f}  "
            f"(best at step {result.best_step})"
        )
    else:  # what training reached, and why it is not kept
        seen = [r for r in result.history if r.get("kind") == "val" and r.get("step", 0) > 0]
        if seen:
            top = max(seen, key=lambda r: r["psnr"])
            print(
                f"best during training: PSNR {top['psnr']:.2f} dB, SSIM {top['ssim']:.4f} "
                f"(step {top['step']}); not kept"
            )
        for note in result.notes:
            if note.startswith("rejected"):
                print(note)
    if result.stopped:
        print(f"stopped after {result.steps_done} steps; the best state so far is kept")
    return result
