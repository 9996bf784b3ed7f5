"""`srgan-sqe experiment robustness`: the paper's robustness study, resumable."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=["robustness"], help="which experiment")
    parser.add_argument(
        "--data", action="append", required=True, type=Path, help="folder of HR images"
    )
    parser.add_argument(
        "--split", type=Path, required=True, help="JSON split file with 'train' and 'val'"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/robustness"))
    parser.add_argument("--preset", choices=["micro", "small", "full"], default="small")
    parser.add_argument(
        "--corruption",
        action="append",
        choices=["noise", "blur", "contrast", "noise-hr", "blur-hr", "contrast-hr"],
        help="corruption type(s) of the whole pair; with -hr only the HR target is corrupted "
        "(default: noise; all on a GPU)",
    )
    parser.add_argument("--fractions", default="0,0.1,0.3,0.5")
    parser.add_argument("--q", type=float, default=0.8, help="q of srgan_qe / srgan_sqe")
    parser.add_argument("--q-sweep", default="0.5,1.0,1.5,2.0", help="extra q values for srgan_sqe")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--report", type=Path, default=None, help="write the markdown report here")


def run(args: argparse.Namespace) -> int:
    from napari_srgan_sqe.training.experiment import run_robustness, write_report

    rows = run_robustness(
        args.data,
        args.out,
        split_file=args.split,
        preset=args.preset,
        fractions=[float(f) for f in args.fractions.split(",")],
        corruptions=args.corruption or ["noise"],
        q=args.q,
        q_sweep=[float(q) for q in args.q_sweep.split(",") if q],
        threads=args.threads,
        progress=lambda msg: print(msg, flush=True),
    )
    for r in rows:
        print(
            f"{r['corruption']:>8} {r['method']:>10} f={r['fraction']:<4g} q={r['q']:<4g} "
            f"PSNR {r['psnr']:.2f} SSIM {r['ssim']:.3f} QILV {r['qilv']:.3f}"
        )
    if args.report is not None:
        doc = write_report(rows, args.report, args.report.parent / "images", preset=args.preset)
        print(f"wrote {doc}")
    return 0
