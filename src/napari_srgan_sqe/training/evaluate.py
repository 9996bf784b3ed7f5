"""Evaluation: degradation then SR on held-out HR images, scored against HR next to
baselines.

Every method sees the same LR and is scored with the same metrics, on the whole image.
The LR is the degradation preset's (D_s for 'clean', the seeded scanner chain for
'scanner'), optionally stored with a codec as a scanner's file would: JPEG at an IJG
quality (YCbCr 4:2:0) or JPEG 2000 at a compression ratio. Several LR conditions are
scored in one run; the bicubic baseline of each is computed from that same LR. Bicubic is `models.blocks.bicubic_upscale`
(D_s's pixel centres, symmetric padding: the same as the `bicubic-x4` model), Lanczos is
Pillow's.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_srgan_sqe.config import ConfigError, degradation_preset
from napari_srgan_sqe.degradation import degrade_with
from napari_srgan_sqe.io.atomic import atomic_path
from napari_srgan_sqe.io.codecs import APERIO_J2K_RATIO, CODECS, JPEG_COLOURS, code_image
from napari_srgan_sqe.metrics import METRICS as METRIC_TABLE
from napari_srgan_sqe.metrics import all_metrics
from napari_srgan_sqe.models.blocks import bicubic_upscale  # re-exported for callers
from napari_srgan_sqe.models.modelfile import SRModel, load_model
from napari_srgan_sqe.models.predictor import Predictor
from napari_srgan_sqe.training.data import DataError, find_images, load_rgb

METRICS = tuple(m.key for m in METRIC_TABLE)
"""The metrics evaluated, in `napari_srgan_sqe.metrics.METRICS`'s order."""
SPREADS = tuple(f"{m}_sd" for m in METRICS)
"""Per image: the spread of each metric over a stochastic model's samples (0 otherwise)."""

__all__ = ["EvalResult", "LRCondition", "bicubic_upscale", "evaluate", "lanczos_upscale"]


@dataclass(frozen=True)
class LRCondition:
    """How the LR of an evaluation is stored: codec 'none', 'jpeg' (quality = IJG
    quality 1-100; colour 'ycbcr420', 'ycbcr444' or 'rgb', Aperio's JPEG/RGB) or
    'jpeg2000' (quality = compression ratio, default Aperio's)."""

    codec: str = "none"
    quality: float | None = None
    colour: str = "ycbcr420"

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ConfigError(f"unknown LR codec {self.codec!r}; choose {', '.join(CODECS)}")
        if self.colour not in JPEG_COLOURS:
            raise ConfigError(
                f"unknown JPEG colour coding {self.colour!r}; choose {', '.join(JPEG_COLOURS)}"
            )
        if self.codec == "jpeg" and (self.quality is None or not 1 <= self.quality <= 100):
            raise ConfigError(f"JPEG LR needs a quality in 1..100, got {self.quality}")
        if self.codec == "jpeg2000" and self.quality is not None and self.quality <= 1:
            raise ConfigError(f"JPEG 2000 LR needs a compression ratio above 1, got {self.quality}")
        if self.codec == "none" and self.quality is not None:
            raise ConfigError("lossless LR takes no quality")

    @property
    def label(self) -> str:
        if self.codec == "none":
            return "lossless"
        if self.codec == "jpeg":
            assert self.quality is not None  # checked in __post_init__
            suffix = {"ycbcr420": "", "ycbcr444": "-444", "rgb": "-rgb"}[self.colour]
            return f"jpeg-q{int(self.quality)}{suffix}"
        ratio = APERIO_J2K_RATIO if self.quality is None else self.quality
        return f"jpeg2000-r{ratio:g}"

    @property
    def coding(self) -> tuple[str, int | None, str | None]:
        """What a coding-conditioned model is told about this LR (`models.coding`)."""
        if self.codec == "jpeg":
            assert self.quality is not None  # checked in __post_init__
            return ("jpeg", int(self.quality), self.colour)
        return (self.codec, None, None)

    def apply(self, lr: np.ndarray) -> np.ndarray:
        if self.codec == "jpeg":
            return code_image(lr, self.codec, self.quality, colour=self.colour)
        return code_image(lr, self.codec, self.quality)


def lanczos_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """Lanczos up-sampling (Pillow), uint8 in and out."""
    from PIL import Image

    h, w = lr.shape[:2]
    return np.asarray(Image.fromarray(lr).resize((w * scale, h * scale), Image.Resampling.LANCZOS))


@dataclass
class EvalResult:
    """Per-image and mean metrics of every method."""

    rows: list[dict] = field(default_factory=list)
    """One row per (LR condition, image, method): lr, image, method, and each metric."""
    seen: dict[str, list[str]] = field(default_factory=dict)
    """Per method: the evaluated images listed in its model's training data (their
    numbers are not held-out ones); methods without such images are absent."""

    @property
    def conditions(self) -> list[str]:
        """The LR condition labels, in the order evaluated."""
        return list(dict.fromkeys(r["lr"] for r in self.rows))

    def summaries(self) -> dict[str, dict[str, dict[str, float]]]:
        """`summary` of every LR condition, by label."""
        return {c: self.summary(c) for c in self.conditions}

    def summary(self, lr: str | None = None) -> dict[str, dict[str, float]]:
        """Mean of each metric per method for one LR condition (default: the first),
        MS-SSIM over the images large enough."""
        conds = self.conditions
        lr = lr if lr is not None else (conds[0] if conds else None)
        out: dict[str, dict[str, float]] = {}
        mine = [r for r in self.rows if r["lr"] == lr]
        for method in dict.fromkeys(r["method"] for r in mine):
            rows = [r for r in mine if r["method"] == method]
            out[method] = {
                m: float(np.mean([r[m] for r in rows if r.get(m) is not None]))
                for m in (*METRICS, *SPREADS)
                if any(r.get(m) is not None for r in rows)
            }
        return out

    def table(self) -> str:
        """A plain-text table per LR condition, with PSNR gain over bicubic of that LR."""
        blocks = []
        for cond in self.conditions:
            s = self.summary(cond)
            base = s.get("bicubic", {}).get("psnr")
            head = f"{'LR: ' + cond:<28}" + "".join(f"{m:>9}" for m in METRICS)
            head += f"{'dB vs bic':>11}"
            lines = [head, "-" * len(head)]
            for method, vals in s.items():
                cells = "".join(f"{vals.get(m, float('nan')):>9.4f}" for m in METRICS)
                gain = f"{vals['psnr'] - base:>+11.2f}" if base is not None else ""
                spread = vals.get("psnr_sd", 0.0)
                note = f"  (PSNR spread over samples {spread:.2f} dB)" if spread else ""
                lines.append(f"{method:<28}{cells}{gain}{note}")
            blocks.append("\n".join(lines))
        blocks.extend(f"warning: {self.seen_text(method)}" for method in self.seen)
        return "\n\n".join(blocks)

    def seen_text(self, method: str) -> str:
        """'2 of the images (a.png, b.png) are in the training data of M: ...'."""
        names = self.seen[method]
        total = len(dict.fromkeys(r["image"] for r in self.rows)) or len(names)
        listed = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        return (
            f"{len(names)} of the {total} images ({listed}) are in the training data of "
            f"{method}: its numbers on them are not held-out"
        )

    def write(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write rows as CSV and the summary as JSON (atomically)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        csv_path, json_path = out / "evaluation.csv", out / "evaluation.json"
        with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(
                f, fieldnames=["lr", "image", "method", *METRICS, "samples", *SPREADS]
            )
            writer.writeheader()
            writer.writerows(self.rows)
        with atomic_path(json_path) as tmp:
            Path(tmp).write_text(
                json.dumps(
                    {
                        "summary": self.summary(),
                        "by_lr": self.summaries(),
                        "rows": self.rows,
                        "seen_in_training": self.seen,
                    },
                    indent=2,
                )
            )
        return csv_path, json_path


def evaluate(
    models: Sequence[SRModel | str | Path],
    data: Sequence[str | Path],
    *,
    scale: int = 4,
    device: str = "auto",
    baselines: Sequence[str] = ("bicubic", "lanczos"),
    crops_dir: str | Path | None = None,
    crop_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
    degradation: str = "clean",
    lr_conditions: Sequence[LRCondition | tuple[str, float | None]] = (LRCondition(),),
    seed: int = 0,
    zero_shot_steps: int = 300,
    samples: int = 1,
    tell_coding: bool = True,
) -> EvalResult:
    """Score models and baselines on HR images (folders or files).

    LR = the `degradation` preset of the HR ('clean': D_s; 'scanner': the scanner
    chain seeded by (seed, image index)), then stored as each of `lr_conditions`.
    A zero-shot model (ZSSR) is trained on each LR image first (`zero_shot_steps`,
    pseudo-LR made with the clean D_s for lossless LR and the scanner chain for
    coded LR), then applied to it: the method as a user runs it on a slide.
    A stochastic model (SR3) draws `samples` samples per image, seeds 0, 1, ...: its
    row holds the mean of each metric over them and `<metric>_sd` their spread (with
    one sample: the metrics of seed 0, spread 0); with more than one, a row
    '<name> [mean of N]' scores the per-pixel mean of the samples too.
    A coding-conditioned model is told each condition's coding (codec, JPEG quality
    and colour coding); `tell_coding=False` tells it nothing (unknown coding).
    """
    if samples < 1:
        raise ConfigError(f"samples must be at least 1, got {samples}")
    preset = degradation_preset(degradation)
    conds = [c if isinstance(c, LRCondition) else LRCondition(*c) for c in lr_conditions]
    if not conds:
        raise ConfigError("no LR condition to evaluate")
    if len({c.label for c in conds}) != len(conds):
        raise ConfigError("the same LR condition was asked for twice")
    paths = find_images(data)
    if not paths:
        raise DataError(f"no images found in {', '.join(map(str, data))}")
    loaded = [m if isinstance(m, SRModel) else load_model(m) for m in models]
    for m in loaded:
        if m.scale != scale:
            raise ConfigError(
                f"model {m.name!r} is for scale {m.scale}, but the evaluation is at scale "
                f"{scale} (--scale, default 4): evaluate it with --scale {m.scale}"
            )
    upscalers: dict[str, Callable[[np.ndarray, LRCondition], np.ndarray]] = {}
    for b in baselines:
        if b == "bicubic":
            upscalers[b] = lambda lr, _c: bicubic_upscale(lr, scale)
        elif b == "lanczos":
            upscalers[b] = lambda lr, _c: lanczos_upscale(lr, scale)
        else:
            raise ConfigError(f"unknown baseline {b!r}; choose bicubic or lanczos")
    stochastic: dict[str, list[Predictor]] = {}
    for label, m in zip(_labels(models, loaded), loaded):
        if m.descriptor.kind == "zero-shot":
            upscalers[label] = _zero_shot_upscaler(m, device, zero_shot_steps, preset.preset, seed)
        elif m.descriptor.stochastic:
            stochastic[label] = [Predictor(m, device=device, seed=k) for k in range(samples)]
        else:
            upscalers[label] = _upscaler(m, device, tell_coding)

    result = EvalResult()
    for label, m in zip(_labels(models, loaded), loaded):
        seen = seen_in_training(m, paths)
        if seen:
            result.seen[label] = seen
    for i, path in enumerate(paths):
        hr = load_rgb(path)
        hr = hr[: hr.shape[0] - hr.shape[0] % scale, : hr.shape[1] - hr.shape[1] % scale]
        base_lr = degrade_with(hr, preset, scale, seed=[seed, i])
        for cond in conds:
            lr = cond.apply(base_lr)
            outputs = {name: up(lr, cond) for name, up in upscalers.items()}
            scores = {name: [all_metrics(sr, hr)] for name, sr in outputs.items()}
            for name, preds in stochastic.items():
                drawn = [p.predict_image(lr) for p in preds]
                outputs[name] = drawn[0]  # the crops show seed 0
                scores[name] = [all_metrics(sr, hr) for sr in drawn]
                if len(drawn) > 1:
                    mean: np.ndarray = np.stack(drawn).astype(np.float32).mean(axis=0)
                    key = f"{name} [mean of {len(drawn)}]"
                    outputs[key] = np.clip(np.round(mean), 0, 255).astype(np.uint8)
                    scores[key] = [all_metrics(outputs[key], hr)]
            for name, runs in scores.items():
                result.rows.append(
                    {"lr": cond.label, "image": path.name, "method": name, **_pooled(runs)}
                )
            if crops_dir is not None:
                stem = path.stem if len(conds) == 1 else f"{path.stem}_{cond.label}"
                _save_crops(Path(crops_dir) / f"{stem}.png", lr, outputs, hr, scale, crop_size)
        if progress is not None:
            progress(i + 1, len(paths))
    return result


def seen_in_training(model: SRModel, paths: Sequence[Path]) -> list[str]:
    """File names of `paths` that the model or a model it derives from trained on: its
    `training_data` and `inherited_training_data` metadata (the trainer records the
    file names it trained on, comma-separated; fine-tuning and adaptation carry the
    parent's forward)."""
    meta = model.metadata
    text = f"{meta.get('training_data', '')},{meta.get('inherited_training_data', '')}"
    listed = {n.strip() for n in text.split(",")}
    return [p.name for p in paths if p.name in listed]


def _pooled(runs: Sequence[dict[str, float | None]]) -> dict[str, float | int | None]:
    """Each metric's mean over the runs (samples of one image), its spread `<m>_sd`
    (population standard deviation; 0 for one run) and the number of runs."""
    out: dict[str, float | int | None] = {"samples": len(runs)}
    for m in METRICS:
        vals = [r.get(m) for r in runs]
        if any(v is None for v in vals):
            out[m] = out[f"{m}_sd"] = None
        else:
            arr = np.asarray(vals, dtype=float)
            out[m], out[f"{m}_sd"] = float(arr.mean()), float(arr.std())
    return out


def _upscaler(
    model: SRModel, device: str, tell_coding: bool
) -> Callable[[np.ndarray, LRCondition], np.ndarray]:
    """SR of an LR image; a coding-conditioned model is told the condition's coding
    (or nothing, `tell_coding=False`: how it does on a slide that records none)."""
    preds: dict[tuple[str, int | None, str | None] | None, Predictor] = {}

    def up(lr: np.ndarray, cond: LRCondition) -> np.ndarray:
        coding = cond.coding if tell_coding else None
        if coding not in preds:
            preds[coding] = Predictor(model, device=device, coding=coding)
        return preds[coding].predict_image(lr)

    return up


def _zero_shot_upscaler(
    model: SRModel, device: str, steps: int, preset: str, seed: int
) -> Callable[[np.ndarray, LRCondition], np.ndarray]:
    """Train `model` on the LR image (fine-tuning works on a copy), then super-resolve it."""
    from napari_srgan_sqe.training.zero_shot import zero_shot, zero_shot_config

    def up(lr: np.ndarray, cond: LRCondition) -> np.ndarray:
        lossy = cond.codec != "none" or preset == "scanner"
        cfg = zero_shot_config(steps, degradation="scanner" if lossy else "clean", seed=seed)
        trained = zero_shot([lr], model=model, config=cfg, device=device)
        return Predictor(trained, device=device).predict_image(lr)

    return up


def _labels(sources: Sequence[SRModel | str | Path], models: Sequence[SRModel]) -> list[str]:
    """Row labels: the model names, made unique with the file name (or a counter)."""
    labels: list[str] = []
    for src, m in zip(sources, models):
        label = m.name
        if label in labels or label in ("bicubic", "lanczos"):
            hint = (
                "/".join(Path(src).parts[-2:])
                if isinstance(src, str | Path)
                else str(len(labels) + 1)
            )
            label = f"{m.name} [{hint}]"
        labels.append(label)
    return labels


CROP_LABEL_BAND = 16
"""Height (px) of the white band naming each panel above an evaluation crop."""


def _save_crops(
    path: Path,
    lr: np.ndarray,
    outputs: dict[str, np.ndarray],
    hr: np.ndarray,
    scale: int,
    size: int,
) -> None:
    """LR (nearest-neighbour) | each method | HR, for a centre crop, side by side, each
    panel named in a white band above it."""
    from PIL import Image, ImageDraw

    size = min(size, hr.shape[0], hr.shape[1])
    size -= size % scale
    y = (hr.shape[0] - size) // 2 // scale * scale
    x = (hr.shape[1] - size) // 2 // scale * scale
    lr_crop = lr[y // scale : (y + size) // scale, x // scale : (x + size) // scale]
    panels = [np.repeat(np.repeat(lr_crop, scale, 0), scale, 1)]
    panels += [o[y : y + size, x : x + size] for o in outputs.values()]
    panels.append(hr[y : y + size, x : x + size])
    gap = np.full((size, 4, 3), 255, np.uint8)
    row = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
    band = CROP_LABEL_BAND
    labelled = np.full((row.shape[0] + band, row.shape[1], 3), 255, np.uint8)
    labelled[band:] = row
    image = Image.fromarray(labelled)
    draw = ImageDraw.Draw(image)
    names = ["LR (nearest)", *outputs, "HR"]
    for i, name in enumerate(names):
        text = name if draw.textlength(name) <= size - 4 else name[: max(1, size // 7)] + "..."
        draw.text((i * (size + 4) + 2, 3), text, fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
