"""Training data: HR images in memory, seeded random patches, corruption, LR by D_s.

Every batch is a pure function of (seed, step): the patch sampler draws from
`np.random.default_rng([seed, step])`, so a resumed run sees exactly the batches an
uninterrupted run would have seen, with no sampler state to save.
"""

from __future__ import annotations

import json
import logging
import signal
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_srgan_sqe.config import CorruptionConfig, DegradationConfig
from napari_srgan_sqe.degradation import ScannerDraw, apply_scanner, corrupt, draw_scanner
from napari_srgan_sqe.io.errors import DataError
from napari_srgan_sqe.models.coding import CODING_FEATURES, coding_vector

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp"}

__all__ = [
    "BatchPrefetcher",
    "DataError",
    "PatchBatch",
    "PatchSampler",
    "find_images",
    "load_rgb",
    "resolve_path",
    "resolve_split",
    "stain_jitter",
]


def resolve_path(base: Path | None, path: str | Path) -> Path:
    """`path` with ~ expanded; a relative one is taken from `base` (a config file's
    folder) when there is one."""
    p = Path(path).expanduser()
    return base / p if base is not None and not p.is_absolute() else p


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an 8-bit RGB image (H, W, 3) uint8; refuse anything else with a reason.

    Training needs true-colour H&E: grayscale, 16-bit, float and images with real
    transparency are refused rather than silently converted. An alpha channel that is
    fully opaque is dropped.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            mode = im.mode
            arr = np.asarray(im)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None
    if arr.dtype != np.uint8:
        raise DataError(f"{path}: {arr.dtype} pixels; training needs 8-bit RGB images")
    if arr.ndim == 3 and arr.shape[2] == 4:
        if arr[..., 3].min() < 255:
            raise DataError(f"{path}: has transparent pixels (RGBA); training needs opaque RGB")
        arr = arr[..., :3]
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DataError(
            f"{path}: image mode {mode!r}, shape {arr.shape}; training needs RGB images"
        )
    return np.ascontiguousarray(arr)


def find_images(sources: Iterable[str | Path]) -> list[Path]:
    """Image files in the given folders (sorted) or the given files themselves."""
    found: list[Path] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            found += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    return found


def resolve_split(
    data: Sequence[str | Path],
    split_file: str | Path | None,
    val_data: Sequence[str | Path] = (),
    *,
    need: Sequence[str] = ("train", "val"),
) -> tuple[list[Path], list[Path]]:
    """(train, val) image paths: by the split file's name lists, or all of `data` /
    `val_data`. Every image of the lists named in `need` must be in `data` (evaluating
    needs only "val"); a list not needed keeps the images found."""
    images = find_images(data)
    if split_file is None:
        return images, find_images(val_data)
    try:
        split = json.loads(Path(split_file).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read split file {split_file}: {exc}") from None
    check_split(split, split_file)
    by_name = {p.name: p for p in images}
    out = []
    for key in ("train", "val"):
        missing = [n for n in split.get(key, []) if n not in by_name]
        if missing and key in need:
            raise DataError(
                f"split file {split_file}: {key} images not found in {list(data)}: {missing[:3]}"
            )
        out.append([by_name[n] for n in split.get(key, []) if n in by_name])
    train, val = out
    overlap = {p.name for p in train} & {p.name for p in val}
    if overlap:
        raise DataError(
            f"split file {split_file}: images in both train and val: {sorted(overlap)[:3]}"
        )
    return train, val


def check_split(split: object, source: str | Path) -> None:
    """DataError unless `split` is what a split file holds: an object whose 'train' and
    'val' entries (each optional) are lists of image file names; other keys (a
    'dataset' or 'rule' text, per-source lists) are notes and are not read."""
    if not isinstance(split, dict):
        raise DataError(
            f"split file {source}: expected a JSON object with 'train' and 'val' lists of "
            f"image file names, got a {type(split).__name__}"
        )
    if "train" not in split and "val" not in split:
        raise DataError(f"split file {source}: it has neither a 'train' nor a 'val' list")
    for key in ("train", "val"):
        names = split.get(key, [])
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise DataError(
                f"split file {source}: '{key}' must be a list of image file names, "
                f"got {json.dumps(names)[:60]}"
            )


# Ruifrok & Johnston's stain vectors (haematoxylin, eosin, residual) as rows: optical
# density of an RGB pixel = concentrations @ RGB_FROM_HED.
RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64
)
RGB_FROM_HED /= np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
_OD_FLOOR = 1.0 / 255.0  # the darkest stored level: keeps the optical density finite


def stain_jitter(patch: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """HED stain augmentation of an RGB patch (float in [0, 1], H x W x 3): the
    haematoxylin, eosin and residual concentrations are each scaled by a factor from
    [1 - strength, 1 + strength] and shifted by one from 0.1 x [-strength, strength]
    (optical density units). strength 0 returns the patch unchanged."""
    if strength <= 0:
        return patch
    alpha = rng.uniform(1.0 - strength, 1.0 + strength, size=3)
    beta = rng.uniform(-strength, strength, size=3) * 0.1
    od = -np.log(np.clip(patch.astype(np.float64), _OD_FLOOR, 1.0))
    conc = od @ HED_FROM_RGB
    od = np.maximum((conc * alpha + beta) @ RGB_FROM_HED, 0.0)
    return np.exp(-od).astype(patch.dtype)


@dataclass
class PatchBatch:
    """One training batch: HR targets and LR inputs, float32 NCHW in [0, 1]."""

    hr: np.ndarray
    lr_source: np.ndarray
    """The HR the LR is made from (corrupted when the whole pair is corrupted)."""
    corrupted: np.ndarray
    """Boolean (N,): which pairs were corrupted."""
    lr: np.ndarray | None = None
    """LR inputs made in the sampler (scanner preset); None: the trainer applies D_s to
    `lr_source`."""
    coding: np.ndarray | None = None
    """(N, CODING_FEATURES) float32: how each LR was stored, as a coding-conditioned
    network is told it (`models.coding`), with parts hidden on `coding_hidden` of the
    patches; None for the clean preset."""


class PatchSampler:
    """Random HR patches from images held in memory, with optional corruption."""

    def __init__(
        self,
        images: Sequence[np.ndarray],
        *,
        patch_size: int,
        batch_size: int,
        seed: int = 0,
        augment: bool = True,
        corruption: CorruptionConfig | None = None,
        degradation: DegradationConfig | None = None,
        scale: int = 4,
        lower_mag_fraction: float = 0.0,
        stain_jitter: float = 0.0,
        coding_hidden: float = 0.25,
    ) -> None:
        if not images:
            raise DataError(
                "no training images: the folders are empty or hold no PNG/JPEG/TIFF/WebP files"
            )
        self.degradation = degradation or DegradationConfig()
        self.scale = scale
        self.lower_mag_fraction = lower_mag_fraction
        self.stain_jitter = float(stain_jitter)
        self.coding_hidden = float(coding_hidden)
        # The scanner chain codes an LR patch 8 px larger and crops it at a random
        # offset, so the network meets the JPEG block grid at every phase.
        self.margin = 8 * scale if self.degradation.preset == "scanner" else 0
        need = patch_size + self.margin
        small = [im.shape[:2] for im in images if min(im.shape[:2]) < need]
        if small:
            raise DataError(
                f"training patches need {need} px (patch size {patch_size}"
                + (", scanner margin" if need > patch_size else "")
                + f"), larger than {len(small)} training image(s), e.g. {small[0]}; "
                "choose a smaller patch_size"
            )
        # A half-magnification patch needs twice the side: images smaller than that
        # give full-magnification patches only.
        self._zoom_ok = [min(im.shape[:2]) >= 2 * need for im in images]
        if lower_mag_fraction > 0 and not any(self._zoom_ok):
            raise DataError(
                f"half-magnification patches (lower_mag_fraction {lower_mag_fraction}) need "
                f"{2 * need} px; no training image is that large"
            )
        self.images = list(images)
        self.patch_size = patch_size
        self.batch_size = batch_size
        self.seed = seed
        self.augment = augment
        self.corruption = corruption or CorruptionConfig()

    def batch(self, step: int) -> PatchBatch:
        """The batch for global step `step` (deterministic)."""
        rng = np.random.default_rng([self.seed, step])
        p, s = self.patch_size, self.scale
        scanner = self.degradation.preset == "scanner"
        hr = np.empty((self.batch_size, p, p, 3), np.float32)
        src = np.empty_like(hr)
        lr = np.empty((self.batch_size, p // s, p // s, 3), np.float32) if scanner else None
        flags = np.zeros(self.batch_size, bool)
        coding = np.zeros((self.batch_size, CODING_FEATURES), np.float32) if scanner else None
        # Its own stream: what the network is told does not change the pixels drawn.
        hide_rng = np.random.default_rng([self.seed, step, 7])
        c = self.corruption
        for i in range(self.batch_size):
            k = int(rng.integers(len(self.images)))
            im = self.images[k]
            zoom = (
                2 if self.lower_mag_fraction > 0 and rng.random() < self.lower_mag_fraction else 1
            )
            if not self._zoom_ok[k]:
                zoom = 1
            side = (p + self.margin) * zoom
            y = rng.integers(im.shape[0] - side + 1)
            x = rng.integers(im.shape[1] - side + 1)
            patch = im[y : y + side, x : x + side].astype(np.float32) / 255.0
            if zoom > 1:  # half magnification: 2 x 2 area mean (40x -> 20x)
                patch = patch.reshape(side // 2, 2, side // 2, 2, 3).mean(axis=(1, 3))
            if self.augment:
                patch = np.rot90(patch, k=int(rng.integers(4)))
                if rng.random() < 0.5:
                    patch = patch[:, ::-1]
            if self.stain_jitter > 0:  # before the LR is made: HR and LR share the stain
                patch = stain_jitter(patch, self.stain_jitter, rng)
            clean = np.ascontiguousarray(patch)
            hit = c.kind != "none" and rng.random() < c.fraction
            flags[i] = hit
            bad = corrupt(clean, c.kind, c.strength, rng=rng) if hit else clean
            target = bad
            source = bad if c.target == "pair" else clean
            if scanner:
                assert lr is not None  # allocated above for the scanner preset
                draw = draw_scanner(self.degradation, s, rng)
                assert coding is not None  # allocated with lr
                coding[i] = self._told(draw, hide_rng)
                lr_full = apply_scanner(source.astype(np.float64), s, draw, rng)
                oy, ox = (int(v) for v in rng.integers(self.margin // s, size=2))
                lr[i] = lr_full[oy : oy + p // s, ox : ox + p // s]
                target = target[oy * s : oy * s + p, ox * s : ox * s + p]
                source = source[oy * s : oy * s + p, ox * s : ox * s + p]
            hr[i], src[i] = target, source
        return PatchBatch(
            hr=np.ascontiguousarray(hr.transpose(0, 3, 1, 2)),
            lr_source=np.ascontiguousarray(src.transpose(0, 3, 1, 2)),
            corrupted=flags,
            lr=None if lr is None else np.ascontiguousarray(lr.transpose(0, 3, 1, 2)),
            coding=coding,
        )

    def _told(self, draw: ScannerDraw, rng: np.random.Generator) -> tuple[float, ...]:
        """The coding vector of a drawn scanner chain; on `coding_hidden` of the patches
        the codec, the quality or the colour coding is withheld (a third each), so the
        network also learns to do well when a slide does not say."""
        jpeg = draw.codec == "jpeg"
        codec = draw.codec
        quality = int(draw.quality) if jpeg and draw.quality is not None else None
        colour = draw.colour if jpeg else None
        if rng.random() < self.coding_hidden:
            part = int(rng.integers(3))
            if part == 0:
                codec, quality, colour = "unknown", None, None
            elif part == 1:
                quality = None
            else:
                colour = None
        return coding_vector((codec, quality, colour))


_WORKER_SAMPLER: PatchSampler | None = None


def _init_worker(sampler: PatchSampler) -> None:
    global _WORKER_SAMPLER
    _WORKER_SAMPLER = sampler
    # Ctrl-C reaches the whole process group: the trainer stops between two steps and
    # closes the pool; a worker killed by it would break the pool under a pending step.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _worker_batch(step: int) -> PatchBatch:
    assert _WORKER_SAMPLER is not None, "worker started without its sampler"
    return _WORKER_SAMPLER.batch(step)


class BatchPrefetcher:
    """Makes the batches of the next steps in `workers` processes while the model trains.

    A batch is a pure function of (seed, step), so `batch(step)` returns exactly what
    `sampler.batch(step)` would: any number of workers, any order of completion, and a
    jump (a resume) only restarts the queue. Workers are spawned, not forked, so a
    trainer that already holds threads, a GPU context or a GUI cannot deadlock them; each
    holds its own copy of the training images. An error in a worker is raised here.
    """

    def __init__(self, sampler: PatchSampler, workers: int, depth: int | None = None) -> None:
        import multiprocessing

        if workers < 1:
            raise ValueError(f"a prefetcher needs at least one worker, got {workers}")
        self.depth = depth if depth is not None else 2 * workers
        self._pool = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(sampler,),
        )
        self._pending: dict[int, Future[PatchBatch]] = {}

    def batch(self, step: int) -> PatchBatch:
        ahead = range(step, step + self.depth)
        for s in [s for s in self._pending if s not in ahead]:
            self._pending.pop(s).cancel()
        for s in ahead:
            if s not in self._pending:
                self._pending[s] = self._pool.submit(_worker_batch, s)
        return self._pending.pop(step).result()

    def close(self) -> None:
        self._pending.clear()
        try:
            self._pool.shutdown(wait=True, cancel_futures=True)
        except Exception:  # noqa: BLE001 - a broken pool has nothing left to wait for
            log.debug("closing the data workers", exc_info=True)

    def __enter__(self) -> BatchPrefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
