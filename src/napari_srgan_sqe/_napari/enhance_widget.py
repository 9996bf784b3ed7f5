"""The "Enhance" widget's old address, kept for the npe2 manifest (`napari.yaml`) and
scripts: the widget is the package `_napari.enhance`, preparing an enhancement
`inference.enhancement`."""

from __future__ import annotations

from napari_srgan_sqe._napari.enhance.form import DEVICES, LOAD_FILE, SIMULATE_CHOICES
from napari_srgan_sqe._napari.enhance.widget import EnhanceWidget
from napari_srgan_sqe.inference.enhancement import (
    PREFERRED_MODELS,
    SIMULATED_LR_CACHE_MB,
    Prepared,
    default_model_name,
    layer_coding,
    prepare_enhance,
)

__all__ = [
    "DEVICES",
    "LOAD_FILE",
    "PREFERRED_MODELS",
    "SIMULATED_LR_CACHE_MB",
    "SIMULATE_CHOICES",
    "EnhanceWidget",
    "Prepared",
    "default_model_name",
    "layer_coding",
    "prepare_enhance",
]
