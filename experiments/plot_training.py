"""Turn training logs (log.jsonl of `srgan-sqe train`) into PNG curves.

    python experiments/plot_training.py runs/srgan-sqe-he-x4 [runs/l1-he-x4 ...] --out curves.png

Per run: the generator loss (smoothed) and the validation PSNR / SSIM / QILV. A resumed
run may log a step twice (steps after its last checkpoint are redone); the later
record wins. `RUN_A+RUN_B` draws a warm-started run (`init_from`) as the continuation
of the run it started from: B's steps are shifted by A's last step, and a dotted line
marks where B began.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def read_log(run_dir: Path) -> list[dict]:
    records: dict[int, dict] = {}
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            records[r["step"]] = r
    return [records[k] for k in sorted(records)]


def read_chain(spec: str) -> tuple[str, list[dict], list[int]]:
    """Records of `A+B+...` with the steps made continuous; also where each stage began.
    The chain is named after its last run."""
    records: list[dict] = []
    starts: list[int] = []
    offset = 0
    for part in spec.split("+"):
        recs = read_log(Path(part))
        if records:
            starts.append(offset)
        records += [{**r, "step": r["step"] + offset} for r in recs]
        offset = records[-1]["step"] if records else offset
    return Path(spec.split("+")[-1]).name, records, starts  # named by its last stage


def plot(runs: list[str], out: Path) -> Path:
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for spec in runs:
        name, recs, starts = read_chain(str(spec))
        g = [(r["step"], r["g"]) for r in recs if "g" in r]
        if g:
            steps, vals = np.array(g).T
            k = max(1, len(vals) // 50)
            smooth = np.convolve(vals, np.ones(k) / k, mode="valid")
            axes[0].plot(steps[k - 1 :], smooth, label=name)
        for ax, key in zip(axes[1:], ("val_psnr", "val_ssim", "val_qilv")):
            pts = [(r["step"], r[key]) for r in recs if key in r]
            if pts:
                ax.plot(*np.array(pts).T, marker="o", markersize=3, label=name)
        for start in starts:
            for ax in axes:
                ax.axvline(start, color="grey", linestyle=":", linewidth=1)
    for ax, title in zip(
        axes, ("generator loss", "validation PSNR (dB)", "validation SSIM", "validation QILV")
    ):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("runs", nargs="+", help="run folders; A+B for a warm-started B after A")
    ap.add_argument("--out", type=Path, default=Path("training-curves.png"))
    args = ap.parse_args()
    print(plot(args.runs, args.out))
