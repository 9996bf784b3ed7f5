"""Real LR for the 'unpaired' recipe: patches drawn from slides or images, by (seed, step).

The 'unpaired' recipe (Maeda 2020) needs patches of the LR it adapts to: a slide as
the scanner stored it, with no HR. `RealLRSampler` draws them from level 0 of slides
(`io.slides.open_slide`, read lazily) or from images (`training.data.load_rgb`),
inside optional rectangles (x, y, w, h), with `np.random.default_rng([seed, step,
REAL_STREAM])`: a batch is a pure function of (seed, step), so a resumed run sees
exactly the patches an uninterrupted one would. Patches that are mostly background
(near-white glass) are drawn again, a fixed number of times.

Small sources (up to `CACHE_MPX` megapixels in all) are read into memory once; larger
ones are read window by window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_srgan_sqe.config import RealLRSource
from napari_srgan_sqe.io.errors import DataError

__all__ = [
    "ADAPT_TOLERANCE_DB",
    "CACHE_MPX",
    "REAL_STREAM",
    "AdaptSettings",
    "RealLRImage",
    "RealLRSampler",
    "background_fraction",
    "check_adaptable",
    "check_real_regions",
    "clean_lr_source",
    "iter_adapt",
    "open_real_lr",
    "real_lr_image",
]

REAL_STREAM = 0x5EA1
"""Third seed word of the real-LR stream, so its draws differ from the HR sampler's."""
CACHE_MPX = 48.0
"""Regions up to this many megapixels (all sources together) are held in memory."""
WHITE_LEVEL = 215
"""A pixel whose three channels are all at least this bright is background (glass)."""
BACKGROUND_TRIES = 10
"""Draws of a patch before a mostly-background one is taken anyway."""
PLAIN_IMAGES = {".png", ".jpg", ".jpeg"}

Rect = tuple[int, int, int, int]


@dataclass
class RealLRImage:
    """One real-LR source: level 0 (numpy or a lazy dask array, (y, x, 3) uint8) and the
    rectangles (x, y, w, h) patches are drawn from (clipped to the image)."""

    level: Any
    regions: list[Rect]
    name: str


def background_fraction(patch: np.ndarray) -> float:
    """Fraction of near-white pixels of a (h, w, 3) uint8 patch."""
    return float((patch.min(axis=-1) >= WHITE_LEVEL).mean())


def _clip(rect: Sequence[int], shape: Sequence[int], name: str) -> Rect:
    x, y, w, h = (int(v) for v in rect)
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(int(shape[1]), x + w), min(int(shape[0]), y + h)
    if x1 <= x0 or y1 <= y0:
        raise DataError(
            f"{name}: region {(x, y, w, h)} lies outside the image ({shape[1]} x {shape[0]} px)"
        )
    return x0, y0, x1 - x0, y1 - y0


def real_lr_image(level: Any, regions: Sequence[Sequence[int]], name: str) -> RealLRImage:
    """A source from an array-like level 0 and rectangles (none: the whole image)."""
    shape = tuple(int(v) for v in level.shape)
    if len(shape) != 3 or shape[2] != 3:
        raise DataError(f"{name}: real LR must be RGB (y, x, 3), got shape {shape}")
    rects = [_clip(r, shape, name) for r in regions] or [(0, 0, shape[1], shape[0])]
    return RealLRImage(level, rects, name)


def open_real_lr(sources: Sequence[RealLRSource], base: Path | None = None) -> list[RealLRImage]:
    """Open the real-LR sources of a config: plain images (PNG, JPEG) with `load_rgb`, a
    folder as the PNG / JPEG images in it, everything else as a slide
    (`open_slide(path).levels[0]`, lazy). Relative paths are resolved against `base`
    (the config file's folder)."""
    from napari_srgan_sqe.io import _formats
    from napari_srgan_sqe.io.slides import SlideError, open_slide
    from napari_srgan_sqe.training.data import find_images, load_rgb, resolve_path

    out = []
    for src in sources:
        p = resolve_path(base, src.path)
        if not p.exists():
            raise DataError(f"real LR {p}: no such file or folder")
        if p.is_dir() and not _formats.looks_like_zarr(p) and not _formats.dicom_files(p):
            if src.regions:
                raise DataError(f"real LR {p}: regions apply to one image, not to a folder")
            files = [f for f in find_images([p]) if f.suffix.lower() in PLAIN_IMAGES]
            if not files:
                raise DataError(f"real LR {p}: the folder holds no PNG or JPEG images")
            out += [real_lr_image(load_rgb(f), [], f.name) for f in files]
            continue
        if p.suffix.lower() in PLAIN_IMAGES:
            level: Any = load_rgb(p)
        else:
            try:
                level = open_slide(p).levels[0]
            except SlideError as exc:
                raise DataError(f"real LR: {exc}") from None
        out.append(real_lr_image(level, src.regions, p.name))
    return out


class RealLRSampler:
    """Seeded batches of real-LR patches, float32 NCHW in [0, 1], random flips and
    90-degree rotations; every region is drawn in proportion to its area."""

    def __init__(
        self,
        images: Sequence[RealLRImage],
        *,
        patch_size: int,
        batch_size: int,
        seed: int = 0,
        augment: bool = True,
        max_background: float = 0.5,
    ) -> None:
        if not images:
            raise DataError("no real LR: give at least one slide or image to adapt to")
        self.patch_size, self.batch_size = int(patch_size), int(batch_size)
        self.seed, self.augment, self.max_background = int(seed), augment, max_background
        p = self.patch_size
        self._regions: list[tuple[int, Rect]] = []
        for i, im in enumerate(images):
            for r in im.regions:
                if r[2] < p or r[3] < p:
                    raise DataError(
                        f"{im.name}: region {r} is smaller than a real-LR patch ({p} x {p} px); "
                        "draw a larger one or choose a smaller real_patch_size"
                    )
                self._regions.append((i, r))
        self.images = list(images)
        areas = np.array([r[2] * r[3] for _, r in self._regions], np.float64)
        self._weights = areas / areas.sum()
        self._cache: dict[int, np.ndarray] = {}
        if areas.sum() <= CACHE_MPX * 1e6:
            for k, (i, (x, y, w, h)) in enumerate(self._regions):
                self._cache[k] = np.ascontiguousarray(
                    np.asarray(self.images[i].level[y : y + h, x : x + w]), np.uint8
                )

    @property
    def n_regions(self) -> int:
        return len(self._regions)

    def _window(self, k: int, y: int, x: int) -> np.ndarray:
        """The p x p window at (y, x) of region k (region coordinates)."""
        p = self.patch_size
        if k in self._cache:
            return self._cache[k][y : y + p, x : x + p]
        i, (rx, ry, _, _) = self._regions[k]
        win = self.images[i].level[ry + y : ry + y + p, rx + x : rx + x + p]
        return np.asarray(win, np.uint8)

    def _draw(self, step: int) -> list[tuple[tuple[int, int, int, int, int], np.ndarray]]:
        rng = np.random.default_rng([self.seed, step, REAL_STREAM])
        p, out = self.patch_size, []
        for _ in range(self.batch_size):
            for _attempt in range(BACKGROUND_TRIES):
                k = int(rng.choice(len(self._regions), p=self._weights))
                _, (_, _, w, h) = self._regions[k]
                y, x = int(rng.integers(h - p + 1)), int(rng.integers(w - p + 1))
                window = self._window(k, y, x)
                if background_fraction(window) <= self.max_background:
                    break
            rot = int(rng.integers(4)) if self.augment else 0
            flip = int(rng.random() < 0.5) if self.augment else 0
            out.append(((k, y, x, rot, flip), window))
        return out

    def origins(self, step: int) -> list[tuple[int, int, int, int, int]]:
        """(region index, y, x, rotation, flip) of each patch of the batch of `step`."""
        return [origin for origin, _ in self._draw(step)]

    def batch(self, step: int) -> np.ndarray:
        """The real-LR batch of global step `step` (deterministic), (N, 3, p, p) float32."""
        p = self.patch_size
        out = np.empty((self.batch_size, p, p, 3), np.float32)
        for n, ((_, _, _, rot, flip), window) in enumerate(self._draw(step)):
            patch = np.rot90(window, k=rot)
            out[n] = (patch[:, ::-1] if flip else patch).astype(np.float32) / 255.0
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


# ----------------------------------------------------------------------------- adapting to a slide
ADAPT_TOLERANCE_DB = 0.5
"""An adapted model is kept only if its clean check stays within this of the start's."""
ADAPT_VAL_TILE = 128
"""Side of the clean check's HR tiles (px of the clean source)."""
ADAPT_VAL_TILES = 6
_CHECK_STEP = 2**40
"""The real-LR sampler's step whose batch measures how much C changes the slide's LR."""


@dataclass(frozen=True)
class AdaptSettings:
    """Adapting a model to a slide (the Fine-tune widget's "Adapt to this slide")."""

    steps: int = 200
    max_minutes: float | None = None
    seed: int = 0
    batch_size: int = 8
    patch_size: int = 48
    """LR px a side of the real and clean patches."""
    correction_layers: int = 7
    correction_channels: int = 48
    lr: float = 1e-4
    val_every: int = 25


def clean_lr_source() -> np.ndarray:
    """The clean LR of slide adaptation: the bundled sample slide's level 0 (20x, 0.5
    um/px) reduced by D_2 (Gaussian blur and 2 x 2 mean: 10x, the LR magnification the
    bundled models were trained for), which averages its JPEG Q30 artefacts away.
    Read once per process (about 1110 x 1483 px)."""
    global _CLEAN
    if _CLEAN is None:
        from napari_srgan_sqe.degradation import degrade
        from napari_srgan_sqe.io.sample import sample_slide_path
        from napari_srgan_sqe.io.slides import open_slide

        level0 = np.asarray(open_slide(sample_slide_path()).levels[0])
        _CLEAN = np.ascontiguousarray(degrade(level0, 2))
    return _CLEAN


_CLEAN: np.ndarray | None = None


def _check_tiles(image: np.ndarray, side: int, count: int) -> list[np.ndarray]:
    """Up to `count` tissue tiles (side x side) on a grid over `image`."""
    tiles = []
    for y in range(0, image.shape[0] - side + 1, side):
        for x in range(0, image.shape[1] - side + 1, side):
            t = image[y : y + side, x : x + side]
            if background_fraction(t) < 0.2:
                tiles.append(np.ascontiguousarray(t))
    step = max(1, len(tiles) // count)
    return tiles[::step][:count]


def check_adaptable(model: Any) -> None:
    """ConfigError (or StochasticModelError) when `model` cannot be adapted to a slide:
    adaptation puts a correction net in front of an SRGAN-family network."""
    from napari_srgan_sqe.config import ConfigError, GeneratorConfig, UnpairedConfig
    from napari_srgan_sqe.models.method import require_deterministic

    require_deterministic(model, "adapting to a slide")
    arch = model.config.generator
    if model.variant == "bicubic" or not isinstance(arch, GeneratorConfig | UnpairedConfig):
        raise ConfigError(
            f"adapting to a slide puts a correction net in front of an SRGAN-family network "
            f"(lrnet, srresnet) or continues an adapted model; {model.name!r} is "
            f"{model.arch!r}: Enhance with srgan-sqe-he-x4-clean or srgan-sqe-he-x4 first"
        )


def check_real_regions(
    rects: Sequence[Sequence[int]], shape: Sequence[int], patch: int
) -> list[Rect]:
    """The rectangles (x, y, w, h) as ints; RegionError naming the first that lies
    outside the image (`shape` (y, x, ...)) or is smaller than a `patch` x `patch` patch."""
    from napari_srgan_sqe.io.errors import RegionError

    if not rects:
        raise RegionError("no region: draw a rectangle or bring part of the slide into view")
    out = []
    for r in rects:
        x, y, w, h = (int(v) for v in r)
        if x < 0 or y < 0 or x + w > int(shape[1]) or y + h > int(shape[0]) or w <= 0 or h <= 0:
            raise RegionError(
                f"region {(x, y, w, h)} lies outside the image ({shape[1]} x {shape[0]} LR px)"
            )
        if w < patch or h < patch:
            raise RegionError(
                f"region {(x, y, w, h)} is smaller than a patch ({patch} x {patch} LR px): "
                "draw a larger one or zoom out"
            )
        out.append((x, y, w, h))
    return out


def iter_adapt(
    parent: Any,
    real: Sequence[RealLRImage],
    *,
    settings: AdaptSettings | None = None,
    stop_event: Any = None,
    device: str = "auto",
    name: str | None = None,
    metadata: dict[str, str] | None = None,
) -> Any:
    """Adapt `parent` (an SRGAN-family model, or an adapted one) to the real LR `real`
    with the 'unpaired' recipe: a correction net C in front of the parent's network U,
    trained by Maeda 2020's translation losses against the clean LR of
    `clean_lr_source` (U stays as it is). Returns the event stream of fine-tuning
    (`training.finetune`: Started, Step, Validated, Finished) so the same GUI shows it.

    Without HR of the slide there is no ground truth for C; the check that stands in
    for validation is SR of held-out clean tiles (HR = tiles of the clean source, LR =
    D_4 of them): C must leave clean LR alone, so the adapted model is kept only if
    that PSNR stays within ADAPT_TOLERANCE_DB of the start's. `Validated.best` says
    whether a state is within it. Raises ConfigError at once for a model that cannot
    be adapted.
    """
    from napari_srgan_sqe.config import (
        ModelConfig,
        TrainConfig,
        UnpairedConfig,
        UnpairedTrainConfig,
    )
    from napari_srgan_sqe.io.sample import sample_slide_path

    st = settings or AdaptSettings()
    check_adaptable(parent)
    arch = parent.config.generator
    if isinstance(arch, UnpairedConfig):
        ucfg = arch
    else:
        ucfg = UnpairedConfig(
            correction_layers=st.correction_layers,
            correction_channels=st.correction_channels,
            sr=arch,
        )
    s = ucfg.scale
    cfg = TrainConfig(
        data=[str(sample_slide_path())],  # the clean LR's source (reduced by D_2)
        model=ModelConfig(name=name or f"{parent.name}-adapted", variant="l1", generator=ucfg),
        recipe="unpaired",
        steps=st.steps,
        unpaired=UnpairedTrainConfig(
            real_lr=[{"path": im.name, "regions": im.regions} for im in real],
            real_patch_size=st.patch_size,
            real_batch_size=st.batch_size,
            train_sr=False,
        ),
        patch_size=st.patch_size * s,
        batch_size=st.batch_size,
        lr=st.lr,
        betas=(0.5, 0.999),
        seed=st.seed,
    )
    real_sampler = RealLRSampler(
        real, patch_size=st.patch_size, batch_size=st.batch_size, seed=st.seed
    )
    clean = clean_lr_source()
    cut = clean.shape[0] * 4 // 5  # the bottom fifth is held out for the clean check
    clean_sampler = RealLRSampler(
        [real_lr_image(clean[:cut], [], "sample slide, D_2")],
        patch_size=st.patch_size,
        batch_size=st.batch_size,
        seed=st.seed + 1,
    )
    checks = _check_tiles(clean[cut:], ADAPT_VAL_TILE, ADAPT_VAL_TILES)
    return _adapt(
        parent, cfg, real_sampler, clean_sampler, checks, st, stop_event, device, metadata
    )


def _adapt(
    parent: Any,
    cfg: Any,
    real_sampler: RealLRSampler,
    clean_sampler: RealLRSampler,
    checks: list[np.ndarray],
    st: AdaptSettings,
    stop_event: Any,
    device_name: str,
    metadata: dict[str, str] | None,
) -> Any:
    import copy
    import json
    import time

    import torch

    from napari_srgan_sqe.config import UnpairedConfig
    from napari_srgan_sqe.degradation import degrade
    from napari_srgan_sqe.metrics import psnr, ssim
    from napari_srgan_sqe.models.modelfile import SRModel, lineage
    from napari_srgan_sqe.models.predictor import resolve_device
    from napari_srgan_sqe.training.finetune import (
        FinetuneResult,
        Finished,
        Started,
        Step,
        Validated,
    )
    from napari_srgan_sqe.training.recipes import TrainingBatch, UnpairedRecipe

    device = torch.device(resolve_device(device_name))
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # the GUI's other random draws stay as they were
        recipe = UnpairedRecipe(cfg, device, real=real_sampler)
    if isinstance(parent.config.generator, UnpairedConfig):
        recipe.G.load_state_dict(parent.generator.state_dict())
    else:
        recipe.G.sr.load_state_dict(parent.generator.state_dict())
    net = recipe.G
    s, halo = int(net.scale), int(net.halo)
    pairs = [(degrade(t, s), t) for t in checks]
    x_check = torch.from_numpy(real_sampler.batch(_CHECK_STEP)).to(device)

    @torch.no_grad()
    def check() -> dict[str, float]:
        """SR of the held-out clean tiles vs their HR; how much C changes the slide's LR."""
        was = net.training
        net.eval()
        rows = []
        for lr, hr in pairs:
            pad = np.pad(lr, ((halo, halo), (halo, halo), (0, 0)), mode="symmetric")
            x = torch.from_numpy(pad.astype(np.float32).transpose(2, 0, 1) / 255.0)[None]
            y = net(x.to(device))[0, :, s * halo : -s * halo, s * halo : -s * halo]
            sr = (y.clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).cpu().numpy()
            rows.append((psnr(sr, hr), ssim(sr, hr)))
        changed = net.correction(x_check).clamp(0, 1)
        mse = float(((changed - x_check) ** 2).mean())
        net.train(was)
        m = np.mean(rows, axis=0)
        return {
            "psnr": float(m[0]),
            "ssim": float(m[1]),
            "lr_change_db": float(10 * np.log10(1.0 / max(mse, 1e-12))),
        }

    before = check()
    notes = [
        "unpaired adaptation: a correction net learns to turn this slide's LR into the "
        "clean LR the model was trained on; the model itself stays as it is",
        f"clean check: SR of {len(pairs)} held-out clean tiles (no HR of this slide "
        f"exists); the result is kept if it stays within {ADAPT_TOLERANCE_DB} dB",
    ]
    history: list[dict[str, Any]] = [{"kind": "val", "step": 0, "elapsed_s": 0.0, **before}]
    yield Started(st.steps, "unpaired", real_sampler.n_regions, dict(before), tuple(notes))
    yield Validated(0, before["psnr"], before["ssim"], best=True)

    deadline = None if st.max_minutes is None else t0 + 60.0 * st.max_minutes
    stopped, done, last = False, 0, dict(before)
    try:
        for step in range(1, st.steps + 1):
            if (stop_event is not None and stop_event.is_set()) or (
                deadline is not None and time.perf_counter() > deadline
            ):
                stopped = True
                break
            clean = torch.from_numpy(clean_sampler.batch(step - 1)).to(device)
            losses = recipe.train_step(step - 1, TrainingBatch(hr=clean, lr=clean))
            done = step
            elapsed = time.perf_counter() - t0
            eta = elapsed / step * (st.steps - step)
            if deadline is not None:
                eta = min(eta, max(0.0, deadline - time.perf_counter()))
            history.append({"kind": "step", "step": step, "elapsed_s": elapsed, **losses})
            yield Step(step, losses["g"], eta, {k: v for k, v in losses.items() if k != "g"})
            if step % st.val_every == 0 or step == st.steps:
                last = check()
                ok = last["psnr"] >= before["psnr"] - ADAPT_TOLERANCE_DB
                history.append({"kind": "val", "step": step, "elapsed_s": elapsed, **last})
                yield Validated(step, last["psnr"], last["ssim"], best=ok)
    finally:
        net.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        device = torch.device("cpu")
    if done and history[-1]["kind"] != "val":  # stopped between two checks
        x_check = x_check.cpu()
        last = check()
        history.append({"kind": "val", "step": done, **last})
    kept = done > 0 and last["psnr"] >= before["psnr"] - ADAPT_TOLERANCE_DB
    if not done:
        notes.append("no step was taken: the original model is kept")
    elif not kept:
        notes.append(
            f"rejected: the clean check fell from {before['psnr']:.2f} to "
            f"{last['psnr']:.2f} dB (more than {ADAPT_TOLERANCE_DB} dB): the correction "
            "alters clean LR; kept the original model"
        )
    if kept:
        notes.append(
            f"corrected vs original LR of this slide: PSNR {last['lr_change_db']:.1f} dB "
            "(the higher, the smaller the correction)"
        )
        meta = {
            **lineage(parent),
            "training_data": "unpaired adaptation to the slide's LR",
            "recipe": "unpaired",
            "unpaired_sr_trained": "false",
            "finetune_mode": "unpaired",
            "finetune_steps": str(done),
            "finetune_before": json.dumps(before),
            "finetune_after": json.dumps(last),
            "finetune_improved": "true",
            "degradation": str(parent.metadata.get("degradation", "clean")),
            **{str(k): str(v) for k, v in (metadata or {}).items()},
        }
        model = SRModel(copy.deepcopy(net).eval(), cfg.model, metadata=meta).eval()
    else:
        model = parent
    yield Finished(
        FinetuneResult(
            model=model,
            parent=parent,
            before=before,
            after=last if kept else dict(before),
            improved=kept,
            stopped=stopped,
            steps_done=done,
            best_step=done if kept else 0,
            mode="unpaired",
            history=history,
            notes=notes,
            elapsed_s=time.perf_counter() - t0,
        )
    )
