"""The compressed-LR evaluation behind docs/real-slides.md's "Coding-aware model" section.

Runs `srgan-sqe evaluate` (the command a user runs) on the validation images of
`experiments/all_he_split.json`, by source (MoNuSeg; BreCaHAD breast; MoNuSAC kidney,
lung, breast, prostate; CryoNuSeg frozen section), at 40x and at 20x (HR reduced 2x by
area first), with the LR stored as scanners store it: JPEG YCbCr 4:2:0 at Q90 / Q75 /
Q30, JPEG in RGB without subsampling at Q70 (Aperio's JPEG/RGB), YCbCr 4:4:4 at Q70,
JPEG 2000 at 17:1, and lossless. A coding-conditioned model is told each coding (or
nothing, `--coding-unknown`). Writes docs/eval/coding/<tag>/<source>/evaluation.json
and prints the gain over bicubic.

    python experiments/coding_eval.py --tag shipped-v4 --model srgan-sqe-he-x4
    python experiments/coding_eval.py --tag cycle2 --model runs/cycle2-coded/model.safetensors
    python experiments/coding_eval.py --tag cycle2-blind --coding-unknown --model ...
    python experiments/coding_eval.py --summary shipped-v4 cycle2 cycle2-blind

`--sites DIR` evaluates instead the crops of the real slides (other sites and
scanners than any training image, at their own magnification; made by
experiments/slide_crops.py) into docs/eval/coding/<tag>/sites-native-*:

    python experiments/slide_crops.py ../shared/data/slides/*.svs --out runs/slide-crops
    python experiments/coding_eval.py --tag v5 --model srgan-sqe-he-x4 --sites runs/slide-crops
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SPLIT = ROOT / "experiments" / "all_he_split.json"
OUT = ROOT / "docs" / "eval" / "coding"
SOURCES = {
    "monuseg": DATA / "monuseg_train",
    "brecahad": DATA / "extra_he" / "brecahad",
    "monusac2020": DATA / "extra_he" / "monusac2020",
    "cryonuseg": DATA / "extra_he" / "cryonuseg",
}
CONDITIONS = [
    "--lr-codec", "jpeg", "--lr-quality", "90,75,30",
    "--lr-codec", "jpeg2000", "--lr-codec", "none",
]  # fmt: skip
COLOUR_CONDITIONS = ["--lr-codec", "jpeg", "--lr-quality", "70", "--lr-jpeg-colour", "rgb,ycbcr444"]


def half_magnification(src: Path, names: list[str], dest: Path) -> Path:
    """The validation images reduced 2x by area (40x -> 20x), as PNG in `dest`."""
    from PIL import Image

    from napari_srgan_sqe.training.data import load_rgb

    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        img = load_rgb(src / name).astype(np.float32)
        h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
        half = img[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))
        Image.fromarray(np.round(half).astype(np.uint8)).save(dest / (Path(name).stem + ".png"))
    return dest


def _evaluate(
    tag: str, name: str, files: list[str], model_args: list[str], extra: list[str]
) -> None:
    from napari_srgan_sqe.cli import main

    data = [a for f in files for a in ("--data", f)]
    for which, conds in (("codecs", CONDITIONS), ("colours", COLOUR_CONDITIONS)):
        out = OUT / tag / f"{name}-{which}"
        if (out / "evaluation.json").exists():  # done by an earlier run
            continue
        args = ["evaluate", *model_args, *data, *conds, "--no-lanczos", *extra]
        assert main([*args, "--out", str(out)]) == 0


def run(tag: str, models: list[str], blind: bool, mags: list[str], sites: Path | None) -> None:
    split = json.loads(SPLIT.read_text())["sources"]
    model_args = [a for m in models for a in ("--model", m)]
    extra = ["--coding-unknown"] if blind else []
    if sites is not None:
        files = [str(p) for p in sorted(sites.glob("*.png"))]
        _evaluate(tag, "sites-native", files, model_args, extra)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for source, folder in SOURCES.items():
            names = split[source]["val"]
            for mag in mags:
                if mag == "40x":
                    files = [str(folder / n) for n in names]
                else:
                    half = half_magnification(folder, names, Path(tmp) / source)
                    files = [str(p) for p in sorted(half.iterdir())]
                _evaluate(tag, f"{source}-{mag}", files, model_args, extra)


def summary(tags: list[str]) -> None:
    """Gain over bicubic (dB) of every model in every tag, by source and condition."""
    for tag in tags:
        for folder in sorted((OUT / tag).iterdir()):
            res = json.loads((folder / "evaluation.json").read_text())
            for cond, methods in res["by_lr"].items():
                base = methods["bicubic"]["psnr"]
                gains = {
                    m: round(v["psnr"] - base, 2) for m, v in methods.items() if m != "bicubic"
                }
                print(f"{tag:14s} {folder.name:28s} {cond:16s} bicubic {base:6.2f}  {gains}")


ORDER = ["jpeg-q90", "jpeg-q75", "jpeg-q30", "jpeg-q70-rgb", "jpeg-q70-444", "jpeg2000-r17",
         "lossless"]  # fmt: skip


def gains(tag: str, mag: str, method: str) -> dict[str, dict[str, float]]:
    """{condition: {source: dB over bicubic}} of `method` in `tag` at `mag`."""
    out: dict[str, dict[str, float]] = {}
    for folder in sorted((OUT / tag).glob(f"*-{mag}-*")):
        source = folder.name.split(f"-{mag}-")[0]
        res = json.loads((folder / "evaluation.json").read_text())["by_lr"]
        for cond, methods in res.items():
            if method in methods:
                gain = methods[method]["psnr"] - methods["bicubic"]["psnr"]
                out.setdefault(cond, {})[source] = gain
    return out


def markdown(rows: list[tuple[str, str, str]], mag: str) -> str:
    """A table: one row per (label, tag, method), a column per condition with the
    MoNuSeg gain and the mean over the other sources (BreCaHAD, MoNuSAC, CryoNuSeg)."""
    head = "| model | " + " | ".join(ORDER) + " |"
    lines = [head, "| --- " * (len(ORDER) + 1) + "|"]
    for label, tag, method in rows:
        g = gains(tag, mag, method)
        cells = []
        for cond in ORDER:
            by = g.get(cond, {})
            if not by:
                cells.append("-")
                continue
            other = [v for k, v in by.items() if k != "monuseg"]
            cells.append(f"{by.get('monuseg', float('nan')):+.2f} / {np.mean(other):+.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tag")
    ap.add_argument("--model", action="append", default=[])
    ap.add_argument("--coding-unknown", action="store_true")
    ap.add_argument("--mag", action="append", choices=("40x", "20x", "native"), default=None)
    ap.add_argument("--summary", nargs="*")
    ap.add_argument("--sites", type=Path, help="a folder of slide crops (slide_crops.py)")
    ap.add_argument(
        "--table",
        nargs="*",
        metavar="LABEL=TAG:METHOD",
        help="print a markdown table of gains (MoNuSeg / mean of the other sources)",
    )
    args = ap.parse_args()
    if args.table is not None:
        rows = []
        for item in args.table:
            label, rest = item.split("=", 1)
            tag, method = rest.split(":", 1)
            rows.append((label, tag, method))
        for mag in args.mag or ["40x", "20x"]:
            print(f"\n{mag}\n" + markdown(rows, mag))
        return
    if args.summary is not None:
        summary(args.summary)
        return
    run(args.tag, args.model, args.coding_unknown, args.mag or ["40x", "20x"], args.sites)


if __name__ == "__main__":
    main()
