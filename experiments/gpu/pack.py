"""Pack what a GPU training run needs into `.gpu-pack/` (ignored by git), within what
the device machine is sent (64 MiB with the working tree).

    python experiments/gpu/pack.py --data ../shared/data/monuseg_train

- `train/`: the 24 training images of `experiments/monuseg_split.json`, lossless WebP,
  each cut to the largest centred square that keeps the pack inside the budget (the
  tissue of every organ stays; only the margins go);
- `val/`: the 6 validation images' centred 256 px crops (what training validates on);
- `wheels/`: pydantic and its parts, absent from the machine's Python (imagecodecs, 28
  MB, does not fit: `experiments/gpu/shim` stands in for it with Pillow);
- `configs/`: one training config per run of `experiments/gpu/runs.json`.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PACK = REPO / ".gpu-pack"
LIMIT = 64 * 2**20
WHEELS = ["pydantic==2.*", "pydantic-core", "annotated-types", "typing-inspection"]
SIDES = range(1000, 399, -25)


def travelling_bytes() -> int:
    """Bytes of the working tree that travel (tracked and untracked-not-ignored files)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    paths = [REPO / p.decode() for p in out.split(b"\0") if p]
    return sum(p.stat().st_size for p in paths if p.is_file())


def webp(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "WEBP", lossless=True, quality=100, method=4)
    return buf.getvalue()


def centre(img: np.ndarray, side: int) -> np.ndarray:
    y, x = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
    return img[y : y + side, x : x + side]


def fetch_wheels(dest: Path) -> None:
    """pydantic's wheels for the machine's Python (3.12, x86-64 Linux); the installed
    pydantic's version is pinned so both ends validate configs alike."""
    import pydantic
    import pydantic_core

    dest.mkdir(parents=True)
    names = [
        f"pydantic=={pydantic.VERSION}",
        f"pydantic-core=={pydantic_core.__version__}",
        "annotated-types",
        "typing-inspection",
    ]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            "--implementation",
            "cp",
            "--platform",
            "manylinux_2_28_x86_64",
            "--platform",
            "manylinux_2_17_x86_64",
            "--platform",
            "manylinux2014_x86_64",
            "-d",
            str(dest),
            *names,
        ],
        check=True,
    )


def main() -> None:
    from napari_srgan_sqe.training.data import load_rgb

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="the MoNuSeg training folder")
    ap.add_argument("--margin-mib", type=float, default=1.5)
    args = ap.parse_args()
    split = json.loads((REPO / "experiments" / "monuseg_split.json").read_text())
    runs = json.loads((HERE / "runs.json").read_text())
    shutil.rmtree(PACK, ignore_errors=True)
    PACK.mkdir()
    fetch_wheels(PACK / "wheels")

    (PACK / "val").mkdir()
    val_names = []
    for name in split["val"]:
        stem = Path(name).stem
        (PACK / "val" / f"{stem}.webp").write_bytes(webp(centre(load_rgb(args.data / name), 256)))
        val_names.append(f"{stem}.webp")

    train = {Path(n).stem: load_rgb(args.data / n) for n in split["train"]}
    used = travelling_bytes() + sum(p.stat().st_size for p in PACK.rglob("*") if p.is_file())
    budget = LIMIT - used - int(args.margin_mib * 2**20)
    # bytes grow with the area: start from the side that the full images' size predicts
    full = sum(len(webp(v)) for v in list(train.values())[:4]) * len(train) / 4
    start = int(1000 * (budget / full) ** 0.5 // 25 * 25)
    for side in [s for s in SIDES if s <= start]:
        coded = {k: webp(centre(v, min(side, *v.shape[:2]))) for k, v in train.items()}
        total = sum(map(len, coded.values()))
        print(f"training crops of {side} px: {total / 2**20:.1f} MiB (budget {budget / 2**20:.1f})")
        if total <= budget:
            break
    else:
        raise SystemExit(f"even {SIDES[-1]} px crops take {total} bytes, over {budget}")
    (PACK / "train").mkdir()
    for k, data in coded.items():
        (PACK / "train" / f"{k}.webp").write_bytes(data)
    (PACK / "split.json").write_text(
        json.dumps(
            {
                "train": [f"{k}.webp" for k in train],
                "val": val_names,
                "note": f"experiments/monuseg_split.json; training images cut to {side} px centred",
            },
            indent=1,
        )
    )

    from napari_srgan_sqe.models.modelfile import reads_coding

    (PACK / "configs").mkdir()
    for run in runs:
        base = json.loads((REPO / "experiments" / "configs" / run["base"]).read_text())
        cfg = {**base, **run.get("config", {})}
        cfg["model"] = json.loads(json.dumps(base["model"]))
        if run.get("grow"):
            cfg["model"]["generator"]["n_blocks"], cfg["model"]["generator"]["channels"] = run[
                "grow"
            ]
            cfg["init_from"] = f"../init/{run['name']}.safetensors"  # train_gpu.py grows it
        else:
            cfg["init_from"] = run["from"]
        # the model it starts from may be told the coding: train it so, on every JPEG
        # colour coding, in bf16 (the GPU's fast arithmetic)
        if reads_coding(run["from"]):
            cfg["model"]["generator"]["coding"] = True
        cfg["degradation"] = {
            **cfg.get("degradation", {}),
            "jpeg_colours": ["ycbcr420", "ycbcr444", "rgb"],
        }
        cfg.update(precision="bf16", channels_last=True)
        cfg.update(
            data=["../train"],
            val_data=["../val"],
            split_file=None,
            val_images=6,
            out_dir=f"../../.gpu-runs/{run['name']}",
            device="cuda",
            num_threads=None,
        )
        (PACK / "configs" / f"{run['name']}.json").write_text(json.dumps(cfg, indent=1))
    size = travelling_bytes() + sum(p.stat().st_size for p in PACK.rglob("*") if p.is_file())
    print(f"{PACK}: training crops {side} px, {size / 2**20:.1f} MiB travel (limit 64)")


if __name__ == "__main__":
    main()
