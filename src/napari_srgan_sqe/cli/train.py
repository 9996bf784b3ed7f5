"""`srgan-sqe train --config FILE`: train a model, with progress, checkpoints and resume.

A run folder that already holds a run (checkpoint, log or model) is continued with
`--resume` or replaced with `--overwrite`; without either the command refuses, so a
run is never overwritten by accident. On `--resume` the log keeps only the records up
to the checkpoint's step (a run killed between two checkpoints logged steps that the
resumed run takes again).
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from napari_srgan_sqe.cli import UserError, stop_on_signals


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="training config (JSON or YAML)")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the run's last checkpoint"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start again in a run folder that holds a run (deletes its checkpoint, log "
        "and model first)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="run folder (overrides out_dir in the config)"
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="stop after this many more steps (counted from where --resume starts; then --resume)",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument(
        "--data-workers",
        type=int,
        default=None,
        metavar="N",
        help="processes that make the next batches while the model trains (overrides "
        "data_workers in the config; 0: in the training process)",
    )
    parser.add_argument(
        "--init-from",
        default=None,
        metavar="MODEL",
        help="warm start from a model name, a model file or a training checkpoint "
        "(overrides init_from in the config)",
    )


SHOWN_LOSSES = ("g", "d", "ae", "fidelity", "v_mse", "adv", "cyc", "idt", "geo", "sr")
"""Loss terms shown in the progress bar: the SRGAN family's generator, discriminator,
autoencoder and fidelity terms, SR3's v_mse, and the 'unpaired' recipe's adversarial,
cycle, identity, geometric-ensemble and SR terms."""


def run_files(out_dir: Path) -> list[Path]:
    """The files of a training run already in `out_dir`: checkpoint, log, model."""
    from napari_srgan_sqe.training.trainer import CHECKPOINT, LOG, MODEL

    return [out_dir / name for name in (CHECKPOINT, LOG, MODEL) if (out_dir / name).exists()]


def run(args: argparse.Namespace) -> int:
    from napari_srgan_sqe.cli.progress import progress_bar
    from napari_srgan_sqe.config import TrainConfig, load_config
    from napari_srgan_sqe.training.trainer import Trainer

    if args.resume and args.overwrite:
        raise UserError("--resume continues a run and --overwrite starts it again: give one")
    if args.data_workers is not None and not 0 <= args.data_workers <= 256:
        raise UserError(f"--data-workers must be 0 to 256, got {args.data_workers}")
    cfg: TrainConfig = load_config(args.config, TrainConfig)
    if args.out is not None:
        cfg.out_dir = str(args.out.resolve())
    if args.threads is not None:
        cfg.num_threads = args.threads
    if args.data_workers is not None:
        cfg.data_workers = args.data_workers
    if args.init_from is not None:
        given = Path(args.init_from)
        cfg.init_from = str(given.resolve()) if given.exists() else args.init_from
    trainer = Trainer(cfg, base_dir=args.config.resolve().parent)
    try:  # the run folder, before the first step
        trainer.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot make the run folder {trainer.out_dir}: {exc.strerror or exc}"
        ) from None
    existing = run_files(trainer.out_dir)
    if args.resume and not existing:
        print(f"nothing to resume in {trainer.out_dir}: starting the run from step 0")
    if existing and not (args.resume or args.overwrite):
        names = ", ".join(p.name for p in existing)
        raise UserError(
            f"{trainer.out_dir} already holds a training run ({names}): --resume continues "
            "it, --overwrite starts again (deleting it)"
        )
    if args.overwrite:
        for path in existing:
            path.unlink()
    if trainer.vgg_content is not None:
        print(f"VGG19 content loss: {trainer.vgg_content}")
    stop = threading.Event()
    bar = progress_bar(total=trainer.total, unit="step")

    def show(ev) -> None:
        bar.n = ev.step
        shown = {k: f"{v:.4g}" for k, v in ev.losses.items() if k in SHOWN_LOSSES}
        if ev.val:
            shown["val_psnr"] = f"{ev.val['val_psnr']:.2f}"
        bar.set_postfix(phase=ev.phase, **shown, refresh=False)
        bar.refresh()

    try:
        with stop_on_signals(stop) as received:  # stop between two steps, checkpointed
            trainer.run(
                resume=args.resume, callback=show, max_steps=args.max_steps, stop_event=stop
            )
    except KeyboardInterrupt:
        bar.close()
        print(
            f"interrupted at step {trainer.step}; checkpoint saved in {trainer.out_dir} (use --resume)"
        )
        return 130
    bar.close()
    if stop.is_set():
        print(
            f"stopped at step {trainer.step}; checkpoint saved in {trainer.out_dir} (use --resume)"
        )
        return 128 + (received[0] if received else signal.SIGINT)  # 143 on SIGTERM
    done = trainer.step >= trainer.total
    where = trainer.out_dir / ("model.safetensors" if done else "checkpoint.safetensors")
    print(f"{'finished' if done else 'paused'} at step {trainer.step}/{trainer.total}: {where}")
    return 0
