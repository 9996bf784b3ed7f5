"""Training throughput benchmark: steps per second of the shipped recipe; prints JSON.

Runs the SRGAN_SQE recipe of a training config (default: the current cycle's,
`experiments/configs/cycle1-all-he.json`) for a few steps of each phase (fidelity
warm-up and GAN) in each arithmetic variant, in one process, on the same batches:

- fp32: float32, contiguous layout (how the models were trained before);
- fp32 + channels_last;
- bf16 autocast + channels_last (TrainConfig.precision = "bf16").

Reports seconds per step (after two untimed steps), the ratio to fp32, and whether the
CPU has bf16 instructions (AMX / AVX512-BF16). Validation dB per CPU-hour is not
measured here: it needs runs of hours, whose curves are in docs/real-slides.md
(log.jsonl of each cycle, `experiments/plot_training.py`).

    python benchmarks/training.py --steps 8 > docs/eval/training/bench-precision.json

It reads the training images named by the config (../shared/data beside the
repository); without them it trains on the bundled sample slide's pixels.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "experiments" / "configs" / "cycle1-all-he.json"

VARIANTS = {
    "fp32": {"precision": "fp32", "channels_last": False},
    "fp32+channels_last": {"precision": "fp32", "channels_last": True},
    "bf16+channels_last": {"precision": "bf16", "channels_last": True},
}


def cpu_bf16() -> list[str]:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    return sorted({f for f in ("amx_bf16", "avx512_bf16") if f" {f}" in flags})


def sample_images(folder: Path) -> list[str]:
    """Training images cut from the bundled sample slide (when ../shared is absent)."""
    from PIL import Image

    from napari_srgan_sqe.io.sample import sample_slide_path
    from napari_srgan_sqe.io.slides import open_slide

    folder.mkdir(parents=True, exist_ok=True)
    with open_slide(sample_slide_path()) as slide:
        level = slide.levels[0]
        for i, (x, y) in enumerate([(200, 400), (900, 1200), (1300, 2000)]):
            crop = level[y : y + 640, x : x + 640].compute()
            Image.fromarray(crop).save(folder / f"s{i}.png")
    return [str(folder)]


def time_variant(base: dict, variant: dict, steps: int, out: Path) -> dict[str, float]:
    import torch

    from napari_srgan_sqe.config import TrainConfig, validate
    from napari_srgan_sqe.training.trainer import Trainer

    cfg = validate(TrainConfig, {**base, **variant, "out_dir": str(out)})
    trainer = Trainer(cfg)
    result = {}
    for phase, start in (("warmup", cfg.ae_steps), ("gan", cfg.ae_steps + cfg.warmup_steps)):
        torch.manual_seed(0)
        for s in range(start, start + 2):  # untimed: allocator and oneDNN kernels warm up
            trainer.train_step(s)
        batches = [trainer.batch(s) for s in range(start + 2, start + 2 + steps)]
        t0 = time.perf_counter()
        for s, b in zip(range(start + 2, start + 2 + steps), batches, strict=True):
            trainer.recipe.train_step(s, b)
        result[f"{phase}_s_per_step"] = (time.perf_counter() - t0) / steps
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(CONFIG))
    ap.add_argument("--steps", type=int, default=8, help="timed steps per phase and variant")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    cfg_path = Path(args.config)
    base = json.loads(cfg_path.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        data = [str((cfg_path.parent / d).resolve()) for d in base["data"]]
        source = "config data"
        if not all(Path(d).exists() for d in data):
            data, source = sample_images(Path(tmp) / "images"), "sample slide crops"
        base.update(
            data=data, split_file=None, val_images=0, init_from=None, num_threads=args.threads,
            data_workers=0, ae_steps=0, warmup_steps=100, gan_steps=100,
        )  # fmt: skip
        rows = {}
        for name, variant in VARIANTS.items():
            rows[name] = time_variant(base, variant, args.steps, Path(tmp) / name)
    ref = rows["fp32"]
    for row in rows.values():
        for phase in ("warmup", "gan"):
            row[f"{phase}_speedup_vs_fp32"] = (
                ref[f"{phase}_s_per_step"] / row[f"{phase}_s_per_step"]
            )
    print(json.dumps({
        "benchmark": "training",
        "config": str(cfg_path.relative_to(ROOT) if cfg_path.is_relative_to(ROOT) else cfg_path),
        "data": source,
        "batch": [base["batch_size"], base["patch_size"]],
        "threads": args.threads,
        "timed_steps": args.steps,
        "cpu": platform.processor() or platform.machine(),
        "cpu_bf16": cpu_bf16(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "variants": rows,
    }, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
