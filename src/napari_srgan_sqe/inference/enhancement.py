"""Preparing an enhancement: the model for an image and its coding, simulated LR, the lazy
SR pyramid. The Enhance widget's work without Qt.

`prepare_enhance` is a generator: it yields progress messages and returns a `Prepared`
result (the pyramid, the simulated LR levels, or the error in words), so a napari
thread worker, a script or a test runs it alike; it touches no viewer, only arrays and
files. Tiles are computed later, when dask computes the pyramid's levels.

The default model follows what the LR is (`default_model_name`): for LR simulated by
'clean' the clean model, by 'scanner' the scanner model; for an image read from a file,
`models.registry.model_for_coding` of how the file stores it (`layer_coding`): the
clean model only for losslessly stored slides.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "PREFERRED_MODELS",
    "SIMULATED_LR_CACHE_MB",
    "Prepared",
    "default_model_name",
    "is_model_path",
    "layer_coding",
    "model_path",
    "prepare_enhance",
    "probe",
    "probe_steps",
    "simulate_lr",
    "switch_model",
]

log = logging.getLogger(__name__)

PREFERRED_MODELS = ("srgan-sqe-he-x4", "srgan-sqe-he-x4-clean", "bicubic-x4")
"""The bundled models to fall back on, in order, when the one wanted has no weights."""
SIMULATED_LR_CACHE_MB = 256


def default_model_name(
    models: list[dict] | None = None, *, codec: str | None = None, preset: str | None = None
) -> str:
    """The bundled model to use by default, if its weights exist: for LR simulated
    with `preset` 'clean' the clean model, 'scanner' the scanner model; otherwise
    `model_for_coding(codec)` (the clean model only for losslessly stored input)."""
    from napari_srgan_sqe.models.registry import model_for_coding

    if models is None:
        from napari_srgan_sqe.models.registry import list_models

        models = list_models()
    wanted = model_for_coding(codec, preset=preset)
    available = [m["name"] for m in models if m.get("available")]
    for name in (wanted, *PREFERRED_MODELS):
        if name in available:
            return name
    return available[0] if available else "bicubic-x4"


def layer_coding(layer: Any) -> Any:
    """The `SlideCoding` a layer's metadata records (the reader puts it there);
    unknown for layers made from arrays."""
    from napari_srgan_sqe.io.codecs import SlideCoding

    meta = getattr(layer, "metadata", None) or {}
    info = meta.get("coding") if isinstance(meta, dict) else None
    if not isinstance(info, dict):
        return SlideCoding()
    quality = info.get("quality")
    return SlideCoding(
        str(info.get("codec") or "unknown"),
        int(quality) if isinstance(quality, int | float) else None,
        str(info.get("detail") or ""),
    )


def is_model_path(model: Any) -> bool:
    """True for a model file (a path, or a name ending in .safetensors), False for a
    bundled name or a loaded model."""
    return isinstance(model, os.PathLike) or (
        isinstance(model, str) and model.endswith(".safetensors")
    )


def model_path(model: Any) -> str | None:
    """The file a model choice names (a .safetensors path), or None for bundled names."""
    return os.fspath(model) if is_model_path(model) else None


@dataclass
class Prepared:
    """What a background enhance produced: the model, the SR pyramid, maybe LR levels."""

    pyramid: Any = None
    lr_levels: list[Any] | None = None
    error: str | None = None


def probe() -> dict[str, Any]:
    """Bundled models and the device 'auto' picks (imports torch: run in a worker)."""
    from napari_srgan_sqe.models.predictor import resolve_device
    from napari_srgan_sqe.models.registry import list_models

    return {"models": list_models(), "auto": str(resolve_device("auto"))}


def probe_steps() -> Generator[str, None, dict[str, Any]]:
    """`probe` as a worker's generator; if it fails, only the weight-free model on the CPU."""
    yield "looking for models and devices ..."
    try:
        return probe()
    except Exception:  # noqa: BLE001 - fall back to the weight-free model
        log.debug("probe failed", exc_info=True)
        return {"models": [{"name": "bicubic-x4", "available": True}], "auto": "cpu"}


def prepare_enhance(
    *,
    model: Any,
    device: str,
    tile: int | None,
    lr_levels: list[Any] | None = None,
    hr_levels: list[Any] | None = None,
    expect_scale: int | None = None,
    degradation: str = "clean",
    seed: int = 0,
    coding: Any = None,
) -> Generator[str, None, Prepared]:
    """Load `model`, simulate LR from `hr_levels` if given, and build the lazy SR pyramid.

    `model`: an SRModel, a bundled name or a .safetensors path; None is
    `default_model_name(preset=...)` for simulated LR, else `default_model_name()`.
    `degradation`: the preset LR is simulated with ('clean' = D_s, or 'scanner').
    `seed`: the sample a stochastic model draws (deterministic models ignore it).
    `coding`: how the LR is stored (a `SlideCoding`, None: unknown), told to a model
    conditioned on it.

    Yields progress messages; returns `Prepared` (with `.error` set, never raising, so
    the GUI shows one clear notification). Touches no viewer: only arrays and files.
    """
    try:
        from napari_srgan_sqe.inference.engine import super_resolve
        from napari_srgan_sqe.models.coding import describe_coding
        from napari_srgan_sqe.models.modelfile import load_model, reads_coding
        from napari_srgan_sqe.models.predictor import resolve_device

        # the device 'auto' stands for, so every message names the one that computes
        device = str(resolve_device(device))
        if model is None:
            model = default_model_name(preset=degradation if hr_levels is not None else None)
        yield f"loading model {Path(str(model)).name if is_model_path(model) else model} ..."
        loaded = load_model(model) if isinstance(model, str | os.PathLike) else model
        s = int(loaded.scale)
        if expect_scale is not None and s != expect_scale:
            raise ValueError(
                f"model {loaded.name!r} is {s}x but this pair of layers is {expect_scale}x"
            )
        if hr_levels is not None:
            how = f"D_{s}" if degradation == "clean" else f"{degradation} degradation, {s}x"
            yield f"simulating LR ({how}) lazily ..."
            lr_levels = simulate_lr(hr_levels, s, degradation)
        yield f"preparing {loaded.name} on {device} ..."
        if reads_coding(loaded):
            yield f"telling {loaded.name} the LR is stored as {describe_coding(coding)} ..."
        # placeholders (bicubic under a veil) until the SR of the view lands
        pyramid = super_resolve(
            lr_levels,
            loaded,
            device=device,
            tile=tile,
            placeholder=True,
            seed=seed,
            coding=coding,
        )
        return Prepared(pyramid=pyramid, lr_levels=lr_levels)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a notification
        log.debug("enhance failed", exc_info=True)
        return Prepared(error=str(exc) or type(exc).__name__)


def simulate_lr(hr_levels: list[Any], s: int, preset: str = "clean") -> list[Any]:
    """LR of every HR level big enough, lazily: LR level k is the preset's degradation
    of HR level k ('clean': D_s; 'scanner': one seeded draw of the scanner chain).
    Chunks are kept once computed (`SIMULATED_LR_CACHE_MB`): the LR layer, the SR's
    halos, placeholders and readouts all read them, and each computation reads and
    blurs 16 times as many HR pixels."""
    import dask.array as da

    from napari_srgan_sqe.degradation import degrade_lazy, degrade_with
    from napari_srgan_sqe.inference.cache import memoized
    from napari_srgan_sqe.inference.tiling import as_rgb_uint8

    if preset not in ("clean", "scanner"):
        raise ValueError(f"unknown degradation preset {preset!r}; choose clean or scanner")
    out = []
    for i, level in enumerate(hr_levels):
        if i and min(level.shape[:2]) < 16 * s:
            break
        if not hasattr(level, "dask"):
            level = da.from_array(level, chunks=(1024, 1024, -1))
        if preset == "clean":
            lr = degrade_lazy(level, s)
        else:
            level = as_rgb_uint8(level, what=f"HR level {i}")
            lr = degrade_with(level, "scanner", s, seed=0)
        out.append(memoized(lr, _simulated_lr_cache()))
    return out


@functools.cache
def _simulated_lr_cache() -> Any:
    """The memory cache of simulated LR chunks, shared by every layer (keys are the
    lazy graphs' names: the same HR and preset give the same name and pixels)."""
    from napari_srgan_sqe.inference.cache import TileCache

    return TileCache(SIMULATED_LR_CACHE_MB)


def switch_model(
    pyramid: Any, model: Any, seed: int | None = None
) -> Generator[str, None, Prepared]:
    """Switch an SR pyramid to another model (None: `default_model_name()`), drawing the
    sample `seed` of a stochastic one; yields progress, returns `Prepared` (the same
    pyramid, or the error in words: it never raises)."""
    try:
        from napari_srgan_sqe.models.modelfile import load_model

        model = default_model_name() if model is None else model
        yield f"loading model {model} ..."
        loaded = load_model(model) if isinstance(model, str | os.PathLike) else model
        if int(loaded.scale) != pyramid.scale:
            raise ValueError(
                f"model {loaded.name!r} is {loaded.scale}x but the SR layer is {pyramid.scale}x; "
                "press Enhance to make a new SR layer"
            )
        pyramid.set_model(loaded, seed=seed)
        return Prepared(pyramid=pyramid)
    except Exception as exc:  # noqa: BLE001
        log.debug("model switch failed", exc_info=True)
        return Prepared(error=str(exc) or type(exc).__name__)
