"""Train the runs of `.gpu-pack/configs` within a wall-clock budget, on the device
machine (or on the CPU, to test the script), and copy models and logs to OUT.

    python experiments/gpu/train_gpu.py --budget-s 360 --workers 14 --out "$OUT"

A run that starts from a grown model (`grow` in runs.json) first grows the shipped one
(`experiments/grow.py`: same output, more capacity) into `.gpu-pack/init/`. Each run times 160 steps of its own recipe (its data workers started; the first 60,
which the workers' queue serves faster than they make batches, not counted), then gets its share of the budget as a schedule of that many
steps; the learning rate decays over the whole schedule, so a run ends at its decayed
rate instead of being cut off. Summary: OUT/summary.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from napari_srgan_sqe.config import TrainConfig, load_config
from napari_srgan_sqe.models.modelfile import save_model
from napari_srgan_sqe.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
PACK = REPO / ".gpu-pack"
CALIBRATE, SKIP = 160, 60  # past the queue the workers fill while the first steps run


def steps_per_second(cfg: TrainConfig, base: Path) -> float:
    times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        probe = cfg.model_copy(
            update={
                "gan_steps": CALIBRATE,
                "warmup_steps": 0,
                "out_dir": tmp,
                "val_every": 10**6,
                "checkpoint_every": 10**6,
            }
        )
        Trainer(probe, base_dir=base).run(callback=lambda ev: times.append(time.perf_counter()))
    return (len(times) - SKIP - 1) / (times[-1] - times[SKIP])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-s", type=float, required=True, help="training time of all runs")
    ap.add_argument("--workers", type=int, default=14)
    ap.add_argument("--device", default=None, help="override the configs' device (cpu: a test)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", nargs="*", default=None, help="run names (default: all)")
    args = ap.parse_args()
    runs = json.loads((REPO / "experiments" / "gpu" / "runs.json").read_text())
    if args.only:
        runs = [r for r in runs if r["name"] in args.only]
    args.out.mkdir(parents=True, exist_ok=True)
    import imagecodecs  # the Pillow stand-in on the device machine: "shim"

    summary = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "imagecodecs": imagecodecs.__version__,
        "workers": args.workers,
        "runs": [],
    }
    share_total = sum(r["share"] for r in runs)
    for run in runs:
        path = PACK / "configs" / f"{run['name']}.json"
        if run.get("grow"):
            (PACK / "init").mkdir(exist_ok=True)
            blocks, channels = run["grow"]
            subprocess.run(
                [
                    sys.executable,
                    str(REPO / "experiments" / "grow.py"),
                    run["from"],
                    "--channels",
                    str(channels),
                    "--blocks",
                    str(blocks),
                    "--out",
                    str(PACK / "init" / f"{run['name']}.safetensors"),
                ],
                check=True,
            )
        cfg = load_config(path, TrainConfig)
        cfg.data_workers = args.workers
        if args.device:
            cfg.device = args.device
        t0 = time.perf_counter()
        rate = steps_per_second(cfg, path.parent)
        budget = args.budget_s * run["share"] / share_total - (time.perf_counter() - t0)
        steps = max(50, int(rate * budget * 0.92))  # validation and checkpoints: the rest
        every = max(25, steps // 8)
        cfg = cfg.model_copy(
            update={"gan_steps": steps, "val_every": every, "checkpoint_every": every}
        )
        print(f"{run['name']}: {rate:.1f} steps/s, {steps} steps", flush=True)
        trainer = Trainer(cfg, base_dir=path.parent)
        shutil.rmtree(trainer.out_dir, ignore_errors=True)
        t1 = time.perf_counter()
        # a rate measured too high must not overrun the machine's time: stop at 1.3x
        stop = threading.Event()
        timer = threading.Timer(1.3 * budget, stop.set)
        timer.start()
        try:
            trainer.run(
                stop_event=stop,
                callback=lambda ev: ev.val and print(ev.step, ev.val, flush=True),
            )
        finally:
            timer.cancel()
        wall = time.perf_counter() - t1
        if trainer.step < trainer.total:  # stopped by the guard: keep what it reached
            partial = trainer.as_model(steps=str(trainer.step))
            save_model(partial, trainer.out_dir / "model.safetensors")
        dest = args.out / run["name"]
        dest.mkdir(exist_ok=True)
        for name in ("model.safetensors", "log.jsonl"):
            shutil.copy2(trainer.out_dir / name, dest / name)
        summary["runs"].append(
            {
                "name": run["name"],
                "steps_per_s": round(rate, 2),
                "steps": steps,
                "done": trainer.step,
                "train_s": round(wall, 1),
            }
        )
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
