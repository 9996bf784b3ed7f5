"""napari-srgan-sqe: robust 4x super-resolution of H&E whole-slide images.

The public API is imported lazily so that napari's plugin menu and the command line
start without loading torch or dask.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "open_slide": "napari_srgan_sqe.io.slides",
    "Slide": "napari_srgan_sqe.io.slides",
    "SlideError": "napari_srgan_sqe.io.slides",
    "DataError": "napari_srgan_sqe.io.errors",
    "load_model": "napari_srgan_sqe.models.modelfile",
    "save_model": "napari_srgan_sqe.models.modelfile",
    "ModelFileError": "napari_srgan_sqe.models.modelfile",
    "Predictor": "napari_srgan_sqe.models.predictor",
    "super_resolve": "napari_srgan_sqe.inference.engine",
    "degrade": "napari_srgan_sqe.degradation",
    "finetune": "napari_srgan_sqe.training.finetune",
}
_SUBMODULES = {"metrics", "config", "degradation", "losses"}

__all__ = [
    "DataError",
    "ModelFileError",
    "Predictor",
    "Slide",
    "SlideError",
    "__version__",
    "config",
    "degradation",
    "degrade",
    "finetune",
    "load_model",
    "losses",
    "metrics",
    "open_slide",
    "save_model",
    "super_resolve",
]

if TYPE_CHECKING:
    from napari_srgan_sqe import config, degradation, losses, metrics
    from napari_srgan_sqe.degradation import degrade
    from napari_srgan_sqe.inference.engine import super_resolve
    from napari_srgan_sqe.io.errors import DataError
    from napari_srgan_sqe.io.slides import Slide, SlideError, open_slide
    from napari_srgan_sqe.models.modelfile import ModelFileError, load_model, save_model
    from napari_srgan_sqe.models.predictor import Predictor
    from napari_srgan_sqe.training.finetune import finetune


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"napari_srgan_sqe.{name}")
    raise AttributeError(f"module 'napari_srgan_sqe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
